//! Human feedback in declarative flows (reference case C87): a YAML method whose provider
//! pauses makes the kickoff return a paused run kept in the store the definition declares;
//! the flow rebuilt from the same definition — in this process, another process, or (on
//! PostgreSQL) a third one — resumes it with the answer. A flow-wide provider (the registry's
//! default, or `config.feedback_provider`) answers methods that name none.
//!
//! The other processes are this test binary, re-executed in the role given by `DECL_ROLE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crewflow::declarative::{Call, DeclarativeFlow, FlowDefinition, Registry};
use crewflow::store::RunStatus;
use crewflow::{DeferredFeedback, FeedbackReply, FeedbackRequest, RunId, StepError};
use serde_json::json;

/// C87's flow: `generate` is reviewed by the provider the file names; `finish` answers with
/// what the reviewer said. The store is the one the file declares: `${DECL_DB}` reads it from
/// the environment (the child processes get it there); in-process tests write the path in.
const REVIEWED: &str = r#"
name: reviewed
persist: {store: "${DECL_DB}"}
state:
  default: {topic: flows}
methods:
  generate:
    start: true
    do: {call: code, ref: generate}
    human_feedback:
      message: Is this draft good?
      provider: pausing
      metadata: {channel: reviews}
  finish:
    listen: generate
    do: {call: expression, expr: '"resumed:" + input.feedback'}
"#;

fn registry(generated: Arc<AtomicUsize>) -> Registry {
    Registry::new()
        .function("generate", move |cx: crewflow::Cx<_>, _call: Call| {
            generated.fetch_add(1, Ordering::SeqCst);
            async move {
                let topic = cx.state(|s: &crewflow::declarative::DeclarativeState| s.get("topic").cloned());
                Ok(format!("a draft about {}", topic.and_then(|t| t.as_str().map(String::from)).unwrap_or_default()))
            }
        })
        .feedback_provider("pausing", DeferredFeedback)
}

/// The flow as a process would build it: the definition is read again, the store opened again
/// (at `db`, or where `$DECL_DB` says when `db` is `None`).
fn reviewed_flow(db: Option<&str>, generated: Arc<AtomicUsize>) -> DeclarativeFlow {
    let yaml = match db {
        Some(path) => REVIEWED.replace("${DECL_DB}", path),
        None => REVIEWED.to_string(),
    };
    FlowDefinition::from_yaml(&yaml).unwrap().build(&registry(generated)).unwrap()
}

#[tokio::test]
async fn a_yaml_method_pauses_into_the_declared_store_and_resumes_from_the_definition() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reviews.db").to_string_lossy().to_string();
    let generated = Arc::new(AtomicUsize::new(0));
    let flow = reviewed_flow(Some(&db), generated.clone());

    let run = flow.kickoff(json!({"topic": "YAML"})).await.unwrap();
    let paused = run.paused().expect("the kickoff returns the pause, not an error").clone();
    assert_eq!(paused.request.step, "generate");
    assert_eq!(paused.request.output, json!("a draft about YAML"));
    assert_eq!(paused.request.message, "Is this draft good?");
    assert_eq!(paused.request.metadata, Some(json!({"channel": "reviews"})));

    // The pause is in the file the definition names, for any store opened on it.
    let store = crewflow_store::open(&db).unwrap();
    assert_eq!(store.load_run(paused.run_id).await.unwrap().unwrap().status, RunStatus::Paused);

    // Rebuilt from the definition (as another process would), the run resumes exactly.
    let rebuilt = reviewed_flow(Some(&db), generated.clone());
    assert!(rebuilt.pending_feedback(paused.run_id).await.unwrap().is_some());
    let run = rebuilt.resume_with_feedback(paused.run_id, "looks good").await.unwrap();
    assert_eq!(run.output_json(), Some(json!("resumed:looks good")));
    assert_eq!(generated.load(Ordering::SeqCst), 1, "the reviewed step does not run again");
    assert!(rebuilt.pending_feedback(paused.run_id).await.unwrap().is_none(), "the pending request is gone");
    assert_eq!(store.load_run(paused.run_id).await.unwrap().unwrap().status, RunStatus::Finished);
    assert_eq!(run.state.get("topic"), Some(&json!("YAML")), "the state came back from the store");

    // A definition whose graph changed since the pause does not continue the run.
    let second = flow.kickoff(()).await.unwrap().paused().unwrap().run_id;
    let extended =
        format!("{}\n  audit:\n    listen: finish\n    do: {{call: expression, expr: '1'}}\n", REVIEWED.trim_end())
            .replace("${DECL_DB}", &db);
    let changed = FlowDefinition::from_yaml(&extended).unwrap().build(&registry(generated.clone())).unwrap();
    let err = changed.resume_with_feedback(second, "looks good").await.unwrap_err();
    assert!(matches!(err, crewflow::Error::Durable(crewflow::DurableError::DefinitionChanged { .. })), "{err}");
    assert!(flow.pending_feedback(second).await.unwrap().is_some(), "the refused answer lost nothing");
}

