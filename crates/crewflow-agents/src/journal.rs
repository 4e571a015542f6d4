//! Journal keys of agents' model and tool calls inside a durable run.
//!
//! Every model reply and tool result of an agent's loop goes through the run's journal
//! ([`StepScope::once`](crewflow_core::scope::StepScope::once)) under a name that says where it
//! was made: `agent:Researcher/llm` (the agent's model calls, in order: `llm`, `llm#1`, ...),
//! `agent:Researcher/tool:search:call_1`, and for an agent called from inside a tool (a
//! delegation), `agent:Manager/tool:delegate_work:call_3/agent:Writer/llm`. Names nest, so a
//! tool call whose result was recorded (and is not run again) does not shift the keys of the
//! calls after it.

use std::future::Future;

tokio::task_local! {
    static PATH: String;
}

/// The journal path the current task works under (empty at a step's top level).
pub(crate) fn current_path() -> String {
    PATH.try_with(String::clone).unwrap_or_default()
}

/// Runs `fut` with `path` as the journal path.
pub(crate) async fn with_path<F: Future>(path: String, fut: F) -> F::Output {
    PATH.scope(path, fut).await
}

/// `parent/child`, or `child` at the top.
pub(crate) fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_string() } else { format!("{parent}/{child}") }
}
