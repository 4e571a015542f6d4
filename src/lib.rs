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
//! # A guided tour
//!
//! | Where | What it holds | Read |
//! |---|---|---|
//! | the crate root | a flow's life: [`Flow`], [`FlowBuilder`], [`Kickoff`], [`Run`], [`Cx`], [`Event`]s, [`Error`] | [`docs::semantics`] |
//! | [`trigger`] | the trigger algebra: `step`, `label`, `route`, `or`, `and` | [`docs::semantics`] |
//! | [`feedback`] | human feedback: [`HumanFeedback`], providers, pause and resume | [`docs::human_feedback`] |
//! | [`store`] | durable runs: [`store::RunStore`], SQLite and PostgreSQL, leases, workers | [`docs::store`] |
//! | [`journal`] | side effects once: `cx.once`, idempotency keys | [`docs::store`] |
//! | [`chat`] | conversations: sessions of turns, history windows, intents, locks | [`docs::chat`] |
//! | [`llm`] | language models: providers, streaming, tools, structured output, embeddings | [`docs::llm`] |
//! | [`memory`] | remember and recall by meaning, lessons from review | [`docs::memory`] |
//! | [`declarative`] | flows written in YAML or JSON | [`docs::declarative`] |
//! | [`agents`] | agents with tools, tasks and crews, durable to the tool call | [`agents`] (`docs/agents.md`) |
//! | [`host`] | the seam the layers above (conversations, servers) start runs through | [`docs::architecture`] |
//! | [`prelude`] | what most flows need: `use crewflow::prelude::*;` | |
//!
//! # Features
//!
//! | Feature | Default | What it adds |
//! |---|---|---|
//! | `sqlite` | yes | the SQLite store, the default of `#[flow(persist)]` |
//! | `postgres` | no | the PostgreSQL store (`store::PostgresStore`) |
//! | `declarative` | yes | flows written in YAML or JSON ([`declarative`]) |
//! | `plot` | yes | pictures of flows: Mermaid, DOT, interactive HTML ([`plot`]) |
//! | `agents` | yes | agents, tools, tasks and crews ([`agents`]) |
//! | `mcp` | no | tools of MCP servers (stdio, streamable HTTP) for agents; tools and flows served over MCP ([`agents`], `docs/agents.md`) |
//! | `local` | no | the local model provider (SmolLM2 and MiniLM on the CPU; `scripts/fetch-models`) |
//!
//! The long-form documentation lives in [`docs`]: the same pages as the repository's `docs/`
//! folder, so `cargo doc --open` is the book.

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The long-form documentation: the repository's `docs/*.md`, one module per page. Their code
/// blocks are compiled and run as doc tests.
pub mod docs {
    #[doc = include_str!("../docs/semantics.md")]
    pub mod semantics {}
    #[doc = include_str!("../docs/architecture.md")]
    pub mod architecture {}
    #[doc = include_str!("../docs/store.md")]
    pub mod store {}
    #[doc = include_str!("../docs/human_feedback.md")]
    pub mod human_feedback {}
    #[doc = include_str!("../docs/chat.md")]
    pub mod chat {}
    #[doc = include_str!("../docs/llm.md")]
    pub mod llm {}
    #[doc = include_str!("../docs/memory.md")]
    pub mod memory {}
    #[doc = include_str!("../docs/declarative.md")]
    pub mod declarative {}
}

// Lets the macros' generated `::crewflow::..` paths resolve inside this crate's own tests.
extern crate self as crewflow;

// The public surface, listed on purpose: what a user names. The engine's internals (the
// frontier, the compiled graph, helpers shared with sibling crates) stay in crewflow-core.
pub use crewflow_core::{
    Answer, BoxError, BuildError, Canceller, ConsoleInput, Cx, DEFAULT_CANCEL_GRACE, DEFAULT_MAX_STEPS, DurableError,
    Error, Event, EventKind, EventStream, FeedbackError, FeedbackRule, Flow, FlowBuilder, FlowState, GraphRule,
    HostedRun, InputError, InputFuture, InputProvider, InputRecord, InputRequest, InputResponse, IntoFlow, IntoShared,
    Kickoff, Observer, Output, Result, Retry, Route, Run, RunHandle, RunId, StateError, StepError, StepRecord,
    TokenUsage, Trigger, TypeInfo, Worker, WorkerReport, default_feedback_provider, delta, host, journal,
    set_default_feedback_provider, set_default_input_provider, trigger, versions,
};
pub use crewflow_core::{
    ConsoleFeedback, DeferredFeedback, FeedbackLearner, FeedbackProvider, FeedbackReply, FeedbackRequest,
    FeedbackResult, HumanFeedback, LearnRequest, OutcomeClassifier, Paused,
};
pub use crewflow_macros::{Route, blocking, flow, human_feedback, listen, persist, retry, router, start};

