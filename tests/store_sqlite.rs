//! Durable runs on SQLite: checkpoints, exact resume, fork, listing, JSON-safe state, faults.
//! Reference cases E–F (adapted), and spec §0 items 11, 17–21. The store's own promises
//! (leases, fencing, claims, memories), the same on every backend, are `tests/store_contract.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::DurableError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Log;
use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStatus, SqliteStore};
use crewflow::{Error, RunId};
use serde::{Deserialize, Serialize};
use serde_json::json;

fn temp_db() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    (dir, path)
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Count {
    counter: u32,
    message: String,
    seen: Vec<String>,
}

/// A four-step chain that fails at `third` while `broken` is set: the tests "fix" it by
/// clearing the flag, then resume.
struct Chain {
    log: Log,
    broken: Arc<AtomicBool>,
}

#[flow(state = Count, persist)]
impl Chain {
    #[start]
    async fn first(&self, cx: &Cx<Count>) -> Result<u32> {
        self.log.push("first");
        Ok(cx.update(|c| {
            c.counter += 1;
            c.message = format!("Count is {}", c.counter);
            c.seen.push("first".into());
            c.counter
        }))
    }
    #[listen(first)]
    async fn second(&self, cx: &Cx<Count>, n: u32) -> Result<u32> {
        self.log.push("second");
        cx.update(|c| c.seen.push(format!("second saw {n}")));
        Ok(n * 10)
    }
    #[listen(second)]
    async fn third(&self, cx: &Cx<Count>, n: u32) -> Result<u32> {
        self.log.push("third");
        if self.broken.load(Ordering::SeqCst) {
            return Err(StepError::msg("the API is down"));
        }
        cx.update(|c| c.seen.push(format!("third saw {n}")));
        Ok(n + 1)
    }
    #[listen(third)]
    async fn fourth(&self, cx: &Cx<Count>, n: u32) -> Result<String> {
        self.log.push("fourth");
        cx.update(|c| c.seen.push("fourth".into()));
        Ok(format!("done with {n}"))
    }
}

fn chain(path: &std::path::Path, log: &Log, broken: bool) -> Flow<Count> {
    Chain { log: log.clone(), broken: Arc::new(AtomicBool::new(broken)) }
        .into_builder()
        .store(SqliteStore::open(path))
        .build()
        .unwrap()
}

/// C47 and spec §0 item 18: nothing touches the disk before a run; then each run, its state
/// and its steps' outputs are stored, and runs are listed and inspected.
#[tokio::test]
async fn runs_are_stored_and_listed_and_the_file_appears_only_when_used() {
    let (_dir, path) = temp_db();
    let log = Log::default();
    let flow = chain(&path, &log, false);
    assert!(!path.exists(), "building a flow with a store touches nothing");

    let run = flow.kickoff(()).await.unwrap();
    assert!(path.exists());
    let store = flow.store().unwrap();
    let stored = store.load_run(run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished);
    let state: Count = serde_json::from_str(&stored.state).unwrap();
    assert_eq!((state.counter, state.message.as_str()), (1, "Count is 1"));
    let steps: Vec<(&str, serde_json::Value)> =
        stored.steps.iter().map(|s| (&*s.step, serde_json::from_str(&s.output).unwrap())).collect();
    assert_eq!(
        steps,
        [("first", json!(1)), ("second", json!(10)), ("third", json!(11)), ("fourth", json!("done with 11"))]
    );
    assert!(stored.created_at <= stored.updated_at);

    let failing = chain(&path, &log, true);
    let failed_id = failing.kickoff(()).await.err().map(|_| ()).and(None::<RunId>);
    assert!(failed_id.is_none());
    let all = store.list_runs(&RunFilter { flow: Some("Chain".into()), ..RunFilter::default() }).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].status, RunStatus::Failed, "newest first");
    assert!(all[0].error.as_deref().unwrap_or("").contains("the API is down"));
    assert_eq!(all[0].steps_done, 2, "first and second were checkpointed before third failed");
    assert_eq!(all[1].status, RunStatus::Finished);
    assert_eq!(all[1].steps_done, 4);
    let finished =
        store.list_runs(&RunFilter { status: Some(RunStatus::Finished), ..RunFilter::default() }).await.unwrap();
    assert_eq!(finished.iter().map(|r| r.run_id).collect::<Vec<_>>(), [run.id]);
}

