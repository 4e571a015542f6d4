//! Conversation sessions, turns and traces in SQLite (schema migration 2).
//!
//! A session is one row holding its state (without the transcript), replaced at each turn,
//! and its transcript as one row per message (schema migration 6); a turn appends its
//! messages, adds its record and its spans, in one transaction, and reads only the end of the
//! transcript. SQLite has no cross-process
//! locks worth holding for a whole turn, so turns of one session are serialised by the
//! flow's in-process lock, and a turn that another process saved in between is refused
//! ([`SessionConflict`]) rather than lost.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use crewflow_chat::{
    ChatMessage, SessionConflict, SessionFilter, SessionStore, SessionSummary, SpanRecord, StoredSession, TraceSummary,
    TraceWrite, TurnRecord, TurnSave,
};
use crewflow_core::persist::StoreFuture;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use crate::StoreError;
use crate::sqlite::{SqliteStore, boxed, from_ms, ms, now};
use crate::util::{message_gap, parse_role, parse_run_id};

impl SessionStore for SqliteStore {
    fn describe(&self) -> String {
        crewflow_core::persist::RunStore::describe(self)
    }

    fn load_session<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Option<StoredSession>> {
        let (flow, id) = (flow.to_string(), id.to_string());
        Box::pin(async move { boxed(self.call_read(move |c| read_session(c, flow, id, None)).await) })
    }

    fn load_session_tail<'a>(
        &'a self,
        flow: &'a str,
        id: &'a str,
        last: u64,
    ) -> StoreFuture<'a, Option<StoredSession>> {
        let (flow, id) = (flow.to_string(), id.to_string());
        Box::pin(async move { boxed(self.call_read(move |c| read_session(c, flow, id, Some(last))).await) })
    }

    fn save_turn<'a>(&'a self, save: &'a TurnSave) -> StoreFuture<'a, ()> {
        let save = save.clone();
        Box::pin(async move {
            boxed(
                self.call_short(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    save_turn(&tx, &save)?;
                    tx.commit()?;
                    Ok(())
                })
                .await,
            )
        })
    }

    fn list_sessions<'a>(&'a self, filter: &'a SessionFilter) -> StoreFuture<'a, Vec<SessionSummary>> {
        let filter = filter.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
                    let mut stmt = c.prepare_cached(
                        "SELECT flow, id, turns, created_at, updated_at FROM crewflow_sessions
                         WHERE (?1 IS NULL OR flow = ?1) ORDER BY updated_at DESC, id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![filter.flow, limit], |r| {
                        Ok(SessionSummary {
                            flow: r.get(0)?,
                            id: r.get(1)?,
                            turns: r.get::<_, i64>(2)? as u64,
                            created_at: from_ms(r.get(3)?),
                            updated_at: from_ms(r.get(4)?),
                        })
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await,
            )
        })
    }

    fn list_turns<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Vec<TurnRecord>> {
        let (flow, id) = (flow.to_string(), id.to_string());
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT idx, run_id, user_message, reply, intent, usage, started_at, finished_at
                         FROM crewflow_turns WHERE flow = ?1 AND session_id = ?2 ORDER BY idx",
                    )?;
                    let rows = stmt.query_map(params![flow, id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, i64>(6)?,
                            r.get::<_, i64>(7)?,
                        ))
                    })?;
                    rows.map(|row| {
                        let (index, run_id, user_message, reply, intent, usage, started, finished) = row?;
                        Ok(TurnRecord {
                            session_id: id.clone(),
                            index: index as u64,
                            run_id: parse_run_id(&run_id)?,
                            user_message,
                            reply,
                            intent,
                            usage: serde_json::from_str(&usage).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            started_at: from_ms(started),
                            finished_at: from_ms(finished),
                        })
                    })
                    .collect()
                })
                .await,
            )
        })
    }

    fn delete_session<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        let (flow, id) = (flow.to_string(), id.to_string());
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    tx.execute(
                        "DELETE FROM crewflow_spans WHERE trace_id IN
                             (SELECT id FROM crewflow_traces WHERE flow = ?1 AND session_id = ?2)",
                        params![flow, id],
                    )?;
                    tx.execute("DELETE FROM crewflow_traces WHERE flow = ?1 AND session_id = ?2", params![flow, id])?;
                    tx.execute("DELETE FROM crewflow_turns WHERE flow = ?1 AND session_id = ?2", params![flow, id])?;
                    tx.execute("DELETE FROM crewflow_messages WHERE flow = ?1 AND session_id = ?2", params![flow, id])?;
                    let n =
                        tx.execute("DELETE FROM crewflow_sessions WHERE flow = ?1 AND id = ?2", params![flow, id])?;
                    tx.commit()?;
                    Ok(n > 0)
                })
                .await,
            )
        })
    }

    fn finalize_trace<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        let (flow, id) = (flow.to_string(), id.to_string());
        Box::pin(async move {
            boxed(
                self.call_short(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let open: Option<String> = tx
                        .query_row(
                            "SELECT id FROM crewflow_traces WHERE flow = ?1 AND session_id = ?2 AND finalized_at IS NULL",
                            params![flow, id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let done = match open {
                        Some(trace) => finalize(&tx, &trace, now())?,
                        None => false,
                    };
                    tx.commit()?;
                    Ok(done)
                })
                .await,
            )
        })
    }

    fn finalize_idle_traces<'a>(&'a self, flow: &'a str, idle: Duration) -> StoreFuture<'a, u64> {
        let flow = flow.to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let t = now();
                    let before = ms(t) - i64::try_from(idle.as_millis()).unwrap_or(i64::MAX / 2);
                    let idle: Vec<String> = tx
                        .prepare(
                            "SELECT id FROM crewflow_traces WHERE flow = ?2 AND finalized_at IS NULL AND updated_at < ?1",
                        )?
                        .query_map(rusqlite::params![before, flow], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    let mut n = 0;
                    for trace in idle {
                        n += u64::from(finalize(&tx, &trace, t)?);
                    }
                    tx.commit()?;
                    Ok(n)
                })
                .await,
            )
        })
    }

    fn list_traces<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Vec<TraceSummary>> {
        let (flow, id) = (flow.to_string(), id.to_string());
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT id, turns, started_at, updated_at, finalized_at FROM crewflow_traces
                         WHERE flow = ?1 AND session_id = ?2 ORDER BY started_at, rowid",
                    )?;
                    let rows = stmt.query_map(params![flow, id], |r| {
                        Ok(TraceSummary {
                            trace_id: r.get(0)?,
                            session_id: id.clone(),
                            flow: flow.clone(),
                            turns: r.get::<_, i64>(1)? as u64,
                            started_at: from_ms(r.get(2)?),
                            updated_at: from_ms(r.get(3)?),
                            finalized_at: r.get::<_, Option<i64>>(4)?.map(from_ms),
                        })
                    })?;
                    Ok(rows.collect::<Result<Vec<_>, _>>()?)
                })
                .await,
            )
        })
    }

    fn trace_spans<'a>(&'a self, trace_id: &'a str) -> StoreFuture<'a, Vec<SpanRecord>> {
        let trace_id = trace_id.to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT span_id, parent_id, kind, name, started_us, ended_us, attributes
                         FROM crewflow_spans WHERE trace_id = ?1 ORDER BY seq",
                    )?;
                    let rows = stmt.query_map([trace_id], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                            r.get::<_, String>(6)?,
                        ))
                    })?;
                    rows.map(|row| {
                        let (span_id, parent_id, kind, name, started, ended, attributes) = row?;
                        Ok(SpanRecord {
                            span_id,
                            parent_id,
                            kind,
                            name,
                            started_at: from_us(started),
                            ended_at: ended.map(from_us),
                            attributes: serde_json::from_str(&attributes)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        })
                    })
                    .collect()
                })
                .await,
            )
        })
    }
}

