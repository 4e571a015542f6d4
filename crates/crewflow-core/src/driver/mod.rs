//! The driver: a small async loop around the [`Frontier`].
//!
//! It takes the ready activations, runs them concurrently, feeds each completion back to the
//! frontier and emits events, until nothing is left in flight, a step fails, or the run is
//! cancelled.
//!
//! A run's steps are polled by the run's own task (its concurrent steps interleave at their
//! `.await`s, like `join!`), so a run costs one task however many steps it has; runs
//! themselves spread over the runtime's threads. A step doing long CPU work should hand it to
//! `tokio::task::spawn_blocking` (or its own thread pool) so its siblings keep moving.
//!
//! Failure: the first failing step fails the run. The run's cancellation token fires, so
//! siblings can stop cooperatively ([`Cx::cancelled`]); steps still running after the flow's
//! cancellation grace period (100 ms by default) are dropped at their next `.await`. The error
//! names the step and keeps its cause. Cancelling a run through its handle works the same way.
//!
//! Durability (when the flow has a store, see [`crate::persist`]): the run is recorded before
//! its first step; after each completed step the policy selects, a checkpoint (state, frontier,
//! outputs of the steps completed since the last one) is written before the steps it made
//! ready start; the end is recorded, with the run's last completion (one commit for both). A
//! resumed run restores all of it and re-launches the steps that were in flight.
//!
//! A run's whole life lives in this module, one file per part:
//!
//! - here: prepare a run, drive it (launch ready steps, feed completions to the frontier,
//!   retry failed steps);
//! - [`checkpoint`]: the run's record in the store and what a checkpoint holds;
//! - [`end`]: finishing, pausing, failing, and the `Run` returned;
//! - [`resume`]: a stored run decoded and checked before it is claimed, resumed, or read back.

mod checkpoint;
mod end;
mod resume;

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use crate::cancel::Canceller;
use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::cx::{CheckpointAsk, CheckpointAsks, Cx, RunShared};
use crate::error::Error;
use crate::event::{Event, EventHub, EventKind, micros};
use crate::feedback::PendingFeedback;
use crate::flow::{FlowInner, Kickoff};
use crate::frontier::{Activation, Frontier};
use crate::handler::{BoxFuture, Completion};
use crate::id::RunId;
use crate::output::Output;
use crate::persist::{NewRun, ParentStep, RunStatus, RunStore};
use crate::run::Run;
use crate::scope::RunTelemetry;
use crate::state::{FlowState, initial_state};

use crate::uncommitted::StateLog;
use checkpoint::{Durable, Start, frontier_json, output_json, state_json, write_checkpoint};
pub(crate) use end::{notify_reviewers, provider_of};
pub(crate) use resume::{Answered, Restored, drive_resumed, feedback_record, finished_run, paused_run, stored_state};

/// A run whose inputs were checked and whose state is built, not yet started.
pub(crate) struct Prepared<S> {
    shared: Arc<RunShared<S>>,
    payload: Option<Output>,
    budget: u64,
    inputs: Option<serde_json::Map<String, Value>>,
    /// Where the run is recorded: the flow's store, unless a host chose otherwise.
    store: Option<Arc<dyn RunStore>>,
}

impl<S> Prepared<S> {
    pub fn run_id(&self) -> RunId {
        self.shared.id
    }

    pub fn cancel_token(&self) -> Canceller {
        self.shared.cancel.clone()
    }
}

/// Checks the kickoff and builds the run's initial state: bad inputs fail here, before any
/// event or step.
pub(crate) fn prepare<S: FlowState>(
    flow: &FlowInner<S>,
    kickoff: Kickoff,
    stream: Option<UnboundedSender<Event>>,
    initial: Option<S>,
) -> Result<Prepared<S>, Error> {
    prepare_hosted(flow, kickoff, stream, initial, flow.store.clone(), Canceller::new())
}

