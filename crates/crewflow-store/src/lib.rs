//! Durable runs for crewflow: where runs, checkpoints and step outputs are kept.
//!
//! Two backends implement the engine's [`RunStore`]:
//!
//! - [`SqliteStore`] (feature `sqlite`, on by default): a file, no server; the default.
//! - `PostgresStore` (feature `postgres`): for several processes or machines sharing runs,
//!   with workers taking over runs whose process stopped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = crewflow_store::open("sqlite://runs.db")?; // nothing is opened yet
//! # Ok(()) }
//! ```
//!
//! With the `chat` feature, both also keep conversation sessions, their turns and traces
//! (crewflow-chat's `SessionStore`); PostgreSQL adds session locks across processes. The
//! tables and the lease protocol are described in `docs/store.md`, sessions in `docs/chat.md`. Both keep memories too ([`MemoryStore`], used by `crewflow-memory`; see
//! `docs/memory.md`).

mod error;
mod heartbeat;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_chain;
#[cfg(feature = "postgres")]
mod postgres_checkpoint;
#[cfg(feature = "postgres")]
mod postgres_compact;
#[cfg(feature = "postgres")]
mod postgres_journal;
#[cfg(feature = "postgres")]
mod postgres_keys;
#[cfg(feature = "postgres")]
mod postgres_memories;
#[cfg(feature = "postgres")]
mod postgres_pool;
#[cfg(feature = "postgres")]
mod postgres_reports;
#[cfg(feature = "postgres")]
mod postgres_schedules;
#[cfg(feature = "postgres")]
mod postgres_schema;
#[cfg(all(feature = "postgres", feature = "chat"))]
mod postgres_sessions;
#[cfg(all(feature = "postgres", feature = "chat"))]
mod postgres_turns;
mod sessions_schema;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_chain;
#[cfg(feature = "sqlite")]
mod sqlite_compact;
#[cfg(feature = "sqlite")]
mod sqlite_connection;
#[cfg(feature = "sqlite")]
mod sqlite_journal;
#[cfg(feature = "sqlite")]
mod sqlite_keys;
#[cfg(feature = "sqlite")]
mod sqlite_memories;
#[cfg(feature = "sqlite")]
mod sqlite_open;
#[cfg(feature = "sqlite")]
mod sqlite_readers;
#[cfg(feature = "sqlite")]
mod sqlite_reports;
#[cfg(feature = "sqlite")]
mod sqlite_schedules;
#[cfg(feature = "sqlite")]
mod sqlite_schema;
#[cfg(all(feature = "sqlite", feature = "chat"))]
mod sqlite_sessions;
#[cfg(feature = "sqlite")]
mod sqlite_waits;
#[cfg(feature = "sqlite")]
mod sqlite_wal;
mod util;

use std::sync::Arc;

use crewflow_core::persist::RunStore;

pub use error::StoreError;
pub use memory::{MemoryQuery, MemoryRow, MemoryStore, ModelCount};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "postgres")]
pub use postgres_pool::PoolOptions;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, Synchronous};

/// Opens a store by URL, lazily (no file or connection until first use):
/// `sqlite://PATH` (or a bare path), `sqlite::memory:`, `postgres://USER@HOST:PORT/DB`.
///
/// A `sqlite:` URL takes options as a query: `sqlite://runs.db?synchronous=full` makes every
/// commit wait for the disk ([`Synchronous::Full`]). A bare path is taken as it is, `?` included.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(unreachable_code))] // no backend: always an error
pub fn open(url: &str) -> Result<Arc<dyn RunStore>, StoreError> {
    Ok(match Backend::open(url)? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(store) => Arc::new(store),
        #[cfg(feature = "postgres")]
        Backend::Postgres(store) => Arc::new(store),
    })
}

/// The store a URL names, as its own type (so it can be offered as any of the interfaces it
/// implements: runs, and with the `chat` feature, sessions).
enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

impl Backend {
    fn open(url: &str) -> Result<Backend, StoreError> {
        #[allow(unused_variables)] // unused when every backend is compiled in
        let disabled = |feature| StoreError::FeatureDisabled { url: url.to_string(), feature };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            return Ok(Backend::Postgres(PostgresStore::connect_lazy(url)?));
            #[cfg(not(feature = "postgres"))]
            return Err(disabled("postgres"));
        }
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"));
        if rest.is_none() && url.contains("://") {
            return Err(StoreError::InvalidUrl(url.to_string()));
        }
        #[cfg(feature = "sqlite")]
        return Ok(Backend::Sqlite(match rest {
            Some(rest) => SqliteStore::from_url(url, rest)?,
            None => SqliteStore::open(url),
        }));
        #[cfg(not(feature = "sqlite"))]
        {
            let _ = rest;
            Err(disabled("sqlite"))
        }
    }
}

