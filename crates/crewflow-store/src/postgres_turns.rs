//! A conversation turn's save on PostgreSQL: the session's row, the turn with its messages,
//! and its spans, in one transaction.
//!
//! A turn of a session that has an open trace (every turn but a session's first, unless its
//! trace was finalized or went idle) is saved in **one round trip**: `BEGIN`, three statements
//! and `COMMIT` are sent together (pipelined) and run in that order. Where a statement finds
//! the turn cannot be saved as sent, it raises an error, so the transaction is aborted and the
//! `COMMIT` after it rolls back (PostgreSQL's rule for a failed transaction): nothing is
//! written. The two such findings are told apart by their marker text:
//!
//! - the session is not at the turn count the turn started from (another save came first, or
//!   it was deleted): the save is refused ([`SessionConflict`] or a message gap);
//! - the session has no open trace that is not idle: the save is sent again step by step,
//!   which opens the trace (finalizing an idle one first).
//!
//! Plain SQL has no `RAISE`: the statements raise by casting their marker text to `bigint`,
//! in the branch of a `CASE` taken only when nothing matched (a value computed from the rows,
//! so the planner cannot fold it ahead of time). A session's first turn is saved step by step
//! (`BEGIN`, statements, `COMMIT`, each awaited), inside a `Transaction`.
//!
//! Inside a turn the save runs on the connection that holds the session's lock
//! (`postgres_sessions.rs`, `HeldLocks`), and the batch ends with the lock's release, which
//! runs only if the turn is stored (it looks for the turn's row after the `COMMIT`): a stored
//! turn is released in the same round trip, and a turn not saved keeps its lock for what comes
//! next (the save step by step, or the guard's release).
//!
//! Before: eight round trips per save and its release (`BEGIN`, five statements, `COMMIT`, the
//! release). `serve_turns_pg` measures the difference (docs/server.md).

use crewflow_chat::{SessionConflict, SpanRecord, TraceWrite, TurnSave};
use deadpool_postgres::{Object, Transaction};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::StoreError;
use crate::postgres::PostgresStore;
use crate::postgres_sessions::{finalize, lock_key};
use crate::util::message_gap;

/// Saves a turn (see the module's docs).
pub(crate) async fn save_turn(store: &PostgresStore, save: &TurnSave) -> Result<(), StoreError> {
    refuse_nul(save)?;
    if save.expected_turns == 0 && save.messages_from > 0 {
        return Err(message_gap(save, 0));
    }
    // Inside a turn, this process holds the session's lock: the save runs on the lock's
    // connection, and releases the lock once it is committed.
    if let Some(lock) = store.held_locks().get(lock_key(&save.flow, &save.session_id)) {
        let mut held = lock.lock().await;
        let key = held.key();
        if let (true, Some(client)) = (held.locked, held.client.as_mut()) {
            let (saved, unlocked) = save_on(client, save, Some(key)).await;
            held.locked = !unlocked;
            return saved;
        }
    }
    let mut client = store.client().await?;
    save_on(&mut client, save, None).await.0
}

/// Saves a turn on `client`; with `unlock`, also releases that session lock if the turn was
/// committed (with the commit, in its round trip). Returns whether it released it.
async fn save_on(client: &mut Object, save: &TurnSave, unlock: Option<i64>) -> (Result<(), StoreError>, bool) {
    if save.expected_turns > 0 {
        match pipelined(client, save, unlock).await {
            Ok((Outcome::Saved, unlocked)) => return (Ok(()), unlocked),
            Ok((Outcome::SessionMoved, _)) => return (session_moved(client, save).await.and_then(Err), false),
            // Rolled back: saved again below, step by step.
            Ok((Outcome::TraceToOpen, _)) => {}
            Err(e) => return (Err(e), false),
        }
    }
    let saved = async {
        let tx = client.transaction().await?;
        match in_steps(&tx, save).await? {
            Outcome::Saved => Ok(tx.commit().await?),
            _ => {
                tx.rollback().await?;
                Err(session_moved(client, save).await?)
            }
        }
    };
    (saved.await, false)
}

/// Refuses text PostgreSQL cannot keep (U+0000), before anything is written.
fn refuse_nul(save: &TurnSave) -> Result<(), StoreError> {
    crate::util::refuse_nul_json("the session's state", &save.state)?;
    crate::util::refuse_nul_text("the user's message", &save.turn.user_message)?;
    crate::util::refuse_nul_text("the reply", &save.turn.reply)?;
    for m in &save.messages {
        crate::util::refuse_nul_text("a message of the transcript", &m.content)?;
    }
    Ok(())
}

/// How a save went.
enum Outcome {
    /// Written (pipelined: committed; step by step: ready to commit).
    Saved,
    /// The session was not at the turn count the turn started from; nothing was written.
    SessionMoved,
    /// The session has no open trace that is not idle; nothing was written.
    TraceToOpen,
}