/// [`prepare`] with the run's own store (not necessarily the flow's) and canceller: the runs a
/// host starts ([`crate::host`]).
pub(crate) fn prepare_hosted<S: FlowState>(
    flow: &FlowInner<S>,
    kickoff: Kickoff,
    stream: Option<UnboundedSender<Event>>,
    initial: Option<S>,
    store: Option<Arc<dyn RunStore>>,
    cancel: Canceller,
) -> Result<Prepared<S>, Error> {
    if let Some(e) = kickoff.error {
        return Err(e);
    }
    let state = match initial {
        Some(base) => match &kickoff.inputs {
            Some(inputs) if !inputs.is_empty() => crate::state::merge_inputs(base, inputs)?,
            _ => base,
        },
        None => initial_state::<S>(kickoff.inputs.as_ref())?,
    };
    let shared = new_shared(flow, kickoff.run_id.unwrap_or_default(), state, stream, cancel, store.is_some());
    Ok(Prepared {
        shared,
        payload: kickoff.payload,
        budget: kickoff.max_steps.unwrap_or(flow.max_steps),
        inputs: kickoff.inputs,
        store,
    })
}

fn new_shared<S: FlowState>(
    flow: &FlowInner<S>,
    id: RunId,
    state: S,
    stream: Option<UnboundedSender<Event>>,
    cancel: Canceller,
    durable: bool,
) -> Arc<RunShared<S>> {
    Arc::new(RunShared {
        id,
        flow: flow.graph.name.clone(),
        state: Mutex::new(state),
        cancel,
        telemetry: RunTelemetry::new(EventHub::new(flow.observers.clone(), stream)),
        input: flow.input.clone(),
        input_history: Mutex::new(Vec::new()),
        feedback: flow.feedback.clone(),
        feedback_history: Mutex::new(Vec::new()),
        checkpoints: durable.then(|| Box::new(CheckpointAsks::new())),
        uncommitted: (durable || flow.steps.iter().any(|s| s.retry.is_some())).then(|| Box::new(StateLog::new())),
        journal: std::sync::OnceLock::new(),
    })
}

/// Runs a prepared run from its start to its end.
///
/// Not an `async fn`: its arguments would stay in the run's future for the run's whole life
/// (an async fn keeps its arguments), and every run in flight holds that future. The first
/// moves are synchronous, so they are made here and the future keeps only the driver.
pub(crate) fn drive<S: FlowState>(
    flow: Arc<FlowInner<S>>,
    prepared: Prepared<S>,
) -> impl Future<Output = Result<Run<S>, Error>> + Send + 'static {
    // A start predicate (`start_when`) is the user's code: a panic in it fails the run, as a
    // panic in a step does, rather than unwinding into whoever called `spawn`.
    let begun = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| begin(flow, prepared)))
        .unwrap_or_else(|panic| {
            Err(Error::Internal(format!(
                "a start step's `when` predicate panicked as the run started: {}",
                crate::error::panic_text(&*panic)
            )))
        })
        .map_err(Box::new);
    async move {
        let Begun { mut driver, ready, start } = begun.map_err(|e| *e)?;
        let inputs = match start {
            // Boxed, like every store path: runs without a store should not pay for its future,
            // nor for what it keeps across its wait (the store, the record).
            Some(start) => Box::pin(driver.record_start(*start)).await?,
            None => None,
        };
        let flow_name = driver.shared.flow.clone();
        driver.emit(None, || EventKind::RunStarted { flow: flow_name, inputs });
        driver.launch(ready);
        driver.complete().await
    }
}

/// A run whose first steps are activated, not yet launched.
struct Begun<S> {
    /// On the heap: the run's future then holds a pointer, not the driver.
    driver: Box<Driver<S>>,
    ready: Vec<Activation>,
    /// What the start needs once: the record to write, the inputs to report (boxed, and
    /// absent when there is neither).
    start: Option<Box<Start>>,
}

fn begin<S: FlowState>(flow: Arc<FlowInner<S>>, prepared: Prepared<S>) -> Result<Begun<S>, Error> {
    let frontier = Frontier::new(&flow.graph, prepared.budget);
    let mut driver = Box::new(Driver::new(flow, prepared.shared, prepared.payload, frontier, None));
    let ready = driver.start()?;
    let inputs = prepared.inputs.map(Value::Object);
    let record = match prepared.store {
        Some(store) => Some((store, Durable::new_run(&driver, &inputs)?)),
        None => None,
    };
    let inputs = if driver.shared.telemetry.events.is_active() { inputs } else { None };
    let start = (record.is_some() || inputs.is_some()).then(|| Box::new(Start { record, inputs }));
    Ok(Begun { driver, ready, start })
}

