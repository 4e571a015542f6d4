//! Where sessions, their turns and their traces live: the interface a store implements.
//!
//! This crate knows no SQL: `crewflow-store` implements [`SessionStore`] for SQLite and
//! PostgreSQL (its `chat` feature), and a [`ChatFlow`](crate::ChatFlow) is given one.
//! A session is one row (its state, without the transcript, replaced at each turn), its
//! transcript as one row per message (appended, never rewritten by a turn that only adds to
//! it), one record per turn, and its traces. A turn reads the session's end of the transcript
//! only ([`SessionStore::load_session_tail`]), so its cost does not grow with the session.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crewflow_core::persist::StoreFuture;
use crewflow_core::{RunId, TokenUsage};

use crate::state::ChatMessage;

/// A session as stored.
#[derive(Clone, Debug)]
pub struct StoredSession {
    /// The caller's id.
    pub id: String,
    /// The flow it belongs to.
    pub flow: String,
    /// The state after the last turn, as JSON text. Its transcript is
    /// [`messages`](StoredSession::messages), kept apart: the state's own `messages` is empty
    /// (except in a session written before transcripts were kept as rows that its store's
    /// migration could not convert; its next turn converts it).
    pub state: String,
    /// The version of the state's type it was written at (0 for sessions written before
    /// versions; see `crewflow_core::versions`).
    pub state_version: u32,
    /// How many turns completed.
    pub turns: u64,
    /// The messages read with the session, oldest first: the whole transcript
    /// ([`load_session`](SessionStore::load_session)) or its end
    /// ([`load_session_tail`](SessionStore::load_session_tail)).
    pub messages: Vec<ChatMessage>,
    /// The index of `messages[0]` in the transcript (0 when it is read whole).
    pub messages_from: u64,
    /// How many messages the stored transcript holds.
    pub message_count: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last turn was saved.
    pub updated_at: DateTime<Utc>,
}

/// The record of one completed turn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnRecord {
    /// The session.
    pub session_id: String,
    /// The turn's index in the session, from 0.
    pub index: u64,
    /// The run that handled it.
    pub run_id: RunId,
    /// What the user said.
    pub user_message: String,
    /// The reply.
    pub reply: String,
    /// The intent the turn was routed by, if any.
    pub intent: Option<String>,
    /// Tokens the turn's model calls used.
    pub usage: TokenUsage,
    /// When the turn started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

/// One span of a trace: the session, a turn, a step, a model call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// Unique within the trace: `session`, `t3` (turn 3), `t3.s2` (activation 2 of turn 3),
    /// `t3.l1` (model call 1 of turn 3).
    pub span_id: String,
    /// The enclosing span (`None` for the session span).
    pub parent_id: Option<String>,
    /// `session`, `turn`, `step`, `llm_call`, `tool_call`.
    pub kind: String,
    /// The step's name, the model, `turn 3`, ...
    pub name: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (`None` while open: the session span until the trace is finalized).
    pub ended_at: Option<DateTime<Utc>>,
    /// Everything else (route taken, token usage, error, ...), as JSON.
    pub attributes: serde_json::Value,
}

/// A trace: one per session (until finalized; a later turn then opens a new one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    /// The trace's id.
    pub trace_id: String,
    /// The session.
    pub session_id: String,
    /// The flow.
    pub flow: String,
    /// How many turns it spans.
    pub turns: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When its last turn was added.
    pub updated_at: DateTime<Utc>,
    /// When it was finalized (`None`: still open).
    pub finalized_at: Option<DateTime<Utc>>,
}

/// The spans of one turn, to add to the session's open trace.
#[derive(Clone, Debug)]
pub struct TraceWrite {
    /// A new trace's id, used when the session has no open trace (or its trace was idle too long).
    pub new_trace_id: String,
    /// An open trace idle for longer than this is finalized first, and the turn opens a new one.
    pub idle_after: Option<Duration>,
    /// The turn's spans (the session span is created with the trace).
    pub spans: Vec<SpanRecord>,
}

