//! A full disk under a SQLite store: the disk fills up just before one of a run's writes (its
//! record, a checkpoint with parallel branches in flight, its end, its pause). The run fails
//! with an error naming the file, what was being written and why (no panic); nothing is half
//! written (the file still opens and passes SQLite's integrity check, the last checkpoint is
//! intact and exact, a resume while the disk is still full fails cleanly and changes
//! nothing); once space is freed, the run resumes — in the same process, on the same store —
//! to the state of an uninterrupted run, without running a stored step again.
//!
//! The disk: a tiny tmpfs mounted for the test (needs root, or `CAP_SYS_ADMIN`), filled with a
//! file of zeros and freed by deleting it. Where mounting is not permitted (or with
//! `CREWFLOW_TEST_DISK=filesize`), each case runs in a child process (this test binary,
//! re-executed as `disk_child`, with SIGXFSZ ignored) whose file-size limit (`RLIMIT_FSIZE`,
//! set with `prlimit`) is lowered to the write-ahead log's size to fill the disk and lifted to
//! free it. Each test says on standard error which disk it used.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::DurableError;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::faults::{
    HangingStore, Outcome, Probe, Shape, StepFaults, Tally, assert_exact_checkpoint, build, drive, durable_steps,
    executions,
};
use crewflow::store::{RunStatus, RunStore, SqliteStore};
use crewflow::{Error, Kickoff, RunId};

/// A disk that can be filled and freed.
trait Disk: Send + Sync {
    /// Where the database lives.
    fn dir(&self) -> &Path;
    /// Leaves no room for the database to grow.
    fn fill(&self);
    /// Makes room again.
    fn free(&self);
    /// What the error says when a write finds no room.
    fn full_error(&self) -> &'static [&'static str];
}

/// A tmpfs of 2 MiB, mounted for one test; unmounted when dropped.
struct Tmpfs {
    mount: tempfile::TempDir,
}

impl Tmpfs {
    /// A fresh tmpfs, if this process may mount one.
    fn mount() -> Option<Tmpfs> {
        let mount = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(mount.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { mount })
    }

    fn filler(&self) -> PathBuf {
        self.mount.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.mount.path()).status();
    }
}

impl Disk for Tmpfs {
    fn dir(&self) -> &Path {
        self.mount.path()
    }

    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).unwrap();
        // Big writes until one fails, then page-sized ones: not a page is left.
        for size in [64 * 1024, 4096, 512] {
            let block = vec![0u8; size];
            while f.write_all(&block).is_ok() {}
        }
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn full_error(&self) -> &'static [&'static str] {
        &["database or disk is full"]
    }
}

/// The fallback: this process's file-size limit, lowered to the size of the database's
/// write-ahead log (so that it cannot grow) and lifted again. Used in a child process that
/// ignores SIGXFSZ.
struct FileSizeLimit {
    dir: tempfile::TempDir,
}

impl FileSizeLimit {
    fn limit(&self, limit: &str) {
        let status = Command::new("prlimit")
            .args(["--pid", &std::process::id().to_string(), &format!("--fsize={limit}:unlimited")])
            .status()
            .expect("the file-size fallback needs `prlimit` (util-linux)");
        assert!(status.success(), "prlimit --fsize={limit} failed");
    }
}

impl Disk for FileSizeLimit {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn fill(&self) {
        let wal = std::fs::metadata(self.dir.path().join("runs.db-wal")).unwrap().len();
        self.limit(&wal.to_string());
    }

    fn free(&self) {
        self.limit("unlimited");
    }

    fn full_error(&self) -> &'static [&'static str] {
        // SQLite reports a short write as a full disk, a refused one (EFBIG) as an I/O error.
        &["database or disk is full", "disk I/O error"]
    }
}

/// The cases.
#[derive(Clone, Copy, Debug)]
enum Case {
    /// The disk fills before the run's record.
    Record,
    /// Before the chain's third checkpoint (`s3`).
    Checkpoint,
    /// Before the fan-out's second branch checkpoint, branches in flight.
    ParallelCheckpoint,
    /// Before the run's end.
    End,
    /// Before the pause is saved.
    Pause,
}

impl Case {
    fn all() -> [Case; 5] {
        [Case::Record, Case::Checkpoint, Case::ParallelCheckpoint, Case::End, Case::Pause]
    }

    fn name(self) -> &'static str {
        match self {
            Case::Record => "record",
            Case::Checkpoint => "checkpoint",
            Case::ParallelCheckpoint => "parallel_checkpoint",
            Case::End => "end",
            Case::Pause => "pause",
        }
    }

    /// The shape, the write the disk fills before (writes: the record, then the checkpoints,
    /// then the end or the pause), and what the error says was being written.
    fn plan(self) -> (Shape, u32, &'static str) {
        match self {
            Case::Record => (Shape::Chain, 1, "record the new run"),
            Case::Checkpoint => (Shape::Chain, 4, "save the checkpoint after step `s3`"),
            Case::ParallelCheckpoint => (Shape::FanOut, 4, "save the checkpoint after step `b"),
            Case::End => (Shape::Chain, 6, "record the end of the run after step `s5`"),
            Case::Pause => (Shape::Pause, 3, "record the paused run"),
        }
    }
}

/// SQLite's own check of the file, from a connection of its own.
fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap()
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

