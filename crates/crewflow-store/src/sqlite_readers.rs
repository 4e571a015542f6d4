//! Read-only connections beside a file store's one writing connection.
//!
//! In WAL mode readers never wait for the writer, nor it for them, but one connection runs one
//! call at a time: with every call behind the writer's mutex, the reads of a conversation turn
//! (its session and transcript) queued behind other sessions' saves, and a third of a served
//! turn's thread switches were callers parked on that mutex (`serve_turns`). The short reads of
//! one run or one session therefore run on a connection of their own, taken from a few kept
//! open, each read in a transaction of its own, so it sees every commit made before it began
//! (the writer's included).
//!
//! Opened only after the writing connection has prepared the file (schema, WAL mode), read-only,
//! with the writer's waits (`sqlite_waits`) and query plans; a store in memory has none.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags};

/// At most this many read connections per store (each keeps its own page cache, up to SQLite's
/// default 2 MB).
const MAX: usize = 4;

/// The read connections of one file store.
pub(crate) struct Readers {
    path: Option<PathBuf>,
    idle: Mutex<Vec<Connection>>,
    /// Connections open, idle or in use.
    open: AtomicUsize,
    /// The writing connection has prepared the file.
    ready: AtomicBool,
}

impl Readers {
    /// Readers of the file at `path`; none for a store in memory (`None`).
    pub fn new(path: Option<PathBuf>) -> Readers {
        Readers { path, idle: Mutex::new(Vec::new()), open: AtomicUsize::new(0), ready: AtomicBool::new(false) }
    }

    /// The writing connection has opened and prepared the file: readers may open.
    pub fn writer_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// An idle reader, or a new one while fewer than [`MAX`] are open; `None` when the caller
    /// should read on the writing connection (no file, not prepared yet, all readers busy, or
    /// a reader could not open).
    pub fn take(&self) -> Option<Connection> {
        let path = self.path.as_ref()?;
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        if let Some(c) = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop() {
            return Some(c);
        }
        if self.open.fetch_add(1, Ordering::AcqRel) >= MAX {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        match open(path) {
            Ok(c) => Some(c),
            Err(_) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// Returns a reader after a call; one left inside a transaction (a failed call that did not
    /// end its own) is closed instead.
    pub fn give_back(&self, c: Connection) {
        if c.is_autocommit() {
            self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(c);
        } else {
            drop(c);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut c = Connection::open_with_flags(path, flags)?;
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    crate::sqlite_waits::install(&mut c, None, Default::default())?; // a reader never commits
    Ok(c)
}
