//! Learning from human feedback (reference case C77, and weakness 14: lessons are distilled on
//! the resume path too), with real parts: the model is the OpenAI wire format served by a
//! loopback server (every improve and distill call is real HTTP), the memory a SQLite file
//! with the `HashEmbedder`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::FeedbackError;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::http::{Reply, TestServer, openai_completion, openai_llm};
use crewflow::feedback::{DeferredFeedback, FeedbackLearner, FeedbackReply, FeedbackRequest, LearnRequest};
use crewflow::llm::HashEmbedder;
use crewflow::memory::{Lessons, Memory, MemoryFilter, RememberOptions};
use crewflow::prelude::*;
use crewflow::store::SqliteStore;
use crewflow::{Error, FeedbackProvider, FeedbackResult, IntoFlow};
use serde_json::{Value, json};

const DRAFT: &str = "Rust 1.95 ships faster builds.";

/// Answers from a script, in order; records what the reviewer was shown.
#[derive(Clone, Default)]
struct Reviewer {
    answers: Arc<Mutex<VecDeque<String>>>,
    shown: Arc<Mutex<Vec<FeedbackRequest>>>,
}

impl Reviewer {
    fn new(answers: &[&str]) -> Self {
        let r = Reviewer::default();
        r.answers.lock().unwrap().extend(answers.iter().map(|a| a.to_string()));
        r
    }

    fn shown(&self) -> Vec<Value> {
        self.shown.lock().unwrap().iter().map(|r| r.output.clone()).collect()
    }
}

impl FeedbackProvider for Reviewer {
    fn request(&self, request: &FeedbackRequest) -> crewflow::feedback::FeedbackFuture {
        self.shown.lock().unwrap().push(request.clone());
        let answer = self.answers.lock().unwrap().pop_front().expect("the script ran out of answers");
        Box::pin(async move { Ok(FeedbackReply::Answer(answer)) })
    }
}

/// A structured reply listing lessons.
fn lessons_reply(lessons: &[&str]) -> Reply {
    openai_completion(&json!({ "lessons": lessons }).to_string())
}

fn memory(store: SqliteStore) -> Memory {
    Memory::new(store, HashEmbedder::default()).root_scope("/flow/newsletter")
}

type Events = Arc<Mutex<Vec<Event>>>;

fn kinds(events: &Events) -> Vec<EventKind> {
    events.lock().unwrap().iter().map(|e| e.kind.clone()).collect()
}

/// A one-step flow whose output is reviewed with `review`.
fn flow(review: HumanFeedback, store: Option<SqliteStore>) -> (Flow<()>, Events) {
    let events: Events = Arc::default();
    let seen = events.clone();
    let mut b = FlowBuilder::<()>::new("newsletter")
        .start("draft", |_cx, (): ()| async move { Ok(DRAFT.to_string()) })
        .human_feedback(review)
        .observe(move |e: &Event| seen.lock().unwrap().push(e.clone()));
    if let Some(store) = store {
        b = b.store(store);
    }
    (b.build().unwrap(), events)
}

async fn lessons_in(memory: &Memory) -> Vec<crewflow::memory::MemoryRecord> {
    memory.find(&MemoryFilter::new().scope("lessons/draft")).await.unwrap()
}

// ---- learn off: memory never touched ----

#[tokio::test]
async fn without_learn_the_memory_and_the_model_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![]).await;
    let path = dir.path().join("memory.db");
    // A learner exists, but the step does not learn with it.
    let _lessons = Lessons::new(memory(SqliteStore::open(&path)), openai_llm(&server));
    let reviewer = Reviewer::new(&["Always add citations"]);
    let (flow, events) = flow(HumanFeedback::new("Send it?").provider(reviewer.clone()), None);
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.last_feedback().unwrap().feedback, "Always add citations");
    assert_eq!(reviewer.shown(), [json!(DRAFT)]);
    assert!(!path.exists(), "the memory's database was never opened");
    assert!(server.requests().is_empty(), "the model was never called");
    assert!(!kinds(&events).iter().any(|k| k.name().starts_with("feedback_learn") || k.name() == "feedback_improved"));
}

// ---- learn on: feedback distilled into lessons with source "hitl" (through the macro) ----

