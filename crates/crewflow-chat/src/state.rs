//! Chat state: the transcript and what a conversational flow remembers between turns.

use crewflow_core::FlowState;
use crewflow_llm::{Message, Role};
use serde::{Deserialize, Serialize};

/// One message of a conversation, as the transcript keeps it: who wrote it, its text, and its
/// turn.
///
/// The role is the model layer's own [`Role`], and a `ChatMessage` converts into a
/// [`crewflow_llm::Message`] (`Message::from(&m)`, or `.into()`), so history goes to a model
/// as it is (see [`ChatCx::recent_messages`](crate::ChatCx::recent_messages)). Stored as
/// `{"role": "user", "content": "...", "turn": 0}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The turn it belongs to (0 for the first turn).
    #[serde(default)]
    pub turn: u64,
}

impl ChatMessage {
    /// A message of `role` in turn `turn`.
    pub fn new(role: Role, content: impl Into<String>, turn: u64) -> Self {
        ChatMessage { role, content: content.into(), turn }
    }
}

/// The message a model is sent: same role, same text (the turn number is the transcript's
/// bookkeeping, not something a model reads).
impl From<&ChatMessage> for Message {
    fn from(m: &ChatMessage) -> Self {
        match m.role {
            Role::System => Message::system(m.content.clone()),
            Role::User => Message::user(m.content.clone()),
            Role::Assistant => Message::assistant(m.content.clone()),
            // A tool result kept in a transcript has lost its call id: it goes as text.
            Role::Tool => Message { role: Role::Tool, ..Message::user(m.content.clone()) },
        }
    }
}

impl From<ChatMessage> for Message {
    fn from(m: ChatMessage) -> Self {
        Message::from(&m)
    }
}

/// The part of a flow's state a conversation needs: the transcript, the last user message and
/// intent, and the summary of compacted turns.
///
/// Embed it in your own state and implement [`Conversational`], or use `ChatState` itself as
/// the state (`Flow<ChatState>`). The engine appends the user message before a turn's graph
/// runs and the reply after it; steps read the history with [`ChatState::history`].
///
/// **During a turn, `messages` holds the end of the transcript, not all of it**: the messages
/// the turn's history needs (the [window](crate::ChatOptions::window), or every message the
/// summary does not cover), so a turn costs the same in a session's 200th turn as in its first.
/// [`transcript_offset`](ChatState::transcript_offset) is the index of `messages[0]` in the
/// whole transcript, and [`summarized`](ChatState::summarized) counts from `messages[0]` too.
/// A flow whose steps read everything ever said turns on
/// [`ChatOptions::whole_transcript`](crate::ChatOptions::whole_transcript).
/// [`ChatFlow::session`](crate::ChatFlow::session) always shows the whole transcript.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatState {
    /// The transcript, oldest first: all of it in a session read with
    /// [`ChatFlow::session`](crate::ChatFlow::session), its end during a turn (see above).
    /// Compacted messages stay in the transcript; models get [`history`](ChatState::history),
    /// which leaves them out. The store keeps each message as a row of its own, appended once:
    /// a turn that changes or removes messages it loaded rewrites the transcript from there on.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// The text of the current (or last) user message.
    #[serde(default)]
    pub last_user_message: Option<String>,
    /// The intent this turn was routed by (cleared when a turn starts, so a stale intent is
    /// never replayed).
    #[serde(default)]
    pub last_intent: Option<String>,
    /// The intent of the turn before.
    #[serde(default)]
    pub previous_intent: Option<String>,
    /// A summary of the messages before [`summarized`](ChatState::summarized), written by the
    /// chat flow's [`Summarizer`](crate::Summarizer).
    #[serde(default)]
    pub summary: Option<String>,
    /// How many messages, from the start of [`messages`](ChatState::messages), the summary
    /// covers (as stored: from the start of the transcript).
    #[serde(default)]
    pub summarized: usize,
    /// How many turns completed.
    #[serde(default)]
    pub turns: u64,
    /// The reply set with [`ChatCx::reply`](crate::ChatCx::reply) during the current turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pending_reply: Option<String>,
    /// The keys of the last [`TURN_KEYS_KEPT`] turns run with a key
    /// ([`ChatFlow::handle_turn_once`](crate::ChatFlow::handle_turn_once)), oldest first: a
    /// turn sent again with one of them is answered from the store instead of running twice.
    /// Saved with the state, in the turn's transaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) turn_keys: Vec<TurnKey>,
    /// The flow's window ([`ChatOptions::window`](crate::ChatOptions::window)), set for each turn.
    #[serde(skip)]
    pub(crate) window: usize,
    /// The flow's [`ChatOptions::summarize_after`](crate::ChatOptions::summarize_after), set for
    /// each turn.
    #[serde(skip)]
    pub(crate) compact_after: Option<usize>,
    /// The index of `messages[0]` in the whole transcript (a turn loads its end only).
    #[serde(skip)]
    pub(crate) transcript_offset: usize,
}

