//! Language models for crewflow.
//!
//! One [`Llm`] handle over providers, chosen by a model string and the environment:
//!
//! | model string | provider | configuration |
//! | --- | --- | --- |
//! | `openai/<model>` | OpenAI, or any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, Azure OpenAI v1, ...) | `OPENAI_API_KEY`, `OPENAI_BASE_URL` |
//! | `azure/<deployment>` | Azure OpenAI (its v1 API) | `AZURE_OPENAI_API_KEY`, `AZURE_OPENAI_ENDPOINT` |
//! | `groq/<model>`, `deepseek/<model>`, `openrouter/<model>` | OpenAI-compatible services | `GROQ_API_KEY`, `DEEPSEEK_API_KEY`, `OPENROUTER_API_KEY` |
//! | `anthropic/<model>` | Anthropic Messages | `ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL` |
//! | `gemini/<model>` | Google Gemini | `GEMINI_API_KEY`, `GEMINI_BASE_URL` |
//! | `ollama/<model>` | Ollama | `OLLAMA_HOST` |
//! | `local` | SmolLM2-135M on the CPU (feature `local`) | `CREWFLOW_LOCAL_MODEL` |
//!
//! ```no_run
//! # async fn demo() -> Result<(), crewflow_llm::LlmError> {
//! use crewflow_llm::{ChatRequest, Llm, Message};
//!
//! let llm = Llm::new("openai/gpt-4o-mini")?;
//! let reply = llm.complete("Name a colour.").await?;
//! let req = ChatRequest::new([Message::system("Be brief."), Message::user("Why is the sky blue?")]).temperature(0.2);
//! let answer = llm.chat(req).await?;
//! println!("{} ({} tokens)", answer.text, answer.usage.total());
//! # Ok(()) }
//! ```
//!
//! Inside a flow step, every call reports itself on the run's event stream
//! (`llm_call_started`, `llm_chunk`, `llm_call_finished` with finish reason, usage, response
//! id and latency, or `llm_call_failed`) and adds its tokens to the run's usage.

mod embed;
mod error;
mod http;
mod intents;
#[cfg(feature = "local")]
pub mod local;
mod provider;
mod stream;
mod structured;
mod types;

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

pub use embed::{EmbedFuture, Embedder, HashEmbedder, ProviderEmbedder, cosine};
pub use error::LlmError;
pub use http::RetryPolicy;
pub use intents::{IntentMatch, Intents, LlmIntents, Scoring};
pub use stream::{ChatStream, StreamEvent};
pub use structured::schema_of;
pub use types::{
    ChatRequest, ChatResponse, FinishReason, Image, Message, Part, ResponseFormat, Role, TokenUsage, Tool, ToolCall,
    ToolChoice,
};

use provider::Provider;
use stream::CallReport;

/// Makes ring this process's TLS crypto provider, unless one is installed already.
///
/// crewflow builds its HTTP clients (`reqwest` with rustls) without a compiled-in provider, so
/// that a first build does not compile aws-lc's C sources; rustls then needs a process-wide
/// provider before any client is built. Every client crewflow builds calls this first, so a user
/// never has to; call it yourself only before building your own `reqwest::Client` in a program
/// that links crewflow. A provider installed earlier (yours) is kept. Calling it again does
/// nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // `Err` means a provider is installed already, which is what is needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The variable naming the default model of [`Llm::from_env`].
pub const MODEL_VAR: &str = "CREWFLOW_MODEL";

/// How to reach a provider, beyond what the environment says.
#[derive(Clone, Debug)]
pub struct LlmOptions {
    /// The API key (instead of the provider's variable).
    pub api_key: Option<String>,
    /// The base URL (instead of the provider's variable or default).
    pub base_url: Option<String>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// The limit for a whole reply (for a stream: until it starts).
    pub timeout: Duration,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions { api_key: None, base_url: None, retry: RetryPolicy::default(), timeout: Duration::from_secs(120) }
    }
}

