//! Conversation sessions, turns and traces in PostgreSQL (schema migration 2), and session
//! locks across processes.
//!
//! A session lock is a PostgreSQL advisory lock on a connection held for the whole turn
//! (keyed by a 64-bit hash of flow and session id), tried with `pg_try_advisory_lock` and a
//! short backoff within `lock_timeout`. The turn's read and save run on that connection too:
//! the read is sent with the lock's first try, and the save (`postgres_turns.rs`) releases the
//! lock with its commit. If the turn's process dies, its connection closes and the server
//! releases the lock.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crewflow_chat::{
    ChatMessage, SessionFilter, SessionGuard, SessionLockTimeout, SessionStore, SessionSummary, SpanRecord,
    StoredSession, TraceSummary, TurnRecord, TurnSave,
};
use crewflow_core::persist::StoreFuture;
use deadpool_postgres::Object;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::StoreError;
use crate::postgres::{PostgresStore, boxed};
use crate::util::{parse_role, parse_run_id};

/// The advisory lock key of a session: FNV-1a over flow and id (stable across processes and
/// versions, unlike `std`'s hasher).
pub(crate) fn lock_key(flow: &str, id: &str) -> i64 {
    let bytes = flow.bytes().chain(std::iter::once(0)).chain(id.bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)) as i64
}

/// A connection holding an advisory lock. Dropped while it holds the lock (a cancelled turn
/// without a runtime), it closes its connection instead of returning it to the pool, so the
/// server releases the lock.
pub(crate) struct HeldLock {
    pub(crate) client: Option<Object>,
    key: i64,
    /// Whether the lock may still be held: a turn's save releases it with its commit, in the
    /// same round trip (`postgres_turns.rs`), and the guard's release then only returns the
    /// connection.
    pub(crate) locked: bool,
}

impl HeldLock {
    /// The lock's key.
    pub(crate) fn key(&self) -> i64 {
        self.key
    }

    /// Releases the lock (unless a save did) and returns the connection to the pool; closes
    /// the connection instead when the release fails, which releases the lock too.
    async fn release(&mut self) {
        let Some(client) = self.client.take() else { return };
        // Prepared once per connection: a plain string would be parsed again every turn, a
        // round trip of its own.
        let unlocked = !self.locked
            || match client.prepare_cached("SELECT pg_advisory_unlock($1)").await {
                Ok(stmt) => client.query_one(&stmt, &[&self.key]).await.is_ok(),
                Err(_) => false,
            };
        self.locked = false;
        if unlocked {
            drop(client); // back to the pool, unlocked
        } else {
            drop(Object::take(client)); // closes the connection: the lock goes with it
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && self.locked
        {
            drop(Object::take(client));
        }
    }
}

/// The session locks this process holds through a store, by lock key, so that a turn's save
/// can run on its session's lock connection and release the lock in its own round trip. Weak:
/// a guard dropped without a runtime drops its lock (closing the connection), whatever this
/// map still names.
#[derive(Default)]
pub(crate) struct HeldLocks(std::sync::Mutex<HashMap<i64, Weak<tokio::sync::Mutex<HeldLock>>>>);

impl HeldLocks {
    fn insert(&self, key: i64, lock: &Arc<tokio::sync::Mutex<HeldLock>>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key, Arc::downgrade(lock));
    }

    /// The lock held for `key`, if this process holds it.
    pub(crate) fn get(&self, key: i64) -> Option<Arc<tokio::sync::Mutex<HeldLock>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&key).and_then(Weak::upgrade)
    }

    fn remove(&self, key: i64, lock: &Arc<tokio::sync::Mutex<HeldLock>>) {
        let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(&key).is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(lock))) {
            held.remove(&key);
        }
    }
}

