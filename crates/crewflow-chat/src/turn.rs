//! [`ChatFlow`]: a flow holding sessions, and one turn of a session
//! ([`ChatFlow::handle_turn`], [`ChatFlow::stream_turn`]).

use crewflow_core::FeedbackError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crewflow_core::graph::Graph;
use crewflow_core::{BoxError, Error, Event, EventKind, Flow, Kickoff, Run, RunId, TokenUsage};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::ChatError;
use crate::options::ChatOptions;
use crate::session_id::{AsSessionId, SessionId};
use crate::state::{ChatMessage, Conversational};
use crate::store::{
    SessionFilter, SessionStore, SessionSummary, SpanRecord, StoredSession, TraceSummary, TraceWrite, TurnRecord,
    TurnSave,
};
use crate::trace::turn_spans;

/// A completed turn.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The session.
    pub session_id: SessionId,
    /// The turn's index in the session, from 0.
    pub index: u64,
    /// The run that handled it.
    pub run_id: RunId,
    /// The reply.
    pub reply: String,
    /// The turn's intent ([`ChatState::last_intent`](crate::ChatState::last_intent)): what a
    /// step set with [`ChatCx::set_intent`](crate::ChatCx::set_intent), else the label of the
    /// turn's first router.
    pub intent: Option<String>,
    /// The route labels the turn's routers chose, in order.
    pub routes: Vec<String>,
    /// Tokens the turn's model calls used.
    pub usage: TokenUsage,
    /// How long the turn took, lock wait included.
    pub elapsed: Duration,
    /// Whether older messages were compacted into the summary at the end of this turn.
    pub compacted: bool,
    /// `true` when the turn's key ([`ChatFlow::handle_turn_once`]) named a turn saved before:
    /// this is that turn, read back from the store, and nothing ran. Its `routes` are then
    /// empty and `compacted` is `false` (the store keeps neither), its `elapsed` this call's.
    pub repeated: bool,
}

/// What a streamed turn reports, in order: tokens and events while it runs, then the turn.
#[derive(Debug)]
#[non_exhaustive]
pub enum TurnEvent {
    /// A piece of a streamed model reply.
    Token(String),
    /// A model asked for a tool call.
    ToolCall {
        /// The tool call's id.
        id: String,
        /// The tool.
        name: String,
        /// The arguments, as JSON text.
        arguments: String,
    },
    /// An event of the turn's run (step started, route taken, model call, ...).
    Event(Event),
    /// The turn completed and was saved.
    Finished(Turn),
}