struct Newsletter {
    reviewer: Reviewer,
    lessons: Lessons,
}

#[flow]
impl Newsletter {
    #[start]
    #[human_feedback(message = "Send it?", provider = self.reviewer.clone(), learn = self.lessons.clone(), learn_strict = false)]
    async fn draft(&self) -> Result<String> {
        Ok(DRAFT.to_string())
    }
}

#[tokio::test]
async fn feedback_is_distilled_into_lessons_stored_with_source_hitl() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![lessons_reply(&["Cite a source for every claim.", "  "])]).await;
    let memory = memory(SqliteStore::open(dir.path().join("memory.db")));
    let reviewer = Reviewer::new(&["Always add citations"]);
    let events: Events = Arc::default();
    let seen = events.clone();
    let flow = Newsletter { reviewer: reviewer.clone(), lessons: Lessons::new(memory.clone(), openai_llm(&server)) }
        .into_builder()
        .observe(move |e: &Event| seen.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();

    // No lesson yet: the reviewer saw the raw draft, and only the distillation called the model.
    assert_eq!(reviewer.shown(), [json!(DRAFT)]);
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one call: the distillation");
    let body = requests[0].json();
    assert_eq!(body["response_format"]["type"], "json_schema", "structured output");
    let prompt = body["messages"].to_string();
    assert!(prompt.contains("Always add citations") && prompt.contains(DRAFT), "{prompt}");

    let stored = lessons_in(&memory).await;
    assert_eq!(stored.len(), 1, "the blank lesson is dropped: {stored:?}");
    let lesson = &stored[0];
    assert_eq!(lesson.content, "Cite a source for every claim.");
    assert_eq!(lesson.source.as_deref(), Some("hitl"));
    assert_eq!(lesson.scope, "/flow/newsletter/lessons/draft");
    assert_eq!(lesson.categories, ["lesson"]);
    assert_eq!(lesson.metadata["run_id"], json!(run.id.to_string()));
    assert_eq!(lesson.metadata["feedback"], json!("Always add citations"));
    assert!(kinds(&events).iter().any(
        |k| matches!(k, EventKind::FeedbackLearned { lessons } if lessons == &["Cite a source for every claim."])
    ));
}

#[tokio::test]
async fn lessons_are_stored_and_recalled_by_the_configured_source() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![lessons_reply(&["Keep it under 100 words."])]).await;
    let memory = memory(SqliteStore::open(dir.path().join("memory.db")));
    // A lesson of another source is not applied.
    memory.remember("Write in French.", RememberOptions::new().scope("lessons/draft").source("hitl")).await.unwrap();
    let lessons = Lessons::new(memory.clone(), openai_llm(&server));
    let review =
        HumanFeedback::new("Send it?").provider(Reviewer::new(&["Too long"])).learn(lessons).learn_source("qa");
    let (flow, _) = flow(review, None);
    flow.kickoff(()).await.unwrap();
    assert_eq!(server.requests().len(), 1, "no improvement call: no `qa` lesson yet");
    let qa = memory.find(&MemoryFilter::new().scope("lessons/draft").source("qa")).await.unwrap();
    assert_eq!(qa.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(), ["Keep it under 100 words."]);
}

// ---- learn on + a stored lesson: the reviewer sees the improved output ----

#[tokio::test]
async fn a_stored_lesson_improves_the_output_the_reviewer_sees_and_the_step_records() {
    let dir = tempfile::tempdir().unwrap();
    let improved = "Rust 1.95 ships faster builds [1].\n\n[1] https://blog.rust-lang.org/";
    let server = TestServer::start(vec![openai_completion(improved)]).await;
    let memory = memory(SqliteStore::open(dir.path().join("memory.db")));
    memory
        .remember("Cite a source for every claim.", RememberOptions::new().scope("lessons/draft").source("hitl"))
        .await
        .unwrap();
    let reviewer = Reviewer::new(&[""]);
    let review = HumanFeedback::new("Send it?")
        .provider(reviewer.clone())
        .learn(Lessons::new(memory.clone(), openai_llm(&server)));
    let (flow, events) = flow(review, None);
    let run = flow.kickoff(()).await.unwrap();

    assert_eq!(reviewer.shown(), [json!(improved)], "the reviewer saw the improved text");
    let result: FeedbackResult = run.output_of("draft").unwrap().unwrap();
    assert_eq!(result.output, json!(improved), "the step records the improved text");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one call: the improvement (blank feedback distills nothing)");
    let prompt = requests[0].json()["messages"].to_string();
    assert!(prompt.contains("Cite a source for every claim.") && prompt.contains(DRAFT), "{prompt}");
    assert!(
        kinds(&events)
            .iter()
            .any(|k| matches!(k, EventKind::FeedbackImproved { output } if output == &json!(improved)))
    );
    assert_eq!(lessons_in(&memory).await.len(), 1, "nothing new stored");
}