/// Everything a completed turn writes, in one transaction.
#[derive(Clone, Debug)]
pub struct TurnSave {
    /// The session.
    pub session_id: String,
    /// The flow.
    pub flow: String,
    /// The state after the turn, as JSON text, without its transcript (see
    /// [`messages`](TurnSave::messages)).
    pub state: String,
    /// The version of the state's type.
    pub state_version: u32,
    /// How many turns the session had when this turn loaded it; the save fails with
    /// [`SessionConflict`] if another turn was saved in between.
    pub expected_turns: u64,
    /// Where [`messages`](TurnSave::messages) go in the transcript: the stored messages from
    /// this index on are replaced by them. A turn that only added messages gives the stored
    /// count (nothing is replaced: the messages are appended); one that changed or removed
    /// messages it loaded gives the index of its first loaded message. Past the stored count
    /// (a gap) the save is refused.
    pub messages_from: u64,
    /// The transcript's messages from [`messages_from`](TurnSave::messages_from) on, as they
    /// are after the turn.
    pub messages: Vec<ChatMessage>,
    /// The turn.
    pub turn: TurnRecord,
    /// The turn's spans, if the flow keeps traces.
    pub trace: Option<TraceWrite>,
}

/// One line of a session listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session.
    pub id: String,
    /// Its flow.
    pub flow: String,
    /// How many turns completed.
    pub turns: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last turn was saved.
    pub updated_at: DateTime<Utc>,
}

/// Which sessions to list.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    /// Only sessions of this flow.
    pub flow: Option<String>,
    /// At most this many (most recently updated first); 0 means 100.
    pub limit: usize,
}

/// The save was refused: the session changed since this turn loaded it — another turn was
/// saved (two processes ran turns of one session without a cross-process lock), or the session
/// was deleted.
#[derive(Debug)]
pub struct SessionConflict {
    /// The session.
    pub session: String,
    /// The turn count the turn started from.
    pub expected: u64,
    /// The turn count found at save time (0: the session is gone).
    pub found: u64,
}

impl std::fmt::Display for SessionConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let session = &self.session;
        if self.found == 0 && self.expected > 0 {
            write!(
                f,
                "session `{session}` was deleted while this turn ran; nothing of this turn was saved (a new turn starts a fresh session)"
            )
        } else {
            write!(
                f,
                "session `{session}` changed while this turn ran (it had {} turns, now {}); nothing of this turn was saved. Run turns of one session one at a time across processes (PostgreSQL session locks do), then retry",
                self.expected, self.found
            )
        }
    }
}

impl std::error::Error for SessionConflict {}

/// A session lock held across processes; released by [`release`](SessionGuard::release), or
/// in the background when dropped.
pub struct SessionGuard {
    release: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl SessionGuard {
    /// A guard whose release runs `release`.
    pub fn new(release: impl Future<Output = ()> + Send + 'static) -> Self {
        SessionGuard { release: Some(Box::pin(release)) }
    }

    /// Releases the lock now.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            release.await;
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // A turn that was cancelled or panicked: release in the background. Without a runtime
        // the future is dropped, and the store's own guard must release (closing its connection).
        if let (Some(release), Ok(rt)) = (self.release.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(release);
        }
    }
}

/// Where sessions, turns and traces are kept. Implemented by `crewflow-store` (feature `chat`)
/// for SQLite and PostgreSQL.
///
/// Errors are boxed; a store reports a refused save as a [`SessionConflict`] and a lock wait
/// that ran out as a [`SessionLockTimeout`] (boxed as those types, so a turn can tell them
/// apart).
pub trait SessionStore: Send + Sync {
    /// The store, for error messages (a path or URL, without secrets).
    fn describe(&self) -> String;

    /// The session with its whole transcript, or `None` if the store has none with this id
    /// (for this flow).
    fn load_session<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Option<StoredSession>>;

