//! The memory's errors.

use crewflow_core::BoxError;

/// What [`Memory`](crate::Memory) can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The store failed.
    #[error("the memory store {store} could not {action}: {source}")]
    Store {
        /// The store.
        store: String,
        /// What the memory was doing.
        action: &'static str,
        /// What the store reported.
        #[source]
        source: BoxError,
    },
    /// The embedder failed.
    #[error("the embedder `{model}` failed: {source}")]
    Embed {
        /// The embedder's model id.
        model: String,
        /// What it reported.
        #[source]
        source: crewflow_llm::LlmError,
    },
    /// The embedder returned something unusable.
    #[error("the embedder `{model}` {problem}")]
    BadEmbedding {
        /// The embedder's model id.
        model: String,
        /// What is wrong.
        problem: String,
    },
    /// The scope holds memories embedded by another model: their vectors cannot be compared
    /// with this embedder's.
    #[error(
        "{count} memories under `{scope}` were embedded by `{stored}`, but this memory embeds with `{embedder}`; vectors of different models are never compared: use the `{stored}` embedder, or forget them (MemoryFilter::model)"
    )]
    ModelMismatch {
        /// The scope recalled.
        scope: String,
        /// The model of the stored memories.
        stored: String,
        /// How many there are.
        count: u64,
        /// This memory's embedder.
        embedder: String,
    },
    /// Vectors of one model id with different lengths.
    #[error(
        "the store holds `{model}` vectors of {stored} dimensions, but the embedder gave {got}; the model id names two different models: give them different ids"
    )]
    DimensionMismatch {
        /// The model id.
        model: String,
        /// The stored vectors' length.
        stored: usize,
        /// The new vector's length.
        got: usize,
    },
    /// Nothing to remember.
    #[error("a memory needs some text; the content is blank")]
    EmptyContent,
    /// An importance outside 0 to 1.
    #[error("importance must be between 0 and 1, not {0}")]
    InvalidImportance(f32),
    /// A stored value could not be read.
    #[error("a stored memory could not be read: {0}")]
    Corrupt(String),
    /// The model failed (lessons, extraction).
    #[error("the model failed to {action}: {source}")]
    Llm {
        /// What it was asked.
        action: &'static str,
        /// What it reported.
        #[source]
        source: crewflow_llm::LlmError,
    },
    /// The model's reply could not be used.
    #[error("the model's reply could not be used to {action}: {problem}")]
    BadReply {
        /// What it was asked.
        action: &'static str,
        /// What is wrong.
        problem: String,
    },
}
