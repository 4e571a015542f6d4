//! An agent's memory: what it recalls before it works and remembers after it answers, kept in
//! crewflow-memory under a scope of its own.

use std::sync::Arc;
use std::time::Instant;

use crewflow_core::EventKind;
use crewflow_memory::{Memory, MemoryError, RecallOptions, RememberOptions};
use crewflow_store::MemoryStore;

use crate::error::{AgentError, excerpt};
use crate::journal;

/// How many memories an agent recalls by default ([`AgentMemory::limit`]).
pub const DEFAULT_RECALL_LIMIT: usize = 5;

/// The source an agent's memories are stored with (so recall and `forget` can tell them from
/// lessons and imports).
pub const AGENT_MEMORY_SOURCE: &str = "agent";

/// What an agent remembers between kickoffs ([`Agent::memory`](crate::Agent::memory)).
///
/// Before each kickoff (or task) the agent recalls the memories closest to its prompt (at
/// most [`limit`](AgentMemory::limit), best first) and reads them with the prompt; after it
/// answers (for a task: once its guardrails and review accept the answer) it remembers the
/// prompt and the answer. Memories live in the scope `agent/<role>` of the memory (the role as
/// written, placeholders and all, made a path: `{topic} Researcher` is `agent/topic-researcher`),
/// so agents sharing a store never read each other's memories; [`scope`](AgentMemory::scope)
/// names another.
///
/// Embeddings are made by the local embedding model by default ([`AgentMemory::local`]):
/// nothing leaves the machine, and there is no fallback to a cloud embedder. A provider's
/// embedder is an explicit choice ([`AgentMemory::new`] over a [`Memory`] built with it).
///
/// Inside a durable run, the recall and the remembering go through the run's journal: a step
/// that runs again recalls what it recalled the first time and does not remember twice.
#[derive(Clone, Debug)]
pub struct AgentMemory {
    memory: Result<Memory, Arc<str>>,
    scope: Option<String>,
    limit: usize,
}

impl AgentMemory {
    /// Memory kept in `store` (a `SqliteStore`, a `PostgresStore`: the flow's run store does),
    /// embedded by the local embedding model (all-MiniLM-L6-v2 on the CPU; no network, no key).
    /// It needs crewflow's `local` feature and the model's files (`scripts/fetch-models`);
    /// without them the agent's kickoff fails, saying so, before the model is called.
    pub fn local(store: impl MemoryStore) -> Self {
        let memory = crewflow_llm::ProviderEmbedder::new("local")
            .map(|embedder| Memory::new(store, embedder))
            .map_err(|e| Arc::from(format!("the agent's memory needs the local embedding model: {e}")));
        AgentMemory { memory, scope: None, limit: DEFAULT_RECALL_LIMIT }
    }

    /// Memory through `memory`: its store, its embedder (a provider's, if you choose one) and
    /// its root scope.
    pub fn new(memory: Memory) -> Self {
        AgentMemory { memory: Ok(memory), scope: None, limit: DEFAULT_RECALL_LIMIT }
    }

    /// The scope (under the memory's root) the agent remembers in and recalls from, instead of
    /// `agent/<role>`: agents given one scope share their memories.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// How many memories are recalled at most (default [`DEFAULT_RECALL_LIMIT`]; 0 recalls
    /// nothing but still remembers).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The memory, scoped to the agent whose role (as written) is `role`.
    pub(crate) fn scoped(&self, role: &str, agent: &str) -> Result<Memory, AgentError> {
        let memory = self.memory.as_ref().map_err(|e| AgentError::Config(format!("agent \"{agent}\": {e}")))?;
        let scope = match &self.scope {
            Some(s) => s.clone(),
            None => format!("agent/{}", role_path(role)),
        };
        Ok(memory.scoped(&scope))
    }

    /// What the agent recalls about `prompt`, as text to add to it (empty: nothing); a
    /// `memory_recalled` or `memory_failed` event of the step.
    pub(crate) async fn recall(&self, role: &str, agent: &str, prompt: &str) -> Result<Vec<String>, AgentError> {
        if self.limit == 0 {
            return Ok(Vec::new());
        }
        let query = excerpt(prompt, 2000);
        let started = Instant::now();
        let found = self.recall_now(role, agent, &query).await;
        report(agent, "recall", started, &found, |(found, replayed), elapsed_us| EventKind::MemoryRecalled {
            agent: agent.to_string(),
            query,
            count: found.len(),
            elapsed_us,
            replayed: *replayed,
        });
        found.map(|(found, _)| found)
    }

    async fn recall_now(&self, role: &str, agent: &str, query: &str) -> Result<(Vec<String>, bool), AgentError> {
        let memory = self.scoped(role, agent)?;
        let (query, limit) = (query.to_string(), self.limit);
        let recall = async move {
            let found = memory.recall(&query, RecallOptions::new().limit(limit)).await?;
            Ok::<_, MemoryError>(found.into_iter().map(|m| m.record.content).collect::<Vec<String>>())
        };
        journaled(agent, "memory:recall", recall).await
    }

