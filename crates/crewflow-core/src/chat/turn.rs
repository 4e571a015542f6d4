//! One turn of a session: [`Flow::handle_turn`] and [`Flow::stream_turn`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::state::{ChatMessage, Conversational};
use super::store::{
    SessionConflict, SessionFilter, SessionLockTimeout, SessionStore, SessionSummary, SpanRecord, TraceSummary,
    TraceWrite, TurnRecord, TurnSave,
};
use super::trace::turn_spans;
use crate::cx::Cx;
use crate::driver::{self, Prepared};
use crate::error::{BoxError, Error};
use crate::event::{Event, EventKind};
use crate::flow::{Flow, FlowInner, Kickoff, Run, StepRuntime};
use crate::id::RunId;
use crate::persist::RunStore;
use crate::scope::TokenUsage;
use crate::state::FlowState;

/// A completed turn.
#[derive(Clone, Debug)]
pub struct Turn {
    /// The session.
    pub session_id: String,
    /// The turn's index in the session, from 0.
    pub index: u64,
    /// The run that handled it.
    pub run_id: RunId,
    /// The reply.
    pub reply: String,
    /// The intent the turn was routed by ([`ChatState::last_intent`](super::ChatState::last_intent)).
    pub intent: Option<String>,
    /// The route labels the turn's routers chose, in order.
    pub routes: Vec<String>,
    /// Tokens the turn's model calls used.
    pub usage: TokenUsage,
    /// How long the turn took, lock wait included.
    pub elapsed: Duration,
    /// Whether older messages were compacted into the summary at the end of this turn.
    pub compacted: bool,
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

/// The events of a turn ([`Flow::stream_turn`]). Dropping the stream before the end cancels
/// the turn: nothing of it is saved.
pub struct TurnStream {
    rx: UnboundedReceiver<Result<TurnEvent, Error>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TurnStream {
    /// The next event, or `None` after the last (a [`TurnEvent::Finished`] or an error).
    pub async fn next(&mut self) -> Option<Result<TurnEvent, Error>> {
        self.rx.recv().await
    }

    /// Waits for the end, ignoring the events, and returns the turn.
    pub async fn finish(mut self) -> Result<Turn, Error> {
        while let Some(item) = self.next().await {
            if let TurnEvent::Finished(turn) = item? {
                return Ok(turn);
            }
        }
        Err(Error::Internal("the turn ended without a result".into()))
    }
}

impl futures::Stream for TurnStream {
    type Item = Result<TurnEvent, Error>;
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

impl<S: Conversational> Cx<S> {
    /// Sets this turn's reply (the last call wins). Without it, a turn's reply is the run's
    /// output when that is a string.
    pub fn reply(&self, text: impl Into<String>) {
        let text = text.into();
        self.update(|s| s.chat_mut().pending_reply = Some(text));
    }

    /// Records the intent this turn is routed by (intent routers call it).
    pub fn set_intent(&self, intent: impl Into<String>) {
        let intent = intent.into();
        self.update(|s| s.chat_mut().last_intent = Some(intent));
    }

    /// The user message of this turn.
    pub fn user_message(&self) -> String {
        self.state(|s| s.chat().last_user_message.clone().unwrap_or_default())
    }

    /// The summary of compacted turns and the recent messages (the flow's window), owned.
    pub fn recent_history(&self) -> (Option<String>, Vec<ChatMessage>) {
        self.state(|s| {
            let h = s.chat().recent();
            (h.summary.map(str::to_string), h.recent.to_vec())
        })
    }
}

/// A session as [`Flow::session`] shows it.
#[derive(Debug)]
pub struct Session<S> {
    /// The session's id.
    pub id: String,
    /// Its state after the last turn.
    pub state: S,
    /// Its turns, in order.
    pub turns: Vec<TurnRecord>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last turn was saved.
    pub updated_at: DateTime<Utc>,
}

type Sink = UnboundedSender<Result<TurnEvent, Error>>;

impl<S: Conversational> Flow<S> {
    /// Runs one turn of session `session_id`: appends `message`, runs the graph, appends the
    /// reply and saves the session (see [`crate::chat`]). A new id starts a fresh session from
    /// the default state.
    pub async fn handle_turn(&self, session_id: &str, message: &str) -> Result<Turn, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime { call: "Flow::handle_turn", instead: "a tokio runtime" });
        }
        self.turn(session_id, message, None).await
    }

