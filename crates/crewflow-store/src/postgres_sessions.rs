//! Conversation sessions, turns and traces in PostgreSQL (schema migration 2), and session
//! locks across processes.
//!
//! A session lock is a PostgreSQL advisory lock on a connection held for the whole turn
//! (keyed by a 64-bit hash of flow and session id). The wait is bounded by `lock_timeout`, so
//! waiters queue in the server and are served in order. If the turn's process dies, its
//! connection closes and the server releases the lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use crewflow_chat::{
    ChatMessage, SessionConflict, SessionFilter, SessionGuard, SessionLockTimeout, SessionStore, SessionSummary,
    SpanRecord, StoredSession, TraceSummary, TraceWrite, TurnRecord, TurnSave,
};
use crewflow_core::persist::StoreFuture;
use deadpool_postgres::Object;
use deadpool_postgres::Transaction;

use crate::StoreError;
use crate::postgres::{PostgresStore, boxed};
use crate::util::{message_gap, parse_role, parse_run_id};

/// The advisory lock key of a session: FNV-1a over flow and id (stable across processes and
/// versions, unlike `std`'s hasher).
fn lock_key(flow: &str, id: &str) -> i64 {
    let bytes = flow.bytes().chain(std::iter::once(0)).chain(id.bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)) as i64
}

/// A connection holding an advisory lock. Dropped without a clean unlock (a cancelled turn
/// without a runtime), it closes its connection instead of returning it to the pool, so the
/// server releases the lock.
struct HeldLock {
    client: Option<Object>,
    key: i64,
}