// ---- empty feedback: nothing stored ----

#[tokio::test]
async fn blank_feedback_stores_nothing_and_calls_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![]).await;
    let memory = memory(SqliteStore::open(dir.path().join("memory.db")));
    let review = HumanFeedback::new("Send it?")
        .provider(Reviewer::new(&["   "]))
        .learn(Lessons::new(memory.clone(), openai_llm(&server)));
    let (flow, events) = flow(review, None);
    flow.kickoff(()).await.unwrap();
    assert!(server.requests().is_empty());
    assert!(lessons_in(&memory).await.is_empty());
    assert!(!kinds(&events).iter().any(|k| matches!(k, EventKind::FeedbackLearned { .. })));
}

// ---- pre-review failure: raw output + warning, or the step fails under learn_strict ----

async fn memory_with_a_lesson(dir: &tempfile::TempDir) -> Memory {
    let memory = memory(SqliteStore::open(dir.path().join("memory.db")));
    memory
        .remember("Cite a source for every claim.", RememberOptions::new().scope("lessons/draft").source("hitl"))
        .await
        .unwrap();
    memory
}

#[tokio::test]
async fn a_failed_improvement_shows_the_raw_output_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![Reply::text(500, "the model is down")]).await;
    let memory = memory_with_a_lesson(&dir).await;
    let reviewer = Reviewer::new(&[""]);
    let review =
        HumanFeedback::new("Send it?").provider(reviewer.clone()).learn(Lessons::new(memory, openai_llm(&server)));
    let (flow, events) = flow(review, None);
    let run = flow.kickoff(()).await.unwrap();
    assert!(run.is_finished());
    assert_eq!(reviewer.shown(), [json!(DRAFT)], "the raw output was shown");
    let warning = kinds(&events)
        .into_iter()
        .find_map(|k| match k {
            EventKind::FeedbackLearnFailed { phase, error } => Some((phase, error)),
            _ => None,
        })
        .expect("a warning event");
    assert_eq!(warning.0, "improve");
    assert!(warning.1.contains("improve the output"), "{}", warning.1);
}

#[tokio::test]
async fn under_learn_strict_a_failed_improvement_fails_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![Reply::text(500, "the model is down")]).await;
    let memory = memory_with_a_lesson(&dir).await;
    let reviewer = Reviewer::new(&[""]);
    let review = HumanFeedback::new("Send it?")
        .provider(reviewer.clone())
        .learn(Lessons::new(memory, openai_llm(&server)))
        .learn_strict(true);
    let (flow, _) = flow(review, None);
    let err = flow.kickoff(()).await.unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::FeedbackLearn { ref step, phase: "improve", .. }) if step == "draft"),
        "{err:?}"
    );
    assert!(err.to_string().contains("learn_strict"), "the message names the fix: {err}");
    assert!(reviewer.shown().is_empty(), "nobody was asked");
}

#[test]
fn learn_strict_without_a_learner_is_a_build_error() {
    let err = FlowBuilder::<()>::new("f")
        .start("draft", |_cx, (): ()| async move { Ok(1) })
        .human_feedback(HumanFeedback::new("?").learn_strict(true))
        .build()
        .err()
        .expect("a build error");
    assert!(err.to_string().contains("`learn_strict` needs a learner"), "{err}");
}

// ---- distillation failure: warning, the flow completes, nothing stored ----

