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
//! ready start; the end is recorded. A resumed run restores all of it and re-launches the
//! steps that were in flight.

use std::sync::{Arc, Mutex, PoisonError};

use crate::cancel::Canceller;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::builder::{BoxFuture, Completion};
use crate::cx::{CheckpointAsk, CheckpointAsks, Cx, RunShared};
use crate::error::Error;
use crate::event::{Event, EventHub, EventKind, micros};
use crate::feedback::{
    FeedbackProvider, FeedbackRecord, FeedbackRequest, Paused, PendingFeedback, Reviewed, apply_answer,
};
use crate::flow::{FlowInner, Kickoff, Run, StepRecord};
use crate::frontier::{Activation, Frontier};
use crate::id::RunId;
use crate::output::Output;
use crate::persist::{
    Checkpoint, Claim, Driving, NewRun, RunEnd, RunStatus, RunStore, StepRow, StoredRun, process_owner,
};
use crate::scope::RunTelemetry;
use crate::state::{FlowState, initial_state};
use crate::uncommitted::StateLog;

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
        checkpoints: durable.then(CheckpointAsks::new),
        uncommitted: (durable || flow.steps.iter().any(|s| s.retry.is_some())).then(StateLog::new),
        journal: std::sync::OnceLock::new(),
    })
}

/// Runs a prepared run from its start to its end.
pub(crate) async fn drive<S: FlowState>(flow: Arc<FlowInner<S>>, prepared: Prepared<S>) -> Result<Run<S>, Error> {
    let frontier = Frontier::new(&flow.graph, prepared.budget);
    // The driver lives on the heap: the run's future then holds a pointer, not a copy per await.
    let mut driver = Box::new(Driver::new(flow, prepared.shared, prepared.payload, frontier, None));
    let ready = driver.start()?;
    let inputs_json = prepared.inputs.map(Value::Object);
    if let Some(store) = prepared.store {
        // Boxed, like every store path: runs without a store should not pay for its futures.
        let new = Durable::new_run(&driver, &inputs_json)?;
        let durable = Box::pin(Durable::record(store.clone(), new)).await?;
        driver.start_journal(store, durable.fencing, Vec::new());
        driver.durable = Some(durable);
    }
    let flow_name = driver.shared.flow.clone();
    let inputs = if driver.shared.telemetry.events.is_active() { inputs_json } else { None };
    driver.emit(None, || EventKind::RunStarted { flow: flow_name, inputs });
    driver.launch(ready);
    driver.complete().await
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
        frontier: frontier_json(&frontier)?,
        owner: Arc::from(""),
        lease: flow.lease,
    })
}

/// The answer to a paused run's first pending request, already mapped to its outcome.
pub(crate) struct Answered {
    /// The request answered (its id, the paused execution).
    pub request: u64,
    pub text: String,
    pub outcome: Option<Arc<str>>,
}

/// A stored run, decoded and checked against the flow before anything claims it: a run that
/// cannot be resumed is refused without touching its record (its status and error stay).
pub(crate) struct Restored<S> {
    run_id: RunId,
    seq: u64,
    state: S,
    frontier: Frontier,
    payload: Option<Output>,
    records: Vec<StepRecord>,
    feedback: FeedbackRecord,
}

impl<S: FlowState> Restored<S> {
    pub fn decode(flow: &FlowInner<S>, stored: &StoredRun) -> Result<Self, Error> {
        let corrupt = |what: &str, e: serde_json::Error| Error::CorruptCheckpoint {
            run_id: stored.run_id.to_string(),
            message: format!("its {what} does not parse: {e}"),
        };
        let state: S = serde_json::from_str(&stored.state).map_err(|e| corrupt("state", e))?;
        let frontier: Frontier = serde_json::from_str(&stored.frontier).map_err(|e| corrupt("frontier", e))?;
        if !frontier.fits(&flow.graph) {
            return Err(Error::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: "its frontier does not fit this flow's graph".into(),
            });
        }
        let records = stored_records(stored)?;
        if let Some(r) = records.iter().find(|r| flow.graph.step_index(&r.step).is_none()) {
            return Err(Error::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: format!("it has an output of step `{}`, which this flow does not have", r.step),
            });
        }
        Ok(Restored {
            run_id: stored.run_id,
            seq: stored.seq,
            state,
            frontier,
            payload: stored_payload(stored)?,
            records,
            feedback: feedback_record(stored)?,
        })
    }
}

