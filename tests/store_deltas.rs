//! State deltas: a large state whose steps change a little of it is checkpointed as deltas,
//! restored exactly on resume, after a failed step and after a failed write; on SQLite and on
//! PostgreSQL (those tests need `CREWFLOW_TEST_POSTGRES`, which `.ci/run` sets).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use common::faults::HangingStore;
use common::postgres::fresh_schema;
use crewflow::delta::DeltaPolicy;
use crewflow::prelude::*;
use crewflow::store::{RunStatus, RunStore, SqliteStore};
use crewflow::{Error, RunId};
use crewflow_store::PostgresStore;
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

/// A store under test, and its tables read directly (what a chain holds, what the run's row
/// holds).
enum Tables {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Tables {
    fn sqlite() -> Tables {
        Tables::Sqlite(tempfile::tempdir().unwrap())
    }

    async fn postgres() -> Tables {
        Tables::Postgres(fresh_schema().await)
    }

    fn store(&self) -> Arc<dyn RunStore> {
        match self {
            Tables::Sqlite(dir) => Arc::new(SqliteStore::open(dir.path().join("runs.db"))),
            Tables::Postgres(url) => Arc::new(PostgresStore::connect_lazy(url).unwrap()),
        }
    }

    /// (deltas in the run's chain, their total bytes, whole states in it)
    async fn chain_rows(&self, run: RunId) -> (i64, i64, i64) {
        const SQL: &str = "SELECT count(*) FILTER (WHERE kind = 'delta'),
                 coalesce(sum(length(body)) FILTER (WHERE kind = 'delta'), 0),
                 count(*) FILTER (WHERE kind = 'whole')
             FROM crewflow_state_chain WHERE run_id = $1";
        match self {
            Tables::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.path().join("runs.db")).unwrap();
                c.query_row(SQL, [run.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap()
            }
            Tables::Postgres(url) => {
                let row = pg(url).await.query_one(SQL, &[&run.to_string()]).await.unwrap();
                (row.get(0), row.get::<_, i64>(1), row.get(2))
            }
        }
    }

