//! Exact resume under parallelism and faults: a checkpoint holds the state changes of completed
//! steps only, never those of a sibling still running or of a step that failed.
//!
//! - Two regressions seen by an outside check, on SQLite and PostgreSQL: a fan-out / and-join
//!   killed mid-join resumed with one branch counted twice; a step that updated the state and
//!   then failed while a sibling completed left its update in the checkpoint, applied again on
//!   resume.
//! - A property: for random parallel shapes, random kill points (just before or just after a
//!   checkpoint is written) and a random step failing once, the resumed final state equals an
//!   uninterrupted run's.
//!
//! The kill is simulated in the process: a store wrapper stops answering at the chosen write
//! (a dead process writes nothing more) and the run's future is dropped. Real SIGKILLs of real
//! processes are in tests/store_crash.rs and tests/faults_kill.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crewflow::prelude::*;
use crewflow::store::{
    Checkpoint, Claim, NewRun, RunEnd, RunFilter, RunStore, RunSummary, SqliteStore, StoreFuture, StoredRun,
};
use crewflow::trigger::{Trigger, and, step};
use crewflow::{FlowBuilder, RunId};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Tally {
    sum: i64,
    items: Vec<String>,
    log: String,
}

impl Tally {
    /// What a run's result must hold, whatever the order parallel steps ran in.
    fn canonical(&self) -> (i64, BTreeSet<String>, BTreeSet<String>, usize) {
        let log: BTreeSet<String> = self.log.split(';').filter(|s| !s.is_empty()).map(str::to_string).collect();
        (self.sum, self.items.iter().cloned().collect(), log, self.items.len())
    }
}

// ---------------------------------------------------------------------------------------------
// A store that dies at a chosen write.

/// Where the simulated process dies.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// Just before the n-th write (checkpoint or end) reaches the store.
    Before(u32),
    /// Just after the n-th write committed.
    After(u32),
}

/// Wraps a store; at the chosen write it stops answering (every call pends forever), as a
/// killed process would, and says so through `dead`.
struct Dying {
    inner: Arc<dyn RunStore>,
    kill: Option<Kill>,
    writes: AtomicU32,
    dead: AtomicBool,
    died: tokio::sync::Notify,
}

impl Dying {
    fn new(inner: Arc<dyn RunStore>, kill: Option<Kill>) -> Arc<Self> {
        Arc::new(Dying {
            inner,
            kill,
            writes: AtomicU32::new(0),
            dead: AtomicBool::new(false),
            died: Default::default(),
        })
    }

    fn die<'a, T: 'a>(&'a self) -> StoreFuture<'a, T> {
        self.dead.store(true, Ordering::SeqCst);
        self.died.notify_one();
        Box::pin(std::future::pending())
    }

    /// A write: counts it, and dies before or after it when it is the chosen one.
    fn write<'a>(&'a self, write: StoreFuture<'a, ()>) -> StoreFuture<'a, ()> {
        if self.dead.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        match self.kill {
            Some(Kill::Before(k)) if k == n => self.die(),
            Some(Kill::After(k)) if k == n => Box::pin(async move {
                write.await?;
                self.die::<()>().await
            }),
            _ => write,
        }
    }

    fn read<'a, T: 'a>(&'a self, read: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
        if self.dead.load(Ordering::SeqCst) { Box::pin(std::future::pending()) } else { read }
    }
}

impl RunStore for Dying {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn create_run<'a>(&'a self, run: &'a NewRun) -> StoreFuture<'a, ()> {
        self.read(self.inner.create_run(run))
    }
    fn save_checkpoint<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()> {
        self.write(self.inner.save_checkpoint(checkpoint))
    }
    fn end_run<'a>(&'a self, end: &'a RunEnd) -> StoreFuture<'a, ()> {
        self.write(self.inner.end_run(end))
    }
    fn load_run(&self, run_id: RunId) -> StoreFuture<'_, Option<StoredRun>> {
        self.read(self.inner.load_run(run_id))
    }
    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        owner: &'a str,
        lease: Duration,
        replacing: Option<&'a str>,
    ) -> StoreFuture<'a, Claim> {
        self.read(self.inner.claim_run(run_id, owner, lease, replacing))
    }
    fn claim_paused<'a>(
        &'a self,
        run_id: RunId,
        seq: u64,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Claim>> {
        self.read(self.inner.claim_paused(run_id, seq, owner, lease))
    }
    fn claim_orphans<'a>(
        &'a self,
        flows: &'a [String],
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Claim>> {
        self.read(self.inner.claim_orphans(flows, owner, lease, limit))
    }
    fn heartbeat<'a>(&'a self, owner: &'a str, runs: &'a [RunId], lease: Duration) -> StoreFuture<'a, u64> {
        self.read(self.inner.heartbeat(owner, runs, lease))
    }
    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        self.read(self.inner.list_runs(filter))
    }
}

// ---------------------------------------------------------------------------------------------
// Random parallel shapes.

