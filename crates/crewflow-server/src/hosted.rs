//! Flows of any state type behind one object-safe face, so one server hosts them all.

use crewflow_core::DurableError;
use std::future::Future;
use std::pin::Pin;

use crewflow_core::graph::{Graph, StartKind};
use crewflow_core::{Canceller, Error, Event, FeedbackRequest, Flow, FlowState, Kickoff, Run, RunHandle, RunId};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Map, Value, json};

/// A boxed future the hosted face returns.
pub(crate) type Fut<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

/// How a driven run came back: finished (with its output) or paused (waiting for feedback).
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub output: Option<Value>,
    pub steps: usize,
    pub paused: Option<FeedbackRequest>,
}

impl Outcome {
    fn of<S>(run: &Run<S>) -> Self {
        Outcome {
            output: if run.paused().is_some() { None } else { run.output_json() },
            steps: run.steps_run(),
            paused: run.paused().map(|p| p.request.clone()),
        }
    }
}

/// A run the server drives: its id, its end, its events and the handle that cancels it.
pub(crate) struct Driven {
    pub run_id: RunId,
    pub run: Fut<Outcome>,
    pub events: BoxStream<'static, Event>,
    pub cancel: Canceller,
}

impl Driven {
    fn of<S: Send + 'static>(handle: RunHandle<S>, events: crewflow_core::EventStream) -> Self {
        let (run_id, cancel) = (handle.id(), handle.canceller());
        let run: Fut<Outcome> = Box::pin(async move { handle.await.map(|run| Outcome::of(&run)) });
        Driven { run_id, run, events: events.boxed(), cancel }
    }
}

/// What the server needs of a flow, whatever its state type.
pub(crate) trait Hosted: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn graph(&self) -> &Graph;
    /// The inputs a run takes: the state's top-level fields with their defaults.
    fn inputs(&self) -> Value;
    /// Starts a run in the background; bad inputs are refused here, before any step runs.
    fn start(&self, inputs: Map<String, Value>) -> Result<Driven, Error>;
    /// The record of a queued run with `inputs` (not stored): what a schedule's tick records.
    /// Bad inputs are refused here.
    fn queued(&self, inputs: Map<String, Value>) -> Result<crewflow_core::persist::NewRun, Error>;
    /// Answers a paused run's feedback and continues it, in the background.
    fn answer(&self, run_id: RunId, answer: String) -> Result<Driven, Error>;
    /// Continues a stored run from its last checkpoint, in the background.
    fn resume(&self, run_id: RunId) -> Result<Driven, Error>;
    /// Starts a new run from `state` (another run's last checkpoint, as JSON) with `inputs`
    /// merged over it; resolves once the run has started, or with its refusal (bad inputs).
    fn fork(&self, source: RunId, state: &str, inputs: Map<String, Value>) -> Fut<Driven>;
    /// What a paused run waits for.
    fn pending(&self, run_id: RunId) -> Fut<Vec<FeedbackRequest>>;
}

impl<S: FlowState> Hosted for Flow<S> {
    fn name(&self) -> &str {
        Flow::name(self)
    }

    fn graph(&self) -> &Graph {
        Flow::graph(self)
    }

    fn inputs(&self) -> Value {
        inputs_of::<S>()
    }

    fn start(&self, inputs: Map<String, Value>) -> Result<Driven, Error> {
        let (handle, events) = self.stream(Kickoff::new().inputs(Value::Object(inputs)))?;
        Ok(Driven::of(handle, events))
    }

    fn queued(&self, inputs: Map<String, Value>) -> Result<crewflow_core::persist::NewRun, Error> {
        self.queued_run(Kickoff::new().inputs(Value::Object(inputs)))
    }

    fn answer(&self, run_id: RunId, answer: String) -> Result<Driven, Error> {
        let (handle, events) = self.stream_resume_with_feedback(run_id, answer)?;
        Ok(Driven::of(handle, events))
    }

    fn resume(&self, run_id: RunId) -> Result<Driven, Error> {
        let (handle, events) = self.stream_resume(run_id)?;
        Ok(Driven::of(handle, events))
    }

