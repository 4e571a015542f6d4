//! The providers. Each is a thin client of one wire format.

pub(crate) mod anthropic;
pub(crate) mod gemini;
pub(crate) mod ollama;
pub(crate) mod openai;

use std::future::Future;
use std::pin::Pin;

use crate::embed::EmbedFuture;
use crate::error::LlmError;
use crate::stream::DeltaStream;
use crate::types::{ChatRequest, ChatResponse};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One provider's client.
pub(crate) trait Provider: Send + Sync + std::fmt::Debug {
    /// Its name in model strings and events (`openai`, `anthropic`, ...).
    fn name(&self) -> &'static str;
    /// The model it calls.
    fn model(&self) -> &str;
    /// A whole reply.
    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;
    /// A streamed reply.
    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>>;
    /// Loads now what the first call would load (a local model's weights); a hosted provider
    /// has nothing to load.
    fn warm_up(&self) -> BoxFuture<'_, Result<(), LlmError>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether requests may declare tools ([`crate::Llm::calls_tools`]).
    fn calls_tools(&self) -> BoxFuture<'_, Result<bool, LlmError>> {
        Box::pin(async { Ok(true) })
    }
    /// Embeddings of texts with this provider's embedding model.
    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        let _ = texts;
        let provider = self.name();
        Box::pin(async move { Err(LlmError::Unsupported { provider, what: "embeddings".into() }) })
    }
}
