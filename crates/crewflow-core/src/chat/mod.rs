//! Conversations: flows that hold multi-turn sessions.
//!
//! A conversational flow's state implements [`Conversational`] (it holds a [`ChatState`]).
//! [`Flow::handle_turn`](crate::Flow::handle_turn) runs one turn of a session:
//!
//! 1. take the session's lock (in-process; across processes too when the store has such
//!    locks), waiting at most [`ChatOptions::lock_timeout`] ([`Error::SessionBusy`](crate::Error::SessionBusy));
//! 2. load the session's state from the store, or start from the default state for a new id;
//! 3. append the user message (once), clear the last intent;
//! 4. run the graph: the start steps get the user message as their input; a router may route by
//!    intent; a step replies with [`Cx::reply`](crate::Cx::reply) or by returning a string;
//! 5. append the reply (once), compact old turns into a summary when configured;
//! 6. save the state, the turn record and the turn's trace spans in one transaction;
//! 7. release the lock.
//!
//! A failed turn saves nothing (the user message is not half-saved). See `docs/chat.md`.

mod lock;
mod state;
mod store;
mod trace;
mod turn;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use state::{ChatMessage, ChatState, Conversational, History, Role};
pub use store::{
    SessionConflict, SessionFilter, SessionGuard, SessionLockTimeout, SessionStore, SessionSummary, SpanRecord,
    StoredSession, TraceSummary, TraceWrite, TurnRecord, TurnSave,
};
pub use turn::{Session, Turn, TurnEvent, TurnStream};

use crate::error::BoxError;

/// The future a [`Summarizer`] returns.
pub type SummaryFuture<'a> = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send + 'a>>;

/// Writes the summary of older turns (`crewflow-llm` implements it for its `Llm`).
pub trait Summarizer: Send + Sync + 'static {
    /// A summary of `previous` (the summary so far, if any) followed by `messages`.
    fn summarize<'a>(&'a self, previous: Option<&'a str>, messages: &'a [ChatMessage]) -> SummaryFuture<'a>;
}

/// How a flow holds conversations (see [`FlowBuilder::chat`](crate::FlowBuilder::chat)).
#[derive(Clone)]
pub struct ChatOptions {
    /// How many recent messages steps should send to a model ([`ChatState::history`]); 20 by
    /// default.
    pub window: usize,
    /// Compact older messages into a summary once more than this many messages are not
    /// covered by the summary (needs a [`summarizer`](ChatOptions::summarizer)); the last
    /// `window` messages are never compacted. `None` (the default): never.
    pub summarize_after: Option<usize>,
    /// Who writes summaries.
    pub summarizer: Option<Arc<dyn Summarizer>>,
    /// How long a turn waits for the session's lock before failing with
    /// [`Error::SessionBusy`](crate::Error::SessionBusy); 30 s by default.
    pub lock_timeout: Duration,
    /// Keep a trace per session (spans of turns, steps and model calls); on by default.
    pub traces: bool,
    /// A session's open trace is finalized when its next turn comes after this long idle (and
    /// by [`Flow::finalize_idle_sessions`](crate::Flow::finalize_idle_sessions)); 30 min by default.
    pub idle_finalize_after: Duration,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            window: 20,
            summarize_after: None,
            summarizer: None,
            lock_timeout: Duration::from_secs(30),
            traces: true,
            idle_finalize_after: Duration::from_secs(30 * 60),
        }
    }
}

impl std::fmt::Debug for ChatOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatOptions")
            .field("window", &self.window)
            .field("summarize_after", &self.summarize_after)
            .field("summarizer", &self.summarizer.is_some())
            .field("lock_timeout", &self.lock_timeout)
            .field("traces", &self.traces)
            .field("idle_finalize_after", &self.idle_finalize_after)
            .finish()
    }
}

impl ChatOptions {
    /// Sets [`window`](ChatOptions::window).
    pub fn window(mut self, messages: usize) -> Self {
        self.window = messages;
        self
    }

    /// Compacts older messages with `summarizer` once more than `after` are uncovered.
    pub fn summarize(mut self, after: usize, summarizer: impl Summarizer) -> Self {
        self.summarize_after = Some(after);
        self.summarizer = Some(Arc::new(summarizer));
        self
    }

    /// Sets [`lock_timeout`](ChatOptions::lock_timeout).
    pub fn lock_timeout(mut self, wait: Duration) -> Self {
        self.lock_timeout = wait;
        self
    }

    /// Sets [`traces`](ChatOptions::traces).
    pub fn traces(mut self, on: bool) -> Self {
        self.traces = on;
        self
    }

    /// Sets [`idle_finalize_after`](ChatOptions::idle_finalize_after).
    pub fn idle_finalize_after(mut self, idle: Duration) -> Self {
        self.idle_finalize_after = idle;
        self
    }

    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        match (self.summarize_after, &self.summarizer) {
            (Some(_), None) => Err(crate::Error::Builder(
                "ChatOptions::summarize_after is set but no summarizer is: use ChatOptions::summarize(after, summarizer)"
                    .into(),
            )),
            (Some(after), Some(_)) if after <= self.window => Err(crate::Error::Builder(format!(
                "ChatOptions: summarize_after ({after}) must be larger than the window ({}), or nothing would ever be compacted",
                self.window
            ))),
            _ => Ok(()),
        }
    }
}

/// What a flow keeps for its conversations: options and the store-less copy of the flow that
/// runs turns. (Session locks are process-wide, see [`lock::process_locks`].)
#[derive(Default)]
pub(crate) struct ChatRuntime {
    pub options: ChatOptions,
    /// The flow's definition without its run store, built on the first turn: a turn's durable
    /// record is the session (one row), not a run record per turn holding the transcript again.
    pub turn_flow: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl ChatRuntime {
    pub fn new(options: ChatOptions) -> Self {
        ChatRuntime { options, ..ChatRuntime::default() }
    }
}
