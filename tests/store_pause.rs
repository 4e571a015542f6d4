//! A pause outlives its process: a child process runs a flow until it pauses for feedback and
//! exits; the run is resumed with the answer in another process, from the SQLite file or (when
//! `CREWFLOW_TEST_POSTGRES` is set) from PostgreSQL, where a third process does the resume, as
//! another machine would. The state the steps built before the pause, the sibling branch that
//! finished before it and the join's progress all survive.
//!
//! The processes are this test binary, re-executed in the role given by `PAUSE_ROLE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;

use crewflow::prelude::*;
use crewflow::store::{RunStatus, RunStore, SqliteStore};
use crewflow::{DeferredFeedback, FeedbackResult, HumanFeedback, RunId};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Invoice {
    amount: u32,
    checks: Vec<String>,
    /// The process that ran each step.
    pids: Vec<(String, u32)>,
}

fn open_store(url: &str) -> Arc<dyn RunStore> {
    if url.starts_with("postgres") {
        Arc::new(crewflow_store::PostgresStore::connect_lazy(url).unwrap())
    } else {
        Arc::new(SqliteStore::open(url))
    }
}

fn mark(cx: &Cx<Invoice>, step: &str) {
    cx.update(|i| i.pids.push((step.to_string(), std::process::id())));
}

/// extract → (approve with a pausing review ‖ check) → book once both are done.
fn approval_flow(store: Arc<dyn RunStore>) -> Flow<Invoice> {
    FlowBuilder::<Invoice>::new("approval")
        .start("extract", |cx: Cx<Invoice>, (): ()| async move {
            mark(&cx, "extract");
            cx.update(|i| i.amount = 12_500);
            Ok(12_500u32)
        })
        .listen("approve", step("extract"), |cx: Cx<Invoice>, amount: u32| async move {
            mark(&cx, "approve");
            Ok(format!("pay {amount}"))
        })
        .human_feedback(
            HumanFeedback::new("Pay this invoice?").emit(["approved", "rejected"]).provider(DeferredFeedback),
        )
        .listen("check", step("extract"), |cx: Cx<Invoice>, (): ()| async move {
            mark(&cx, "check");
            cx.update(|i| i.checks.push("vendor known".into()));
            Ok(())
        })
        .listen("book", and([label("approved"), step("check")]), |cx: Cx<Invoice>, (): ()| async move {
            mark(&cx, "book");
            let review: FeedbackResult = cx.last_feedback().ok_or_else(|| StepError::msg("no feedback"))?;
            Ok(format!("booked after \"{}\" ({})", review.feedback, cx.state(|i| i.checks.join(", "))))
        })
        .listen("refuse", label("rejected"), |_cx, (): ()| async move { Ok("refused".to_string()) })
        .store(store)
        .build()
        .unwrap()
}

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the pause tests in this file, started by them with PAUSE_ROLE set"]
fn pause_child() {
    let (Ok(role), Ok(url)) = (std::env::var("PAUSE_ROLE"), std::env::var("PAUSE_DB")) else {
        panic!("pause_child runs only as a child of the pause tests");
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let flow = approval_flow(open_store(&url));
        match role.as_str() {
            "pause" => {
                let run = flow.kickoff(()).await.unwrap();
                let paused = run.paused().expect("the run pauses");
                println!("PAUSED {}", paused.run_id);
            }
            "resume" => {
                let id: RunId = std::env::var("PAUSE_RUN").unwrap().parse().unwrap();
                let run = flow.resume_with_feedback(id, "Approved").await.unwrap();
                println!("RESULT {}", run.output::<String>().unwrap());
            }
            other => panic!("unknown role {other}"),
        }
    });
    // Leave without any cleanup, as a process that is done would.
    std::process::exit(0);
}

fn child(role: &str, url: &str, run: Option<RunId>) -> String {
    let mut env = vec![("PAUSE_ROLE", role.to_string()), ("PAUSE_DB", url.to_string())];
    env.extend(run.map(|id| ("PAUSE_RUN", id.to_string())));
    common::run_child("pause_child", &env)
}

fn check_resumed(state: &Invoice, pauser: u32, resumer: u32) {
    assert_eq!(state.amount, 12_500);
    assert_eq!(state.checks, ["vendor known"]);
    let by_step = |s: &str| state.pids.iter().filter(|(n, _)| n == s).map(|(_, p)| *p).collect::<Vec<_>>();
    assert_eq!(by_step("extract"), [pauser], "extract ran once, before the pause");
    assert_eq!(by_step("approve"), [pauser], "the reviewed step's body is not run again");
    assert_eq!(by_step("check"), [pauser], "the sibling finished before the pause, once");
    assert_eq!(by_step("book"), [resumer], "the join fired after the resume, once");
}

#[tokio::test]
async fn a_pause_survives_its_process_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("runs.db").to_string_lossy().to_string();
    let out = child("pause", &url, None);
    let id: RunId = common::line_after(&out, "PAUSED ").trim().parse().unwrap();
    let store = open_store(&url);
    assert_eq!(store.load_run(id).await.unwrap().unwrap().status, RunStatus::Paused);

    let flow = approval_flow(store);
    let pending = flow.pending_feedback(id).await.unwrap().expect("pending");
    assert_eq!(pending.request.output, serde_json::json!("pay 12500"));
    let run = flow.resume_with_feedback(id, "Approved").await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "booked after \"Approved\" (vendor known)");
    let pauser = run.state.pids[0].1;
    assert_ne!(pauser, std::process::id());
    check_resumed(&run.state, pauser, std::process::id());
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_pause_moves_to_another_process_on_postgres() {
    let url = common::postgres::fresh_schema().await;
    let out = child("pause", &url, None);
    let id: RunId = common::line_after(&out, "PAUSED ").trim().parse().unwrap();
    let out = child("resume", &url, Some(id));
    assert_eq!(common::line_after(&out, "RESULT "), "booked after \"Approved\" (vendor known)");

    let flow = approval_flow(open_store(&url));
    let run = flow.resume(id).await.unwrap();
    assert!(run.is_finished());
    let (pauser, resumer) = (run.state.pids[0].1, run.state.pids.last().unwrap().1);
    assert_ne!(pauser, resumer, "two processes");
    check_resumed(&run.state, pauser, resumer);
    assert_eq!(run.feedback_history().len(), 1);
}
