//! The crewflow engine.
//!
//! Most users depend on the `crewflow` facade, which re-exports this crate and adds the
//! `#[flow]` macros. This crate holds:
//!
//! - [`trigger`]: the trigger algebra (`step`, `label`, `route`, `or`, `and`);
//! - [`graph`]: a flow's definition, validated ([`GraphSpec::compile`](graph::GraphSpec::compile));
//! - [`frontier`]: the pure state machine deciding what runs next;
//! - the driver behind [`Flow::kickoff`], [`FlowBuilder`] to assemble flows at run time,
//!   [`Cx`] (what a step sees), [`Event`]s, and [`Error`];
//! - [`host`]: the seam the layers above (conversations, a server) start runs through.
//!
//! A flow assembled at run time, without the macros:
//!
//! ```
//! use crewflow_core::FlowBuilder;
//! use crewflow_core::trigger::{and, step};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let flow = FlowBuilder::<()>::new("report")
//!     .start("fetch", |_cx, (): ()| async move { Ok(40u32) })
//!     .start("check", |_cx, (): ()| async move { Ok(2u32) })
//!     .listen("total", and([step("fetch"), step("check")]), |_cx, (): ()| async move { Ok("both done") })
//!     .build()
//!     .unwrap();
//! let run = flow.kickoff(()).await.unwrap();
//! assert_eq!(run.output::<String>().unwrap(), "both done");
//! # });
//! ```
//!
//! Read next: `docs/semantics.md` (what runs when), `docs/architecture.md` (the module graph
//! and the glossary), `docs/store.md` (durable runs; the stores are in `crewflow-store`).

mod builder;
mod cancel;
mod console;
mod cx;
mod defaults;
pub mod delta;
mod driver;
mod error;
mod event;
pub mod feedback;
mod flow;
pub mod frontier;
pub mod graph;
mod handler;
pub mod host;
mod id;
mod input;
pub mod journal;
mod json;
mod kickoff;
mod output;
pub mod persist;
mod retry;
mod review;
mod route;
mod run;
pub mod scope;
mod shared;
mod state;
pub mod trigger;
mod uncommitted;
pub mod versions;
mod worker;

pub use builder::{DEFAULT_CANCEL_GRACE, DEFAULT_MAX_STEPS, FlowBuilder};
pub use cancel::Canceller;
pub use crewflow_rules::{FeedbackRule, GraphRule};
pub use cx::Cx;
pub use defaults::{default_feedback_provider, set_default_feedback_provider, set_default_input_provider};
pub use error::{BoxError, BuildError, DurableError, Error, FeedbackError, InputError, Result, StepError, UnknownKey};
pub use event::{Event, EventKind, EventStream, Observer};
pub use feedback::{
    ConsoleFeedback, DeferredFeedback, FeedbackLearner, FeedbackProvider, FeedbackReply, FeedbackRequest,
    FeedbackResult, HumanFeedback, LearnRequest, OutcomeClassifier, Paused,
};
pub use flow::{Flow, Kickoff, RunHandle};
pub use host::HostedRun;
pub use id::RunId;
pub use input::{Answer, ConsoleInput, InputFuture, InputProvider, InputRecord, InputRequest, InputResponse};
pub use output::{Output, TypeInfo};
pub use retry::Retry;
pub use route::Route;
pub use run::{Run, StepRecord};
pub use scope::TokenUsage;
pub use shared::IntoShared;
pub use state::FlowState;
pub use trigger::Trigger;
pub use versions::StateError;
pub use worker::{Worker, WorkerReport};

/// A type whose methods are the steps of a flow; `#[flow]` implements it.
pub trait IntoFlow: Sized + Send + Sync + 'static {
    /// The flow's state type.
    type State: FlowState;

    /// The flow's definition as a builder, to extend or adjust before building.
    fn into_builder(self) -> FlowBuilder<Self::State>;

    /// Builds the flow.
    fn into_flow(self) -> Result<Flow<Self::State>> {
        self.into_builder().build()
    }
}

/// Support for the code the macros generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
    pub use std::sync::Arc;

    pub use crate::persist::RunStore;

    use crate::error::StepError;

    /// Converts whatever error a step method returns.
    pub fn step_error<E: Into<StepError>>(error: E) -> StepError {
        error.into()
    }

    /// The success type of a step method's return type.
    pub trait StepReturn {
        /// `T` in `Result<T, E>`.
        type Ok;
    }

    impl<T, E> StepReturn for Result<T, E> {
        type Ok = T;
    }

    /// The index of the first label that is neither handled nor terminal.
    pub const fn first_unhandled(labels: Option<&[&str]>, terminal: &[bool], handled: &[usize]) -> Option<usize> {
        let count = match labels {
            Some(l) => l.len(),
            None => 0,
        };
        let mut i = 0;
        while i < count {
            let mut ok = i < terminal.len() && terminal[i];
            let mut j = 0;
            while !ok && j < handled.len() {
                ok = handled[j] == i;
                j += 1;
            }
            if !ok {
                return Some(i);
            }
            i += 1;
        }
        None
    }
}
