//! Lessons from human review: the [`FeedbackLearner`] over a [`Memory`] and a model.

use crewflow_core::feedback::{FeedbackLearner, ImproveFuture, LearnFuture, LearnRequest};
use crewflow_llm::{ChatRequest, Llm, Message};
use serde::Deserialize;
use serde_json::Value;

use crate::{Memory, MemoryError, MemoryFilter, RecallOptions, RememberOptions, Result, clean};

/// Learns from human review (`#[human_feedback(learn = ..)]`,
/// [`HumanFeedback::learn`](crewflow_core::HumanFeedback::learn)).
///
/// - Before review, it recalls the lessons of the step (scope `lessons/<step>` under the
///   memory's root, the request's source, 5 at most); if there are any, the model rewrites
///   the output to follow them, and the reviewer sees the rewrite.
/// - After a non-blank answer, the model distills the feedback into short general lessons
///   (structured output: `{"lessons": [..]}`), stored in one transaction with the source
///   (`hitl` by default), category `lesson` and metadata `run_id`, `request_id`, `step`,
///   `feedback`. An answer whose lessons are already stored (a resume retried after a crash)
///   stores nothing again.
///
/// ```no_run
/// use crewflow_llm::{HashEmbedder, Llm};
/// use crewflow_memory::{Lessons, Memory};
/// use crewflow_store::SqliteStore;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let memory = Memory::new(SqliteStore::open("crewflow.db"), HashEmbedder::default()).root_scope("/flow/newsletter");
/// let lessons = Lessons::new(memory, Llm::new("openai/gpt-4o-mini")?);
/// let review = crewflow_core::HumanFeedback::new("Ready to send?").learn(lessons);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Lessons {
    memory: Memory,
    llm: Llm,
    scope: String,
    limit: usize,
}

impl Lessons {
    /// Lessons kept in `memory` (under `lessons/<step>`), distilled and applied by `llm`.
    pub fn new(memory: Memory, llm: Llm) -> Self {
        Lessons { memory, llm, scope: "lessons".into(), limit: 5 }
    }

    /// The scope the lessons live under, below the memory's root (default `lessons`).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// How many lessons are applied before review, at most (default 5).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The scope of a step's lessons, under the memory's root.
    pub fn step_scope(&self, step: &str) -> String {
        format!("{}/{step}", self.scope)
    }

    /// The output improved with the step's lessons, or `None` when it has none.
    pub async fn improve_output(&self, request: &LearnRequest) -> Result<Option<Value>> {
        let text = match &request.output {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let options =
            RecallOptions::new().scope(self.step_scope(&request.step)).source(&request.source).limit(self.limit);
        let found = self.memory.recall(&text, options).await?;
        if found.is_empty() {
            return Ok(None);
        }
        let lessons: Vec<String> = found.iter().map(|m| format!("- {}", m.record.content)).collect();
        let json = !request.output.is_string();
        let mut system = "You revise a draft so that it follows the lessons learned from earlier human reviews. \
                          Apply every lesson that is relevant and change nothing else. Reply with the revised draft only, \
                          without any preamble."
            .to_string();
        if json {
            system.push_str(" The draft is JSON: reply with JSON of the same shape.");
        }
        let user = format!("Lessons:\n{}\n\nDraft:\n{text}", lessons.join("\n"));
        let reply = self
            .llm
            .chat(ChatRequest::new([Message::system(system), Message::user(user)]))
            .await
            .map_err(|source| MemoryError::Llm { action: "improve the output with lessons", source })?;
        let revised = reply.text.trim();
        if revised.is_empty() {
            return Err(MemoryError::BadReply { action: "improve the output", problem: "the reply is empty".into() });
        }
        if !json {
            return Ok(Some(Value::String(revised.to_string())));
        }
        let body = revised.trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
        serde_json::from_str(body).map(Some).map_err(|e| MemoryError::BadReply {
            action: "improve the output",
            problem: format!("the output is JSON but the reply is not ({e})"),
        })
    }

    /// Distills lessons from the feedback and stores them; returns the lessons stored (none
    /// for blank feedback, or when this answer's lessons are stored already).
    pub async fn learn_from(&self, request: &LearnRequest) -> Result<Vec<String>> {
        if request.feedback.trim().is_empty() {
            return Ok(Vec::new());
        }
        let scope = self.step_scope(&request.step);
        let already = MemoryFilter::new()
            .scope(&scope)
            .meta("run_id", request.run_id.to_string())
            .meta("request_id", request.request_id);
        if !self.memory.find(&already).await?.is_empty() {
            return Ok(Vec::new());
        }
        let output = match &request.output {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let system = "A reviewer gave feedback on the output of a workflow step. Distill the feedback into short, \
                      general lessons (one imperative sentence each) that would improve future outputs of this step. \
                      Leave out anything that only concerns this one output. Reply with JSON: {\"lessons\": [\"...\"]}; \
                      an empty list if there is nothing general to learn.";
        let user = format!(
            "Step: {}\nQuestion to the reviewer: {}\n\nOutput:\n{output}\n\nFeedback:\n{}",
            request.step, request.message, request.feedback
        );
        let distilled: Distilled = self
            .llm
            .generate(ChatRequest::new([Message::system(system), Message::user(user)]))
            .await
            .map_err(|source| MemoryError::Llm { action: "distill lessons from feedback", source })?;
        let lessons = clean(distilled.lessons);
        if lessons.is_empty() {
            return Ok(Vec::new());
        }
        let options = RememberOptions::new()
            .scope(scope)
            .category("lesson")
            .source(&request.source)
            .meta("run_id", request.run_id.to_string())
            .meta("request_id", request.request_id)
            .meta("flow", request.flow.clone())
            .meta("step", request.step.clone())
            .meta("feedback", request.feedback.clone());
        self.memory.remember_many(&lessons, options).await?;
        Ok(lessons)
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Distilled {
    lessons: Vec<String>,
}

impl FeedbackLearner for Lessons {
    fn improve(&self, request: &LearnRequest) -> ImproveFuture {
        let (me, request) = (self.clone(), request.clone());
        Box::pin(async move { me.improve_output(&request).await.map_err(Into::into) })
    }

    fn learn(&self, request: &LearnRequest) -> LearnFuture {
        let (me, request) = (self.clone(), request.clone());
        Box::pin(async move { me.learn_from(&request).await.map_err(Into::into) })
    }
}
