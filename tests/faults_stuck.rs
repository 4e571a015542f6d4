//! No run stays stuck: a run whose driver stopped is not kept leased, a resume that cannot
//! proceed is refused before it claims (the stored run keeps its status and error), a second
//! resume of a run this process is already running is refused, and workers take over orphaned
//! runs before queued ones. SQLite files and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::DurableError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStatus, RunStore, SqliteStore};
use crewflow::{Error, FlowBuilder, RunId};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
struct Count {
    n: u32,
}

/// A state of the same flow's next version whose field changed type: the stored state no
/// longer decodes.
#[derive(Default, Serialize, Deserialize)]
struct CountV2 {
    n: String,
}

const LEASE: Duration = Duration::from_millis(300);

/// `start → slow`: `slow` waits `wait` (forever for a driver that never ends on its own).
fn slow_flow<S: crewflow::FlowState>(store: Arc<dyn RunStore>, wait: Duration, runs: Arc<AtomicU32>) -> Flow<S> {
    FlowBuilder::<S>::new("stuck")
        .start("start", |_cx: Cx<S>, (): ()| async move { Ok::<_, StepError>(()) })
        .listen("slow", "start", move |_cx: Cx<S>, (): ()| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(wait).await;
                Ok::<_, StepError>(())
            }
        })
        .lease(LEASE)
        .store(store)
        .build()
        .unwrap()
}

/// A run whose task the test aborts: its driver stops at once, recording nothing, as when a
/// process dies or a database outage cuts it short.
/// Returns once the run's `slow` step has started (`started` counts its starts).
async fn crash_in_slow<S: crewflow::FlowState>(flow: &Flow<S>, id: RunId, started: &AtomicU32) {
    let before = started.load(Ordering::SeqCst);
    let flow = flow.clone();
    let task = tokio::spawn(async move {
        let _ = flow.kickoff(Kickoff::new().run_id(id)).await;
    });
    for _ in 0..3000 {
        if started.load(Ordering::SeqCst) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started.load(Ordering::SeqCst) > before, "`slow` never started");
    task.abort();
    let _ = task.await;
}

/// A driver stops without recording its end (its future is dropped, as when a PostgreSQL
/// outage or a panic cut it short): its run's lease is renewed no more, so another process
/// takes the run over once the lease lapses.
async fn a_stopped_driver_leaves_no_lease(store: Arc<dyn RunStore>) {
    let started = Arc::new(AtomicU32::new(0));
    let flow = slow_flow::<Count>(store.clone(), Duration::from_secs(3600), started.clone());
    let id = RunId::new();
    crash_in_slow(&flow, id, &started).await;
    // Heartbeats go on every LEASE/3 for the store's other runs; this one must lapse.
    tokio::time::sleep(LEASE * 3).await;
    let claim = store.claim_run(id, "another-host:1:process", LEASE, None).await;
    assert!(claim.is_ok(), "the run is still leased by a driver that stopped: {claim:?}", claim = claim.err());
}

/// The other side: a run being driven keeps its lease however long its step takes.
async fn a_driven_run_keeps_its_lease(store: Arc<dyn RunStore>) {
    let started = Arc::new(AtomicU32::new(0));
    let flow = slow_flow::<Count>(store.clone(), LEASE * 5, started.clone());
    let id = RunId::new();
    let run = flow.spawn(Kickoff::new().run_id(id)).unwrap();
    while started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(LEASE * 3).await;
    let taken = store.claim_run(id, "another-host:1:process", LEASE, None).await;
    assert!(taken.is_err(), "a run being driven was taken over");
    run.await.unwrap();
}

/// A resume that cannot decode the stored state is refused before it claims: the run keeps
/// its failed status and its error.
async fn a_refused_resume_changes_nothing(store: Arc<dyn RunStore>) {
    let failing = FlowBuilder::<Count>::new("stuck")
        .start("start", |_cx: Cx<Count>, (): ()| async move { Ok::<_, StepError>(()) })
        .listen("slow", "start", |_cx: Cx<Count>, (): ()| async move {
            Err::<(), _>(StepError::msg("the mail server said no"))
        })
        .lease(LEASE)
        .store(store.clone())
        .build()
        .unwrap();
    let id = RunId::new();
    assert!(failing.kickoff(Kickoff::new().run_id(id)).await.is_err());
    let changed = slow_flow::<CountV2>(store.clone(), Duration::ZERO, Arc::default());
    let Err(refused) = changed.resume(id).await else { panic!("the stored state does not decode") };
    assert!(matches!(refused, Error::Durable(DurableError::StoredState { .. })), "{refused}");
    let failed = store.list_runs(&RunFilter { status: Some(RunStatus::Failed), ..RunFilter::default() }).await.unwrap();
    let run = failed.iter().find(|r| r.run_id == id).expect("still listed as failed");
    assert!(run.error.as_deref().unwrap_or_default().contains("the mail server said no"), "{:?}", run.error);
    // And no lease was taken: another process may resume it at once.
    store.claim_run(id, "another-host:1:process", LEASE, None).await.unwrap();
}

