//! A review at run time: asking after a step's body, answers mapped to outcomes (live and on
//! resume), lessons learned from them.

use crate::error::{DurableError, FeedbackError};
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use crate::cx::{Cx, RunShared};
use crate::error::Error;
use crate::event::EventKind;
use crate::feedback::*;
use crate::handler::StepOutcome;
use crate::output::Output;

/// The feedback phase after a reviewed step's body: ask, then map the answer (re-asking up to
/// twice when it matches no outcome), or hand the driver a pause.
pub(crate) async fn after_step<S: Send + Sync + 'static>(
    cx: &Cx<S>,
    config: &HumanFeedback,
    body: StepOutcome,
    is_router: bool,
) -> Result<StepOutcome, Error> {
    let run = cx.shared();
    let step: Arc<str> = Arc::from(cx.step());
    let mut body = body;
    let mut output = body.output.to_json().map_err(|e| {
        Error::Durable(DurableError::Unpersistable {
            what: format!("the output of step `{step}` (to show the reviewer)"),
            message: e.to_string(),
        })
    })?;
    // Routers keep their own (typed) output: their label decides the route.
    if let (Some(learner), false) = (&config.learner, is_router) {
        let ask = learn_request(run, cx.activation(), &step, config, output.clone(), String::new());
        match learner.improve(&ask).await {
            Ok(Some(improved)) => {
                output = improved.clone();
                body.output = Output::from_json(improved.clone());
                run.telemetry.events.emit(run.id, Some(&step), || EventKind::FeedbackImproved { output: improved });
            }
            Ok(None) => {}
            Err(e) if config.learn_strict => {
                return Err(Error::Feedback(FeedbackError::FeedbackLearn {
                    step: step.to_string(),
                    phase: "improve",
                    source: e.into_boxed(),
                }));
            }
            Err(e) => {
                let error = e.to_string();
                run.telemetry
                    .events
                    .emit(run.id, Some(&step), || EventKind::FeedbackLearnFailed { phase: "improve".into(), error });
            }
        }
    }
    let mut request = FeedbackRequest {
        run_id: run.id,
        id: cx.activation(),
        flow: run.flow.to_string(),
        step: step.to_string(),
        message: config.message.clone(),
        output,
        emit: config.emit.iter().map(|l| l.to_string()).collect(),
        default_outcome: config.default_outcome.as_ref().map(|l| l.to_string()),
        metadata: config.metadata.clone(),
        requested_at: Utc::now(),
    };
    let provider: Arc<dyn FeedbackProvider> =
        config.provider.clone().or_else(|| run.feedback.clone()).unwrap_or_else(crate::defaults::feedback_provider);
    let mut attempts = 0;
    loop {
        let (message, output, emit) = (request.message.clone(), request.output.clone(), request.emit.clone());
        run.telemetry.events.emit(run.id, Some(&step), || EventKind::FeedbackRequested { message, output, emit });
        let reply = provider.request(&request).await.map_err(|e| {
            Error::Feedback(FeedbackError::FeedbackProvider { step: step.to_string(), source: e.into_boxed() })
        })?;
        let answer = match reply {
            FeedbackReply::Pending => {
                request.message = config.message.clone();
                let pending =
                    PendingFeedback { activation: cx.activation(), request, label: body.label.clone(), fresh: true };
                return Ok(StepOutcome { pause: Some(Box::new(pending)), ..body });
            }
            FeedbackReply::Answer(answer) => answer,
        };
        match resolve_outcome(config, &step, &answer).await {
            Ok(outcome) => {
                learn_from(run, config, &request, &answer).await;
                let reviewed = Reviewed { request, body_output: body.output, body_label: body.label, is_router };
                return Ok(apply_answer(run, &step, reviewed, answer, outcome));
            }
            Err(e) if attempts < 2 => {
                attempts += 1;
                request.message = format!("{e}\n{}", config.message);
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn learn_request<S>(
    run: &RunShared<S>,
    request_id: u64,
    step: &str,
    config: &HumanFeedback,
    output: Value,
    feedback: String,
) -> LearnRequest {
    LearnRequest {
        run_id: run.id,
        request_id,
        flow: run.flow.to_string(),
        step: step.to_string(),
        message: config.message.clone(),
        output,
        feedback,
        source: config.source_of_lessons().to_string(),
    }
}

/// Distills lessons from an accepted answer (steps with a learner, non-blank answers only).
/// Never fails the run: a failure is a `feedback_learn_failed` event.
pub(crate) async fn learn_from<S>(run: &RunShared<S>, config: &HumanFeedback, request: &FeedbackRequest, answer: &str) {
    let Some(learner) = &config.learner else { return };
    if answer.trim().is_empty() {
        return;
    }
    let step: Arc<str> = Arc::from(request.step.as_str());
    let ask = learn_request(run, request.id, &request.step, config, request.output.clone(), answer.to_string());
    match learner.learn(&ask).await {
        Ok(lessons) => {
            run.telemetry.events.emit(run.id, Some(&step), || EventKind::FeedbackLearned { lessons });
        }
        Err(e) => {
            let error = e.to_string();
            run.telemetry
                .events
                .emit(run.id, Some(&step), || EventKind::FeedbackLearnFailed { phase: "learn".into(), error });
        }
    }
}

/// A reviewed step execution, waiting for its answer to be applied.
pub(crate) struct Reviewed {
    pub request: FeedbackRequest,
    pub body_output: Output,
    pub body_label: Option<Arc<str>>,
    pub is_router: bool,
}

/// Records an answer (history, event) and builds the step's outcome from it: a router keeps
/// its own output and label; another step outputs the [`FeedbackResult`] and dispatches the
/// outcome, if it has outcomes.
pub(crate) fn apply_answer<S>(
    run: &RunShared<S>,
    step: &Arc<str>,
    reviewed: Reviewed,
    answer: String,
    outcome: Option<Arc<str>>,
) -> StepOutcome {
    let result = FeedbackResult {
        step: step.to_string(),
        output: reviewed.request.output,
        feedback: answer,
        outcome: outcome.as_ref().map(|o| o.to_string()),
        metadata: reviewed.request.metadata,
        at: Utc::now(),
        key: None,
    };
    let (feedback, reported) = (result.feedback.clone(), result.outcome.clone());
    run.with_feedback_history(|h| h.push(result.clone()));
    run.telemetry.events.emit(run.id, Some(step), || EventKind::FeedbackReceived { feedback, outcome: reported });
    if reviewed.is_router {
        StepOutcome { output: reviewed.body_output, label: reviewed.body_label, pause: None }
    } else {
        StepOutcome { output: Output::new(result), label: outcome, pause: None }
    }
}

/// Maps an answer to an outcome of `config`: exact, then case-insensitive, then the classifier,
/// then the default. `Ok(None)` for steps without `emit`; an error when nothing matches and
/// there is no default.
pub(crate) async fn resolve_outcome(
    config: &HumanFeedback,
    step: &str,
    answer: &str,
) -> Result<Option<Arc<str>>, Error> {
    if config.emit.is_empty() {
        return Ok(None);
    }
    let trimmed = answer.trim();
    if trimmed.is_empty() {
        return Ok(Some(config.default_outcome.clone().unwrap_or_else(|| config.emit[0].clone())));
    }
    if let Some(exact) = match_outcome(&config.emit, trimmed) {
        return Ok(Some(exact));
    }
    let mut classifier_error = None;
    if let Some(classifier) = &config.classifier {
        match classifier.classify(trimmed, &config.emit).await {
            Ok(Some(label)) => {
                if let Some(m) = match_outcome(&config.emit, label.trim()) {
                    return Ok(Some(m));
                }
            }
            Ok(None) => {}
            Err(e) => classifier_error = Some(e.to_string()),
        }
    }
    if let Some(d) = &config.default_outcome {
        return Ok(Some(d.clone()));
    }
    Err(Error::Feedback(FeedbackError::UnmatchedFeedback {
        step: step.to_string(),
        feedback: trimmed.to_string(),
        outcomes: list(&config.emit),
        classifier: match (&config.classifier, classifier_error) {
            (None, _) => "no classifier is set".to_string(),
            (Some(_), Some(e)) => format!("the classifier failed: {e}"),
            (Some(_), None) => "the classifier matched none".to_string(),
        },
    }))
}

pub(super) fn match_outcome(emit: &[Arc<str>], answer: &str) -> Option<Arc<str>> {
    emit.iter().find(|o| &***o == answer).or_else(|| emit.iter().find(|o| o.eq_ignore_ascii_case(answer))).cloned()
}

pub(super) fn list(labels: &[Arc<str>]) -> String {
    labels.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", ")
}
