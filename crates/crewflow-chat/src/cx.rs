//! [`ChatCx`]: what a step of a conversational flow adds to its [`Cx`].

use crewflow_core::Cx;
use crewflow_llm::Message;

use crate::state::{ChatMessage, Conversational};

/// The conversation, from inside a step: `use crewflow_chat::ChatCx;` (it is in
/// `crewflow::prelude`), then `cx.reply(..)`, `cx.user_message()`, `cx.recent_messages()`.
///
/// ```
/// use crewflow_chat::{ChatCx, ChatState};
/// use crewflow_core::{Cx, FlowBuilder};
///
/// let flow = FlowBuilder::<ChatState>::new("echo")
///     .start("answer", |cx: Cx<ChatState>, message: String| async move {
///         let earlier = cx.recent_messages().len() - 1; // the history includes this message
///         cx.reply(format!("you said {message} ({earlier} messages before)"));
///         Ok(())
///     })
///     .build();
/// # assert!(flow.is_ok());
/// ```
pub trait ChatCx {
    /// Sets this turn's reply (the last call wins). Without it, a turn's reply is the run's
    /// output when that is a string (and not a router's label).
    fn reply(&self, text: impl Into<String>);

    /// Records the intent of this turn. Without it, the label of the turn's first router is the
    /// turn's intent ([`Turn::intent`](crate::Turn::intent),
    /// [`ChatState::last_intent`](crate::ChatState::last_intent)).
    fn set_intent(&self, intent: impl Into<String>);

    /// The user message of this turn.
    fn user_message(&self) -> String;

    /// The summary of compacted turns and the recent messages (the flow's window,
    /// [`ChatState::recent`](crate::ChatState::recent)), owned. The current user message is the
    /// last of them.
    fn recent_history(&self) -> (Option<String>, Vec<ChatMessage>);

    /// [`recent_history`](ChatCx::recent_history) as model messages: the summary as a system
    /// message (when there is one), then the recent messages. Put your instructions first and
    /// send them: `ChatRequest::new([Message::system(..)].into_iter().chain(cx.recent_messages()))`.
    fn recent_messages(&self) -> Vec<Message>;
}

impl<S: Conversational> ChatCx for Cx<S> {
    fn reply(&self, text: impl Into<String>) {
        let text = text.into();
        self.update(|s| s.chat_mut().pending_reply = Some(text));
    }

    fn set_intent(&self, intent: impl Into<String>) {
        let intent = intent.into();
        self.update(|s| s.chat_mut().last_intent = Some(intent));
    }

    fn user_message(&self) -> String {
        self.state(|s| s.chat().last_user_message.clone().unwrap_or_default())
    }

    fn recent_history(&self) -> (Option<String>, Vec<ChatMessage>) {
        self.state(|s| {
            let h = s.chat().recent();
            (h.summary.map(str::to_string), h.recent.to_vec())
        })
    }

    fn recent_messages(&self) -> Vec<Message> {
        self.state(|s| s.chat().recent().messages())
    }
}