/// Continues a stored run from its last checkpoint, after it was claimed; for a paused run,
/// `answer` answers its first pending feedback request.
pub(crate) async fn drive_resumed<S: FlowState>(
    flow: Arc<FlowInner<S>>,
    restored: Restored<S>,
    claim: Claim,
    driving: Driving,
    stream: Option<UnboundedSender<Event>>,
    cancel: Canceller,
    answer: Option<Answered>,
) -> Result<Run<S>, Error> {
    let Some(store) = flow.store.clone() else {
        return Err(Error::NoStore { call: "Flow::resume" });
    };
    let Restored { run_id, seq, state, frontier, payload, records, feedback } = restored;
    let shared = new_shared(&flow, run_id, state, stream, cancel, true);
    let mut driver = Box::new(Driver::new(flow, shared, payload, frontier, None));
    let steps_done = records.len() as u64;
    driver.restore_outputs(records);
    driver.shared.with_feedback_history(|h| *h = feedback.history);
    driver.shared.with_input_history(|h| *h = feedback.inputs);
    driver.paused = feedback.pending;
    driver.durable = Some(Durable { store, fencing: claim.fencing, seq, unsaved: Vec::new(), _driving: driving });
    let flow_name = driver.shared.flow.clone();
    driver.emit(None, || EventKind::RunResumed { flow: flow_name, checkpoint: seq, steps_done });
    let waiting: Vec<u64> = driver.paused.iter().map(|p| p.activation).collect();
    let in_flight: Vec<Activation> = driver.frontier.in_flight().filter(|a| !waiting.contains(&a.id)).collect();
    // What the executions about to run again already did (their journal) comes back first.
    let executions: Vec<u64> = in_flight.iter().map(|a| a.id).collect();
    let store = flow_store(&driver)?;
    let recorded = store
        .load_journal(run_id, &executions)
        .await
        .map_err(|e| Error::from_store(store.as_ref(), "load the run's journal", e))?;
    driver.start_journal(store, claim.fencing, recorded);
    driver.relaunch(in_flight);
    if let Some(answer) = answer {
        // Lessons are distilled here, after the claim and before the answer's checkpoint: a
        // resume that crashes in between is answered again and the learner is asked again for
        // the same (run, request), which it keeps once (see `FeedbackLearner::learn`).
        if let Some(learning) = driver.learn_from_answer(&answer) {
            learning.await;
        }
        let applied = match driver.answer_first(answer) {
            Ok(completion) => driver.on_completion(completion).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            // Like any failure: relaunched steps stop, the run's end is recorded.
            return Err(Box::pin(driver.abort(e)).await);
        }
    }
    driver.complete().await
}

fn flow_store<S>(driver: &Driver<S>) -> Result<Arc<dyn RunStore>, Error> {
    driver.flow.store.clone().ok_or(Error::NoStore { call: "Flow::resume" })
}

/// The feedback record kept with a stored run (empty when it has none).
pub(crate) fn feedback_record(stored: &StoredRun) -> Result<FeedbackRecord, Error> {
    match stored.feedback.as_deref() {
        None => Ok(FeedbackRecord::default()),
        Some(text) => serde_json::from_str(text).map_err(|e| Error::CorruptCheckpoint {
            run_id: stored.run_id.to_string(),
            message: format!("its feedback record does not parse: {e}"),
        }),
    }
}

