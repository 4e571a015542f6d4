//! The stored side of a run's life: a stored run decoded and checked before anything claims
//! it, resumed (re-launching what was in flight, answering a pause), or read back as a `Run`.

use crate::error::DurableError;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::{Driver, Durable, new_shared};
use crate::cancel::Canceller;
use crate::error::Error;
use crate::event::{Event, EventKind};
use crate::feedback::{FeedbackRecord, Paused};
use crate::flow::FlowInner;
use crate::frontier::{Activation, Frontier};
use crate::handler::{BoxFuture, Completion};
use crate::id::RunId;
use crate::output::Output;
use crate::persist::{Claim, Driving, RunStore, StoredRun};
use crate::review::{Reviewed, apply_answer};
use crate::run::{Run, StepRecord};
use crate::state::FlowState;

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
    /// The checkpoint it was decoded from.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn decode(flow: &FlowInner<S>, stored: &StoredRun) -> Result<Self, Error> {
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::Durable(DurableError::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: format!("its {what} does not parse: {e}"),
            })
        };
        let state = stored_state(flow, stored)?;
        let frontier: Frontier = serde_json::from_str(&stored.frontier).map_err(|e| corrupt("frontier", e))?;
        if !frontier.fits(&flow.graph) {
            return Err(Error::Durable(DurableError::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: "its frontier does not fit this flow's graph".into(),
            }));
        }
        let records = stored_records(stored)?;
        if let Some(r) = records.iter().find(|r| flow.graph.step_index(&r.step).is_none()) {
            return Err(Error::Durable(DurableError::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: format!("it has an output of step `{}`, which this flow does not have", r.step),
            }));
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
        return Err(Error::Durable(DurableError::NoStore { call: "Flow::resume" }));
    };
    let Restored { run_id, seq, state, frontier, payload, records, feedback } = restored;
    let shared = new_shared(&flow, run_id, state, stream, cancel, true);
    let mut driver = Box::new(Driver::new(flow, shared, payload, frontier, None));
    let steps_done = records.len() as u64;
    driver.restore_outputs(records);
    driver.shared.with_feedback_history(|h| *h = feedback.history);
    driver.shared.with_input_history(|h| *h = feedback.inputs);
    driver.paused = feedback.pending;
    let chain = store.state_deltas().then(|| crate::delta::Chain::new(true, None));
    driver.durable =
        Some(Box::new(Durable { store, fencing: claim.fencing, seq, unsaved: Vec::new(), chain, _driving: driving }));
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

pub(super) fn flow_store<S>(driver: &Driver<S>) -> Result<Arc<dyn RunStore>, Error> {
    driver.flow.store.clone().ok_or(Error::Durable(DurableError::NoStore { call: "Flow::resume" }))
}

/// The feedback record kept with a stored run (empty when it has none).
pub(crate) fn feedback_record(stored: &StoredRun) -> Result<FeedbackRecord, Error> {
    match stored.feedback.as_deref() {
        None => Ok(FeedbackRecord::default()),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            Error::Durable(DurableError::CorruptCheckpoint {
                run_id: stored.run_id.to_string(),
                message: format!("its feedback record does not parse: {e}"),
            })
        }),
    }
}

/// A stored run's state, read back at the flow's state version (see [`crate::versions`]).
pub(crate) fn stored_state<S: FlowState>(flow: &FlowInner<S>, stored: &StoredRun) -> Result<S, Error> {
    flow.versions.decode(stored.state_version, &stored.state).map_err(|source| {
        Error::Durable(DurableError::StoredState {
            run_id: stored.run_id.to_string(),
            flow: flow.graph.name.to_string(),
            source,
        })
    })
}

/// A paused stored run, as a `Run` (resuming it without an answer changes nothing).
pub(crate) fn paused_run<S: FlowState>(flow: &FlowInner<S>, stored: &StoredRun) -> Result<Run<S>, Error> {
    let mut run = finished_run(flow, stored)?;
    let record = feedback_record(stored)?;
    run.output = None;
    run.final_step = None;
    run.paused = record.pending.first().map(|p| Box::new(Paused { run_id: stored.run_id, request: p.request.clone() }));
    run.feedback = record.history;
    Ok(run)
}

/// A finished stored run, as a `Run`.
pub(crate) fn finished_run<S: FlowState>(flow: &FlowInner<S>, stored: &StoredRun) -> Result<Run<S>, Error> {
    let state = stored_state(flow, stored)?;
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

pub(super) fn stored_records(stored: &StoredRun) -> Result<Vec<StepRecord>, Error> {
    stored
        .steps
        .iter()
        .map(|row| {
            let value: Value = serde_json::from_str(&row.output).map_err(|e| {
                Error::Durable(DurableError::CorruptCheckpoint {
                    run_id: stored.run_id.to_string(),
                    message: format!("the output of step `{}` does not parse: {e}", row.step),
                })
            })?;
            Ok(StepRecord { step: row.step.clone(), activation: row.activation, output: Output::from_json(value) })
        })
        .collect()
}

pub(super) fn stored_payload(stored: &StoredRun) -> Result<Option<Output>, Error> {
    stored
        .payload
        .as_deref()
        .map(|p| {
            serde_json::from_str::<Value>(p).map(Output::from_json).map_err(|e| {
                Error::Durable(DurableError::CorruptCheckpoint {
                    run_id: stored.run_id.to_string(),
                    message: format!("its kickoff payload does not parse: {e}"),
                })
            })
        })
        .transpose()
}

impl<S: FlowState> Driver<S> {
    /// Applies the answer to the first pending feedback request: the paused execution
    /// completes with it.
    pub(super) fn answer_first(&mut self, answer: Answered) -> Result<Completion, Error> {
        let Some(at) = self.paused.iter().position(|p| p.request.id == answer.request) else {
            return Err(Error::Internal(format!("the run has no pending request {}", answer.request)));
        };
        let pending = self.paused.remove(at);
        let step_ix = self.acts.get(pending.activation as usize).map(|a| a.step).unwrap_or(u32::MAX);
        let step = self.flow.steps.get(step_ix as usize).ok_or_else(|| {
            Error::Durable(DurableError::CorruptCheckpoint {
                run_id: self.shared.id.to_string(),
                message: format!("its pending feedback names execution {}, which is not in flight", pending.activation),
            })
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
    pub(super) fn learn_from_answer(&self, answer: &Answered) -> Option<BoxFuture<()>> {
        let pending = self.paused.iter().find(|p| p.request.id == answer.request)?;
        let ix = self.flow.graph.step_index(&pending.request.step)?;
        let config = self.flow.steps[ix as usize].feedback.clone().filter(|c| c.learner.is_some())?;
        let (shared, request, text) = (self.shared.clone(), pending.request.clone(), answer.text.clone());
        Some(Box::pin(async move { crate::review::learn_from(&shared, &config, &request, &text).await }))
    }

    /// Fills in the outputs of the steps a stored run completed (checked by
    /// [`Restored::decode`]: every step is the flow's).
    pub(super) fn restore_outputs(&mut self, records: Vec<StepRecord>) {
        let flow = self.flow.clone();
        for r in records {
            let Some(step) = flow.graph.step_index(&r.step) else { continue };
            let record = self.record(r.activation, step);
            record.output = Some(r.output);
            self.completed.push(r.activation);
        }
        for a in self.frontier.in_flight().collect::<Vec<_>>() {
            self.record(a.id, a.step);
        }
    }
}
