//! Retention: a store grown with 10,000 runs stays bounded under compaction, and every paused
//! run still resumes afterwards (SQLite file; the clauses of `Retention` on every backend are
//! in the store contract, `tests/common/store_contract.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

#[cfg(crewflow_postgres_tests)]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crewflow::prelude::*;
use crewflow::store::{Retention, RunFilter, RunStatus, RunStore, SqliteStore};
use crewflow::{DeferredFeedback, RunId};
use serde_json::{Map, Value};

const RUNS: usize = 10_000;

/// One step with a small output: the shape of most stored runs.
fn quick(store: Arc<dyn RunStore>) -> Flow<Map<String, Value>> {
    FlowBuilder::new("quick")
        .store(store)
        .start("work", |_cx, (): ()| async move { Ok("a result of some forty bytes, give or take") })
        .build()
        .unwrap()
}

/// A step reviewed by a person later: its runs pause.
fn review(store: Arc<dyn RunStore>) -> Flow<Map<String, Value>> {
    FlowBuilder::new("review")
        .store(store)
        .start("draft", |_cx, (): ()| async move { Ok("a draft") })
        .human_feedback(HumanFeedback::new("Publish?").emit(["approved", "rejected"]).provider(DeferredFeedback))
        .build()
        .unwrap()
}

/// The database's bytes on disk (with its write-ahead log).
fn size(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    [db.to_path_buf(), wal].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

async fn grow(flow: &Flow<Map<String, Value>>) {
    for _ in 0..RUNS {
        flow.kickoff(()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_stay_bounded_and_paused_runs_still_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&path));
    let (quick, review) = (quick(store.clone()), review(store.clone()));
    let mut paused: Vec<RunId> = Vec::new();
    for _ in 0..5 {
        let run = review.kickoff(()).await.unwrap();
        paused.push(run.paused().expect("the review pauses the run").run_id);
    }

    grow(&quick).await;
    let grown = size(&path);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let policy = Retention::new().delete_ended_after(Duration::ZERO);
    let report = store.compact(&policy).await.unwrap();
    assert_eq!((report.runs, report.steps), (RUNS as u64, RUNS as u64));

    // Freed pages are reused: a second 10,000 runs after compaction do not grow the file much.
    grow(&quick).await;
    let regrown = size(&path);
    assert!(regrown <= grown + grown / 4, "{grown} bytes, then {regrown} after compacting and regrowing");
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.compact(&policy.clone().vacuum(true)).await.unwrap();
    let vacuumed = size(&path);
    assert!(vacuumed * 5 < grown, "{grown} bytes before, {vacuumed} after compacting with vacuum");

    println!("10,000 runs: {grown} bytes; compacted and regrown: {regrown}; compacted with vacuum: {vacuumed}");
    let all = store.list_runs(&RunFilter { limit: 1000, ..RunFilter::default() }).await.unwrap();
    assert_eq!(all.len(), paused.len(), "only the paused runs are left");
    for id in paused {
        let run = review.resume_with_feedback(id, "approved").await.unwrap();
        assert_eq!(run.output::<FeedbackResult>().unwrap().outcome.as_deref(), Some("approved"));
        assert_eq!(store.load_run(id).await.unwrap().unwrap().status, RunStatus::Finished);
    }
}

/// A worker with `compact_every` prunes on its own: ended runs past their time disappear while it
/// runs, a paused run stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_compacts_on_a_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    let (quick, review) = (quick(store.clone()), review(store.clone()));
    for _ in 0..20 {
        quick.kickoff(()).await.unwrap();
    }
    let paused = review.kickoff(()).await.unwrap().paused().expect("paused").run_id;
    let shutdown = crewflow::Canceller::new();
    let worker = crewflow::Worker::new(store.clone())
        .flow(&quick)
        .poll_interval(Duration::from_millis(20))
        .compact_every(Duration::from_millis(50), Retention::new().delete_ended_after(Duration::from_millis(10)));
    let running = tokio::spawn(worker.run(shutdown.clone(), |_| {}));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = store.list_runs(&RunFilter { limit: 1000, ..RunFilter::default() }).await.unwrap();
        if left.len() == 1 {
            assert_eq!(left[0].run_id, paused);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} runs still stored", left.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// Conversation traces: a finalized trace past its time is deleted with its spans; an open one
/// (the session still talking) and the session's turns stay. On SQLite and PostgreSQL.
async fn old_traces_go_and_sessions_stay(store: Arc<dyn RunStore>, sessions: Arc<dyn crewflow::chat::SessionStore>) {
    use crewflow::chat::{ChatFlow, ChatState, SessionId};
    let flow = FlowBuilder::<ChatState>::new("talk")
        .start("answer", |_cx, m: String| async move { Ok(format!("heard: {m}")) })
        .build()
        .unwrap();
    let chat = ChatFlow::with_shared_store(flow, sessions.clone());
    let (done, open) = (SessionId::new("done").unwrap(), SessionId::new("open").unwrap());
    chat.handle_turn(&done, "hello").await.unwrap();
    chat.handle_turn(&open, "hello").await.unwrap();
    assert!(sessions.finalize_trace("talk", "done").await.unwrap());
    tokio::time::sleep(Duration::from_millis(30)).await;

    let report = store.compact(&Retention::new().drop_traces_after(Duration::from_millis(10))).await.unwrap();
    assert_eq!(report.traces, 1);
    assert!(sessions.list_traces("talk", "done").await.unwrap().is_empty());
    let kept = sessions.list_traces("talk", "open").await.unwrap();
    assert_eq!(kept.len(), 1, "the open trace stays");
    assert!(!sessions.trace_spans(&kept[0].trace_id).await.unwrap().is_empty());
    assert_eq!(chat.session(&done).await.unwrap().unwrap().turns.len(), 1, "the turns stay");
    // Again: nothing more to delete.
    let again = store.compact(&Retention::new().drop_traces_after(Duration::from_millis(10))).await.unwrap();
    assert_eq!(again.traces, 0);
}

#[tokio::test]
async fn sqlite_drops_old_traces_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("talk.db"));
    old_traces_go_and_sessions_stay(Arc::new(store.clone()), Arc::new(store)).await;
}

#[cfg(crewflow_postgres_tests)]
#[tokio::test]
async fn postgres_drops_old_traces_only() {
    let url = common::postgres::fresh_schema().await;
    let store = crewflow::store::PostgresStore::connect(&url).await.unwrap();
    old_traces_go_and_sessions_stay(Arc::new(store.clone()), Arc::new(store)).await;
}
