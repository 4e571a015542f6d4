//! Errors of agents, tasks and crews.

use std::time::Duration;

/// Why an agent, a task or a crew did not produce an answer.
///
/// A tool's failure is not an error here: it goes back to the model as the tool's result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// A `{placeholder}` names an input that was not given.
    #[error(
        "the {field} names `{{{placeholder}}}` but the inputs have no `{placeholder}` (inputs present: {}); add it to the inputs or remove the placeholder",
        if present.is_empty() { "none".to_string() } else { present.join(", ") }
    )]
    MissingInput {
        /// What holds the placeholder (`goal of agent "Researcher"`, `description of task "research"`, ...).
        field: String,
        /// The placeholder's name.
        placeholder: String,
        /// The inputs that were given.
        present: Vec<String>,
    },
    /// The agent, task or crew is set up wrongly (the message says how to fix it).
    #[error("{0}")]
    Config(String),
    /// The model call failed.
    #[error("agent \"{agent}\": the model call failed: {source}")]
    Llm {
        /// The agent's role.
        agent: String,
        /// The model's error.
        #[source]
        source: crewflow_llm::LlmError,
    },
    /// A model reply or a tool result could not be recorded in (or read from) the run's journal.
    #[error("agent \"{agent}\": {message}")]
    Journal {
        /// The agent's role.
        agent: String,
        /// The journal's error.
        message: String,
    },
    /// The agent ran longer than its `max_execution_time`.
    #[error("agent \"{agent}\" ran out of time: its max_execution_time is {limit:?}; raise it or give it less to do")]
    Timeout {
        /// The agent's role.
        agent: String,
        /// The limit.
        limit: Duration,
    },
    /// The agent gave no final answer: after `max_iter` iterations the forced answer was empty.
    #[error(
        "agent \"{agent}\" gave no final answer: it used all {max_iter} iterations (max_iter) and its forced final answer was empty; raise max_iter or simplify the task"
    )]
    NoAnswer {
        /// The agent's role.
        agent: String,
        /// Its iteration limit.
        max_iter: u32,
    },
    /// The final answer did not fit the expected output type, even after one repair attempt.
    #[error("agent \"{agent}\": the final answer is not a valid {expected}: {problem}; the reply was: {raw}")]
    InvalidOutput {
        /// The agent's role.
        agent: String,
        /// The expected type.
        expected: String,
        /// What is wrong with it.
        problem: String,
        /// The reply (an excerpt).
        raw: String,
    },
    /// A task's guardrail rejected every attempt.
    #[error("task \"{task}\": its guardrail rejected all {attempts} attempts; the last feedback: {feedback}")]
    Guardrail {
        /// The task.
        task: String,
        /// How many answers were tried.
        attempts: u32,
        /// The guardrail's last feedback.
        feedback: String,
    },
    /// The agent's memory could not recall or remember (its store or its embedder failed).
    #[error("agent \"{agent}\": its memory failed: {source}")]
    Memory {
        /// The agent's role.
        agent: String,
        /// The memory's error.
        #[source]
        source: crewflow_memory::MemoryError,
    },
    /// A task's human review could not be done: its feedback provider failed, or paused the
    /// run (a task's review needs its answer inside the step).
    #[error("task \"{task}\": its human review failed: {message}")]
    ReviewFailed {
        /// The task.
        task: String,
        /// Why.
        message: String,
    },
    /// The reviewer asked for changes more times than the review's `max_revisions` allows.
    #[error(
        "task \"{task}\": the reviewer rejected all {rounds} answers (max_revisions allows {} revisions); the last feedback: {feedback}",
        rounds.saturating_sub(1)
    )]
    ReviewRejected {
        /// The task.
        task: String,
        /// How many answers were reviewed.
        rounds: u32,
        /// The reviewer's last words.
        feedback: String,
    },
    /// A task's `output_file` could not be written.
    #[error("task \"{task}\": cannot write its output_file {path}: {source}; check the path and its permissions")]
    OutputFile {
        /// The task.
        task: String,
        /// The file (interpolated).
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why a tool call failed. Inside an agent's loop the message goes back to the model as the
/// tool's result (the loop goes on); [`ToolSet::call`](crate::ToolSet::call) returns it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// The arguments do not fit the tool's parameters.
    #[error("the arguments do not fit the tool's parameters: {0}")]
    InvalidArguments(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// A failure with this message.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        ToolError::Failed(message.to_string())
    }
}

/// The first `max` characters of `text`, marked when cut.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
