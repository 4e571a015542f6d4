//! Checks of a task's output before the task is done: guardrails judged by a model (scripted
//! verdicts in the OpenAI wire format over the loopback server) and human review through the
//! engine's feedback providers (scripted providers): approve passes, feedback reruns the task
//! with the feedback, the limits, the provider policy (review's own → flow's → process
//! default), a provider that would pause, a retried step that does not ask again, and the
//! answers in the run's feedback history (and the stored run's) once, whether the step ran
//! once, was retried or was resumed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{Recorded, Reply, TestServer, openai_completion, openai_llm};
use crewflow::agents::{Agent, AgentError, Crew, Guardrail, HumanReview, Inputs, Task, TaskOutput};
use crewflow::prelude::*;
use crewflow::store::RunStore;
use crewflow::store::SqliteStore;
use crewflow::{
    DeferredFeedback, FeedbackReply, FeedbackRequest, FeedbackResult, FlowBuilder, HumanFeedback, Retry, RunId,
};
use serde_json::{Value, json};

fn user_prompt(r: &Recorded) -> String {
    r.json()["messages"][1]["content"].as_str().unwrap().to_string()
}

fn verdict(valid: bool, feedback: &str) -> Reply {
    openai_completion(&json!({ "valid": valid, "feedback": feedback }).to_string())
}

fn copywriter(server: &TestServer) -> Agent {
    Agent::new(openai_llm(server)).role("Copywriter").goal("Write short ads.")
}

// ---------------------------------------------------------------- model guardrails

#[tokio::test]
async fn a_model_guardrail_rejects_with_feedback_and_the_agent_retries() {
    let server = TestServer::start(vec![
        openai_completion("Buy now!!!"),
        verdict(false, "No exclamation marks, and give the price."),
        openai_completion("Buy now for $5."),
        verdict(true, ""),
    ])
    .await;
    let function_checks = Arc::new(AtomicUsize::new(0));
    let counted = function_checks.clone();
    let task = Task::new("ad", "Write an ad for {product}.")
        .agent(copywriter(&server))
        .guardrail(move |o: &TaskOutput| {
            counted.fetch_add(1, Ordering::SeqCst);
            if o.raw.is_empty() { Err("empty".into()) } else { Ok(()) }
        })
        .with_guardrail(Guardrail::model(openai_llm(&server), "No exclamation marks. It gives the price."));
    let out = task.execute(&Inputs::from([("product", "soap")]), &[]).await.unwrap();
    assert_eq!(out.raw, "Buy now for $5.");
    assert_eq!(out.attempts, 2);
    assert_eq!(out.usage.total(), 4 * 25, "the verdicts' tokens count in the task's usage");
    assert_eq!(function_checks.load(Ordering::SeqCst), 2, "the function ran first, on each answer");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    let judge = reqs[1].json();
    assert_eq!(judge["response_format"]["type"], "json_schema");
    assert_eq!(judge["response_format"]["json_schema"]["schema"]["properties"]["valid"]["type"], "boolean");
    assert!(judge["messages"][0]["content"].as_str().unwrap().starts_with("You check work against criteria"));
    let asked = user_prompt(&reqs[1]);
    assert!(asked.contains("No exclamation marks. It gives the price."), "{asked}");
    assert!(asked.contains("Write an ad for soap."), "{asked}");
    assert!(asked.contains("<answer>\nBuy now!!!\n</answer>"), "{asked}");
    let retry = user_prompt(&reqs[2]);
    assert!(retry.contains("Your previous answer was rejected: No exclamation marks, and give the price."), "{retry}");
}

