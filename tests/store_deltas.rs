//! State deltas: a large state whose steps change a little of it is checkpointed as deltas
//! (SQLite), restored exactly on resume, after a failed step and after a failed write.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::faults::HangingStore;
use crewflow::delta::DeltaPolicy;
use crewflow::prelude::*;
use crewflow::store::{RunStatus, RunStore, SqliteStore};
use crewflow::{Error, RunId};
use serde::{Deserialize, Serialize};

/// 100 items of ~1 KB: each step rewrites one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Big {
    items: Vec<String>,
    steps: Vec<u32>,
}

impl Default for Big {
    fn default() -> Self {
        Big { items: (0..100).map(|i| format!("{i:03}:{}", "x".repeat(1000))).collect(), steps: Vec::new() }
    }
}

const STEPS: u32 = 20;

/// The 20-step chain, built.
fn chain(store: Arc<dyn RunStore>, fail_at: Option<u32>, failures: Arc<AtomicU32>) -> Flow<Big> {
    chain_builder(store, fail_at, failures).build().unwrap()
}

fn expected() -> Big {
    let mut s = Big::default();
    for i in 0..STEPS {
        s.items[(i * 5) as usize] = format!("{i:03}:{}", "y".repeat(1000));
        s.steps.push(i);
    }
    s
}

/// (deltas in the run's chain, their total bytes, whole states in it)
fn chain_rows(path: &std::path::Path, run: RunId) -> (i64, i64, i64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(
        "SELECT count(*) FILTER (WHERE kind = 'delta'), coalesce(sum(length(body)) FILTER (WHERE kind = 'delta'), 0),
             count(*) FILTER (WHERE kind = 'whole')
         FROM crewflow_state_chain WHERE run_id = ?1",
        [run.to_string()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// The state column of the run's row (empty while the state lives in its chain).
fn row_state(path: &std::path::Path, run: RunId) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("SELECT state FROM crewflow_runs WHERE id = ?1", [run.to_string()], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn a_failed_run_resumes_exactly_from_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&path));
    let failures = Arc::new(AtomicU32::new(1));
    let flow = chain(store.clone(), Some(13), failures);

    let err = flow.kickoff(()).await.unwrap_err();
    let Error::StepFailed { run_id, .. } = err else { panic!("{err}") };
    // The checkpoints after s1..s12 are deltas (s0's is whole): small next to the 100 KB state.
    let (deltas, bytes, whole) = chain_rows(&path, run_id);
    assert_eq!((deltas, whole), (13, 1), "the initial state whole, then a delta per checkpoint");
    assert!(bytes < 13 * 1_200, "{bytes} bytes of deltas");
    assert_eq!(row_state(&path, run_id), "", "the large state is kept out of the run's row");
    // Read back, the state is exactly what s0..s12 made (s13's change is not kept).
    let stored: Big = serde_json::from_str(&store.load_run(run_id).await.unwrap().unwrap().state).unwrap();
    assert_eq!(stored.steps, (0..13).collect::<Vec<_>>());
    assert!(stored.items[60].starts_with("012:y") && stored.items[65].starts_with("065:x"));

    let run = flow.resume(run_id).await.unwrap();
    assert_eq!(run.state, expected());
    // The resumed run's first checkpoint is whole (a new chain), the rest deltas.
    let (deltas, _, whole) = chain_rows(&path, run_id);
    assert_eq!(whole, 1);
    assert!((6..=8).contains(&deltas), "{deltas}");
    let row = store.load_run(run_id).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Finished);
    assert_eq!(serde_json::from_str::<Big>(&row.state).unwrap(), expected());
}

#[tokio::test]
async fn chains_are_capped_and_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&path));
    let failures = Arc::new(AtomicU32::new(1));
    // At most 4 deltas between whole states: the initial state whole, s0..s3 deltas, s4 whole,
    // s5..s8 deltas, s9 whole, s10..s12 deltas, s13 fails.
    let capped = {
        let mut b = FlowBuilder::<Big>::new("big");
        b = b.include(chain_builder(store.clone(), Some(13), failures.clone()));
        b.state_deltas(Some(DeltaPolicy { min_state: 4096, max_chain: 4 })).build().unwrap()
    };
    let Error::StepFailed { run_id, .. } = capped.kickoff(()).await.unwrap_err() else { panic!() };
    assert_eq!(chain_rows(&path, run_id).0, 3);
    assert_eq!(capped.resume(run_id).await.unwrap().state, expected());

    failures.store(1, Ordering::SeqCst);
    let whole = FlowBuilder::<Big>::new("big")
        .include(chain_builder(store.clone(), Some(13), failures))
        .state_deltas(None)
        .build()
        .unwrap();
    let Error::StepFailed { run_id, .. } = whole.kickoff(()).await.unwrap_err() else { panic!() };
    assert_eq!(chain_rows(&path, run_id), (0, 0, 0));
    assert!(row_state(&path, run_id).len() > 100_000, "deltas off: the state stays in the run's row");
    assert_eq!(whole.resume(run_id).await.unwrap().state, expected());
}

/// A 20-step chain; step `i` rewrites item `i * 5` and records itself. `fail_at` fails that
/// step while `failures` is above zero.
fn chain_builder(store: Arc<dyn RunStore>, fail_at: Option<u32>, failures: Arc<AtomicU32>) -> FlowBuilder<Big> {
    let mut b = FlowBuilder::<Big>::new("big").store(store);
    for i in 0..STEPS {
        let failures = failures.clone();
        let handler = move |cx: Cx<Big>, (): ()| {
            let failures = failures.clone();
            async move {
                cx.update(|s| {
                    s.items[(i * 5) as usize] = format!("{i:03}:{}", "y".repeat(1000));
                    s.steps.push(i);
                });
                if fail_at == Some(i) && failures.load(Ordering::SeqCst) > 0 {
                    failures.fetch_sub(1, Ordering::SeqCst);
                    return Err(format!("step {i} failed").into());
                }
                Ok(())
            }
        };
        b = if i == 0 {
            b.start("s0", handler)
        } else {
            b.listen(&format!("s{i}"), step(format!("s{}", i - 1).as_str()), handler)
        };
    }
    b
}

#[tokio::test]
async fn a_failed_delta_write_leaves_the_chain_it_extends_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    // Write 9 (the run's record, then the checkpoint after s7, a delta) fails: the run stops
    // with s0..s6 checkpointed, all deltas over the initial state.
    let failing: Arc<dyn RunStore> = HangingStore::failing_write(Arc::new(SqliteStore::open(&path)), 9);
    let err = chain(failing, None, Arc::default()).kickoff(()).await.unwrap_err();
    assert!(err.to_string().contains("the disk is full"), "{err}");
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(&path));
    let run_id = store.list_runs(&Default::default()).await.unwrap()[0].run_id;
    assert_eq!(chain_rows(&path, run_id).0, 7);
    let stored: Big = serde_json::from_str(&store.load_run(run_id).await.unwrap().unwrap().state).unwrap();
    assert_eq!(stored.steps, (0..7).collect::<Vec<_>>());
    // Resumed by a process whose store works: the first checkpoint drops the old chain.
    let run = chain(store.clone(), None, Arc::default()).resume(run_id).await.unwrap();
    assert_eq!(run.state, expected());
    assert_eq!(chain_rows(&path, run_id).2, 1, "the resume started a new chain");
}