/// The marker of a session that moved on.
const SESSION_MOVED: &str = "crewflow: the session moved on";
/// The marker of a session without an open trace that is not idle.
const NO_OPEN_TRACE: &str = "crewflow: no open trace";

/// Creates a session on its first turn (it returns the rows written: 0 when it exists).
const CREATE_SESSION: &str =
    "INSERT INTO crewflow_sessions (flow, id, state, turns, created_at, updated_at, state_version, message_count)
     VALUES ($1, $2, $3::text::jsonb, 1, now(), now(), $4, $5) ON CONFLICT (flow, id) DO NOTHING";

/// Moves an existing session on from the turn count this turn started from (never re-created
/// if it was deleted meanwhile); raises [`SESSION_MOVED`] when it is not there. The row lock
/// this takes orders concurrent saves of the session. The messages this save replaces (none,
/// when the turn only adds) are deleted in the same statement.
const UPDATE_SESSION: &str = "WITH replaced AS (
         DELETE FROM crewflow_messages WHERE flow = $1 AND session_id = $2 AND idx >= $6
     ), moved AS (
         UPDATE crewflow_sessions SET state = $3::text::jsonb, turns = $4::bigint + 1, updated_at = now(),
             state_version = $5, message_count = $7
         WHERE flow = $1 AND id = $2 AND turns = $4::bigint AND message_count >= $6
         RETURNING 1
     )
     SELECT CASE WHEN count(*) > 0 THEN count(*)
                 ELSE ('crewflow: the session moved on (' || count(*) || ')')::bigint END
     FROM moved";

/// The turn's record and its messages.
const INSERT_TURN: &str = "WITH added AS (
         INSERT INTO crewflow_messages (flow, session_id, idx, role, content, turn)
         SELECT $1, $2, $11 + m.ord - 1, m.role, m.content, m.turn
         FROM unnest($12::text[], $13::text[], $14::bigint[]) WITH ORDINALITY AS m (role, content, turn, ord)
     )
     INSERT INTO crewflow_turns (flow, session_id, idx, run_id, user_message, reply, intent, usage, started_at, finished_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)";

/// The turn's spans added to the session's open trace, counting the turn; raises
/// [`NO_OPEN_TRACE`] when there is none, or only an idle one.
const ADD_TO_OPEN_TRACE: &str = "WITH counted AS (
         UPDATE crewflow_traces SET turns = turns + 1, updated_at = now()
         WHERE flow = $1 AND session_id = $2 AND finalized_at IS NULL
           AND NOT ($3::float8 IS NOT NULL AND updated_at < now() - $3::float8 * interval '1 millisecond')
         RETURNING id
     ), added AS (
         INSERT INTO crewflow_spans (trace_id, seq, span_id, parent_id, kind, name, started_at, ended_at, attributes)
         SELECT c.id, (SELECT coalesce(max(seq) + 1, 0) FROM crewflow_spans WHERE trace_id = c.id) + e.ord - 1,
                e.v->>'span_id', e.v->>'parent_id', e.v->>'kind', e.v->>'name',
                (e.v->>'started_at')::timestamptz, (e.v->>'ended_at')::timestamptz, e.v->'attributes'
         FROM counted c, jsonb_array_elements($4::text::jsonb) WITH ORDINALITY AS e(v, ord)
     )
     SELECT CASE WHEN count(*) > 0 THEN count(*)
                 ELSE ('crewflow: no open trace (' || count(*) || ')')::bigint END
     FROM counted";

/// Releases the session's lock (`$1`) if the turn is stored: sent after the `COMMIT`, so it
/// runs once the turn is committed or rolled back, and finds the turn only in the first case.
/// A turn not saved keeps the lock for what comes next (a save step by step, or the guard).
const UNLOCK_IF_SAVED: &str = "SELECT pg_advisory_unlock($1) FROM crewflow_turns
     WHERE flow = $2 AND session_id = $3 AND idx = $4 AND run_id = $5";

/// Spans added to a trace given by id.
const INSERT_SPANS: &str =
    "INSERT INTO crewflow_spans (trace_id, seq, span_id, parent_id, kind, name, started_at, ended_at, attributes)
     SELECT $1, (SELECT coalesce(max(seq) + 1, 0) FROM crewflow_spans WHERE trace_id = $1) + e.ord - 1,
            e.v->>'span_id', e.v->>'parent_id', e.v->>'kind', e.v->>'name',
            (e.v->>'started_at')::timestamptz, (e.v->>'ended_at')::timestamptz, e.v->'attributes'
     FROM jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS e(v, ord)";

/// Whether `e` is the error a statement raised with `marker`.
fn raised(e: &tokio_postgres::Error, marker: &str) -> bool {
    e.code() == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
        && e.as_db_error().is_some_and(|db| db.message().contains(marker))
}

