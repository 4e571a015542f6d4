//! Human feedback answered in place (reference cases G: C67–C75) and the feedback weaknesses of
//! the reference (§0 items 9, 10, 26). Pauses and resumes are in `flow_pause.rs`.
//!
//! Adaptations (see docs/human_feedback.md): a reviewed step's output is always a
//! `FeedbackResult` (with `emit` too), so listeners of the step and of its outcomes receive the
//! same thing. C77 (lesson learning) is in `flow_feedback_learn.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::FeedbackError;
use std::collections::VecDeque;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::Log;
use crewflow::feedback::{ClassifyFuture, FeedbackReply, FeedbackRequest};
use crewflow::prelude::*;
use crewflow::{Error, FeedbackProvider, FeedbackResult, HumanFeedback};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Answers from a script, in order; records every request it sees.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<String>>>,
    seen: Arc<Mutex<Vec<FeedbackRequest>>>,
}

impl Scripted {
    fn new(answers: &[&str]) -> Self {
        let s = Scripted::default();
        s.answers.lock().unwrap().extend(answers.iter().map(|a| a.to_string()));
        s
    }

    fn requests(&self) -> Vec<FeedbackRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl FeedbackProvider for Scripted {
    fn request(&self, request: &FeedbackRequest) -> crewflow::feedback::FeedbackFuture {
        self.seen.lock().unwrap().push(request.clone());
        let answer = self.answers.lock().unwrap().pop_front().expect("the script ran out of answers");
        Box::pin(async move { Ok(FeedbackReply::Answer(answer)) })
    }
}

/// A stand-in for a model: "good" means approved, "again" means revise, else nothing.
fn keyword_classifier(feedback: &str, _outcomes: &[Arc<str>]) -> ClassifyFuture {
    let label = if feedback.contains("good") {
        Some("approved".to_string())
    } else if feedback.contains("again") {
        Some("revise".to_string())
    } else {
        None
    };
    Box::pin(async move { Ok(label) })
}

#[derive(Default, Clone, Debug, Serialize, Deserialize)]
struct Doc {
    review_count: u32,
    seen_feedback: Option<String>,
    history_len: usize,
}

// ---- C67: feedback without emit ----

struct Basic {
    reviewer: Scripted,
}

#[flow(state = Doc)]
impl Basic {
    #[start]
    #[human_feedback(message = "Is this good?", provider = self.reviewer.clone(), metadata = json!({"channel": "slack"}))]
    async fn generate(&self) -> Result<String> {
        Ok("content".to_string())
    }
}

/// C67: the run's result is the feedback result (output, feedback, no outcome, the step's
/// metadata); `last_feedback` is it too.
#[tokio::test]
async fn c67_feedback_without_emit_is_the_result() {
    let reviewer = Scripted::new(&["feedback"]);
    let run = Basic { reviewer: reviewer.clone() }.into_flow().unwrap().kickoff(()).await.unwrap();
    let result = run.output::<FeedbackResult>().unwrap();
    assert_eq!(result.output, json!("content"));
    assert_eq!(result.feedback, "feedback");
    assert_eq!(result.outcome, None);
    assert_eq!(result.metadata, Some(json!({"channel": "slack"})));
    assert_eq!(result.output_as::<String>().unwrap(), "content");
    assert_eq!(run.last_feedback(), Some(&result));
    let asked = reviewer.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!((asked[0].step.as_str(), asked[0].message.as_str()), ("generate", "Is this good?"));
    assert_eq!(asked[0].output, json!("content"));
}

// ---- C69: outcomes route to the matching listener ----

struct Routed {
    reviewer: Scripted,
    log: Log,
}

#[flow(state = Doc)]
impl Routed {
    #[start]
    #[human_feedback(message = "Approve?", emit = ["approved", "rejected"], llm = keyword_classifier, provider = self.reviewer.clone())]
    async fn draft(&self) -> Result<String> {
        Ok("a draft".to_string())
    }

    #[listen("approved")]
    async fn on_approved(&self, review: FeedbackResult) -> Result<String> {
        self.log.push("on_approved");
        Ok(format!("published {}", review.output_as::<String>()?))
    }

