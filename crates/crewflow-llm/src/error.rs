//! The errors of model calls.

use std::time::Duration;

/// Why a model call failed. Every variant carries what the provider said, where it said
/// anything; match on the variant to decide what to do (retry later, shorten the prompt, fix
/// the key, ...).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The reply could not be recorded in the run's journal (or a recorded one read back).
    #[error("{0}")]
    Journal(String),
    /// The model string names no provider.
    #[error(
        "unknown model `{0}`; use provider/model: openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, gemini/gemini-2.5-flash, ollama/llama3.2, or local"
    )]
    UnknownModel(String),
    /// The provider needs a key that is not set.
    #[error("{provider} needs an API key: set {var}")]
    MissingKey {
        /// The provider.
        provider: &'static str,
        /// The environment variable to set.
        var: &'static str,
    },
    /// The key was refused (401/403).
    #[error("{provider} refused the credentials ({status}): {message}")]
    Auth {
        /// The provider.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// What the provider said.
        message: String,
    },
    /// Too many requests (429), still after the retries.
    #[error("{provider} is rate limiting this client{}: {message}", retry_hint(.retry_after))]
    RateLimited {
        /// The provider.
        provider: &'static str,
        /// How long the provider asked to wait.
        retry_after: Option<Duration>,
        /// What the provider said.
        message: String,
    },
    /// The prompt does not fit the model's context window.
    #[error("the prompt is too long for {provider}'s model: {message}")]
    ContextTooLong {
        /// The provider.
        provider: &'static str,
        /// What the provider said.
        message: String,
    },
    /// The provider rejected the request (a 4xx other than the above).
    #[error("{provider} rejected the request ({status}): {message}")]
    BadRequest {
        /// The provider.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// What the provider said.
        message: String,
    },
    /// The provider failed (5xx, or overloaded), still after the retries.
    #[error("{provider} failed ({status}): {message}")]
    Server {
        /// The provider.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// What the provider said.
        message: String,
    },
    /// The provider could not be reached, still after the retries.
    #[error("could not reach {provider} at {url}: {message}")]
    Network {
        /// The provider.
        provider: &'static str,
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// The provider did not answer in time.
    #[error("{provider} did not answer within {timeout:?}")]
    Timeout {
        /// The provider.
        provider: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The provider answered something that is not its documented format.
    #[error("{provider} sent a reply that could not be read ({message}): {raw}")]
    Protocol {
        /// The provider.
        provider: &'static str,
        /// What is wrong.
        message: String,
        /// The reply (cut to 2,000 characters).
        raw: String,
    },
    /// The model's reply did not fit the requested type, even after one repair attempt.
    #[error("the model's reply is not a valid {expected}: {message}; the reply was: {raw}")]
    InvalidOutput {
        /// The type expected.
        expected: String,
        /// What is wrong with it.
        message: String,
        /// The model's last reply.
        raw: String,
    },
    /// The provider cannot do what was asked.
    #[error("{provider} does not support {what}")]
    Unsupported {
        /// The provider.
        provider: &'static str,
        /// The feature.
        what: String,
    },
    /// The local model is not installed, or failed.
    #[error("{0}")]
    Local(String),
}

fn retry_hint(after: &Option<Duration>) -> String {
    match after {
        Some(d) => format!(" (it asks to wait {:.1} s)", d.as_secs_f64()),
        None => String::new(),
    }
}

impl LlmError {
    /// Whether trying again later may succeed (rate limits, server errors, network, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Server { .. }
                | LlmError::Network { .. }
                | LlmError::Timeout { .. }
        )
    }
}

/// Cuts a reply for an error message.
pub(crate) fn excerpt(raw: &str) -> String {
    const MAX: usize = 2000;
    if raw.len() <= MAX {
        return raw.to_string();
    }
    let mut end = MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &raw[..end], raw.len())
}