/// A failed run resumes exactly from its last checkpoint after the fix: finished steps do not
/// run again, the failed step runs with the input it had, and the state is what an
/// uninterrupted run ends with (spec §0 items 20 and 21).
#[tokio::test]
async fn a_failed_run_resumes_from_its_last_checkpoint_after_a_fix() {
    let (_dir, path) = temp_db();
    let log = Log::default();
    let broken = Arc::new(AtomicBool::new(true));
    let flow = Chain { log: log.clone(), broken: broken.clone() }
        .into_builder()
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let err = flow.kickoff(()).await.err().unwrap();
    let Error::StepFailed { step, .. } = &err else { panic!("{err}") };
    assert_eq!(step, "third");
    let failed = flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    assert_eq!(log.entries(), ["first", "second", "third"]);

    broken.store(false, Ordering::SeqCst); // the fix
    let resumed = flow.resume(failed).await.unwrap();
    assert_eq!(log.entries(), ["first", "second", "third", "third", "fourth"]);
    assert_eq!(resumed.id, failed);
    assert_eq!(resumed.output::<String>().unwrap(), "done with 11");
    let uninterrupted = chain(&path, &Log::default(), false).kickoff(()).await.unwrap();
    assert_eq!(resumed.state, uninterrupted.state);
    assert_eq!(resumed.step_names(), uninterrupted.step_names());
}

/// Resuming a finished run returns its result and runs nothing (spec §0 item 11: upstream
/// returns the previous output for any id, silently); an unknown id is an error, never a new
/// run (item 20).
#[tokio::test]
async fn resuming_a_finished_or_unknown_run() {
    let (_dir, path) = temp_db();
    let log = Log::default();
    let flow = chain(&path, &log, false);
    let run = flow.kickoff(()).await.unwrap();
    let again = flow.resume(run.id).await.unwrap();
    assert_eq!(log.count("first"), 1, "nothing ran again");
    assert_eq!(again.state, run.state);
    assert_eq!(again.output::<String>().unwrap(), "done with 11");
    assert_eq!(again.final_step(), Some("fourth"));

    let unknown = RunId::new();
    let err = flow.resume(unknown).await.err().unwrap();
    assert!(matches!(err, Error::Durable(DurableError::UnknownRun { .. })), "{err}");
    assert!(err.to_string().contains(&unknown.to_string()), "{err}");
    assert!(flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap().len() == 1);

    // Pinning a new run to an existing id is refused rather than silently resuming or
    // overwriting it.
    let err = flow.kickoff(Kickoff::new().run_id(run.id)).await.err().unwrap();
    assert!(err.to_string().contains("already exists"), "{err}");
}

/// A run resumes in a new flow value over a new store handle on the same file: what a new
/// process does (C59: no constructor backend needed beyond the store).
#[tokio::test]
async fn a_run_resumes_from_another_flow_value_and_store_handle() {
    let (_dir, path) = temp_db();
    let failed = {
        let flow = chain(&path, &Log::default(), true);
        flow.kickoff(()).await.unwrap_err();
        flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id
    };
    let log = Log::default();
    let fresh = chain(&path, &log, false);
    let run = fresh.resume(failed).await.unwrap();
    assert_eq!(log.entries(), ["third", "fourth"]);
    assert_eq!(run.state.seen, ["first", "second saw 1", "third saw 10", "fourth"]);
}

struct Join {
    log: Log,
    broken: Arc<AtomicBool>,
}

#[flow(persist)]
impl Join {
    #[start]
    async fn fetch(&self) -> Result<()> {
        Ok(())
    }
    #[listen(fetch)]
    async fn fast(&self) -> Result<&'static str> {
        self.log.push("fast");
        Ok("fast")
    }
    #[listen(fetch)]
    async fn slow(&self) -> Result<&'static str> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.log.push("slow");
        if self.broken.load(Ordering::SeqCst) {
            return Err(StepError::msg("timeout"));
        }
        Ok("slow")
    }
    #[listen(and(fast, slow))]
    async fn both(&self) -> Result<&'static str> {
        self.log.push("both");
        Ok("joined")
    }
}

/// `and` progress survives: the half of the join recorded before the failure completes it
/// after the resume (upstream loses join progress, spec §0 item 13).
#[tokio::test]
async fn join_progress_survives_a_resume() {
    let (_dir, path) = temp_db();
    let log = Log::default();
    let broken = Arc::new(AtomicBool::new(true));
    let flow = Join { log: log.clone(), broken: broken.clone() }
        .into_builder()
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    flow.kickoff(()).await.unwrap_err();
    let id = flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    broken.store(false, Ordering::SeqCst);
    let run = flow.resume(id).await.unwrap();
    assert_eq!(log.entries(), ["fast", "slow", "slow", "both"]);
    assert_eq!(run.output::<String>().unwrap(), "joined");
}

