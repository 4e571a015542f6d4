//! The step context: what a running step can reach.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::cancel::Canceller;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::event::EventKind;
use crate::feedback::{FeedbackProvider, FeedbackResult};
use crate::id::RunId;
use crate::input::{Answer, InputProvider, InputRecord, InputRequest, record};
use crate::journal::{Journal, OnceError};
use crate::scope::{HasTelemetry, RunTelemetry, TokenUsage};
use crate::uncommitted::StateLog;

/// What a run shares between its steps.
pub(crate) struct RunShared<S> {
    pub id: RunId,
    pub flow: Arc<str>,
    pub state: Mutex<S>,
    pub cancel: Canceller,
    pub telemetry: RunTelemetry,
    pub input: Option<Arc<dyn InputProvider>>,
    pub input_history: Mutex<Vec<InputRecord>>,
    /// The flow's feedback provider (a step's own provider comes first).
    pub feedback: Option<Arc<dyn FeedbackProvider>>,
    pub feedback_history: Mutex<Vec<FeedbackResult>>,
    /// Asks the driver for a checkpoint (before a step waits for a person); present when the
    /// run is durable.
    pub checkpoints: Option<Box<CheckpointAsks>>,
    /// The changes of executions in flight, kept out of checkpoints; present when the run is
    /// durable (see [`crate::uncommitted`]). Both boxed: every run in flight holds this
    /// record, and most have no store.
    pub uncommitted: Option<Box<StateLog<S>>>,
    /// The journal of side effects: set when a durable run is recorded or claimed, or on the
    /// first [`Cx::once`] of a run without a store (boxed: most runs never use it).
    pub journal: std::sync::OnceLock<Box<Journal>>,
}

/// A step's request for a checkpoint now, answered once it is written.
pub(crate) type CheckpointAsk = tokio::sync::oneshot::Sender<()>;

/// Both ends of the checkpoint-request channel: steps send, the driver takes the receiver.
pub(crate) struct CheckpointAsks {
    pub tx: tokio::sync::mpsc::UnboundedSender<CheckpointAsk>,
    pub rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<CheckpointAsk>>>,
}

impl CheckpointAsks {
    pub fn new() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        CheckpointAsks { tx, rx: Mutex::new(Some(rx)) }
    }
}

impl<S: Send + Sync> HasTelemetry for RunShared<S> {
    fn telemetry(&self) -> &RunTelemetry {
        &self.telemetry
    }

    fn journal(&self) -> &Journal {
        RunShared::journal(self)
    }

    fn flow_name(&self) -> &str {
        &self.flow
    }

    fn flow_feedback_provider(&self) -> Option<Arc<dyn FeedbackProvider>> {
        self.feedback.clone()
    }

    fn feedback_history(&self) -> &Mutex<Vec<FeedbackResult>> {
        &self.feedback_history
    }
}