impl LlmOptions {
    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the base URL.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A language model: one handle over every provider. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Llm {
    provider: Arc<dyn Provider>,
    /// Whether calls made inside a step go through the run's journal (see [`Llm::journaled`]).
    journaled: bool,
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The provider a model string names.
pub(crate) fn provider_for(model: &str, options: LlmOptions) -> Result<Arc<dyn Provider>, LlmError> {
    let (prefix, name) = match model.split_once('/') {
        Some((p, m)) => (p, m.to_string()),
        None => (model, String::new()),
    };
    let mut http = http::Http::new(options.timeout);
    http.retry = options.retry.clone();
    let key = |var: &'static str, provider: &'static str, required: bool| -> Result<Option<String>, LlmError> {
        match options.api_key.clone().or_else(|| env(var)) {
            Some(k) => Ok(Some(k)),
            None if required => Err(LlmError::MissingKey { provider, var }),
            None => Ok(None),
        }
    };
    let base =
        |var: &str, default: &str| options.base_url.clone().or_else(|| env(var)).unwrap_or_else(|| default.to_string());
    let compatible = |var: &'static str, provider: &'static str, url: &str| -> Result<Arc<dyn Provider>, LlmError> {
        Ok(Arc::new(provider::openai::OpenAi {
            http: http.clone(),
            base_url: options.base_url.clone().unwrap_or_else(|| url.to_string()),
            api_key: key(var, provider, true)?,
            model: name.clone(),
            azure: false,
        }))
    };
    if name.is_empty() && prefix != "local" {
        return Err(LlmError::UnknownModel(model.to_string()));
    }
    Ok(match prefix {
        "openai" => {
            // A custom server (vLLM, llama.cpp, ...) may need no key.
            let custom = options.base_url.is_some() || env("OPENAI_BASE_URL").is_some();
            Arc::new(provider::openai::OpenAi {
                base_url: base("OPENAI_BASE_URL", "https://api.openai.com/v1"),
                api_key: key("OPENAI_API_KEY", "openai", !custom)?,
                model: name,
                http,
                azure: false,
            })
        }
        "azure" => {
            let endpoint = options
                .base_url
                .clone()
                .or_else(|| env("AZURE_OPENAI_ENDPOINT").map(|e| format!("{}/openai/v1", e.trim_end_matches('/'))));
            Arc::new(provider::openai::OpenAi {
                base_url: endpoint.ok_or(LlmError::MissingKey { provider: "azure", var: "AZURE_OPENAI_ENDPOINT" })?,
                api_key: key("AZURE_OPENAI_API_KEY", "azure", true)?,
                model: name,
                http,
                azure: true,
            })
        }
        "groq" => compatible("GROQ_API_KEY", "groq", "https://api.groq.com/openai/v1")?,
        "deepseek" => compatible("DEEPSEEK_API_KEY", "deepseek", "https://api.deepseek.com/v1")?,
        "openrouter" => compatible("OPENROUTER_API_KEY", "openrouter", "https://openrouter.ai/api/v1")?,
        "anthropic" => Arc::new(provider::anthropic::Anthropic {
            base_url: base("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
            api_key: key("ANTHROPIC_API_KEY", "anthropic", true)?.unwrap_or_default(),
            model: name,
            http,
        }),
        "gemini" => Arc::new(provider::gemini::Gemini {
            base_url: base("GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
            api_key: match key("GEMINI_API_KEY", "gemini", false)?.or_else(|| env("GOOGLE_API_KEY")) {
                Some(k) => k,
                None => return Err(LlmError::MissingKey { provider: "gemini", var: "GEMINI_API_KEY" }),
            },
            model: name,
            http,
        }),
        "ollama" => {
            let host = base("OLLAMA_HOST", "http://localhost:11434");
            let host = if host.contains("://") { host } else { format!("http://{host}") };
            Arc::new(provider::ollama::Ollama { base_url: host, model: name, http })
        }
        "local" => local_provider(&name)?,
        _ => return Err(LlmError::UnknownModel(model.to_string())),
    })
}

/// `local` is the default model; `local/<path>` a GGUF file.
#[cfg(feature = "local")]
fn local_provider(name: &str) -> Result<Arc<dyn Provider>, LlmError> {
    Ok(Arc::new(local::LazyLocal::new(name)?))
}

#[cfg(not(feature = "local"))]
fn local_provider(_name: &str) -> Result<Arc<dyn Provider>, LlmError> {
    Err(LlmError::Local(
        "the local model needs crewflow's `local` feature (on in the examples and the CLI); or choose a provider with CREWFLOW_MODEL".into(),
    ))
}

impl Llm {
    /// The model named by `model` (`provider/model`), configured from the environment. A
    /// missing key is an error naming the variable to set.
    pub fn new(model: &str) -> Result<Self, LlmError> {
        Self::with_options(model, LlmOptions::default())
    }

    /// [`new`](Llm::new), with explicit options (key, base URL, retries, timeout).
    pub fn with_options(model: &str, options: LlmOptions) -> Result<Self, LlmError> {
        Ok(Llm { provider: provider_for(model, options)?, journaled: true })
    }

    #[cfg(feature = "local")] // only the local model builds an `Llm` around a provider it made
    pub(crate) fn from_provider(provider: Arc<dyn Provider>) -> Self {
        Llm { provider, journaled: true }
    }

    /// Whether replies to calls made inside a step of a durable run are recorded in the run's
    /// journal of side effects (on by default): when the step runs again (after a crash, on
    /// resume, on a retry), each call it makes again gets the recorded reply instead of being
    /// paid for again. Calls are matched by order within the step's execution, per model.
    /// Turn it off for calls whose reply must be fresh on every attempt. Streamed replies
    /// ([`Llm::stream`]) are not journaled.
    pub fn journaled(mut self, on: bool) -> Self {
        self.journaled = on;
        self
    }

    /// Whether calls made inside a step are journaled ([`Llm::journaled`]).
    pub fn is_journaled(&self) -> bool {
        self.journaled
    }

    /// The model named by `CREWFLOW_MODEL`, or `local` when it is not set.
    pub fn from_env() -> Result<Self, LlmError> {
        Self::new(&env(MODEL_VAR).unwrap_or_else(|| "local".to_string()))
    }

    /// Loads the model now instead of at the first call: the local model's weights (about a
    /// second, off the async runtime), nothing for a hosted provider. Call it at startup, or
    /// spawn it, so that the first reply does not wait and a broken model file is reported
    /// before any work; a call made meanwhile waits for the same load. A failed load is tried
    /// again by the next call.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), crewflow_llm::LlmError> {
    /// let llm = crewflow_llm::Llm::from_env()?;
    /// tokio::spawn({
    ///     let llm = llm.clone();
    ///     async move { llm.warm_up().await }
    /// });
    /// # Ok(()) }
    /// ```
    pub async fn warm_up(&self) -> Result<(), LlmError> {
        self.provider.warm_up().await
    }

    /// Whether the model can be given tools. Hosted providers say yes (whether a given model
    /// calls them well is the model's business); a local model says yes when its chat template
    /// takes tools (Qwen2.5's does, SmolLM2's does not), which loads it first. A request with
    /// tools to a model that cannot take them fails with [`LlmError::Unsupported`]; this lets a
    /// program choose before it asks, as `examples/research_crew` does.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), crewflow_llm::LlmError> {
    /// let llm = crewflow_llm::Llm::from_env()?;
    /// if !llm.calls_tools().await? {
    ///     println!("{} cannot call tools: fetching the page for it", llm.model());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn calls_tools(&self) -> Result<bool, LlmError> {
        self.provider.calls_tools().await
    }

    /// The provider's name (`openai`, `anthropic`, ...).
    pub fn provider(&self) -> &'static str {
        self.provider.name()
    }

    /// The model.
    pub fn model(&self) -> &str {
        self.provider.model()
    }

    /// A whole reply. Inside a step of a durable run the reply is recorded in the run's
    /// journal, and a re-run of the step gets it back without a new call ([`Llm::journaled`]).
    pub async fn chat(&self, request: impl Into<ChatRequest>) -> Result<ChatResponse, LlmError> {
        let request = request.into();
        let scope = if self.journaled { crewflow_core::scope::current() } else { None };
        let Some(scope) = scope else { return self.call(&request).await };
        let name = format!("llm:{}/{}", self.provider(), self.model());
        scope.once(&name, |_| self.call(&request)).await.map_err(|e| match e {
            crewflow_core::journal::OnceError::Failed { source, .. } => match source.downcast::<LlmError>() {
                Ok(e) => *e,
                Err(other) => LlmError::Journal(other.to_string()),
            },
            other => LlmError::Journal(other.to_string()),
        })
    }

    async fn call(&self, request: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let mut report = CallReport::start(self.provider(), self.model(), request.params(), false);
        match self.provider.chat(request).await {
            Ok(response) => {
                report.finished(&response);
                Ok(response)
            }
            Err(e) => {
                report.failed(&e.to_string());
                Err(e)
            }
        }
    }

    /// A streamed reply: text and tool-call deltas as they arrive, then the whole reply.
    /// Dropping the stream cancels the request.
    pub async fn stream(&self, request: impl Into<ChatRequest>) -> Result<ChatStream, LlmError> {
        let request = request.into();
        let mut report = CallReport::start(self.provider(), self.model(), request.params(), true);
        match self.provider.chat_stream(&request).await {
            Ok(deltas) => Ok(ChatStream::new(deltas, self.model(), report)),
            Err(e) => {
                report.failed(&e.to_string());
                Err(e)
            }
        }
    }

    /// The text of the reply to one user message.
    pub async fn complete(&self, prompt: &str) -> Result<String, LlmError> {
        Ok(self.chat(prompt).await?.text)
    }

    /// A reply of type `T`: the request asks for JSON matching `T`'s schema (natively where
    /// the provider supports it), the reply is validated and, if it does not fit, the model is
    /// asked once to repair it, quoting what was wrong. Failing again is
    /// [`LlmError::InvalidOutput`] with the raw reply.
    pub async fn generate<T: JsonSchema + DeserializeOwned>(
        &self,
        request: impl Into<ChatRequest>,
    ) -> Result<T, LlmError> {
        let schema = schema_of::<T>();
        let name = type_label::<T>();
        let validator = jsonschema::validator_for(&schema).map_err(|e| LlmError::InvalidOutput {
            expected: name.clone(),
            message: format!("its schema is not valid: {e}"),
            raw: schema.to_string(),
        })?;
        let mut request = request.into();
        request.response_format = Some(ResponseFormat::JsonSchema { name: name.clone(), schema, strict: true });
        self.generate_with(request, &name, |reply| structured::check::<T>(reply, &validator)).await
    }

    /// One label from a closed set that best fits `text` (for routers, intents, feedback
    /// outcomes), through structured output where the provider supports it.
    pub async fn classify(&self, text: &str, labels: &[&str]) -> Result<String, LlmError> {
        let request = ChatRequest::new([
            Message::system(format!(
                "Classify the user's text into exactly one of these labels: {}. Reply with JSON: {{\"label\": \"<one of the labels>\"}}.",
                labels.join(", ")
            )),
            Message::user(text),
        ])
        .temperature(0.0)
        .response_format(ResponseFormat::JsonSchema {
            name: "classification".into(),
            schema: structured::label_schema(labels),
            strict: true,
        });
        self.generate_with(request, "label", |reply| {
            structured::pick_label(reply, labels)
                .map(str::to_string)
                .ok_or_else(|| format!("it names none of the labels {}", labels.join(", ")))
        })
        .await
    }

    async fn generate_with<T>(
        &self,
        mut request: ChatRequest,
        expected: &str,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, LlmError> {
        let first = self.chat(request.clone()).await?;
        let problem = match check(&first.text) {
            Ok(value) => return Ok(value),
            Err(problem) => problem,
        };
        request.messages.push(Message::assistant(first.text));
        request.messages.push(Message::user(format!(
            "That reply is not valid: {problem}. Reply again with only the JSON, matching the requested schema."
        )));
        let second = self.chat(request).await?;
        check(&second.text).map_err(|message| LlmError::InvalidOutput {
            expected: expected.to_string(),
            message,
            raw: error::excerpt(&second.text),
        })
    }

    /// Embeddings of `texts` with this model (an embedding model of the provider).
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, LlmError> {
        self.provider.embed(texts).await
    }
}

/// A schema name for `T` (letters, digits, `_`), as providers require.
fn type_label<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full).rsplit("::").next().unwrap_or(full);
    let clean: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if clean.is_empty() { "output".into() } else { clean }
}

/// A model maps free-text human feedback to one of a step's outcomes (`#[human_feedback(llm =
/// ..)]`, [`HumanFeedback::classifier`](crewflow_core::HumanFeedback::classifier)).
impl crewflow_core::OutcomeClassifier for Llm {
    fn classify(&self, feedback: &str, outcomes: &[Arc<str>]) -> crewflow_core::feedback::ClassifyFuture {
        let (llm, feedback) = (self.clone(), feedback.to_string());
        let outcomes: Vec<String> = outcomes.iter().map(|o| o.to_string()).collect();
        Box::pin(async move {
            let labels: Vec<&str> = outcomes.iter().map(String::as_str).collect();
            let text = format!(
                "A reviewer gave this feedback on a piece of work: \"{feedback}\". Which outcome does it mean?"
            );
            match llm.classify(&text, &labels).await {
                Ok(label) => Ok(Some(label)),
                // The model answered, but with none of the outcomes: not a failure of the call.
                Err(LlmError::InvalidOutput { .. }) => Ok(None),
                Err(e) => Err(crewflow_core::StepError::from_boxed(Box::new(e))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_strings_pick_providers_and_name_missing_keys() {
        let err = Llm::with_options("anthropic/claude", LlmOptions::default()).err();
        // Whether the variable is set on this machine or not, a key given explicitly works.
        let ok = Llm::with_options("anthropic/claude-sonnet-4-5", LlmOptions::default().api_key("k")).unwrap();
        assert_eq!((ok.provider(), ok.model()), ("anthropic", "claude-sonnet-4-5"));
        if env("ANTHROPIC_API_KEY").is_none() {
            assert_eq!(
                err.map(|e| e.to_string()).unwrap_or_default(),
                "anthropic needs an API key: set ANTHROPIC_API_KEY"
            );
        }
        assert!(matches!(Llm::new("mystery/model"), Err(LlmError::UnknownModel(_))));
        assert!(matches!(Llm::new("openai"), Err(LlmError::UnknownModel(_))));
        let custom = Llm::with_options("openai/qwen", LlmOptions::default().base_url("http://127.0.0.1:1")).unwrap();
        assert_eq!(custom.provider(), "openai", "a custom server needs no key");
        assert_eq!(Llm::with_options("groq/llama", LlmOptions::default().api_key("k")).unwrap().provider(), "openai");
    }

    #[test]
    fn schema_names_are_clean() {
        assert_eq!(type_label::<Vec<u8>>(), "Vec");
        assert_eq!(type_label::<crate::types::ChatResponse>(), "ChatResponse");
    }
}
