//! Human feedback on a step's output: [`HumanFeedback`] (`#[human_feedback(..)]` in a
//! `#[flow]`), the providers that collect it, and the pause / resume protocol.
//!
//! After a step marked for feedback returns, the run asks a [`FeedbackProvider`] about the
//! step's output. A *blocking* provider ([`ConsoleFeedback`], or any provider that answers)
//! answers in place and the run goes on. A *non-blocking* provider ([`DeferredFeedback`], a
//! webhook, a queue) answers [`FeedbackReply::Pending`]: the run lets the branches already in
//! flight finish, writes one checkpoint holding the whole frontier and the request, and ends
//! *paused* ([`Run::paused`](crate::Run::paused)). [`Flow::resume_with_feedback`]
//! continues it exactly, in this process or in another one sharing the store.
//!
//! Without `emit`, listeners of the step receive a [`FeedbackResult`] (the output and the
//! feedback). With `emit`, the feedback is mapped to one outcome — an exact match first, then a
//! case-insensitive one, then the [`OutcomeClassifier`] (a model), then the default — and the
//! outcome is dispatched as a route label, with the [`FeedbackResult`] as the payload. A router
//! with feedback (and no `emit`) keeps routing by its own label; its feedback goes to the
//! history only.
//!
//! Learning ([`HumanFeedback::learn`]): a [`FeedbackLearner`] (e.g. `crewflow::memory::Lessons`)
//! improves the output with the lessons of earlier reviews before the reviewer sees it, and
//! distills lessons from every non-blank answer afterwards, live and on resume alike.
//!
//! [`Flow::resume_with_feedback`]: crate::Flow::resume_with_feedback

use crate::error::BuildError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, StepError};
use crate::id::RunId;

/// How a step asks for feedback on its output (the builder form of `#[human_feedback(..)]`).
///
/// ```
/// use crewflow_core::HumanFeedback;
///
/// let review = HumanFeedback::new("Publish this draft?")
///     .emit(["approved", "rejected"])
///     .default_outcome("rejected");
/// ```
#[derive(Clone)]
pub struct HumanFeedback {
    pub(crate) message: String,
    pub(crate) emit: Vec<Arc<str>>,
    pub(crate) default_outcome: Option<Arc<str>>,
    pub(crate) classifier: Option<Arc<dyn OutcomeClassifier>>,
    pub(crate) provider: Option<Arc<dyn FeedbackProvider>>,
    pub(crate) metadata: Option<Value>,
    pub(crate) learner: Option<Arc<dyn FeedbackLearner>>,
    /// `None`: [`DEFAULT_LEARN_SOURCE`]. Kept apart so that the rules see whether it was set.
    pub(crate) learn_source: Option<Arc<str>>,
    pub(crate) learn_strict: bool,
}

/// The default [`HumanFeedback::learn_source`]: lessons from human review.
pub const DEFAULT_LEARN_SOURCE: &str = "hitl";

impl std::fmt::Debug for HumanFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HumanFeedback")
            .field("message", &self.message)
            .field("emit", &self.emit)
            .field("default_outcome", &self.default_outcome)
            .field("classifier", &self.classifier.is_some())
            .field("provider", &self.provider.is_some())
            .field("metadata", &self.metadata)
            .field("learner", &self.learner.is_some())
            .field("learn_source", &self.learn_source)
            .field("learn_strict", &self.learn_strict)
            .finish()
    }
}

impl HumanFeedback {
    /// Asks `message` about the step's output.
    pub fn new(message: impl Into<String>) -> Self {
        HumanFeedback {
            message: message.into(),
            emit: Vec::new(),
            default_outcome: None,
            classifier: None,
            provider: None,
            metadata: None,
            learner: None,
            learn_source: None,
            learn_strict: false,
        }
    }

