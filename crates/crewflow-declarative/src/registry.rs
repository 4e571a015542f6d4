//! The Rust side of a declarative flow: the functions, providers, models and store that a
//! definition names.
//!
//! A YAML file cannot hold Rust code, so it refers to things by name (`do: {call: code, ref:
//! draft}`, `provider: slack`); the program registers them under those names. Every name is
//! resolved when the flow is built: a definition naming something the registry lacks fails to
//! build, listing what is registered.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crewflow_core::persist::RunStore;
use crewflow_core::{Cx, FeedbackLearner, FeedbackProvider, InputProvider, StepError};
use crewflow_llm::Llm;
use serde::Serialize;
use serde_json::Value;

use crate::state::DeclarativeState;

/// The future a registered function returns.
pub type FunctionFuture = Pin<Box<dyn Future<Output = Result<Value, StepError>> + Send + 'static>>;

/// A registered function, type-erased.
pub(crate) type Function = Arc<dyn Fn(Cx<DeclarativeState>, Call) -> FunctionFuture + Send + Sync>;

/// What a `code` action passes to its function.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The method the action belongs to.
    pub method: String,
    /// What triggered the step: the previous step's output, a feedback result, or `null` for a
    /// start.
    pub input: Value,
    /// The action's `with:` arguments, rendered (templates evaluated); `None` without `with`.
    pub args: Option<Value>,
}

impl Call {
    /// The rendered `with:` arguments, or else the input: what a function usually works on.
    pub fn args_or_input(&self) -> &Value {
        self.args.as_ref().unwrap_or(&self.input)
    }
}

/// Functions, providers, models and a store, by the names a definition uses.
///
/// ```
/// use crewflow_declarative::{Call, Registry};
///
/// let registry = Registry::new().function("shout", |_cx, call: Call| async move {
///     Ok(call.args_or_input().as_str().unwrap_or_default().to_uppercase())
/// });
/// assert_eq!(registry.function_names(), ["shout"]);
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) functions: BTreeMap<String, Function>,
    pub(crate) feedback_providers: BTreeMap<String, Arc<dyn FeedbackProvider>>,
    pub(crate) default_feedback: Option<Arc<dyn FeedbackProvider>>,
    pub(crate) input_providers: BTreeMap<String, Arc<dyn InputProvider>>,
    pub(crate) learners: BTreeMap<String, Arc<dyn FeedbackLearner>>,
    pub(crate) models: BTreeMap<String, Llm>,
    pub(crate) default_model: Option<Llm>,
    pub(crate) store: Option<Arc<dyn RunStore>>,
    #[cfg(feature = "agents")]
    pub(crate) agents: BTreeMap<String, crewflow_agents::Agent>,
    #[cfg(feature = "agents")]
    pub(crate) crews: BTreeMap<String, crewflow_agents::Crew>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("functions", &self.function_names())
            .field("feedback_providers", &self.feedback_providers.keys().collect::<Vec<_>>())
            .field("default_feedback", &self.default_feedback.is_some())
            .field("input_providers", &self.input_providers.keys().collect::<Vec<_>>())
            .field("learners", &self.learners.keys().collect::<Vec<_>>())
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("store", &self.store.is_some())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `function` as `name`, for `do: {call: code, ref: name}`. It receives the step
    /// context (state, `ask`, events) and the [`Call`]; its output is the step's output.
    pub fn function<O, F, Fut>(mut self, name: impl Into<String>, function: F) -> Self
    where
        F: Fn(Cx<DeclarativeState>, Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        O: Serialize,
    {
        let function = Arc::new(function);
        let erased: Function = Arc::new(move |cx, call| {
            let run = function(cx, call);
            Box::pin(async move {
                let output = run.await?;
                serde_json::to_value(output)
                    .map_err(|e| StepError::msg(format!("the function's output is not JSON: {e}")))
            })
        });
        self.functions.insert(name.into(), erased);
        self
    }

    /// Registers a feedback provider as `name`, for `human_feedback: {provider: name}` and
    /// `config: {feedback_provider: name}`.
    pub fn feedback_provider(mut self, name: impl Into<String>, provider: impl FeedbackProvider) -> Self {
        self.feedback_providers.insert(name.into(), Arc::new(provider));
        self
    }

    /// The provider for `human_feedback` blocks that name none, when the definition's `config`
    /// names none either (else the console asks).
    pub fn default_feedback_provider(mut self, provider: impl FeedbackProvider) -> Self {
        self.default_feedback = Some(Arc::new(provider));
        self
    }

    /// Registers an input provider as `name`, for `config: {input_provider: name}`.
    pub fn input_provider(mut self, name: impl Into<String>, provider: impl InputProvider) -> Self {
        self.input_providers.insert(name.into(), Arc::new(provider));
        self
    }

    /// Registers a learner as `name`, for `human_feedback: {learn: name}` (for example
    /// `crewflow::memory::Lessons`, which keeps lessons from reviews in the store).
    pub fn learner(mut self, name: impl Into<String>, learner: impl FeedbackLearner) -> Self {
        self.learners.insert(name.into(), Arc::new(learner));
        self
    }

    /// Registers a configured model as `name`: a definition's `model:` or `llm:` saying `name`
    /// uses it (before the name is read as a model string such as `local` or
    /// `openai/gpt-4o-mini`).
    pub fn model(mut self, name: impl Into<String>, llm: Llm) -> Self {
        self.models.insert(name.into(), llm);
        self
    }

    /// The model of `llm` actions that name none (else `Llm::from_env()`).
    pub fn default_model(mut self, llm: Llm) -> Self {
        self.default_model = Some(llm);
        self
    }

    /// Keeps runs in `store`, whatever the definition's `persist` says (a program's choice
    /// overrides the file's, as a command-line flag overrides a config file).
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Registers `agent` as `name`, for `do: {call: agent, ref: name, prompt: ...}`.
    #[cfg(feature = "agents")]
    pub fn agent(mut self, name: impl Into<String>, agent: crewflow_agents::Agent) -> Self {
        self.agents.insert(name.into(), agent);
        self
    }

    /// Registers `crew` as `name`, for `do: {call: crew, ref: name, inputs: {...}}` (a crew
    /// from YAML: [`Crew::from_yaml`](crewflow_agents::Crew::from_yaml)).
    #[cfg(feature = "agents")]
    pub fn crew(mut self, name: impl Into<String>, crew: crewflow_agents::Crew) -> Self {
        self.crews.insert(name.into(), crew);
        self
    }

    /// The names of the registered functions, sorted.
    pub fn function_names(&self) -> Vec<&str> {
        self.functions.keys().map(String::as_str).collect()
    }
}
