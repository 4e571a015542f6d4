//! How a chat flow holds conversations: [`ChatOptions`] and the [`Summarizer`] of older turns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crewflow_core::BoxError;
use crewflow_llm::{ChatRequest, Llm, Message};

use crate::error::ChatError;
use crate::state::ChatMessage;

/// The future a [`Summarizer`] returns.
pub type SummaryFuture<'a> = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send + 'a>>;

/// Writes the summary of older turns; implemented for [`Llm`] (a model writes it).
pub trait Summarizer: Send + Sync + 'static {
    /// A summary of `previous` (the summary so far, if any) followed by `messages`.
    fn summarize<'a>(&'a self, previous: Option<&'a str>, messages: &'a [ChatMessage]) -> SummaryFuture<'a>;
}

/// How a [`ChatFlow`](crate::ChatFlow) holds conversations
/// ([`ChatFlow::with_options`](crate::ChatFlow::with_options)).
#[derive(Clone)]
pub struct ChatOptions {
    /// How many recent messages steps should send to a model
    /// ([`ChatState::recent`](crate::ChatState::recent)); 20 by default.
    pub window: usize,
    /// Compact older messages into a summary once more than this many messages are not
    /// covered by the summary (needs a [`summarizer`](ChatOptions::summarizer)); the last
    /// `window` messages are never compacted. `None` (the default): never.
    pub summarize_after: Option<usize>,
    /// Who writes summaries.
    pub summarizer: Option<Arc<dyn Summarizer>>,
    /// How long a turn waits for the session's lock before failing with
    /// [`ChatError::SessionBusy`](crate::ChatError::SessionBusy); 30 s by default.
    pub lock_timeout: Duration,
    /// Keep a trace per session (spans of turns, steps and model calls); on by default.
    pub traces: bool,
    /// A session's open trace is finalized when its next turn comes after this long idle (and
    /// by [`ChatFlow::finalize_idle_sessions`](crate::ChatFlow::finalize_idle_sessions)); 30 min by default.
    pub idle_finalize_after: Duration,
    /// Load the whole transcript into each turn's state, for steps that read everything ever
    /// said (a turn's cost then grows with the session). Off by default: a turn loads the
    /// messages its history needs ([`window`](ChatOptions::window), or up to
    /// [`summarize_after`](ChatOptions::summarize_after) with compaction), so it costs the same
    /// in a session's 200th turn as in its first.
    pub whole_transcript: bool,
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
            whole_transcript: false,
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
            .field("whole_transcript", &self.whole_transcript)
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

    /// Sets [`whole_transcript`](ChatOptions::whole_transcript).
    pub fn whole_transcript(mut self, on: bool) -> Self {
        self.whole_transcript = on;
        self
    }

    /// How many of a session's last messages a turn loads (`None`: all of them): what
    /// [`ChatState::recent`](crate::ChatState::recent) shows once the turn's user message is
    /// appended, and, with compaction, every message the summary does not cover (after a turn,
    /// at most `summarize_after` are uncovered: more are compacted).
    pub(crate) fn turn_loads(&self) -> Option<u64> {
        if self.whole_transcript {
            return None;
        }
        let window = if self.window == 0 { ChatOptions::default().window } else { self.window };
        Some(self.summarize_after.map_or(window, |after| after.max(window)) as u64)
    }

    /// Refuses options that cannot work: a compaction threshold without a summarizer, or one
    /// not larger than the window (nothing would ever be compacted).
    pub(crate) fn check(&self) -> Result<(), ChatError> {
        match (self.summarize_after, &self.summarizer) {
            (Some(_), None) => Err(ChatError::InvalidOptions(
                "ChatOptions::summarize_after is set but no summarizer is: use ChatOptions::summarize(after, summarizer)"
                    .into(),
            )),
            (Some(after), Some(_)) if after <= self.window => Err(ChatError::InvalidOptions(format!(
                "ChatOptions: summarize_after ({after}) must be larger than the window ({}), or nothing would ever be compacted",
                self.window
            ))),
            _ => Ok(()),
        }
    }
}

/// A model writes the summary of compacted turns ([`ChatOptions::summarize`]).
impl Summarizer for Llm {
    fn summarize<'a>(&'a self, previous: Option<&'a str>, messages: &'a [ChatMessage]) -> SummaryFuture<'a> {
        Box::pin(async move {
            let mut transcript = String::new();
            if let Some(p) = previous {
                transcript.push_str(&format!("Summary so far: {p}\n\n"));
            }
            for m in messages {
                transcript.push_str(&format!("{}: {}\n", m.role.as_str(), m.content));
            }
            let request = ChatRequest::new([
                Message::system(
                    "Summarize this conversation in a few sentences, keeping names, facts, decisions and open questions.",
                ),
                Message::user(transcript),
            ])
            .temperature(0.0);
            Ok(self.chat(request).await?.text)
        })
    }
}
