//! The run's journal of side effects: `cx.once` runs an operation once per key, even when its
//! step runs again after a crash; `cx.idempotency_key` is stable across re-runs and differs
//! across loop rounds.
//!
//! The crash test kills a real process (SIGKILL) between two journaled operations of one step
//! and resumes the run in another process: the first operation ran exactly once, the second
//! once after the resume, and the step's result equals an uninterrupted run's. The processes
//! are this test binary, re-executed in the role given by `JOURNAL_ROLE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crewflow::journal::OnceError;
use crewflow::prelude::*;
use crewflow::store::{RunStore, SqliteStore};
use crewflow::{FlowBuilder, RunId};
use serde::{Deserialize, Serialize};

#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    receipts: Vec<String>,
}

/// Appends a line to the side file (a record of real effects, outside the store).
fn effect(side: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(side).unwrap();
    writeln!(f, "{line}").unwrap();
    f.sync_data().unwrap();
}

fn side_lines(side: &Path) -> Vec<String> {
    std::fs::read_to_string(side).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// One step with two journaled operations ("charge" then "mail"), a pause between them (the
/// kill comes there), and a result built from both.
fn checkout(store: Arc<dyn RunStore>, side: PathBuf, pause: Duration) -> Flow<Order> {
    FlowBuilder::<Order>::new("checkout")
        .start("pay", move |cx: Cx<Order>, (): ()| {
            let side = side.clone();
            async move {
                let side2 = side.clone();
                let charged: String = cx
                    .once("charge", |key| async move {
                        effect(&side2, &format!("charge {key}"));
                        Ok::<_, std::io::Error>(format!("receipt for {key}"))
                    })
                    .await?;
                tokio::time::sleep(pause).await;
                let side3 = side.clone();
                let mailed: String = cx
                    .once("mail", |key| async move {
                        effect(&side3, &format!("mail {key}"));
                        Ok::<_, std::io::Error>("mailed".to_string())
                    })
                    .await?;
                cx.update(|o| o.receipts = vec![charged.clone(), mailed.clone()]);
                Ok::<_, StepError>(format!("{charged}; {mailed}"))
            }
        })
        .store(store)
        .build()
        .unwrap()
}

fn open_store(url: &str) -> Arc<dyn RunStore> {
    if url.starts_with("postgres") { crewflow::store::open(url).unwrap() } else { Arc::new(SqliteStore::open(url)) }
}

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the journal crash tests in this file, started by them with JOURNAL_ROLE set"]
fn journal_child() {
    let (Ok(role), Ok(url), Ok(side), Ok(run)) = (
        std::env::var("JOURNAL_ROLE"),
        std::env::var("JOURNAL_DB"),
        std::env::var("JOURNAL_SIDE"),
        std::env::var("JOURNAL_RUN"),
    ) else {
        panic!("journal_child runs only as a child of the journal tests");
    };
    let run_id: RunId = run.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The first process waits long enough between the operations to be killed there.
        let pause = if role == "run" { Duration::from_secs(60) } else { Duration::ZERO };
        let flow = checkout(open_store(&url), side.into(), pause);
        let run = match role.as_str() {
            "run" => flow.kickoff(Kickoff::new().run_id(run_id)).await,
            _ => flow.resume(run_id).await,
        }
        .unwrap();
        println!("OUTPUT {}", run.output::<String>().unwrap());
    });
}

