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

/// SQLite's migration 6: a session's transcript as one row per message, out of its state.
///
/// A turn used to read and rewrite the whole transcript inside the session's state; now it
/// appends its messages and reads the end of the transcript only. Existing sessions are
/// converted here: the store does not know the flow's state type, so the transcript is found by
/// its shape — the one object in the state with an array `messages` (of objects with a text
/// `role` and `content`) and numbers `summarized` and `turns`, which is how a `ChatState` is
/// written (at the top, in a field, flattened). A state with no such object, or more than one,
/// is left as it was: the chat flow, which knows where its transcript is, converts it at the
/// session's next turn.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_MESSAGES: &str = r#"
CREATE TABLE crewflow_messages (
    flow       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    idx        INTEGER NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    turn       INTEGER NOT NULL,
    PRIMARY KEY (flow, session_id, idx)
) WITHOUT ROWID;
ALTER TABLE crewflow_sessions ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
CREATE TEMP TABLE crewflow_transcripts AS
    SELECT s.flow, s.id, min(t.fullkey) || '.messages' AS path
    FROM crewflow_sessions s, json_tree(s.state) t
    WHERE json_valid(s.state) AND t.type = 'object'
      AND json_type(t.value, '$.messages') = 'array'
      AND json_type(t.value, '$.summarized') IN ('integer', 'real')
      AND json_type(t.value, '$.turns') IN ('integer', 'real')
      AND NOT EXISTS (
          SELECT 1 FROM json_each(t.value, '$.messages') m
          WHERE json_type(m.value, '$.role') IS NOT 'text' OR json_type(m.value, '$.content') IS NOT 'text')
    GROUP BY s.flow, s.id
    HAVING count(*) = 1;
INSERT INTO crewflow_messages (flow, session_id, idx, role, content, turn)
    SELECT t.flow, t.id, m.key, json_extract(m.value, '$.role'), json_extract(m.value, '$.content'),
           CASE json_type(m.value, '$.turn') WHEN 'integer' THEN json_extract(m.value, '$.turn') ELSE 0 END
    FROM crewflow_transcripts t
    JOIN crewflow_sessions s ON s.flow = t.flow AND s.id = t.id,
    json_each(s.state, t.path) m;
UPDATE crewflow_sessions AS s
    SET message_count = json_array_length(s.state, t.path), state = json_set(s.state, t.path, json('[]'))
    FROM crewflow_transcripts t
    WHERE s.flow = t.flow AND s.id = t.id;
DROP TABLE temp.crewflow_transcripts;
"#;

/// PostgreSQL's migration 6: the same as SQLite's ([`SQLITE_MESSAGES`]), the transcript found
/// by the same shape (a recursive walk over the state's objects and arrays).
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_MESSAGES: &str = r#"
CREATE TABLE crewflow_messages (
    flow       TEXT NOT NULL,
    session_id TEXT NOT NULL,
    idx        BIGINT NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    turn       BIGINT NOT NULL,
    PRIMARY KEY (flow, session_id, idx)
);
ALTER TABLE crewflow_sessions ADD COLUMN message_count BIGINT NOT NULL DEFAULT 0;
CREATE TEMP TABLE crewflow_transcripts ON COMMIT DROP AS
    WITH RECURSIVE node (flow, id, path, value) AS (
        SELECT flow, id, ARRAY[]::text[], state FROM crewflow_sessions
        UNION ALL
        SELECT n.flow, n.id, n.path || c.key, c.value
        FROM node n
        CROSS JOIN LATERAL (
            SELECT e.key, e.value
            FROM jsonb_each(CASE WHEN jsonb_typeof(n.value) = 'object' THEN n.value END) e
            UNION ALL
            SELECT (a.ord - 1)::text, a.value
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(n.value) = 'array' THEN n.value END)
                 WITH ORDINALITY a (value, ord)
        ) c
    )
    SELECT flow, id, min(path) || 'messages'::text AS path
    FROM node
    WHERE jsonb_typeof(value) = 'object'
      AND jsonb_typeof(value -> 'messages') = 'array'
      AND jsonb_typeof(value -> 'summarized') = 'number'
      AND jsonb_typeof(value -> 'turns') = 'number'
      AND NOT EXISTS (
          SELECT 1 FROM jsonb_array_elements(value -> 'messages') m
          WHERE jsonb_typeof(m -> 'role') IS DISTINCT FROM 'string'
             OR jsonb_typeof(m -> 'content') IS DISTINCT FROM 'string')
    GROUP BY flow, id
    HAVING count(*) = 1;
INSERT INTO crewflow_messages (flow, session_id, idx, role, content, turn)
    SELECT t.flow, t.id, m.ord - 1, m.value ->> 'role', m.value ->> 'content',
           CASE WHEN jsonb_typeof(m.value -> 'turn') = 'number' THEN (m.value ->> 'turn')::numeric::bigint ELSE 0 END
    FROM crewflow_transcripts t
    JOIN crewflow_sessions s ON s.flow = t.flow AND s.id = t.id
    CROSS JOIN LATERAL jsonb_array_elements(s.state #> t.path) WITH ORDINALITY m (value, ord);
UPDATE crewflow_sessions s
    SET message_count = jsonb_array_length(s.state #> t.path), state = jsonb_set(s.state, t.path, '[]'::jsonb)
    FROM crewflow_transcripts t
    WHERE s.flow = t.flow AND s.id = t.id;
"#;

/// Both stores' migration dropping the index on open traces' `updated_at` (see the schemas).
pub(crate) const DROP_TRACES_IDLE: &str = "DROP INDEX IF EXISTS crewflow_traces_idle;";
