//! # crewflow-chat: conversations on crewflow flows
//!
//! A conversation is a chain of turns sharing one state: the transcript and whatever else the
//! flow remembers. This crate runs them on ordinary crewflow flows. A flow whose state holds a
//! [`ChatState`] (or embeds one, see [`Conversational`]) becomes a [`ChatFlow`] once it is
//! given a [`SessionStore`] (crewflow-store's SQLite or PostgreSQL store). Then each
//! [`handle_turn`](ChatFlow::handle_turn) is one run of the flow:
//!
//! 1. take the session's lock (in-process; across processes too when the store has such
//!    locks), waiting at most [`ChatOptions::lock_timeout`] ([`ChatError::SessionBusy`]);
//! 2. load the session's state from the store, or start from the default state for a new id;
//! 3. append the user message (once), clear the last intent;
//! 4. run the graph: the start steps get the user message as their input; a router may route
//!    by intent; a step replies with [`ChatCx::reply`] or by returning a string;
//! 5. append the reply (once), compact old turns into a summary when configured;
//! 6. save the state, the turn record and the turn's trace spans in one transaction;
//! 7. release the lock.
//!
//! A failed turn saves nothing (the user message is not half-saved).
//!
//! ## A two-turn conversation
//!
//! ```
//! use crewflow_chat::{ChatCx, ChatFlow, ChatState, Role, SessionId};
//! use crewflow_core::{Cx, FlowBuilder};
//! use crewflow_store::SqliteStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let flow = FlowBuilder::<ChatState>::new("echo")
//!     .start("answer", |cx: Cx<ChatState>, message: String| async move {
//!         let turn = cx.state(|s| s.turns);
//!         cx.reply(format!("turn {turn}: you said {message}")); // or return a String
//!         Ok(())
//!     })
//!     .build()?;
//! // Sessions live in the store: a file (`SqliteStore::open("chat.db")`) survives restarts.
//! let chat = ChatFlow::new(flow, SqliteStore::in_memory());
//!
//! let ada = SessionId::new("ada")?; // checked once, here; never a plain string
//! let first = chat.handle_turn(&ada, "hello").await?;
//! assert_eq!((first.index, first.reply.as_str()), (0, "turn 0: you said hello"));
//! let second = chat.handle_turn(&ada, "again").await?;
//! assert_eq!((second.index, second.reply.as_str()), (1, "turn 1: you said again"));
//!
//! let session = chat.session(&ada).await?.expect("the session was saved");
//! let transcript: Vec<_> = session.state.messages.iter().map(|m| (m.role, m.content.as_str())).collect();
//! assert_eq!(
//!     transcript,
//!     [
//!         (Role::User, "hello"),
//!         (Role::Assistant, "turn 0: you said hello"),
//!         (Role::User, "again"),
//!         (Role::Assistant, "turn 1: you said again"),
//!     ]
//! );
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! ## What is where
//!
//! - [`ChatFlow`]: turns ([`handle_turn`](ChatFlow::handle_turn),
//!   [`stream_turn`](ChatFlow::stream_turn), which yields [`TurnEvent`]s: tokens, run events,
//!   then the [`Turn`]) and sessions (show, list, delete, traces). [`ChatOptions`] set the
//!   history window, summaries ([`Summarizer`], implemented for `crewflow_llm::Llm`), the lock
//!   timeout and traces.
//! - [`SessionId`]: a checked id; turn calls take one ([`AsSessionId`]), never a plain string,
//!   so a message cannot be taken for a session.
//! - [`ChatCx`]: what a step adds to its `Cx`: [`reply`](ChatCx::reply),
//!   [`set_intent`](ChatCx::set_intent), [`user_message`](ChatCx::user_message),
//!   [`recent_messages`](ChatCx::recent_messages) (the history as `crewflow_llm::Message`s,
//!   ready for a model).
//! - [`ChatState`], [`ChatMessage`] (its [`Role`] is crewflow-llm's, and it converts into a
//!   `crewflow_llm::Message`), [`History`].
//! - Intents are routes: a router returns the intent as its label (`crewflow_llm::Intents`
//!   classifies by example utterances), and the label of a turn's first router is the turn's
//!   intent unless a step called [`set_intent`](ChatCx::set_intent).
//! - [`SessionStore`] and its records: the interface a store implements.
//! - [`ChatError`]: the conversation's errors; a failed run is [`ChatError::Run`].
//!
//! ## Read next
//!
//! `docs/chat.md` (a turn step by step, intents, history growth, traces, CrewAI's spelling next
//! to ours); `examples/support_chat` (a terminal support assistant on the local models);
//! `crewflow_core::host`, the seam a turn runs its flow through (a server uses it too).

mod cx;
mod error;
mod lock;
mod options;
mod session_id;
mod state;
mod store;
mod trace;
mod turn;

pub use crewflow_llm::{Message, Role};
pub use cx::ChatCx;
pub use error::ChatError;
pub use options::{ChatOptions, Summarizer, SummaryFuture};
pub use session_id::{AsSessionId, MAX_SESSION_ID_BYTES, SessionId, check_turn_key};
pub use state::{ChatMessage, ChatState, Conversational, History, TURN_KEYS_KEPT};
pub use store::{
    SessionConflict, SessionFilter, SessionGuard, SessionLockTimeout, SessionStore, SessionSummary, SpanRecord,
    StoredSession, TraceSummary, TraceWrite, TurnRecord, TurnSave,
};
pub use turn::{ChatFlow, Session, Turn, TurnEvent, TurnStream};