    /// [`handle_turn`](Flow::handle_turn), streaming the turn's tokens and events as they
    /// happen, then the turn. Errors arrive on the stream.
    pub fn stream_turn(&self, session_id: &str, message: &str) -> TurnStream {
        let (tx, rx) = unbounded_channel();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let _ = tx.send(Err(Error::NoRuntime { call: "Flow::stream_turn", instead: "a tokio runtime" }));
            return TurnStream { rx, task: None };
        };
        let (flow, session, message) = (self.clone(), session_id.to_string(), message.to_string());
        let task = rt.spawn(async move {
            let result = flow.turn(&session, &message, Some(&tx)).await;
            let _ = tx.send(result.map(TurnEvent::Finished));
        });
        TurnStream { rx, task: Some(task) }
    }

    /// The session's state and turns, or `None` for an unknown id.
    pub async fn session(&self, session_id: &str) -> Result<Option<Session<S>>, Error> {
        let (store, sessions) = self.sessions_store("Flow::session")?;
        let flow = self.name();
        let Some(stored) =
            sessions.load_session(flow, session_id).await.map_err(|e| fail(&store, "load the session", e))?
        else {
            return Ok(None);
        };
        let state = parse_state::<S>(session_id, &stored.state)?;
        let turns = sessions.list_turns(flow, session_id).await.map_err(|e| fail(&store, "list the turns", e))?;
        Ok(Some(Session { id: stored.id, state, turns, created_at: stored.created_at, updated_at: stored.updated_at }))
    }

    /// This flow's sessions, most recently updated first (`limit` 0: 100).
    pub async fn list_sessions(&self, limit: usize) -> Result<Vec<SessionSummary>, Error> {
        let (store, sessions) = self.sessions_store("Flow::list_sessions")?;
        let filter = SessionFilter { flow: Some(self.name().to_string()), limit };
        sessions.list_sessions(&filter).await.map_err(|e| fail(&store, "list the sessions", e))
    }

    /// Deletes a session with its turns and traces; `false` if there was none.
    pub async fn delete_session(&self, session_id: &str) -> Result<bool, Error> {
        let (store, sessions) = self.sessions_store("Flow::delete_session")?;
        sessions.delete_session(self.name(), session_id).await.map_err(|e| fail(&store, "delete the session", e))
    }

    /// Finalizes the session's open trace; `false` when nothing was open. Safe to repeat, and
    /// only this call (or idleness) finalizes: flows run inside a turn never do.
    pub async fn finalize_session(&self, session_id: &str) -> Result<bool, Error> {
        let (store, sessions) = self.sessions_store("Flow::finalize_session")?;
        sessions.finalize_trace(self.name(), session_id).await.map_err(|e| fail(&store, "finalize the trace", e))
    }

    /// Finalizes the traces of this flow's sessions idle for longer than
    /// [`ChatOptions::idle_finalize_after`](super::ChatOptions::idle_finalize_after); returns
    /// how many. Call it periodically; a session's own next turn
    /// does it too.
    pub async fn finalize_idle_sessions(&self) -> Result<u64, Error> {
        let (store, sessions) = self.sessions_store("Flow::finalize_idle_sessions")?;
        let idle = self.inner_chat().options.idle_finalize_after;
        sessions.finalize_idle_traces(self.name(), idle).await.map_err(|e| fail(&store, "finalize idle traces", e))
    }

    /// The session's traces, oldest first.
    pub async fn session_traces(&self, session_id: &str) -> Result<Vec<TraceSummary>, Error> {
        let (store, sessions) = self.sessions_store("Flow::session_traces")?;
        sessions.list_traces(self.name(), session_id).await.map_err(|e| fail(&store, "list the traces", e))
    }

    /// The spans of a trace, in the order they were recorded.
    pub async fn trace_spans(&self, trace_id: &str) -> Result<Vec<SpanRecord>, Error> {
        let (store, sessions) = self.sessions_store("Flow::trace_spans")?;
        sessions.trace_spans(trace_id).await.map_err(|e| fail(&store, "read the trace", e))
    }

    fn sessions_store(&self, call: &'static str) -> Result<(Arc<dyn RunStore>, &dyn SessionStore), Error> {
        let store = self.store().ok_or(Error::NoStore { call })?;
        let sessions = store.sessions().ok_or_else(|| Error::NoSessionStore { store: store.describe() })?;
        Ok((store.clone(), sessions))
    }

    async fn turn(&self, session_id: &str, message: &str, sink: Option<&Sink>) -> Result<Turn, Error> {
        check_session_id(session_id)?;
        let (store, sessions) = self.sessions_store("Flow::handle_turn")?;
        let chat = self.inner_chat();
        let (clock, started_at) = (Instant::now(), Utc::now());
        let wait = chat.options.lock_timeout;
        let busy = || Error::SessionBusy { session: session_id.to_string(), waited: wait };
        let key = format!("{}\0{session_id}", self.name());
        let local = super::lock::process_locks().lock(&key, wait).await.ok_or_else(busy)?;
        let remote = sessions
            .lock_session(self.name(), session_id, wait.saturating_sub(clock.elapsed()))
            .await
            .map_err(|e| session_error(&store, "lock the session", e, wait))?;
        let result = self.locked_turn(&store, sessions, session_id, message, sink, (clock, started_at)).await;
        if let Some(guard) = remote {
            guard.release().await;
        }
        drop(local);
        result
    }

    async fn locked_turn(
        &self,
        store: &Arc<dyn RunStore>,
        sessions: &dyn SessionStore,
        session_id: &str,
        message: &str,
        sink: Option<&Sink>,
        (clock, started_at): (Instant, DateTime<Utc>),
    ) -> Result<Turn, Error> {
        let options = &self.inner_chat().options;
        let stored = sessions
            .load_session(self.name(), session_id)
            .await
            .map_err(|e| session_error(store, "load the session", e, options.lock_timeout))?;
        let (mut state, expected_turns) = match stored {
            Some(s) => (parse_state::<S>(session_id, &s.state)?, s.turns),
            // A new id starts from the default state, never from another session's.
            None => (S::default(), 0),
        };
        state.chat_mut().window = options.window;
        state.chat_mut().compact_after = options.summarize_after;
        state.chat_mut().begin_turn(message);
        let index = state.chat().turns;

        let turn_flow = self.turn_flow();
        let observe = options.traces || sink.is_some();
        let (tx, rx) = if observe { Some(unbounded_channel()).unzip() } else { (None, None) };
        let kickoff = Kickoff::new().payload(message.to_string());
        let prepared = driver::prepare(&turn_flow, kickoff, tx, Some(state))?;
        let run_id = prepared.run_id();
        let (run, events) = drive_observed(turn_flow.clone(), prepared, rx, sink).await;
        let mut run = run.map_err(|e| match e {
            // A turn is answered within the turn: it never pauses (and never reports a paused
            // run as a completed turn, weakness W-A4).
            Error::PauseWithoutStore { step, .. } => Error::PauseInTurn { session: session_id.to_string(), step },
            e => e,
        })?;

        let reply = take_reply(&mut run, &turn_flow, session_id, index)?;
        run.state.chat_mut().end_turn(&reply);
        let compacted = self.compact(&mut run.state).await;
        let chat = run.state.chat();
        let turn = Turn {
            session_id: session_id.to_string(),
            index,
            run_id,
            reply,
            intent: chat.last_intent.clone(),
            routes: routes_of(&run, &turn_flow),
            usage: run.usage(),
            elapsed: clock.elapsed(),
            compacted,
        };
        let save = self.turn_save(&run.state, &turn, message, expected_turns, started_at, &events)?;
        sessions.save_turn(&save).await.map_err(|e| session_error(store, "save the turn", e, options.lock_timeout))?;
        Ok(turn)
    }

    fn turn_save(
        &self,
        state: &S,
        turn: &Turn,
        message: &str,
        expected_turns: u64,
        started_at: DateTime<Utc>,
        events: &[Event],
    ) -> Result<TurnSave, Error> {
        let options = &self.inner_chat().options;
        let finished_at = Utc::now();
        let record = TurnRecord {
            session_id: turn.session_id.clone(),
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
        let state = serde_json::to_string(state).map_err(|e| Error::StateSerialization {
            state_type: std::any::type_name::<S>(),
            action: "converted to",
            message: e.to_string(),
        })?;
        Ok(TurnSave {
            session_id: turn.session_id.clone(),
            flow: self.name().to_string(),
            state,
            expected_turns,
            turn: record,
            trace,
        })
    }

    /// Compacts messages outside the window into the summary when too many are uncovered.
    /// A failing summarizer does not fail the turn: the messages stay, and the next turn
    /// tries again.
    async fn compact(&self, state: &mut S) -> bool {
        let options = &self.inner_chat().options;
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

    fn inner_chat(&self) -> &super::ChatRuntime {
        &self.inner().chat
    }

    /// The flow without its run store, shared by every turn.
    fn turn_flow(&self) -> Arc<FlowInner<S>> {
        let cached = self.inner_chat().turn_flow.get_or_init(|| Box::new(without_store(self.inner())));
        match cached.downcast_ref::<Arc<FlowInner<S>>>() {
            Some(flow) => flow.clone(),
            None => without_store(self.inner()),
        }
    }
}

fn without_store<S>(inner: &FlowInner<S>) -> Arc<FlowInner<S>> {
    Arc::new(FlowInner {
        graph: inner.graph.clone(),
        steps: inner
            .steps
            .iter()
            .map(|s| StepRuntime {
                name: s.name.clone(),
                handler: s.handler.clone(),
                when: s.when.clone(),
                persisted: s.persisted,
                feedback: s.feedback.clone(),
                retry: s.retry.clone(),
            })
            .collect(),
        max_steps: inner.max_steps,
        cancel_grace: inner.cancel_grace,
        observers: inner.observers.clone(),
        input: inner.input.clone(),
        feedback: inner.feedback.clone(),
        store: None,
        lease: inner.lease,
        selective: inner.selective,
        chat: Default::default(),
    })
}

/// Runs the turn's graph, forwarding its events to the stream (if any) and keeping them for
/// the trace.
async fn drive_observed<S: FlowState>(
    flow: Arc<FlowInner<S>>,
    prepared: Prepared<S>,
    rx: Option<UnboundedReceiver<Event>>,
    sink: Option<&Sink>,
) -> (Result<Run<S>, Error>, Vec<Event>) {
    let run = driver::drive(flow, prepared);
    let Some(mut rx) = rx else { return (run.await, Vec::new()) };
    let mut events = Vec::new();
    let mut keep = |e: Event| {
        if let Some(sink) = sink {
            let item = match &e.kind {
                EventKind::LlmChunk { text, .. } => TurnEvent::Token(text.clone()),
                EventKind::ToolCallRequested { id, name, arguments, .. } => {
                    TurnEvent::ToolCall { id: id.clone(), name: name.clone(), arguments: arguments.clone() }
                }
                _ => TurnEvent::Event(e.clone()),
            };
            let _ = sink.send(Ok(item));
        }
        events.push(e);
    };
    let mut run = std::pin::pin!(run);
    let result = loop {
        tokio::select! {
            biased;
            result = &mut run => break result,
            event = rx.recv() => match event {
                Some(e) => keep(e),
                None => break (&mut run).await,
            },
        }
    };
    while let Ok(e) = rx.try_recv() {
        keep(e);
    }
    (result, events)
}

/// The reply: what a step set with `cx.reply`, else the run's output if it is a string.
fn take_reply<S: Conversational>(
    run: &mut Run<S>,
    flow: &FlowInner<S>,
    session: &str,
    index: u64,
) -> Result<String, Error> {
    if let Some(reply) = run.state.chat_mut().pending_reply.take() {
        return Ok(reply);
    }
    // A router's label is how the turn was routed, not what to say.
    let by_router = run.final_step().and_then(|s| flow.graph.step_index(s)).is_some_and(|ix| flow.graph.is_router(ix));
    match run.output::<String>() {
        Ok(text) if !by_router => Ok(text),
        _ => Err(Error::NoReply {
            session: session.to_string(),
            turn: index,
            final_step: run.final_step().map(str::to_string),
        }),
    }
}

fn routes_of<S>(run: &Run<S>, flow: &FlowInner<S>) -> Vec<String> {
    run.steps()
        .iter()
        .filter(|r| flow.graph.step_index(&r.step).is_some_and(|ix| flow.graph.is_router(ix)))
        .filter_map(|r| r.output.get::<String>().ok())
        .collect()
}

fn parse_state<S: FlowState>(session: &str, json: &str) -> Result<S, Error> {
    serde_json::from_str(json)
        .map_err(|e| Error::CorruptSession { session: session.to_string(), message: e.to_string() })
}

fn check_session_id(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > 256 {
        "it is longer than 256 bytes"
    } else if id.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidSessionId { id: id.chars().take(64).collect(), reason })
}

fn fail(store: &Arc<dyn RunStore>, action: &str, e: BoxError) -> Error {
    Error::from_store(store.as_ref(), action, e)
}

fn session_error(store: &Arc<dyn RunStore>, action: &str, e: BoxError, wait: Duration) -> Error {
    let e = match e.downcast::<SessionConflict>() {
        Ok(conflict) => return Error::SessionConflict(*conflict),
        Err(e) => e,
    };
    match e.downcast::<SessionLockTimeout>() {
        Ok(t) => Error::SessionBusy { session: t.session, waited: wait },
        Err(e) => fail(store, action, e),
    }
}