    /// The outcomes the feedback maps to; each is dispatched as a route label.
    pub fn emit<L: Into<Arc<str>>>(mut self, outcomes: impl IntoIterator<Item = L>) -> Self {
        self.emit = outcomes.into_iter().map(Into::into).collect();
        self
    }

    /// The outcome when the feedback is empty or matches nothing.
    pub fn default_outcome(mut self, outcome: impl Into<Arc<str>>) -> Self {
        self.default_outcome = Some(outcome.into());
        self
    }

    /// Maps free-text feedback to an outcome when it matches none exactly (`crewflow::llm::Llm`
    /// implements [`OutcomeClassifier`]).
    ///
    /// Takes a value, or a shared `Arc<dyn OutcomeClassifier>` ([`IntoShared`](crate::IntoShared)).
    pub fn classifier(mut self, classifier: impl crate::IntoShared<dyn OutcomeClassifier>) -> Self {
        self.classifier = Some(classifier.into_shared());
        self
    }

    /// Who collects this step's feedback (default: the flow's provider, else the console).
    ///
    /// Takes a value, or a shared `Arc<dyn FeedbackProvider>` ([`IntoShared`](crate::IntoShared)).
    pub fn provider(mut self, provider: impl crate::IntoShared<dyn FeedbackProvider>) -> Self {
        self.provider = Some(provider.into_shared());
        self
    }

    /// Data passed to the provider and kept in the result.
    pub fn metadata(mut self, metadata: impl Serialize) -> Self {
        self.metadata = serde_json::to_value(metadata).ok();
        self
    }

    /// Learns from the reviews of this step (see [`FeedbackLearner`]): before the reviewer
    /// sees the output, the learner may improve it with the lessons of earlier reviews (the
    /// improved output is what the reviewer sees and what the step records); after a
    /// non-blank answer, it distills lessons from it. Failures are `feedback_learn_failed`
    /// events and the run goes on, unless [`learn_strict`](HumanFeedback::learn_strict).
    ///
    /// ```
    /// use crewflow_core::feedback::{FeedbackLearner, HumanFeedback, ImproveFuture, LearnFuture, LearnRequest};
    ///
    /// struct Nothing;
    /// impl FeedbackLearner for Nothing {
    ///     fn improve(&self, _: &LearnRequest) -> ImproveFuture { Box::pin(async { Ok(None) }) }
    ///     fn learn(&self, _: &LearnRequest) -> LearnFuture { Box::pin(async { Ok(Vec::new()) }) }
    /// }
    ///
    /// let review = HumanFeedback::new("Good to send?").learn(Nothing).learn_strict(true);
    /// ```
    ///
    /// Takes a value, or a shared `Arc<dyn FeedbackLearner>` ([`IntoShared`](crate::IntoShared)).
    pub fn learn(mut self, learner: impl crate::IntoShared<dyn FeedbackLearner>) -> Self {
        self.learner = Some(learner.into_shared());
        self
    }

    /// The source lessons are stored with and recalled by (default [`DEFAULT_LEARN_SOURCE`],
    /// `"hitl"`).
    pub fn learn_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.learn_source = Some(source.into());
        self
    }

    /// When the pre-review improvement fails, fail the step (an [`FeedbackError::FeedbackLearn`](crate::FeedbackError::FeedbackLearn))
    /// instead of showing the raw output with a warning event. Distillation failures never
    /// fail the run. Needs [`learn`](HumanFeedback::learn).
    pub fn learn_strict(mut self, strict: bool) -> Self {
        self.learn_strict = strict;
        self
    }

    /// The source lessons are stored with and recalled by.
    pub(crate) fn source_of_lessons(&self) -> &str {
        self.learn_source.as_deref().unwrap_or(DEFAULT_LEARN_SOURCE)
    }

    /// The configuration problems a build reports: the rules of `crewflow_rules`, shared with
    /// the macro and declarative flows.
    pub(crate) fn check(&self, step: &str, is_router: bool) -> Result<(), Error> {
        let options = crewflow_rules::FeedbackOptions {
            is_router,
            emit: self.emit.iter().map(|o| &**o).collect(),
            default_outcome: self.default_outcome.as_deref(),
            classifier: self.classifier.is_some(),
            learner: self.learner.is_some(),
            learn_strict: self.learn_strict,
            learn_source: self.learn_source.is_some(),
        };
        crewflow_rules::check_feedback(&options)
            .map_err(|rule| BuildError::Feedback { step: step.to_string(), rule }.into())
    }
}

