//! PostgreSQL cut mid-transaction: a proxy between the run and the server drops every
//! connection at a chosen statement — a checkpoint, the run's end, a claim — at a chosen
//! moment of it: before it reaches the server, after the server ran it but before it was
//! committed (rolled back), or after it was committed but before the client heard back.
//!
//! Whatever the moment, the run fails with an error naming the server and what was being
//! written; the store holds an exact checkpoint (the state of exactly the steps it lists);
//! once the driver stopped, no lease is kept alive (another owner can claim the run after
//! the lease); and when the server is back, the run resumes to the state of an uninterrupted
//! run, without running again a step whose completion was stored.
//!
//! These tests need `CREWFLOW_TEST_POSTGRES`; each works in a schema of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::{DurableError, FeedbackError};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::faults::{
    ANSWER, Execution, Outcome, Phase, Probe, Shape, StepFaults, StepPoint, Tally, assert_exact_checkpoint, build,
    builder, drive, durable_steps, executions,
};
use common::proxy::{Cut, Proxy};
use crewflow::store::{RunStatus, RunStore, SqliteStore, StoredRun};
use crewflow::{Error, Flow, Kickoff, RunId};

const LEASE: Duration = Duration::from_millis(300);

/// The statements cut at (substrings of the store's SQL).
const CHECKPOINT: &str = "UPDATE crewflow_runs SET state = coalesce($2::text::jsonb, state)";
const END: &str = "UPDATE crewflow_runs SET status = $2, error = $3";
const CLAIM_LOCK: &str = "WHERE id = $1 FOR UPDATE";
const CLAIM_UPDATE: &str = "WHERE id = $1 RETURNING fencing";
const CLAIM_PAUSED: &str = "WHERE id = $1 AND status = 'paused' AND seq = $4";
const COMMIT: &str = "COMMIT";