    /// Remembers `prompt` and its `answer` (for `task`, when a task's); a `memory_saved` or
    /// `memory_failed` event of the step.
    pub(crate) async fn remember(
        &self,
        role: &str,
        agent: &str,
        prompt: &str,
        answer: &str,
        task: Option<&str>,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let saved = self.remember_now(role, agent, prompt, answer, task).await;
        report(agent, "remember", started, &saved, |replayed, elapsed_us| EventKind::MemorySaved {
            agent: agent.to_string(),
            elapsed_us,
            replayed: *replayed,
        });
        saved.map(drop)
    }

    async fn remember_now(
        &self,
        role: &str,
        agent: &str,
        prompt: &str,
        answer: &str,
        task: Option<&str>,
    ) -> Result<bool, AgentError> {
        let memory = self.scoped(role, agent)?;
        let content = format!("Task: {}\nAnswer: {}", excerpt(prompt.trim(), 600), excerpt(answer.trim(), 2000));
        let mut options = RememberOptions::new().source(AGENT_MEMORY_SOURCE).category("work").meta("agent", agent);
        if let Some(task) = task {
            options = options.meta("task", task);
        }
        let remember = async move {
            let record = memory.remember(&content, options).await?;
            Ok::<_, MemoryError>(record.id.to_string())
        };
        journaled(agent, "memory:remember", remember).await.map(|(_, replayed)| replayed)
    }
}

/// Reports a memory operation that began at `started` as an event of the current step (none
/// outside a step): `done`'s event when it worked, `memory_failed` when not.
fn report<T>(
    agent: &str,
    operation: &str,
    started: Instant,
    result: &Result<T, AgentError>,
    done: impl FnOnce(&T, u64) -> EventKind,
) {
    let Some(scope) = crewflow_core::scope::current() else { return };
    let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match result {
        Ok(value) => scope.emit(|| done(value, elapsed_us)),
        Err(e) => scope.emit(|| EventKind::MemoryFailed {
            agent: agent.to_string(),
            operation: operation.to_string(),
            error: e.to_string(),
        }),
    };
}

/// `{topic} Senior Researcher` → `topic-senior-researcher`: a role as one path segment.
fn role_path(role: &str) -> String {
    let mut out = String::with_capacity(role.len());
    for c in role.trim().chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() || c == '_' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() { "agent".into() } else { out }
}

/// The prompt with what was recalled, for the model.
pub(crate) fn with_memories(prompt: &str, recalled: &[String]) -> String {
    if recalled.is_empty() {
        return prompt.to_string();
    }
    let mut out = prompt.to_string();
    out.push_str("\n\nWhat you remember from earlier work (use it where it helps; it may be out of date):");
    for memory in recalled {
        out.push_str("\n- ");
        out.push_str(&memory.replace('\n', "\n  "));
    }
    out
}

/// Runs a memory operation once through the run's journal (inside a durable run), under the
/// agent's journal path; with whether its result was replayed from the journal.
async fn journaled<T, F>(agent: &str, name: &str, op: F) -> Result<(T, bool), AgentError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
    F: std::future::Future<Output = Result<T, MemoryError>>,
{
    let memory_error = |source: MemoryError| AgentError::Memory { agent: agent.to_string(), source };
    let Some(scope) = crewflow_core::scope::current() else {
        return op.await.map(|value| (value, false)).map_err(memory_error);
    };
    let key = journal::join(&journal::join(&journal::current_path(), &format!("agent:{agent}")), name);
    scope.once_or_replay(&key, |_| op).await.map_err(|e| match e {
        crewflow_core::journal::OnceError::Failed { source, .. } => match source.downcast::<MemoryError>() {
            Ok(e) => memory_error(*e),
            Err(other) => AgentError::Journal { agent: agent.to_string(), message: other.to_string() },
        },
        other => AgentError::Journal { agent: agent.to_string(), message: other.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_become_one_path_segment() {
        assert_eq!(role_path("{topic} Senior Researcher"), "topic-senior-researcher");
        assert_eq!(role_path("  R&D / Ops  "), "r-d-ops");
        assert_eq!(role_path("Écrivain"), "écrivain");
        assert_eq!(role_path("{}"), "agent");
    }

    #[test]
    fn memories_are_listed_after_the_prompt() {
        assert_eq!(with_memories("Do it.", &[]), "Do it.");
        let text = with_memories("Do it.", &["Task: a\nAnswer: b".into()]);
        assert!(text.starts_with("Do it.\n\nWhat you remember"), "{text}");
        assert!(text.ends_with("\n- Task: a\n  Answer: b"), "{text}");
    }
}
