//! In-process session locks: one async mutex per session that has a turn running or waiting.
//!
//! Entries exist only while a turn holds or waits for the lock, so a million idle sessions
//! cost nothing. Waiters are served in arrival order (tokio's mutex is fair). The map's own
//! mutex is held only to find or drop an entry, never while waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

type Entry = Arc<tokio::sync::Mutex<()>>;

/// The locks of this process, keyed by flow name and session id: shared by every `Flow` value,
/// so two separately built copies of a flow (a server building one per request) still run a
/// session's turns one at a time.
pub(crate) fn process_locks() -> &'static Arc<SessionLocks> {
    static LOCKS: std::sync::OnceLock<Arc<SessionLocks>> = std::sync::OnceLock::new();
    LOCKS.get_or_init(Arc::default)
}

/// The per-session locks of one flow.
#[derive(Default)]
pub(crate) struct SessionLocks {
    map: Mutex<HashMap<Arc<str>, Entry>>,
}

/// A held session lock; the entry is removed when the last holder or waiter lets go.
pub(crate) struct LocalGuard {
    locks: Arc<SessionLocks>,
    key: Arc<str>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SessionLocks {
    /// The session's entry, made if it has none.
    fn entry(&self, key: &str) -> (Arc<str>, Entry) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get_key_value(key) {
            Some((k, e)) => (k.clone(), e.clone()),
            None => {
                let k: Arc<str> = Arc::from(key);
                let e = Entry::default();
                map.insert(k.clone(), e.clone());
                (k, e)
            }
        }
    }

    /// The session's lock if it is free now (no turn holds it); `None` otherwise.
    pub fn try_lock(self: &Arc<Self>, key: &str) -> Option<LocalGuard> {
        let (key, entry) = self.entry(key);
        let guard = entry.try_lock_owned().ok()?; // taken: the holder keeps the entry alive
        Some(LocalGuard { locks: self.clone(), key, guard: Some(guard) })
    }

    /// Waits up to `wait` for the session's lock; `None` when the wait ran out.
    pub async fn lock(self: &Arc<Self>, key: &str, wait: Duration) -> Option<LocalGuard> {
        let (key, entry) = self.entry(key);
        match tokio::time::timeout(wait, entry.lock_owned()).await {
            Ok(guard) => Some(LocalGuard { locks: self.clone(), key, guard: Some(guard) }),
            Err(_) => {
                self.forget_if_unused(&key);
                None
            }
        }
    }

    /// Removes the entry when only the map still refers to it (plus `extra` references the
    /// caller is about to drop).
    fn forget_if_unused_with(&self, key: &str, extra: usize) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|e| Arc::strong_count(e) <= 1 + extra) {
            map.remove(key);
        }
    }

    fn forget_if_unused(&self, key: &str) {
        self.forget_if_unused_with(key, 0);
    }

    /// How many sessions have an entry (held or waited for).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        // The guard holds one reference to the entry until it is dropped below.
        self.locks.forget_if_unused_with(&self.key, 1);
        self.guard.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_go_away_and_waits_time_out() {
        let locks = Arc::new(SessionLocks::default());
        let held = locks.lock("a", Duration::from_secs(1)).await;
        assert!(held.is_some());
        assert!(locks.lock("a", Duration::from_millis(20)).await.is_none(), "a second turn must wait");
        assert_eq!(locks.len(), 1);
        drop(held);
        assert_eq!(locks.len(), 0, "an idle session keeps no lock entry");
        assert!(locks.lock("a", Duration::from_millis(20)).await.is_some());
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn try_lock_takes_only_a_free_lock() {
        let locks = Arc::new(SessionLocks::default());
        let held = locks.try_lock("a");
        assert!(held.is_some());
        assert!(locks.try_lock("a").is_none(), "held: not free");
        assert_eq!(locks.len(), 1);
        drop(held);
        assert_eq!(locks.len(), 0, "an idle session keeps no lock entry");
        assert!(locks.try_lock("a").is_some());
        assert_eq!(locks.len(), 0);
    }
}