/// How many turn keys a session remembers ([`ChatFlow::handle_turn_once`](crate::ChatFlow::handle_turn_once)):
/// a key older than the last this many keyed turns is forgotten, and a turn sent with it runs
/// again.
pub const TURN_KEYS_KEPT: usize = 64;

/// A turn key and the index of the turn it ran as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TurnKey {
    pub(crate) key: String,
    pub(crate) turn: u64,
}

/// The recent history a model should see: the summary of older turns, then the last messages.
#[derive(Clone, Copy, Debug)]
pub struct History<'a> {
    /// The summary of what came before `recent`, if any.
    pub summary: Option<&'a str>,
    /// The last messages, oldest first.
    pub recent: &'a [ChatMessage],
}

impl History<'_> {
    /// What to send a model: the summary (as a system message, when there is one), then the
    /// recent messages. Put your own instructions first.
    pub fn messages(&self) -> Vec<Message> {
        let summary = self.summary.map(|s| Message::system(format!("Earlier in this conversation: {s}")));
        summary.into_iter().chain(self.recent.iter().map(Message::from)).collect()
    }
}

impl ChatState {
    /// The index, in the whole transcript, of [`messages[0]`](ChatState::messages): 0 for a
    /// session read whole, the number of older messages a turn did not load during a turn.
    /// `transcript_offset() + messages.len()` is the length of the whole transcript.
    pub fn transcript_offset(&self) -> usize {
        self.transcript_offset
    }

    /// The last `n` messages (fewer if the transcript is shorter).
    pub fn window(&self, n: usize) -> &[ChatMessage] {
        &self.messages[self.messages.len().saturating_sub(n)..]
    }

