//! Declarative flows: a flow written in YAML (or JSON), built at run time on the same engine
//! as `#[flow]` types.
//!
//! A definition names its steps (`methods:`), when each runs (`start:` / `listen:`, with
//! `or` / `and` conditions), which are routers (`router: true`, `emit: [...]`), which ask a
//! person (`human_feedback:`), where runs are kept (`persist:`), and what each step does
//! (`do:`): call a Rust function registered by name, evaluate a [CEL](https://cel.dev)
//! expression, ask a model, or go through a list. Everything a definition names is resolved
//! and every expression compiled when the flow is built, so a typo fails the build with the
//! method's name and a suggestion, not a run halfway through.
//!
//! ```
//! use crewflow_declarative::{Call, FlowDefinition, Registry};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let definition = FlowDefinition::from_yaml(r#"
//! name: triage
//! methods:
//!   intake:
//!     start: true
//!     do: {call: code, ref: normalise, with: {text: "${state.text}"}}
//!   classify:
//!     listen: intake
//!     router: true
//!     emit: [urgent, normal]
//!     do: {call: expression, expr: 'input.contains("outage") ? "urgent" : "normal"'}
//!   page_on_call:
//!     listen: urgent
//!     do: {call: expression, expr: '"paged: " + outputs.intake'}
//!   queue:
//!     listen: normal
//!     do: {call: expression, expr: '"queued"'}
//! "#)?;
//! let registry = Registry::new().function("normalise", |_cx, call: Call| async move {
//!     Ok(call.args_or_input()["text"].as_str().unwrap_or_default().trim().to_lowercase())
//! });
//! let flow = definition.build(&registry)?;
//! let run = flow.kickoff(json!({"text": "  Total OUTAGE in eu-west "})).await?;
//! assert_eq!(run.output_json(), Some(json!("paged: total outage in eu-west")));
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! The format, the actions and the differences from CrewAI's declarative flows are written
//! down in `docs/declarative.md`.

mod action;
mod build;
mod error;
mod expr;
mod flow;
mod registry;
pub mod schema;
mod state;

pub use build::FlowDefinition;
pub use error::DeclarativeError;
pub use flow::DeclarativeFlow;
pub use registry::{Call, FunctionFuture, Registry};
pub use state::{DeclarativeState, OUTPUTS_KEY};