/// The step execution the calling code runs in, if any: the parent of a run started there.
fn parent_step() -> Option<ParentStep> {
    crate::scope::current().map(|scope| ParentStep { run_id: scope.run_id(), activation: scope.activation() })
}

/// The record of a run queued for a worker: its starts are activated (in flight), so the
/// worker that claims it launches them.
pub(crate) fn queued_run<S: FlowState>(
    flow: &FlowInner<S>,
    prepared: &Prepared<S>,
    inputs: Option<Value>,
) -> Result<NewRun, Error> {
    let mut frontier = Frontier::new(&flow.graph, prepared.budget);
    let shared = &prepared.shared;
    let enabled = |step: u32| match &flow.steps[step as usize].when {
        Some(predicate) => shared.with_state(|s| predicate(s)),
        None => true,
    };
    frontier.start(&flow.graph, enabled)?;
    Ok(NewRun {
        run_id: shared.id,
        flow: flow.graph.name.clone(),
        fingerprint: flow.graph.fingerprint(),
        status: RunStatus::Queued,
        inputs: inputs.as_ref().map(Value::to_string),
        payload: prepared.payload.as_ref().map(|p| output_json(p, "the kickoff payload")).transpose()?,
        state: state_json(shared)?,
        state_version: flow.versions.current,
        chained: false,
        frontier: frontier_json(&frontier)?,
        owner: Arc::from(""),
        lease: flow.lease,
        parent: parent_step(),
    })
}

/// What the driver keeps per step execution. Kept small: every run holds one per execution.
struct ActRecord {
    step: u32,
    output: Option<Output>,
}

impl ActRecord {
    fn pending(step: u32) -> Self {
        ActRecord { step, output: None }
    }
}

/// The sequence numbers of an execution's finished and route-taken events (for the
/// `triggered_by` of the steps it starts); only kept when the run is observed.
#[derive(Clone, Copy, Default)]
struct ActSeqs {
    finished: u64,
    route: u64,
}

struct Driver<S> {
    flow: Arc<FlowInner<S>>,
    shared: Arc<RunShared<S>>,
    kickoff_payload: Option<Output>,
    frontier: Frontier,
    /// Indexed by activation id.
    acts: Vec<ActRecord>,
    /// Indexed by activation id; empty when nobody observes the run.
    seqs: Vec<ActSeqs>,
    /// Activation ids in completion order.
    completed: Vec<u64>,
    /// The steps in flight, polled by the run's own task; created on the first concurrent
    /// launch (a chain never needs it).
    running: Option<FuturesUnordered<BoxFuture<Completion>>>,
    /// The one step in flight when it is the only one (a chain): polled directly, which
    /// spares the per-future bookkeeping of `running`.
    inline: Option<BoxFuture<Completion>>,
    /// Boxed: most runs have no store, and every run holds its driver.
    durable: Option<Box<Durable>>,
    /// Executions waiting for feedback (still in flight in the frontier), oldest first.
    paused: Vec<PendingFeedback>,
    /// Steps asking for a checkpoint before they wait for a person.
    checkpoint_asks: Option<UnboundedReceiver<CheckpointAsk>>,
    /// Executions retried so far, with the number of their current attempt.
    attempts: Vec<(u64, u32)>,
}

/// What one poll of the driver's waits gave.
enum Polled {
    Cancelled,
    Completed(Completion),
    Asked(CheckpointAsk),
    NothingRunning,
}

/// What the driver waits for next.
enum Signal {
    Completed(Completion),
    CheckpointAsked(CheckpointAsk),
}