impl HeldLock {
    async fn unlock(mut self) {
        if let Some(client) = self.client.take() {
            // Prepared once per connection: a plain string would be parsed again every turn,
            // a round trip of its own (as in `add_to_trace`).
            let unlocked = match client.prepare_cached("SELECT pg_advisory_unlock($1)").await {
                Ok(stmt) => client.query_one(&stmt, &[&self.key]).await.is_ok(),
                Err(_) => false,
            };
            if unlocked {
                drop(client); // back to the pool, unlocked
            } else {
                drop(Object::take(client)); // closes the connection: the lock goes with it
            }
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl PostgresStore {
    /// Locks a session on a connection of the lock pool (never the pool the turn's own
    /// queries use, so lock holders cannot starve them), waiting at most `wait` in all.
    ///
    /// The lock is tried, not queued for (`pg_try_advisory_lock`, retried with a short
    /// backoff): a turn given up while it waits (its future dropped) leaves no request behind
    /// on the server that could later take the lock for nobody.
    async fn lock(&self, flow: &str, id: &str, wait: Duration) -> Result<Option<SessionGuard>, StoreError> {
        let busy = || StoreError::SessionLocked(SessionLockTimeout { session: id.to_string() });
        let deadline = tokio::time::Instant::now() + wait;
        let client = self.lock_client(wait).await?.ok_or_else(busy)?;
        let held = HeldLock { client: Some(client), key: lock_key(flow, id) };
        let mut pause = Duration::from_millis(2);
        loop {
            if held.try_acquire().await? {
                return Ok(Some(SessionGuard::new(held.unlock())));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(busy());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl PostgresStore {
    /// A session with its last `last` messages (all of them: `None`): one statement, so one
    /// snapshot and one round trip.
    async fn read_session(&self, flow: &str, id: &str, last: Option<u64>) -> Result<Option<StoredSession>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT s.state::text, s.turns, s.created_at, s.updated_at, s.state_version, s.message_count,
                        m.roles, m.contents, m.turns
                 FROM crewflow_sessions s
                 CROSS JOIN LATERAL (
                     SELECT coalesce(array_agg(role ORDER BY idx), '{}') AS roles,
                            coalesce(array_agg(content ORDER BY idx), '{}') AS contents,
                            coalesce(array_agg(turn ORDER BY idx), '{}') AS turns
                     FROM crewflow_messages
                     WHERE flow = s.flow AND session_id = s.id AND idx >= s.message_count - $3
                 ) m
                 WHERE s.flow = $1 AND s.id = $2",
            )
            .await?;
        let last = last.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let Some(r) = client.query_opt(&stmt, &[&flow, &id, &last]).await? else { return Ok(None) };
        let count = r.get::<_, i64>(5) as u64;
        let (roles, contents, turns): (Vec<String>, Vec<String>, Vec<i64>) = (r.get(6), r.get(7), r.get(8));
        let messages = roles
            .iter()
            .zip(contents)
            .zip(turns)
            .map(|((role, content), turn)| Ok(ChatMessage { role: parse_role(role)?, content, turn: turn as u64 }))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Some(StoredSession {
            id: id.to_string(),
            flow: flow.to_string(),
            state: r.get(0),
            state_version: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
            turns: r.get::<_, i64>(1) as u64,
            messages_from: count - messages.len() as u64,
            messages,
            message_count: count,
            created_at: r.get(2),
            updated_at: r.get(3),
        }))
    }
}

impl HeldLock {
    async fn try_acquire(&self) -> Result<bool, StoreError> {
        let Some(client) = self.client.as_ref() else { return Ok(false) };
        let stmt = client.prepare_cached("SELECT pg_try_advisory_lock($1)").await?;
        Ok(client.query_one(&stmt, &[&self.key]).await?.get::<_, bool>(0))
    }
}

impl SessionStore for PostgresStore {
    fn describe(&self) -> String {
        crewflow_core::persist::RunStore::describe(self)
    }

    fn load_session<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(async move { boxed(self.read_session(flow, id, None).await) })
    }

    fn load_session_tail<'a>(
        &'a self,
        flow: &'a str,
        id: &'a str,
        last: u64,
    ) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(async move { boxed(self.read_session(flow, id, Some(last)).await) })
    }

    fn save_turn<'a>(&'a self, save: &'a TurnSave) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    save_turn(&tx, save).await?;
                    tx.commit().await?;
                    Ok(())
                }
                .await,
            )
        })
    }

    fn list_sessions<'a>(&'a self, filter: &'a SessionFilter) -> StoreFuture<'a, Vec<SessionSummary>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
                    let rows = client
                        .query(
                            "SELECT flow, id, turns, created_at, updated_at FROM crewflow_sessions
                             WHERE ($1::text IS NULL OR flow = $1) ORDER BY updated_at DESC, id LIMIT $2",
                            &[&filter.flow, &limit],
                        )
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|r| SessionSummary {
                            flow: r.get(0),
                            id: r.get(1),
                            turns: r.get::<_, i64>(2) as u64,
                            created_at: r.get(3),
                            updated_at: r.get(4),
                        })
                        .collect())
                }
                .await,
            )
        })
    }

    fn list_turns<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Vec<TurnRecord>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "SELECT idx, run_id, user_message, reply, intent, usage::text, started_at, finished_at
                             FROM crewflow_turns WHERE flow = $1 AND session_id = $2 ORDER BY idx",
                            &[&flow, &id],
                        )
                        .await?;
                    rows.iter()
                        .map(|r| {
                            Ok(TurnRecord {
                                session_id: id.to_string(),
                                index: r.get::<_, i64>(0) as u64,
                                run_id: parse_run_id(r.get(1))?,
                                user_message: r.get(2),
                                reply: r.get(3),
                                intent: r.get(4),
                                usage: serde_json::from_str(r.get(5)).map_err(corrupt)?,
                                started_at: r.get(6),
                                finished_at: r.get(7),
                            })
                        })
                        .collect()
                }
                .await,
            )
        })
    }

    fn delete_session<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    // The session row first, as a turn's save takes it (then its trace): one
                    // lock order, so a delete and a save never deadlock; a save waiting here
                    // then finds the row gone and reports a conflict.
                    tx.execute("SELECT 1 FROM crewflow_sessions WHERE flow = $1 AND id = $2 FOR UPDATE", &[&flow, &id])
                        .await?;
                    tx.execute(
                        "DELETE FROM crewflow_spans WHERE trace_id IN
                             (SELECT id FROM crewflow_traces WHERE flow = $1 AND session_id = $2)",
                        &[&flow, &id],
                    )
                    .await?;
                    tx.execute("DELETE FROM crewflow_traces WHERE flow = $1 AND session_id = $2", &[&flow, &id])
                        .await?;
                    tx.execute("DELETE FROM crewflow_turns WHERE flow = $1 AND session_id = $2", &[&flow, &id]).await?;
                    tx.execute("DELETE FROM crewflow_messages WHERE flow = $1 AND session_id = $2", &[&flow, &id])
                        .await?;
                    let n =
                        tx.execute("DELETE FROM crewflow_sessions WHERE flow = $1 AND id = $2", &[&flow, &id]).await?;
                    tx.commit().await?;
                    Ok(n > 0)
                }
                .await,
            )
        })
    }

    fn lock_session<'a>(&'a self, flow: &'a str, id: &'a str, wait: Duration) -> StoreFuture<'a, Option<SessionGuard>> {
        Box::pin(async move { boxed(self.lock(flow, id, wait).await) })
    }

    fn finalize_trace<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    let open = tx
                        .query_opt(
                            "SELECT id FROM crewflow_traces WHERE flow = $1 AND session_id = $2 AND finalized_at IS NULL
                             FOR UPDATE",
                            &[&flow, &id],
                        )
                        .await?;
                    let done = match open {
                        Some(row) => finalize(&tx, row.get(0), Utc::now()).await?,
                        None => false,
                    };
                    tx.commit().await?;
                    Ok(done)
                }
                .await,
            )
        })
    }

    fn finalize_idle_traces<'a>(&'a self, flow: &'a str, idle: Duration) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    let rows = tx
                        .query(
                            "SELECT id FROM crewflow_traces
                             WHERE flow = $2 AND finalized_at IS NULL AND updated_at < now() - $1 * interval '1 millisecond'
                             FOR UPDATE SKIP LOCKED",
                            &[&(ms(idle) as f64), &flow],
                        )
                        .await?;
                    let at = Utc::now();
                    let mut n = 0;
                    for row in rows {
                        n += u64::from(finalize(&tx, row.get(0), at).await?);
                    }
                    tx.commit().await?;
                    Ok(n)
                }
                .await,
            )
        })
    }

    fn list_traces<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Vec<TraceSummary>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "SELECT id, turns, started_at, updated_at, finalized_at FROM crewflow_traces
                             WHERE flow = $1 AND session_id = $2 ORDER BY started_at, id",
                            &[&flow, &id],
                        )
                        .await?;
                    Ok(rows
                        .iter()
                        .map(|r| TraceSummary {
                            trace_id: r.get(0),
                            session_id: id.to_string(),
                            flow: flow.to_string(),
                            turns: r.get::<_, i64>(1) as u64,
                            started_at: r.get(2),
                            updated_at: r.get(3),
                            finalized_at: r.get(4),
                        })
                        .collect())
                }
                .await,
            )
        })
    }

    fn trace_spans<'a>(&'a self, trace_id: &'a str) -> StoreFuture<'a, Vec<SpanRecord>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "SELECT span_id, parent_id, kind, name, started_at, ended_at, attributes::text
                             FROM crewflow_spans WHERE trace_id = $1 ORDER BY seq",
                            &[&trace_id],
                        )
                        .await?;
                    rows.iter()
                        .map(|r| {
                            Ok(SpanRecord {
                                span_id: r.get(0),
                                parent_id: r.get(1),
                                kind: r.get(2),
                                name: r.get(3),
                                started_at: r.get(4),
                                ended_at: r.get(5),
                                attributes: serde_json::from_str(r.get(6)).map_err(corrupt)?,
                            })
                        })
                        .collect()
                }
                .await,
            )
        })
    }
}