/// Two resumes of one run in one process (a double click): the second is refused while the
/// first runs, and the step runs once.
async fn a_second_resume_in_the_same_process_is_refused(store: Arc<dyn RunStore>) {
    let runs = Arc::new(AtomicU32::new(0));
    // A first run that "crashed" after `start`: its driver is dropped mid-`slow`.
    let flow = slow_flow::<Count>(store.clone(), Duration::from_millis(400), runs.clone());
    let id = RunId::new();
    crash_in_slow(&flow, id, &runs).await;
    let one = flow.spawn_resume(id).unwrap();
    for _ in 0..3000 {
        if runs.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let two = flow.resume(id).await;
    assert!(matches!(two, Err(Error::Durable(DurableError::AlreadyDriven { .. }))), "{:?}", two.err());
    one.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "`slow` ran in the crashed run and once in the resume");
}

/// Orphans come before queued runs: a worker with one free slot takes the orphan.
async fn orphans_are_claimed_before_queued_runs(store: Arc<dyn RunStore>) {
    let started = Arc::new(AtomicU32::new(0));
    let flow = slow_flow::<Count>(store.clone(), Duration::from_secs(3600), started.clone());
    // Queued first: the orphan is the newest run, and still comes first.
    for _ in 0..10 {
        flow.enqueue(Kickoff::new()).await.unwrap();
    }
    let orphan = RunId::new();
    crash_in_slow(&flow, orphan, &started).await;
    tokio::time::sleep(LEASE * 2).await;
    let claims = store.claim_orphans(&["stuck".to_string()], "worker-host:2:worker", LEASE, 1).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.run_id).collect::<Vec<_>>(), vec![orphan]);
}

/// A worker took a run over and died after the run's end was recorded but before it reported
/// it: the next worker reports it (once), from the store.
async fn a_workers_report_survives_its_crash(store: Arc<dyn RunStore>) {
    let flow = slow_flow::<Count>(store.clone(), Duration::ZERO, Arc::default());
    let id = flow.enqueue(Kickoff::new()).await.unwrap();
    // Worker A claims it…
    let claims = store.claim_orphans(&["stuck".to_string()], "worker-host:7:a", LEASE, 1).await.unwrap();
    assert_eq!(claims.iter().map(|c| c.run_id).collect::<Vec<_>>(), vec![id]);
    // …its lease lapses (A is gone), the run is driven to its end, and nobody reported it.
    tokio::time::sleep(LEASE * 2).await;
    flow.resume(id).await.unwrap();

    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    for _ in 0..2 {
        let (r, shutdown) = (reports.clone(), crewflow::Canceller::new());
        let worker =
            crewflow::Worker::new(store.clone()).flow(&flow).lease(LEASE).poll_interval(Duration::from_millis(20));
        let stop = shutdown.clone();
        let running = tokio::spawn(async move {
            worker.run(stop, move |report| r.lock().unwrap().push((report.run_id, report.result.is_ok()))).await
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
    }
    assert_eq!(*reports.lock().unwrap(), vec![(id, true)], "reported once, by the first worker after the crash");
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn RunStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    (dir, store)
}

async fn postgres() -> Arc<dyn RunStore> {
    crewflow::store::open(&common::postgres::fresh_schema().await).unwrap()
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_dir, store) = super::sqlite();
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
                async fn $case() {
                    super::$case(super::postgres().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    a_stopped_driver_leaves_no_lease,
    a_driven_run_keeps_its_lease,
    a_refused_resume_changes_nothing,
    a_second_resume_in_the_same_process_is_refused,
    orphans_are_claimed_before_queued_runs,
    a_workers_report_survives_its_crash,
);