    #[listen("rejected")]
    async fn on_rejected(&self) -> Result<String> {
        self.log.push("on_rejected");
        Ok("binned".to_string())
    }
}

/// C69: free text the classifier reads as "approved" runs `on_approved` only, whose output is
/// the run's; exact and case-insensitive answers need no classifier.
#[tokio::test]
async fn c69_outcomes_route_to_the_matching_listener() {
    for (answer, expected, ran) in [
        ("this is good work", "published a draft", "on_approved"),
        ("REJECTED", "binned", "on_rejected"),
        ("approved", "published a draft", "on_approved"),
    ] {
        let log = Log::default();
        let flow = Routed { reviewer: Scripted::new(&[answer]), log: log.clone() }.into_flow().unwrap();
        let run = flow.kickoff(()).await.unwrap();
        assert_eq!(run.output::<String>().unwrap(), expected, "answer {answer:?}");
        assert_eq!(log.entries(), [ran], "answer {answer:?}");
        let outcome = if ran == "on_approved" { "approved" } else { "rejected" };
        assert_eq!(run.last_feedback().unwrap().outcome.as_deref(), Some(outcome));
    }
}

/// C69 (no downstream listener): the result is the feedback result, holding the method's own
/// return value.
#[tokio::test]
async fn c69_an_unhandled_outcome_ends_the_run_with_the_reviewed_output() {
    let flow = FlowBuilder::<Doc>::new("unhandled")
        .start("draft", |_cx, (): ()| async move { Ok("the draft") })
        .human_feedback(HumanFeedback::new("ok?").emit(["approved", "rejected"]).provider(Scripted::new(&["approved"])))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    let result = run.output::<FeedbackResult>().unwrap();
    assert_eq!(
        (result.output_as::<String>().unwrap().as_str(), result.outcome.as_deref()),
        ("the draft", Some("approved"))
    );
}

/// An answer that matches no outcome (the classifier finds none either, and there is no
/// default) is asked again (the
/// reviewer sees why), then fails the step with an error naming the outcomes.
#[tokio::test]
async fn unmatched_answers_are_asked_again_then_fail_clearly() {
    let reviewer = Scripted::new(&["maybe", "approved"]);
    let log = Log::default();
    let flow = Routed { reviewer: reviewer.clone(), log: log.clone() }.into_flow().unwrap();
    let run = flow.kickoff(()).await.unwrap();
    // "maybe" means nothing to the keyword classifier: asked again, then approved.
    assert_eq!(run.output::<String>().unwrap(), "published a draft");
    let asked = reviewer.requests();
    assert_eq!(asked.len(), 2);
    assert!(asked[1].message.contains("\"maybe\"") && asked[1].message.contains("Approve?"), "{}", asked[1].message);

    let stubborn = Scripted::new(&["maybe", "perhaps", "dunno"]);
    let flow = Routed { reviewer: stubborn, log }.into_flow().unwrap();
    let err = flow.kickoff(()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("draft") && text.contains("\"approved\", \"rejected\""), "{text}");
}

// ---- C71: history across steps ----

struct TwoReviews {
    reviewer: Scripted,
}

#[flow(state = Doc)]
impl TwoReviews {
    #[start]
    #[human_feedback(message = "First?", provider = self.reviewer.clone())]
    async fn step1(&self) -> Result<String> {
        Ok("one".to_string())
    }

    #[listen(step1)]
    #[human_feedback(message = "Second?", provider = self.reviewer.clone())]
    async fn step2(&self, first: FeedbackResult) -> Result<String> {
        Ok(format!("two after {}", first.feedback))
    }

    #[listen(step2)]
    async fn step3(&self, cx: &Cx<Doc>) -> Result<usize> {
        let n = cx.feedback_history().len();
        cx.update(|d| d.history_len = n);
        Ok(n)
    }
}

/// C71: two feedback steps give two history entries in execution order; a later step reads 2.
#[tokio::test]
async fn c71_history_accumulates_in_order() {
    let run =
        TwoReviews { reviewer: Scripted::new(&["fine", "great"]) }.into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.output::<usize>().unwrap(), 2);
    let history: Vec<(&str, &str)> =
        run.feedback_history().iter().map(|f| (f.step.as_str(), f.feedback.as_str())).collect();
    assert_eq!(history, [("step1", "fine"), ("step2", "great")]);
    assert_eq!(run.feedback_history()[1].output, json!("two after fine"));
}

// ---- C73: a review loop ----

struct ReviewLoop {
    reviewer: Scripted,
}

#[flow(state = Doc)]
impl ReviewLoop {
    #[start]
    async fn generate(&self) -> Result<String> {
        Ok("v1".to_string())
    }