/// What a turn's statements bind, computed once.
struct Values<'a> {
    save: &'a TurnSave,
    expected: i64,
    version: i64,
    from: i64,
    count: i64,
    index: i64,
    run_id: String,
    usage: String,
    roles: Vec<&'a str>,
    contents: Vec<&'a str>,
    turns: Vec<i64>,
    idle: Option<f64>,
    spans: String,
}

impl<'a> Values<'a> {
    fn of(save: &'a TurnSave) -> Result<Self, StoreError> {
        let from = save.messages_from as i64;
        Ok(Values {
            save,
            expected: save.expected_turns as i64,
            version: i64::from(save.state_version),
            from,
            count: from + save.messages.len() as i64,
            index: save.turn.index as i64,
            run_id: save.turn.run_id.to_string(),
            usage: serde_json::to_string(&save.turn.usage)
                .map_err(|e| StoreError::Corrupt(format!("a turn's usage: {e}")))?,
            roles: save.messages.iter().map(|m| m.role.as_str()).collect(),
            contents: save.messages.iter().map(|m| m.content.as_str()).collect(),
            turns: save.messages.iter().map(|m| m.turn as i64).collect(),
            idle: save.trace.as_ref().and_then(|t| t.idle_after).map(|d| d.as_secs_f64() * 1000.0),
            spans: save.trace.as_ref().map(|t| spans_json(&t.spans)).unwrap_or_default(),
        })
    }

    fn update_session(&self) -> [&(dyn ToSql + Sync); 7] {
        let s = self.save;
        [&s.flow, &s.session_id, &s.state, &self.expected, &self.version, &self.from, &self.count]
    }

    fn create_session(&self) -> [&(dyn ToSql + Sync); 5] {
        let s = self.save;
        [&s.flow, &s.session_id, &s.state, &self.version, &self.count]
    }

    fn turn(&self) -> [&(dyn ToSql + Sync); 14] {
        let (s, t) = (self.save, &self.save.turn);
        [
            &s.flow,
            &s.session_id,
            &self.index,
            &self.run_id,
            &t.user_message,
            &t.reply,
            &t.intent,
            &self.usage,
            &t.started_at,
            &t.finished_at,
            &self.from,
            &self.roles,
            &self.contents,
            &self.turns,
        ]
    }

    fn open_trace(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.save.flow, &self.save.session_id, &self.idle, &self.spans]
    }
}

/// The save in one round trip (see the module's docs). The statements are prepared first
/// (once per connection), so that the pipeline's first poll sends all five messages, in
/// order: a turn dropped after that leaves nothing half-sent on the connection.
async fn pipelined(client: &Object, save: &TurnSave, unlock: Option<i64>) -> Result<(Outcome, bool), StoreError> {
    let values = Values::of(save)?;
    let session_stmt = client.prepare_cached(UPDATE_SESSION).await?;
    let turn_stmt = client.prepare_cached(INSERT_TURN).await?;
    let trace_stmt = match save.trace {
        Some(_) => Some(client.prepare_cached(ADD_TO_OPEN_TRACE).await?),
        None => None,
    };
    let unlock_stmt = match unlock {
        Some(_) => Some(client.prepare_cached(UNLOCK_IF_SAVED).await?),
        None => None,
    };
    let (session_params, turn_params, trace_params) = (values.update_session(), values.turn(), values.open_trace());
    let key = unlock.unwrap_or_default();
    let unlock_params: [&(dyn ToSql + Sync); 5] = [&key, &save.flow, &save.session_id, &values.index, &values.run_id];
    let traced = async {
        match &trace_stmt {
            Some(stmt) => client.query_one(stmt, &trace_params).await.map(|_| ()),
            None => Ok(()),
        }
    };
    let unlocked = async {
        match &unlock_stmt {
            Some(stmt) => client.query_opt(stmt, &unlock_params).await.map(|row| row.is_some_and(|r| r.get(0))),
            None => Ok(false),
        }
    };
    let (begun, moved, added, traced, committed, unlocked) = futures::join!(
        client.batch_execute("BEGIN"),
        client.query_one(&session_stmt, &session_params),
        client.execute(&turn_stmt, &turn_params),
        traced,
        client.batch_execute("COMMIT"),
        unlocked,
    );
    // Any failure aborted the transaction, and the `COMMIT` rolled it back.
    // The release ran after the commit, and only if the turn is stored: a failure to release
    // leaves the lock to the guard, which closes the connection if it cannot either.
    let unlocked = unlocked.unwrap_or(false);
    begun?;
    match moved {
        Err(e) if raised(&e, SESSION_MOVED) => return Ok((Outcome::SessionMoved, unlocked)),
        other => other?,
    };
    added?;
    match traced {
        Err(e) if raised(&e, NO_OPEN_TRACE) => return Ok((Outcome::TraceToOpen, unlocked)),
        other => other?,
    }
    committed?;
    Ok((Outcome::Saved, unlocked))
}