/// Only `#[persist]` steps write checkpoints when any step is marked (C49 variant B), and
/// method-level persistence can restore (spec §0 item 17): a failure after an unmarked step
/// resumes from the marked step's checkpoint and runs the unmarked one again.
#[tokio::test]
async fn step_level_persistence_checkpoints_only_marked_steps() {
    struct Marked {
        log: Log,
        broken: Arc<AtomicBool>,
    }
    #[flow(state = Count)]
    impl Marked {
        #[start]
        #[persist]
        async fn step_1(&self, cx: &Cx<Count>) -> Result<()> {
            self.log.push("step_1");
            cx.update(|c| c.counter = 1);
            Ok(())
        }
        #[listen(step_1)]
        async fn step_2(&self, cx: &Cx<Count>) -> Result<()> {
            self.log.push("step_2");
            cx.update(|c| c.counter = 2);
            Ok(())
        }
        #[listen(step_2)]
        async fn step_3(&self) -> Result<()> {
            self.log.push("step_3");
            if self.broken.load(Ordering::SeqCst) {
                return Err(StepError::msg("not yet"));
            }
            Ok(())
        }
    }
    let (_dir, path) = temp_db();
    let log = Log::default();
    let broken = Arc::new(AtomicBool::new(true));
    let flow = Marked { log: log.clone(), broken: broken.clone() }
        .into_builder()
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    flow.kickoff(()).await.unwrap_err();
    let store = flow.store().unwrap();
    let id = store.list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    let stored = store.load_run(id).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Count>(&stored.state).unwrap().counter, 1, "the state at step_1's checkpoint");
    broken.store(false, Ordering::SeqCst);
    let run = flow.resume(id).await.unwrap();
    assert_eq!(log.entries(), ["step_1", "step_2", "step_3", "step_2", "step_3"]);
    assert_eq!(run.state.counter, 2);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Branch {
    BranchA,
}

/// C63: a resume goes through routers and conditional starts exactly: only what had not
/// completed runs.
#[tokio::test]
async fn c63_resume_skips_through_routers_into_conditional_starts() {
    struct Routed {
        log: Log,
        broken: Arc<AtomicBool>,
    }
    #[flow(persist)]
    impl Routed {
        #[start]
        async fn init(&self) -> Result<()> {
            self.log.push("init");
            Ok(())
        }
        #[router(init)]
        async fn route_to_branch(&self) -> Result<Branch> {
            self.log.push("route_to_branch");
            Ok(Branch::BranchA)
        }
        #[start(Branch::BranchA)]
        async fn branch_a_start(&self) -> Result<()> {
            self.log.push("branch_a_start");
            Ok(())
        }
        #[listen(branch_a_start)]
        async fn branch_a_process(&self) -> Result<()> {
            self.log.push("branch_a_process");
            if self.broken.load(Ordering::SeqCst) {
                return Err(StepError::msg("flaky"));
            }
            Ok(())
        }
    }
    let (_dir, path) = temp_db();
    let broken = Arc::new(AtomicBool::new(true));
    let first = Log::default();
    let flow = Routed { log: first.clone(), broken: broken.clone() }
        .into_builder()
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    flow.kickoff(()).await.unwrap_err();
    let id = flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    broken.store(false, Ordering::SeqCst);
    let second = Log::default();
    let again = Routed { log: second.clone(), broken }.into_builder().store(SqliteStore::open(&path)).build().unwrap();
    again.resume(id).await.unwrap();
    assert_eq!(second.entries(), ["branch_a_process"]);
}

