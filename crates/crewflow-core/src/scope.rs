//! The step scope: which run and step the current task is working for.
//!
//! The driver runs every step inside a scope, so code called from a step — a model call, a tool
//! — can report to the run's event stream and usage totals without being handed the step's
//! context. Outside a step, [`current`] is `None` and such code simply reports nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::event::{EventHub, EventKind};
use crate::feedback::FeedbackResult;
use crate::id::RunId;

/// Tokens a model call (or a whole run) used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's cache (included in `prompt_tokens`).
    pub cached_tokens: u64,
}

impl TokenUsage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Adds another usage to this one.
    pub fn add(&mut self, other: &TokenUsage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

/// What a run shares with the code its steps call. Part of the run's shared record (no
/// allocation of its own).
pub(crate) struct RunTelemetry {
    pub events: EventHub,
    calls: AtomicU64,
    usage: Mutex<TokenUsage>,
    /// Usage of the step executions in flight that made model calls, by activation: the
    /// driver takes an execution's sum when it ends, for its log line.
    by_step: Mutex<Vec<(u64, TokenUsage)>>,
    /// How many entries `by_step` holds (read without the lock: most steps call no model).
    steps_with_usage: AtomicU64,
}

impl RunTelemetry {
    pub fn new(events: EventHub) -> Self {
        RunTelemetry {
            events,
            calls: AtomicU64::new(0),
            usage: Mutex::new(TokenUsage::default()),
            by_step: Mutex::new(Vec::new()),
            steps_with_usage: AtomicU64::new(0),
        }
    }

    pub fn usage(&self) -> TokenUsage {
        *self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_step_usage(&self, activation: u64, usage: &TokenUsage) {
        let mut by_step = self.by_step.lock().unwrap_or_else(PoisonError::into_inner);
        match by_step.iter_mut().find(|(a, _)| *a == activation) {
            Some((_, sum)) => sum.add(usage),
            None => {
                by_step.push((activation, *usage));
                self.steps_with_usage.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// The tokens the model calls of execution `activation` used, summed, if it made any
    /// (every attempt of a retried step counts); forgets them.
    pub fn take_step_usage(&self, activation: u64) -> Option<TokenUsage> {
        if self.steps_with_usage.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut by_step = self.by_step.lock().unwrap_or_else(PoisonError::into_inner);
        let at = by_step.iter().position(|(a, _)| *a == activation)?;
        self.steps_with_usage.fetch_sub(1, Ordering::Release);
        Some(by_step.swap_remove(at).1)
    }
}

/// A run's telemetry and journal, whatever the run's state type.
pub(crate) trait HasTelemetry: Send + Sync {
    fn telemetry(&self) -> &RunTelemetry;
    fn journal(&self) -> &crate::journal::Journal;
    fn flow_name(&self) -> &str;
    /// The flow's own feedback provider, if it has one.
    fn flow_feedback_provider(&self) -> Option<Arc<dyn crate::feedback::FeedbackProvider>>;
    /// The run's feedback history (what `Run::feedback_history` and checkpoints hold).
    fn feedback_history(&self) -> &Mutex<Vec<FeedbackResult>>;
}

/// The run and step the current task works for (see the [module docs](self)).
#[derive(Clone)]
pub struct StepScope {
    run_id: RunId,
    step: Arc<str>,
    activation: u64,
    run: Arc<dyn HasTelemetry>,
}

tokio::task_local! {
    static CURRENT: StepScope;
}

/// The scope of the step the current task is running, if any.
pub fn current() -> Option<StepScope> {
    CURRENT.try_with(StepScope::clone).ok()
}

impl StepScope {
    pub(crate) fn new(run_id: RunId, step: Arc<str>, activation: u64, run: Arc<dyn HasTelemetry>) -> Self {
        StepScope { run_id, step, activation, run }
    }

    /// Runs `future` inside this scope. (Not an `async fn`: one would hold `future` twice, as
    /// its argument and inside the scope's future, and every step in flight holds this.)
    pub(crate) fn enter<F: std::future::Future>(self, future: F) -> impl std::future::Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The step.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The flow's name.
    pub fn flow_name(&self) -> &str {
        self.run.flow_name()
    }

    /// This step execution's id within the run ([`Cx::activation`](crate::Cx::activation)).
    pub fn activation(&self) -> u64 {
        self.activation
    }

    /// Who answers human feedback asked from this step by code that names no provider of its
    /// own (a task's review, say): the flow's provider
    /// ([`FlowBuilder::feedback_provider`](crate::FlowBuilder::feedback_provider)), else the
    /// process default ([`set_default_feedback_provider`](crate::set_default_feedback_provider)),
    /// else the terminal ([`ConsoleFeedback`](crate::ConsoleFeedback)) — the policy of
    /// `#[human_feedback]`, whose own `provider` comes first.
    pub fn feedback_provider(&self) -> Arc<dyn crate::feedback::FeedbackProvider> {
        self.run.flow_feedback_provider().unwrap_or_else(crate::defaults::feedback_provider)
    }

    /// Adds an answer a person gave inside this step's body to the run's feedback history, as
    /// a `#[human_feedback]` step adds the answers to its reviews: it is in
    /// [`Cx::feedback_history`](crate::Cx::feedback_history) from now on, in
    /// [`Run::feedback_history`](crate::Run::feedback_history) after the run, and in the stored
    /// run's record from the next checkpoint on. For code that asks a person from inside a step
    /// (a task's human review in `crewflow-agents`); it emits nothing (the caller emits its own
    /// `feedback_received`).
    ///
    /// `name` tells this execution's records apart, as [`once`](StepScope::once)'s does, and
    /// repeated records under one name are told apart by their order; together they are the
    /// record's [`key`](FeedbackResult::key). When the step runs again (a retry, a resume after
    /// a crash) and records the same answers again (replayed from the journal), each replaces
    /// the record of its key instead of adding a second one — and keeps it as it was when the
    /// answer is the same, so its time is the answer's, not the replay's.
    pub fn record_feedback(
        &self,
        name: &str,
        output: serde_json::Value,
        feedback: impl Into<String>,
        outcome: Option<String>,
        metadata: Option<serde_json::Value>,
    ) -> FeedbackResult {
        // A name of its own in the journal's counters, so records never shift `once`'s keys.
        let counted = self.run.journal().next_key(self.activation, &format!("feedback:{name}"));
        let result = FeedbackResult {
            step: self.step.to_string(),
            output,
            feedback: feedback.into(),
            outcome,
            metadata,
            at: chrono::Utc::now(),
            key: Some(crate::journal::idempotency_key(self.run_id, self.activation, &counted)),
        };
        let mut history = self.run.feedback_history().lock().unwrap_or_else(PoisonError::into_inner);
        match history.iter_mut().find(|earlier| earlier.key == result.key) {
            Some(earlier) if same_answer(earlier, &result) => earlier.clone(),
            Some(earlier) => {
                *earlier = result.clone();
                result
            }
            None => {
                history.push(result.clone());
                result
            }
        }
    }

    /// Whether anyone observes the run's events (when not, building them can be skipped).
    pub fn observed(&self) -> bool {
        self.run.telemetry().events.is_active()
    }

    /// Emits an event on the run's stream, attributed to this step.
    pub fn emit(&self, kind: impl FnOnce() -> EventKind) -> u64 {
        self.run.telemetry().events.emit(self.run_id, Some(&self.step), kind)
    }

    /// A number for the next model or tool call of the run (from 1), to pair its events.
    pub fn next_call(&self) -> u64 {
        self.run.telemetry().calls.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Runs `op` once through the run's journal of side effects, as
    /// [`Cx::once`](crate::Cx::once) does for the step this scope belongs to (model and tool
    /// calls made from a step use it).
    pub async fn once<T, E, Fut>(
        &self,
        name: &str,
        op: impl FnOnce(String) -> Fut,
    ) -> Result<T, crate::journal::OnceError>
    where
        T: Serialize + serde::de::DeserializeOwned,
        E: Into<crate::error::BoxError>,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.run.journal().once(self.activation, name, op).await
    }

    /// [`once`](StepScope::once), saying whether the result was replayed from the journal
    /// (`true`: the step runs again and the operation had run before) or the operation ran now;
    /// for events that should tell a replay from the real thing.
    pub async fn once_or_replay<T, E, Fut>(
        &self,
        name: &str,
        op: impl FnOnce(String) -> Fut,
    ) -> Result<(T, bool), crate::journal::OnceError>
    where
        T: Serialize + serde::de::DeserializeOwned,
        E: Into<crate::error::BoxError>,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.run.journal().once_or_replay(self.activation, name, op).await
    }

    /// Adds tokens to the run's usage totals and to this step execution's (its finish log
    /// line, target `crewflow::step`, carries the sum).
    pub fn add_usage(&self, usage: &TokenUsage) {
        let telemetry = self.run.telemetry();
        telemetry.usage.lock().unwrap_or_else(PoisonError::into_inner).add(usage);
        telemetry.add_step_usage(self.activation, usage);
    }
}

/// Whether two records of one key hold the same answer (a replay), whenever each was made.
fn same_answer(a: &FeedbackResult, b: &FeedbackResult) -> bool {
    a.feedback == b.feedback && a.outcome == b.outcome && a.output == b.output && a.metadata == b.metadata
}
