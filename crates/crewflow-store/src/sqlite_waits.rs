//! Where a SQLite call can wait, and how a call running on a runtime worker steps aside first.
//!
//! A short store call (one run's or one session's rows) runs on the tokio worker that makes it
//! when the connection is free ([`SqliteStore::call_short`](crate::SqliteStore)): handing the
//! worker's core to another thread and taking it back (`block_in_place`) cost a third of a served
//! turn's CPU, more than the call itself. Such a call can still wait in two places, both inside
//! SQLite, and neither may stall a worker:
//!
//! - **Another process's write lock** (`SQLITE_BUSY`): SQLite calls the connection's busy
//!   handler, which sleeps and retries. Ours sleeps as SQLite's own `busy_timeout` does (the
//!   same steps, up to [`BUSY_TIMEOUT`]), but on a worker it first hands the worker on
//!   (`block_in_place`), so the runtime keeps running other tasks while this call waits.
//! - **A checkpoint of the write-ahead log**, which SQLite runs inside the commit that takes the
//!   log past a size, with two disk flushes. Ours runs at the same size (SQLite's
//!   `wal_autocheckpoint`, replaced by a hook of ours), stepping aside the same way first.
//!
//! Everything else an inline call does is CPU work and page-cache writes (with
//! `synchronous=NORMAL` a WAL commit does not flush; [`Synchronous::Full`] stores never run
//! inline).
//!
//! [`Synchronous::Full`]: crate::Synchronous::Full

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a call waits for another process's write lock before failing with `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite's own sleeps between two tries for a lock, in milliseconds (`sqliteDefaultBusyCallback`).
const STEPS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

thread_local! {
    /// This thread is a runtime worker running a store call inline.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as running a store call inline on a runtime worker, until dropped.
pub(crate) struct OnWorker {
    was: bool,
}

impl OnWorker {
    pub fn enter() -> OnWorker {
        OnWorker { was: ON_WORKER.replace(true) }
    }
}

impl Drop for OnWorker {
    fn drop(&mut self) {
        ON_WORKER.set(self.was);
    }
}

/// Runs `wait`, having handed the worker on first when the call runs inline on one.
fn stepping_aside<T>(wait: impl FnOnce() -> T) -> T {
    if ON_WORKER.get() {
        // Inline calls run only on a multi-thread runtime's workers, where this cannot panic.
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// How long to sleep before try `count` (0 for the first retry) for a lock; `None` once
/// [`BUSY_TIMEOUT`] would be exceeded.
fn busy_sleep(count: u32) -> Option<Duration> {
    let count = count as usize;
    let slept: u64 = if count < STEPS_MS.len() {
        STEPS_MS[..count].iter().sum()
    } else {
        STEPS_MS.iter().sum::<u64>() + (count - STEPS_MS.len()) as u64 * STEPS_MS[STEPS_MS.len() - 1]
    };
    let step = STEPS_MS[count.min(STEPS_MS.len() - 1)];
    let left = (BUSY_TIMEOUT.as_millis() as u64).checked_sub(slept).filter(|left| *left > 0)?;
    Some(Duration::from_millis(step.min(left)))
}

/// Sets the connection's busy handler and, for a connection that writes, its log checkpoints
/// (at `checkpoint_pages` pages), both stepping aside on a worker. Replaces SQLite's
/// `busy_timeout` and `wal_autocheckpoint`, so neither may be set on this connection afterwards.
/// After each commit the log's size, in pages, is stored in `log_pages`.
pub(crate) fn install(
    c: &mut rusqlite::Connection,
    checkpoint_pages: Option<u32>,
    log_pages: Arc<AtomicU32>,
) -> rusqlite::Result<()> {
    c.busy_handler(Some(|count: i32| match busy_sleep(count.max(0) as u32) {
        Some(sleep) => {
            stepping_aside(|| std::thread::sleep(sleep));
            true
        }
        None => false,
    }))?;
    let Some(pages) = checkpoint_pages else { return Ok(()) };
    let pages = i32::try_from(pages).unwrap_or(i32::MAX);
    c.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, in_log: i32| {
        log_pages.store(u32::try_from(in_log).unwrap_or(0), Ordering::Relaxed);
        if in_log >= pages {
            // As SQLite's own: a passive checkpoint, whose failure the commit does not see
            // (the commit is done; the next one tries again).
            let _ = stepping_aside(|| wal.checkpoint());
        }
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_sleeps_follow_sqlite_and_stop_at_the_timeout() {
        assert_eq!(busy_sleep(0), Some(Duration::from_millis(1)));
        assert_eq!(busy_sleep(3), Some(Duration::from_millis(10)));
        assert_eq!(busy_sleep(11), Some(Duration::from_millis(100)));
        assert_eq!(busy_sleep(50), Some(Duration::from_millis(100)));
        let total: Duration = (0..).map_while(busy_sleep).sum();
        assert_eq!(total, BUSY_TIMEOUT);
    }
}