    #[listen(or(generate, "revise"))]
    #[human_feedback(message = "Publish?", emit = ["revise", "approved"], provider = self.reviewer.clone())]
    async fn review(&self, cx: &Cx<Doc>) -> Result<String> {
        let n = cx.update(|d| {
            d.review_count += 1;
            d.review_count
        });
        Ok(format!("draft {n}"))
    }

    #[listen("approved")]
    async fn publish(&self) -> Result<String> {
        Ok("published".to_string())
    }
}

/// C73: revise ×3 then approved loops back to the same step each time; immediate approval
/// goes straight on.
#[tokio::test]
async fn c73_feedback_self_loop() {
    let run = ReviewLoop { reviewer: Scripted::new(&["revise", "revise", "revise", "approved"]) }
        .into_flow()
        .unwrap()
        .kickoff(())
        .await
        .unwrap();
    assert_eq!(run.step_names(), ["generate", "review", "review", "review", "review", "publish"]);
    assert_eq!(run.output::<String>().unwrap(), "published");
    let outcomes: Vec<&str> = run.feedback_history().iter().filter_map(|f| f.outcome.as_deref()).collect();
    assert_eq!(outcomes, ["revise", "revise", "revise", "approved"]);
    assert_eq!(run.state.review_count, 4);

    let run = ReviewLoop { reviewer: Scripted::new(&["approved"]) }.into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.step_names(), ["generate", "review", "publish"]);
}

// ---- C75: feedback visible downstream ----

struct Visible {
    reviewer: Scripted,
}

#[flow(state = Doc)]
impl Visible {
    #[start]
    #[human_feedback(message = "Review", emit = ["approved", "rejected"], provider = self.reviewer.clone())]
    async fn write(&self, cx: &Cx<Doc>) -> Result<String> {
        cx.update(|d| d.review_count += 1);
        Ok("Content to review".to_string())
    }

    #[listen("approved")]
    async fn after(&self, cx: &Cx<Doc>) -> Result<()> {
        let last = cx.last_feedback().expect("feedback is visible");
        assert_eq!(last.output, json!("Content to review"));
        assert_eq!(last.outcome.as_deref(), Some("approved"));
        cx.update(|d| d.seen_feedback = Some(last.feedback));
        Ok(())
    }
}

/// C75: a listener of the outcome reads the last feedback; the reviewed step's state change
/// persists.
#[tokio::test]
async fn c75_feedback_is_visible_downstream() {
    let run = Visible { reviewer: Scripted::new(&["approved"]) }.into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.state.review_count, 1);
    assert_eq!(run.state.seen_feedback.as_deref(), Some("approved"));
}

// ---- the weaknesses ----

/// Weakness 9: after a feedback step, a later router's listeners get the router's own output,
/// never the stale feedback result.
#[tokio::test]
async fn weakness_09_feedback_never_hijacks_later_router_payloads() {
    let flow = FlowBuilder::<Doc>::new("w9")
        .start("ask", |_cx, (): ()| async move { Ok("draft") })
        .human_feedback(HumanFeedback::new("ok?").provider(Scripted::new(&["fine"])))
        .router("pick", step("ask"), |_cx, _review: FeedbackResult| async move { Ok("left".to_string()) })
        .routes(["left"])
        .listen("on_left", label("left"), |_cx, route: String| async move { Ok(format!("got {route}")) })
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "got left");
}

/// Weakness 10: a router with feedback (no emit) keeps routing by its own label; the feedback
/// is recorded.
#[tokio::test]
async fn weakness_10_a_router_with_feedback_keeps_routing() {
    let flow = FlowBuilder::<Doc>::new("w10")
        .start_router("route", |_cx, (): ()| async move { Ok("go".to_string()) })
        .routes(["go", "stop"])
        .terminal(["stop"])
        .human_feedback(HumanFeedback::new("Route ok?").provider(Scripted::new(&["sure"])))
        .listen("went", label("go"), |_cx, route: String| async move { Ok(format!("went via {route}")) })
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "went via go");
    assert_eq!(run.last_feedback().unwrap().feedback, "sure");
    assert_eq!(run.last_feedback().unwrap().output, json!("go"));
}