async fn save_turn(tx: &Transaction<'_>, save: &TurnSave) -> Result<(), StoreError> {
    crate::util::refuse_nul_json("the session's state", &save.state)?;
    crate::util::refuse_nul_text("the user's message", &save.turn.user_message)?;
    crate::util::refuse_nul_text("the reply", &save.turn.reply)?;
    for m in &save.messages {
        crate::util::refuse_nul_text("a message of the transcript", &m.content)?;
    }
    let expected = save.expected_turns as i64;
    let version = i64::from(save.state_version);
    let from = save.messages_from as i64;
    let count = from + save.messages.len() as i64;
    if expected == 0 && from > 0 {
        return Err(message_gap(save, 0));
    }
    // A new session is created only if no row exists; an existing one moves on only from the
    // turn count this turn started from (never re-created if it was deleted meanwhile). The row
    // lock these take orders concurrent saves of the session. The messages this save replaces
    // (none, when the turn only adds) go in the same statement: if the session moved on, the
    // transaction is rolled back with them.
    let n = if expected == 0 {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO crewflow_sessions (flow, id, state, turns, created_at, updated_at, state_version, message_count)
                 VALUES ($1, $2, $3::text::jsonb, 1, now(), now(), $4, $5) ON CONFLICT (flow, id) DO NOTHING",
            )
            .await?;
        tx.execute(&stmt, &[&save.flow, &save.session_id, &save.state, &version, &count]).await?
    } else {
        let stmt = tx
            .prepare_cached(
                "WITH replaced AS (
                     DELETE FROM crewflow_messages WHERE flow = $1 AND session_id = $2 AND idx >= $6
                 )
                 UPDATE crewflow_sessions SET state = $3::text::jsonb, turns = $4::bigint + 1, updated_at = now(),
                     state_version = $5, message_count = $7
                 WHERE flow = $1 AND id = $2 AND turns = $4::bigint AND message_count >= $6",
            )
            .await?;
        tx.execute(&stmt, &[&save.flow, &save.session_id, &save.state, &expected, &version, &from, &count]).await?
    };
    if n == 0 {
        let (found, stored) = tx
            .query_opt(
                "SELECT turns, message_count FROM crewflow_sessions WHERE flow = $1 AND id = $2",
                &[&save.flow, &save.session_id],
            )
            .await?
            .map_or((0, 0), |row| (row.get::<_, i64>(0), row.get::<_, i64>(1)));
        if found == expected && expected > 0 {
            return Err(message_gap(save, stored as u64));
        }
        return Err(StoreError::SessionConflict(SessionConflict {
            session: save.session_id.clone(),
            expected: save.expected_turns,
            found: found as u64,
        }));
    }
    let turn = &save.turn;
    let usage = serde_json::to_string(&turn.usage).map_err(corrupt)?;
    // The turn's messages ride on its record's statement: one round trip for both.
    let stmt = tx
        .prepare_cached(
            "WITH added AS (
                 INSERT INTO crewflow_messages (flow, session_id, idx, role, content, turn)
                 SELECT $1, $2, $11 + m.ord - 1, m.role, m.content, m.turn
                 FROM unnest($12::text[], $13::text[], $14::bigint[]) WITH ORDINALITY AS m (role, content, turn, ord)
             )
             INSERT INTO crewflow_turns (flow, session_id, idx, run_id, user_message, reply, intent, usage, started_at, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)",
        )
        .await?;
    let roles: Vec<&str> = save.messages.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = save.messages.iter().map(|m| m.content.as_str()).collect();
    let message_turns: Vec<i64> = save.messages.iter().map(|m| m.turn as i64).collect();
    tx.execute(
        &stmt,
        &[
            &save.flow,
            &save.session_id,
            &(turn.index as i64),
            &turn.run_id.to_string(),
            &turn.user_message,
            &turn.reply,
            &turn.intent,
            &usage,
            &turn.started_at,
            &turn.finished_at,
            &from,
            &roles,
            &contents,
            &message_turns,
        ],
    )
    .await?;
    if let Some(trace) = &save.trace {
        add_to_trace(tx, save, trace).await?;
    }
    Ok(())
}

