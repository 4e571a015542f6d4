//! Guardrails: checks of a task's output that reject it with feedback — functions, or a model
//! judging the output against criteria.

use std::sync::Arc;

use crewflow_core::TokenUsage;
use crewflow_llm::{ChatRequest, Llm, LlmError, Message, ResponseFormat};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::agent::OutputSpec;
use crate::crew::TaskOutput;
use crate::error::{AgentError, excerpt};
use crate::journal;

/// A check of a task's output: it accepts the output or rejects it with feedback, and the
/// agent tries again told the feedback (up to
/// [`Task::guardrail_max_retries`](crate::Task::guardrail_max_retries) times).
///
/// A function ([`Guardrail::function`], or any closure given to
/// [`Task::guardrail`](crate::Task::guardrail)) checks in code; [`Guardrail::model`] asks a
/// model whether the output meets criteria written in words. Add one to a task with
/// [`Task::with_guardrail`](crate::Task::with_guardrail).
#[derive(Clone)]
pub struct Guardrail {
    kind: Kind,
}

/// A guardrail in code.
type Check = Arc<dyn Fn(&TaskOutput) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
enum Kind {
    Function(Check),
    Model { llm: Llm, criteria: String },
}

impl std::fmt::Debug for Guardrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Function(_) => f.write_str("Guardrail::function(..)"),
            Kind::Model { llm, criteria } => {
                f.debug_struct("Guardrail::model").field("llm", llm).field("criteria", criteria).finish()
            }
        }
    }
}

/// What a model guardrail answers (its structured output).
#[derive(Deserialize, JsonSchema)]
struct Verdict {
    /// True when the output meets every criterion.
    valid: bool,
    /// When it does not: what is wrong and how to fix it, addressed to the one who wrote it.
    /// Empty when valid.
    #[serde(default)]
    feedback: String,
}

impl Guardrail {
    /// A check in code: `Err(feedback)` rejects the output.
    pub fn function(check: impl Fn(&TaskOutput) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Guardrail { kind: Kind::Function(Arc::new(check)) }
    }

    /// A check by `llm`: it is shown the task and the output and asked whether the output
    /// meets `criteria` (a structured verdict: valid, and feedback when not). A rejection's
    /// feedback goes to the agent for its next attempt. Its tokens count in the task's usage;
    /// inside a durable run its verdicts are journaled like the agent's model calls. A model
    /// that fails, or gives no usable verdict, fails the task (never a silent pass).
    pub fn model(llm: Llm, criteria: impl Into<String>) -> Self {
        Guardrail { kind: Kind::Model { llm, criteria: criteria.into() } }
    }

    /// `Ok(None)` accepts, `Ok(Some(feedback))` rejects; `usage` gets the model's tokens.
    pub(crate) async fn check(
        &self,
        task: &str,
        output: &TaskOutput,
        usage: &mut TokenUsage,
    ) -> Result<Option<String>, AgentError> {
        match &self.kind {
            Kind::Function(check) => Ok(check(output).err()),
            Kind::Model { llm, criteria } => judge(llm, criteria, task, output, usage).await,
        }
    }
}

const JUDGE: &str = "You check work against criteria. You are given a task, criteria and the answer someone gave to the task. Decide whether the answer meets every criterion. Reply with JSON only: {\"valid\": true, \"feedback\": \"\"} when it does; {\"valid\": false, \"feedback\": \"...\"} when it does not, where the feedback says exactly what is wrong and how to fix it, addressed to the one who wrote the answer.";

async fn judge(
    llm: &Llm,
    criteria: &str,
    task: &str,
    output: &TaskOutput,
    usage: &mut TokenUsage,
) -> Result<Option<String>, AgentError> {
    let judge_name = format!("guardrail of task \"{task}\"");
    let spec = OutputSpec::of::<Verdict>()?;
    let answer = match &output.json {
        Some(json) => serde_json::to_string_pretty(json).unwrap_or_else(|_| output.raw.clone()),
        None => output.raw.clone(),
    };
    let prompt = format!(
        "Criteria:\n{}\n\nThe task:\n{}\n\nThe answer to check:\n<answer>\n{}\n</answer>",
        criteria.trim(),
        output.description.trim(),
        answer
    );
    let mut request = ChatRequest::new([Message::system(JUDGE), Message::user(prompt)]);
    request.response_format = Some(ResponseFormat::JsonSchema {
        name: "guardrail_verdict".into(),
        schema: spec.schema.clone(),
        strict: false,
    });
    let llm_error = |source: LlmError| AgentError::Llm { agent: judge_name.clone(), source };
    let model = llm.clone().journaled(false);
    let reply = match crewflow_core::scope::current().filter(|_| llm.is_journaled()) {
        None => model.chat(request).await.map_err(llm_error)?,
        Some(scope) => {
            let key = journal::join(&journal::current_path(), "guardrail");
            scope.once(&key, |_| async move { model.chat(request).await }).await.map_err(|e| match e {
                crewflow_core::journal::OnceError::Failed { source, .. } => match source.downcast::<LlmError>() {
                    Ok(e) => llm_error(*e),
                    Err(other) => AgentError::Journal { agent: judge_name.clone(), message: other.to_string() },
                },
                other => AgentError::Journal { agent: judge_name.clone(), message: other.to_string() },
            })?
        }
    };
    usage.add(&reply.usage);
    let value = spec.check(&reply.text).map_err(|problem| AgentError::InvalidOutput {
        agent: judge_name.clone(),
        expected: "guardrail verdict ({\"valid\": bool, \"feedback\": string})".into(),
        problem,
        raw: excerpt(&reply.text, 400),
    })?;
    let verdict: Verdict = serde_json::from_value(value).map_err(|e| AgentError::InvalidOutput {
        agent: judge_name,
        expected: "guardrail verdict".into(),
        problem: e.to_string(),
        raw: excerpt(&reply.text, 400),
    })?;
    if verdict.valid {
        return Ok(None);
    }
    let feedback = verdict.feedback.trim();
    Ok(Some(if feedback.is_empty() {
        format!("the answer does not meet these criteria: {}", criteria.trim())
    } else {
        feedback.to_string()
    }))
}