/// The events of a turn ([`ChatFlow::stream_turn`]). Dropping the stream before the end
/// cancels the turn: nothing of it is saved.
pub struct TurnStream {
    rx: UnboundedReceiver<Result<TurnEvent, ChatError>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TurnStream {
    /// The next event, or `None` after the last (a [`TurnEvent::Finished`] or an error).
    pub async fn next(&mut self) -> Option<Result<TurnEvent, ChatError>> {
        self.rx.recv().await
    }

    /// Waits for the end, ignoring the events, and returns the turn.
    pub async fn finish(mut self) -> Result<Turn, ChatError> {
        while let Some(item) = self.next().await {
            if let TurnEvent::Finished(turn) = item? {
                return Ok(turn);
            }
        }
        Err(ChatError::Internal("the turn ended without a result".into()))
    }
}

impl futures::Stream for TurnStream {
    type Item = Result<TurnEvent, ChatError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for TurnStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A session as [`ChatFlow::session`] shows it.
#[derive(Debug)]
pub struct Session<S> {
    /// The session's id.
    pub id: SessionId,
    /// Its state after the last turn.
    pub state: S,
    /// Its turns, in order.
    pub turns: Vec<TurnRecord>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last turn was saved.
    pub updated_at: DateTime<Utc>,
}

type Sink = UnboundedSender<Result<TurnEvent, ChatError>>;

/// A flow that holds conversations: the flow, the store its sessions live in, and its
/// [`ChatOptions`]. Cheap to clone; one `ChatFlow` serves any number of sessions at once.
///
/// The flow is an ordinary [`Flow`] whose state holds a [`ChatState`](crate::ChatState)
/// ([`Conversational`]). Each turn is one run of it, started from the session's state with the
/// user message as the start steps' input, and recorded in the session, not as a run: the
/// flow's own store (if it has one) is left out of turns.
pub struct ChatFlow<S> {
    flow: Flow<S>,
    store: Arc<dyn SessionStore>,
    options: Arc<ChatOptions>,
}

impl<S> Clone for ChatFlow<S> {
    fn clone(&self) -> Self {
        ChatFlow { flow: self.flow.clone(), store: self.store.clone(), options: self.options.clone() }
    }
}

/// One turn as asked: by the public calls, handed on to the locked part.
#[derive(Clone, Copy)]
struct Ask<'a> {
    session: &'a SessionId,
    message: &'a str,
    /// The client's idempotency key (`handle_turn_once`).
    key: Option<&'a str>,
    /// Where a streamed turn's events go.
    sink: Option<&'a Sink>,
    /// Refuse an id the store has no session for (`stream_existing_turn`).
    existing: bool,
}

impl<S: Conversational> ChatFlow<S> {
    /// Holds the conversations of `flow` in `store` (crewflow-store's `SqliteStore` or
    /// `PostgresStore`), with the default [`ChatOptions`].
    pub fn new(flow: Flow<S>, store: impl SessionStore + 'static) -> Self {
        Self::with_shared_store(flow, Arc::new(store))
    }

    /// [`new`](ChatFlow::new) with a store shared with other owners.
    pub fn with_shared_store(flow: Flow<S>, store: Arc<dyn SessionStore>) -> Self {
        ChatFlow { flow, store, options: Arc::new(ChatOptions::default()) }
    }

    /// Sets the history window, summary compaction, lock timeout and traces; options that
    /// cannot work are refused ([`ChatError::InvalidOptions`]).
    pub fn with_options(mut self, options: ChatOptions) -> Result<Self, ChatError> {
        options.check()?;
        self.options = Arc::new(options);
        Ok(self)
    }

    /// The flow.
    pub fn flow(&self) -> &Flow<S> {
        &self.flow
    }

    /// Where the sessions live.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The options.
    pub fn options(&self) -> &ChatOptions {
        &self.options
    }

    /// The flow's name: sessions are kept per flow name, so two flows sharing a store never
    /// share sessions.
    pub fn name(&self) -> &str {
        self.flow.name()
    }