/// Weakness 26: every provider (not only the console) produces requested / received events,
/// and the finished step's output is the recorded one.
#[tokio::test]
async fn weakness_26_feedback_events_for_every_provider() {
    let flow = Routed { reviewer: Scripted::new(&["approved"]), log: Log::default() }.into_flow().unwrap();
    let (handle, mut events) = flow.stream(()).unwrap();
    let mut kinds = Vec::new();
    while let Some(e) = futures::StreamExt::next(&mut events).await {
        match &e.kind {
            EventKind::FeedbackRequested { message, output, emit } => {
                assert_eq!((message.as_str(), output), ("Approve?", &json!("a draft")));
                assert_eq!(emit, &["approved", "rejected"]);
            }
            EventKind::FeedbackReceived { feedback, outcome } => {
                assert_eq!((feedback.as_str(), outcome.as_deref()), ("approved", Some("approved")));
            }
            EventKind::StepFinished { output, .. } if e.step.as_deref() == Some("draft") => {
                let result: FeedbackResult = output.get().unwrap();
                assert_eq!(result.outcome.as_deref(), Some("approved"));
            }
            _ => {}
        }
        kinds.push(e.kind.name());
    }
    handle.await.unwrap();
    let requested = kinds.iter().position(|k| *k == "feedback_requested").expect("requested");
    let received = kinds.iter().position(|k| *k == "feedback_received").expect("received");
    let route = kinds.iter().position(|k| *k == "route_taken").expect("route");
    assert!(requested < received && received < route, "{kinds:?}");
}

/// Bad configurations are build errors naming the fix.
#[test]
fn bad_feedback_configurations_fail_the_build() {
    let router_with_emit = FlowBuilder::<Doc>::new("bad")
        .start_router("r", |_cx, (): ()| async move { Ok("a".to_string()) })
        .routes(["a"])
        .terminal(["a"])
        .human_feedback(HumanFeedback::new("?").emit(["x"]))
        .build()
        .err()
        .unwrap();
    assert!(router_with_emit.to_string().contains("already chooses its label"), "{router_with_emit}");

    let pausing_without_store = FlowBuilder::<Doc>::new("nostore")
        .start("s", |_cx, (): ()| async move { Ok(1) })
        .human_feedback(HumanFeedback::new("?").provider(crewflow::DeferredFeedback))
        .build()
        .err()
        .unwrap();
    assert!(
        matches!(pausing_without_store, Error::Feedback(FeedbackError::PauseWithoutStore { .. })),
        "{pausing_without_store}"
    );
    assert!(pausing_without_store.to_string().contains("FlowBuilder::store"));
}

/// The console provider: a real child process reads the reviewer's line from its standard
/// input while the output and the question are printed.
#[test]
fn the_console_provider_reads_the_terminal() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "console_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("FEEDBACK_CONSOLE_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"Rejected\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("a draft") && stdout.contains("Approve? [approved / rejected]"), "{stdout}");
    assert!(stdout.contains("RESULT=binned"), "{stdout}");
}

/// End of input is no answer: the console provider fails the step instead of taking an empty
/// answer (which would silently choose the default outcome).
#[test]
fn the_console_provider_refuses_to_approve_on_closed_input() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "console_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("FEEDBACK_CONSOLE_CHILD", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("RESULT="), "{stdout}");
    assert!(
        stdout.contains("ERROR=") && stdout.contains("standard input ended before anyone reviewed step `draft`"),
        "{stdout}"
    );
}

/// Not a test of its own: the console tests above re-run this binary with only this function,
/// so that a real process reads a real standard input. Ignored so `cargo test` skips it.
#[test]
#[ignore = "a child process of the_console_provider_reads_the_terminal, started with FEEDBACK_CONSOLE_CHILD"]
fn console_child() {
    assert!(std::env::var("FEEDBACK_CONSOLE_CHILD").is_ok(), "runs only as a child of the console test");
    let flow = FlowBuilder::<Doc>::new("console")
        .start("draft", |_cx, (): ()| async move { Ok("a draft") })
        .human_feedback(
            HumanFeedback::new("Approve?").emit(["approved", "rejected"]).provider(crewflow::ConsoleFeedback),
        )
        .listen("on_rejected", label("rejected"), |_cx, (): ()| async move { Ok("binned") })
        .listen("on_approved", label("approved"), |_cx, (): ()| async move { Ok("kept") })
        .build()
        .unwrap();
    match flow.kickoff_blocking(()) {
        Ok(run) => println!("RESULT={}", run.output::<String>().unwrap()),
        Err(e) => println!("ERROR={e}"),
    }
}

