//! The store's errors.

use std::path::PathBuf;

/// What a store can report. Engine calls wrap it in `crewflow::Error::Store`, which names the
/// store and what the engine was doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names no known store.
    #[error("unknown store `{0}`; use sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB")]
    InvalidUrl(String),
    /// An option of the store URL is unknown or has a bad value.
    #[error("store `{url}`: {problem}")]
    InvalidOption {
        /// The URL.
        url: String,
        /// What is wrong, and the options there are.
        problem: String,
    },
    /// The store's backend is not compiled in.
    #[error("`{url}` needs the `{feature}` feature of crewflow-store")]
    FeatureDisabled {
        /// The URL.
        url: String,
        /// The missing feature.
        feature: &'static str,
    },
    /// The file exists but is not a SQLite database.
    #[error(
        "{path} is not a SQLite database (it may be corrupt, or another kind of file); move it away or choose another path"
    )]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The database belongs to another application.
    #[error(
        "{store} already holds tables of another application ({tables}); crewflow keeps its runs in a database of its own: choose another file or database"
    )]
    ForeignDatabase {
        /// The store.
        store: String,
        /// Some of its tables.
        tables: String,
    },
    /// The database was written by a newer crewflow.
    #[error(
        "{store} has schema version {found}, newer than this crewflow supports ({supported}); upgrade crewflow to use it"
    )]
    SchemaTooNew {
        /// The store.
        store: String,
        /// The version found.
        found: i64,
        /// The newest version this crewflow knows.
        supported: i64,
    },
    /// Another process holds the run now (stale fencing token).
    #[error(transparent)]
    Lost(crewflow_core::persist::LeaseLost),
    /// The run is being run by a live process.
    #[error(transparent)]
    Owned(crewflow_core::persist::RunOwned),
    /// A run with this id exists already.
    #[error("a run with id {0} already exists; resume it with Flow::resume, or start a new run without pinning the id")]
    RunExists(String),
    /// The run is not in the store.
    #[error("no run {0} in the store")]
    NoSuchRun(String),
    /// A stored value could not be read.
    #[error("a stored value could not be read: {0}")]
    Corrupt(String),
    /// SQLite reported an error.
    #[cfg(feature = "sqlite")]
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A blocking SQLite call could not be run.
    #[cfg(feature = "sqlite")]
    #[error("the SQLite call did not complete: {0}")]
    SqliteTask(String),
    /// PostgreSQL reported an error.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {}", postgres_reason(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had.
    #[cfg(feature = "postgres")]
    #[error("cannot reach PostgreSQL at {target}: {message}")]
    PostgresUnavailable {
        /// The server.
        target: String,
        /// Why.
        message: String,
    },
    /// Another turn of the session was saved in between.
    #[cfg(feature = "chat")]
    #[error(transparent)]
    SessionConflict(crewflow_chat::SessionConflict),
    /// The session's lock is held by another process.
    #[cfg(feature = "chat")]
    #[error(transparent)]
    SessionLocked(crewflow_chat::SessionLockTimeout),
}

/// A PostgreSQL error with its reason: the driver's own message is only its kind (`db error`),
/// the server's message, detail and hint are in its source.
#[cfg(feature = "postgres")]
fn postgres_reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut reason = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            reason.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            reason.push_str(&format!("; hint: {hint}"));
        }
        return reason;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl StoreError {
    /// Boxes the error for the engine. Lost leases and owned runs travel as their own types,
    /// so the engine can tell them apart.
    pub fn into_boxed(self) -> crewflow_core::BoxError {
        match self {
            StoreError::Lost(lost) => Box::new(lost),
            StoreError::Owned(owned) => Box::new(owned),
            #[cfg(feature = "chat")]
            StoreError::SessionConflict(conflict) => Box::new(conflict),
            #[cfg(feature = "chat")]
            StoreError::SessionLocked(locked) => Box::new(locked),
            other => Box::new(other),
        }
    }
}