    fn fork(&self, source: RunId, state: &str, inputs: Map<String, Value>) -> Fut<Driven> {
        let parsed = serde_json::from_str::<S>(state).map_err(|e| {
            Error::Durable(DurableError::CorruptCheckpoint {
                run_id: source.to_string(),
                message: format!("its state does not parse: {e}"),
            })
        });
        let flow = self.clone();
        Box::pin(async move { fork_from(&flow, parsed?, inputs).await })
    }

    fn pending(&self, run_id: RunId) -> Fut<Vec<FeedbackRequest>> {
        let flow = self.clone();
        Box::pin(async move { flow.pending_requests(run_id).await })
    }
}

/// Starts a run of `flow` from `state` under a new id, through the engine's hosting seam (the
/// run is recorded in the flow's store like any). The inputs are checked when the run is
/// prepared, before its first event: so the first of "an event" and "the run's end" tells
/// whether they were refused, with no timing involved.
async fn fork_from<S: FlowState>(flow: &Flow<S>, state: S, inputs: Map<String, Value>) -> Result<Driven, Error> {
    let run_id = RunId::new();
    let hosted = flow.host(Kickoff::new().inputs(Value::Object(inputs)).run_id(run_id)).state(state);
    let cancel = hosted.canceller();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let mut task =
        tokio::spawn(async move { hosted.run_with_events(|e| drop(tx.send(e))).await.map(|run| Outcome::of(&run)) });
    let joined = |r: Result<Result<Outcome, Error>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Err(Error::Internal(format!("the forked run's task failed: {e}"))))
    };
    let first = tokio::select! {
        biased;
        event = rx.recv() => event.ok_or(None),
        ended = &mut task => Err(Some(joined(ended))),
    };
    let first = match first {
        Ok(event) => event,
        // Ended before its first event (refused inputs), or its events closed first.
        Err(Some(ended)) => return Ok(ended_early(ended?, run_id, rx, cancel)),
        Err(None) => return Ok(ended_early(joined(task.await)?, run_id, rx, cancel)),
    };
    let rest = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    let events = futures::stream::once(async move { first }).chain(rest).boxed();
    let run: Fut<Outcome> = Box::pin(async move { joined(task.await) });
    Ok(Driven { run_id, run, events, cancel })
}

/// A forked run that ended before the server looked: its outcome and its events so far.
fn ended_early(
    outcome: Outcome,
    run_id: RunId,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    cancel: Canceller,
) -> Driven {
    let events: Vec<Event> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let run: Fut<Outcome> = Box::pin(async move { Ok(outcome) });
    Driven { run_id, run, events: futures::stream::iter(events).boxed(), cancel }
}

/// A state's top-level fields as the inputs a run takes: each with its JSON type and default.
pub(crate) fn inputs_of<S: FlowState>() -> Value {
    match serde_json::to_value(S::default()) {
        Ok(Value::Object(fields)) => Value::Object(
            fields
                .into_iter()
                .map(|(name, default)| (name, json!({"type": json_type(&default), "default": default})))
                .collect(),
        ),
        _ => json!({}),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "any",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A flow's description (`GET /flows/{flow}`): its steps (how each starts, its trigger, a
/// router's labels) and the inputs a run takes.
pub(crate) fn describe(graph: &Graph, inputs: Value, conversational: bool) -> Value {
    let steps: Vec<Value> = (0..graph.len() as u32)
        .map(|ix| {
            let kind = if graph.is_router(ix) { "router" } else { "step" };
            let start = match graph.start_kind(ix) {
                StartKind::Listener => Value::Null,
                StartKind::Always => json!("always"),
                StartKind::When => json!("when"),
                StartKind::Conditional => json!("on"),
            };
            json!({
                "name": graph.step_name(ix),
                "kind": kind,
                "start": start,
                "trigger": graph.trigger(ix).map(ToString::to_string),
                "routes": graph.routes_of(ix).collect::<Vec<_>>(),
                "source": graph.source(ix).map(ToString::to_string),
            })
        })
        .collect();
    json!({
        "name": graph.name(),
        "conversational": conversational,
        "steps": steps,
        "inputs": inputs,
        "fingerprint": format!("{:016x}", graph.fingerprint()),
    })
}