/// One step of a generated flow.
#[derive(Clone, Debug)]
struct StepSpec {
    weight: i64,
    /// Milliseconds between the step's first and second update (lets siblings interleave).
    pause_ms: u64,
    /// Listens to all of the previous layer (`and`) rather than one step of it.
    join: bool,
    parent: usize,
}

/// A start step, then layers of parallel steps, then a join of the last layer.
#[derive(Clone, Debug)]
struct Shape {
    layers: Vec<Vec<StepSpec>>,
}

impl Shape {
    fn names(&self) -> Vec<String> {
        let mut names = vec!["s".to_string()];
        for (l, layer) in self.layers.iter().enumerate() {
            names.extend((0..layer.len()).map(|i| format!("l{l}_{i}")));
        }
        names.push("end".into());
        names
    }

    fn weight_of(&self, name: &str) -> i64 {
        match name {
            "s" => 1,
            "end" => 7,
            _ => {
                let (l, i) = name[1..].split_once('_').unwrap();
                self.layers[l.parse::<usize>().unwrap()][i.parse::<usize>().unwrap()].weight
            }
        }
    }

    fn expected(&self) -> Tally {
        let names = self.names();
        Tally {
            sum: names.iter().map(|n| self.weight_of(n)).sum(),
            items: names.clone(),
            log: names.iter().map(|n| format!("{n};")).collect(),
        }
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    let spec = (1i64..50, 0u64..4, any::<bool>(), 0usize..4).prop_map(|(weight, pause_ms, join, parent)| StepSpec {
        weight: weight * 10,
        pause_ms,
        join,
        parent,
    });
    prop::collection::vec(prop::collection::vec(spec, 1..5), 1..4).prop_map(|layers| Shape { layers })
}

/// The steps' bodies: two updates around a pause; the step named in `fail` fails its first
/// attempt after its first update (the run fails; a resume runs it again).
fn build(
    shape: &Shape,
    store: Arc<dyn RunStore>,
    fail: Option<String>,
    attempts: Arc<Mutex<Vec<String>>>,
) -> Flow<Tally> {
    let body = |name: String, weight: i64, pause_ms: u64| {
        let fail = fail.clone();
        let attempts = attempts.clone();
        move |cx: Cx<Tally>, (): ()| {
            let (name, fail, attempts) = (name.clone(), fail.clone(), attempts.clone());
            async move {
                let first = {
                    let mut a = attempts.lock().unwrap();
                    a.push(name.clone());
                    a.iter().filter(|n| **n == name).count() == 1
                };
                cx.update(|t| {
                    t.sum += weight;
                    t.log.push_str(&format!("{name};"));
                });
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                if first && fail.as_deref() == Some(name.as_str()) {
                    cx.update(|t| t.sum += 1_000_000);
                    return Err(StepError::msg(format!("{name} failed (injected)")));
                }
                cx.update(|t| t.items.push(name.clone()));
                Ok(weight)
            }
        }
    };
    let mut b = FlowBuilder::<Tally>::new("parallel_faults").start("s", body("s".into(), 1, 1));
    let mut previous = vec!["s".to_string()];
    for (l, layer) in shape.layers.iter().enumerate() {
        let mut names = Vec::new();
        for (i, spec) in layer.iter().enumerate() {
            let name = format!("l{l}_{i}");
            let trigger: Trigger = if spec.join {
                and(previous.iter().map(|p| step(p.as_str())))
            } else {
                step(previous[spec.parent % previous.len()].as_str())
            };
            b = b.listen(&name, trigger, body(name.clone(), spec.weight, spec.pause_ms));
            names.push(name);
        }
        previous = names;
    }
    b = b.listen("end", and(previous.iter().map(|p| step(p.as_str()))), body("end".into(), 7, 0));
    b.store(store).build().unwrap()
}

/// Runs the shape with the faults, resuming after each failure or kill, and returns the final
/// state as the store holds it.
async fn run_with_faults(shape: &Shape, kill: Option<Kill>, fail: Option<String>) -> Tally {
    let inner: Arc<dyn RunStore> = Arc::new(SqliteStore::in_memory());
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let dying = Dying::new(inner.clone(), kill);
    let first = build(shape, dying.clone(), fail.clone(), attempts.clone());
    let id = RunId::new();
    let outcome = tokio::select! {
        r = first.kickoff(Kickoff::new().run_id(id)) => Some(r),
        () = dying.died.notified() => None,
    };
    drop(first); // the "process" is gone
    let flow = build(shape, inner.clone(), fail, attempts);
    let mut finished = matches!(outcome, Some(Ok(_)));
    for _ in 0..3 {
        if finished {
            break;
        }
        finished = flow.resume(id).await.is_ok();
    }
    assert!(finished, "the run did not finish after three resumes");
    let stored = flow.resume(id).await.expect("a finished run resumes to its result");
    stored.state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// The resumed final state equals an uninterrupted run's, for random parallel shapes, kill
    /// points and a step failing once.
    #[test]
    fn resumed_parallel_runs_end_exactly_like_uninterrupted_ones(
        shape in shape(),
        kill_at in prop::option::of((1u32..12, any::<bool>())),
        fail_pick in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let names = shape.names();
        let fail = fail_pick.map(|ix| names[ix.index(names.len())].clone());
        let kill = kill_at.map(|(n, after)| if after { Kill::After(n) } else { Kill::Before(n) });
        let state = rt.block_on(run_with_faults(&shape, kill, fail));
        prop_assert_eq!(state.canonical(), shape.expected().canonical());
    }
}

// ---------------------------------------------------------------------------------------------
// The two regressions, on a real SQLite file and on PostgreSQL.

/// `src → b1..b4 → and-join`: each branch adds to the sum; b4 is slow. The process dies just
/// after the checkpoint of the third branch, while b4 (which already added) still runs.
fn fan_out(store: Arc<dyn RunStore>) -> Flow<Tally> {
    let branch = |add: i64, slow: bool| {
        move |cx: Cx<Tally>, (): ()| async move {
            cx.update(|t| t.sum += add);
            tokio::time::sleep(Duration::from_millis(if slow { 60 } else { 5 * add as u64 / 10 })).await;
            Ok::<_, StepError>(add)
        }
    };
    FlowBuilder::<Tally>::new("fan_out")
        .start("src", |cx: Cx<Tally>, (): ()| async move {
            cx.update(|t| t.sum = 1000);
            Ok::<_, StepError>(())
        })
        .listen("b1", "src", branch(10, false))
        .listen("b2", "src", branch(20, false))
        .listen("b3", "src", branch(30, false))
        .listen("b4", "src", branch(40, true))
        .listen("join", and([step("b1"), step("b2"), step("b3"), step("b4")]), |cx: Cx<Tally>, (): ()| async move {
            cx.update(|t| t.sum += 1);
            Ok::<_, StepError>(())
        })
        .store(store)
        .build()
        .unwrap()
}

async fn fan_out_killed_mid_join(store: Arc<dyn RunStore>) {
    // Writes: src's checkpoint, then b1, b2, b3; die right after b3's.
    let dying = Dying::new(store.clone(), Some(Kill::After(4)));
    let id = RunId::new();
    let first = fan_out(dying.clone());
    tokio::select! {
        r = first.kickoff(Kickoff::new().run_id(id)) => panic!("the run was to die first: {:?}", r.map(|r| r.state)),
        () = dying.died.notified() => {}
    }
    let run = fan_out(store).resume(id).await.unwrap();
    assert_eq!(run.state.sum, 1101, "b4 counted exactly once");
}

/// A step updates the state, then fails while a sibling completes: the sibling's checkpoint
/// must not hold the failed step's update.
async fn failed_update_is_not_checkpointed(store: Arc<dyn RunStore>) {
    let failed_once = Arc::new(AtomicBool::new(false));
    let flow = |store: Arc<dyn RunStore>, failed_once: Arc<AtomicBool>| {
        FlowBuilder::<Tally>::new("fail_mid_update")
            .start("a", |cx: Cx<Tally>, (): ()| async move {
                cx.update(|t| t.sum += 1);
                Ok::<_, StepError>(())
            })
            .listen("bad", "a", move |cx: Cx<Tally>, (): ()| {
                let failed_once = failed_once.clone();
                async move {
                    cx.update(|t| t.sum += 100);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    if !failed_once.swap(true, Ordering::SeqCst) {
                        return Err(StepError::msg("bad failed (injected)"));
                    }
                    Ok(())
                }
            })
            .listen("good", "a", |cx: Cx<Tally>, (): ()| async move {
                cx.update(|t| t.sum += 10);
                Ok::<_, StepError>(())
            })
            .store(store)
            .build()
            .unwrap()
    };
    let id = RunId::new();
    let first = flow(store.clone(), failed_once.clone()).kickoff(Kickoff::new().run_id(id)).await;
    assert!(first.is_err(), "the first run fails");
    let run = flow(store, failed_once).resume(id).await.unwrap();
    assert_eq!(run.state.sum, 111);
}

#[tokio::test]
async fn sqlite_fan_out_killed_mid_join_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    fan_out_killed_mid_join(Arc::new(SqliteStore::open(dir.path().join("runs.db")))).await;
}

#[tokio::test]
async fn sqlite_a_failed_steps_update_never_reaches_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    failed_update_is_not_checkpointed(Arc::new(SqliteStore::open(dir.path().join("runs.db")))).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn postgres_fan_out_killed_mid_join_resumes_exactly() {
    fan_out_killed_mid_join(postgres().await).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn postgres_a_failed_steps_update_never_reaches_a_checkpoint() {
    failed_update_is_not_checkpointed(postgres().await).await;
}

async fn postgres() -> Arc<dyn RunStore> {
    crewflow::store::open(&common::postgres::fresh_schema().await).unwrap()
}
