//! Opening a SQLite file: its identity checked before anything is written (a refused file is
//! left exactly as it was), and why a file cannot be opened, in words a user can act on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::TransactionBehavior;

use crate::StoreError;
use crate::sqlite::Synchronous;
use crate::sqlite_schema::{MIGRATIONS, SCHEMA_VERSION};

/// Sets the connection up and brings the schema to [`SCHEMA_VERSION`].
///
/// The file's identity is checked first, read-only: switching to WAL rewrites the file's
/// header and creates `-wal` and `-shm` files, and nothing may be written to a file crewflow
/// then refuses (another application's database, or one of a newer crewflow).
pub(crate) fn prepare(
    c: &mut rusqlite::Connection,
    describe: &str,
    path: Option<&Path>,
    synchronous: Synchronous,
) -> Result<(), StoreError> {
    c.busy_timeout(Duration::from_secs(10))?;
    // The same plan whatever values are bound. Without it SQLite marks some parameters (a
    // bound integer that may be 0 or 1, as a transcript's first index is) so that binding
    // another value recompiles the statement at its next step: a cached statement was parsed
    // and planned again on most turns, a tenth of a served turn's CPU (`serve_turns`).
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    identify(c, describe)?;
    // SQLite quietly opens a file it may not write read-only; every run would then fail.
    if let (Some(path), true) = (path, c.is_readonly(rusqlite::MAIN_DB)?) {
        let reason = why_read_only(path).unwrap_or_else(|| "SQLite could only open it read-only".into());
        return Err(StoreError::CannotOpen { path: path.to_path_buf(), reason });
    }
    // journal_mode returns a row, so it is queried rather than executed.
    let _mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    c.pragma_update(None, "synchronous", synchronous.as_str())?;
    c.execute_batch("PRAGMA foreign_keys = ON;")?;
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Again under the write lock: another process may have created the tables in between.
    let version = match identify(&tx, describe)? {
        Some(version) => version,
        None => {
            tx.execute_batch("CREATE TABLE crewflow_schema (version INTEGER NOT NULL)")?;
            0
        }
    };
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.execute("INSERT INTO crewflow_schema (version) VALUES (?1)", [i as i64 + 1])?;
    }
    tx.commit()?;
    Ok(())
}

/// The schema version of a crewflow database (`None` for an empty one); an error for another
/// application's database or a newer crewflow's. Only reads.
pub(crate) fn identify(c: &rusqlite::Connection, describe: &str) -> Result<Option<i64>, StoreError> {
    let has_schema: bool = c.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'crewflow_schema'",
        [],
        |r| r.get(0),
    )?;
    if !has_schema {
        let tables: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if tables.is_empty() {
            return Ok(None);
        }
        let shown: Vec<String> = tables.into_iter().take(5).collect();
        return Err(StoreError::ForeignDatabase { store: describe.to_string(), tables: shown.join(", ") });
    }
    let version: i64 = c.query_row("SELECT coalesce(max(version), 0) FROM crewflow_schema", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            store: describe.to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Some(version))
}

/// Whether the file is absent, empty, or starts with SQLite's header.
pub(crate) fn looks_like_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return true };
    let mut header = [0u8; 16];
    match f.read(&mut header) {
        Ok(0) => true,
        Ok(n) => n == 16 && &header == b"SQLite format 3\0",
        Err(_) => true,
    }
}

/// SQLite's file errors, made specific: a file that is not a database, a file SQLite cannot
/// open or write (with the reason, found out from the file system, and the fix).
pub(crate) fn file_error(e: StoreError, path: Option<&Path>) -> StoreError {
    let (StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)), Some(p)) = (&e, path) else { return e };
    match f.code {
        rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt => {
            StoreError::NotADatabase { path: p.to_path_buf() }
        }
        rusqlite::ErrorCode::CannotOpen => StoreError::CannotOpen { path: p.to_path_buf(), reason: why_unopenable(p) },
        rusqlite::ErrorCode::ReadOnly => StoreError::CannotOpen {
            path: p.to_path_buf(),
            reason: why_read_only(p).unwrap_or_else(|| format!("SQLite says: {e}")),
        },
        _ => e,
    }
}

/// Why SQLite could not open `path` ("unable to open database file" says nothing more).
pub(crate) fn why_unopenable(path: &Path) -> String {
    if path.is_dir() {
        return format!(
            "it is a directory; give the path of a database file, such as {}",
            path.join("crewflow.db").display()
        );
    }
    let dir = directory_of(path);
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return format!(
                "its directory {} does not exist; create it (`mkdir -p {}`) or choose another path",
                dir.display(),
                dir.display()
            );
        }
        Ok(meta) if !meta.is_dir() => {
            return format!("{} is not a directory; choose another path", dir.display());
        }
        Err(e) => return format!("its directory {} cannot be read ({e}); choose another path", dir.display()),
        Ok(_) => {}
    }
    why_read_only(path).unwrap_or_else(|| {
        "SQLite gave no reason (the file system may be out of space or the file locked by a program that keeps it open); choose another path"
            .into()
    })
}

/// Why the file, or the journal SQLite keeps next to it, cannot be written; `None` when both
/// can (then the reason is elsewhere).
pub(crate) fn why_read_only(path: &Path) -> Option<String> {
    let dir = directory_of(path);
    let probe = if path.exists() {
        std::fs::OpenOptions::new().read(true).write(true).open(path).map(drop)
    } else {
        // SQLite could not create it: create it the same way to learn why (and remove it).
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map(|_| {
            let _ = std::fs::remove_file(path);
        })
    };
    if let Err(e) = probe {
        let fix = if path.exists() { "the file".to_string() } else { format!("the directory {}", dir.display()) };
        return Some(denied(&e, &path.display().to_string(), &fix));
    }
    // In WAL mode SQLite keeps `<file>-wal` and `<file>-shm` next to the database; a directory
    // it cannot write stops it even when the file itself is writable.
    let journal = journal_path(path);
    if !journal.exists() {
        let probe = std::fs::OpenOptions::new().write(true).create_new(true).open(&journal).map(|_| {
            let _ = std::fs::remove_file(&journal);
        });
        if let Err(e) = probe {
            return Some(format!(
                "{}; SQLite needs to create {} next to the database",
                denied(&e, &dir.display().to_string(), "the directory"),
                journal.display()
            ));
        }
    }
    None
}

/// An OS refusal to write `what`, with what to do about it (`fix`: what to make writable).
pub(crate) fn denied(e: &std::io::Error, what: &str, fix: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on {what} ({e}); make {fix} writable for this user (chmod, chown, chattr -i) or choose another path"
        ),
        std::io::ErrorKind::ReadOnlyFilesystem => {
            format!("{what} is on a read-only file system ({e}); choose a path on a writable one")
        }
        _ => format!("{what} cannot be written ({e}); choose another path"),
    }
}

/// The directory a database file is in (`.` for a bare file name).
pub(crate) fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// SQLite's write-ahead log for `path`.
pub(crate) fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}