#[tokio::test]
async fn a_model_guardrail_fails_the_task_after_its_retries() {
    let server = TestServer::start(vec![
        openai_completion("Buy!"),
        verdict(false, "Give the price."),
        openai_completion("Buy!!"),
        verdict(false, "Still no price."),
    ])
    .await;
    let task = Task::new("ad", "Write an ad.")
        .agent(copywriter(&server))
        .with_guardrail(Guardrail::model(openai_llm(&server), "It gives the price."))
        .guardrail_max_retries(1);
    let err = task.execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Guardrail { attempts: 2, feedback, .. } if feedback == "Still no price."),
        "{err}"
    );
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn a_judge_without_a_usable_verdict_fails_the_task_never_passes_it() {
    let server = TestServer::start(vec![
        openai_completion("Buy!"),
        openai_completion("Looks fine to me."),
        openai_completion("Buy!"),
        Reply::json(500, &json!({ "error": { "message": "the judge is down", "type": "server_error" } })),
    ])
    .await;
    let task = || {
        Task::new("ad", "Write an ad.")
            .agent(copywriter(&server))
            .with_guardrail(Guardrail::model(openai_llm(&server), "It gives the price."))
    };
    let err = task().execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(matches!(&err, AgentError::InvalidOutput { agent, .. } if agent == "guardrail of task \"ad\""), "{err}");
    assert!(err.to_string().contains("Looks fine to me."), "{err}");
    let err = task().execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(matches!(&err, AgentError::Llm { agent, .. } if agent == "guardrail of task \"ad\""), "{err}");
    assert!(err.to_string().contains("the judge is down"), "{err}");
}

// ---------------------------------------------------------------- human review

/// A reviewer answering from a script, keeping what it was asked.
#[derive(Clone, Default)]
struct Reviewer {
    answers: Arc<Mutex<VecDeque<String>>>,
    asked: Arc<Mutex<Vec<FeedbackRequest>>>,
}

impl Reviewer {
    fn answering(answers: &[&str]) -> Self {
        Reviewer {
            answers: Arc::new(Mutex::new(answers.iter().map(|a| a.to_string()).collect())),
            asked: Arc::default(),
        }
    }

    fn provider(&self) -> impl crewflow::FeedbackProvider {
        let me = self.clone();
        move |request: &FeedbackRequest| {
            me.asked.lock().unwrap().push(request.clone());
            let answer = me.answers.lock().unwrap().pop_front();
            async move {
                match answer {
                    Some(a) => Ok(FeedbackReply::Answer(a)),
                    None => Err(StepError::msg("the reviewer has no more answers")),
                }
            }
        }
    }

    fn asked(&self) -> Vec<FeedbackRequest> {
        self.asked.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn an_approved_output_passes_as_it_is() {
    let server = TestServer::start(vec![openai_completion("Soap: clean hands, $5.")]).await;
    let reviewer = Reviewer::answering(&["Approve"]);
    let task = Task::new("ad", "Write an ad.")
        .agent(copywriter(&server))
        .human_review(HumanReview::new("Publish this ad?").provider(reviewer.provider()));
    let out = task.execute(&Inputs::new(), &[]).await.unwrap();
    assert_eq!((out.raw.as_str(), out.attempts), ("Soap: clean hands, $5.", 1));
    let asked = reviewer.asked();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].message.starts_with("Publish this ad?"), "{}", asked[0].message);
    assert_eq!(asked[0].output, json!("Soap: clean hands, $5."));
    assert_eq!(asked[0].metadata, Some(json!({ "task": "ad", "agent": "Copywriter", "round": 1 })));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn feedback_reruns_the_task_with_the_feedback_and_the_previous_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ad.md");
    let server = TestServer::start(vec![
        openai_completion("Soap! Soap! Soap! It cleans everything you own."),
        openai_completion("Soap: $5, clean hands."),
    ])
    .await;
    let reviewer = Reviewer::answering(&["Too long; give the price.", ""]);
    let task = Task::new("ad", "Write an ad.")
        .agent(copywriter(&server))
        .output_file(file.to_str().unwrap())
        .human_review(HumanReview::new("Publish this ad?").provider(reviewer.provider()));
    let out = task.execute(&Inputs::new(), &[]).await.unwrap();
    assert_eq!(out.raw, "Soap: $5, clean hands.");
    assert_eq!(out.attempts, 2);
    let retry = user_prompt(&server.requests()[1]);
    assert!(retry.contains("asked for changes: Too long; give the price."), "{retry}");
    assert!(retry.contains("<previous_answer>\nSoap! Soap! Soap! It cleans everything you own.\n</previous_answer>"));
    let asked = reviewer.asked();
    assert_eq!(asked.len(), 2, "an empty answer approves");
    assert_eq!(asked[1].output, json!("Soap: $5, clean hands."));
    assert_eq!(asked[1].metadata.as_ref().unwrap()["round"], 2);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "Soap: $5, clean hands.",
        "only the approved answer is written"
    );
}