/// C53, C55: forking starts a new run from another run's state, with inputs merged over it,
/// under a new or pinned id; the source is untouched.
#[tokio::test]
async fn forks_start_from_another_runs_state() {
    let (_dir, path) = temp_db();
    let flow = chain(&path, &Log::default(), false);
    let source = flow.kickoff(()).await.unwrap();
    assert_eq!(source.state.counter, 1);

    let pinned = RunId::new();
    let fork = flow.fork(source.id, Kickoff::new().run_id(pinned).input("message", "forked")).await.unwrap();
    assert_eq!(fork.id, pinned);
    assert_eq!(fork.state.counter, 2, "the fork starts from the source's counter");
    let store = flow.store().unwrap();
    let source_row = store.load_run(source.id).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Count>(&source_row.state).unwrap().counter, 1, "source untouched");
    let fork_row = store.load_run(pinned).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Count>(&fork_row.state).unwrap().counter, 2);

    let err = flow.fork(RunId::new(), ()).await.err().unwrap();
    assert!(matches!(err, Error::Durable(DurableError::UnknownRun { .. })), "{err}");
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Ledger {
    at: Option<chrono::DateTime<chrono::Utc>>,
    id: Option<uuid::Uuid>,
    amount: rust_decimal::Decimal,
    blob: bytes::Bytes,
    raw: Vec<u8>,
    nested: Vec<Entry>,
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Entry {
    label: String,
    tags: Vec<String>,
}

/// Spec §0 item 19 (X20) and C51: state with dates, UUIDs, decimals, bytes and nested models
/// is stored and restored exactly.
#[tokio::test]
async fn state_with_dates_uuids_decimals_bytes_and_nesting_round_trips() {
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let build = |path: &std::path::Path| {
        let b = b.clone();
        FlowBuilder::<Ledger>::new("ledger")
            .start("write", |cx: Cx<Ledger>, (): ()| async move {
                cx.update(|l| {
                    l.at = Some(chrono::DateTime::parse_from_rfc3339("2026-11-22T10:30:00.123456Z").unwrap().into());
                    l.id = Some(uuid::Uuid::parse_str("0191d1a2-7c3e-7a4b-8c5d-6e7f8091a2b3").unwrap());
                    l.amount = "1234.5678".parse().unwrap();
                    l.blob = bytes::Bytes::from_static(b"\x00\xffbinary");
                    l.raw = vec![0, 1, 254, 255];
                    l.nested = vec![Entry { label: "a".into(), tags: vec!["x".into(), "y".into()] }];
                });
                Ok(())
            })
            .listen("check", "write", move |_cx, (): ()| {
                let b = b.clone();
                async move {
                    if b.load(Ordering::SeqCst) {
                        return Err(StepError::msg("not yet"));
                    }
                    Ok(())
                }
            })
            .store(SqliteStore::open(path))
            .build()
            .unwrap()
    };
    let (_dir, path) = temp_db();
    let flow = build(&path);
    flow.kickoff(()).await.unwrap_err();
    let id = flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    broken.store(false, Ordering::SeqCst);
    let resumed = build(&path).resume(id).await.unwrap();
    assert_eq!(resumed.state.amount.to_string(), "1234.5678");
    assert_eq!(resumed.state.at.unwrap().to_rfc3339(), "2026-11-22T10:30:00.123456+00:00");
    assert_eq!(resumed.state.blob, bytes::Bytes::from_static(b"\x00\xffbinary"));
    assert_eq!(resumed.state.raw, [0, 1, 254, 255]);
    assert_eq!(resumed.state.nested[0].tags, ["x", "y"]);
    assert_eq!(resumed.state.id.unwrap().to_string(), "0191d1a2-7c3e-7a4b-8c5d-6e7f8091a2b3");
}

/// A run is only resumed by the flow that started it, unchanged.
#[tokio::test]
async fn resume_refuses_another_flow_or_a_changed_definition() {
    let (_dir, path) = temp_db();
    let flow = chain(&path, &Log::default(), true);
    flow.kickoff(()).await.unwrap_err();
    let id = flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;

    let other = FlowBuilder::<Count>::new("Other")
        .start("x", |_cx, (): ()| async move { Ok(()) })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let err = other.resume(id).await.err().unwrap();
    assert!(matches!(err, Error::Durable(DurableError::RunOfAnotherFlow { .. })), "{err}");

    let changed = Chain { log: Log::default(), broken: Arc::new(AtomicBool::new(false)) }
        .into_builder()
        .listen("fifth", "fourth", |_cx, (): ()| async move { Ok(()) })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let err = changed.resume(id).await.err().unwrap();
    assert!(matches!(err, Error::Durable(DurableError::DefinitionChanged { .. })), "{err}");
    // A fork follows a changed definition: it starts over from the state.
    assert_eq!(changed.fork(id, ()).await.unwrap().state.counter, 2);
}

/// A corrupt file, another application's database and a newer schema are clear errors that
/// name the file and the fix; nothing is overwritten.
#[tokio::test]
async fn corrupt_foreign_and_newer_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let flow_on = |path: &std::path::Path| chain(path, &Log::default(), false);

    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, b"this is not a database, it is a shopping list\n").unwrap();
    let err = flow_on(&corrupt).kickoff(()).await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("corrupt.db is not a SQLite database"), "{msg}");
    assert!(matches!(err, Error::Durable(DurableError::Store { .. })));
    assert_eq!(std::fs::read(&corrupt).unwrap(), b"this is not a database, it is a shopping list\n");

    let foreign = dir.path().join("app.db");
    {
        let c = rusqlite_like::open(&foreign);
        c.exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)");
    }
    let err = flow_on(&foreign).kickoff(()).await.err().unwrap();
    assert!(err.to_string().contains("holds tables of another application (users)"), "{err}");

    let newer = dir.path().join("newer.db");
    SqliteStore::open(&newer).connect().await.unwrap();
    rusqlite_like::open(&newer).exec("INSERT INTO crewflow_schema (version) VALUES (99)");
    let err = flow_on(&newer).kickoff(()).await.err().unwrap();
    assert!(err.to_string().contains("has schema version 99, newer than this crewflow supports (11)"), "{err}");
}

