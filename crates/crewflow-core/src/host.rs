//! Hosting runs: the seam through which the layers above the engine (conversations in
//! `crewflow-chat`, a server, the command line) start runs with more say than
//! [`Flow::kickoff`] gives, without reaching into the engine.
//!
//! [`Flow::host`] prepares a [`HostedRun`]. Before running it, a host can:
//!
//! - start it from a state of its own ([`HostedRun::state`]) instead of the default state (the
//!   kickoff's inputs are still merged over it). A conversation starts each turn from the
//!   session's state;
//! - choose where this one run is recorded: nowhere ([`HostedRun::without_store`]) or in another
//!   store ([`HostedRun::store`]). The flow is neither copied nor changed: other runs of it keep
//!   its own store. A conversation's turn is recorded in its session, not as a run;
//! - keep a [`Canceller`] to stop it ([`HostedRun::canceller`]).
//!
//! Then [`run`](HostedRun::run) runs it to its end, or
//! [`run_with_events`](HostedRun::run_with_events) also hands every event of the run, in order,
//! to a callback (a server forwards them to its client; a conversation streams tokens and
//! builds its trace). The start steps receive the kickoff's payload
//! ([`Kickoff::payload`]) as their input; the final state is the returned [`Run`]'s `state`,
//! the host's to keep wherever it likes.
//!
//! ```
//! use crewflow_core::{EventKind, FlowBuilder, Kickoff};
//! # use serde::{Deserialize, Serialize};
//! #[derive(Default, Serialize, Deserialize)]
//! struct Tally { seen: Vec<String> }
//!
//! # async fn demo() -> Result<(), crewflow_core::Error> {
//! let flow = FlowBuilder::<Tally>::new("tally")
//!     .start("count", |cx: crewflow_core::Cx<Tally>, word: String| async move {
//!         cx.update(|t| t.seen.push(word));
//!         Ok(cx.state(|t| t.seen.len()))
//!     })
//!     .build()?;
//!
//! // Continue from a state the host kept, and watch the run's events.
//! let kept = Tally { seen: vec!["earlier".into()] };
//! let mut started = Vec::new();
//! let run = flow
//!     .host(Kickoff::new().payload("now".to_string()))
//!     .state(kept)
//!     .without_store()
//!     .run_with_events(|e| {
//!         if let EventKind::StepStarted { .. } = e.kind {
//!             started.extend(e.step.as_deref().map(str::to_string));
//!         }
//!     })
//!     .await?;
//! assert_eq!(run.output::<usize>()?, 2);
//! assert_eq!(run.state.seen, ["earlier", "now"]);
//! assert_eq!(started, ["count"]);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

use std::sync::Arc;

use tokio::sync::mpsc::unbounded_channel;

use crate::cancel::Canceller;
use crate::driver;
use crate::error::Error;
use crate::event::Event;
use crate::flow::{Flow, Kickoff};
use crate::persist::RunStore;
use crate::run::Run;
use crate::state::FlowState;

/// A run a host set up, not started yet ([`Flow::host`]; see [`crate::host`]).
#[must_use = "a hosted run does nothing until `.run()` or `.run_with_events(..)` is awaited"]
pub struct HostedRun<S> {
    flow: Flow<S>,
    kickoff: Kickoff,
    state: Option<S>,
    store: Option<Arc<dyn RunStore>>,
    cancel: Canceller,
}

impl<S: FlowState> Flow<S> {
    /// Prepares a run of this flow for a host (a conversation layer, a server): with a state,
    /// a store and an event callback of its choosing. See [`crate::host`].
    pub fn host(&self, kickoff: impl Into<Kickoff>) -> HostedRun<S> {
        HostedRun {
            flow: self.clone(),
            kickoff: kickoff.into(),
            state: None,
            store: self.store().cloned(),
            cancel: Canceller::new(),
        }
    }
}

impl<S: FlowState> HostedRun<S> {
    /// Starts the run from `state` instead of the default state; the kickoff's inputs are
    /// merged over it.
    pub fn state(mut self, state: S) -> Self {
        self.state = Some(state);
        self
    }

    /// Records this run in no store (the flow's other runs keep theirs): no run record, no
    /// checkpoints. A step that would pause for feedback then fails the run with
    /// [`FeedbackError::PauseWithoutStore`](crate::FeedbackError::PauseWithoutStore), since nothing could keep the paused run.
    pub fn without_store(mut self) -> Self {
        self.store = None;
        self
    }

    /// Records this run in `store` instead of the flow's.
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// A handle that cancels this run (in-flight steps are cancelled, the run ends with
    /// [`Error::Cancelled`]); take it before running.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }

    /// Runs to the end and returns the run (its final state in [`Run::state`]).
    pub async fn run(self) -> Result<Run<S>, Error> {
        let (flow, prepared) = self.prepare(None, "HostedRun::run")?;
        driver::drive(flow, prepared).await
    }

    /// [`run`](HostedRun::run), handing every event of the run to `on_event`, in order, as they
    /// happen. The callback is called from the task awaiting this future (never from a step),
    /// so it may borrow from the caller; keep it short, since events queue while it runs.
    pub async fn run_with_events(self, mut on_event: impl FnMut(Event) + Send) -> Result<Run<S>, Error> {
        let (tx, mut rx) = unbounded_channel();
        let (flow, prepared) = self.prepare(Some(tx), "HostedRun::run_with_events")?;
        let mut run = std::pin::pin!(driver::drive(flow, prepared));
        let result = loop {
            tokio::select! {
                biased;
                result = &mut run => break result,
                event = rx.recv() => match event {
                    Some(e) => on_event(e),
                    None => break (&mut run).await,
                },
            }
        };
        // Events emitted in the run's last poll.
        while let Ok(e) = rx.try_recv() {
            on_event(e);
        }
        result
    }

    fn prepare(
        self,
        stream: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
        call: &'static str,
    ) -> Result<(Arc<crate::flow::FlowInner<S>>, driver::Prepared<S>), Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime { call, instead: "a tokio runtime" });
        }
        let inner = self.flow.inner();
        let prepared = driver::prepare_hosted(inner, self.kickoff, stream, self.state, self.store, self.cancel)?;
        Ok((inner.clone(), prepared))
    }
}
