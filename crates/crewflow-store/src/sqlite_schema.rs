//! The SQLite store's schema: its migrations, in order (docs/store.md, *Tables*). Migration
//! `i` brings a file to version `i + 1`; `sqlite_open.rs` applies the missing ones in one
//! transaction when a file is first used.

/// The newest schema this crewflow writes.
pub(crate) const SCHEMA_VERSION: i64 = 11;

/// Schema migrations, applied in order; migration `i` brings the schema to version `i + 1`.
pub(crate) const MIGRATIONS: [&str; 11] = [
    r#"
CREATE TABLE crewflow_runs (
    id               TEXT PRIMARY KEY,
    flow             TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    status           TEXT NOT NULL,
    owner            TEXT,
    lease_until      INTEGER,
    fencing          INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    inputs           TEXT,
    payload          TEXT,
    state            TEXT NOT NULL,
    frontier         TEXT NOT NULL,
    final_activation INTEGER,
    error            TEXT,
    pending          TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX crewflow_runs_by_flow ON crewflow_runs (flow, status, created_at);
CREATE INDEX crewflow_runs_claimable ON crewflow_runs (status, lease_until);
CREATE TABLE crewflow_steps (
    run_id      TEXT NOT NULL REFERENCES crewflow_runs (id) ON DELETE CASCADE,
    activation  INTEGER NOT NULL,
    step        TEXT NOT NULL,
    output      TEXT NOT NULL,
    finished_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, activation)
) WITHOUT ROWID;
"#,
    crate::sessions_schema::SQLITE,
    crate::sqlite_memories::MIGRATION,
    crate::sqlite_journal::MIGRATION,
    // 5: the version of the state's type beside each stored state (0: written before versions).
    r#"
ALTER TABLE crewflow_runs ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE crewflow_sessions ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE crewflow_state_chain (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"#,
    crate::sessions_schema::SQLITE_MESSAGES,
    crate::sqlite_schedules::MIGRATION,
    // 8: the step execution a nested run was started from.
    r#"
ALTER TABLE crewflow_runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE crewflow_runs ADD COLUMN parent_activation INTEGER;
CREATE INDEX crewflow_runs_by_parent ON crewflow_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
"#,
    crate::sqlite_schedules::MIGRATION_TIMEZONES,
    // 10: no index on an open trace's `updated_at`, which every turn moves (an index entry
    // deleted and added per turn). The idle sweep finds a flow's open traces through
    // `crewflow_traces_one_open` (as on PostgreSQL, schema 11).
    crate::sessions_schema::DROP_TRACES_IDLE,
    // 11: the run server's API keys, hashed (`crewflow keys`).
    crate::sqlite_keys::MIGRATION,
];