/// A file written before nested runs were recorded (schema 7) is brought to the current
/// schema on first use (nested runs, schedules' time zones): its runs load and resume as
/// before, with no parent.
#[tokio::test]
async fn a_file_of_the_previous_schema_is_upgraded_and_keeps_its_runs() {
    let (_dir, path) = temp_db();
    let log = Log::default();
    let broken = chain(&path, &log, true);
    broken.kickoff(()).await.unwrap_err();
    let run_id = broken.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    // Back to schema 7: what a crewflow of before nested runs wrote.
    rusqlite_like::open(&path).exec(
        "DROP TABLE crewflow_api_keys;
         DROP INDEX crewflow_runs_by_parent;
         ALTER TABLE crewflow_runs DROP COLUMN parent_run_id;
         ALTER TABLE crewflow_runs DROP COLUMN parent_activation;
         ALTER TABLE crewflow_schedules DROP COLUMN timezone;
         ALTER TABLE crewflow_schedules DROP COLUMN max_lateness_ms;
         DELETE FROM crewflow_schema WHERE version >= 8;",
    );
    let flow = chain(&path, &log, false);
    let resumed = flow.resume(run_id).await.unwrap();
    assert_eq!(resumed.output::<String>().unwrap(), "done with 11");
    assert_eq!(log.entries(), ["first", "second", "third", "third", "fourth"]);
    let store = SqliteStore::open(&path);
    let run = crewflow::store::RunStore::load_run(&store, run_id).await.unwrap().unwrap();
    assert_eq!(run.parent, None);
}

/// The names in a directory, sorted.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Another application's SQLite file, and one of a newer crewflow, are refused before anything
/// is written: the file keeps its bytes and its rollback journal (no switch to WAL, no `-wal`
/// or `-shm` file appears next to it).
#[tokio::test]
async fn a_refused_database_file_is_left_exactly_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("app.db");
    rusqlite_like::open(&foreign)
        .exec("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users (name) VALUES ('ada');");
    let newer = dir.path().join("newer.db");
    rusqlite_like::open(&newer)
        .exec("CREATE TABLE crewflow_schema (version INTEGER NOT NULL); INSERT INTO crewflow_schema VALUES (99);");
    let before = (std::fs::read(&foreign).unwrap(), std::fs::read(&newer).unwrap());
    // Header bytes 18 and 19 are the file format versions: 1 for a rollback journal, 2 for WAL.
    assert_eq!((&before.0[18..20], &before.1[18..20]), (&[1u8, 1][..], &[1u8, 1][..]));
    assert_eq!(names_in(dir.path()), ["app.db", "newer.db"]);

    for _ in 0..2 {
        let err = SqliteStore::open(&foreign).connect().await.unwrap_err();
        assert!(err.to_string().contains("holds tables of another application (users)"), "{err}");
        let err = chain(&foreign, &Log::default(), false).kickoff(()).await.err().unwrap();
        assert!(err.to_string().contains("holds tables of another application (users)"), "{err}");
        let err = SqliteStore::open(&newer).connect().await.unwrap_err();
        assert!(err.to_string().contains("has schema version 99, newer than this crewflow supports"), "{err}");
    }
    let after = (std::fs::read(&foreign).unwrap(), std::fs::read(&newer).unwrap());
    assert!(after.0 == before.0, "app.db changed (header bytes 18-19 now {:?})", &after.0[18..20]);
    assert!(after.1 == before.1, "newer.db changed (header bytes 18-19 now {:?})", &after.1[18..20]);
    assert_eq!(names_in(dir.path()), ["app.db", "newer.db"], "no journal files were created");
}