/// A paused stored run, as a `Run` (resuming it without an answer changes nothing).
pub(crate) fn paused_run<S: FlowState>(stored: &StoredRun) -> Result<Run<S>, Error> {
    let mut run = finished_run::<S>(stored)?;
    let record = feedback_record(stored)?;
    run.output = None;
    run.final_step = None;
    run.paused = record.pending.first().map(|p| Box::new(Paused { run_id: stored.run_id, request: p.request.clone() }));
    run.feedback = record.history;
    Ok(run)
}

/// A finished stored run, as a `Run`.
pub(crate) fn finished_run<S: FlowState>(stored: &StoredRun) -> Result<Run<S>, Error> {
    let state: S = serde_json::from_str(&stored.state).map_err(|e| Error::CorruptCheckpoint {
        run_id: stored.run_id.to_string(),
        message: format!("its state does not parse: {e}"),
    })?;
    let records = stored_records(stored)?;
    let last = stored.final_activation.and_then(|a| records.iter().find(|r| r.activation == a));
    let record = feedback_record(stored)?;
    Ok(Run {
        id: stored.run_id,
        state,
        output: last.map(|r| r.output.clone()),
        final_step: last.map(|r| r.step.clone()),
        records,
        inputs: record.inputs,
        usage: crate::scope::TokenUsage::default(),
        paused: None,
        feedback: record.history,
    })
}

fn stored_records(stored: &StoredRun) -> Result<Vec<StepRecord>, Error> {
    stored
        .steps
        .iter()
        .map(|row| {
            let value: Value = serde_json::from_str(&row.output).map_err(|e| Error::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: format!("the output of step `{}` does not parse: {e}", row.step),
            })?;
            Ok(StepRecord { step: row.step.clone(), activation: row.activation, output: Output::from_json(value) })
        })
        .collect()
}

fn stored_payload(stored: &StoredRun) -> Result<Option<Output>, Error> {
    stored
        .payload
        .as_deref()
        .map(|p| {
            serde_json::from_str::<Value>(p).map(Output::from_json).map_err(|e| Error::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: format!("its kickoff payload does not parse: {e}"),
            })
        })
        .transpose()
}

/// The run's record in the store and what has not been written yet.
struct Durable {
    store: Arc<dyn RunStore>,
    fencing: u64,
    seq: u64,
    /// Activations completed since the last checkpoint, in completion order, with the time.
    unsaved: Vec<(u64, DateTime<Utc>)>,
    /// Lists the run in [`driven_runs`](crate::persist::driven_runs) while the driver lives.
    _driving: Driving,
}

impl Durable {
    /// The record of a new run, with its starts in flight.
    fn new_run<S: FlowState>(driver: &Driver<S>, inputs: &Option<Value>) -> Result<NewRun, Error> {
        let flow = &driver.flow;
        let new = NewRun {
            run_id: driver.shared.id,
            flow: flow.graph.name.clone(),
            fingerprint: flow.graph.fingerprint(),
            status: RunStatus::Running,
            inputs: inputs.as_ref().map(Value::to_string),
            payload: driver.kickoff_payload.as_ref().map(|p| output_json(p, "the kickoff payload")).transpose()?,
            state: state_json(&driver.shared)?,
            frontier: frontier_json(&driver.frontier)?,
            owner: process_owner(),
            lease: flow.lease,
        };
        Ok(new)
    }

    /// Records the new run before its first step runs.
    async fn record(store: Arc<dyn RunStore>, new: NewRun) -> Result<Durable, Error> {
        let driving =
            Driving::start(new.run_id).ok_or_else(|| Error::AlreadyDriven { run_id: new.run_id.to_string() })?;
        store.create_run(&new).await.map_err(|e| Error::from_store(store.as_ref(), "record the new run", e))?;
        Ok(Durable { store, fencing: 1, seq: 0, unsaved: Vec::new(), _driving: driving })
    }
}

/// The state as a checkpoint holds it: without the changes of executions still in flight or
/// failed (see [`crate::uncommitted`]).
fn state_json<S: FlowState>(shared: &RunShared<S>) -> Result<String, Error> {
    let written = shared.with_state(|s| match &shared.uncommitted {
        Some(log) if !log.changes.is_empty() => match log.committed_json(s) {
            Some(value) => serde_json::to_string(&value),
            None => serde_json::to_string(s), // reports why the state does not convert
        },
        _ => serde_json::to_string(s),
    });
    written.map_err(|e| Error::StateSerialization {
        state_type: std::any::type_name::<S>(),
        action: "converted to",
        message: e.to_string(),
    })
}