/// The save step by step, inside `tx` (the caller commits on [`Outcome::Saved`]): a session's
/// first turn, or a turn that opens the session's trace.
async fn in_steps(tx: &Transaction<'_>, save: &TurnSave) -> Result<Outcome, StoreError> {
    let values = Values::of(save)?;
    if save.expected_turns == 0 {
        let stmt = tx.prepare_cached(CREATE_SESSION).await?;
        if tx.execute(&stmt, &values.create_session()).await? == 0 {
            return Ok(Outcome::SessionMoved);
        }
    } else {
        let stmt = tx.prepare_cached(UPDATE_SESSION).await?;
        match tx.query_one(&stmt, &values.update_session()).await {
            Err(e) if raised(&e, SESSION_MOVED) => return Ok(Outcome::SessionMoved),
            other => other?,
        };
    }
    let stmt = tx.prepare_cached(INSERT_TURN).await?;
    tx.execute(&stmt, &values.turn()).await?;
    if let Some(trace) = &save.trace {
        add_to_trace(tx, save, trace, &values.spans).await?;
    }
    Ok(Outcome::Saved)
}

/// Why a turn's save found its session moved on: a gap in its messages, or another save first.
async fn session_moved(client: &Object, save: &TurnSave) -> Result<StoreError, StoreError> {
    let (found, stored) = client
        .query_opt(
            "SELECT turns, message_count FROM crewflow_sessions WHERE flow = $1 AND id = $2",
            &[&save.flow, &save.session_id],
        )
        .await?
        .map_or((0, 0), |row| (row.get::<_, i64>(0), row.get::<_, i64>(1)));
    let expected = save.expected_turns as i64;
    if found == expected && expected > 0 {
        return Ok(message_gap(save, stored as u64));
    }
    Ok(StoreError::SessionConflict(SessionConflict {
        session: save.session_id.clone(),
        expected: save.expected_turns,
        found: found as u64,
    }))
}

/// Adds the turn's spans (`spans`, as JSON) to the session's open trace, opening one when there
/// is none or the open one was idle too long (it is finalized first, as of its last turn).
async fn add_to_trace(
    tx: &Transaction<'_>,
    save: &TurnSave,
    trace: &TraceWrite,
    spans: &str,
) -> Result<(), StoreError> {
    let idle = trace.idle_after.map(|d| d.as_secs_f64() * 1000.0);
    let find = tx
        .prepare_cached(
            "SELECT id, updated_at, ($3::float8 IS NOT NULL AND updated_at < now() - $3::float8 * interval '1 millisecond')
             FROM crewflow_traces WHERE flow = $1 AND session_id = $2 AND finalized_at IS NULL
             FOR UPDATE",
        )
        .await?;
    let open = match tx.query_opt(&find, &[&save.flow, &save.session_id, &idle]).await? {
        Some(row) if row.get::<_, bool>(2) => {
            finalize(tx, row.get(0), row.get(1)).await?;
            None
        }
        other => other.map(|row| row.get::<_, String>(0)),
    };
    let insert_spans = tx.prepare_cached(INSERT_SPANS).await?;
    let trace_id = match open {
        Some(id) => id,
        None => {
            let id = trace.new_trace_id.clone();
            tx.execute(
                "INSERT INTO crewflow_traces (id, flow, session_id, turns, started_at, updated_at)
                 VALUES ($1, $2, $3, 0, $4, $4)",
                &[&id, &save.flow, &save.session_id, &save.turn.started_at],
            )
            .await?;
            let session_span = crate::util::session_span(save);
            tx.execute(&insert_spans, &[&id, &spans_json(std::slice::from_ref(&session_span))]).await?;
            id
        }
    };
    tx.execute(&insert_spans, &[&trace_id, &spans]).await?;
    let count =
        tx.prepare_cached("UPDATE crewflow_traces SET turns = turns + 1, updated_at = now() WHERE id = $1").await?;
    tx.execute(&count, &[&trace_id]).await?;
    Ok(())
}

/// Spans as one JSON array, for `jsonb_array_elements`. (Tried on 2026-12-08: one array per
/// column through `unnest`, as a turn's messages come. PostgreSQL then planned the statement
/// anew on every call, 229 µs each, since `unnest` sizes a plan by the arrays it is given, and
/// its execution took no less time: `serve_turns_pg` fell by a fifth.)
fn spans_json(spans: &[SpanRecord]) -> String {
    let rows: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            serde_json::json!({
                "span_id": s.span_id, "parent_id": s.parent_id, "kind": s.kind, "name": s.name,
                "started_at": s.started_at, "ended_at": s.ended_at, "attributes": s.attributes,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}