    /// Runs one turn of `session`: appends `message`, runs the graph, appends the reply and
    /// saves the session (see the [crate docs](crate)). A new id starts a fresh session from the
    /// default state. The session comes first and is a [`SessionId`], never a plain string.
    pub async fn handle_turn(&self, session: impl AsSessionId, message: &str) -> Result<Turn, ChatError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime { call: "ChatFlow::handle_turn", instead: "a tokio runtime" }.into());
        }
        self.turn(Ask { session: session.as_session_id(), message, key: None, sink: None, existing: false }).await
    }

    /// [`handle_turn`](ChatFlow::handle_turn), run at most once for `key`: a key the client
    /// makes for each message it sends (a UUID), and sends again when it retries that message
    /// — after a timeout, a dropped connection, a server that died mid-turn. Under the
    /// session's lock, a key the session has saved a turn with answers that turn from the
    /// store ([`Turn::repeated`]) and runs nothing; an unknown key runs the turn, and the key
    /// is saved with it, in the turn's transaction. So a retry never stores the message twice,
    /// whether the first attempt was saved (then it is answered) or not (then it runs now).
    ///
    /// A session remembers the keys of its last [`TURN_KEYS_KEPT`](crate::TURN_KEYS_KEPT)
    /// keyed turns. A key sent again with another message is [`ChatError::TurnKeyReused`]; a
    /// key that is empty, longer than 255 bytes or holds control characters is
    /// [`ChatError::InvalidTurnKey`].
    pub async fn handle_turn_once(
        &self,
        session: impl AsSessionId,
        message: &str,
        key: &str,
    ) -> Result<Turn, ChatError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime { call: "ChatFlow::handle_turn_once", instead: "a tokio runtime" }.into());
        }
        crate::session_id::check_turn_key(key)?;
        self.turn(Ask { session: session.as_session_id(), message, key: Some(key), sink: None, existing: false }).await
    }

    /// [`handle_turn`](ChatFlow::handle_turn), streaming the turn's tokens and events as they
    /// happen, then the turn. Errors arrive on the stream.
    pub fn stream_turn(&self, session: impl AsSessionId, message: &str) -> TurnStream {
        self.stream(session.as_session_id(), message, None, false)
    }

    /// [`handle_turn_once`](ChatFlow::handle_turn_once), streaming like
    /// [`stream_turn`](ChatFlow::stream_turn). A repeated turn streams only its
    /// [`TurnEvent::Finished`].
    pub fn stream_turn_once(&self, session: impl AsSessionId, message: &str, key: &str) -> TurnStream {
        self.stream(session.as_session_id(), message, Some(key), false)
    }

    /// [`stream_turn`](ChatFlow::stream_turn) (with a key,
    /// [`stream_turn_once`](ChatFlow::stream_turn_once)) of a session the store has already:
    /// an id it has no session for is refused with [`ChatError::UnknownSession`] instead of
    /// starting a new session. The check is the turn's own read of the session, under its
    /// lock: no extra read, and no window in which the session could be deleted between a
    /// check and the turn. While another turn of the session runs in this process, the store
    /// is asked at once instead (an unknown id is refused without waiting for that turn);
    /// a turn in another process holding a store's session lock (PostgreSQL) is waited for,
    /// and its session is then known. What a server uses for a turn of a session named by a
    /// client.
    pub fn stream_existing_turn(&self, session: impl AsSessionId, message: &str, key: Option<&str>) -> TurnStream {
        self.stream(session.as_session_id(), message, key, true)
    }

    fn stream(&self, session: &SessionId, message: &str, key: Option<&str>, existing: bool) -> TurnStream {
        let (tx, rx) = unbounded_channel();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let e = Error::NoRuntime { call: "ChatFlow::stream_turn", instead: "a tokio runtime" };
            let _ = tx.send(Err(e.into()));
            return TurnStream { rx, task: None };
        };
        if let Some(Err(e)) = key.map(crate::session_id::check_turn_key) {
            let _ = tx.send(Err(e));
            return TurnStream { rx, task: None };
        }
        let (chat, session, message) = (self.clone(), session.clone(), message.to_string());
        let key = key.map(str::to_string);
        let task = rt.spawn(async move {
            let ask = Ask { session: &session, message: &message, key: key.as_deref(), sink: Some(&tx), existing };
            let result = chat.turn(ask).await;
            let _ = tx.send(result.map(TurnEvent::Finished));
        });
        TurnStream { rx, task: Some(task) }
    }

    /// The session's state and turns, or `None` for an unknown id.
    pub async fn session(&self, session: impl AsSessionId) -> Result<Option<Session<S>>, ChatError> {
        let id = session.as_session_id();
        let Some(stored) =
            self.store.load_session(self.name(), id.as_str()).await.map_err(|e| self.fail("load the session", e))?
        else {
            return Ok(None);
        };
        let (created_at, updated_at) = (stored.created_at, stored.updated_at);
        let (state, _) = self.restore(id, stored)?;
        let turns =
            self.store.list_turns(self.name(), id.as_str()).await.map_err(|e| self.fail("list the turns", e))?;
        Ok(Some(Session { id: id.clone(), state, turns, created_at, updated_at }))
    }

    /// This flow's sessions, most recently updated first (`limit` 0: 100).
    pub async fn list_sessions(&self, limit: usize) -> Result<Vec<SessionSummary>, ChatError> {
        let filter = SessionFilter { flow: Some(self.name().to_string()), limit };
        self.store.list_sessions(&filter).await.map_err(|e| self.fail("list the sessions", e))
    }

    /// Deletes a session with its turns and traces; `false` if there was none.
    pub async fn delete_session(&self, session: impl AsSessionId) -> Result<bool, ChatError> {
        let id = session.as_session_id().as_str();
        self.store.delete_session(self.name(), id).await.map_err(|e| self.fail("delete the session", e))
    }

    /// Finalizes the session's open trace; `false` when nothing was open. Safe to repeat, and
    /// only this call (or idleness) finalizes: flows run inside a turn never do.
    pub async fn finalize_session(&self, session: impl AsSessionId) -> Result<bool, ChatError> {
        let id = session.as_session_id().as_str();
        self.store.finalize_trace(self.name(), id).await.map_err(|e| self.fail("finalize the trace", e))
    }

    /// Finalizes the traces of this flow's sessions idle for longer than
    /// [`ChatOptions::idle_finalize_after`]; returns how many. Call it periodically; a
    /// session's own next turn does it too.
    pub async fn finalize_idle_sessions(&self) -> Result<u64, ChatError> {
        let idle = self.options.idle_finalize_after;
        self.store.finalize_idle_traces(self.name(), idle).await.map_err(|e| self.fail("finalize idle traces", e))
    }

    /// The session's traces, oldest first.
    pub async fn session_traces(&self, session: impl AsSessionId) -> Result<Vec<TraceSummary>, ChatError> {
        let id = session.as_session_id().as_str();
        self.store.list_traces(self.name(), id).await.map_err(|e| self.fail("list the traces", e))
    }

    /// The spans of a trace, in the order they were recorded.
    pub async fn trace_spans(&self, trace_id: &str) -> Result<Vec<SpanRecord>, ChatError> {
        self.store.trace_spans(trace_id).await.map_err(|e| self.fail("read the trace", e))
    }

    fn fail(&self, action: &str, e: BoxError) -> ChatError {
        ChatError::from_store(self.store.describe(), action, e, self.options.lock_timeout)
    }

    async fn turn(&self, ask: Ask<'_>) -> Result<Turn, ChatError> {
        let Ask { session, existing, .. } = ask;
        let (clock, started_at) = (Instant::now(), Utc::now());
        let wait = self.options.lock_timeout;
        let busy = || ChatError::SessionBusy { session: session.to_string(), waited: wait };
        let lock = format!("{}\0{session}", self.name());
        let locks = crate::lock::process_locks();
        let local = match locks.try_lock(&lock) {
            Some(local) => local,
            None => {
                // Another turn of it runs here: an unknown session is refused now, not after
                // that turn (which may be the one creating it) lets go.
                if existing && !self.is_stored(session).await? {
                    return Err(ChatError::UnknownSession { session: session.to_string() });
                }
                locks.lock(&lock, wait).await.ok_or_else(busy)?
            }
        };
        // The lock, and under it the session as the turn reads it (one round trip where the
        // store sends both together).
        let left = wait.saturating_sub(clock.elapsed());
        let (remote, stored) = self
            .store
            .lock_and_load(self.name(), session.as_str(), left, self.options.turn_loads())
            .await
            .map_err(|e| self.fail("lock and load the session", e))?;
        let result = self.locked_turn(ask, (clock, started_at), stored).await;
        if let Some(guard) = remote {
            guard.release().await;
        }
        drop(local);
        result
    }

    async fn locked_turn(
        &self,
        ask: Ask<'_>,
        (clock, started_at): (Instant, DateTime<Utc>),
        stored: Option<StoredSession>,
    ) -> Result<Turn, ChatError> {
        let Ask { session, message, key, sink, existing } = ask;
        let options = &self.options;
        let (mut state, expected_turns, loaded) = match self.load_for_turn(session, stored).await? {
            Some((state, turns, loaded)) => (state, turns, loaded),
            None if existing => return Err(ChatError::UnknownSession { session: session.to_string() }),
            // A new id starts from the default state, never from another session's.
            None => (S::default(), 0, Loaded::default()),
        };
        // Looked up under the lock: a turn saved with this key by any process is seen here.
        if let Some((key, turn)) = key.and_then(|k| Some((k, state.chat().turn_of_key(k)?))) {
            return self.repeated_turn(session, message, key, turn, clock).await;
        }
        state.chat_mut().window = options.window;
        state.chat_mut().compact_after = options.summarize_after;
        state.chat_mut().begin_turn(message);
        let index = state.chat().turns;

        // The turn's durable record is the session (one row), not a run record per turn
        // holding the transcript again: the run is recorded in no store.
        let hosted = self.flow.host(Kickoff::new().payload(message.to_string())).state(state).without_store();
        let mut events = Vec::new();
        let run = if options.traces || sink.is_some() {
            hosted
                .run_with_events(|e| {
                    if let Some(sink) = sink {
                        let _ = sink.send(Ok(turn_event(&e)));
                    }
                    events.push(e);
                })
                .await
        } else {
            hosted.run().await
        };
        let mut run = run.map_err(|e| match e {
            // A turn is answered within the turn: it never pauses (and never reports a paused
            // run as a completed turn, weakness W-A4).
            Error::Feedback(FeedbackError::PauseWithoutStore { step, .. }) => {
                ChatError::PauseInTurn { session: session.to_string(), step }
            }
            e => ChatError::Run(e),
        })?;

        let graph = self.flow.graph();
        let routes = routes_of(&run, graph);
        let reply = take_reply(&mut run, graph, session, index)?;
        let chat = run.state.chat_mut();
        if chat.last_intent.is_none() {
            // Intents are routes: the first router's label, unless a step said otherwise.
            chat.last_intent = routes.first().cloned();
        }
        chat.end_turn(&reply);
        if let Some(key) = key {
            chat.remember_key(key, index); // saved with the turn, in its transaction
        }
        let compacted = self.compact(&mut run.state).await;
        let turn = Turn {
            session_id: session.clone(),
            index,
            run_id: run.id,
            reply,
            intent: run.state.chat().last_intent.clone(),
            routes,
            usage: run.usage(),
            elapsed: clock.elapsed(),
            compacted,
            repeated: false,
        };
        let save = self.turn_save(run.state, loaded, &turn, message, expected_turns, started_at, &events)?;
        self.store.save_turn(&save).await.map_err(|e| self.fail("save the turn", e))?;
        Ok(turn)
    }

    /// The turn saved with `key` (turn `index`), read back from the store: nothing runs.
    async fn repeated_turn(
        &self,
        session: &SessionId,
        message: &str,
        key: &str,
        index: u64,
        clock: Instant,
    ) -> Result<Turn, ChatError> {
        let turns =
            self.store.list_turns(self.name(), session.as_str()).await.map_err(|e| self.fail("list the turns", e))?;
        let Some(record) = turns.into_iter().find(|t| t.index == index) else {
            return Err(ChatError::Internal(format!(
                "session `{session}` remembers turn key `{key}` for turn {index}, which is not stored"
            )));
        };
        if record.user_message != message {
            return Err(ChatError::TurnKeyReused { session: session.to_string(), key: key.to_string(), turn: index });
        }
        Ok(Turn {
            session_id: session.clone(),
            index,
            run_id: record.run_id,
            reply: record.reply,
            intent: record.intent,
            routes: Vec::new(),
            usage: record.usage,
            elapsed: clock.elapsed(),
            compacted: false,
            repeated: true,
        })
    }

    /// Whether the store has the session (read without its lock).
    async fn is_stored(&self, session: &SessionId) -> Result<bool, ChatError> {
        let found = self.store.load_session_tail(self.name(), session.as_str(), 0).await;
        Ok(found.map_err(|e| self.fail("load the session", e))?.is_some())
    }

    /// The session's state with the end of its transcript a turn needs (see
    /// [`ChatOptions::whole_transcript`]), its turn count, and what was loaded; `stored` is
    /// what was read with the lock.
    async fn load_for_turn(
        &self,
        session: &SessionId,
        stored: Option<StoredSession>,
    ) -> Result<Option<(S, u64, Loaded)>, ChatError> {
        let Some(stored) = stored else { return Ok(None) };
        let (turns, count) = (stored.turns, stored.message_count);
        let (state, loaded) = self.restore(session, stored)?;
        // Compaction summarizes every message the summary does not cover; after a summarizer
        // failed for a few turns there are more of them than a turn loads: read them all.
        let backlog = state.chat().summary.is_some() && loaded.summarized.0 < loaded.from as usize;
        if !(backlog && self.options.summarize_after.is_some()) {
            return Ok(Some((state, turns, loaded)));
        }
        let uncovered = count.saturating_sub(loaded.summarized.0 as u64);
        let reloaded = self.store.load_session_tail(self.name(), session.as_str(), uncovered).await;
        let Some(stored) = reloaded.map_err(|e| self.fail("load the session", e))? else { return Ok(None) };
        let turns = stored.turns;
        let (state, loaded) = self.restore(session, stored)?;
        Ok(Some((state, turns, loaded)))
    }

    /// A stored session's state, its transcript (what was read of it) put back into it.
    fn restore(&self, session: &SessionId, stored: StoredSession) -> Result<(S, Loaded), ChatError> {
        let mut state = self.parse_state(session, &stored)?;
        let chat = state.chat_mut();
        if !chat.messages.is_empty() {
            // Written before transcripts were rows, and not converted by the store's
            // migration: the state holds the whole transcript. Its next save writes it all.
            let summarized = chat.summarized;
            return Ok((state, Loaded { from: 0, kept: Vec::new(), summarized: (summarized, summarized) }));
        }
        let from = stored.messages_from;
        chat.messages = stored.messages;
        chat.transcript_offset = from as usize;
        let stored_summarized = chat.summarized;
        chat.summarized = stored_summarized.saturating_sub(from as usize);
        let loaded = Loaded { from, kept: chat.messages.clone(), summarized: (stored_summarized, chat.summarized) };
        Ok((state, loaded))
    }

    #[allow(clippy::too_many_arguments)] // one call site: the turn's parts
    fn turn_save(
        &self,
        mut state: S,
        loaded: Loaded,
        turn: &Turn,
        message: &str,
        expected_turns: u64,
        started_at: DateTime<Utc>,
        events: &[Event],
    ) -> Result<TurnSave, ChatError> {
        let options = &self.options;
        let finished_at = Utc::now();
        let record = TurnRecord {
            session_id: turn.session_id.to_string(),
            index: turn.index,
            run_id: turn.run_id,
            user_message: message.to_string(),
            reply: turn.reply.clone(),
            intent: turn.intent.clone(),
            usage: turn.usage,
            started_at,
            finished_at,
        };
        let trace = options.traces.then(|| {
            let attributes = json!({
                "run_id": turn.run_id.to_string(),
                "intent": turn.intent,
                "routes": turn.routes,
                "usage": turn.usage,
            });
            TraceWrite {
                new_trace_id: RunId::new().to_string(),
                idle_after: Some(options.idle_finalize_after),
                spans: turn_spans(turn.index, started_at, finished_at, attributes, events),
            }
        });
        // The transcript goes in rows of its own: only what this turn added (or, if it changed
        // messages it loaded, everything from the first of them).
        let chat = state.chat_mut();
        let mut messages = std::mem::take(&mut chat.messages);
        let (stored_summarized, loaded_summarized) = loaded.summarized;
        chat.summarized = if chat.summarized == loaded_summarized {
            stored_summarized // unchanged (and kept exact when it was before the loaded messages)
        } else {
            loaded.from as usize + chat.summarized
        };
        let kept = loaded.kept.len();
        let (messages_from, messages) = if messages.len() >= kept && messages[..kept] == loaded.kept[..] {
            (loaded.from + kept as u64, messages.split_off(kept))
        } else {
            (loaded.from, messages)
        };
        let state = serde_json::to_string(&state).map_err(|e| Error::StateSerialization {
            state_type: std::any::type_name::<S>(),
            action: "converted to",
            message: e.to_string(),
        })?;
        Ok(TurnSave {
            session_id: turn.session_id.to_string(),
            flow: self.name().to_string(),
            state,
            state_version: self.flow.state_version(),
            expected_turns,
            messages_from,
            messages,
            turn: record,
            trace,
        })
    }

    /// A stored session's state, read at the flow's state version (migrated if older).
    fn parse_state(&self, session: &SessionId, stored: &StoredSession) -> Result<S, ChatError> {
        self.flow
            .decode_state(stored.state_version, &stored.state)
            .map_err(|source| ChatError::CorruptSession { session: session.to_string(), source })
    }

    /// Compacts messages outside the window into the summary when too many are uncovered.
    /// A failing summarizer does not fail the turn: the messages stay, and the next turn
    /// tries again.
    async fn compact(&self, state: &mut S) -> bool {
        let options = &self.options;
        let (Some(after), Some(summarizer)) = (options.summarize_after, options.summarizer.clone()) else {
            return false;
        };
        let chat = state.chat();
        let covered = chat.summarized.min(chat.messages.len());
        if chat.messages.len() - covered <= after {
            return false;
        }
        let upto = chat.messages.len().saturating_sub(options.window);
        let older = &chat.messages[covered..upto];
        match summarizer.summarize(chat.summary.as_deref(), older).await {
            Ok(summary) => {
                let chat = state.chat_mut();
                chat.summary = Some(summary);
                chat.summarized = upto;
                true
            }
            Err(_) => false,
        }
    }
}

