//! Real SIGKILLs at every step boundary of four shapes — a chain, a fan-out joined by an
//! `and`, a router loop, a flow that pauses for human feedback — and in the middle of steps;
//! then the run is resumed in another process. The loop and the fan-out also run with a large
//! state, whose checkpoints are deltas on the run's state chain. On SQLite always, on PostgreSQL when
//! `CREWFLOW_TEST_POSTGRES` is set.
//!
//! Each case runs the run in child processes (this test binary, re-executed as
//! `fault_child`), kills one of them with SIGKILL at a chosen point, and finishes the run in a
//! last, clean process. Then:
//! - the final state equals an uninterrupted run's (in canonical form: the sum, the items
//!   sorted, the rounds), the run is `finished` and leased to nobody, and its stored steps are
//!   those of an uninterrupted run;
//! - no execution that was checkpointed (or saved as a paused execution) before a process
//!   started ran in that process: a completed step runs exactly once. Executions in flight at
//!   the kill may run again (at-least-once, as documented in docs/store.md).
//!
//! Kill points are chosen, not timed: a process stops forever at the point (just before the
//! n-th store write, just after it committed, or between a step's two updates) after writing
//! a marker file, and the test kills it once the marker is there. "Every boundary" is every
//! store write of the process, before and after: the run's record, each checkpoint (each step
//! boundary), the end or the pause, and in resumed processes the claim.
//!
//! Steps failing mid-update with real processes: a fan-out branch adds to the sum, waits until
//! its siblings completed (and were checkpointed), then fails; the run is resumed "after the
//! fix" in another process — also when the process is killed before the failure was recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{
    HangingStore, Outcome, Phase, Probe, Shape, StepFaults, StepPoint, Tally, WriteHang, assert_exact_checkpoint,
    build, drive, durable_steps, executions, open_store,
};
use crewflow::RunId;
use crewflow::store::{RunStatus, RunStore};

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the kill tests in this file, started by them with FAULT_SHAPE set"]
fn fault_child() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(shape), Some(url), Some(side), Some(marker), Some(run)) =
        (var("FAULT_SHAPE"), var("FAULT_DB"), var("FAULT_SIDE"), var("FAULT_MARKER"), var("FAULT_RUN"))
    else {
        panic!("fault_child runs only as a child of the kill tests");
    };
    let shape = Shape::parse(&shape).unwrap();
    let write = var("FAULT_WRITE").map(|w| WriteHang::decode(&w).unwrap());
    let faults = StepFaults {
        park: var("FAULT_PARK").map(|p| StepPoint::decode(&p).unwrap()),
        hang: var("FAULT_HANG").map(|p| StepPoint::decode(&p).unwrap()),
        fail: var("FAULT_FAIL"),
    };
    let answer = var("FAULT_ANSWER").is_some_and(|a| a == "1");
    let large = var("FAULT_LARGE").is_some_and(|a| a == "1");
    let id: RunId = run.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (side, marker) = (Path::new(&side), Path::new(&marker));
        let store = HangingStore::new(open_store(&url), write, marker);
        let flow = build(shape, store, &Probe::sized(shape, side, marker, faults, large));
        println!("{}", drive(&flow, id, answer).await.line());
    });
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // Leave at once, as a process that is done would (no waiting for background tasks).
    std::process::exit(0);
}

/// How a process of a case is to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// It reaches its kill point and is killed there.
    Killed,
    /// It leaves the run paused (no answer to give).
    Paused,
    /// Its run fails (an injected step failure).
    Failed,
    /// It finishes the run (the last process of every case).
    Finished,
}

/// One process of a case, before the last, clean one.
#[derive(Clone, Debug)]
struct Proc {
    answer: bool,
    write: Option<WriteHang>,
    faults: StepFaults,
    expect: Expect,
}

impl Proc {
    fn killed(answer: bool, write: Option<WriteHang>, faults: StepFaults) -> Self {
        Proc { answer, write, faults, expect: Expect::Killed }
    }