#[tokio::test]
async fn a_failed_distillation_warns_and_the_flow_completes_storing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![Reply::text(500, "the model is down")]).await;
    let memory = memory(SqliteStore::open(dir.path().join("memory.db")));
    let review = HumanFeedback::new("Send it?")
        .provider(Reviewer::new(&["Always add citations"]))
        .learn(Lessons::new(memory.clone(), openai_llm(&server)))
        .learn_strict(true); // strictness covers the improvement only
    let (flow, events) = flow(review, None);
    let run = flow.kickoff(()).await.unwrap();
    assert!(run.is_finished());
    assert_eq!(run.last_feedback().unwrap().feedback, "Always add citations");
    assert_eq!(server.requests().len(), 1);
    assert!(lessons_in(&memory).await.is_empty());
    assert!(
        kinds(&events).iter().any(|k| matches!(k, EventKind::FeedbackLearnFailed { phase, .. } if phase == "learn"))
    );
}

// ---- the resume path (weakness 14): lessons distilled once per answer ----

#[tokio::test]
async fn resume_with_feedback_distills_lessons_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![lessons_reply(&["Cite a source for every claim."])]).await;
    // One SQLite file holds the runs and the memories.
    let store = SqliteStore::open(dir.path().join("crewflow.db"));
    let memory = memory(store.clone());
    let lessons = Lessons::new(memory.clone(), openai_llm(&server));
    let review = HumanFeedback::new("Send it?").provider(DeferredFeedback).learn(lessons.clone());
    let (flow, events) = flow(review, Some(store));

    let paused = flow.kickoff(()).await.unwrap();
    let request = paused.paused().expect("paused for review").request.clone();
    assert!(server.requests().is_empty(), "nothing learned before the answer");

    let done = flow.resume_with_feedback(paused.id, "Always add citations").await.unwrap();
    assert!(done.is_finished());
    assert_eq!(server.requests().len(), 1, "distilled on resume");
    let stored = lessons_in(&memory).await;
    assert_eq!(stored.iter().map(|r| r.content.as_str()).collect::<Vec<_>>(), ["Cite a source for every claim."]);
    assert_eq!(stored[0].source.as_deref(), Some("hitl"));
    assert_eq!(stored[0].metadata["request_id"], json!(request.id));
    assert!(kinds(&events).iter().any(|k| matches!(k, EventKind::FeedbackLearned { .. })));

    // The answer is taken once: a second resume is refused and learns nothing.
    assert!(matches!(
        flow.resume_with_feedback(paused.id, "Always add citations").await,
        Err(Error::Feedback(FeedbackError::NotPaused { .. }))
    ));
    // A resume retried after a crash asks the learner again for the same (run, request): it
    // keeps the lessons once, without calling the model.
    let again = LearnRequest {
        run_id: paused.id,
        request_id: request.id,
        flow: "newsletter".into(),
        step: "draft".into(),
        message: request.message.clone(),
        output: request.output.clone(),
        feedback: "Always add citations".into(),
        source: "hitl".into(),
    };
    assert!(lessons.learn(&again).await.unwrap().is_empty());
    assert_eq!(server.requests().len(), 1);
    assert_eq!(lessons_in(&memory).await.len(), 1);
}

#[tokio::test]
async fn a_paused_review_shows_the_improved_output_and_resumes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let improved = "Rust 1.95 ships faster builds [1].";
    let server = TestServer::start(vec![openai_completion(improved)]).await;
    let store = SqliteStore::open(dir.path().join("crewflow.db"));
    let memory = memory(store.clone());
    memory
        .remember("Cite a source for every claim.", RememberOptions::new().scope("lessons/draft").source("hitl"))
        .await
        .unwrap();
    let review =
        HumanFeedback::new("Send it?").provider(DeferredFeedback).learn(Lessons::new(memory, openai_llm(&server)));
    let (flow, _) = flow(review, Some(store));
    let paused = flow.kickoff(()).await.unwrap();
    assert_eq!(paused.paused().unwrap().request.output, json!(improved));
    let done = flow.resume_with_feedback(paused.id, "").await.unwrap();
    let result: FeedbackResult = done.output_of("draft").unwrap().unwrap();
    assert_eq!(result.output, json!(improved));
    assert_eq!(server.requests().len(), 1, "blank feedback distills nothing");
}