/// C87, second half: no provider in the file, a flow-wide one in the program → it is asked
/// once, for `generate`, and its answer flows on.
#[tokio::test]
async fn a_flow_wide_provider_answers_methods_that_name_none() {
    let yaml = r#"
name: configured
methods:
  generate:
    start: true
    do: {call: expression, expr: '"generated content"'}
    human_feedback: {message: Review this}
  finish:
    listen: generate
    do: {call: expression, expr: '"resumed:" + input.feedback'}
"#;
    let asked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = asked.clone();
    let provider = move |request: &FeedbackRequest| {
        seen.lock().unwrap().push(request.step.clone());
        async move { Ok::<_, StepError>(FeedbackReply::Answer("from-config".into())) }
    };
    let flow =
        FlowDefinition::from_yaml(yaml).unwrap().build(&Registry::new().default_feedback_provider(provider)).unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output_json(), Some(json!("resumed:from-config")));
    assert_eq!(*asked.lock().unwrap(), ["generate"]);

    // `config.feedback_provider` names a registered provider for the same purpose, and wins
    // over the registry's default.
    let named = yaml.replace("name: configured", "name: configured\nconfig: {feedback_provider: desk}");
    let desk = |_: &FeedbackRequest| async move { Ok::<_, StepError>(FeedbackReply::Answer("from-desk".into())) };
    let never = |_: &FeedbackRequest| async move { Err::<FeedbackReply, _>(StepError::msg("the default was asked")) };
    let registry = Registry::new().feedback_provider("desk", desk).default_feedback_provider(never);
    let run = FlowDefinition::from_yaml(&named).unwrap().build(&registry).unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.output_json(), Some(json!("resumed:from-desk")));
}

/// Outcomes (`emit`) in a file: the answer picks the route, an empty answer the default.
#[tokio::test]
async fn yaml_feedback_outcomes_route_the_run() {
    let yaml = r#"
name: approvals
persist: {store: "DB_PATH"}
methods:
  draft:
    start: true
    do: {call: expression, expr: '"draft v1"'}
    human_feedback:
      message: Publish?
      emit: [approved, rejected]
      default_outcome: rejected
      provider: later
  publish: {listen: approved, do: {call: expression, expr: '"published " + input.output'}}
  archive: {listen: rejected, do: {call: expression, expr: '"archived: " + input.feedback'}}
"#;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml.replace("DB_PATH", &dir.path().join("a.db").to_string_lossy());
    let flow = FlowDefinition::from_yaml(&yaml)
        .unwrap()
        .build(&Registry::new().feedback_provider("later", DeferredFeedback))
        .unwrap();
    let first = flow.kickoff(()).await.unwrap().paused().unwrap().run_id;
    let second = flow.kickoff(()).await.unwrap().paused().unwrap().run_id;
    let run = flow.resume_with_feedback(first, "APPROVED").await.unwrap();
    assert_eq!(run.output_json(), Some(json!("published draft v1")));
    let run = flow.resume_with_feedback(second, "").await.unwrap();
    assert_eq!(run.output_json(), Some(json!("archived: ")));
    assert_eq!(run.last_feedback().unwrap().outcome.as_deref(), Some("rejected"));
}

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the declarative pause tests in this file, started by them with DECL_ROLE set"]
fn declarative_child() {
    let (Ok(role), Ok(_)) = (std::env::var("DECL_ROLE"), std::env::var("DECL_DB")) else {
        panic!("declarative_child runs only as a child of the declarative pause tests");
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let flow = reviewed_flow(None, Arc::new(AtomicUsize::new(0)));
        match role.as_str() {
            "pause" => {
                let run = flow.kickoff(json!({"topic": "processes"})).await.unwrap();
                println!("PAUSED {}", run.paused().expect("the run pauses").run_id);
            }
            "resume" => {
                let id: RunId = std::env::var("DECL_RUN").unwrap().parse().unwrap();
                let run = flow.resume_with_feedback(id, "ship it").await.unwrap();
                println!("RESULT {}", run.output_json().unwrap());
            }
            other => panic!("unknown role {other}"),
        }
    });
    std::process::exit(0);
}