/// Makes `path` read-only even for root, who ignores file modes: `chattr +i` (immutable), undone
/// on drop. `None` where the file system or the user cannot.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(path: &std::path::Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// "unable to open database file" is all SQLite says; the store says why, naming the path and
/// the fix: a missing directory, a directory given as the file, a file or directory that cannot
/// be written.
#[tokio::test]
async fn a_file_sqlite_cannot_open_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let open_err = |path: std::path::PathBuf| async move { SqliteStore::open(path).connect().await.unwrap_err() };

    let missing = dir.path().join("no").join("such").join("runs.db");
    let msg = open_err(missing.clone()).await.to_string();
    let parent = missing.parent().unwrap().display().to_string();
    assert!(msg.contains(&format!("cannot use the SQLite database {}", missing.display())), "{msg}");
    assert!(msg.contains(&format!("its directory {parent} does not exist")), "{msg}");
    assert!(msg.contains(&format!("mkdir -p {parent}")), "{msg}");
    assert!(!dir.path().join("no").exists(), "nothing was created");

    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let msg = open_err(folder.clone()).await.to_string();
    assert!(msg.contains("it is a directory"), "{msg}");
    assert!(msg.contains(&folder.join("crewflow.db").display().to_string()), "suggests a file in it: {msg}");
    let err = chain(&folder, &Log::default(), false).kickoff(()).await.err().unwrap();
    assert!(err.to_string().contains("it is a directory"), "the same through a flow: {err}");

    // Linux's sysfs refuses new files to everyone, root included: a real "permission denied".
    if std::path::Path::new("/sys/kernel").is_dir() {
        let msg = open_err("/sys/crewflow-test.db".into()).await.to_string();
        assert!(msg.contains("permission denied on /sys/crewflow-test.db"), "{msg}");
        assert!(msg.contains("make the directory /sys writable"), "{msg}");
    } else {
        eprintln!("skipped the /sys case: no sysfs here");
    }

    // A database that cannot be written (read-only for root too: immutable).
    let locked = dir.path().join("locked.db");
    SqliteStore::open(&locked).connect().await.unwrap();
    match Immutable::set(&locked) {
        Some(_guard) => {
            let msg = open_err(locked.clone()).await.to_string();
            assert!(msg.contains(&format!("permission denied on {}", locked.display())), "{msg}");
            let err = chain(&locked, &Log::default(), false).kickoff(()).await.err().unwrap();
            assert!(err.to_string().contains("make the file writable"), "{err}");
        }
        None => eprintln!("skipped the read-only file case: chattr +i is not available here"),
    }

    // A writable database in a directory that cannot be written: SQLite cannot create its
    // journal next to it.
    let sealed = dir.path().join("sealed");
    std::fs::create_dir(&sealed).unwrap();
    let inside = sealed.join("runs.db");
    SqliteStore::open(&inside).connect().await.unwrap();
    assert_eq!(names_in(&sealed), ["runs.db"], "the journal is gone once the store is closed");
    match Immutable::set(&sealed) {
        Some(_guard) => {
            let msg = chain(&inside, &Log::default(), false).kickoff(()).await.err().unwrap().to_string();
            assert!(msg.contains(&format!("permission denied on {}", sealed.display())), "{msg}");
            assert!(msg.contains(&format!("SQLite needs to create {}-wal", inside.display())), "{msg}");
        }
        None => eprintln!("skipped the read-only directory case: chattr +i is not available here"),
    }
}