#[tokio::test]
async fn a_reviewer_who_never_approves_fails_the_task_after_max_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ad.md");
    let server = TestServer::start(vec![openai_completion("One."), openai_completion("Two.")]).await;
    let reviewer = Reviewer::answering(&["no", "still no"]);
    let task = Task::new("ad", "Write an ad.")
        .agent(copywriter(&server))
        .output_file(file.to_str().unwrap())
        .human_review(HumanReview::new("OK?").provider(reviewer.provider()).max_revisions(1));
    let err = task.execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(matches!(&err, AgentError::ReviewRejected { rounds: 2, feedback, .. } if feedback == "still no"), "{err}");
    assert!(err.to_string().contains("max_revisions allows 1 revisions"), "{err}");
    assert!(!file.exists(), "a rejected output is not written");
}

#[tokio::test]
async fn a_failing_or_pausing_provider_is_a_clear_error() {
    let server = TestServer::start(vec![openai_completion("One."), openai_completion("Two.")]).await;
    let empty = Reviewer::answering(&[]);
    let task = Task::new("ad", "Write an ad.")
        .agent(copywriter(&server))
        .human_review(HumanReview::new("OK?").provider(empty.provider()));
    let err = task.execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(matches!(&err, AgentError::ReviewFailed { .. }), "{err}");
    assert!(err.to_string().contains("the reviewer has no more answers"), "{err}");

    let task = Task::new("ad", "Write an ad.")
        .agent(copywriter(&server))
        .human_review(HumanReview::new("OK?").provider(DeferredFeedback));
    let err = task.execute(&Inputs::new(), &[]).await.unwrap_err();
    assert!(matches!(&err, AgentError::ReviewFailed { .. }), "{err}");
    assert!(err.to_string().contains("paused the run") && err.to_string().contains("#[human_feedback]"), "{err}");
}

