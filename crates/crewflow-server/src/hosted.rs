//! Flows of any state type behind one object-safe face, so one server hosts them all.

use std::future::Future;
use std::pin::Pin;

use crewflow_core::{Error, EventStream, FeedbackRequest, Flow, FlowState, Kickoff, Run, RunId};
use serde_json::{Map, Value};

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

/// What the server needs of a flow, whatever its state type.
pub(crate) trait Hosted: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn steps(&self) -> usize;
    /// Starts a run in the background; bad inputs are refused here, before any step runs.
    fn start(&self, inputs: Map<String, Value>) -> Result<(RunId, Fut<Outcome>, EventStream), Error>;
    /// Answers a paused run's feedback and continues it, in the background.
    fn answer(&self, run_id: RunId, answer: String) -> Result<(Fut<Outcome>, EventStream), Error>;
    /// What a paused run waits for.
    fn pending(&self, run_id: RunId) -> Fut<Vec<FeedbackRequest>>;
}

impl<S: FlowState> Hosted for Flow<S> {
    fn name(&self) -> &str {
        Flow::name(self)
    }

    fn steps(&self) -> usize {
        self.graph().len()
    }

    fn start(&self, inputs: Map<String, Value>) -> Result<(RunId, Fut<Outcome>, EventStream), Error> {
        let (handle, events) = self.stream(Kickoff::new().inputs(Value::Object(inputs)))?;
        let id = handle.id();
        let fut: Fut<Outcome> = Box::pin(async move { handle.await.map(|run| Outcome::of(&run)) });
        Ok((id, fut, events))
    }

    fn answer(&self, run_id: RunId, answer: String) -> Result<(Fut<Outcome>, EventStream), Error> {
        let (handle, events) = self.stream_resume_with_feedback(run_id, answer)?;
        let fut: Fut<Outcome> = Box::pin(async move { handle.await.map(|run| Outcome::of(&run)) });
        Ok((fut, events))
    }

    fn pending(&self, run_id: RunId) -> Fut<Vec<FeedbackRequest>> {
        let flow = self.clone();
        Box::pin(async move { flow.pending_requests(run_id).await })
    }
}