/// Adds the turn's spans to the session's open trace, opening one when there is none or the
/// open one was idle too long (it is finalized first).
async fn add_to_trace(tx: &Transaction<'_>, save: &TurnSave, trace: &TraceWrite) -> Result<(), StoreError> {
    let idle = trace.idle_after.map(|d| ms(d) as f64);
    // The statements of every turn are prepared once per connection (`prepare_cached`): given
    // as plain strings, each was parsed again, a round trip more per statement and turn.
    let find = tx
        .prepare_cached(
            "SELECT id, updated_at, ($3::float8 IS NOT NULL AND updated_at < now() - $3::float8 * interval '1 millisecond')
             FROM crewflow_traces WHERE flow = $1 AND session_id = $2 AND finalized_at IS NULL
             FOR UPDATE",
        )
        .await?;
    let open = tx.query_opt(&find, &[&save.flow, &save.session_id, &idle]).await?;
    let open = match open {
        Some(row) if row.get::<_, bool>(2) => {
            finalize(tx, row.get(0), row.get(1)).await?;
            None
        }
        other => other.map(|row| row.get::<_, String>(0)),
    };
    let trace_id = match open {
        Some(id) => id,
        None => {
            let id = trace.new_trace_id.clone();
            tx.execute(
                "INSERT INTO crewflow_traces (id, flow, session_id, turns, started_at, updated_at) VALUES ($1, $2, $3, 0, $4, $4)",
                &[&id, &save.flow, &save.session_id, &save.turn.started_at],
            )
            .await?;
            let session_span = SpanRecord {
                span_id: "session".into(),
                parent_id: None,
                kind: "session".into(),
                name: save.session_id.clone(),
                started_at: save.turn.started_at,
                ended_at: None,
                attributes: serde_json::json!({ "flow": save.flow }),
            };
            insert_spans(tx, &id, std::slice::from_ref(&session_span)).await?;
            id
        }
    };
    insert_spans(tx, &trace_id, &trace.spans).await?;
    let count =
        tx.prepare_cached("UPDATE crewflow_traces SET turns = turns + 1, updated_at = now() WHERE id = $1").await?;
    tx.execute(&count, &[&trace_id]).await?;
    Ok(())
}

