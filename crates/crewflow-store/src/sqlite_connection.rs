//! The SQLite store's connections and how its calls run on them.
//!
//! One connection writes, behind a mutex (SQLite has one writer at a time anyway); up to four
//! read-only ones serve short reads (`sqlite_readers`). A call runs on the calling worker
//! thread: a long one through `block_in_place` (`spawn_blocking` on a current-thread runtime),
//! a short one (one run's or one session's rows) inline after waiting its turn on an async
//! semaphore, stepping aside only where SQLite waits (`sqlite_waits`). docs/store.md, Speed,
//! has the measurements behind each choice.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use tokio::runtime::RuntimeFlavor;

use crate::StoreError;
use crate::heartbeat::Heartbeat;
use crate::sqlite::{SqliteStore, Synchronous};
use crate::sqlite_open::{file_error, looks_like_sqlite, prepare};
use crate::sqlite_readers::Readers;
use crate::sqlite_waits::OnWorker;
use crate::sqlite_wal::WalCheckpointer;

/// The log size, in pages, at which the store's connection checkpoints it (SQLite's default
/// `wal_autocheckpoint`).
const DEFAULT_CHECKPOINT_PAGES: u32 = 1_000;

/// Where the database is.
pub(crate) enum Location {
    File(PathBuf),
    Memory,
}

/// What the clones of one store share: its connections and the leases it keeps alive.
pub(crate) struct Inner {
    location: Location,
    pub(crate) conn: Mutex<Slot>,
    /// Short calls wait their turn for the connection here, without holding a thread (the
    /// connection's mutex would park the worker's thread, and hand its core to another first).
    short_calls: tokio::sync::Semaphore,
    /// Read-only connections for short reads (`sqlite_readers`).
    readers: Readers,
    /// The write-ahead log's size after the last commit, in pages (set by a hook of SQLite's).
    log_pages: Arc<std::sync::atomic::AtomicU32>,
    pub(crate) heartbeat: Heartbeat,
}

/// The connection and the durability it must run with.
pub(crate) struct Slot {
    /// Opened on first use; a failed open is retried on the next call.
    pub(crate) conn: Option<rusqlite::Connection>,
    /// Checkpoints the file's write-ahead log off the callers' path (file stores asking for
    /// it; see [`crate::sqlite_wal`]). Started with the connection.
    pub(crate) wal: Option<WalCheckpointer>,
    /// [`SqliteStore::background_checkpoints`] was asked for.
    pub(crate) background: bool,
    /// The mode asked for.
    pub(crate) synchronous: Synchronous,
    /// The mode set on `conn` (`None`: not set yet, or no connection).
    pub(crate) applied: Option<Synchronous>,
}

impl SqliteStore {
    /// Runs `f` on the connection (opening it first if needed), without blocking the runtime:
    /// on a multi-thread runtime the worker lends itself to the call (`block_in_place`),
    /// otherwise the call goes to the blocking pool.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let run = move || inner.with_connection(f);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => tokio::task::spawn_blocking(run).await.map_err(|e| StoreError::SqliteTask(e.to_string()))?,
        }
    }

    /// [`call`](Self::call) for a short call (one run's or one session's rows): run on the
    /// calling worker itself when the connection is free, without handing the worker's core to
    /// another thread and back, which costs more than such a call. Where SQLite may wait
    /// (another process's lock, a checkpoint's disk flushes), the call steps aside first: see
    /// [`crate::sqlite_waits`].
    pub(crate) async fn call_short<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let f = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => {
                // Never closed, so `acquire` cannot fail; the permit is held through the call.
                let _turn = self.inner.short_calls.acquire().await;
                match self.inner.try_inline(f) {
                    Ok(done) => return done,
                    Err(f) => f,
                }
            }
            _ => f,
        };
        self.call(f).await
    }

    /// [`call_short`](Self::call_short) for a short read: on a read-only connection of its own
    /// when one is free (`sqlite_readers`), so it neither waits for nor holds up the writes.
    pub(crate) async fn call_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        let mut f = f;
        if let (Ok(RuntimeFlavor::MultiThread), Ok(_turn)) = (&flavor, self.inner.short_calls.try_acquire()) {
            // Nobody is using or waiting for the writing connection: its page cache is warm,
            // while a reader's is emptied by every commit of the writer.
            match self.inner.try_inline(f) {
                Ok(done) => return done,
                Err(back) => f = back,
            }
        }
        let Some(mut reader) = self.inner.readers.take() else { return self.call_short(f).await };
        let inner = self.inner.clone();
        let run = move || {
            let result = f(&mut reader).map_err(|e| file_error(e, inner.path()));
            inner.readers.give_back(reader);
            result
        };
        match flavor {
            Ok(RuntimeFlavor::MultiThread) => {
                let _on_worker = OnWorker::enter();
                run()
            }
            _ => tokio::task::spawn_blocking(run).await.map_err(|e| StoreError::SqliteTask(e.to_string()))?,
        }
    }
}