/// What the reviewer is asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRequest {
    /// The run waiting for the answer.
    pub run_id: RunId,
    /// The request's id within the run (the reviewed step execution's id): answers to a run
    /// with several pending requests name it
    /// ([`Flow::resume_with_feedback_for`](crate::Flow::resume_with_feedback_for)).
    #[serde(default)]
    pub id: u64,
    /// The flow's name.
    pub flow: String,
    /// The step whose output is reviewed.
    pub step: String,
    /// The question.
    pub message: String,
    /// The step's output, as JSON.
    pub output: Value,
    /// The outcomes the answer maps to (empty: free feedback).
    pub emit: Vec<String>,
    /// The outcome of an empty answer.
    pub default_outcome: Option<String>,
    /// The step's feedback metadata.
    pub metadata: Option<Value>,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
}

/// A provider's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedbackReply {
    /// The reviewer answered now.
    Answer(String),
    /// The answer will come later, through
    /// [`Flow::resume_with_feedback`](crate::Flow::resume_with_feedback): the run pauses.
    Pending,
}

/// The future a [`FeedbackProvider`] returns.
pub type FeedbackFuture = Pin<Box<dyn Future<Output = Result<FeedbackReply, StepError>> + Send>>;

/// The future [`FeedbackProvider::paused`] returns.
pub type NotifyFuture = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send>>;

/// Collects feedback. Closures `Fn(&FeedbackRequest) -> Fut` are providers.
pub trait FeedbackProvider: Send + Sync + 'static {
    /// Asks for feedback; returns the answer, or [`FeedbackReply::Pending`] to pause the run.
    fn request(&self, request: &FeedbackRequest) -> FeedbackFuture;

    /// Called for each request this provider answered `Pending` to, once the run is paused and
    /// its checkpoint written: the place to tell the reviewer (a webhook post, a queue
    /// message), because an answer is only taken once the pause is recorded. A failure is
    /// returned by the kickoff (or resume) as [`FeedbackError::FeedbackNotification`](crate::FeedbackError::FeedbackNotification); the run stays
    /// paused all the same.
    fn paused(&self, request: &FeedbackRequest) -> NotifyFuture {
        let _ = request;
        Box::pin(async { Ok(()) })
    }

    /// Whether this provider may pause runs (then the flow must have a store, checked at
    /// build time).
    fn pauses(&self) -> bool {
        false
    }
}