/// [`open`], as the store of conversation sessions (crewflow-chat's `SessionStore`).
#[cfg(feature = "chat")]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(unreachable_code))] // no backend: always an error
pub fn open_sessions(url: &str) -> Result<Arc<dyn crewflow_chat::SessionStore>, StoreError> {
    Ok(match Backend::open(url)? {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(store) => Arc::new(store),
        #[cfg(feature = "postgres")]
        Backend::Postgres(store) => Arc::new(store),
    })
}

/// The default store ([`default_store`]: `$CREWFLOW_DB`, else `crewflow.db`), as the store of
/// conversation sessions. Opened on first use; a bad `$CREWFLOW_DB` is an error now.
#[cfg(feature = "chat")]
pub fn default_session_store() -> Result<Arc<dyn crewflow_chat::SessionStore>, StoreError> {
    let url = std::env::var(DEFAULT_STORE_VAR).ok().filter(|v| !v.is_empty());
    open_sessions(url.as_deref().unwrap_or("crewflow.db"))
}

/// The variable naming the default store (a path or URL).
pub const DEFAULT_STORE_VAR: &str = "CREWFLOW_DB";

/// The default store: `$CREWFLOW_DB` (a path or URL) if set, else the SQLite file
/// `crewflow.db` in the working directory. Opened on first use, never before.
pub fn default_store() -> Arc<dyn RunStore> {
    let url = std::env::var(DEFAULT_STORE_VAR).ok().filter(|v| !v.is_empty());
    match url.as_deref().map(open) {
        Some(Ok(store)) => store,
        // A bad URL surfaces on first use, with the URL in the message.
        Some(Err(e)) => Arc::new(Unusable { url: url.unwrap_or_default(), reason: e.to_string() }),
        None => open("crewflow.db")
            .unwrap_or_else(|e| Arc::new(Unusable { url: "crewflow.db".into(), reason: e.to_string() })),
    }
}

/// A store that could not be opened: every call reports why.
struct Unusable {
    url: String,
    reason: String,
}

impl Unusable {
    fn fail<T>(&self) -> crewflow_core::persist::StoreFuture<'_, T> {
        let msg = format!("the store `{}` cannot be used: {}", self.url, self.reason);
        Box::pin(async move { Err(msg.into()) })
    }
}

impl RunStore for Unusable {
    fn describe(&self) -> String {
        self.url.clone()
    }
    fn create_run<'a>(&'a self, _: &'a crewflow_core::persist::NewRun) -> crewflow_core::persist::StoreFuture<'a, ()> {
        self.fail()
    }
    fn save_checkpoint<'a>(
        &'a self,
        _: &'a crewflow_core::persist::Checkpoint,
    ) -> crewflow_core::persist::StoreFuture<'a, ()> {
        self.fail()
    }
    fn end_run<'a>(&'a self, _: &'a crewflow_core::persist::RunEnd) -> crewflow_core::persist::StoreFuture<'a, ()> {
        self.fail()
    }
    fn load_run(
        &self,
        _: crewflow_core::RunId,
    ) -> crewflow_core::persist::StoreFuture<'_, Option<crewflow_core::persist::StoredRun>> {
        self.fail()
    }
    fn claim_run<'a>(
        &'a self,
        _: crewflow_core::RunId,
        _: &'a str,
        _: std::time::Duration,
        _: Option<&'a str>,
    ) -> crewflow_core::persist::StoreFuture<'a, crewflow_core::persist::Claim> {
        self.fail()
    }
    fn claim_orphans<'a>(
        &'a self,
        _: &'a [String],
        _: &'a str,
        _: std::time::Duration,
        _: usize,
    ) -> crewflow_core::persist::StoreFuture<'a, Vec<crewflow_core::persist::Claim>> {
        self.fail()
    }
    fn heartbeat<'a>(
        &'a self,
        _: &'a str,
        _: &'a [crewflow_core::RunId],
        _: std::time::Duration,
    ) -> crewflow_core::persist::StoreFuture<'a, u64> {
        self.fail()
    }
    fn list_runs<'a>(
        &'a self,
        _: &'a crewflow_core::persist::RunFilter,
    ) -> crewflow_core::persist::StoreFuture<'a, Vec<crewflow_core::persist::RunSummary>> {
        self.fail()
    }
}