/// A session with its last `last` messages (all of them: `None`), read in one snapshot.
fn read_session(
    c: &mut rusqlite::Connection,
    flow: String,
    id: String,
    last: Option<u64>,
) -> Result<Option<StoredSession>, StoreError> {
    // A read transaction: the row and the messages are of one moment even when another
    // process saves a turn in between.
    let tx = c.transaction()?;
    let row = tx
        .prepare_cached(
            "SELECT state, turns, created_at, updated_at, state_version, message_count FROM crewflow_sessions
             WHERE flow = ?1 AND id = ?2",
        )?
        .query_row(params![flow, id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .optional()?;
    let Some((state, turns, created, updated, state_version, count)) = row else { return Ok(None) };
    let count = count as u64;
    let from = last.map_or(0, |last| count.saturating_sub(last));
    let messages = {
        let mut stmt = tx.prepare_cached(
            "SELECT role, content, turn FROM crewflow_messages
             WHERE flow = ?1 AND session_id = ?2 AND idx >= ?3 ORDER BY idx",
        )?;
        let rows = stmt.query_map(params![flow, id, from as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })?;
        rows.map(|row| {
            let (role, content, turn) = row?;
            Ok(ChatMessage { role: parse_role(&role)?, content, turn: turn as u64 })
        })
        .collect::<Result<Vec<_>, StoreError>>()?
    };
    tx.commit()?;
    Ok(Some(StoredSession {
        id,
        flow,
        state,
        state_version,
        turns: turns as u64,
        messages,
        messages_from: from,
        message_count: count,
        created_at: from_ms(created),
        updated_at: from_ms(updated),
    }))
}

fn save_turn(tx: &Transaction<'_>, save: &TurnSave) -> Result<(), StoreError> {
    let (found, count): (i64, i64) = tx
        .prepare_cached("SELECT turns, message_count FROM crewflow_sessions WHERE flow = ?1 AND id = ?2")?
        .query_row(params![save.flow, save.session_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0));
    if found as u64 != save.expected_turns {
        return Err(StoreError::SessionConflict(SessionConflict {
            session: save.session_id.clone(),
            expected: save.expected_turns,
            found: found as u64,
        }));
    }
    let count = count as u64;
    if save.messages_from > count {
        return Err(message_gap(save, count));
    }
    let t = ms(now());
    tx.prepare_cached(
        "INSERT INTO crewflow_sessions (flow, id, state, turns, created_at, updated_at, state_version, message_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)
         ON CONFLICT (flow, id) DO UPDATE SET state = excluded.state, turns = excluded.turns,
             updated_at = excluded.updated_at, state_version = excluded.state_version,
             message_count = excluded.message_count",
    )?
    .execute(params![
        save.flow,
        save.session_id,
        save.state,
        save.expected_turns as i64 + 1,
        t,
        save.state_version,
        (save.messages_from + save.messages.len() as u64) as i64
    ])?;
    if save.messages_from < count {
        tx.prepare_cached("DELETE FROM crewflow_messages WHERE flow = ?1 AND session_id = ?2 AND idx >= ?3")?
            .execute(params![save.flow, save.session_id, save.messages_from as i64])?;
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO crewflow_messages (flow, session_id, idx, role, content, turn) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (i, m) in save.messages.iter().enumerate() {
        let idx = (save.messages_from + i as u64) as i64;
        insert.execute(params![save.flow, save.session_id, idx, m.role.as_str(), m.content, m.turn as i64])?;
    }
    let turn = &save.turn;
    let usage = serde_json::to_string(&turn.usage).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.prepare_cached(
        "INSERT INTO crewflow_turns (flow, session_id, idx, run_id, user_message, reply, intent, usage, started_at, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        save.flow,
        save.session_id,
        turn.index as i64,
        turn.run_id.to_string(),
        turn.user_message,
        turn.reply,
        turn.intent,
        usage,
        ms(turn.started_at),
        ms(turn.finished_at)
    ])?;
    if let Some(trace) = &save.trace {
        add_to_trace(tx, save, trace, t)?;
    }
    Ok(())
}

/// Adds the turn's spans to the session's open trace, opening one (with its session span)
/// when there is none or the open one was idle too long (it is finalized first).
fn add_to_trace(tx: &Transaction<'_>, save: &TurnSave, trace: &TraceWrite, t: i64) -> Result<(), StoreError> {
    let open: Option<(String, i64)> = tx
        .prepare_cached(
            "SELECT id, updated_at FROM crewflow_traces WHERE flow = ?1 AND session_id = ?2 AND finalized_at IS NULL",
        )?
        .query_row(params![save.flow, save.session_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let idle_ms = trace.idle_after.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
    let open = match open {
        Some((id, updated)) if idle_ms.is_some_and(|idle| updated < t - idle) => {
            finalize(tx, &id, from_ms(updated))?;
            None
        }
        other => other.map(|(id, _)| id),
    };
    let trace_id = match open {
        Some(id) => id,
        None => {
            let id = trace.new_trace_id.clone();
            tx.execute(
                "INSERT INTO crewflow_traces (id, flow, session_id, turns, started_at, updated_at) VALUES (?1, ?2, ?3, 0, ?4, ?4)",
                params![id, save.flow, save.session_id, ms(save.turn.started_at)],
            )?;
            let session_span = crate::util::session_span(save);
            insert_spans(tx, &id, std::slice::from_ref(&session_span))?;
            id
        }
    };
    insert_spans(tx, &trace_id, &trace.spans)?;
    tx.prepare_cached("UPDATE crewflow_traces SET turns = turns + 1, updated_at = ?2 WHERE id = ?1")?
        .execute(params![trace_id, t])?;
    Ok(())
}

fn insert_spans(tx: &Transaction<'_>, trace_id: &str, spans: &[SpanRecord]) -> Result<(), StoreError> {
    let next: i64 = tx
        .prepare_cached("SELECT coalesce(max(seq), -1) + 1 FROM crewflow_spans WHERE trace_id = ?1")?
        .query_row([trace_id], |r| r.get(0))?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO crewflow_spans (trace_id, seq, span_id, parent_id, kind, name, started_us, ended_us, attributes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (i, s) in spans.iter().enumerate() {
        stmt.execute(params![
            trace_id,
            next + i as i64,
            s.span_id,
            s.parent_id,
            s.kind,
            s.name,
            s.started_at.timestamp_micros(),
            s.ended_at.map(|t| t.timestamp_micros()),
            s.attributes.to_string()
        ])?;
    }
    Ok(())
}

/// Finalizes an open trace at `at`, closing its session span; `false` if it was not open.
fn finalize(tx: &Transaction<'_>, trace_id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
    let n = tx.execute(
        "UPDATE crewflow_traces SET finalized_at = ?2 WHERE id = ?1 AND finalized_at IS NULL",
        params![trace_id, ms(at)],
    )?;
    if n > 0 {
        tx.execute(
            "UPDATE crewflow_spans SET ended_us = ?2 WHERE trace_id = ?1 AND span_id = 'session'",
            params![trace_id, at.timestamp_micros()],
        )?;
    }
    Ok(n > 0)
}

fn from_us(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}