impl<F, Fut> FeedbackProvider for F
where
    F: Fn(&FeedbackRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<FeedbackReply, StepError>> + Send + 'static,
{
    fn request(&self, request: &FeedbackRequest) -> FeedbackFuture {
        Box::pin(self(request))
    }
}

/// Asks on the terminal: prints the output and the question and takes the next line of standard
/// input (the runtime keeps running). End of input is an error, never an empty answer that
/// would silently take the default outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleFeedback;

impl FeedbackProvider for ConsoleFeedback {
    fn request(&self, request: &FeedbackRequest) -> FeedbackFuture {
        let output = match &request.output {
            Value::String(s) => s.clone(),
            other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
        };
        let choices = if request.emit.is_empty() { String::new() } else { format!(" [{}]", request.emit.join(" / ")) };
        let prompt = format!("\n--- {} ---\n{output}\n\n{}{choices} ", request.step, request.message);
        let step = request.step.clone();
        Box::pin(async move {
            match crate::console::ask_line(&prompt).await {
                Ok(Some(line)) => Ok(FeedbackReply::Answer(line)),
                // Never an empty answer (which would take the default outcome): nobody answered.
                Ok(None) => Err(StepError::msg(format!(
                    "standard input ended before anyone reviewed step `{step}`; run it in a terminal, or use a provider that pauses (DeferredFeedback)"
                ))),
                Err(e) => Err(StepError::msg(format!("reading standard input failed: {e}"))),
            }
        })
    }
}

/// Pauses the run and waits for the answer to come through
/// [`Flow::resume_with_feedback`](crate::Flow::resume_with_feedback): for reviews done in
/// another program (a web page, a chat, a command line run later).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferredFeedback;

impl FeedbackProvider for DeferredFeedback {
    fn request(&self, _: &FeedbackRequest) -> FeedbackFuture {
        Box::pin(async { Ok(FeedbackReply::Pending) })
    }

    fn pauses(&self) -> bool {
        true
    }
}

/// The future an [`OutcomeClassifier`] returns.
pub type ClassifyFuture = Pin<Box<dyn Future<Output = Result<Option<String>, StepError>> + Send>>;

/// Maps free-text feedback to one of a closed set of outcomes (usually a language model).
pub trait OutcomeClassifier: Send + Sync + 'static {
    /// The outcome `feedback` means, or `None` if it means none of them.
    fn classify(&self, feedback: &str, outcomes: &[Arc<str>]) -> ClassifyFuture;
}

impl<F> OutcomeClassifier for F
where
    F: Fn(&str, &[Arc<str>]) -> ClassifyFuture + Send + Sync + 'static,
{
    fn classify(&self, feedback: &str, outcomes: &[Arc<str>]) -> ClassifyFuture {
        self(feedback, outcomes)
    }
}

/// What a [`FeedbackLearner`] is told about one review.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnRequest {
    /// The run.
    pub run_id: RunId,
    /// The review's id within the run ([`FeedbackRequest::id`]): with `run_id`, it names one
    /// answer, so a learner can store its lessons once however often it is called for it.
    pub request_id: u64,
    /// The flow's name.
    pub flow: String,
    /// The reviewed step.
    pub step: String,
    /// The question put to the reviewer.
    pub message: String,
    /// The output (before review: the step's own; after: the one the reviewer saw).
    pub output: Value,
    /// The reviewer's words (empty before review).
    pub feedback: String,
    /// Where the lessons come from and are recalled by ([`HumanFeedback::learn_source`]).
    pub source: String,
}

/// The future [`FeedbackLearner::improve`] returns.
pub type ImproveFuture = Pin<Box<dyn Future<Output = Result<Option<Value>, StepError>> + Send>>;

/// The future [`FeedbackLearner::learn`] returns.
pub type LearnFuture = Pin<Box<dyn Future<Output = Result<Vec<String>, StepError>> + Send>>;

/// Learns from human reviews ([`HumanFeedback::learn`]); `crewflow::memory::Lessons`
/// implements it over a memory and a model.
pub trait FeedbackLearner: Send + Sync + 'static {
    /// Before review: the output improved with what earlier reviews taught, or `None` to show
    /// it as it is.
    fn improve(&self, request: &LearnRequest) -> ImproveFuture;

    /// After a non-blank answer: distills lessons from it and keeps them; returns the lessons
    /// kept. Called once per answer, but may be called again for the same
    /// ([`run_id`](LearnRequest::run_id), [`request_id`](LearnRequest::request_id)) after a
    /// crash: keep the lessons of one answer once.
    fn learn(&self, request: &LearnRequest) -> LearnFuture;
}

