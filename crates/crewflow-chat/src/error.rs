//! [`ChatError`]: what a conversation can report.

use std::time::Duration;

use crewflow_core::BoxError;

use crate::store::{SessionConflict, SessionLockTimeout};

/// What a turn, or a session call, can report: the conversation's own problems, and the
/// failures of the turn's run ([`ChatError::Run`], the engine's [`crewflow_core::Error`]).
///
/// Each message names the session and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The turn's run failed (a step failed, a route is not declared, ...): the engine's error,
    /// unchanged. Nothing of the turn was saved.
    #[error(transparent)]
    Run(#[from] crewflow_core::Error),
    /// A turn reached a feedback step whose provider pauses the run.
    #[error(
        "turn of session `{session}`: step `{step}` asked for feedback through a provider that pauses the run, but a turn is answered within the turn and saved whole; ask the person in the reply (their next message is the answer), or use a provider that answers in place"
    )]
    PauseInTurn {
        /// The session.
        session: String,
        /// The step that paused.
        step: String,
    },
    /// A turn waited too long for its session's lock.
    #[error(
        "session `{session}` is busy: another turn of it held the session lock for longer than {waited:?}; retry the turn later, or raise ChatOptions::lock_timeout"
    )]
    SessionBusy {
        /// The session.
        session: String,
        /// How long the turn waited.
        waited: Duration,
    },
    /// Another turn of the session was saved (or the session deleted) while this one ran.
    #[error(transparent)]
    SessionConflict(#[from] SessionConflict),
    /// A turn ended without a reply.
    #[error(
        "turn {turn} of session `{session}` ended without a reply (the final step was {}): call cx.reply(..) in a step, or make the turn's last step return a String",
        final_step.as_deref().map(|s| format!("`{s}`")).unwrap_or_else(|| "none".into())
    )]
    NoReply {
        /// The session.
        session: String,
        /// The turn's index.
        turn: u64,
        /// The step whose output was the run's output.
        final_step: Option<String>,
    },
    /// A session id is not usable ([`SessionId::new`](crate::SessionId::new)).
    #[error(
        "invalid session id `{id}`: {reason}; use a non-empty string of at most 256 bytes without control characters"
    )]
    InvalidSessionId {
        /// The id as given, shortened to 64 characters, its control characters escaped (`\n`
        /// shows as `\n`), so the message stays on one line and shows what was wrong.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A stored session's state cannot be read by the flow's state type: it does not decode,
    /// it would lose fields, or it was written at another state version without a migration
    /// (see `crewflow_core::versions`). The session is left as it was.
    #[error("the stored state of session `{session}` cannot be read: {source}; or delete the session")]
    CorruptSession {
        /// The session.
        session: String,
        /// Why, and the fix.
        source: crewflow_core::StateError,
    },
    /// A turn key ([`ChatFlow::handle_turn_once`](crate::ChatFlow::handle_turn_once)) that
    /// cannot be used.
    #[error(
        "invalid turn key `{key}`: {reason}; use a non-empty string of at most 255 bytes without control characters (a UUID the client makes per message)"
    )]
    InvalidTurnKey {
        /// The key as given, shortened to 64 characters, its control characters escaped.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A turn key was sent again with another message than the turn it named.
    #[error(
        "turn key `{key}` of session `{session}` was used by turn {turn}, whose message differs; a key names one message: send a new message with a new key"
    )]
    TurnKeyReused {
        /// The session.
        session: String,
        /// The key.
        key: String,
        /// The turn that ran with it.
        turn: u64,
    },
    /// A turn for a session the store does not have, asked to continue an existing session
    /// only ([`ChatFlow::stream_existing_turn`](crate::ChatFlow::stream_existing_turn)).
    /// Nothing ran and nothing was saved.
    #[error(
        "no session `{session}` in the session store: it was never saved, or was deleted; start one with a turn of a new session (ChatFlow::handle_turn)"
    )]
    UnknownSession {
        /// The session.
        session: String,
    },
    /// [`ChatOptions`](crate::ChatOptions) that cannot work.
    #[error("{0}")]
    InvalidOptions(String),
    /// The session store failed.
    #[error("the session store {store} could not {action}: {source}")]
    Store {
        /// The store ([`SessionStore::describe`](crate::SessionStore::describe)).
        store: String,
        /// What the turn was doing.
        action: String,
        /// What the store reported.
        #[source]
        source: BoxError,
    },
    /// A bug: something that cannot happen did.
    #[error("internal: {0}")]
    Internal(String),
}

impl ChatError {
    /// A store's failure, recognising the errors that have their own variants.
    pub(crate) fn from_store(store: String, action: &str, source: BoxError, waited: Duration) -> Self {
        let source = match source.downcast::<SessionConflict>() {
            Ok(conflict) => return ChatError::SessionConflict(*conflict),
            Err(other) => other,
        };
        match source.downcast::<SessionLockTimeout>() {
            Ok(t) => ChatError::SessionBusy { session: t.session, waited },
            Err(source) => ChatError::Store { store, action: action.to_string(), source },
        }
    }

    /// The engine's error, when the turn's run failed.
    pub fn as_run_error(&self) -> Option<&crewflow_core::Error> {
        match self {
            ChatError::Run(e) => Some(e),
            _ => None,
        }
    }
}