impl Inner {
    pub(crate) fn new(location: Location) -> Inner {
        let slot = Slot { conn: None, wal: None, synchronous: Synchronous::default(), applied: None, background: true };
        let readers = Readers::new(match &location {
            Location::File(path) => Some(path.clone()),
            Location::Memory => None,
        });
        Inner {
            location,
            conn: Mutex::new(slot),
            short_calls: tokio::sync::Semaphore::new(1),
            readers,
            log_pages: Arc::default(),
            heartbeat: Heartbeat::default(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match &self.location {
            Location::File(p) => format!("sqlite:{}", p.display()),
            Location::Memory => "sqlite::memory:".to_string(),
        }
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(p) => Some(p),
            Location::Memory => None,
        }
    }

    fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        self.run_on(&mut guard, f)
    }

    /// Runs `f` here if the connection is open and free and the store's commits do not wait
    /// for the disk (not [`Synchronous::Full`]); otherwise hands `f` back.
    fn try_inline<T, F>(&self, f: F) -> Result<Result<T, StoreError>, F>
    where
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    {
        let mut guard = match self.conn.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(f),
        };
        let slot = &*guard;
        if slot.conn.is_none() || slot.synchronous == Synchronous::Full || slot.applied != Some(slot.synchronous) {
            return Err(f);
        }
        let _on_worker = OnWorker::enter();
        Ok(self.run_on(&mut guard, f))
    }

    fn run_on<T>(
        &self,
        slot: &mut Slot,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Slot { conn, wal, synchronous, applied, background } = slot;
        if conn.is_none() {
            *conn = Some(self.open(*synchronous, *background).map_err(|e| file_error(e, self.path()))?);
            *applied = Some(*synchronous);
            *wal = match self.path() {
                Some(p) if *background => WalCheckpointer::start(p.to_path_buf()),
                _ => None,
            };
            self.readers.writer_ready();
        }
        let Some(conn) = conn.as_mut() else {
            return Err(StoreError::SqliteTask("the connection did not open".into()));
        };
        if *applied != Some(*synchronous) {
            // The mode changed after the connection opened.
            conn.pragma_update(None, "synchronous", synchronous.as_str())?;
            *applied = Some(*synchronous);
        }
        let changes = conn.total_changes();
        let result = f(conn).map_err(|e| file_error(e, self.path()));
        if let Some(wal) = wal.as_ref().filter(|_| conn.total_changes() != changes) {
            wal.logged(self.log_pages.load(std::sync::atomic::Ordering::Relaxed));
        }
        result
    }

    fn open(&self, synchronous: Synchronous, background: bool) -> Result<rusqlite::Connection, StoreError> {
        let mut conn = match self.path() {
            Some(p) => {
                if !looks_like_sqlite(p) {
                    return Err(StoreError::NotADatabase { path: p.to_path_buf() });
                }
                rusqlite::Connection::open(p)?
            }
            None => rusqlite::Connection::open_in_memory()?,
        };
        prepare(&mut conn, &self.describe(), self.path(), synchronous)?;
        // When the background thread checkpoints the log, this connection only steps in when it
        // grows past the fallback (see `sqlite_wal`); otherwise at SQLite's default size.
        let checkpoint_pages = if background && self.path().is_some() {
            crate::sqlite_wal::FALLBACK_PAGES
        } else {
            DEFAULT_CHECKPOINT_PAGES
        };
        crate::sqlite_waits::install(&mut conn, Some(checkpoint_pages), self.log_pages.clone())?;
        Ok(conn)
    }
}