/// One case on `disk`; see the module docs.
async fn run_case(case: Case, disk: Arc<dyn Disk>) {
    let (shape, fill_before, doing) = case.plan();
    let what = format!("disk full before {}", case.name());
    let db = disk.dir().join("runs.db");
    let store = SqliteStore::open(&db);
    store.connect().await.unwrap(); // a store in use: its file and log exist
    let side_dir = tempfile::tempdir().unwrap(); // the side file is on another disk
    let side = side_dir.path().join("side.log");
    let probe = Probe::new(shape, &side, &side_dir.path().join("marker"), StepFaults::default());
    let filling = disk.clone();
    let flow = build(shape, HangingStore::before_write(Arc::new(store), fill_before, move || filling.fill()), &probe);
    let id = RunId::new();
    let full = |msg: &str| disk.full_error().iter().any(|e| msg.contains(e));

    let err = flow.kickoff(Kickoff::new().run_id(id)).await.expect_err("the write cannot succeed on a full disk");
    let msg = err.to_string();
    assert!(matches!(err, Error::Durable(DurableError::Store { .. })), "{what}: a store error: {msg}");
    assert!(msg.contains(doing), "{what}: says it could not {doing}: {msg}");
    assert!(msg.contains(&db.display().to_string()), "{what}: names the file: {msg}");
    assert!(full(&msg), "{what}: says why: {msg}");

    // Nothing half-written: the file opens (in a new store, as after a restart), passes the
    // integrity check, and holds the last checkpoint, exact.
    let reopened = SqliteStore::open(&db);
    let before = reopened.load_run(id).await.unwrap();
    assert_eq!(integrity(&db), "ok", "{what}");
    if let Some(stored) = &before {
        assert_eq!(stored.status, RunStatus::Running, "{what}: no end was recorded");
        assert_exact_checkpoint(stored, &what);
    } else {
        assert!(matches!(case, Case::Record), "{what}: the run was recorded");
    }

    // While the disk is full, carrying on fails cleanly and changes nothing.
    match drive(&flow, id, true).await {
        Outcome::Failed(msg) => assert!(full(&msg), "{what}: a resume on a full disk: {msg}"),
        other => panic!("{what}: a run went on on a full disk: {other:?}"),
    }
    let still = reopened.load_run(id).await.unwrap();
    assert_eq!(
        still.as_ref().map(|s| (s.status, s.seq, s.fencing, s.steps.len())),
        before.as_ref().map(|s| (s.status, s.seq, s.fencing, s.steps.len())),
        "{what}: a failed resume changed the stored run"
    );

    // Space is back: the same process resumes the run to the end.
    disk.free();
    let durable: BTreeSet<u64> =
        still.as_ref().map(durable_steps).unwrap_or_default().into_iter().map(|(a, _)| a).collect();
    let ran_before = executions(&side).len();
    let outcome = drive(&flow, id, true).await;
    let Outcome::Finished(state) = outcome else { panic!("{what}: the resumed run did not finish: {outcome:?}") };
    assert_eq!(state.canonical(), uninterrupted(shape).await.canonical(), "{what}: the final state");
    let rerun: Vec<_> = executions(&side)
        .into_iter()
        .skip(ran_before)
        .filter(|e| e.what == "start" && durable.contains(&e.activation))
        .collect();
    assert!(rerun.is_empty(), "{what}: stored steps ran again: {rerun:?}");
    let stored = reopened.load_run(id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished, "{what}");
    assert_exact_checkpoint(&stored, &what);
    assert_eq!(integrity(&db), "ok", "{what}");
}

/// The child process of the fallback; see the module docs.
#[test]
#[ignore = "a child process of the disk tests in this file, started by them with DISK_CASE set"]
fn disk_child() {
    let Ok(name) = std::env::var("DISK_CASE") else { panic!("disk_child runs only as a child of the disk tests") };
    let case = Case::all().into_iter().find(|c| c.name() == name).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run_case(case, Arc::new(FileSizeLimit { dir: tempfile::tempdir().unwrap() })));
    println!("DISK CASE PASSED");
}

/// Runs `case` on a tmpfs, or in a child process on a file-size limit; see the module docs.
fn on_a_small_disk(case: Case) {
    let forced = std::env::var("CREWFLOW_TEST_DISK").is_ok_and(|d| d == "filesize");
    let tmpfs = if forced { None } else { Tmpfs::mount() };
    if let Some(tmpfs) = tmpfs {
        eprintln!("faults_disk {}: a 2 MiB tmpfs, filled", case.name());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_case(case, Arc::new(tmpfs)));
        return;
    }
    let why = if forced { "CREWFLOW_TEST_DISK=filesize" } else { "mounting a tmpfs is not permitted" };
    eprintln!("faults_disk {}: a file-size limit (RLIMIT_FSIZE), not a tmpfs ({why})", case.name());
    // SIGXFSZ ignored (kept across exec), so a write past the limit fails instead of killing.
    let out = Command::new("sh")
        .args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["disk_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("DISK_CASE", case.name())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("DISK CASE PASSED"),
        "{}:\n{stdout}\n{}",
        case.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_disk_before_the_run_is_recorded() {
    on_a_small_disk(Case::Record);
}

#[test]
fn a_full_disk_at_a_checkpoint() {
    on_a_small_disk(Case::Checkpoint);
}

#[test]
fn a_full_disk_at_a_checkpoint_with_branches_in_flight() {
    on_a_small_disk(Case::ParallelCheckpoint);
}

#[test]
fn a_full_disk_at_the_end_of_the_run() {
    on_a_small_disk(Case::End);
}

#[test]
fn a_full_disk_when_the_run_pauses() {
    on_a_small_disk(Case::Pause);
}