/// A session guard's release: forgets the lock, releases it (unless the turn's save did) and
/// returns its connection.
async fn release(store: PostgresStore, lock: Arc<tokio::sync::Mutex<HeldLock>>) {
    let mut held = lock.lock().await;
    store.held_locks().remove(held.key, &lock);
    held.release().await;
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A session with its last `$3` messages: one statement, so one snapshot.
const READ_SESSION: &str =
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
     WHERE s.flow = $1 AND s.id = $2";

/// `READ_SESSION`'s message count (`None`: all).
fn last_messages(last: Option<u64>) -> i64 {
    last.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl PostgresStore {
    /// Locks a session on a connection of the lock pool (never the pool the turn's own
    /// queries use, so lock holders cannot starve them), waiting at most `wait` in all; with
    /// `read`, reads the session under the lock on the same connection (`Some(last)` messages,
    /// as [`read_session`](Self::read_session)).
    ///
    /// The lock is tried, not queued for (`pg_try_advisory_lock`, retried with a short
    /// backoff): a turn given up while it waits (its future dropped) leaves no request behind
    /// on the server that could later take the lock for nobody. The first try is sent together
    /// with the read (pipelined: one round trip); a connection runs its statements in order,
    /// so the read's snapshot is taken once the lock is held, and its result is thrown away
    /// when the lock was not had.
    async fn lock(
        &self,
        flow: &str,
        id: &str,
        wait: Duration,
        read: Option<Option<u64>>,
    ) -> Result<(SessionGuard, Option<StoredSession>), StoreError> {
        let busy = || StoreError::SessionLocked(SessionLockTimeout { session: id.to_string() });
        let deadline = tokio::time::Instant::now() + wait;
        let client = self.lock_client(wait).await?.ok_or_else(busy)?;
        let key = lock_key(flow, id);
        // `locked` from the first try on: a try cut short may still take the lock on the server.
        let held = HeldLock { client: Some(client), key, locked: true };
        let mut pause = Duration::from_millis(2);
        let mut first = read;
        loop {
            let (locked, stored) = held.try_acquire(flow, id, first.take()).await?;
            if locked {
                let stored = match (stored, read) {
                    (Some(stored), _) => stored,
                    // Taken on a later try: read now, under it.
                    (None, Some(last)) => held.read(flow, id, last).await?,
                    (None, None) => None,
                };
                let held = Arc::new(tokio::sync::Mutex::new(held));
                self.held_locks().insert(key, &held);
                return Ok((SessionGuard::new(release(self.clone(), held)), stored));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(busy());
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// A session with its last `last` messages (all of them: `None`): one statement, so one
    /// snapshot and one round trip.
    async fn read_session(&self, flow: &str, id: &str, last: Option<u64>) -> Result<Option<StoredSession>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(READ_SESSION).await?;
        let row = client.query_opt(&stmt, &[&flow, &id, &last_messages(last)]).await?;
        row.map(|r| stored_session(flow, id, &r)).transpose()
    }
}

/// A session as `READ_SESSION` returns it.
fn stored_session(flow: &str, id: &str, r: &tokio_postgres::Row) -> Result<StoredSession, StoreError> {
    let count = r.get::<_, i64>(5) as u64;
    let (roles, contents, turns): (Vec<String>, Vec<String>, Vec<i64>) = (r.get(6), r.get(7), r.get(8));
    let messages = roles
        .iter()
        .zip(contents)
        .zip(turns)
        .map(|((role, content), turn)| Ok(ChatMessage { role: parse_role(role)?, content, turn: turn as u64 }))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(StoredSession {
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
    })
}

impl HeldLock {
    /// Tries the lock; with `read`, sends the session's read after it (pipelined), and gives
    /// what it read when the lock was had (`Some`: the read ran).
    async fn try_acquire(
        &self,
        flow: &str,
        id: &str,
        read: Option<Option<u64>>,
    ) -> Result<(bool, Option<Option<StoredSession>>), StoreError> {
        let Some(client) = self.client.as_ref() else { return Ok((false, None)) };
        let lock = client.prepare_cached("SELECT pg_try_advisory_lock($1)").await?;
        let Some(last) = read else {
            return Ok((client.query_one(&lock, &[&self.key]).await?.get::<_, bool>(0), None));
        };
        let stmt = client.prepare_cached(READ_SESSION).await?;
        let last = last_messages(last);
        let (lock_params, read_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 3]) =
            ([&self.key], [&flow, &id, &last]);
        let (locked, row) =
            futures::join!(client.query_one(&lock, &lock_params), client.query_opt(&stmt, &read_params));
        if !locked?.get::<_, bool>(0) {
            return Ok((false, None));
        }
        Ok((true, Some(row?.map(|r| stored_session(flow, id, &r)).transpose()?)))
    }

    /// The session read on the lock's connection.
    async fn read(&self, flow: &str, id: &str, last: Option<u64>) -> Result<Option<StoredSession>, StoreError> {
        let Some(client) = self.client.as_ref() else { return Ok(None) };
        let stmt = client.prepare_cached(READ_SESSION).await?;
        let row = client.query_opt(&stmt, &[&flow, &id, &last_messages(last)]).await?;
        row.map(|r| stored_session(flow, id, &r)).transpose()
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
        Box::pin(async move { boxed(crate::postgres_turns::save_turn(self, save).await) })
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
        Box::pin(async move { boxed(self.lock(flow, id, wait, None).await.map(|(guard, _)| Some(guard))) })
    }

    fn lock_and_load<'a>(
        &'a self,
        flow: &'a str,
        id: &'a str,
        wait: Duration,
        last: Option<u64>,
    ) -> StoreFuture<'a, (Option<SessionGuard>, Option<StoredSession>)> {
        Box::pin(async move { boxed(self.lock(flow, id, wait, Some(last)).await.map(|(guard, s)| (Some(guard), s))) })
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

/// Finalizes an open trace at `at`, closing its session span; `false` if it was not open.
pub(crate) async fn finalize(tx: &Transaction<'_>, trace_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
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