    /// What a model should see: the summary, then the messages it does not cover, at most
    /// `n` of them (the last `n` messages when there is no summary).
    pub fn history(&self, n: usize) -> History<'_> {
        let covered = if self.summary.is_some() { self.summarized.min(self.messages.len()) } else { 0 };
        let start = self.messages.len().saturating_sub(n).max(covered);
        History { summary: self.summary.as_deref(), recent: &self.messages[start..] }
    }

    /// [`history`](ChatState::history) with the flow's options: what a replying step should
    /// send to its model. Without compaction, the last [`window`](crate::ChatOptions::window)
    /// messages. With it ([`ChatOptions::summarize`](crate::ChatOptions::summarize)), the summary
    /// and every message it does not cover — never a gap between the two, so nothing said is
    /// invisible to the model — at most `summarize_after + 1` of them (compaction runs before
    /// more pile up; if the summarizer keeps failing, the oldest uncovered ones drop out of view,
    /// never out of the transcript).
    pub fn recent(&self) -> History<'_> {
        let window = if self.window == 0 { crate::ChatOptions::default().window } else { self.window };
        match self.compact_after {
            Some(after) => self.history(after.saturating_add(1).max(window)),
            None => self.history(window),
        }
    }

    /// The messages of one role, in order (of [`messages`](ChatState::messages): during a turn,
    /// those of the end of the transcript the turn loaded).
    pub fn by_role(&self, role: Role) -> impl Iterator<Item = &ChatMessage> {
        self.messages.iter().filter(move |m| m.role == role)
    }

    /// The reply set during the current turn, if any.
    pub fn pending_reply(&self) -> Option<&str> {
        self.pending_reply.as_deref()
    }

    /// Appends the user message of a new turn; the intent of the last turn becomes the previous one.
    pub(crate) fn begin_turn(&mut self, message: &str) {
        self.messages.push(ChatMessage::new(Role::User, message, self.turns));
        self.last_user_message = Some(message.to_string());
        self.previous_intent = self.last_intent.take();
        self.pending_reply = None;
    }

    /// The index of the turn run with `key`, if it is remembered.
    pub(crate) fn turn_of_key(&self, key: &str) -> Option<u64> {
        self.turn_keys.iter().rev().find(|k| k.key == key).map(|k| k.turn)
    }

    /// Remembers that turn `turn` ran with `key`, forgetting the oldest beyond [`TURN_KEYS_KEPT`].
    pub(crate) fn remember_key(&mut self, key: &str, turn: u64) {
        self.turn_keys.push(TurnKey { key: key.to_string(), turn });
        let over = self.turn_keys.len().saturating_sub(TURN_KEYS_KEPT);
        self.turn_keys.drain(..over);
    }

    /// Appends the reply and counts the turn.
    pub(crate) fn end_turn(&mut self, reply: &str) {
        self.messages.push(ChatMessage::new(Role::Assistant, reply, self.turns));
        self.turns += 1;
    }
}

/// A state that holds a conversation: implemented by [`ChatState`], and by your own state
/// through the [`conversational!`](crate::conversational) macro or by hand.
///
/// ```
/// use crewflow_chat::{ChatState, Conversational};
/// # use serde::{Deserialize, Serialize};
/// #[derive(Default, Serialize, Deserialize)]
/// struct Support { chat: ChatState, customer: Option<String> }
///
/// impl Conversational for Support {
///     fn chat(&self) -> &ChatState { &self.chat }
///     fn chat_mut(&mut self) -> &mut ChatState { &mut self.chat }
/// }
/// ```
pub trait Conversational: FlowState {
    /// The conversation.
    fn chat(&self) -> &ChatState;
    /// The conversation, to change.
    fn chat_mut(&mut self) -> &mut ChatState;
}

impl Conversational for ChatState {
    fn chat(&self) -> &ChatState {
        self
    }
    fn chat_mut(&mut self) -> &mut ChatState {
        self
    }
}

/// Implements [`Conversational`] for a state type with a [`ChatState`] field:
/// `crewflow_chat::conversational!(Support, chat);` (`crewflow::conversational!` through the
/// facade).
#[macro_export]
macro_rules! conversational {
    ($state:ty, $field:ident) => {
        impl $crate::Conversational for $state {
            fn chat(&self) -> &$crate::ChatState {
                &self.$field
            }
            fn chat_mut(&mut self) -> &mut $crate::ChatState {
                &mut self.$field
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_leaves_out_what_the_summary_covers() {
        let mut s = ChatState::default();
        for i in 0..6 {
            s.begin_turn(&format!("q{i}"));
            s.end_turn(&format!("a{i}"));
        }
        assert_eq!(s.window(3).len(), 3);
        s.summarized = 10;
        s.summary = Some("earlier".into());
        let h = s.history(4);
        assert_eq!(h.recent.len(), 2, "messages covered by the summary are left out");
        assert_eq!(h.recent[0].content, "q5");
        assert_eq!(h.summary, Some("earlier"));
    }
}