    /// The state column of the run's row, as text.
    async fn row_state(&self, run: RunId) -> String {
        match self {
            Tables::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.path().join("runs.db")).unwrap();
                c.query_row("SELECT state FROM crewflow_runs WHERE id = ?1", [run.to_string()], |r| r.get(0)).unwrap()
            }
            Tables::Postgres(url) => {
                let sql = "SELECT state::text FROM crewflow_runs WHERE id = $1";
                pg(url).await.query_one(sql, &[&run.to_string()]).await.unwrap().get(0)
            }
        }
    }

    /// What the run's row holds while its state lives in the chain.
    fn out_of_row(&self) -> &'static str {
        match self {
            Tables::Sqlite(_) => "",
            Tables::Postgres(_) => "null",
        }
    }
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_failed_run_resumes_exactly_from_its_chain_sqlite() {
    a_failed_run_resumes_exactly_from_its_chain(Tables::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_failed_run_resumes_exactly_from_its_chain_postgres() {
    a_failed_run_resumes_exactly_from_its_chain(Tables::postgres().await).await;
}

async fn a_failed_run_resumes_exactly_from_its_chain(tables: Tables) {
    let store = tables.store();
    let failures = Arc::new(AtomicU32::new(1));
    let flow = chain(store.clone(), Some(13), failures);

    let err = flow.kickoff(()).await.unwrap_err();
    let Error::StepFailed { run_id, .. } = err else { panic!("{err}") };
    // The checkpoints after s1..s12 are deltas (s0's is whole): small next to the 100 KB state.
    let (deltas, bytes, whole) = tables.chain_rows(run_id).await;
    assert_eq!((deltas, whole), (13, 1), "the initial state whole, then a delta per checkpoint");
    assert!(bytes < 13 * 1_200, "{bytes} bytes of deltas");
    assert_eq!(tables.row_state(run_id).await, tables.out_of_row(), "the large state is kept out of the run's row");
    // Read back, the state is exactly what s0..s12 made (s13's change is not kept).
    let stored: Big = serde_json::from_str(&store.load_run(run_id).await.unwrap().unwrap().state).unwrap();
    assert_eq!(stored.steps, (0..13).collect::<Vec<_>>());
    assert!(stored.items[60].starts_with("012:y") && stored.items[65].starts_with("065:x"));

    let run = flow.resume(run_id).await.unwrap();
    assert_eq!(run.state, expected());
    // The resumed run's first checkpoint is whole (a new chain), the rest deltas.
    let (deltas, _, whole) = tables.chain_rows(run_id).await;
    assert_eq!(whole, 1);
    assert!((6..=8).contains(&deltas), "{deltas}");
    let row = store.load_run(run_id).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Finished);
    assert_eq!(serde_json::from_str::<Big>(&row.state).unwrap(), expected());
}

#[tokio::test]
async fn chains_are_capped_and_can_be_turned_off_sqlite() {
    chains_are_capped_and_can_be_turned_off(Tables::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn chains_are_capped_and_can_be_turned_off_postgres() {
    chains_are_capped_and_can_be_turned_off(Tables::postgres().await).await;
}

async fn chains_are_capped_and_can_be_turned_off(tables: Tables) {
    let store = tables.store();
    let failures = Arc::new(AtomicU32::new(1));
    // At most 4 deltas between whole states: the initial state whole, s0..s3 deltas, s4 whole,
    // s5..s8 deltas, s9 whole, s10..s12 deltas, s13 fails.
    let capped = {
        let mut b = FlowBuilder::<Big>::new("big");
        b = b.include(chain_builder(store.clone(), Some(13), failures.clone()));
        b.state_deltas(Some(DeltaPolicy { min_state: 4096, max_chain: 4 })).build().unwrap()
    };
    let Error::StepFailed { run_id, .. } = capped.kickoff(()).await.unwrap_err() else { panic!() };
    assert_eq!(tables.chain_rows(run_id).await.0, 3);
    assert_eq!(capped.resume(run_id).await.unwrap().state, expected());

    failures.store(1, Ordering::SeqCst);
    let whole = FlowBuilder::<Big>::new("big")
        .include(chain_builder(store.clone(), Some(13), failures))
        .state_deltas(None)
        .build()
        .unwrap();
    let Error::StepFailed { run_id, .. } = whole.kickoff(()).await.unwrap_err() else { panic!() };
    assert_eq!(tables.chain_rows(run_id).await, (0, 0, 0));
    assert!(tables.row_state(run_id).await.len() > 100_000, "deltas off: the state stays in the run's row");
    assert_eq!(whole.resume(run_id).await.unwrap().state, expected());
}

/// A state that grows past the size that starts a chain gets no delta over the small state
/// its row held (PostgreSQL keeps that one as `jsonb`, not as the text a delta applies to):
/// the first large checkpoint is whole, and the run reads back exactly.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_state_that_grows_into_a_chain_reads_back_exactly_postgres() {
    let tables = Tables::postgres().await;
    let store = tables.store();
    let flow = FlowBuilder::<Big>::new("grows")
        .start("small", |cx: Cx<Big>, (): ()| async move {
            cx.update(|s| s.items.truncate(3));
            Ok(())
        })
        .listen("large", step("small"), |cx: Cx<Big>, (): ()| async move {
            cx.update(|s| s.items.push("z".repeat(5000)));
            Ok(())
        })
        .listen("fails", step("large"), |_cx: Cx<Big>, (): ()| async move { Err::<(), _>("stop here".into()) })
        .store(store.clone())
        .build()
        .unwrap();
    let Error::StepFailed { run_id, .. } = flow.kickoff(()).await.unwrap_err() else { panic!() };
    assert_eq!(tables.chain_rows(run_id).await, (0, 0, 1), "whole, in the chain");
    let stored: Big = serde_json::from_str(&store.load_run(run_id).await.unwrap().unwrap().state).unwrap();
    assert_eq!(stored.items.len(), 4);
    assert_eq!(stored.items[3].len(), 5000);
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
async fn a_failed_delta_write_leaves_the_chain_it_extends_exact_sqlite() {
    a_failed_delta_write_leaves_the_chain_it_extends_exact(Tables::sqlite()).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_failed_delta_write_leaves_the_chain_it_extends_exact_postgres() {
    a_failed_delta_write_leaves_the_chain_it_extends_exact(Tables::postgres().await).await;
}

async fn a_failed_delta_write_leaves_the_chain_it_extends_exact(tables: Tables) {
    // Write 9 (the run's record, then the checkpoint after s7, a delta) fails: the run stops
    // with s0..s6 checkpointed, all deltas over the initial state.
    let failing: Arc<dyn RunStore> = HangingStore::failing_write(tables.store(), 9);
    let err = chain(failing, None, Arc::default()).kickoff(()).await.unwrap_err();
    assert!(err.to_string().contains("the disk is full"), "{err}");
    let store = tables.store();
    let run_id = store.list_runs(&Default::default()).await.unwrap()[0].run_id;
    assert_eq!(tables.chain_rows(run_id).await.0, 7);
    let stored: Big = serde_json::from_str(&store.load_run(run_id).await.unwrap().unwrap().state).unwrap();
    assert_eq!(stored.steps, (0..7).collect::<Vec<_>>());
    // Resumed by a process whose store works: the first checkpoint drops the old chain.
    let run = chain(store.clone(), None, Arc::default()).resume(run_id).await.unwrap();
    assert_eq!(run.state, expected());
    assert_eq!(tables.chain_rows(run_id).await.2, 1, "the resume started a new chain");
}