/// A tiny SQLite client for setting up test databases, through the store crate's rusqlite.
mod rusqlite_like {
    pub struct Conn(std::path::PathBuf);
    pub fn open(path: &std::path::Path) -> Conn {
        Conn(path.to_path_buf())
    }
    impl Conn {
        pub fn exec(&self, sql: &str) {
            let status = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
                ])
                .arg(&self.0)
                .arg(sql)
                .status()
                .expect("python3 runs");
            assert!(status.success(), "python3 could not run {sql}");
        }
    }
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Kind {
    TypeA,
    TypeB,
    #[route(terminal)]
    Done,
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Rounds {
    i: u32,
}

/// `or` rounds and step counts survive a resume: a loop (C31's shape) that fails in its
/// second iteration resumes and runs exactly as an uninterrupted run does, and the step budget
/// keeps counting from where it was.
#[tokio::test]
async fn or_rounds_and_step_counts_survive_a_resume() {
    struct Looping {
        log: Log,
        broken: Arc<AtomicBool>,
    }
    #[flow(state = Rounds, persist)]
    impl Looping {
        #[start]
        async fn begin(&self) -> Result<()> {
            Ok(())
        }
        #[router(or(begin, loop_back))]
        async fn route(&self, cx: &Cx<Rounds>) -> Result<Kind> {
            let i = cx.update(|s| {
                s.i += 1;
                s.i
            });
            Ok(match i {
                i if i > 3 => Kind::Done,
                i if i % 2 == 1 => Kind::TypeA,
                _ => Kind::TypeB,
            })
        }
        #[listen(Kind::TypeA)]
        async fn handler_a(&self) -> Result<()> {
            self.log.push("handler_a");
            Ok(())
        }
        #[listen(Kind::TypeB)]
        async fn handler_b(&self) -> Result<()> {
            self.log.push("handler_b");
            if self.broken.load(Ordering::SeqCst) {
                return Err(StepError::msg("flaky"));
            }
            Ok(())
        }
        #[listen(or(handler_a, handler_b))]
        async fn merge(&self) -> Result<()> {
            self.log.push("merge");
            Ok(())
        }
        #[listen(merge)]
        async fn loop_back(&self) -> Result<()> {
            Ok(())
        }
    }
    let (_dir, path) = temp_db();
    let log = Log::default();
    let broken = Arc::new(AtomicBool::new(true));
    let flow = Looping { log: log.clone(), broken: broken.clone() }
        .into_builder()
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    flow.kickoff(()).await.unwrap_err();
    let id = flow.store().unwrap().list_runs(&RunFilter::default()).await.unwrap()[0].run_id;
    broken.store(false, Ordering::SeqCst);
    let run = flow.resume(id).await.unwrap();
    assert_eq!(log.entries(), ["handler_a", "merge", "handler_b", "handler_b", "merge", "handler_a", "merge"]);
    assert_eq!(run.state.i, 4);
    assert_eq!(run.steps_run(), 14, "completed executions: begin, 4 routes, 3 handlers, 3 merges, 3 loop backs");

    // Step counts survive too. A run needs 14 executions; a step in flight at a failure is
    // run again as the same execution, so a resumed run needs 14 as well. The first attempt
    // counts 7 before failing: with a budget of 13 the resumed run runs out only if those 7
    // were restored, and with 14 it finishes.
    for (budget, finishes) in [(13, false), (14, true)] {
        let broken = Arc::new(AtomicBool::new(true));
        let tight = Looping { log: Log::default(), broken: broken.clone() }
            .into_builder()
            .max_steps(budget)
            .store(SqliteStore::open(&path))
            .build()
            .unwrap();
        let Err(Error::StepFailed { .. }) = tight.kickoff(()).await else { panic!("the first attempt fails") };
        let failed = RunFilter { status: Some(RunStatus::Failed), ..RunFilter::default() };
        let id = tight.store().unwrap().list_runs(&failed).await.unwrap()[0].run_id;
        broken.store(false, Ordering::SeqCst);
        match tight.resume(id).await {
            Ok(run) => assert!(finishes, "budget {budget}: {} steps", run.steps_run()),
            Err(e) => assert!(!finishes && matches!(e, Error::StepBudgetExceeded { budget: 13, .. }), "{e}"),
        }
    }
}

/// C53: fork, then fork the fork; the inputs of the first fork stay in the state.
#[tokio::test]
async fn c53_forks_of_forks_keep_overrides() {
    #[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
    struct Poem {
        sentence_count: u32,
        poem_type: String,
    }
    let (_dir, path) = temp_db();
    let flow = FlowBuilder::<Poem>::new("poem")
        .start("write", |cx: Cx<Poem>, (): ()| async move {
            cx.update(|p| {
                if p.sentence_count == 0 {
                    p.sentence_count = 3;
                }
                p.poem_type = if p.sentence_count > 4 { "limerick" } else { "haiku" }.into();
            });
            Ok(())
        })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let first = flow.kickoff(()).await.unwrap();
    assert_eq!((first.state.sentence_count, first.state.poem_type.as_str()), (3, "haiku"));
    let second = flow.fork(first.id, serde_json::json!({ "sentence_count": 5 })).await.unwrap();
    assert_eq!((second.state.sentence_count, second.state.poem_type.as_str()), (5, "limerick"));
    let third = flow.fork(second.id, ()).await.unwrap();
    assert_eq!((third.state.sentence_count, third.state.poem_type.as_str()), (5, "limerick"));
}

/// Weakness 11: kicking a persisted flow off again runs it again (a new run, every step), never
/// a silent replay of the previous result; reusing a stored run's id is refused, pointing at
/// `resume`.
#[tokio::test]
async fn weakness_11_kicking_off_again_runs_again() {
    let (_dir, path) = temp_db();
    let log = Log::default();
    let l = log.clone();
    let flow = FlowBuilder::<serde_json::Map<String, serde_json::Value>>::new("again")
        .start("count", move |_cx, (): ()| {
            let log = l.clone();
            async move {
                log.push("count");
                Ok(log.count("count"))
            }
        })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let first = flow.kickoff(json!({"id": "same"})).await.unwrap();
    let second = flow.kickoff(json!({"id": "same"})).await.unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!((first.output::<usize>().unwrap(), second.output::<usize>().unwrap()), (1, 2));

    let err = flow.kickoff(Kickoff::new().run_id(first.id)).await.unwrap_err().to_string();
    assert!(err.contains(&first.id.to_string()) && err.contains("Flow::resume"), "{err}");
    assert_eq!(log.count("count"), 2, "a refused kickoff runs nothing");
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Notes {
    text: String,
    extra: String,
}

/// U+0000 in inputs, state and outputs is kept by SQLite (PostgreSQL refuses it up front:
/// tests/store_postgres.rs), and reads back unchanged.
#[tokio::test]
async fn sqlite_keeps_a_nul_character_in_inputs_state_and_outputs() {
    let (_dir, path) = temp_db();
    let flow = FlowBuilder::<Notes>::new("nul")
        .start("echo", |cx: Cx<Notes>, (): ()| async move {
            cx.update(|n| n.extra = "x\0y".into());
            Ok(cx.state(|n| format!("{}\0!", n.text)))
        })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let run = flow.kickoff(json!({"text": "a\u{0}b"})).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "a\0b\0!");
    let stored = flow.store().unwrap().load_run(run.id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished);
    let state: Notes = serde_json::from_str(&stored.state).unwrap();
    assert_eq!(state, Notes { text: "a\0b".into(), extra: "x\0y".into() });
    assert_eq!(serde_json::from_str::<String>(&stored.steps[0].output).unwrap(), "a\0b\0!");
}

/// `#[flow(persist)]` and a step's `#[persist]` add up: every step still checkpoints (the mark
/// once narrowed checkpoints to the marked step, so a resume re-ran unmarked completed steps).
#[tokio::test]
async fn flow_persist_and_a_step_mark_add_up() {
    #[derive(Clone, Default)]
    struct Marked {
        log: Log,
        fixed: Arc<AtomicBool>,
    }
    #[flow(persist)]
    impl Marked {
        #[start]
        #[persist]
        async fn a(&self) -> Result<()> {
            self.log.push("a");
            Ok(())
        }
        #[listen(a)]
        async fn b(&self) -> Result<()> {
            self.log.push("b");
            Ok(())
        }
        #[listen(b)]
        async fn c(&self) -> Result<&'static str> {
            self.log.push("c");
            if self.fixed.load(Ordering::SeqCst) { Ok("done") } else { Err("not yet".into()) }
        }
    }
    let (_dir, path) = temp_db();
    let marked = Marked::default();
    let flow = marked.clone().into_builder().store(SqliteStore::open(&path)).build().unwrap();
    let Err(Error::StepFailed { run_id, .. }) = flow.kickoff(()).await else { panic!("c fails first") };
    marked.fixed.store(true, Ordering::SeqCst);
    let run = flow.resume(run_id).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "done");
    // b completed before the failure and was checkpointed: it does not run again.
    assert_eq!(marked.log.entries(), ["a", "b", "c", "c"]);
}