impl<S: FlowState> Driver<S> {
    fn new(
        flow: Arc<FlowInner<S>>,
        shared: Arc<RunShared<S>>,
        kickoff_payload: Option<Output>,
        frontier: Frontier,
        durable: Option<Box<Durable>>,
    ) -> Self {
        Driver {
            flow,
            shared,
            kickoff_payload,
            frontier,
            acts: Vec::new(),
            seqs: Vec::new(),
            completed: Vec::new(),
            running: None,
            inline: None,
            durable,
            paused: Vec::new(),
            checkpoint_asks: None,
            attempts: Vec::new(),
        }
        .with_checkpoint_asks()
    }

    fn with_checkpoint_asks(mut self) -> Self {
        self.checkpoint_asks =
            self.shared.checkpoints.as_ref().and_then(|c| c.rx.lock().unwrap_or_else(PoisonError::into_inner).take());
        self
    }

    /// Activates the entry steps (evaluating `when` predicates on the initial state).
    fn start(&mut self) -> Result<Vec<Activation>, Error> {
        let (flow, shared) = (self.flow.clone(), self.shared.clone());
        let enabled = |step: u32| match &flow.steps[step as usize].when {
            Some(predicate) => shared.with_state(|s| predicate(s)),
            None => true,
        };
        self.frontier.start(&flow.graph, enabled)
    }

    /// Runs until nothing is running, then records the end, the pause, or the failure.
    async fn complete(mut self: Box<Self>) -> Result<Run<S>, Error> {
        let ran = self.run().await;
        // Boxed, and apart: the results matched below would otherwise stay in every run's
        // future for its whole life (a `match` keeps what it matches on across its awaits).
        Box::pin(self.conclude(ran)).await
    }

    /// Records the end, the pause, or the failure of a run whose steps are done.
    async fn conclude(self: Box<Self>, ran: Result<(), Error>) -> Result<Run<S>, Error> {
        match ran {
            Ok(()) if !self.paused.is_empty() => match Box::pin(self.pause_end()).await {
                Ok(run) => Ok(run),
                Err((Some(driver), e)) => Err(Box::pin(driver.abort(e)).await),
                // The pause is saved; only telling the reviewer failed.
                Err((None, e)) => Err(e),
            },
            Ok(()) => Box::pin(self.finish()).await,
            // Boxed: the failure path's timers would otherwise enlarge every run's future.
            Err(e) => Err(Box::pin(self.abort(e)).await),
        }
    }

    async fn run(&mut self) -> Result<(), Error> {
        while self.is_running() {
            let completion = self.next_completion().await?;
            self.on_completion(completion).await?;
        }
        Ok(())
    }

    /// Whether a step is running (executions paused for feedback are not).
    fn is_running(&self) -> bool {
        self.inline.is_some() || self.running.as_ref().is_some_and(|r| !r.is_empty())
    }

    fn record(&mut self, activation: u64, step: u32) -> &mut ActRecord {
        let ix = activation as usize;
        while self.acts.len() <= ix {
            self.acts.push(ActRecord::pending(u32::MAX));
        }
        self.acts[ix].step = step;
        &mut self.acts[ix]
    }

    fn launch(&mut self, ready: Vec<Activation>) {
        self.count_launched(&ready);
        let alone = ready.len() == 1 && self.running.as_ref().is_none_or(|r| r.is_empty()) && self.inline.is_none();
        for a in ready {
            let fut = self.start_step(a);
            if alone {
                self.inline = Some(fut);
            } else {
                self.running.get_or_insert_with(FuturesUnordered::new).push(fut);
            }
        }
    }

    /// Launches activations that were in flight when a run was checkpointed.
    fn relaunch(&mut self, in_flight: Vec<Activation>) {
        self.count_launched(&in_flight);
        for a in in_flight {
            let fut = self.start_step(a);
            self.running.get_or_insert_with(FuturesUnordered::new).push(fut);
        }
    }

    /// Sets up the run's journal of side effects with what earlier attempts recorded.
    fn start_journal(&self, store: Arc<dyn RunStore>, fencing: u64, recorded: Vec<crate::persist::JournalEntry>) {
        let journal = crate::journal::Journal::new(Some(store), self.shared.id);
        journal.set_fencing(fencing);
        journal.restore(recorded);
        let _ = self.shared.journal.set(Box::new(journal));
    }