/// A fresh schema, a proxy in front of the server, and a place for the side file.
struct Setup {
    url: String,
    direct: Arc<dyn RunStore>,
    proxy: Proxy,
    /// The store through the proxy, shared by the flows of a test as by a process's flows
    /// (migrated by its first use, so that the migration's `COMMIT` is not cut at).
    via_proxy: Arc<dyn RunStore>,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let url = common::postgres::fresh_schema().await;
        let proxy = Proxy::start().await;
        let via_proxy = crewflow::store::open(&proxy.url(&url)).unwrap();
        let direct = crewflow::store::open(&url).unwrap();
        Setup { url, direct, proxy, via_proxy, dir: tempfile::tempdir().unwrap() }
    }

    fn side(&self) -> PathBuf {
        self.dir.path().join("side.log")
    }

    /// The flow of `shape` through the proxy, with a short lease.
    fn flow(&self, shape: Shape, faults: StepFaults) -> Flow<Tally> {
        let probe = Probe::new(shape, &self.side(), &self.dir.path().join("marker"), faults);
        builder(shape, &probe).lease(LEASE).store(self.via_proxy.clone()).build().unwrap()
    }

    async fn stored(&self, id: RunId) -> StoredRun {
        self.direct.load_run(id).await.unwrap().expect("the run is recorded")
    }

    /// The error of a write cut by the proxy: a store error naming the server (through the
    /// proxy) and what was being written.
    fn check_error(&self, err: &Error, doing: &str) {
        let msg = err.to_string();
        assert!(matches!(err, Error::Durable(DurableError::Store { .. })), "a store error: {msg}");
        let server = format!("postgres://postgres@127.0.0.1:{}/test", self.proxy.port);
        assert!(msg.contains(&server), "the error names the server {server}: {msg}");
        assert!(msg.contains(doing), "the error says it could not {doing}: {msg}");
        let fired = self.proxy.fired().unwrap_or_else(|| panic!("the proxy did not cut at the statement: {msg}"));
        // A statement cut before its commit ran on the server first.
        if fired.starts_with("Uncommitted") {
            assert!(fired.ends_with("the statement ran"), "{fired}");
        }
    }

    /// With the server back, the run's driver gone and its lease run out, another owner can
    /// claim the run: nothing keeps it leased — while this process drives another run, so
    /// its store's heartbeat is busy renewing leases. The claim's own lease lapses at once
    /// (its store, which would renew the leases of runs this process drives under that
    /// owner, is dropped with it).
    async fn check_not_leased(&self, id: RunId) {
        self.proxy.restore();
        let dir = tempfile::tempdir().unwrap();
        let side = dir.path().join("side.log");
        let parked = StepFaults { park: Some(StepPoint::new("s1", 1, Phase::Start)), ..StepFaults::default() };
        let probe = Probe::new(Shape::Chain, &side, &dir.path().join("marker"), parked);
        let busy = builder(Shape::Chain, &probe).lease(LEASE).store(self.via_proxy.clone()).build().unwrap();
        let bystander = busy.spawn(()).unwrap();
        while executions(&side).is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(LEASE * 2).await; // heartbeats renew every LEASE/3
        let other = crewflow::store::open(&self.url).unwrap();
        let claim = other.claim_run(id, "another-host:1:probe", Duration::from_millis(1), None).await;
        assert!(claim.is_ok(), "the run is still leased after its driver stopped: {:?}", claim.err());
        drop(other);
        bystander.cancel();
        assert!(bystander.await.is_err(), "the bystander was cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state of an uninterrupted run of `shape`.
async fn uninterrupted(shape: Shape) -> Tally {
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::new(shape, &dir.path().join("side"), &dir.path().join("marker"), StepFaults::default());
    let flow = build(shape, Arc::new(SqliteStore::in_memory()), &probe);
    match drive(&flow, RunId::new(), true).await {
        Outcome::Finished(state) => state,
        other => panic!("the uninterrupted run did not finish: {other:?}"),
    }
}

/// Resumes the run (through the proxy, back up) and checks its end: the state of an
/// uninterrupted run, finished, no lease; no execution stored before the resume ran in it.
async fn resume_and_check(setup: &Setup, flow: &Flow<Tally>, shape: Shape, id: RunId) {
    let before = setup.stored(id).await;
    let durable: BTreeSet<u64> = durable_steps(&before).into_iter().map(|(a, _)| a).collect();
    let ran_before = executions(&setup.side()).len();
    let run = drive(flow, id, true).await;
    let Outcome::Finished(state) = run else { panic!("the resumed run did not finish: {run:?}") };
    assert_eq!(state.canonical(), uninterrupted(shape).await.canonical(), "the resumed run's state");
    let stored = setup.stored(id).await;
    assert_eq!(stored.status, RunStatus::Finished);
    assert_eq!((stored.owner.as_deref(), stored.lease_until), (None, None), "no lease left");
    assert_exact_checkpoint(&stored, "after the resume");
    let rerun: Vec<Execution> = executions(&setup.side())
        .into_iter()
        .skip(ran_before)
        .filter(|e| e.what == "start" && durable.contains(&e.activation))
        .collect();
    assert!(rerun.is_empty(), "stored executions ran again after the resume: {rerun:?}");
}

/// Cuts the connection at the third checkpoint (`s3` in the chain; the second branch in the
/// fan-out, while the others run).
async fn cut_at_a_checkpoint(shape: Shape, cut: Cut) {
    let setup = Setup::new().await;
    let flow = setup.flow(shape, StepFaults::default());
    let id = RunId::new();
    setup.proxy.cut_at(CHECKPOINT, 3, cut);
    let err = flow.kickoff(Kickoff::new().run_id(id)).await.expect_err("the run fails when its server goes away");
    setup.check_error(&err, "save the checkpoint after step");

    let stored = setup.stored(id).await;
    assert_eq!(stored.status, RunStatus::Running, "the driver stopped without recording an end");
    let committed = if cut == Cut::Committed { 3 } else { 2 };
    assert_eq!(stored.seq, committed, "{cut:?}: checkpoints stored");
    assert_eq!(stored.steps.len() as u64, committed, "{cut:?}: one step a checkpoint here");
    assert_exact_checkpoint(&stored, &format!("{cut:?}"));

    setup.check_not_leased(id).await;
    resume_and_check(&setup, &flow, shape, id).await;
}

/// Cuts the connection while the finished run's end is recorded.
async fn cut_at_the_end(cut: Cut) {
    let setup = Setup::new().await;
    let flow = setup.flow(Shape::Chain, StepFaults::default());
    let id = RunId::new();
    setup.proxy.cut_at(END, 1, cut);
    let err = flow.kickoff(Kickoff::new().run_id(id)).await.expect_err("the run fails when its server goes away");
    setup.check_error(&err, "record the end of the run after step `s5`");

    // The last step's completion is saved by the end itself (one commit): stored with it, or
    // not at all.
    let stored = setup.stored(id).await;
    assert_exact_checkpoint(&stored, &format!("{cut:?}"));
    let committed = cut == Cut::Committed;
    assert_eq!(stored.steps.len(), if committed { 5 } else { 4 }, "{cut:?}: the steps stored");
    if committed {
        assert_eq!(stored.status, RunStatus::Finished, "the end was committed, only its reply was lost");
        setup.proxy.restore();
    } else {
        assert_eq!(stored.status, RunStatus::Running, "{cut:?}: the end was not stored");
        setup.check_not_leased(id).await;
    }
    resume_and_check(&setup, &flow, Shape::Chain, id).await;
    let starts = executions(&setup.side()).iter().filter(|e| e.what == "start").count();
    let expected = if committed { 5 } else { 6 };
    assert_eq!(starts, expected, "{cut:?}: each step ran once, but the last when its end was lost");
}

/// A run failed at `s3` (which had updated the state); its resume, after the fix, is cut at
/// the `nth` run of `statement` (the resume reads the run in a transaction of its own, then
/// claims it in another: the claim's `COMMIT` is the second).
async fn cut_during_a_claim(statement: &str, nth: usize, cut: Cut) {
    let setup = Setup::new().await;
    let id = RunId::new();
    let failing = setup.flow(Shape::Chain, StepFaults { fail: Some("s3".into()), ..StepFaults::default() });
    let err = failing.kickoff(Kickoff::new().run_id(id)).await.err().unwrap();
    assert!(err.to_string().contains("s3 failed (injected)"), "{err}");
    let failed = setup.stored(id).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_exact_checkpoint(&failed, "the failed run");

    let fixed = setup.flow(Shape::Chain, StepFaults::default());
    setup.proxy.cut_at(statement, nth, cut);
    let err = fixed.resume(id).await.expect_err("the resume fails when its server goes away");
    setup.check_error(&err, "claim the run");

    let stored = setup.stored(id).await;
    let committed = statement == COMMIT && cut == Cut::Committed;
    if committed {
        assert_eq!(stored.status, RunStatus::Running, "the claim was committed");
        assert_eq!(stored.fencing, failed.fencing + 1);
        assert_eq!(stored.owner.as_deref(), Some(crewflow::store::process_owner().as_ref()));
    } else {
        assert_eq!(
            (stored.status, stored.fencing, stored.owner.as_deref(), stored.error.is_some()),
            (RunStatus::Failed, failed.fencing, None, true),
            "{statement} {cut:?}: the claim's transaction was rolled back"
        );
    }
    assert_exact_checkpoint(&stored, &format!("{statement} {cut:?}"));
    setup.check_not_leased(id).await;
    resume_and_check(&setup, &fixed, Shape::Chain, id).await;
    let s3 = executions(&setup.side()).iter().filter(|e| e.what == "start" && e.step == "s3").count();
    assert_eq!(s3, 2, "s3 ran when it failed and once more after the fix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_chain_cut_at_a_checkpoint_resumes_exactly() {
    for cut in [Cut::Before, Cut::Uncommitted, Cut::Committed] {
        cut_at_a_checkpoint(Shape::Chain, cut).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_fan_out_cut_at_a_checkpoint_resumes_exactly() {
    for cut in [Cut::Before, Cut::Uncommitted, Cut::Committed] {
        cut_at_a_checkpoint(Shape::FanOut, cut).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_run_cut_while_recording_its_end_resumes_exactly() {
    for cut in [Cut::Before, Cut::Uncommitted, Cut::Committed] {
        cut_at_the_end(cut).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_resume_cut_during_its_claim_is_rolled_back_or_resumable() {
    // In the claim's transaction: before its row is locked, after its update ran, before and
    // after its commit.
    for (statement, nth, cut) in [
        (CLAIM_LOCK, 1, Cut::Before),
        (CLAIM_UPDATE, 1, Cut::Uncommitted),
        (COMMIT, 2, Cut::Before),
        (COMMIT, 2, Cut::Committed),
    ] {
        cut_during_a_claim(statement, nth, cut).await;
    }
}

/// An answer to a paused run whose claim is cut: before it reaches the server the run stays
/// paused and the answer can be given again; once committed the run is `running` with no
/// driver: a resume puts it back to paused (the reviewed step does not run again), and the
/// answer is given again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn an_answer_cut_during_its_claim_is_not_lost() {
    for cut in [Cut::Before, Cut::Committed] {
        let setup = Setup::new().await;
        let flow = setup.flow(Shape::Pause, StepFaults::default());
        let id = RunId::new();
        assert!(flow.kickoff(Kickoff::new().run_id(id)).await.unwrap().paused().is_some());
        let paused = setup.stored(id).await;

        setup.proxy.cut_at(CLAIM_PAUSED, 1, cut);
        let err = flow.resume_with_feedback(id, ANSWER).await.expect_err("the answer fails");
        setup.check_error(&err, "claim the paused run");
        let stored = setup.stored(id).await;
        assert_exact_checkpoint(&stored, &format!("{cut:?}"));
        if cut == Cut::Committed {
            assert_eq!((stored.status, stored.fencing), (RunStatus::Running, paused.fencing + 1));
            setup.check_not_leased(id).await;
            // The answer is refused while the run is not paused...
            let again = flow.resume_with_feedback(id, ANSWER).await.expect_err("not paused");
            assert!(matches!(again, Error::Feedback(FeedbackError::NotPaused { .. })), "{again}");
            // ...and a resume pauses it again, with its request.
            let run = flow.resume(id).await.unwrap();
            assert_eq!(run.paused().map(|p| p.request.step.as_str()), Some("approve"));
        } else {
            assert_eq!((stored.status, stored.fencing), (RunStatus::Paused, paused.fencing));
            setup.proxy.restore();
        }
        resume_and_check(&setup, &flow, Shape::Pause, id).await;
        let approve = executions(&setup.side()).iter().filter(|e| e.what == "start" && e.step == "approve").count();
        assert_eq!(approve, 1, "{cut:?}: the reviewed step ran once");
    }
}

/// A fan-out cut right after a branch's checkpoint committed, while another branch is
/// between its two updates: the stored state holds the stored branches' changes only, and the
/// resume counts the parked branch once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_fan_out_cut_while_a_branch_is_mid_update_resumes_exactly() {
    let setup = Setup::new().await;
    let faults = StepFaults { park: Some(StepPoint::new("b3", 1, Phase::Mid)), ..StepFaults::default() };
    let flow = setup.flow(Shape::FanOut, faults);
    let id = RunId::new();
    setup.proxy.cut_at(CHECKPOINT, 4, Cut::Committed); // src, then three branches
    let err = flow.kickoff(Kickoff::new().run_id(id)).await.expect_err("the run fails when its server goes away");
    setup.check_error(&err, "save the checkpoint after step");
    let stored = setup.stored(id).await;
    let mut steps: Vec<String> = stored.steps.iter().map(|s| s.step.to_string()).collect();
    steps.sort();
    assert_eq!(steps, ["b1", "b2", "b4", "src"], "src and the three other branches are stored");
    assert_exact_checkpoint(&stored, "b3 mid-update");
    setup.check_not_leased(id).await;
    let fixed = setup.flow(Shape::FanOut, StepFaults::default());
    resume_and_check(&setup, &fixed, Shape::FanOut, id).await;
}

/// A run is read in one snapshot: its state and its steps come from the same checkpoint, even
/// when another checkpoint commits between the two. That happens after a kill: a process
/// killed while its checkpoint was on its way to the server leaves the statement to commit
/// after it died, while another process reads the run to resume it (faults_kill saw a read
/// with the state of one checkpoint and the steps of the next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_run_is_read_in_one_snapshot_while_a_checkpoint_commits() {
    use crewflow::store::{Checkpoint, NewRun, StepRow};
    let setup = Setup::new().await;
    let id = RunId::new();
    let state = |steps: &[&str]| serde_json::to_string(&Tally::after(steps.iter().copied())).unwrap();
    let new = NewRun {
        run_id: id,
        flow: Arc::from("snapshot"),
        fingerprint: 1,
        status: RunStatus::Running,
        inputs: None,
        payload: None,
        state: state(&[]),
        state_version: 0,
        chained: false,
        frontier: "{}".into(),
        owner: Arc::from("writer"),
        lease: Duration::from_secs(60),
        parent: None,
    };
    setup.direct.create_run(&new).await.unwrap();
    let checkpoint = |steps: &[&str]| Checkpoint {
        run_id: id,
        fencing: 1,
        seq: steps.len() as u64,
        state: state(steps),
        state_version: 0,
        delta: None,
        chained: false,
        had_chain: false,
        frontier: "{}".into(),
        steps: vec![StepRow {
            activation: steps.len() as u64 - 1,
            step: Arc::from(*steps.last().unwrap()),
            output: "null".into(),
            finished_at: chrono::Utc::now(),
        }],
        feedback: None,
    };
    setup.direct.save_checkpoint(&checkpoint(&["s1"])).await.unwrap();

    // The reader has the run's row; its read of the steps waits while the next checkpoint
    // commits.
    setup.proxy.hold_at("FROM crewflow_steps");
    let via_proxy = setup.via_proxy.clone();
    let reader = tokio::spawn(async move { via_proxy.load_run(id).await.unwrap().unwrap() });
    setup.proxy.held().await;
    setup.direct.save_checkpoint(&checkpoint(&["s1", "s2"])).await.unwrap();
    setup.proxy.release();
    let read = reader.await.unwrap();
    assert_eq!(
        read.seq as usize,
        read.steps.len(),
        "the state of checkpoint {} with {} steps",
        read.seq,
        read.steps.len()
    );
    assert_exact_checkpoint(&read, "a run read while a checkpoint commits");
}