/// `inspect_with` reads what it is asked for: with `LoadRun::new()` the state and the run's
/// output (its final step's) only, with no outputs nothing but the state; the other outputs are
/// read on demand with `load_steps`, the same as `inspect` reads them.
#[tokio::test]
async fn inspect_with_reads_the_state_and_the_output_and_the_rest_on_demand() {
    use crewflow::store::{LoadRun, RunStore, StepOutputs};
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path);
    let flow = FlowBuilder::<Count>::new("outputs")
        .start("a", |cx: Cx<Count>, (): ()| async move {
            cx.update(|c| c.counter += 1);
            Ok(1u32)
        })
        .listen("b", "a", |cx: Cx<Count>, n: u32| async move {
            cx.update(|c| c.counter += 1);
            Ok(n + 1)
        })
        .listen("c", "b", |_cx: Cx<Count>, n: u32| async move { Ok(format!("the answer is {n}")) })
        .store(store.clone())
        .build()
        .unwrap();
    let id = flow.kickoff(()).await.unwrap().id;

    let light = flow.inspect_with(id, LoadRun::new()).await.unwrap();
    assert_eq!(light.state.counter, 2);
    assert_eq!(light.output::<String>().unwrap(), "the answer is 2");
    assert_eq!((light.final_step(), light.step_names()), (Some("c"), vec!["c"]));
    let bare = flow.inspect_with(id, LoadRun::new().outputs(StepOutputs::None)).await.unwrap();
    assert_eq!(bare.state.counter, 2);
    assert!(bare.steps().is_empty());
    assert!(matches!(bare.output::<String>(), Err(Error::NoOutput { .. })), "no output was read");

    let whole = flow.inspect(id).await.unwrap();
    assert_eq!(whole.step_names(), ["a", "b", "c"]);
    let on_demand = store.load_steps(id).await.unwrap();
    let names: Vec<&str> = on_demand.iter().map(|s| &*s.step).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(on_demand[1].output, "2");
}

/// With `background_checkpoints`, the write-ahead log is copied back into the database file by
/// the store's background checkpoints, not only when a commit takes it past the threshold where the store's own
/// connection checkpoints (which makes that commit wait for two disk flushes): with the store
/// still open, after a few hundred writes the rows are in the database file itself, long before
/// the log reaches that threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_checkpointed_in_the_background() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path).background_checkpoints(true);
    let mut b = FlowBuilder::<Count>::new("wal").start("s0", |cx: Cx<Count>, (): ()| async move {
        cx.update(|c| c.message = "x".repeat(200));
        Ok(())
    });
    for i in 1..10 {
        b = b.listen(&format!("s{i}"), step(format!("s{}", i - 1)), |cx: Cx<Count>, (): ()| async move {
            cx.update(|c| c.counter += 1);
            Ok(())
        });
    }
    let flow = b.store(store.clone()).build().unwrap();
    for _ in 0..60 {
        flow.kickoff(()).await.unwrap(); // 12 writes each: 720 in all, some 2,500 log pages
    }
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size(&path) < 64 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (file, log) = (size(&path), size(&wal));
    assert!(file >= 64 * 1024, "the rows never reached the database file ({file} bytes; log {log} bytes)");
    // The store's own connection checkpoints only past 8,000 pages (some 33 MB of log): the
    // rows above were copied by the background checkpoints.
    assert!(log < 8_000 * 4_096, "the log grew to {log} bytes, past the store's own checkpoint threshold");
    drop(flow);
    drop(store);
}