    /// The session with the last `last` messages of its transcript (all of them when it holds
    /// fewer), read in one snapshot: what a turn reads. The default reads the whole transcript
    /// and keeps its end; a store reads only the end, so a turn's cost does not grow with the
    /// session.
    fn load_session_tail<'a>(
        &'a self,
        flow: &'a str,
        id: &'a str,
        last: u64,
    ) -> StoreFuture<'a, Option<StoredSession>> {
        Box::pin(async move {
            let mut session = self.load_session(flow, id).await?;
            if let Some(s) = session.as_mut() {
                let skip = s.messages.len().saturating_sub(usize::try_from(last).unwrap_or(usize::MAX));
                s.messages.drain(..skip);
                s.messages_from += skip as u64;
            }
            Ok(session)
        })
    }

    /// Saves a turn in one transaction: the session's state (creating the session on its
    /// first turn), its messages ([`TurnSave::messages`] from
    /// [`messages_from`](TurnSave::messages_from) on), the turn record, and its spans. Fails
    /// with [`SessionConflict`] when the session's turn count is not `save.expected_turns`,
    /// writing nothing.
    fn save_turn<'a>(&'a self, save: &'a TurnSave) -> StoreFuture<'a, ()>;

    /// Lists sessions, most recently updated first.
    fn list_sessions<'a>(&'a self, filter: &'a SessionFilter) -> StoreFuture<'a, Vec<SessionSummary>>;

    /// The turns of a session, in order.
    fn list_turns<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Vec<TurnRecord>>;

    /// Deletes a session, its transcript, its turns and its traces; returns whether it existed.
    fn delete_session<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, bool>;

    /// Takes the session's lock across processes, waiting at most `wait`; `Ok(None)` when the
    /// store has no such locks (one process per store: the in-process lock is enough), and
    /// an error of type [`SessionLockTimeout`] when the wait ran out.
    fn lock_session<'a>(
        &'a self,
        _flow: &'a str,
        _id: &'a str,
        _wait: Duration,
    ) -> StoreFuture<'a, Option<SessionGuard>> {
        Box::pin(async { Ok(None) })
    }

    /// Takes the session's lock as [`lock_session`](Self::lock_session) does, then reads the
    /// session under it: with its last `last` messages as
    /// [`load_session_tail`](Self::load_session_tail) does, or whole (`None`). What a turn
    /// does first. The default makes the two calls in turn; a store may send both at once
    /// (PostgreSQL does, on the lock's own connection, where the read runs after the lock is
    /// taken).
    fn lock_and_load<'a>(
        &'a self,
        flow: &'a str,
        id: &'a str,
        wait: Duration,
        last: Option<u64>,
    ) -> StoreFuture<'a, (Option<SessionGuard>, Option<StoredSession>)> {
        Box::pin(async move {
            let guard = self.lock_session(flow, id, wait).await?;
            let session = match last {
                Some(last) => self.load_session_tail(flow, id, last).await?,
                None => self.load_session(flow, id).await?,
            };
            Ok((guard, session))
        })
    }

    /// Finalizes the session's open trace (closing its session span); `false` when it had no
    /// open trace (already finalized, or none yet). Safe to repeat.
    fn finalize_trace<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, bool>;

    /// Finalizes every open trace of `flow`'s sessions whose last turn is older than `idle`;
    /// returns how many.
    fn finalize_idle_traces<'a>(&'a self, flow: &'a str, idle: Duration) -> StoreFuture<'a, u64>;

    /// The traces of a session, oldest first.
    fn list_traces<'a>(&'a self, flow: &'a str, id: &'a str) -> StoreFuture<'a, Vec<TraceSummary>>;

    /// The spans of a trace, in the order they were recorded.
    fn trace_spans<'a>(&'a self, trace_id: &'a str) -> StoreFuture<'a, Vec<SpanRecord>>;
}

/// The cross-process session lock could not be taken in time.
#[derive(Debug, thiserror::Error)]
#[error("the lock of session `{session}` is held by another process")]
pub struct SessionLockTimeout {
    /// The session.
    pub session: String,
}
