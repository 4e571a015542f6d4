//! Lease renewal for the runs a process owns.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::StoreError;

/// One background task per store renewing the leases of this process's running runs, every
/// third of the lease, for as long as the store exists. Started lazily by the first run the
/// store records or claims (a store that is never used starts nothing).
#[derive(Default)]
pub(crate) struct Heartbeat {
    running: Arc<AtomicBool>,
}

/// Clears the flag when the task ends (also when its runtime shuts down), so a later runtime
/// gets a new task.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Heartbeat {
    /// Starts the task if it is not running. `renew` returns `None` once the store is gone.
    pub fn ensure<F, Fut>(&self, owner: &str, lease: Duration, renew: F)
    where
        F: Fn(Arc<str>, Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Option<Result<u64, StoreError>>> + Send,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let guard = Running(self.running.clone());
        let owner: Arc<str> = Arc::from(owner);
        runtime.spawn(async move {
            let _guard = guard;
            let period = (lease / 3).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(period).await;
                // A failed renewal is retried next period; if the lease lapses meanwhile, the
                // fencing token keeps a later write from this process harmless.
                if renew(owner.clone(), lease).await.is_none() {
                    break;
                }
            }
        });
    }
}
