//! Checkpointing a SQLite file's write-ahead log off the callers' path.
//!
//! In WAL mode a commit appends pages to `<file>-wal`; a *checkpoint* copies them back into the
//! database file and waits for the disk (an `fsync` of the log and one of the file, whatever
//! `synchronous` says). By default SQLite checkpoints inside the commit that takes the log past
//! 1,000 pages, so one call in every few dozen pays for two disk flushes: milliseconds on a
//! busy disk, the larger part of a conversation turn's average cost (`turn_overhead`).
//!
//! A file store can therefore checkpoint on a thread of its own, with a connection of its own,
//! each time the log has grown by [`EVERY_PAGES`] (SQLite's `PASSIVE` mode: it never blocks the writer, and
//! readers keep reading): [`SqliteStore::background_checkpoints`](crate::SqliteStore::background_checkpoints).
//! The log file is reused from its start once a checkpoint has copied all of it; under writes
//! that never pause, each checkpoint finds new pages behind it and the log grows until the
//! store's connection checkpoints itself, at [`FALLBACK_PAGES`] (also what happens when this
//! thread cannot open the file), so it stays bounded (some 33 MB) either way. Nothing changes for
//! durability: a commit is as durable as `synchronous` makes it, before and after the
//! checkpoint.
//!
//! On by default for file stores (since 2026-12-07, when short calls began to run on the
//! runtime's workers and a checkpoint's flushes inside a commit held up every other caller):
//! measured on the 2-core development machine, served turns (`serve_turns`) ran 10–20 % faster
//! with it and 64 sessions at once (`sessions_10k`) a fifth faster, while the tightest write loop
//! (`persist_chain20`, a checkpoint every 20 µs) ran a third slower (probably its writes waiting
//! on pages the thread's flushes hold; not verified). See docs/store.md.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Pages the log grows by between two background checkpoints (SQLite's own `wal_autocheckpoint`
/// default). Every 64 writes, as at first, flushed the disk so often that a tight loop of small
/// writes ran at half speed, its appends to the log waiting on pages being flushed.
pub(crate) const EVERY_PAGES: u32 = 1_000;

/// The log size, in pages, past which the store's own connection checkpoints (SQLite's
/// `wal_autocheckpoint`; its default is 1,000).
pub(crate) const FALLBACK_PAGES: u32 = 8_000;

/// The background checkpointer of one file store; stops when dropped.
pub(crate) struct WalCheckpointer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// The log's size after the last commit, in pages.
    pages: u32,
    /// The size at which the next checkpoint is due.
    next_at: u32,
    /// A checkpoint is due.
    due: bool,
    stop: bool,
}

impl Default for State {
    fn default() -> Self {
        State { pages: 0, next_at: EVERY_PAGES, due: false, stop: false }
    }
}

impl WalCheckpointer {
    /// Starts the thread for the database at `path` (which exists: the store opened it). `None`
    /// when no thread can be started: the store's connection then checkpoints on its own.
    pub fn start(path: PathBuf) -> Option<WalCheckpointer> {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        std::thread::Builder::new().name("crewflow-sqlite-wal".into()).spawn(move || worker.run(&path)).ok()?;
        Some(WalCheckpointer { shared })
    }

    /// Notes the log's size after a commit; wakes the thread each time it has grown by
    /// [`EVERY_PAGES`] since it was last reused from its start.
    pub fn logged(&self, pages: u32) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if pages < state.pages {
            // A checkpoint copied the whole log, and the writer started it again from its start.
            state.next_at = EVERY_PAGES;
        }
        state.pages = pages;
        if pages >= state.next_at {
            state.next_at = pages.saturating_add(EVERY_PAGES);
            state.due = true;
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for WalCheckpointer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn run(&self, path: &std::path::Path) {
        // Opened without creating: the store created the file. A failure leaves checkpoints
        // to the store's connection.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let Ok(conn) = rusqlite::Connection::open_with_flags(path, flags) else { return };
        let _ = conn.busy_timeout(Duration::from_millis(100));
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                while !state.stop && !state.due {
                    state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                if state.stop {
                    return;
                }
                state.due = false;
            }
            // PASSIVE: copies what no reader still needs and never waits for the writer; what
            // it leaves is copied next time. Errors (a busy file) are retried next time too.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
    }
}