async fn insert_spans(tx: &Transaction<'_>, trace_id: &str, spans: &[SpanRecord]) -> Result<(), StoreError> {
    // All the turn's spans in one statement, as a JSON array.
    let rows: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            serde_json::json!({
                "span_id": s.span_id, "parent_id": s.parent_id, "kind": s.kind, "name": s.name,
                "started_at": s.started_at, "ended_at": s.ended_at, "attributes": s.attributes,
            })
        })
        .collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO crewflow_spans (trace_id, seq, span_id, parent_id, kind, name, started_at, ended_at, attributes)
             SELECT $1, (SELECT coalesce(max(seq) + 1, 0) FROM crewflow_spans WHERE trace_id = $1) + e.ord - 1,
                    e.v->>'span_id', e.v->>'parent_id', e.v->>'kind', e.v->>'name',
                    (e.v->>'started_at')::timestamptz, (e.v->>'ended_at')::timestamptz, e.v->'attributes'
             FROM jsonb_array_elements($2::text::jsonb) WITH ORDINALITY AS e(v, ord)",
        )
        .await?;
    tx.execute(&stmt, &[&trace_id, &serde_json::Value::Array(rows).to_string()]).await?;
    Ok(())
}

/// Finalizes an open trace at `at`, closing its session span; `false` if it was not open.
async fn finalize(tx: &Transaction<'_>, trace_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE crewflow_traces SET finalized_at = $2 WHERE id = $1 AND finalized_at IS NULL",
            &[&trace_id, &at],
        )
        .await?;
    if n > 0 {
        tx.execute(
            "UPDATE crewflow_spans SET ended_at = $2 WHERE trace_id = $1 AND span_id = 'session'",
            &[&trace_id, &at],
        )
        .await?;
    }
    Ok(n > 0)
}
