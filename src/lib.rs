//! # crewflow
//!
//! Event-driven AI workflows in Rust. A flow is a type whose async methods are steps: a
//! `#[start]` step runs at kickoff, `#[listen(..)]` steps run when their trigger is
//! satisfied, and `#[router(..)]` steps choose a route whose label other steps listen to.
//! Triggers combine step completions and routes with `or(..)` and `and(..)`. Every run has
//! its own typed state, reached through short closures on the step context [`Cx`].
//!
//! ```
//! use crewflow::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Ticket { text: String, reply: Option<String> }
//!
//! #[derive(Route, Clone, Copy, Debug, PartialEq)]
//! enum Lane { Security, Standard }
//!
//! struct Triage;
//!
//! #[flow(state = Ticket)]
//! impl Triage {
//!     #[start]
//!     async fn intake(&self, cx: &Cx<Ticket>) -> Result<String> {
//!         Ok(cx.state(|t| t.text.to_lowercase()))
//!     }
//!
//!     #[router(intake)]
//!     async fn classify(&self, text: String) -> Result<Lane> {
//!         Ok(if text.contains("password") { Lane::Security } else { Lane::Standard })
//!     }
//!
//!     #[listen(Lane::Security)]
//!     async fn escalate(&self) -> Result<&'static str> {
//!         Ok("escalated to the security team")
//!     }
//!
//!     #[listen(or(escalate, Lane::Standard))]
//!     async fn reply(&self, cx: &Cx<Ticket>) -> Result<String> {
//!         let reply = "Thanks, we are on it.".to_string();
//!         cx.update(|t| t.reply = Some(reply.clone()));
//!         Ok(reply)
//!     }
//! }
//!
//! # async fn demo() -> Result<(), crewflow::Error> {
//! let flow = Triage.into_flow()?;
//! let run = flow.kickoff(serde_json::json!({ "text": "I forgot my password" })).await?;
//! assert_eq!(run.step_names(), ["intake", "classify", "escalate", "reply"]);
//! assert_eq!(run.output::<String>()?, "Thanks, we are on it.");
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! What is checked before anything runs, at compile time: that triggers name existing steps,
//! that every typed route a router can return is handled (or `#[route(terminal)]`), that a
//! listener's input type is the output type of what triggers it. The same checks exist at
//! build time for flows assembled with [`FlowBuilder`].
//!
//! The semantics (rounds, joins in loops, the final output, failures) are written down in
//! `docs/semantics.md`; the architecture in `docs/architecture.md`.

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of `docs/chat.md`, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/chat.md")]
pub struct ChatDocDoctests;

// Lets the macros' generated `::crewflow::..` paths resolve inside this crate's own tests.
extern crate self as crewflow;

pub use crewflow_core::*;
pub use crewflow_macros::{Route, flow, human_feedback, listen, persist, router, start};

mod webhook;

/// Human feedback: [`HumanFeedback`], its providers (console, deferred, webhook) and the pause
/// / resume protocol. See `docs/human_feedback.md`.
pub mod feedback {
    pub use crate::webhook::WebhookFeedback;
    pub use crewflow_core::feedback::*;
}

/// Conversations: a [`chat::ChatFlow`] holds sessions of turns over a flow whose state holds a
/// [`chat::ChatState`]; history windows and summaries, intents, session locks, one trace per
/// session. See `docs/chat.md`.
pub mod chat {
    pub use crewflow_chat::*;
}

/// Implements [`chat::Conversational`] for a state with a [`chat::ChatState`] field:
/// `crewflow::conversational!(Support, chat);`.
pub use crewflow_chat::conversational;

/// Language models: providers, streaming, tools, structured output, embeddings.
pub mod llm {
    pub use crewflow_llm::*;
}

/// Declarative flows: a flow written in YAML or JSON, built at run time against a registry of
/// Rust functions and providers. See `docs/declarative.md`.
pub mod declarative {
    pub use crewflow_declarative::*;
}

/// Memory: remember, recall (by meaning, recency and importance), forget, extract; lessons
/// from human review ([`memory::Lessons`]). See `docs/memory.md`.
pub mod memory {
    pub use crewflow_memory::*;
}

/// Pictures of flows: Mermaid, DOT, and one self-contained interactive HTML page
/// (`flow.plot("flow.html")`, with [`plot::Plot`] in scope). See `docs/plot.md`.
pub mod plot {
    pub use crewflow_plot::*;
}

/// Stores for durable runs: SQLite (default) and PostgreSQL (feature `postgres`).
pub mod store {
    pub use crewflow_core::persist::*;
    pub use crewflow_store::*;
}

/// Support for the code the macros generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crewflow_core::__private::*;

    /// The store of `#[flow(persist)]` flows given none: see [`crate::store::default_store`].
    pub fn default_store() -> Arc<dyn crewflow_core::persist::RunStore> {
        crewflow_store::default_store()
    }
}

/// What most flows need: `use crewflow::prelude::*;`.
pub mod prelude {
    pub use crate::chat::{ChatCx, ChatFlow, ChatOptions, ChatState, Conversational, SessionId};
    pub use crate::llm::{ChatRequest, Llm, Message};
    pub use crate::plot::Plot;
    pub use crate::trigger::{and, label, or, route, step};
    pub use crate::{
        Cx, Event, EventKind, FeedbackResult, Flow, FlowBuilder, HumanFeedback, IntoFlow, Kickoff, Route, Run, RunId,
        StepError, Trigger, flow, human_feedback, listen, persist, router, start,
    };

    /// The result type of step methods: any error converts into [`StepError`] with `?`.
    pub type Result<T, E = StepError> = std::result::Result<T, E>;
}