fn frontier_json(frontier: &Frontier) -> Result<String, Error> {
    serde_json::to_string(frontier).map_err(|e| Error::Internal(format!("the frontier did not serialize: {e}")))
}

fn output_json(output: &Output, what: &str) -> Result<String, Error> {
    output.to_json_string().map_err(|e| Error::Unpersistable { what: what.to_string(), message: e.to_string() })
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
    durable: Option<Durable>,
    /// Executions waiting for feedback (still in flight in the frontier), oldest first.
    paused: Vec<PendingFeedback>,
    /// Steps asking for a checkpoint before they wait for a person.
    checkpoint_asks: Option<UnboundedReceiver<CheckpointAsk>>,
    /// Executions retried so far, with the number of their current attempt.
    attempts: Vec<(u64, u32)>,
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
        durable: Option<Durable>,
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
        match self.run().await {
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

    /// Applies the answer to the first pending feedback request: the paused execution
    /// completes with it.
    fn answer_first(&mut self, answer: Answered) -> Result<Completion, Error> {
        let Some(at) = self.paused.iter().position(|p| p.request.id == answer.request) else {
            return Err(Error::Internal(format!("the run has no pending request {}", answer.request)));
        };
        let pending = self.paused.remove(at);
        let step_ix = self.acts.get(pending.activation as usize).map(|a| a.step).unwrap_or(u32::MAX);
        let step = self.flow.steps.get(step_ix as usize).ok_or_else(|| Error::CorruptCheckpoint {
            run_id: self.shared.id.to_string(),
            message: format!("its pending feedback names execution {}, which is not in flight", pending.activation),
        })?;
        // A step with outcomes routes by them; one with routes but no outcomes is a router.
        let has_outcomes = step.feedback.as_ref().is_some_and(|f| !f.emit.is_empty());
        let reviewed = Reviewed {
            body_output: Output::from_json(pending.request.output.clone()),
            body_label: pending.label,
            is_router: !has_outcomes && !self.flow.graph.steps[step_ix as usize].routes.is_empty(),
            request: pending.request,
        };
        let outcome = apply_answer(&self.shared, &step.name, reviewed, answer.text, answer.outcome);
        // The answered execution ends here like a launched one (see `on_completion`).
        self.count_launched(&[Activation { id: pending.activation, step: step_ix, payload: None }]);
        Ok(Completion { activation: pending.activation, result: Ok(outcome), elapsed: std::time::Duration::ZERO })
    }

    /// Distills lessons from an answer to a paused run (steps with a learner only).
    /// (Boxed and owning its parts: the driver is not `Sync`, and most resumes learn nothing.)
    fn learn_from_answer(&self, answer: &Answered) -> Option<BoxFuture<()>> {
        let pending = self.paused.iter().find(|p| p.request.id == answer.request)?;
        let ix = self.flow.graph.step_index(&pending.request.step)?;
        let config = self.flow.steps[ix as usize].feedback.clone().filter(|c| c.learner.is_some())?;
        let (shared, request, text) = (self.shared.clone(), pending.request.clone(), answer.text.clone());
        Some(Box::pin(async move { crate::feedback::learn_from(&shared, &config, &request, &text).await }))
    }

    /// Fills in the outputs of the steps a stored run completed (checked by
    /// [`Restored::decode`]: every step is the flow's).
    fn restore_outputs(&mut self, records: Vec<StepRecord>) {
        let flow = self.flow.clone();
        for r in records {
            let Some(step) = flow.graph.step_index(&r.step) else { continue };
            let slot = self.slot(r.activation, step);
            slot.output = Some(r.output);
            self.completed.push(r.activation);
        }
        for a in self.frontier.in_flight().collect::<Vec<_>>() {
            self.slot(a.id, a.step);
        }
    }

    fn slot(&mut self, activation: u64, step: u32) -> &mut ActRecord {
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
        self.slot(a.id, a.step);
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
        self.shared.telemetry.events.emit(self.shared.id, Some(&name), || EventKind::StepStarted {
            activation: a.id,
            triggered_by,
            input: payload.clone(),
        });
        (step.handler)(Cx::new(self.shared.clone(), name, a.id), payload)
    }

    async fn next_completion(&mut self) -> Result<Completion, Error> {
        loop {
            match self.next_signal().await? {
                Signal::Completed(c) => return Ok(c),
                Signal::CheckpointAsked(done) => {
                    Box::pin(self.checkpoint_now()).await?; // boxed: rare, keep the run future small
                    let _ = done.send(()); // the step may have stopped waiting
                }
            }
        }
    }

    async fn next_signal(&mut self) -> Result<Signal, Error> {
        let cancel = self.shared.cancel.clone();
        let asks = self.checkpoint_asks.as_mut();
        let asked = async move {
            match asks {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        if let Some(mut fut) = self.inline.take() {
            return tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.inline = Some(fut); // left to wind down in `abort`
                    Err(self.cancelled())
                }
                c = &mut fut => Ok(Signal::Completed(c)),
                Some(done) = asked => {
                    self.inline = Some(fut);
                    Ok(Signal::CheckpointAsked(done))
                }
            };
        }
        let running = self.running.as_mut();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(self.cancelled()),
            next = async {
                match running {
                    Some(running) => running.next().await,
                    None => None,
                }
            } => {
                next.map(Signal::Completed)
                    .ok_or_else(|| Error::Internal("the frontier has work in flight but no step is running".into()))
            }
            Some(done) = asked => Ok(Signal::CheckpointAsked(done)),
        }
    }

    /// A checkpoint in the middle of a step (it is about to wait for a person).
    async fn checkpoint_now(&mut self) -> Result<(), Error> {
        let Some(store) = self.store() else { return Ok(()) };
        let checkpoint = self.checkpoint()?;
        let step: Arc<str> = Arc::from("(a step waiting for input)");
        Box::pin(write_checkpoint(store, checkpoint, step)).await
    }

    fn cancelled(&self) -> Error {
        Error::Cancelled { run_id: self.shared.id.to_string() }
    }

    async fn on_completion(&mut self, c: Completion) -> Result<(), Error> {
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
                return Ok(());
            }
            Err(e) => {
                let error: Arc<str> = Arc::from(e.to_string());
                self.emit(Some(&name), || EventKind::StepFailed { activation: c.activation, error });
                return Err(e);
            }
        };
        if let Some(pending) = outcome.pause.take() {
            // The execution stays in flight in the frontier; the rest of the run goes on.
            self.paused.push(*pending);
            return Ok(());
        }
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
        if let Some(durable) = &mut self.durable {
            durable.unsaved.push((c.activation, Utc::now()));
            if flow.checkpoints_after(step_ix) {
                let checkpoint = self.checkpoint()?;
                if let Some(store) = self.store() {
                    Box::pin(write_checkpoint(store, checkpoint, name)).await?;
                }
            }
        }
        self.launch(ready);
        Ok(())
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

    /// The run's current checkpoint: state, frontier and the unsaved step outputs.
    fn checkpoint(&mut self) -> Result<Checkpoint, Error> {
        let state = state_json(&self.shared)?;
        let frontier = frontier_json(&self.frontier)?;
        let Some(durable) = &mut self.durable else {
            return Err(Error::Internal("checkpoint without a store".into()));
        };
        let mut steps = Vec::with_capacity(durable.unsaved.len());
        for (a, finished_at) in durable.unsaved.drain(..) {
            let r = &self.acts[a as usize];
            let step = self.flow.steps[r.step as usize].name.clone();
            let output = match &r.output {
                Some(o) => output_json(o, &format!("the output of step `{step}`"))?,
                None => "null".to_string(),
            };
            steps.push(StepRow { activation: a, step, output, finished_at });
        }
        durable.seq += 1;
        let record = FeedbackRecord {
            pending: self.paused.clone(),
            history: self.shared.with_feedback_history(|h| h.clone()),
            inputs: self.shared.with_input_history(|h| h.clone()),
        };
        let feedback = if record.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&record).map_err(|e| Error::Unpersistable {
                what: "the run's feedback record".into(),
                message: e.to_string(),
            })?)
        };
        Ok(Checkpoint {
            run_id: self.shared.id,
            fencing: durable.fencing,
            seq: durable.seq,
            state,
            frontier,
            steps,
            feedback,
        })
    }

    /// The store, cloned out so that no borrow of the driver is held across an `.await`
    /// (the driver is `Send` but not `Sync`).
    fn store(&self) -> Option<Arc<dyn RunStore>> {
        self.durable.as_ref().map(|d| d.store.clone())
    }

    async fn finish(mut self: Box<Self>) -> Result<Run<S>, Error> {
        let final_act = self.frontier.final_activation();
        if let Some(store) = self.store() {
            let checkpoint = self.checkpoint()?;
            let end = RunEnd {
                run_id: self.shared.id,
                fencing: checkpoint.fencing,
                status: RunStatus::Finished,
                checkpoint: Some(checkpoint),
                final_activation: final_act,
                error: None,
            };
            store.end_run(&end).await.map_err(|e| Error::from_store(store.as_ref(), "record the end of the run", e))?;
        }
        let output = final_act.and_then(|a| self.acts[a as usize].output.clone());
        let final_step = final_act.map(|a| self.flow.steps[self.acts[a as usize].step as usize].name.clone());
        let steps = self.frontier.steps_run();
        let out = output.clone();
        self.emit(None, || EventKind::RunFinished { output: out, steps });
        Ok(self.take_run(output, final_step, None))
    }

    /// Ends the run paused: one checkpoint holding the frontier (the paused executions in
    /// flight) and the pending requests, then the `Paused` status. On failure the driver comes
    /// back with the error, to abort.
    async fn pause_end(mut self: Box<Self>) -> Result<Run<S>, (Option<Box<Self>>, Error)> {
        let Some(store) = self.store() else {
            let step = self.paused[0].request.step.clone();
            let e = Error::PauseWithoutStore { flow: self.shared.flow.to_string(), step };
            return Err((Some(self), e));
        };
        let checkpoint = match self.checkpoint() {
            Ok(c) => c,
            Err(e) => return Err((Some(self), e)),
        };
        let end = RunEnd {
            run_id: self.shared.id,
            fencing: checkpoint.fencing,
            status: RunStatus::Paused,
            checkpoint: Some(checkpoint),
            final_activation: None,
            error: None,
        };
        if let Err(e) = store.end_run(&end).await {
            let e = Error::from_store(store.as_ref(), "record the paused run", e);
            return Err((Some(self), e));
        }
        let first = self.paused[0].request.clone();
        let (message, step) = (first.message.clone(), Arc::from(first.step.as_str()));
        self.emit(Some(&step), || EventKind::RunPaused { message });
        if let Err(e) = notify_reviewers(self.shared.id, self.reviewers_to_notify()).await {
            return Err((None, e));
        }
        let paused = Paused { run_id: self.shared.id, request: first };
        Ok(self.take_run(None, None, Some(Box::new(paused))))
    }

    /// The providers of the requests asked in this drive, to tell once the pause is saved.
    fn reviewers_to_notify(&self) -> Vec<(Arc<dyn FeedbackProvider>, FeedbackRequest)> {
        self.paused
            .iter()
            .filter(|p| p.fresh)
            .filter_map(|p| Some((provider_of(&self.flow, &p.request.step)?, p.request.clone())))
            .collect()
    }

    fn take_run(
        &mut self,
        output: Option<Output>,
        final_step: Option<Arc<str>>,
        paused: Option<Box<Paused>>,
    ) -> Run<S> {
        let state = std::mem::take(&mut *self.shared.state.lock().unwrap_or_else(PoisonError::into_inner));
        let records = self
            .completed
            .iter()
            .filter_map(|a| {
                let r = &self.acts[*a as usize];
                Some(StepRecord {
                    step: self.flow.steps[r.step as usize].name.clone(),
                    activation: *a,
                    output: r.output.clone()?,
                })
            })
            .collect();
        let inputs = self.shared.with_input_history(std::mem::take);
        let feedback = self.shared.with_feedback_history(std::mem::take);
        Run {
            id: self.shared.id,
            state,
            output,
            final_step,
            records,
            inputs,
            usage: self.shared.telemetry.usage(),
            paused,
            feedback,
        }
    }

    /// Stops everything still running and reports the run's end: the cancellation token
    /// fires, steps get the grace period to finish on their own, the rest are dropped. With a
    /// store, the run is marked failed or cancelled; its last checkpoint stays, so it can be
    /// resumed after a fix.
    async fn abort(mut self: Box<Self>, error: Error) -> Error {
        self.shared.cancel.cancel();
        let deadline = tokio::time::Instant::now() + self.flow.cancel_grace;
        let mut running = self.running.take().unwrap_or_default();
        if let Some(inline) = self.inline.take() {
            running.push(inline);
        }
        let _ = tokio::time::timeout_at(deadline, async { while running.next().await.is_some() {} }).await;
        drop(running);
        if let (Some(store), Some(fencing)) = (self.store(), self.durable.as_ref().map(|d| d.fencing))
            && !matches!(error, Error::LeaseLost { .. } | Error::Store { .. })
        {
            let end = RunEnd {
                run_id: self.shared.id,
                fencing,
                status: if matches!(error, Error::Cancelled { .. }) { RunStatus::Cancelled } else { RunStatus::Failed },
                checkpoint: None,
                final_activation: None,
                error: Some(error.to_string()),
            };
            // Best effort: if the store cannot record the failure, the run stays `running` and
            // its lease expires, after which it can be resumed all the same.
            let _ = store.end_run(&end).await;
        }
        match &error {
            Error::Cancelled { .. } => {
                self.emit(None, || EventKind::RunCancelled);
            }
            e => {
                let text: Arc<str> = Arc::from(e.to_string());
                self.emit(None, || EventKind::RunFailed { error: text });
            }
        }
        error
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

/// Tells each provider that its request's pause is saved (see [`FeedbackProvider::paused`]).
/// Every provider is told even when one fails; the error names every step whose reviewer was
/// not told, with the first failure as its cause.
pub(crate) async fn notify_reviewers(
    run_id: RunId,
    reviewers: Vec<(Arc<dyn FeedbackProvider>, FeedbackRequest)>,
) -> Result<(), Error> {
    let mut failed: Vec<String> = Vec::new();
    let mut first = None;
    for (provider, request) in reviewers {
        if let Err(e) = provider.paused(&request).await {
            failed.push(format!("`{}`", request.step));
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(Error::FeedbackNotification {
            run_id: run_id.to_string(),
            step: failed.join(", ").trim_matches('`').to_string(),
            source: e.into(),
        }),
    }
}

/// The provider that answers a step's feedback: its own, else the flow's.
pub(crate) fn provider_of<S>(flow: &FlowInner<S>, step: &str) -> Option<Arc<dyn FeedbackProvider>> {
    let own = flow.graph.step_index(step).and_then(|ix| flow.steps[ix as usize].feedback.as_ref()?.provider.clone());
    own.or_else(|| flow.feedback.clone())
}

async fn write_checkpoint(store: Arc<dyn RunStore>, checkpoint: Checkpoint, after: Arc<str>) -> Result<(), Error> {
    store
        .save_checkpoint(&checkpoint)
        .await
        .map_err(|e| Error::from_store(store.as_ref(), &format!("save the checkpoint after step `{after}`"), e))
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
        assert!(size <= 1024, "a run's future grew to {size} bytes");
    }
}
