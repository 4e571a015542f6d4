//! The PostgreSQL store's schema: its migrations, in order (docs/store.md, *Tables*).
//! Migration `i` brings a database to version `i + 1`; the store applies the missing ones in
//! one transaction, under an advisory lock, on first use.

/// The newest schema this crewflow writes.
pub(crate) const SCHEMA_VERSION: i64 = 12;

pub(crate) const MIGRATIONS: [&str; 12] = [
    r#"
CREATE TABLE crewflow_runs (
    id               TEXT PRIMARY KEY,
    flow             TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    status           TEXT NOT NULL,
    owner            TEXT,
    lease_until      TIMESTAMPTZ,
    fencing          BIGINT NOT NULL,
    seq              BIGINT NOT NULL,
    inputs           JSONB,
    payload          JSONB,
    state            JSONB NOT NULL,
    frontier         JSONB NOT NULL,
    final_activation BIGINT,
    error            TEXT,
    pending          JSONB,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX crewflow_runs_by_flow ON crewflow_runs (flow, status, created_at);
CREATE INDEX crewflow_runs_claimable ON crewflow_runs (status, lease_until);
CREATE TABLE crewflow_steps (
    run_id      TEXT NOT NULL REFERENCES crewflow_runs (id) ON DELETE CASCADE,
    activation  BIGINT NOT NULL,
    step        TEXT NOT NULL,
    output      JSONB NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, activation)
);
"#,
    crate::sessions_schema::POSTGRES,
    crate::postgres_memories::MIGRATION,
    crate::postgres_journal::MIGRATION,
    // 5: the version of the state's type beside each stored state (0: written before versions).
    r#"
ALTER TABLE crewflow_runs ADD COLUMN state_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE crewflow_sessions ADD COLUMN state_version BIGINT NOT NULL DEFAULT 0;
-- The same table as SQLite's: a run's chain of state deltas. Its whole state is kept here as
-- text, since a delta applies to the exact text it was computed from and `jsonb` reorders it.
CREATE TABLE crewflow_state_chain (
    run_id TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"#,
    crate::sessions_schema::POSTGRES_MESSAGES,
    crate::postgres_schedules::MIGRATION,
    // 8: the step execution a nested run was started from.
    r#"
ALTER TABLE crewflow_runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE crewflow_runs ADD COLUMN parent_activation BIGINT;
CREATE INDEX crewflow_runs_by_parent ON crewflow_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
"#,
    // 9: no foreign key from a step to its run. Steps are only ever written by the statement
    // that updates their run's row (checkpoints and ends, from its `run` CTE), and deleted
    // before their run (compaction), so the key checked nothing; its check (a locking read of
    // the run's row per step written) cost 30-50 µs a checkpoint.
    r#"
ALTER TABLE crewflow_steps DROP CONSTRAINT IF EXISTS crewflow_steps_run_id_fkey;
"#,
    crate::postgres_schedules::MIGRATION_TIMEZONES,
    // 11: no index on an open trace's `updated_at`. Every turn moves it, so the index made each
    // turn's update of its trace a new row version with an entry in every index of the table,
    // instead of an in-page (HOT) update. The idle sweep finds a flow's open traces through
    // `crewflow_traces_one_open` and checks their `updated_at` there.
    crate::sessions_schema::DROP_TRACES_IDLE,
    // 12: the run server's API keys, hashed (`crewflow keys`).
    crate::postgres_keys::MIGRATION,
];
