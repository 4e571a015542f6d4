//! Human review of a task's output, through the engine's feedback providers.

use std::sync::Arc;

use crewflow_core::feedback::{FeedbackProvider, FeedbackReply, FeedbackRequest};
use crewflow_core::{EventKind, IntoShared, RunId};
use serde_json::{Value, json};

use crate::crew::TaskOutput;
use crate::error::AgentError;
use crate::journal;

/// The default of [`HumanReview::max_revisions`].
pub const DEFAULT_MAX_REVISIONS: u32 = 3;

/// The answers that approve an output (compared without case; an empty answer approves too).
const APPROVALS: &[&str] = &["approve", "approved", "accept", "accepted", "ok", "okay", "yes", "y", "lgtm"];

/// A person reviews a task's output before the task is done
/// ([`Task::human_review`](crate::Task::human_review)): they approve it, or say what to change
/// and the agent does the task again told their words, up to
/// [`max_revisions`](HumanReview::max_revisions) times.
///
/// The question goes to a [`FeedbackProvider`] chosen as `#[human_feedback]` chooses: the
/// review's own ([`provider`](HumanReview::provider)), else — inside a flow step — the flow's
/// (`FlowBuilder::feedback_provider`), else the process default
/// (`crewflow::set_default_feedback_provider`), else the terminal (`ConsoleFeedback`). An empty
/// answer or one of `approve`, `approved`, `accept`, `ok`, `yes`, `lgtm` approves; anything
/// else is feedback. The review happens inside the step and needs an answer there: a provider
/// that pauses the run ([`FeedbackReply::Pending`], `DeferredFeedback`) is an error — review
/// in a `#[human_feedback]` step after the crew for that.
///
/// Inside a durable run each answer is recorded in the run's journal: a step that runs again
/// (after a crash, on a retry) replays the answers given and does not ask again.
#[derive(Clone)]
pub struct HumanReview {
    message: String,
    provider: Option<Arc<dyn FeedbackProvider>>,
    max_revisions: u32,
}

impl std::fmt::Debug for HumanReview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HumanReview")
            .field("message", &self.message)
            .field("provider", &self.provider.is_some())
            .field("max_revisions", &self.max_revisions)
            .finish()
    }
}

/// A reviewer's decision.
pub(crate) enum Decision {
    Approved,
    Revise(String),
}

impl HumanReview {
    /// Asks `message` (with the output) of the reviewer.
    pub fn new(message: impl Into<String>) -> Self {
        HumanReview { message: message.into(), provider: None, max_revisions: DEFAULT_MAX_REVISIONS }
    }

    /// Who reviews (default: the flow's provider, else the process default, else the terminal).
    /// Takes a provider, or a shared `Arc<dyn FeedbackProvider>` ([`IntoShared`]).
    pub fn provider(mut self, provider: impl IntoShared<dyn FeedbackProvider>) -> Self {
        self.provider = Some(provider.into_shared());
        self
    }

    /// How many times the reviewer may ask for changes (default [`DEFAULT_MAX_REVISIONS`]);
    /// asking once more fails the task with [`AgentError::ReviewRejected`].
    pub fn max_revisions(mut self, n: u32) -> Self {
        self.max_revisions = n;
        self
    }

    /// The limit of revisions.
    pub(crate) fn revisions(&self) -> u32 {
        self.max_revisions
    }

    /// Asks the reviewer about `output` (review `round`, from 1).
    pub(crate) async fn ask(&self, task: &str, output: &TaskOutput, round: u32) -> Result<Decision, AgentError> {
        let scope = crewflow_core::scope::current();
        let provider = match (&self.provider, &scope) {
            (Some(p), _) => p.clone(),
            (None, Some(s)) => s.feedback_provider(),
            (None, None) => crewflow_core::default_feedback_provider(),
        };
        let shown = match &output.json {
            Some(json) => json.clone(),
            None => Value::String(output.raw.clone()),
        };
        let request = FeedbackRequest {
            run_id: scope.as_ref().map_or_else(RunId::new, |s| s.run_id()),
            id: scope.as_ref().map_or(0, |s| s.activation()),
            flow: scope.as_ref().map(|s| s.flow_name().to_string()).unwrap_or_default(),
            step: scope.as_ref().map(|s| s.step().to_string()).unwrap_or_default(),
            message: format!(
                "{}\n(Task \"{task}\". Reply `approve` or nothing to accept; anything else is sent back to the agent as what to change.)",
                self.message.trim()
            ),
            output: shown.clone(),
            emit: Vec::new(),
            default_outcome: None,
            metadata: Some(json!({ "task": task, "agent": output.agent, "round": round })),
            requested_at: chrono_now(),
        };
        if let Some(s) = &scope {
            let (message, output) = (request.message.clone(), shown.clone());
            s.emit(|| EventKind::FeedbackRequested { message, output, emit: Vec::new() });
        }
        let failed = |message: String| AgentError::ReviewFailed { task: task.to_string(), message };
        let asked = async move {
            match provider.request(&request).await {
                Ok(FeedbackReply::Answer(answer)) => Ok(answer),
                Ok(FeedbackReply::Pending) => Err(
                    "the feedback provider paused the run, but a task's review needs its answer inside the step: give the review a provider that answers (HumanReview::provider), or review in a #[human_feedback] step after the crew"
                        .to_string(),
                ),
                Err(e) => Err(format!("the feedback provider failed: {e}")),
            }
        };
        let key = journal::join(&journal::current_path(), "review");
        let answer = match &scope {
            None => asked.await.map_err(failed)?,
            Some(s) => s
                .once(&key, |_| async move { asked.await.map_err(crewflow_core::BoxError::from) })
                .await
                .map_err(|e| match e {
                    crewflow_core::journal::OnceError::Failed { source, .. } => failed(source.to_string()),
                    other => failed(other.to_string()),
                })?,
        };
        let decision = decide(&answer);
        if let Some(s) = &scope {
            let outcome = match decision {
                Decision::Approved => "approved",
                Decision::Revise(_) => "revise",
            };
            // In the run's history as a `#[human_feedback]` answer is; keyed by the review's
            // journal name, so a step that runs again and replays it keeps it once.
            let metadata =
                json!({ "task": task, "agent": output.agent, "round": round, "message": self.message.trim() });
            s.record_feedback(&key, shown, answer.clone(), Some(outcome.into()), Some(metadata));
            s.emit(|| EventKind::FeedbackReceived { feedback: answer, outcome: Some(outcome.into()) });
        }
        Ok(decision)
    }
}

fn decide(answer: &str) -> Decision {
    let a = answer.trim().trim_end_matches(['.', '!']);
    if a.is_empty() || APPROVALS.iter().any(|x| x.eq_ignore_ascii_case(a)) {
        Decision::Approved
    } else {
        Decision::Revise(answer.trim().to_string())
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_approving_answers_approve_anything_else_is_feedback() {
        for a in ["", "  ", "approve", "Approved.", "OK", "yes!", "LGTM"] {
            assert!(matches!(decide(a), Decision::Approved), "{a:?}");
        }
        for a in ["no", "shorter please", "approve, but shorter"] {
            assert!(matches!(decide(a), Decision::Revise(f) if f == a.trim()), "{a:?}");
        }
    }
}
