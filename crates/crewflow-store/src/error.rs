//! The store's errors.

use std::path::PathBuf;

/// What a store can report. Engine calls wrap it in `crewflow::DurableError::Store`, which names the
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
    /// SQLite cannot open or write the file; the reason comes from the file system.
    #[error("cannot use the SQLite database {path}: {reason}")]
    CannotOpen {
        /// The file.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
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
    /// A schedule with this id exists already.
    #[error("a schedule with id {0} already exists; give the new one another id")]
    ScheduleExists(String),
    /// An API key with this id, or with this key's hash, exists already.
    #[error("an API key with id {0} (or the same key) already exists; make a new key")]
    ApiKeyExists(String),
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
    /// PostgreSQL reported an error; the message is the server's (with its detail, hint and
    /// SQLSTATE code), not the driver's "db error".
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL: {}", crate::postgres::explain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A value holds U+0000, which PostgreSQL cannot store in text or JSON (`jsonb` refuses
    /// `\u0000`); refused before anything is written.
    #[cfg(feature = "postgres")]
    #[error(
        "PostgreSQL cannot store the character U+0000 (NUL), found in {place}; remove it from the value (the SQLite store keeps it, if it must stay)"
    )]
    NulCharacter {
        /// Where: the value and the path inside it (`the state at notes[1]`).
        place: String,
    },
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
    /// A turn's messages would leave a gap in the session's transcript.
    #[cfg(feature = "chat")]
    #[error(
        "the turn's messages start at index {from} of session `{session}`'s transcript, which holds {count}; a turn appends at the end or rewrites from a message it loaded (nothing of the turn was saved)"
    )]
    MessageGap {
        /// The session.
        session: String,
        /// Where the turn's messages start.
        from: u64,
        /// How many messages the stored transcript holds.
        count: u64,
    },
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
