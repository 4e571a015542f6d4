//! The flow a command works on, whatever its state type: a YAML/JSON file built here, or a
//! Rust flow compiled into the user's binary and mounted with [`App::flow`](crate::App::flow).
//!
//! Commands see flows through [`AnyFlow`], which erases the state type: a run's end is an
//! [`Outcome`] (steps, output as JSON, the pending request), never a typed `Run<S>`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crewflow_core::graph::Graph;
use crewflow_core::persist::RunStore;
use crewflow_core::{Error, EventStream, FeedbackRequest, Flow, FlowState, Kickoff, Run, RunId, Worker};
use crewflow_declarative::DeclarativeFlow;
use crewflow_server::{Server, ServerError};
use serde_json::{Map, Value};

use crate::commands::{Ctx, load_flow};
use crate::{CliError, Exit};

/// A boxed future, for the erased operations.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a run ended, its state type erased.
pub(crate) struct Outcome {
    pub steps: usize,
    pub output: Option<Value>,
    pub paused: Option<FeedbackRequest>,
}

impl<S> From<Run<S>> for Outcome {
    fn from(run: Run<S>) -> Outcome {
        Outcome { steps: run.steps_run(), output: run.output_json(), paused: run.paused().map(|p| p.request.clone()) }
    }
}

/// What the commands do with a flow, for any state type.
pub(crate) trait AnyFlow: Send + Sync {
    fn name(&self) -> &str;
    fn graph(&self) -> &Graph;
    fn store(&self) -> Option<Arc<dyn RunStore>>;
    #[allow(clippy::type_complexity)] // the three parts of a streamed run
    fn stream(
        &self,
        kickoff: Kickoff,
    ) -> Result<(RunId, EventStream, BoxFuture<'static, Result<Outcome, Error>>), Error>;
    fn resume(&self, id: RunId) -> BoxFuture<'_, Result<Outcome, Error>>;
    fn answer<'a>(&'a self, id: RunId, request: Option<u64>, answer: &'a str) -> BoxFuture<'a, Result<Outcome, Error>>;
    fn fork(&self, source: RunId, kickoff: Kickoff) -> BoxFuture<'_, Result<Outcome, Error>>;
    fn enqueue(&self, kickoff: Kickoff) -> BoxFuture<'_, Result<RunId, Error>>;
    /// The worker, also taking over this flow's runs.
    fn mount(&self, worker: Worker) -> Worker;
    /// The server, also hosting this flow.
    fn serve(&self, server: Server) -> Result<Server, ServerError>;
}

impl<S: FlowState> AnyFlow for Flow<S> {
    fn name(&self) -> &str {
        Flow::name(self)
    }

    fn graph(&self) -> &Graph {
        Flow::graph(self)
    }

    fn store(&self) -> Option<Arc<dyn RunStore>> {
        Flow::store(self).cloned()
    }

    fn stream(
        &self,
        kickoff: Kickoff,
    ) -> Result<(RunId, EventStream, BoxFuture<'static, Result<Outcome, Error>>), Error> {
        let (handle, events) = Flow::stream(self, kickoff)?;
        let id = handle.id();
        Ok((id, events, Box::pin(async move { handle.await.map(Outcome::from) })))
    }

    fn resume(&self, id: RunId) -> BoxFuture<'_, Result<Outcome, Error>> {
        Box::pin(async move { Flow::resume(self, id).await.map(Outcome::from) })
    }

    fn answer<'a>(&'a self, id: RunId, request: Option<u64>, answer: &'a str) -> BoxFuture<'a, Result<Outcome, Error>> {
        Box::pin(async move {
            match request {
                Some(r) => self.resume_with_feedback_for(id, r, answer).await,
                None => self.resume_with_feedback(id, answer).await,
            }
            .map(Outcome::from)
        })
    }

    fn fork(&self, source: RunId, kickoff: Kickoff) -> BoxFuture<'_, Result<Outcome, Error>> {
        Box::pin(async move { Flow::fork(self, source, kickoff).await.map(Outcome::from) })
    }

    fn enqueue(&self, kickoff: Kickoff) -> BoxFuture<'_, Result<RunId, Error>> {
        Box::pin(Flow::enqueue(self, kickoff))
    }

    fn mount(&self, worker: Worker) -> Worker {
        worker.flow(self)
    }

    fn serve(&self, server: Server) -> Result<Server, ServerError> {
        server.flow(self)
    }
}

/// A flow ready for a command: the erased flow, and its definition when it came from a file
/// (which fills in the state's defaults and checks inputs against its schema).
pub(crate) struct Target {
    pub flow: Arc<dyn AnyFlow>,
    declarative: Option<DeclarativeFlow>,
}

impl Target {
    /// The flow named `arg`: a mounted Rust flow of that name, else the definition file at that
    /// path, built with `store` (if any).
    pub fn resolve(ctx: &Ctx, arg: &Path, store: Option<Arc<dyn RunStore>>) -> Result<Target, CliError> {
        if let Some(flow) = ctx.mounted(arg) {
            return Ok(Target { flow, declarative: None });
        }
        let d = load_flow(arg, store).map_err(|mut e| {
            let names = ctx.mounted_names();
            if !arg.exists() && !names.is_empty() {
                e.message.push_str(&format!("; or name a flow compiled into this binary: {}", names.join(", ")));
            }
            e
        })?;
        Ok(Target { flow: Arc::new(d.flow().clone()), declarative: Some(d) })
    }

    pub fn name(&self) -> &str {
        self.flow.name()
    }

    /// Whether the flow was compiled into the binary (not built from a file here).
    pub fn is_compiled(&self) -> bool {
        self.declarative.is_none()
    }

    /// The kickoff of a new run: the state's defaults under `inputs` (definitions), checked.
    pub fn kickoff(&self, inputs: Map<String, Value>) -> Result<Kickoff, CliError> {
        match &self.declarative {
            Some(d) => d.prepare(Value::Object(inputs)).map_err(|e| CliError::new(Exit::Usage, e.to_string())),
            None => Ok(Kickoff::new().inputs(inputs)),
        }
    }

    /// The kickoff of a fork: only `inputs` (checked), merged by the engine over the state
    /// the source run reached — the defaults would overwrite it.
    pub fn fork_kickoff(&self, inputs: Map<String, Value>) -> Result<Kickoff, CliError> {
        self.kickoff(inputs.clone())?;
        Ok(Kickoff::new().inputs(inputs))
    }
}
