//! Embeddings: text to vectors, for intents, routing by meaning and memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::LlmError;
use crate::provider::Provider;

/// The future an [`Embedder`] returns.
pub type EmbedFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<f32>>, LlmError>> + Send + 'a>>;

/// Turns texts into vectors; similar meanings give close vectors.
pub trait Embedder: Send + Sync {
    /// One vector per text, in order.
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a>;

    /// Identifies the model, so that vectors of different models are never compared.
    fn model_id(&self) -> String;
}

/// Embeddings through a provider's API (`openai/text-embedding-3-small`,
/// `gemini/text-embedding-004`, `ollama/nomic-embed-text`, `local`).
#[derive(Clone, Debug)]
pub struct ProviderEmbedder {
    pub(crate) provider: Arc<dyn Provider>,
}

impl ProviderEmbedder {
    /// The embedder named by a model string, configured from the environment like [`crate::Llm::new`].
    ///
    /// `local` embeds with the local embedding model (all-MiniLM-L6-v2, or
    /// `$CREWFLOW_LOCAL_EMBEDDER`) and needs only its files; `local/<directory>` names another
    /// embedding model's directory. Its model id is the one `local::LocalEmbedder` gives, so their
    /// vectors are compared.
    pub fn new(model: &str) -> Result<Self, LlmError> {
        if let Some(name) = model.strip_prefix("local").filter(|rest| rest.is_empty() || rest.starts_with('/')) {
            return Ok(ProviderEmbedder { provider: local_embedder(name.strip_prefix('/').unwrap_or(name))? });
        }
        Ok(ProviderEmbedder { provider: crate::provider_for(model, crate::LlmOptions::default())? })
    }
}

#[cfg(feature = "local")]
fn local_embedder(name: &str) -> Result<Arc<dyn Provider>, LlmError> {
    Ok(Arc::new(crate::local::LazyLocalEmbedder::new(name)?))
}

#[cfg(not(feature = "local"))]
fn local_embedder(_name: &str) -> Result<Arc<dyn Provider>, LlmError> {
    Err(LlmError::Local(
        "the local embedding model needs crewflow's `local` feature (on in the examples and the CLI); or choose a provider such as openai/text-embedding-3-small".into(),
    ))
}

impl Embedder for ProviderEmbedder {
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        self.provider.embed(texts)
    }

    fn model_id(&self) -> String {
        format!("{}/{}", self.provider.name(), self.provider.model())
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na.sqrt() * nb.sqrt()) }
}

/// A deterministic embedder by feature hashing of words: no model, no network. For tests and
/// plumbing; it measures shared words, not meaning.
#[derive(Clone, Copy, Debug)]
pub struct HashEmbedder {
    /// The vectors' length.
    pub dimensions: usize,
}

impl Default for HashEmbedder {
    fn default() -> Self {
        HashEmbedder { dimensions: 256 }
    }
}

impl Embedder for HashEmbedder {
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        let out = texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; self.dimensions];
                for word in t.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                    let h = word
                        .bytes()
                        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
                    v[(h % self.dimensions as u64) as usize] += if h & (1 << 63) == 0 { 1.0 } else { -1.0 };
                }
                v
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn model_id(&self) -> String {
        format!("hash-{}", self.dimensions)
    }
}
