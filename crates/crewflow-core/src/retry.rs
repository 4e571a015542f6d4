//! Step retries: a failed step runs again, on the state without its failed attempt's changes,
//! with its journal intact (operations it completed through [`Cx::once`](crate::Cx::once) and
//! model calls are not repeated).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// Decides which failures a [`Retry`] retries.
pub type RetryWhen = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// How a step is retried after it fails (see [`FlowBuilder::retry`](crate::FlowBuilder::retry)).
///
/// ```
/// use std::time::Duration;
/// use crewflow_core::Retry;
///
/// // up to 4 attempts in all, waiting 200 ms, 400 ms, then 800 ms between them
/// let retry = Retry::attempts(4).backoff(Duration::from_millis(200));
/// assert_eq!(retry.delay_before(2), Duration::from_millis(200));
/// assert_eq!(retry.delay_before(3), Duration::from_millis(400));
/// ```
#[derive(Clone)]
pub struct Retry {
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    when: Option<RetryWhen>,
}

impl Retry {
    /// At most `attempts` attempts in all (the first run included); at least 1. Waits 100 ms
    /// before the second attempt, doubling each time, at most 30 s.
    pub fn attempts(attempts: u32) -> Self {
        Retry {
            attempts: attempts.max(1),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            when: None,
        }
    }

    /// The wait before the second attempt (doubled before each later one).
    pub fn backoff(mut self, first: Duration) -> Self {
        self.backoff = first;
        self
    }

    /// The longest wait between two attempts.
    pub fn max_backoff(mut self, longest: Duration) -> Self {
        self.max_backoff = longest;
        self
    }

    /// Retries only failures `when` accepts (by default, every failure of the step's body).
    /// The error is the step's failure ([`Error::StepFailed`] with the body's error as its
    /// source, which can be downcast).
    pub fn when(mut self, when: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(when));
        self
    }

    /// How many attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before attempt `attempt` (counted from 1; the first has none).
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let doublings = (attempt - 2).min(31);
        self.backoff.saturating_mul(1u32 << doublings).min(self.max_backoff)
    }

    /// Whether a failure of attempt `attempt` is retried.
    pub(crate) fn retries(&self, attempt: u32, error: &Error) -> bool {
        attempt < self.attempts
            && matches!(error, Error::StepFailed { .. })
            && self.when.as_ref().is_none_or(|when| when(error))
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("when", &self.when.as_ref().map(|_| "(a function)"))
            .finish()
    }
}
