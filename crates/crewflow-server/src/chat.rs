//! Conversational flows (`crewflow-chat`) of any state type behind one object-safe face.

use std::future::Future;
use std::pin::Pin;

use crewflow_chat::{ChatError, ChatFlow, Conversational, SessionId, SessionSummary, TurnStream};
use crewflow_core::graph::Graph;
use serde_json::{Value, json};

/// A boxed future of a session call.
pub(crate) type ChatFut<T> = Pin<Box<dyn Future<Output = Result<T, ChatError>> + Send>>;

/// What the server needs of a chat flow, whatever its state type.
pub(crate) trait HostedChat: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn graph(&self) -> &Graph;
    fn inputs(&self) -> Value;
    /// Runs one turn, streaming its events ([`ChatFlow::stream_turn`]); with a key, at most
    /// once for it ([`ChatFlow::stream_turn_once`]). `existing`: only if the store has the
    /// session ([`ChatFlow::stream_existing_turn`]), `ChatError::UnknownSession` otherwise.
    fn stream_turn(&self, session: &SessionId, message: &str, key: Option<&str>, existing: bool) -> TurnStream;
    /// The session's history: its messages and turns; `None` for an unknown id.
    fn history(&self, session: SessionId) -> ChatFut<Option<Value>>;
    fn list(&self, limit: usize) -> ChatFut<Vec<SessionSummary>>;
    fn delete(&self, session: SessionId) -> ChatFut<bool>;
    fn exists(&self, session: SessionId) -> ChatFut<bool>;
}

impl<S: Conversational> HostedChat for ChatFlow<S> {
    fn name(&self) -> &str {
        ChatFlow::name(self)
    }

    fn graph(&self) -> &Graph {
        self.flow().graph()
    }

    fn inputs(&self) -> Value {
        // A turn's input is its message; the state is the session's.
        json!({"message": {"type": "string", "default": ""}})
    }

    fn stream_turn(&self, session: &SessionId, message: &str, key: Option<&str>, existing: bool) -> TurnStream {
        match (key, existing) {
            (_, true) => ChatFlow::stream_existing_turn(self, session, message, key),
            (Some(key), false) => ChatFlow::stream_turn_once(self, session, message, key),
            (None, false) => ChatFlow::stream_turn(self, session, message),
        }
    }

    fn history(&self, session: SessionId) -> ChatFut<Option<Value>> {
        let chat = self.clone();
        Box::pin(async move {
            let Some(s) = chat.session(&session).await? else { return Ok(None) };
            let mut traces = Vec::new();
            for trace in chat.session_traces(&session).await? {
                let spans = chat.trace_spans(&trace.trace_id).await?;
                traces.push(json!({"trace": trace, "spans": spans}));
            }
            let state = s.state.chat();
            Ok(Some(json!({
                "id": s.id.as_str(),
                "flow": chat.name(),
                "messages": state.messages,
                "summary": state.summary,
                "turns": s.turns,
                "traces": traces,
                "created_at": s.created_at,
                "updated_at": s.updated_at,
            })))
        })
    }

    fn list(&self, limit: usize) -> ChatFut<Vec<SessionSummary>> {
        let chat = self.clone();
        Box::pin(async move { chat.list_sessions(limit).await })
    }

    fn delete(&self, session: SessionId) -> ChatFut<bool> {
        let chat = self.clone();
        Box::pin(async move { chat.delete_session(&session).await })
    }

    fn exists(&self, session: SessionId) -> ChatFut<bool> {
        let chat = self.clone();
        Box::pin(async move {
            Ok(chat
                .store()
                .load_session_tail(chat.name(), session.as_str(), 0)
                .await
                .map_err(|e| ChatError::Store {
                    store: chat.store().describe(),
                    action: "load the session".into(),
                    source: e,
                })?
                .is_some())
        })
    }
}