/// What a turn read of its session's transcript, so that its save writes only what changed.
#[derive(Default)]
struct Loaded {
    /// The index of the first loaded message in the transcript.
    from: u64,
    /// The loaded messages, as loaded.
    kept: Vec<ChatMessage>,
    /// `summarized` as stored (from the transcript's start) and as the turn's state has it
    /// (from the first loaded message).
    summarized: (usize, usize),
}

/// An event of the turn's run as the turn stream reports it.
fn turn_event(e: &Event) -> TurnEvent {
    match &e.kind {
        EventKind::LlmChunk { text, .. } => TurnEvent::Token(text.clone()),
        EventKind::ToolCallRequested { id, name, arguments, .. } => {
            TurnEvent::ToolCall { id: id.clone(), name: name.clone(), arguments: arguments.clone() }
        }
        _ => TurnEvent::Event(e.clone()),
    }
}

/// The reply: what a step set with `cx.reply`, else the run's output if it is a string.
fn take_reply<S: Conversational>(
    run: &mut Run<S>,
    graph: &Graph,
    session: &SessionId,
    index: u64,
) -> Result<String, ChatError> {
    if let Some(reply) = run.state.chat_mut().pending_reply.take() {
        return Ok(reply);
    }
    // A router's label is how the turn was routed, not what to say.
    let by_router = run.final_step().and_then(|s| graph.step_index(s)).is_some_and(|ix| graph.is_router(ix));
    match run.output::<String>() {
        Ok(text) if !by_router => Ok(text),
        _ => Err(ChatError::NoReply {
            session: session.to_string(),
            turn: index,
            final_step: run.final_step().map(str::to_string),
        }),
    }
}

/// The labels the run's routers chose, in the order they finished.
fn routes_of<S>(run: &Run<S>, graph: &Graph) -> Vec<String> {
    run.steps()
        .iter()
        .filter(|r| graph.step_index(&r.step).is_some_and(|ix| graph.is_router(ix)))
        .filter_map(|r| r.output.get::<String>().ok())
        .collect()
}