mod over_http {
    use super::*;
    use crate::common::http::{Reply, TestServer};
    use crewflow::feedback::WebhookFeedback;
    use crewflow::llm::{Llm, LlmOptions, RetryPolicy};
    use crewflow::store::{RunStore, SqliteStore};

    fn completion(content: &str) -> serde_json::Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
            "choices": [{ "index": 0, "finish_reason": "stop", "logprobs": null,
                "message": { "role": "assistant", "content": content, "refusal": null } }],
            "usage": { "prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35 }
        })
    }

    /// `llm = ..`: a real model client (OpenAI wire format over loopback) maps free text to an
    /// outcome; its call is one of the run's events.
    #[tokio::test]
    async fn a_model_maps_free_text_to_an_outcome() {
        let server = TestServer::start(vec![Reply::json(200, &completion(r#"{"label": "approved"}"#))]).await;
        let llm = Llm::with_options(
            "openai/gpt-4o-mini",
            LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
        )
        .unwrap();
        let flow = FlowBuilder::<Doc>::new("model")
            .start("draft", |_cx, (): ()| async move { Ok("text") })
            .human_feedback(
                HumanFeedback::new("ok?")
                    .emit(["approved", "rejected"])
                    .classifier(llm)
                    .provider(Scripted::new(&["ship it, nice work"])),
            )
            .listen("ship", label("approved"), |_cx, (): ()| async move { Ok("shipped") })
            .build()
            .unwrap();
        let run = flow.kickoff(()).await.unwrap();
        assert_eq!(run.output::<String>().unwrap(), "shipped");
        let sent = server.requests()[0].json().to_string();
        assert!(
            sent.contains("ship it, nice work") && sent.contains("approved") && sent.contains("rejected"),
            "{sent}"
        );
    }

    /// The webhook provider posts the request (retrying a 5xx) and pauses the run; the answer
    /// comes back through `resume_with_feedback`. A 404 fails the step, naming the URL.
    #[tokio::test]
    async fn the_webhook_provider_posts_and_pauses() {
        let server =
            TestServer::start(vec![Reply::text(503, "busy"), Reply::json(202, &json!({"queued": true}))]).await;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
        let hook = WebhookFeedback::new(format!("{}/hooks/review", server.url)).bearer("s3cret");
        let flow =
            FlowBuilder::<Doc>::new("hooked")
                .start("draft", |_cx, (): ()| async move { Ok("refund 40 EUR") })
                .human_feedback(HumanFeedback::new("Refund?").emit(["approved", "rejected"]).provider(hook))
                .listen("pay", label("approved"), |_cx, r: FeedbackResult| async move {
                    Ok(format!("paid: {}", r.feedback))
                })
                .store(store.clone())
                .build()
                .unwrap();
        let run = flow.kickoff(()).await.unwrap();
        let paused = run.paused().expect("paused").clone();
        let posted = server.requests();
        assert_eq!(posted.len(), 2, "one retry after the 503");
        assert_eq!((posted[1].method.as_str(), posted[1].path.as_str()), ("POST", "/hooks/review"));
        assert_eq!(posted[1].header("authorization"), Some("Bearer s3cret"));
        let body = posted[1].json();
        assert_eq!(body["run_id"], json!(run.id.to_string()));
        assert_eq!((body["step"].clone(), body["message"].clone()), (json!("draft"), json!("Refund?")));
        assert_eq!(
            (body["output"].clone(), body["emit"].clone()),
            (json!("refund 40 EUR"), json!(["approved", "rejected"]))
        );
        assert_eq!(paused.request.output, json!("refund 40 EUR"));

        let done = flow.resume_with_feedback(run.id, "approved").await.unwrap();
        assert_eq!(done.output::<String>().unwrap(), "paid: approved");

        let missing = TestServer::start(vec![Reply::text(404, "no such hook"), Reply::json(200, &json!({}))]).await;
        let flow = FlowBuilder::<Doc>::new("lost")
            .start("draft", |_cx, (): ()| async move { Ok("x") })
            .human_feedback(HumanFeedback::new("?").provider(WebhookFeedback::new(format!("{}/nope", missing.url))))
            .store(store.clone())
            .build()
            .unwrap();
        let err = flow.kickoff(()).await.unwrap_err();
        assert!(matches!(err, Error::Feedback(FeedbackError::FeedbackNotification { .. })), "{err}");
        let text = err.to_string();
        assert!(text.contains("/nope") && text.contains("404") && text.contains("is paused and saved"), "{text}");
        let paused = store
            .list_runs(&crewflow::store::RunFilter {
                flow: Some("lost".into()),
                status: Some(crewflow::store::RunStatus::Paused),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(paused.len(), 1, "the run waits all the same");
        // Once the endpoint is back, the reviewer is told again.
        assert_eq!(flow.notify_pending(paused[0].run_id).await.unwrap(), 1);
        let sent = missing.requests();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[1].json()["run_id"], json!(paused[0].run_id.to_string()));
    }

    /// The webhook is posted once the pause is saved: a reviewer answering the moment the
    /// request arrives (while a slow sibling branch is still finishing) is never refused.
    #[tokio::test]
    async fn an_answer_right_after_the_webhook_is_taken() {
        let server = TestServer::start(vec![Reply::json(200, &json!({}))]).await;
        let dir = tempfile::tempdir().unwrap();
        let flow = FlowBuilder::<Doc>::new("quick")
            .start("draft", |_cx, (): ()| async move { Ok("refund 40 EUR") })
            .human_feedback(
                HumanFeedback::new("Refund?")
                    .emit(["approved", "rejected"])
                    .provider(WebhookFeedback::new(format!("{}/hook", server.url))),
            )
            .start("slow_sibling", |_cx, (): ()| async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Ok(())
            })
            .listen("pay", label("approved"), |_cx, (): ()| async move { Ok("paid") })
            .store(SqliteStore::open(dir.path().join("runs.db")))
            .build()
            .unwrap();
        let kickoff = tokio::spawn({
            let flow = flow.clone();
            async move { flow.kickoff(()).await }
        });
        let request = loop {
            if let Some(r) = server.requests().first() {
                break r.json();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let run_id: crewflow::RunId = request["run_id"].as_str().unwrap().parse().unwrap();
        let done = flow.resume_with_feedback_for(run_id, request["id"].as_u64().unwrap(), "approved").await.unwrap();
        assert_eq!(done.output::<String>().unwrap(), "paid");
        assert!(kickoff.await.unwrap().unwrap().paused().is_some());
    }
}

/// `stream_resume_with_feedback`: the continuation runs in the background and its stream sees
/// it from `run_resumed` to `run_finished`; a refused answer is the handle's error, the stream
/// ends empty and the run stays paused.
#[tokio::test]
async fn an_answer_streams_the_continuation() {
    use crewflow::EventKind;
    let dir = tempfile::tempdir().unwrap();
    let flow = FlowBuilder::<Doc>::new("streamed")
        .start("draft", |_cx, (): ()| async move { Ok("a draft") })
        .human_feedback(HumanFeedback::new("Ok?").emit(["approved", "rejected"]).provider(crewflow::DeferredFeedback))
        .listen("keep", label("approved"), |_cx, (): ()| async move { Ok("kept") })
        .listen("bin", label("rejected"), |_cx, (): ()| async move { Ok("binned") })
        .store(crewflow::store::SqliteStore::open(dir.path().join("runs.db")))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert!(run.paused().is_some());

    let (handle, mut events) = flow.stream_resume_with_feedback(run.id, "perhaps").unwrap();
    assert!(events.next().await.is_none(), "a refused answer runs nothing");
    let err = handle.await.unwrap_err();
    assert!(matches!(err, Error::Feedback(FeedbackError::UnmatchedFeedback { .. })), "{err}");
    assert!(flow.pending_feedback(run.id).await.unwrap().is_some(), "still paused");

    let (handle, mut events) = flow.stream_resume_with_feedback(run.id, "approved").unwrap();
    assert_eq!(handle.id(), run.id);
    let mut kinds = Vec::new();
    while let Some(e) = events.next().await {
        assert_eq!(e.run_id, run.id);
        kinds.push(match e.kind {
            EventKind::RunResumed { .. } => "resumed",
            EventKind::FeedbackReceived { .. } => "feedback",
            EventKind::StepFinished { .. } => "step",
            EventKind::RunFinished { .. } => "finished",
            _ => "other",
        });
    }
    assert_eq!(kinds.first(), Some(&"resumed"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"finished"), "{kinds:?}");
    assert!(kinds.contains(&"feedback"), "{kinds:?}");
    assert_eq!(handle.await.unwrap().output::<String>().unwrap(), "kept");
}