    /// Counts executions in flight, so that updates record their changes while a checkpoint
    /// can come before they complete.
    fn count_launched(&self, launched: &[Activation]) {
        if let Some(log) = &self.shared.uncommitted {
            let retrying = launched.iter().filter(|a| self.retries(a.step)).count();
            log.changes.launched(launched.len(), retrying);
        }
    }

    fn retries(&self, step: u32) -> bool {
        self.flow.steps[step as usize].retry.is_some()
    }

    fn start_step(&mut self, a: Activation) -> BoxFuture<Completion> {
        self.record(a.id, a.step);
        let (payload, triggered_by) = match a.payload {
            Some(event) => {
                let producer = event.activation() as usize;
                let seqs = self.seqs.get(producer).copied().unwrap_or_default();
                let seq = if event.is_label() { seqs.route } else { seqs.finished };
                (self.acts[producer].output.clone(), Some(seq))
            }
            None => (self.kickoff_payload.clone(), None),
        };
        let step = &self.flow.steps[a.step as usize];
        let name = step.name.clone();
        // Structured logs for any `tracing` subscriber (a no-op without one); see docs/cli.md.
        tracing::debug!(target: "crewflow::step", run_id = %self.shared.id, step = %name, activation = a.id, "step started");
        self.shared.telemetry.events.emit(self.shared.id, Some(&name), || EventKind::StepStarted {
            activation: a.id,
            triggered_by,
            input: payload.clone(),
        });
        (step.handler)(Cx::new(self.shared.clone(), name, a.id), payload)
    }

    async fn next_completion(&mut self) -> Result<Completion, Error> {
        loop {
            // The signal is taken apart in a statement of its own: awaiting inside the `match`
            // would keep the matched value (and the `?`'s) in every run's future, 272 bytes.
            let done = match self.next_signal().await? {
                Signal::Completed(c) => return Ok(c),
                Signal::CheckpointAsked(done) => done,
            };
            Box::pin(self.checkpoint_now()).await?; // boxed: rare, keep the run future small
            let _ = done.send(()); // the step may have stopped waiting
        }
    }

    async fn next_signal(&mut self) -> Result<Signal, Error> {
        // Polled by hand rather than with `select!`: the futures a `select!` keeps (a
        // cancellation waiter, a receive) would be part of every run's future.
        let Driver { shared, inline, running, checkpoint_asks, .. } = self;
        let polled = std::future::poll_fn(|cx| {
            if shared.cancel.poll_cancelled(cx).is_ready() {
                // An inline step stays where it is, left to wind down in `abort`.
                return Poll::Ready(Polled::Cancelled);
            }
            if let Some(fut) = inline.as_mut() {
                if let Poll::Ready(c) = fut.as_mut().poll(cx) {
                    *inline = None;
                    return Poll::Ready(Polled::Completed(c));
                }
            } else {
                match running.as_mut().map(|r| r.poll_next_unpin(cx)) {
                    Some(Poll::Ready(Some(c))) => return Poll::Ready(Polled::Completed(c)),
                    Some(Poll::Pending) => {}
                    Some(Poll::Ready(None)) | None => return Poll::Ready(Polled::NothingRunning),
                }
            }
            // A closed channel (`Ready(None)`) asks for nothing.
            if let Some(Poll::Ready(Some(done))) = checkpoint_asks.as_mut().map(|rx| rx.poll_recv(cx)) {
                return Poll::Ready(Polled::Asked(done));
            }
            Poll::Pending
        })
        .await;
        match polled {
            Polled::Cancelled => Err(self.cancelled()),
            Polled::Completed(c) => Ok(Signal::Completed(c)),
            Polled::Asked(done) => Ok(Signal::CheckpointAsked(done)),
            Polled::NothingRunning => {
                Err(Error::Internal("the frontier has work in flight but no step is running".into()))
            }
        }
    }

    /// The prompt and completion tokens execution `activation`'s model calls used, summed over
    /// its attempts, for its log line (`None` when it made none: `Option` fields are logged only
    /// when set).
    fn step_tokens(&self, activation: u64) -> (Option<u64>, Option<u64>) {
        let usage = self.shared.telemetry.take_step_usage(activation);
        (usage.map(|u| u.prompt_tokens), usage.map(|u| u.completion_tokens))
    }