fn child(role: &str, db: &str, run: Option<RunId>) -> String {
    let mut env = vec![("DECL_ROLE", role.to_string()), ("DECL_DB", db.to_string())];
    env.extend(run.map(|id| ("DECL_RUN", id.to_string())));
    common::run_child("declarative_child", &env)
}

#[tokio::test]
async fn a_yaml_pause_survives_its_process_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reviews.db").to_string_lossy().to_string();
    let out = child("pause", &db, None);
    let id: RunId = common::line_after(&out, "PAUSED ").trim().parse().unwrap();

    let flow = reviewed_flow(Some(&db), Arc::new(AtomicUsize::new(0)));
    let pending = flow.pending_feedback(id).await.unwrap().expect("pending in the declared store");
    assert_eq!(pending.request.output, json!("a draft about processes"));
    let run = flow.resume_with_feedback(id, "looks good").await.unwrap();
    assert_eq!(run.output_json(), Some(json!("resumed:looks good")));
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_yaml_pause_moves_to_another_process_on_postgres() {
    let db = common::postgres::fresh_schema().await;
    let out = child("pause", &db, None);
    let id: RunId = common::line_after(&out, "PAUSED ").trim().parse().unwrap();
    let out = child("resume", &db, Some(id));
    assert_eq!(common::line_after(&out, "RESULT ").trim(), "\"resumed:ship it\"");

    let store = crewflow_store::open(&db).unwrap();
    let stored = store.load_run(id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished);
}

/// `learn:` in a file names a registered learner: a review's advice is distilled into a lesson
/// (by the model, over loopback HTTP) and the next run's draft is improved with it before the
/// reviewer sees it (reference case C77, declared).
#[tokio::test]
async fn a_yaml_review_teaches_the_registered_learner() {
    use common::http::{TestServer, openai_completion, openai_llm};
    use crewflow::llm::HashEmbedder;
    use crewflow::memory::{Lessons, Memory, MemoryFilter};

    let server = TestServer::start(vec![
        openai_completion(&json!({"lessons": ["Cite a source for every claim."]}).to_string()),
        openai_completion("Rust 1.95 ships faster builds (source: the release notes)."),
    ])
    .await;
    let llm = openai_llm(&server);
    let dir = tempfile::tempdir().unwrap();
    let memory = Memory::new(crewflow::store::SqliteStore::open(dir.path().join("m.db")), HashEmbedder::default());
    let shown = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = shown.clone();
    let reviewer = move |request: &FeedbackRequest| {
        seen.lock().unwrap().push(request.output.clone());
        async move { Ok::<_, StepError>(FeedbackReply::Answer("Always add citations".into())) }
    };
    let registry =
        Registry::new().learner("lessons", Lessons::new(memory.clone(), llm)).default_feedback_provider(reviewer);
    let flow = FlowDefinition::from_yaml(
        r#"
name: newsletter
methods:
  draft:
    start: true
    do: {call: expression, expr: '"Rust 1.95 ships faster builds."'}
    human_feedback: {message: Send it?, learn: lessons}
"#,
    )
    .unwrap()
    .build(&registry)
    .unwrap();

    flow.kickoff(()).await.unwrap();
    let lessons = memory.find(&MemoryFilter::new().scope("lessons/draft")).await.unwrap();
    assert_eq!(lessons.iter().map(|l| l.content.as_str()).collect::<Vec<_>>(), ["Cite a source for every claim."]);
    assert_eq!(lessons[0].source.as_deref(), Some("hitl"));

    // The second run's draft is improved with the lesson before the reviewer sees it.
    let server_calls_before = server.requests().len();
    let second = flow.kickoff(()).await.unwrap();
    let shown = shown.lock().unwrap().clone();
    assert_eq!(shown[0], json!("Rust 1.95 ships faster builds."));
    assert_eq!(shown[1], json!("Rust 1.95 ships faster builds (source: the release notes)."));
    assert!(server.requests().len() > server_calls_before);
    assert_eq!(second.last_feedback().unwrap().feedback, "Always add citations");

    let unknown = FlowDefinition::from_yaml(
        "name: x\nmethods:\n  a: {start: true, do: {call: expression, expr: '1'}, human_feedback: {message: ok?, learn: lesons}}",
    )
    .unwrap()
    .build(&registry)
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("no learner `lesons` is registered — did you mean `lessons`?"), "{unknown}");
}
