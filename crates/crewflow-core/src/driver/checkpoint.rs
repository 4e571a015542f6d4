//! Checkpoints: the run's record in the store, and what a checkpoint holds (the state without
//! uncommitted changes, the frontier, the outputs completed since the last one).

use crate::error::DurableError;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Driver;
use crate::cx::RunShared;
use crate::delta::{Chain, DeltaPolicy};
use crate::error::Error;
use crate::feedback::FeedbackRecord;
use crate::frontier::Frontier;
use crate::output::Output;
use crate::persist::{Checkpoint, Driving, NewRun, RunStatus, RunStore, StepRow, process_owner};
use crate::state::FlowState;

/// The run's record in the store and what has not been written yet.
pub(super) struct Durable {
    pub(super) store: Arc<dyn RunStore>,
    pub(super) fencing: u64,
    pub(super) seq: u64,
    /// Activations completed since the last checkpoint, in completion order, with the time.
    pub(super) unsaved: Vec<(u64, DateTime<Utc>)>,
    /// The run's chain of state deltas as the store holds it (`None`: the store keeps none).
    pub(super) chain: Option<Chain>,
    /// Lists the run in [`driven_runs`](crate::persist::driven_runs) while the driver lives.
    pub(super) _driving: Driving,
}

impl Durable {
    /// The record of a new run, with its starts in flight.
    pub(super) fn new_run<S: FlowState>(driver: &Driver<S>, inputs: &Option<Value>) -> Result<NewRun, Error> {
        let flow = &driver.flow;
        let new = NewRun {
            run_id: driver.shared.id,
            flow: flow.graph.name.clone(),
            fingerprint: flow.graph.fingerprint(),
            status: RunStatus::Running,
            inputs: inputs.as_ref().map(Value::to_string),
            payload: driver.kickoff_payload.as_ref().map(|p| output_json(p, "the kickoff payload")).transpose()?,
            state: state_json(&driver.shared)?,
            state_version: flow.versions.current,
            chained: false,
            frontier: frontier_json(&driver.frontier)?,
            owner: process_owner(),
            lease: flow.lease,
            parent: super::parent_step(),
        };
        let deltas = flow.store.as_ref().is_some_and(|s| s.state_deltas());
        Ok(NewRun { chained: deltas && DeltaPolicy::chains(flow.delta_policy, new.state.len()), ..new })
    }

    /// Records the new run before its first step runs.
    pub(super) async fn record(store: Arc<dyn RunStore>, new: NewRun) -> Result<Durable, Error> {
        let driving = Driving::start(new.run_id)
            .ok_or_else(|| Error::Durable(DurableError::AlreadyDriven { run_id: new.run_id.to_string() }))?;
        store.create_run(&new).await.map_err(|e| Error::from_store(store.as_ref(), "record the new run", e))?;
        let chain = store.state_deltas().then(|| Chain::new(new.chained, new.chained.then(|| new.state.clone())));
        Ok(Durable { store, fencing: 1, seq: 0, unsaved: Vec::new(), chain, _driving: driving })
    }
}

/// What a run's start needs once: the record to write, the inputs to report.
pub(super) struct Start {
    pub(super) record: Option<(Arc<dyn RunStore>, NewRun)>,
    pub(super) inputs: Option<Value>,
}

/// The state as a checkpoint holds it: without the changes of executions still in flight or
/// failed (see [`crate::uncommitted`]).
pub(super) fn state_json<S: FlowState>(shared: &RunShared<S>) -> Result<String, Error> {
    let written = shared.with_state(|s| match &shared.uncommitted {
        Some(log) if !log.changes.is_empty() => match log.committed_json(s) {
            Some(value) => crate::json::to_string(&value),
            None => crate::json::to_string(s), // reports why the state does not convert
        },
        _ => crate::json::to_string(s),
    });
    written.map_err(|e| Error::StateSerialization {
        state_type: std::any::type_name::<S>(),
        action: "converted to",
        message: e.to_string(),
    })
}

pub(super) fn frontier_json(frontier: &Frontier) -> Result<String, Error> {
    serde_json::to_string(frontier).map_err(|e| Error::Internal(format!("the frontier did not serialize: {e}")))
}

pub(super) fn output_json(output: &Output, what: &str) -> Result<String, Error> {
    output
        .to_json_string()
        .map_err(|e| Error::Durable(DurableError::Unpersistable { what: what.to_string(), message: e.to_string() }))
}

pub(super) async fn write_checkpoint(
    store: Arc<dyn RunStore>,
    checkpoint: Checkpoint,
    after: Arc<str>,
) -> Result<(), Error> {
    store
        .save_checkpoint(&checkpoint)
        .await
        .map_err(|e| Error::from_store(store.as_ref(), &format!("save the checkpoint after step `{after}`"), e))
}

impl<S: FlowState> Driver<S> {
    /// Records the new run in its store, if it has one; returns the inputs to report. (Its own
    /// future, boxed by the caller: awaited inside the run's future, its locals would take room
    /// there for the run's whole life; docs/architecture.md, The driver.)
    pub(super) async fn record_start(&mut self, start: Start) -> Result<Option<Value>, Error> {
        if let Some((store, new)) = start.record {
            let durable = Durable::record(store.clone(), new).await?;
            self.start_journal(store, durable.fencing, Vec::new());
            self.durable = Some(Box::new(durable));
        }
        Ok(start.inputs)
    }

    /// A checkpoint in the middle of a step (it is about to wait for a person).
    pub(super) async fn checkpoint_now(&mut self) -> Result<(), Error> {
        let Some(store) = self.store() else { return Ok(()) };
        let checkpoint = self.checkpoint()?;
        let step: Arc<str> = Arc::from("(a step waiting for input)");
        Box::pin(write_checkpoint(store, checkpoint, step)).await
    }

    /// The run's current checkpoint: state (or its delta), frontier and the unsaved step
    /// outputs.
    pub(super) fn checkpoint(&mut self) -> Result<Checkpoint, Error> {
        let mut state = state_json(&self.shared)?;
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
            Some(serde_json::to_string(&record).map_err(|e| {
                Error::Durable(DurableError::Unpersistable {
                    what: "the run's feedback record".into(),
                    message: e.to_string(),
                })
            })?)
        };
        let mut delta = None;
        let chained = durable.chain.is_some() && DeltaPolicy::chains(self.flow.delta_policy, state.len());
        let had_chain = durable.chain.as_ref().is_some_and(|chain| chain.stored);
        if let Some(chain) = &mut durable.chain {
            // With a delta, the chain takes the state's text and leaves `state` empty.
            if let Some(d) = chain.next(&mut state, self.flow.delta_policy) {
                delta = Some(crate::json::to_string(&d).map_err(|e| Error::Internal(format!("a state delta: {e}")))?);
            }
            chain.stored = delta.is_some() || chained;
        }
        Ok(Checkpoint {
            run_id: self.shared.id,
            fencing: durable.fencing,
            seq: durable.seq,
            state,
            delta,
            chained,
            had_chain,
            state_version: self.flow.versions.current,
            frontier,
            steps,
            feedback,
        })
    }

    /// The store, cloned out so that no borrow of the driver is held across an `.await`
    /// (the driver is `Send` but not `Sync`).
    pub(super) fn store(&self) -> Option<Arc<dyn RunStore>> {
        self.durable.as_ref().map(|d| d.store.clone())
    }
}
