//! The tables of conversation sessions (schema migration 2), for both backends.
//!
//! They are created whatever the features: a database's schema version never depends on the
//! features it was opened with, so turning on `chat` later finds its tables in place. Reading
//! and writing them is `sqlite_sessions` / `postgres_sessions`, behind the `chat` feature.

/// SQLite's migration 2: sessions, turns, traces and spans.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: &str = r#"
CREATE TABLE crewflow_sessions (
    flow       TEXT NOT NULL,
    id         TEXT NOT NULL,
    state      TEXT NOT NULL,
    turns      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (flow, id)
) WITHOUT ROWID;
CREATE INDEX crewflow_sessions_by_update ON crewflow_sessions (flow, updated_at);
CREATE TABLE crewflow_turns (
    flow         TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    idx          INTEGER NOT NULL,
    run_id       TEXT NOT NULL,
    user_message TEXT NOT NULL,
    reply        TEXT NOT NULL,
    intent       TEXT,
    usage        TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL,
    PRIMARY KEY (flow, session_id, idx)
) WITHOUT ROWID;
CREATE TABLE crewflow_traces (
    id           TEXT PRIMARY KEY,
    flow         TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    turns        INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finalized_at INTEGER
);
CREATE INDEX crewflow_traces_by_session ON crewflow_traces (flow, session_id, started_at);
CREATE UNIQUE INDEX crewflow_traces_one_open ON crewflow_traces (flow, session_id) WHERE finalized_at IS NULL;
CREATE INDEX crewflow_traces_idle ON crewflow_traces (updated_at) WHERE finalized_at IS NULL;
CREATE TABLE crewflow_spans (
    trace_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    span_id    TEXT NOT NULL,
    parent_id  TEXT,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    started_us INTEGER NOT NULL,
    ended_us   INTEGER,
    attributes TEXT NOT NULL,
    PRIMARY KEY (trace_id, seq)
) WITHOUT ROWID;
"#;

/// PostgreSQL's migration 2: sessions, turns, traces and spans.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: &str = r#"
CREATE TABLE crewflow_sessions (
    flow       TEXT NOT NULL,
    id         TEXT NOT NULL,
    state      JSONB NOT NULL,
    turns      BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (flow, id)
);
CREATE INDEX crewflow_sessions_by_update ON crewflow_sessions (flow, updated_at);
CREATE TABLE crewflow_turns (
    flow         TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    idx          BIGINT NOT NULL,
    run_id       TEXT NOT NULL,
    user_message TEXT NOT NULL,
    reply        TEXT NOT NULL,
    intent       TEXT,
    usage        JSONB NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (flow, session_id, idx)
);
CREATE TABLE crewflow_traces (
    id           TEXT PRIMARY KEY,
    flow         TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    turns        BIGINT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    finalized_at TIMESTAMPTZ
);
CREATE INDEX crewflow_traces_by_session ON crewflow_traces (flow, session_id, started_at);
CREATE UNIQUE INDEX crewflow_traces_one_open ON crewflow_traces (flow, session_id) WHERE finalized_at IS NULL;
CREATE INDEX crewflow_traces_idle ON crewflow_traces (updated_at) WHERE finalized_at IS NULL;
CREATE TABLE crewflow_spans (
    trace_id   TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    span_id    TEXT NOT NULL,
    parent_id  TEXT,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at   TIMESTAMPTZ,
    attributes JSONB NOT NULL,
    PRIMARY KEY (trace_id, seq)
);
"#;
