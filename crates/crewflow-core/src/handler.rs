//! A step's body as the engine holds it: one type-erased function per step, returning the
//! [`Completion`] the driver receives. The builder makes handlers; the driver and the review
//! phase run them. (Their own module so that neither has to import the other for them.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cx::Cx;
use crate::error::Error;
use crate::output::Output;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a step execution produced: its output and, for a router, the label it chose.
pub(crate) struct StepOutcome {
    pub output: Output,
    pub label: Option<Arc<str>>,
    /// The step asked for feedback and the answer comes later: the run pauses.
    pub pause: Option<Box<crate::feedback::PendingFeedback>>,
}

/// A finished step execution, as the driver receives it.
pub(crate) struct Completion {
    pub activation: u64,
    pub result: Result<StepOutcome, Error>,
    pub elapsed: Duration,
}

/// A step's body, type-erased. The future it returns does everything around the body too
/// (input conversion, the step scope, timing, turning panics into errors), so a step
/// execution costs one allocation.
pub(crate) type Handler<S> = Arc<dyn Fn(Cx<S>, Option<Output>) -> BoxFuture<Completion> + Send + Sync>;
pub(crate) type Predicate<S> = Arc<dyn Fn(&S) -> bool + Send + Sync>;