    fn cancelled(&self) -> Error {
        Error::Cancelled { run_id: self.shared.id.to_string() }
    }

    /// Feeds a completion to the frontier, writes the checkpoint it calls for and launches the
    /// steps it made ready. (The bookkeeping is done before the returned future is first
    /// polled, so the future holds no completion: every run in flight holds it.)
    fn on_completion(&mut self, c: Completion) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let settled = self.settle(c).map_err(Box::new);
        async move {
            let Some((ready, write)) = settled.map_err(|e| *e)? else { return Ok(()) };
            if let Some(write) = write {
                write.await?;
            }
            self.launch(ready);
            Ok(())
        }
    }

    /// What a completion makes ready (`None` when it makes nothing: a retry, a pause), and
    /// the checkpoint to write before launching it.
    #[allow(clippy::type_complexity)] // one caller
    fn settle(
        &mut self,
        c: Completion,
    ) -> Result<Option<(Vec<Activation>, Option<BoxFuture<Result<(), Error>>>)>, Error> {
        let step_ix = self.acts[c.activation as usize].step;
        if let Some(log) = &self.shared.uncommitted {
            // A completed execution's changes belong to the run now (a paused one's too: it
            // does not run again); a failed one's never do.
            log.changes.ended(c.activation, c.result.is_ok(), self.retries(step_ix));
        }
        let name = self.flow.steps[step_ix as usize].name.clone();
        let mut outcome = match c.result {
            Ok(outcome) => outcome,
            Err(e) if self.retry_allowed(c.activation, step_ix, &e) => {
                self.retry(c.activation, step_ix, e);
                return Ok(None);
            }
            Err(e) => {
                let error: Arc<str> = Arc::from(e.to_string());
                let (input_tokens, output_tokens) = self.step_tokens(c.activation);
                tracing::warn!(target: "crewflow::step", run_id = %self.shared.id, step = %name, activation = c.activation,
                    elapsed_us = micros(c.elapsed), input_tokens, output_tokens, error = %error, "step failed");
                self.emit(Some(&name), || EventKind::StepFailed { activation: c.activation, error });
                return Err(e);
            }
        };
        if let Some(pending) = outcome.pause.take() {
            // The execution stays in flight in the frontier; the rest of the run goes on.
            self.paused.push(*pending);
            return Ok(None);
        }
        let (input_tokens, output_tokens) = self.step_tokens(c.activation);
        tracing::info!(target: "crewflow::step", run_id = %self.shared.id, step = %name, activation = c.activation,
            elapsed_us = micros(c.elapsed), input_tokens, output_tokens, "step finished");
        let finished_seq = self.emit(Some(&name), || EventKind::StepFinished {
            activation: c.activation,
            output: outcome.output.clone(),
            elapsed_us: micros(c.elapsed),
        });
        let graph = &self.flow.graph;
        let route = match &outcome.label {
            None => None,
            Some(label) => {
                let ix = graph
                    .label_index(label)
                    .filter(|ix| graph.steps[step_ix as usize].routes.contains(ix))
                    .ok_or_else(|| Error::UndeclaredRoute {
                        router: name.to_string(),
                        label: label.to_string(),
                        declared: graph.routes_of(step_ix).map(str::to_string).collect(),
                    })?;
                let label = label.clone();
                let seq = self.emit(Some(&name), || EventKind::RouteTaken { activation: c.activation, label });
                self.record_seqs(c.activation, |s| s.route = seq);
                Some(ix)
            }
        };
        self.acts[c.activation as usize].output = Some(outcome.output);
        self.record_seqs(c.activation, |s| s.finished = finished_seq);
        self.completed.push(c.activation);
        let flow = self.flow.clone();
        let ready = self.frontier.complete(&flow.graph, c.activation, route)?;
        let mut write: Option<BoxFuture<Result<(), Error>>> = None;
        // The run's last completion (nothing made ready, nothing else running) is saved by the
        // run's end, which writes a checkpoint with the end's status in one commit (`finish`,
        // `pause_end`): a checkpoint here would be a second commit saying the same.
        let last = ready.is_empty() && !self.is_running();
        if let Some(durable) = &mut self.durable {
            durable.unsaved.push((c.activation, Utc::now()));
            if flow.checkpoints_after(step_ix) && !last {
                let checkpoint = self.checkpoint()?;
                if let Some(store) = self.store() {
                    write = Some(Box::pin(write_checkpoint(store, checkpoint, name)));
                }
            }
        }
        Ok(Some((ready, write)))
    }

    /// Whether a failure of `activation` is retried (its step's [`Retry`](crate::Retry) allows
    /// another attempt for this error, and its changes can be taken out of the state).
    fn retry_allowed(&self, activation: u64, step: u32, error: &Error) -> bool {
        let Some(retry) = &self.flow.steps[step as usize].retry else { return false };
        let attempt = self.attempts.iter().find(|(a, _)| *a == activation).map_or(1, |(_, n)| *n);
        retry.retries(attempt, error)
    }

    /// Runs a failed execution again after its step's backoff: on the state without the
    /// failed attempt's changes, with its journal (what it completed through `Cx::once`).
    fn retry(&mut self, activation: u64, step: u32, error: Error) {
        let attempt = match self.attempts.iter_mut().find(|(a, _)| *a == activation) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.attempts.push((activation, 2));
                2
            }
        };
        if let Some(log) = &self.shared.uncommitted {
            // A state that does not round-trip through JSON cannot be checkpointed either; it
            // is retried as it is.
            let _ = self.shared.with_state(|s| log.revert_live(activation, s));
        }
        self.shared.journal().restart(activation);
        let delay = self.flow.steps[step as usize].retry.as_ref().map(|r| r.delay_before(attempt)).unwrap_or_default();
        let name = self.flow.steps[step as usize].name.clone();
        let text: Arc<str> = Arc::from(error.to_string());
        self.emit(Some(&name), || EventKind::StepRetrying {
            activation,
            attempt: attempt - 1,
            error: text,
            delay_ms: delay.as_millis() as u64,
        });
        let again = self.frontier.in_flight().find(|a| a.id == activation);
        let Some(again) = again else { return };
        self.count_launched(std::slice::from_ref(&again));
        let step_future = self.start_step(again);
        let delayed: BoxFuture<Completion> = Box::pin(async move {
            tokio::time::sleep(delay).await;
            step_future.await
        });
        self.running.get_or_insert_with(FuturesUnordered::new).push(delayed);
    }

    fn record_seqs(&mut self, activation: u64, set: impl FnOnce(&mut ActSeqs)) {
        if !self.shared.telemetry.events.is_active() {
            return;
        }
        let ix = activation as usize;
        if self.seqs.len() <= ix {
            self.seqs.resize(ix + 1, ActSeqs::default());
        }
        set(&mut self.seqs[ix]);
    }

    fn emit(&self, step: Option<&Arc<str>>, kind: impl FnOnce() -> EventKind) -> u64 {
        self.shared.telemetry.events.emit(self.shared.id, step, kind)
    }
}

#[cfg(test)]
mod tests {
    use crate::{FlowBuilder, Kickoff};

    /// Every concurrent run holds one of these futures: keep it small (the per-run memory goal
    /// is 4 KiB in all). The failure path is boxed for that reason.
    #[test]
    fn a_runs_future_stays_small() {
        let flow = FlowBuilder::<()>::new("f").start("a", |_cx, (): ()| async move { Ok(()) }).build().unwrap();
        let prepared = super::prepare(&flow.inner_for_test(), Kickoff::new(), None, None).unwrap();
        let run = super::drive(flow.inner_for_test(), prepared);
        let size = std::mem::size_of_val(&run);
        // 216 bytes in debug and release builds (2026-12-08: 344 before the start's record moved
        // into a boxed future of its own; 592 before `drive` stopped keeping its arguments and
        // `next_completion` its matched signal). Every run in flight holds it, inside tokio's
        // task cell, whose size is rounded up to 128 bytes.
        assert!(size <= 240, "a run's future grew to {size} bytes (docs/architecture.md, The driver)");
    }
}