/// Inside a step, a review without a provider of its own asks the flow's; its question and
/// answer are events of the step. The step fails once after the crew and is retried: the
/// recorded answers are replayed, so the reviewer is not asked again, and the model neither.
#[tokio::test]
async fn in_a_step_the_flows_provider_reviews_and_a_retry_does_not_ask_again() {
    let server = TestServer::start(vec![openai_completion("Draft one."), openai_completion("Draft two.")]).await;
    let llm = openai_llm(&server);
    let reviewer = Reviewer::answering(&["Mention the price.", "approve"]);
    let events = Arc::new(Mutex::new(Vec::<Event>::new()));
    let seen = events.clone();
    let attempts = Arc::new(AtomicUsize::new(0));
    let tries = attempts.clone();
    let dir = tempfile::tempdir().unwrap();
    let flow = FlowBuilder::<()>::new("reviewed_ads")
        .start("write", move |_cx: Cx<()>, (): ()| {
            let (llm, tries) = (llm.clone(), tries.clone());
            async move {
                let writer = Agent::new(llm).role("Copywriter");
                let task =
                    Task::new("ad", "Write an ad.").agent(writer.clone()).human_review(HumanReview::new("Publish?"));
                let out = Crew::new([writer], [task]).kickoff(&Inputs::new()).await?;
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StepError::msg("a failure after the crew"));
                }
                Ok::<_, StepError>(out.raw)
            }
        })
        .feedback_provider(reviewer.provider())
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        .store(SqliteStore::open(dir.path().join("runs.db")))
        .observe(move |e: &Event| seen.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "Draft two.");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let asked = reviewer.asked();
    assert_eq!(asked.len(), 2, "asked twice in all: the retry replayed both answers");
    assert_eq!(asked[0].run_id, run.id);
    assert_eq!((asked[0].flow.as_str(), asked[0].step.as_str()), ("reviewed_ads", "write"));
    assert_eq!(server.requests().len(), 2);
    let events = events.lock().unwrap();
    let received: Vec<(String, Option<String>)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FeedbackReceived { feedback, outcome } if e.step.as_deref() == Some("write") => {
                Some((feedback.clone(), outcome.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        received[..2],
        [
            ("Mention the price.".to_string(), Some("revise".to_string())),
            ("approve".to_string(), Some("approved".to_string()))
        ]
    );
    let requested = events.iter().filter(|e| matches!(e.kind, EventKind::FeedbackRequested { .. })).count();
    assert!(requested >= 2, "{requested}");
}

/// Each record of a feedback history: its step, answer, outcome, output shown and round.
fn answers(history: &[FeedbackResult]) -> Vec<Value> {
    history
        .iter()
        .map(|f| {
            let round = f.metadata.as_ref().and_then(|m| m.get("round").cloned());
            json!([f.step, f.feedback, f.outcome, f.output, round])
        })
        .collect()
}

/// The feedback history in the stored run's record, as JSON (`[]` before there is one).
async fn stored_history(store: &SqliteStore, run: RunId) -> Value {
    let stored = store.load_run(run).await.unwrap();
    match stored.and_then(|s| s.feedback) {
        Some(record) => serde_json::from_str::<Value>(&record).unwrap()["history"].clone(),
        None => json!([]),
    }
}

/// A review's answers are in the run's feedback history, in order and before the answer to a
/// `#[human_feedback]` step after it, with the output shown, the outcome and the question; in
/// a persisted run, the stored run's record has them too. The step fails once after the crew
/// and is retried: the replayed answers are not recorded a second time.
#[tokio::test]
async fn review_answers_are_in_the_runs_feedback_history_once() {
    let server = TestServer::start(vec![openai_completion("Draft one."), openai_completion("Draft two.")]).await;
    let llm = openai_llm(&server);
    let reviewer = Reviewer::answering(&["Mention the price.", "approve", "ship it"]);
    let attempts = Arc::new(AtomicUsize::new(0));
    let tries = attempts.clone();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("runs.db"));
    let flow = FlowBuilder::<()>::new("reviewed_ads")
        .start("write", move |cx: Cx<()>, (): ()| {
            let (llm, tries) = (llm.clone(), tries.clone());
            async move {
                let writer = Agent::new(llm).role("Copywriter");
                let task =
                    Task::new("ad", "Write an ad.").agent(writer.clone()).human_review(HumanReview::new("Publish?"));
                let out = Crew::new([writer], [task]).kickoff(&Inputs::new()).await?;
                assert_eq!(cx.feedback_history().len(), 2, "in the history while the step runs");
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StepError::msg("a failure after the crew"));
                }
                Ok::<_, StepError>(out.raw)
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        .listen("publish", step("write"), |_cx, ad: String| async move { Ok(ad) })
        .human_feedback(HumanFeedback::new("Ship it?"))
        .feedback_provider(reviewer.provider())
        .store(store.clone())
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(reviewer.asked().len(), 3, "the retry asked nothing again");
    let history = run.feedback_history();
    assert_eq!(
        answers(history),
        [
            json!(["write", "Mention the price.", "revise", "Draft one.", 1]),
            json!(["write", "approve", "approved", "Draft two.", 2]),
            json!(["publish", "ship it", null, "Draft two.", null]),
        ]
    );
    assert_eq!(
        history[0].metadata,
        Some(json!({ "task": "ad", "agent": "Copywriter", "round": 1, "message": "Publish?" }))
    );
    assert!(history[0].key.is_some() && history[0].key != history[1].key, "{history:?}");
    assert_eq!(history[2].key, None, "a #[human_feedback] answer has no key");
    assert_eq!(stored_history(&store, run.id).await, serde_json::to_value(history).unwrap());
}

/// The crash case: a sibling step's checkpoint, written while the reviewed step is still in
/// flight, already holds its answers; the reviewed step then fails, and the run is resumed:
/// the step runs again, replays the answers from the journal, and the history keeps them once.
#[tokio::test]
async fn a_resumed_step_replays_its_review_without_recording_it_twice() {
    let server = TestServer::start(vec![openai_completion("Draft one."), openai_completion("Draft two.")]).await;
    let llm = openai_llm(&server);
    let reviewer = Reviewer::answering(&["Shorter.", "ok"]);
    let attempts = Arc::new(AtomicUsize::new(0));
    let tries = attempts.clone();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("runs.db"));
    let (watched, run_id) = (store.clone(), RunId::new());
    let flow = FlowBuilder::<()>::new("reviewed_ads")
        .start("write", move |_cx: Cx<()>, (): ()| {
            let (llm, tries, watched) = (llm.clone(), tries.clone(), watched.clone());
            async move {
                let writer = Agent::new(llm).role("Copywriter");
                let task = Task::new("ad", "Write an ad.").agent(writer.clone()).human_review(HumanReview::new("OK?"));
                let out = Crew::new([writer], [task]).kickoff(&Inputs::new()).await?;
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Fail only once the sibling's checkpoint has stored the answers.
                    let started = std::time::Instant::now();
                    while stored_history(&watched, run_id).await.as_array().map_or(0, Vec::len) < 2 {
                        assert!(started.elapsed() < Duration::from_secs(10), "the sibling never checkpointed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    return Err(StepError::msg("killed after the review"));
                }
                Ok::<_, StepError>(out.raw)
            }
        })
        .start("sibling", |cx: Cx<()>, (): ()| async move {
            while cx.feedback_history().len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok("checkpointed".to_string())
        })
        .feedback_provider(reviewer.provider())
        .store(store.clone())
        .build()
        .unwrap();
    let err = flow.kickoff(Kickoff::new().run_id(run_id)).await.unwrap_err();
    assert!(err.to_string().contains("killed after the review"), "{err}");
    let run = flow.resume(run_id).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(reviewer.asked().len(), 2, "the resumed step asked nothing again");
    assert_eq!(server.requests().len(), 2);
    let said: Vec<&str> = run.feedback_history().iter().map(|f| f.feedback.as_str()).collect();
    assert_eq!(said, ["Shorter.", "ok"], "each answer once");
    assert_eq!(stored_history(&store, run_id).await, serde_json::to_value(run.feedback_history()).unwrap());
}

/// Outside a flow, a review without a provider asks the process default. (The only test of
/// this binary relying on the process default: every other review names its provider.)
#[tokio::test]
async fn outside_a_flow_the_process_default_reviews() {
    let server = TestServer::start(vec![openai_completion("Draft.")]).await;
    let reviewer = Reviewer::answering(&["lgtm"]);
    crewflow::set_default_feedback_provider(reviewer.provider());
    let task = Task::new("ad", "Write an ad.").agent(copywriter(&server)).human_review(HumanReview::new("OK?"));
    let out = task.execute(&Inputs::new(), &[]).await.unwrap();
    assert_eq!(out.raw, "Draft.");
    assert_eq!(reviewer.asked().len(), 1);
    assert_eq!(reviewer.asked()[0].output, Value::String("Draft.".into()));
}

/// `human_input: true` in tasks.yaml is a human review, asked of the flow's provider.
#[tokio::test]
async fn human_input_in_tasks_yaml_is_a_review() {
    let server = TestServer::start(vec![openai_completion("Draft.")]).await;
    let registry = crewflow::agents::CrewRegistry::new().default_llm(openai_llm(&server));
    let crew = Crew::from_yaml(
        "writer:\n  role: Copywriter\n",
        "ad:\n  description: Write an ad.\n  agent: writer\n  human_input: true\n",
        &registry,
    )
    .unwrap();
    let reviewer = Reviewer::answering(&["yes"]);
    let flow = FlowBuilder::<()>::new("yaml_review")
        .start("write", move |_cx: Cx<()>, (): ()| {
            let crew = crew.clone();
            async move { Ok::<_, StepError>(crew.kickoff(&Inputs::new()).await?.raw) }
        })
        .feedback_provider(reviewer.provider())
        .build()
        .unwrap();
    assert_eq!(flow.kickoff(()).await.unwrap().output::<String>().unwrap(), "Draft.");
    let asked = reviewer.asked();
    assert_eq!(asked.len(), 1);
    assert!(asked[0].message.starts_with("Review the output of task `ad`."), "{}", asked[0].message);
}