/// A reviewed output: what the step produced, what the reviewer said, what it meant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedbackResult {
    /// The reviewed step.
    pub step: String,
    /// The step's output, as JSON.
    pub output: Value,
    /// The reviewer's words.
    pub feedback: String,
    /// The outcome dispatched (steps with `emit`), else `None`.
    pub outcome: Option<String>,
    /// The step's feedback metadata.
    pub metadata: Option<Value>,
    /// When the answer came.
    pub at: DateTime<Utc>,
    /// For an answer recorded from inside a step's body
    /// ([`StepScope::record_feedback`](crate::scope::StepScope::record_feedback): a task's human
    /// review), its key in the run: the run, the step's execution, the caller's name and order.
    /// It is the same when the step runs again, which keeps the answer once in the history.
    /// `None` for the answers of `#[human_feedback]` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl FeedbackResult {
    /// The reviewed output as a `T`.
    pub fn output_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.output)
    }
}

/// A run waiting for feedback: what [`Run::paused`](crate::Run::paused) reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// The run to resume with [`Flow::resume_with_feedback`](crate::Flow::resume_with_feedback).
    pub run_id: RunId,
    /// What the reviewer is asked.
    pub request: FeedbackRequest,
}

/// A step execution waiting for feedback, as kept in the run's checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingFeedback {
    /// The paused execution (still in flight in the frontier).
    pub activation: u64,
    pub request: FeedbackRequest,
    /// A router's own label (routers with feedback keep routing by it).
    pub label: Option<Arc<str>>,
    /// Asked in this process's drive of the run: its provider is told once the pause is saved.
    #[serde(skip)]
    pub fresh: bool,
}

/// What a run keeps about feedback, stored with its checkpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct FeedbackRecord {
    pub pending: Vec<PendingFeedback>,
    pub history: Vec<FeedbackResult>,
    /// The questions asked with `cx.ask` and their answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<crate::input::InputRecord>,
}

impl FeedbackRecord {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.history.is_empty() && self.inputs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::resolve_outcome;

    fn config() -> HumanFeedback {
        HumanFeedback::new("ok?").emit(["approved", "rejected"])
    }

    async fn outcome(c: &HumanFeedback, answer: &str) -> Result<Option<Arc<str>>, Error> {
        resolve_outcome(c, "review", answer).await
    }

    #[tokio::test]
    async fn answers_map_exactly_then_case_insensitively_then_by_default() {
        let c = config().default_outcome("rejected");
        assert_eq!(outcome(&c, "approved").await.unwrap().as_deref(), Some("approved"));
        assert_eq!(outcome(&c, "  APPROVED ").await.unwrap().as_deref(), Some("approved"));
        assert_eq!(outcome(&c, "").await.unwrap().as_deref(), Some("rejected"));
        assert_eq!(outcome(&c, "meh").await.unwrap().as_deref(), Some("rejected"));
        assert_eq!(outcome(&HumanFeedback::new("free"), "anything").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unmatched_answer_without_default_is_an_error_naming_the_outcomes() {
        let e = outcome(&config(), "maybe later").await.unwrap_err().to_string();
        assert!(e.contains("maybe later") && e.contains("\"approved\", \"rejected\""), "{e}");
    }

    #[tokio::test]
    async fn the_classifier_decides_free_text_and_is_checked_against_the_outcomes() {
        let c = config().classifier(|fb: &str, _: &[Arc<str>]| -> ClassifyFuture {
            let label = if fb.contains("good") { "Approved" } else { "nonsense" };
            Box::pin(async move { Ok(Some(label.to_string())) })
        });
        assert_eq!(outcome(&c, "looks good to me").await.unwrap().as_deref(), Some("approved"));
        assert!(outcome(&c, "hmm").await.is_err(), "a label outside the outcomes is not taken");
    }

    #[test]
    fn bad_configurations_are_build_errors() {
        assert!(config().check("s", true).is_err(), "emit on a router");
        assert!(HumanFeedback::new("x").default_outcome("a").check("s", false).is_err());
        assert!(config().default_outcome("maybe").check("s", false).is_err());
        assert!(config().default_outcome("approved").check("s", false).is_ok());
    }
}