    fn clean(answer: bool, expect: Expect) -> Self {
        Proc { answer, write: None, faults: StepFaults::default(), expect }
    }
}

/// A kill scenario: the processes before the last, clean one.
#[derive(Clone, Debug)]
struct Case {
    name: String,
    procs: Vec<Proc>,
}

fn hang_at(step: &str, nth: u32) -> StepFaults {
    StepFaults { hang: Some(StepPoint::new(step, nth, Phase::Mid)), ..StepFaults::default() }
}

/// Every kill point of `shape`: before and after each store write of each process (`writes`:
/// how many an uninterrupted run's processes make), between the two updates of each step, and
/// the shape's own cases.
fn cases(shape: Shape, writes: &[u32]) -> Vec<Case> {
    let mut cases = Vec::new();
    // For a fault in the process answering a pause, a first process pauses the run cleanly.
    let before = |process: usize| -> Vec<Proc> {
        if process == 0 { Vec::new() } else { vec![Proc::clean(false, Expect::Paused)] }
    };
    let mut add = |name: String, process: usize, proc: Proc| {
        let mut procs = before(process);
        procs.push(proc);
        cases.push(Case { name, procs });
    };
    for (process, &count) in writes.iter().enumerate() {
        for n in 1..=count {
            for hang in [WriteHang::Before(n), WriteHang::After(n)] {
                let (when, _) = hang.encode().split_once(':').map(|(w, n)| (w.to_string(), n.to_string())).unwrap();
                let name = format!("killed in process {} {when} write {n}", process + 1);
                add(name, process, Proc::killed(process > 0, Some(hang), StepFaults::default()));
            }
        }
    }
    let mid_steps: Vec<(usize, &str, u32)> = match shape {
        Shape::Chain => ["s1", "s2", "s3", "s4", "s5"].iter().map(|s| (0, *s, 1)).collect(),
        Shape::FanOut => ["src", "b1", "b2", "b3", "b4", "join", "done"].iter().map(|s| (0, *s, 1)).collect(),
        Shape::Loop => vec![(0, "begin", 1), (0, "again", 2), (0, "work", 1), (0, "work", 3), (0, "finish", 1)],
        Shape::Pause => vec![(0, "extract", 1), (0, "approve", 1), (0, "check", 1), (1, "book", 1)],
    };
    for (process, step, nth) in mid_steps {
        let name = format!("killed in process {} mid-update of {step} (execution {nth})", process + 1);
        add(name, process, Proc::killed(process > 0, None, hang_at(step, nth)));
    }
    match shape {
        Shape::FanOut => {
            // A branch stopped between its two updates while its three siblings completed and
            // were checkpointed (writes: the run, src, three branches): the kill comes right
            // after the third branch's checkpoint. Its first update must not be in it.
            for branch in ["b1", "b2", "b3", "b4"] {
                let faults = StepFaults { park: Some(StepPoint::new(branch, 1, Phase::Mid)), ..StepFaults::default() };
                let name = format!("killed after the siblings' checkpoints, {branch} mid-update");
                add(name, 0, Proc::killed(false, Some(WriteHang::After(5)), faults));
            }
            // b2 adds, waits for its siblings' checkpoints, fails; resumed after the fix.
            let fail = StepFaults { fail: Some("b2".into()), ..StepFaults::default() };
            add("b2 fails mid-update".into(), 0, Proc::clean(false, Expect::Failed).with_faults(fail.clone()));
            // The same, killed before the failure is recorded (writes: the run, src, three
            // branches, then the failed end).
            add(
                "b2 fails mid-update, killed before the failure is recorded".into(),
                0,
                Proc::killed(false, Some(WriteHang::Before(6)), fail),
            );
        }
        Shape::Chain => {
            let fail = StepFaults { fail: Some("s3".into()), ..StepFaults::default() };
            add("s3 fails mid-update".into(), 0, Proc::clean(false, Expect::Failed).with_faults(fail));
        }
        Shape::Pause => {
            // approve stopped mid-update while check completed and was checkpointed (writes:
            // the run, extract, check).
            let faults = StepFaults { park: Some(StepPoint::new("approve", 1, Phase::Mid)), ..StepFaults::default() };
            add(
                "killed after check's checkpoint, approve mid-update".into(),
                0,
                Proc::killed(false, Some(WriteHang::After(3)), faults),
            );
            let fail = StepFaults { fail: Some("check".into()), ..StepFaults::default() };
            add("check fails mid-update".into(), 0, Proc::clean(false, Expect::Failed).with_faults(fail));
        }
        Shape::Loop => {}
    }
    cases
}