impl<S> RunShared<S> {
    pub fn with_state<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        // A step that panicked while updating the state fails the run; the state itself is
        // still well-formed (the closure ran to its panic), so poisoning is not fatal here.
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    pub fn with_input_history<R>(&self, f: impl FnOnce(&mut Vec<InputRecord>) -> R) -> R {
        f(&mut self.input_history.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn with_feedback_history<R>(&self, f: impl FnOnce(&mut Vec<FeedbackResult>) -> R) -> R {
        f(&mut self.feedback_history.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The run's journal (a run without a store gets one that records nothing).
    pub fn journal(&self) -> &Journal {
        self.journal.get_or_init(|| Box::new(Journal::new(None, self.id)))
    }

    /// Writes a checkpoint now (if the run is durable) and waits until it is written.
    pub async fn checkpoint_now(&self) {
        let Some(asks) = &self.checkpoints else { return };
        let (done, written) = tokio::sync::oneshot::channel();
        if asks.tx.send(done).is_ok() {
            // An error means the driver stopped listening (the run is ending): nothing to wait for.
            let _ = written.await;
        }
    }
}

/// The context of one step execution: the run's state, its id, cancellation and events.
///
/// State is reached through short closures ([`state`](Cx::state), [`update`](Cx::update)). The
/// lock is held only while the closure runs and a closure cannot `.await`, so concurrent steps
/// never deadlock on it and no update is lost.
///
/// ```
/// # use crewflow_core::Cx;
/// # #[derive(Default)] struct Counter { n: u32 }
/// # fn demo(cx: &Cx<Counter>) {
/// let before = cx.state(|s| s.n);
/// cx.update(|s| s.n += 1);
/// # }
/// ```
pub struct Cx<S> {
    run: Arc<RunShared<S>>,
    step: Arc<str>,
    activation: u64,
}

impl<S> Clone for Cx<S> {
    fn clone(&self) -> Self {
        Cx { run: self.run.clone(), step: self.step.clone(), activation: self.activation }
    }
}

impl<S: Send + Sync + 'static> Cx<S> {
    pub(crate) fn new(run: Arc<RunShared<S>>, step: Arc<str>, activation: u64) -> Self {
        Cx { run, step, activation }
    }

    /// Reads the state.
    pub fn state<R>(&self, read: impl FnOnce(&S) -> R) -> R {
        self.run.with_state(|s| read(s))
    }

    /// Changes the state.
    ///
    /// Other steps see the change at once. In a durable run, a checkpoint holds it only once
    /// this step has completed: if the step fails, or the process dies before it completes,
    /// the step runs again on the state without its changes (see `docs/store.md`).
    pub fn update<R>(&self, change: impl FnOnce(&mut S) -> R) -> R {
        match &self.run.uncommitted {
            Some(log) => self.run.with_state(|s| log.update(self.activation, s, change)),
            None => self.run.with_state(change),
        }
    }

    /// A copy of the whole state.
    pub fn snapshot(&self) -> S
    where
        S: Clone,
    {
        self.state(S::clone)
    }

    /// The run's id.
    pub fn run_id(&self) -> RunId {
        self.run.id
    }

    /// The flow's name.
    pub fn flow_name(&self) -> &str {
        &self.run.flow
    }

    /// This step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// The step scope of this execution (see [`crate::scope`]).
    pub(crate) fn scope(&self) -> crate::scope::StepScope {
        crate::scope::StepScope::new(self.run.id, self.step.clone(), self.activation, self.run.clone())
    }

    /// This execution's id within the run.
    pub fn activation(&self) -> u64 {
        self.activation
    }

    /// Whether the run is being cancelled (a sibling failed, or the run's handle cancelled it).
    pub fn is_cancelled(&self) -> bool {
        self.run.cancel.is_cancelled()
    }

    /// Resolves when the run is cancelled; `select!` on it to stop long work early.
    pub async fn cancelled(&self) {
        self.run.cancel.cancelled().await
    }

    /// Asks for free-form input (a person at a terminal, a chat front end, ...) through the
    /// flow's [`InputProvider`] and waits for the answer without blocking the runtime. A flow
    /// without one uses the process default ([`set_default_input_provider`](crate::set_default_input_provider)),
    /// else the terminal ([`ConsoleInput`](crate::ConsoleInput)): the same policy as human feedback.
    ///
    /// With a `timeout`, an answer that does not come in time is [`Answer::TimedOut`]. The
    /// question and the answer are events (`input_requested`, `input_received`) and entries
    /// of the run's input history.
    ///
    /// A durable run is checkpointed before the wait, with this step still in flight: after a
    /// crash during the wait the step runs again from its start and finds the state it wrote
    /// before asking, so make those writes idempotent (set, do not increment).
    pub async fn ask(&self, message: impl Into<String>, timeout: Option<Duration>) -> Result<Answer, Error> {
        self.ask_with(message, None, timeout).await
    }

    /// [`ask`](Cx::ask), with metadata for the provider.
    pub async fn ask_with(
        &self,
        message: impl Into<String>,
        metadata: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<Answer, Error> {
        let provider = self.run.input.clone().unwrap_or_else(crate::defaults::input_provider);
        let request = InputRequest { run_id: self.run.id, step: self.step.clone(), message: message.into(), metadata };
        let (message, metadata) = (request.message.clone(), request.metadata.clone());
        self.run
            .telemetry
            .events
            .emit(self.run.id, Some(&self.step), || EventKind::InputRequested { message, metadata });
        // Whatever the step did so far survives a crash while the person thinks.
        self.run.checkpoint_now().await;
        let pending = provider.request(&request);
        let answered = match timeout {
            Some(limit) => tokio::time::timeout(limit, pending).await.ok(),
            None => Some(pending.await),
        };
        let answer = match answered {
            None => Answer::TimedOut,
            Some(Ok(Some(response))) => Answer::Given(response),
            Some(Ok(None)) => Answer::Closed,
            Some(Err(e)) => {
                return Err(Error::InputProvider { step: self.step.to_string(), source: e.into_boxed() });
            }
        };
        let entry = record(&request, &answer);
        let (message, response) = (entry.message.clone(), entry.response.clone());
        let timed_out = answer == Answer::TimedOut;
        self.run.with_input_history(|h| h.push(entry));
        self.run.telemetry.events.emit(self.run.id, Some(&self.step), || EventKind::InputReceived {
            message,
            response,
            timed_out,
        });
        Ok(answer)
    }

    /// Runs a side effect once: its result is recorded in the run's journal before this
    /// returns, and when this step runs again (after a crash, on resume, on a retry) the same
    /// call returns the recorded result without running `op` again (see [`crate::journal`]).
    ///
    /// `op` gets the call's idempotency key (the same as [`idempotency_key`](Cx::idempotency_key)
    /// gives for `name`); pass it to services that dedupe on their side. Calls are told apart
    /// by `name` and, for repeated calls with one name in one step, by their order. A failed
    /// `op` records nothing. The result must serialize to JSON. A run without a store records
    /// nothing: `op` runs every time.
    ///
    /// ```
    /// # use crewflow_core::{Cx, StepError};
    /// # #[derive(Default)] struct Order { receipt: Option<String> }
    /// # async fn charge(key: &str, cents: u64) -> Result<String, std::io::Error> { Ok(format!("receipt-{key}")) }
    /// # async fn demo(cx: &Cx<Order>) -> Result<(), StepError> {
    /// let receipt = cx.once("charge", |key| async move { charge(&key, 4_200).await }).await?;
    /// cx.update(|o| o.receipt = Some(receipt));
    /// # Ok(()) }
    /// ```
    pub async fn once<T, E, Fut>(&self, name: &str, op: impl FnOnce(String) -> Fut) -> Result<T, OnceError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        E: Into<crate::error::BoxError>,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.run.journal().once(self.activation, name, op).await
    }

    /// A key for calls to outside systems that dedupe on their side (payments, mail): the same
    /// every time this execution of the step runs (a re-run after a crash, a resume, a retry),
    /// different in every other run and in every round of a loop.
    ///
    /// ```
    /// # use crewflow_core::Cx;
    /// # fn demo(cx: &Cx<()>) {
    /// let key = cx.idempotency_key("send-invoice");
    /// // request.header("Idempotency-Key", &key)
    /// # assert!(key.ends_with(":send-invoice"));
    /// # }
    /// ```
    pub fn idempotency_key(&self, name: &str) -> String {
        crate::journal::idempotency_key(self.run.id, self.activation, name)
    }

    /// Every question asked in this run so far, with its answer.
    pub fn input_history(&self) -> Vec<InputRecord> {
        self.run.with_input_history(|h| h.clone())
    }

    /// The latest feedback of this run (from any step), if any.
    pub fn last_feedback(&self) -> Option<FeedbackResult> {
        self.run.with_feedback_history(|h| h.last().cloned())
    }

    /// Every feedback of this run so far, in the order it came (kept across pauses).
    pub fn feedback_history(&self) -> Vec<FeedbackResult> {
        self.run.with_feedback_history(|h| h.clone())
    }

    pub(crate) fn shared(&self) -> &Arc<RunShared<S>> {
        &self.run
    }

    /// Tokens the run's model calls have used so far.
    pub fn usage(&self) -> TokenUsage {
        self.run.telemetry.usage()
    }

    /// Emits a custom event on the run's stream.
    pub fn emit(&self, name: &str, data: impl Serialize) {
        let data =
            serde_json::to_value(data).unwrap_or_else(|e| serde_json::json!({ "unserializable": e.to_string() }));
        self.run
            .telemetry
            .events
            .emit(self.run.id, Some(&self.step), || EventKind::Custom { name: Arc::from(name), data });
    }
}
