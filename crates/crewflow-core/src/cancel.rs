//! Cancelling a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Cancels a run: its steps see [`Cx::cancelled`](crate::Cx::cancelled) resolve, and the run
/// ends with [`Error::Cancelled`](crate::Error::Cancelled). Cheap to clone.
///
/// (A flat flag and a `Notify`: every run carries one, and a run needs no tree of child
/// tokens, so this is a quarter of the size of `tokio_util`'s `CancellationToken`.)
#[derive(Clone, Debug, Default)]
pub struct Canceller(Arc<State>);

#[derive(Debug, Default)]
struct State {
    cancelled: AtomicBool,
    notify: Notify,
    /// The run's driver, woken on cancel (see [`Canceller::poll_cancelled`]).
    driver: futures::task::AtomicWaker,
}

impl Canceller {
    /// A canceller not cancelled yet.
    pub fn new() -> Self {
        Canceller::default()
    }

    /// Cancels (idempotent).
    pub fn cancel(&self) {
        if !self.0.cancelled.swap(true, Ordering::SeqCst) {
            self.0.notify.notify_waiters();
            self.0.driver.wake();
        }
    }

    /// Ready once cancelled; otherwise registers the polling task to be woken by
    /// [`cancel`](Canceller::cancel). For the run's driver only: one task at a time is
    /// registered (steps wait with [`cancelled`](Canceller::cancelled)). Unlike that future,
    /// this keeps nothing in the caller's future, which every run in flight holds.
    pub(crate) fn poll_cancelled(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.is_cancelled() {
            return std::task::Poll::Ready(());
        }
        self.0.driver.register(cx.waker());
        // Again after registering: a cancel in between woke no one.
        if self.is_cancelled() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    }

    /// Whether [`cancel`](Canceller::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once cancelled (at once if already).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking the flag, so a cancel in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Canceller;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_and_late_waiters_return_at_once() {
        let c = Canceller::new();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        c.cancel();
        c.cancel();
        tokio::time::timeout(Duration::from_secs(1), waiter).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_millis(50), c.cancelled()).await.unwrap();
        assert!(c.is_cancelled());
    }
}
