//! Crash recovery: a process running a 20-step flow is killed with SIGKILL mid-run; another
//! process resumes it. The final state equals an uninterrupted run's, and no step whose
//! completion was checkpointed runs twice (each step appends to a side file to prove it). The
//! step in flight at the kill may run again: at-least-once, as documented.
//!
//! The processes are this test binary, re-executed in the role given by `CRASH_ROLE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crewflow::prelude::*;
use crewflow::store::{RunStore, SqliteStore};
use crewflow::{FlowBuilder, RunId};
use serde::{Deserialize, Serialize};

const STEPS: u32 = 20;

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Tally {
    sum: u32,
    done: Vec<String>,
}

/// The 20-step chain; each step appends its name to the side file, then works for a while.
fn twenty_steps(store: Arc<dyn RunStore>, side: std::path::PathBuf) -> Flow<Tally> {
    let step = move |i: u32| {
        let side = side.clone();
        move |cx: Cx<Tally>, (): ()| {
            let side = side.clone();
            async move {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&side)?;
                writeln!(f, "step_{i}")?;
                f.sync_data()?;
                tokio::time::sleep(Duration::from_millis(40)).await;
                cx.update(|t| {
                    t.sum += i;
                    t.done.push(format!("step_{i}"));
                });
                Ok(i)
            }
        }
    };
    let mut b = FlowBuilder::<Tally>::new("crash20").start("step_1", step(1));
    for i in 2..=STEPS {
        b = b.listen(&format!("step_{i}"), format!("step_{}", i - 1).as_str(), step(i));
    }
    b.store(store).build().unwrap()
}

fn expected() -> Tally {
    Tally { sum: (1..=STEPS).sum(), done: (1..=STEPS).map(|i| format!("step_{i}")).collect() }
}

fn open_store(url: &str) -> Arc<dyn RunStore> {
    if url.starts_with("postgres") {
        Arc::new(crewflow_store::PostgresStore::connect_lazy(url).unwrap())
    } else {
        Arc::new(SqliteStore::open(url))
    }
}

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the crash tests in this file, started by them with CRASH_ROLE set"]
fn crash_child() {
    let (Ok(role), Ok(url), Ok(side), Ok(run)) = (
        std::env::var("CRASH_ROLE"),
        std::env::var("CRASH_DB"),
        std::env::var("CRASH_SIDE"),
        std::env::var("CRASH_RUN"),
    ) else {
        panic!("crash_child runs only as a child of the crash tests");
    };
    let run_id: RunId = run.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let flow = twenty_steps(open_store(&url), side.into());
        let result = match role.as_str() {
            "run" => flow.kickoff(Kickoff::new().run_id(run_id)).await,
            _ => flow.resume(run_id).await,
        };
        let run = result.unwrap();
        println!("FINAL {}", serde_json::to_string(&run.state).unwrap());
    });
}

fn child(role: &str, url: &str, side: &std::path::Path, run: RunId) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CRASH_ROLE", role)
        .env("CRASH_DB", url)
        .env("CRASH_SIDE", side)
        .env("CRASH_RUN", run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn side_lines(side: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(side).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// Kills a run mid-way, resumes it in another process, and checks the outcome.
async fn kill_and_resume(url: &str, side: &std::path::Path) {
    let run = RunId::new();
    let mut victim = child("run", url, side, run).spawn().unwrap();
    let started = Instant::now();
    while side_lines(side).len() < 8 {
        assert!(started.elapsed() < Duration::from_secs(60), "the child made no progress");
        if victim.try_wait().unwrap().is_some() {
            let out = victim.wait_with_output().unwrap();
            panic!(
                "the child ended before the kill:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().unwrap(); // SIGKILL
    let status = victim.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");

    // What the store recorded as completed when the process died.
    let store = open_store(url);
    let stored = store.load_run(run).await.unwrap().expect("the run was recorded");
    let checkpointed: BTreeSet<String> = stored.steps.iter().map(|s| s.step.to_string()).collect();
    assert!(checkpointed.len() >= 6 && checkpointed.len() < STEPS as usize, "{checkpointed:?}");

    let out = child("resume", url, side, run).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "resume failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let final_state: Tally = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.split_once("FINAL ").map(|(_, json)| json))
            .unwrap_or_else(|| panic!("no FINAL line in:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr))),
    )
    .unwrap();
    assert_eq!(final_state, expected(), "the resumed run ends where an uninterrupted one does");

    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for line in side_lines(side) {
        *runs.entry(line).or_default() += 1;
    }
    assert_eq!(runs.len(), STEPS as usize, "every step ran: {runs:?}");
    for step in &checkpointed {
        assert_eq!(runs[step], 1, "{step} was checkpointed before the kill, yet ran again: {runs:?}");
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.len() <= 1, "only the step in flight at the kill may run twice: {twice:?}");
}

#[tokio::test]
async fn a_killed_process_resumes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    kill_and_resume(db.to_str().unwrap(), &dir.path().join("side.log")).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_killed_process_resumes_on_postgres() {
    let url = std::env::var("CREWFLOW_TEST_POSTGRES").expect("CREWFLOW_TEST_POSTGRES");
    let dir = tempfile::tempdir().unwrap();
    kill_and_resume(&url, &dir.path().join("side.log")).await;
}