impl Proc {
    fn with_faults(mut self, faults: StepFaults) -> Self {
        self.faults = faults;
        self
    }
}

/// A shape on a store: the uninterrupted run to compare with, and the cases.
struct Harness {
    shape: Shape,
    url: String,
    /// Whether the run's state is large (see `Probe::sized`): its checkpoints are deltas.
    large: bool,
    rt: tokio::runtime::Runtime,
    store: Arc<dyn RunStore>,
    expected: Tally,
    /// The stored steps of an uninterrupted run, sorted.
    expected_steps: Vec<String>,
    /// The store writes of each process of an uninterrupted run.
    writes: Vec<u32>,
}

impl Harness {
    fn new(shape: Shape, url: &str, large: bool) -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store = rt.block_on(async { open_store(url) });
        let dir = tempfile::tempdir().unwrap();
        let (side, marker) = (dir.path().join("side.log"), dir.path().join("marker"));
        let id = RunId::new();
        let mut writes = Vec::new();
        let mut deltas = Vec::new();
        let mut outcome = Outcome::Paused;
        for answer in [false, true] {
            let counting = HangingStore::new(store.clone(), None, &marker);
            let probe = Probe::sized(shape, &side, &marker, StepFaults::default(), large);
            let flow = build(shape, counting.clone(), &probe);
            outcome = rt.block_on(drive(&flow, id, answer));
            writes.push(counting.writes());
            deltas.extend(counting.deltas());
            if outcome != Outcome::Paused {
                break;
            }
        }
        let Outcome::Finished(expected) = outcome else { panic!("the uninterrupted run did not finish: {outcome:?}") };
        expected.check_notes(large).unwrap();
        if large {
            // The large state went through the chain: its checkpoints were deltas, and the
            // finished run's state is kept in the chain (the end may write it whole, which
            // replaces the deltas before it).
            assert!(!deltas.is_empty(), "a large run's checkpoints should be deltas; none was written");
            assert!(deltas.iter().all(|&n| n < 4096), "deltas should be small: {deltas:?}");
            assert!(rt.block_on(chain_rows(url)) > 0, "a large run's state should be kept in the chain");
        }
        assert_eq!(writes.len(), if shape == Shape::Pause { 2 } else { 1 }, "only the pause shape pauses");
        if shape == Shape::Chain {
            // The record, a checkpoint after each step but the last, and the end, which saves
            // the last step in the same commit.
            assert_eq!(writes, [6], "a 5-step chain's writes");
        }
        let stored = rt.block_on(store.load_run(id)).unwrap().unwrap();
        let mut expected_steps: Vec<String> = stored.steps.iter().map(|s| s.step.to_string()).collect();
        expected_steps.sort();
        Harness { shape, url: url.to_string(), large, rt, store, expected, expected_steps, writes }
    }

    fn child(&self, id: RunId, proc: &Proc, side: &Path, marker: &Path) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        let encode = |p: &Option<StepPoint>| p.as_ref().map(StepPoint::encode).unwrap_or_default();
        cmd.args(["fault_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("FAULT_SHAPE", self.shape.name())
            .env("FAULT_DB", &self.url)
            .env("FAULT_SIDE", side)
            .env("FAULT_MARKER", marker)
            .env("FAULT_RUN", id.to_string())
            .env("FAULT_ANSWER", if proc.answer { "1" } else { "0" })
            .env("FAULT_LARGE", if self.large { "1" } else { "0" })
            .env("FAULT_WRITE", proc.write.map(WriteHang::encode).unwrap_or_default())
            .env("FAULT_PARK", encode(&proc.faults.park))
            .env("FAULT_HANG", encode(&proc.faults.hang))
            .env("FAULT_FAIL", proc.faults.fail.clone().unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The activations the store holds as done for run `id`, after checking that its state is
    /// exactly theirs.
    fn durable(&self, id: RunId, context: &str) -> BTreeSet<u64> {
        match self.rt.block_on(self.store.load_run(id)).unwrap() {
            Some(stored) => {
                assert_exact_checkpoint(&stored, context);
                let state: Tally = serde_json::from_str(&stored.state).unwrap();
                if let Err(e) = state.check_notes(self.large) {
                    panic!("{context}: {e}");
                }
                durable_steps(&stored).into_iter().map(|(activation, _)| activation).collect()
            }
            None => BTreeSet::new(),
        }
    }

    /// Runs one case and checks its outcome; see the module docs.
    fn run(&self, case: &Case) {
        let what = format!("{} on {}: {}", self.shape.name(), self.backend(), case.name);
        let dir = tempfile::tempdir().unwrap();
        let side = dir.path().join("side.log");
        let id = RunId::new();
        // Each process, with what was durable when it started.
        let mut processes: Vec<(u32, BTreeSet<u64>)> = Vec::new();
        let last = Proc::clean(true, Expect::Finished);
        for (i, proc) in case.procs.iter().chain([&last]).enumerate() {
            let durable = self.durable(id, &format!("{what}: before process {}", i + 1));
            let marker = dir.path().join(format!("marker{i}"));
            let mut child = self.child(id, proc, &side, &marker).spawn().unwrap();
            processes.push((child.id(), durable));
            if proc.expect == Expect::Killed {
                let started = Instant::now();
                while !marker.exists() {
                    if let Some(status) = child.try_wait().unwrap() {
                        let out = child.wait_with_output().unwrap();
                        panic!(
                            "{what}: process {} ended ({status}) before its kill point:\n{}\n{}",
                            i + 1,
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    assert!(started.elapsed() < Duration::from_secs(60), "{what}: the kill point was never reached");
                    std::thread::sleep(Duration::from_millis(2));
                }
                child.kill().unwrap(); // SIGKILL
                assert!(!child.wait().unwrap().success(), "{what}: the process was killed");
                continue;
            }
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let report = || format!("{what}: process {}:\n{stdout}\n{}", i + 1, String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{}", report());
            let outcome = Outcome::from_stdout(&stdout).unwrap_or_else(|| panic!("no outcome: {}", report()));
            match (proc.expect, &outcome) {
                (Expect::Finished, Outcome::Finished(state)) => {
                    assert_eq!(state.canonical(), self.expected.canonical(), "{what}: the final state");
                    assert_eq!(state.check_notes(self.large), Ok(()), "{what}: the final state's notes");
                }
                (Expect::Paused, Outcome::Paused) => {}
                (Expect::Failed, Outcome::Failed(error)) => {
                    let step = proc.faults.fail.as_deref().unwrap();
                    assert!(error.contains(&format!("{step} failed (injected)")), "{what}: {error}");
                    let stored = self.rt.block_on(self.store.load_run(id)).unwrap().unwrap();
                    assert_eq!(stored.status, RunStatus::Failed, "{what}");
                }
                _ => panic!("{what}: unexpected outcome {outcome:?}, {}", report()),
            }
        }

        let stored = self.rt.block_on(self.store.load_run(id)).unwrap().unwrap();
        assert_eq!(stored.status, RunStatus::Finished, "{what}");
        assert_exact_checkpoint(&stored, &what);
        assert_eq!((stored.owner.as_deref(), stored.lease_until), (None, None), "{what}: no lease left");
        let state: Tally = serde_json::from_str(&stored.state).unwrap();
        assert_eq!(state.canonical(), self.expected.canonical(), "{what}: the stored state");
        assert_eq!(state.check_notes(self.large), Ok(()), "{what}: the stored state's notes");
        let mut steps: Vec<String> = stored.steps.iter().map(|s| s.step.to_string()).collect();
        steps.sort();
        assert_eq!(steps, self.expected_steps, "{what}: the stored steps");

        // A checkpointed execution never runs again; every stored one ran.
        let runs = executions(&side);
        for (pid, durable) in &processes {
            for e in runs.iter().filter(|e| e.pid == *pid && e.what == "start") {
                assert!(
                    !durable.contains(&e.activation),
                    "{what}: {} (execution {}) was checkpointed before process {pid} started, yet ran again there; \
                     executions: {runs:?}",
                    e.step,
                    e.activation
                );
            }
        }
        let mut started: BTreeMap<u64, usize> = BTreeMap::new();
        for e in runs.iter().filter(|e| e.what == "start") {
            *started.entry(e.activation).or_default() += 1;
        }
        for s in &stored.steps {
            assert!(started.contains_key(&s.activation), "{what}: {} never ran", s.step);
        }
    }

    fn backend(&self) -> &'static str {
        match (self.url.starts_with("postgres"), self.large) {
            (true, false) => "PostgreSQL",
            (true, true) => "PostgreSQL, large state (deltas)",
            (false, false) => "SQLite",
            (false, true) => "SQLite, large state (deltas)",
        }
    }

    /// Runs every case, and says how many ran.
    fn run_cases(&self) {
        let all = cases(self.shape, &self.writes);
        let started = Instant::now();
        for case in &all {
            self.run(case);
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!("{} on {}: {} kill cases in {secs:.1} s", self.shape.name(), self.backend(), all.len());
    }
}

fn sqlite(shape: Shape) {
    sqlite_sized(shape, false);
}

/// The sizes of the deltas in the store's state chains.
async fn chain_rows(url: &str) -> i64 {
    const SQL: &str = "SELECT count(*) FROM crewflow_state_chain";
    if url.starts_with("postgres") {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.query_one(SQL, &[]).await.unwrap().get(0)
    } else {
        let db = rusqlite::Connection::open(url).unwrap();
        db.query_row(SQL, [], |r| r.get(0)).unwrap()
    }
}

fn sqlite_sized(shape: Shape, large: bool) {
    let dir = tempfile::tempdir().unwrap();
    Harness::new(shape, dir.path().join("runs.db").to_str().unwrap(), large).run_cases();
}

fn postgres(shape: Shape) {
    postgres_sized(shape, false);
}

fn postgres_sized(shape: Shape, large: bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = rt.block_on(common::postgres::fresh_schema());
    drop(rt);
    Harness::new(shape, &url, large).run_cases();
}

#[test]
fn sqlite_chain_killed_at_every_boundary() {
    sqlite(Shape::Chain);
}

#[test]
fn sqlite_fan_out_join_killed_at_every_boundary() {
    sqlite(Shape::FanOut);
}

#[test]
fn sqlite_router_loop_killed_at_every_boundary() {
    sqlite(Shape::Loop);
}

#[test]
fn sqlite_pause_killed_before_after_and_during_the_resume() {
    sqlite(Shape::Pause);
}

// Large states: checkpoints are deltas on the run's state chain (SQLite), whole states on
// PostgreSQL; a kill between any two of them must leave a chain that restores exactly.

#[test]
fn sqlite_router_loop_with_a_large_state_killed_at_every_boundary() {
    sqlite_sized(Shape::Loop, true);
}

#[test]
fn sqlite_fan_out_join_with_a_large_state_killed_at_every_boundary() {
    sqlite_sized(Shape::FanOut, true);
}

#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
fn postgres_router_loop_with_a_large_state_killed_at_every_boundary() {
    postgres_sized(Shape::Loop, true);
}

#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
fn postgres_chain_killed_at_every_boundary() {
    postgres(Shape::Chain);
}

#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
fn postgres_fan_out_join_killed_at_every_boundary() {
    postgres(Shape::FanOut);
}

#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
fn postgres_router_loop_killed_at_every_boundary() {
    postgres(Shape::Loop);
}

#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
fn postgres_pause_killed_before_after_and_during_the_resume() {
    postgres(Shape::Pause);
}