mod webhook;

/// Human feedback: [`HumanFeedback`], its providers (console, deferred, webhook) and the pause
/// / resume protocol. See [`docs::human_feedback`].
pub mod feedback {
    pub use crate::webhook::WebhookFeedback;
    pub use crewflow_core::feedback::{
        ClassifyFuture, ConsoleFeedback, DEFAULT_LEARN_SOURCE, DeferredFeedback, FeedbackFuture, FeedbackLearner,
        FeedbackProvider, FeedbackReply, FeedbackRequest, FeedbackResult, HumanFeedback, ImproveFuture, LearnFuture,
        LearnRequest, NotifyFuture, OutcomeClassifier, Paused,
    };
}

/// Conversations: a [`chat::ChatFlow`] holds sessions of turns over a flow whose state holds a
/// [`chat::ChatState`]; history windows and summaries, intents, session locks, one trace per
/// session. See [`docs::chat`].
pub mod chat {
    pub use crewflow_chat::*;
}

/// Implements [`chat::Conversational`] for a state with a [`chat::ChatState`] field:
/// `crewflow::conversational!(Support, chat);`.
pub use crewflow_chat::conversational;

/// Language models: providers, streaming, tools, structured output, embeddings. See
/// [`docs::llm`].
pub mod llm {
    pub use crewflow_llm::*;
}

/// Declarative flows: a flow written in YAML or JSON, built at run time against a registry of
/// Rust functions and providers (feature `declarative`, on by default). See
/// [`docs::declarative`].
#[cfg(feature = "declarative")]
pub mod declarative {
    pub use crewflow_declarative::*;
}

/// Memory: remember, recall (by meaning, recency and importance), forget, extract; lessons
/// from human review ([`memory::Lessons`]). See [`docs::memory`].
pub mod memory {
    pub use crewflow_memory::*;
}

/// Agents, tools, tasks and crews, durable to the tool call (feature `agents`, on by
/// default). `docs/agents.md` is this module's page.
#[cfg(feature = "agents")]
pub mod agents {
    pub use crewflow_agents::*;
}

/// Pictures of flows: Mermaid, DOT, and one self-contained interactive HTML page
/// (`flow.plot("flow.html")`, with [`plot::Plot`] in scope; feature `plot`, on by default).
/// See `docs/plot.md`.
#[cfg(feature = "plot")]
pub mod plot {
    pub use crewflow_plot::*;
}

/// Stores for durable runs: SQLite (default) and PostgreSQL (feature `postgres`), the
/// [`RunStore`](store::RunStore) contract a third backend implements, and what it stores.
/// See [`docs::store`].
pub mod store {
    pub use crewflow_core::persist::{
        Checkpoint, Claim, CompactReport, DEFAULT_LEASE, JournalEntry, LeaseLost, LoadRun, NewRun, ParentStep,
        Retention, RunEnd, RunFilter, RunOwned, RunStatus, RunStore, RunSummary, RunTree, StepOutputs, StepRow,
        StoreFuture, StoredRun, driven_runs, process_owner,
    };
    pub use crewflow_core::persist::{
        NewSchedule, NewWebhook, QueuedWebhook, ScheduleFire, StoredApiKey, StoredSchedule,
    };
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
    #[cfg(feature = "plot")]
    pub use crate::plot::Plot;
    pub use crate::trigger::{and, label, or, route, step};
    pub use crate::{
        Cx, Event, EventKind, FeedbackResult, Flow, FlowBuilder, HumanFeedback, IntoFlow, Kickoff, Route, Run, RunId,
        StepError, Trigger, blocking, flow, human_feedback, listen, persist, retry, router, start,
    };

    /// The result type of step methods: any error converts into [`StepError`] with `?`.
    pub type Result<T, E = StepError> = std::result::Result<T, E>;
}