fn child(role: &str, url: &str, side: &Path, run: RunId) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["journal_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("JOURNAL_ROLE", role)
        .env("JOURNAL_DB", url)
        .env("JOURNAL_SIDE", side)
        .env("JOURNAL_RUN", run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn killed_between_two_operations(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("effects.log");
    let run = RunId::new();
    let mut victim = child("run", url, &side, run).spawn().unwrap();
    let started = Instant::now();
    while side_lines(&side).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(60), "the child never charged");
        assert!(victim.try_wait().unwrap().is_none(), "the child ended before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The charge's record is committed before `once` returns; give it that moment, then kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let out = child("resume", url, &side, run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let output = common::line_after(&stdout, "OUTPUT ");
    let key = |name: &str| format!("{run}:0:{name}");
    assert_eq!(output, format!("receipt for {}; mailed", key("charge")));
    assert_eq!(side_lines(&side), vec![format!("charge {}", key("charge")), format!("mail {}", key("mail"))]);
}

#[tokio::test]
async fn sqlite_a_killed_step_does_not_repeat_its_recorded_operation() {
    let dir = tempfile::tempdir().unwrap();
    killed_between_two_operations(dir.path().join("runs.db").to_str().unwrap()).await;
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn postgres_a_killed_step_does_not_repeat_its_recorded_operation() {
    killed_between_two_operations(&common::postgres::fresh_schema().await).await;
}

/// Repeated calls with one name get distinct, deterministic keys; loop rounds get new keys;
/// the idempotency key of a name is the key `once` hands to its first call of that name.
#[tokio::test]
async fn keys_are_distinct_per_call_and_round_and_stable_per_execution() {
    #[derive(Default, Serialize, Deserialize)]
    struct Keys {
        seen: Vec<String>,
        rounds: u32,
    }
    // begin → again ⇄ work: `work` runs in two rounds (two executions of one step).
    let flow = FlowBuilder::<Keys>::new("keys")
        .start("begin", |_cx: Cx<Keys>, (): ()| async move { Ok::<_, StepError>(()) })
        .router("again", or([step("begin"), step("work")]), |cx: Cx<Keys>, (): ()| async move {
            Ok::<_, StepError>(if cx.state(|s| s.rounds) < 2 { "more" } else { "done" }.to_string())
        })
        .routes(["more", "done"])
        .terminal(["done"])
        .listen("work", label("more"), |cx: Cx<Keys>, (): ()| async move {
            let a: String = cx.once("send", |k| async move { Ok::<_, std::io::Error>(k) }).await?;
            let b: String = cx.once("send", |k| async move { Ok::<_, std::io::Error>(k) }).await?;
            assert_eq!(a, cx.idempotency_key("send"));
            assert_eq!(cx.idempotency_key("send"), cx.idempotency_key("send"), "stable within an execution");
            cx.update(|s| {
                s.seen.push(a.clone());
                s.seen.push(b.clone());
                s.rounds += 1;
            });
            Ok::<_, StepError>(())
        })
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    let seen = &run.state.seen;
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].ends_with(":send") && seen[1].ends_with(":send#1"), "{seen:?}");
    assert!(seen[2].ends_with(":send") && seen[3].ends_with(":send#1"), "{seen:?}");
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 4, "another round, other keys: {seen:?}");
}

/// A failed operation records nothing (it runs again next time); a result that cannot be
/// recorded, or a recorded one read back as another type, is a clear error.
#[tokio::test]
async fn failures_record_nothing_and_errors_name_the_key() {
    let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let t = tries.clone();
    let flow = FlowBuilder::<Order>::new("flaky")
        .start("pay", move |cx: Cx<Order>, (): ()| {
            let t = t.clone();
            async move {
                let first = cx
                    .once("charge", |_| async {
                        t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Err::<String, _>(std::io::Error::other("card declined"))
                    })
                    .await;
                let Err(OnceError::Failed { name, source }) = first else { panic!("{first:?}") };
                assert_eq!(name, "charge");
                assert_eq!(source.to_string(), "card declined");
                // A second call with the same name is a new call (`charge#1`): it runs.
                let second: String = cx
                    .once("charge", |_| async {
                        t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Ok::<_, std::io::Error>("ok".to_string())
                    })
                    .await?;
                Ok::<_, StepError>(second)
            }
        })
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    assert_eq!(flow.kickoff(()).await.unwrap().output::<String>().unwrap(), "ok");
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);

    let unrecordable = FlowBuilder::<Order>::new("nan")
        .start("pay", |cx: Cx<Order>, (): ()| async move {
            let r = cx
                .once("rate", |_| async { Ok::<_, std::io::Error>(std::collections::HashMap::from([((1, 2), 3)])) })
                .await;
            Ok::<_, StepError>(r.err().map(|e| e.to_string()).unwrap_or_default())
        })
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let message = unrecordable.kickoff(()).await.unwrap().output::<String>().unwrap();
    assert!(message.starts_with("the result of `rate` cannot be recorded"), "{message}");
}

/// Without a store `once` runs the operation (nothing to record it in) and still hands it the
/// same keys.
#[tokio::test]
async fn without_a_store_once_runs_the_operation() {
    let flow = FlowBuilder::<Order>::new("plain")
        .start("pay", |cx: Cx<Order>, (): ()| async move {
            let a: String = cx.once("x", |k| async move { Ok::<_, std::io::Error>(k) }).await?;
            let b: String = cx.once("x", |k| async move { Ok::<_, std::io::Error>(k) }).await?;
            Ok::<_, StepError>(vec![a, b])
        })
        .build()
        .unwrap();
    let keys = flow.kickoff(()).await.unwrap().output::<Vec<String>>().unwrap();
    assert!(keys[0].ends_with(":0:x") && keys[1].ends_with(":0:x#1"), "{keys:?}");
}
