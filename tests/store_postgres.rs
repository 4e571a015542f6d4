//! Durable runs on PostgreSQL: several processes, workers, leases and fencing, a server that
//! goes away mid-run. These tests need `CREWFLOW_TEST_POSTGRES` (`.ci/run` sets it for the
//! local server); without it they report themselves ignored. The store's own promises, the
//! same on every backend, are `tests/store_contract.rs`.
//!
//! Each test works in a schema of its own, so tests sharing a database never see each other's
//! runs. Child processes are this test binary, re-executed in the role given by `PG_ROLE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use crewflow::DurableError;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::postgres::{fresh_schema, with_search_path};
use common::proxy::Proxy;
use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStatus, RunStore};
use crewflow::{Error, FlowBuilder, RunId, Worker};
use crewflow_store::PostgresStore;
use serde::{Deserialize, Serialize};

fn store(url: &str) -> Arc<dyn RunStore> {
    Arc::new(PostgresStore::connect_lazy(url).unwrap())
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Tally {
    sum: u32,
    done: Vec<u32>,
}

/// A chain of `steps` steps; each appends `"<pid> <run> <step>"` to the side file, then waits.
fn chain(name: &str, steps: u32, pause: Duration, side: std::path::PathBuf, store: Arc<dyn RunStore>) -> Flow<Tally> {
    let step = move |i: u32| {
        let side = side.clone();
        move |cx: Cx<Tally>, (): ()| {
            let side = side.clone();
            async move {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&side)?;
                writeln!(f, "{} {} {i}", std::process::id(), cx.run_id())?;
                tokio::time::sleep(pause).await;
                cx.update(|t| {
                    t.sum += i;
                    t.done.push(i);
                });
                Ok(i)
            }
        }
    };
    let mut b = FlowBuilder::<Tally>::new(name).start("s1", step(1));
    for i in 2..=steps {
        b = b.listen(&format!("s{i}"), format!("s{}", i - 1).as_str(), step(i));
    }
    b.store(store).lease(Duration::from_millis(600)).build().unwrap()
}

fn expected(steps: u32) -> Tally {
    Tally { sum: (1..=steps).sum(), done: (1..=steps).collect() }
}

fn side_lines(side: &std::path::Path) -> Vec<(u32, String, u32)> {
    std::fs::read_to_string(side)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.to_string(), p.next()?.parse().ok()?))
        })
        .collect()
}

const WORK_FLOW: &str = "pg_work";
const WORK_STEPS: u32 = 5;

/// Child processes: `worker` (a Worker until every queued run is finished) or `owner` (runs
/// one flow with kickoff, reporting how it ended).
#[test]
#[ignore = "a child process of the PostgreSQL tests in this file, started by them with PG_ROLE set"]
fn pg_child() {
    let (Ok(role), Ok(url), Ok(side)) = (std::env::var("PG_ROLE"), std::env::var("PG_URL"), std::env::var("PG_SIDE"))
    else {
        panic!("pg_child runs only as a child of the PostgreSQL tests");
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let store = store(&url);
        match role.as_str() {
            "worker" => {
                let flow = chain(WORK_FLOW, WORK_STEPS, Duration::from_millis(60), side.into(), store.clone());
                let stop = crewflow::Canceller::new();
                let watcher = {
                    let (stop, store) = (stop.clone(), store.clone());
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let filter = RunFilter { flow: Some(WORK_FLOW.into()), ..RunFilter::default() };
                            let runs = store.list_runs(&filter).await.unwrap_or_default();
                            if !runs.is_empty() && runs.iter().all(|r| r.status == RunStatus::Finished) {
                                stop.cancel();
                                break;
                            }
                        }
                    })
                };
                let worker = Worker::new(store)
                    .flow(&flow)
                    .lease(Duration::from_millis(600))
                    .poll_interval(Duration::from_millis(50))
                    .concurrency(3);
                worker
                    .run(stop, |report| {
                        assert!(report.result.is_ok(), "{:?}", report.result);
                        println!("DONE {}", report.run_id);
                    })
                    .await
                    .unwrap();
                watcher.await.unwrap();
            }
            _ => {
                let run: RunId = std::env::var("PG_RUN").unwrap().parse().unwrap();
                let flow = chain("pg_fenced", 10, Duration::from_millis(100), side.into(), store);
                match flow.kickoff(Kickoff::new().run_id(run)).await {
                    Ok(_) => println!("OWNER FINISHED"),
                    Err(Error::Durable(DurableError::LeaseLost(lost))) => println!("OWNER LOST {lost}"),
                    Err(e) => println!("OWNER FAILED {e}"),
                }
            }
        }
    });
}

fn pg_child_command(role: &str, url: &str, side: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["pg_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("PG_ROLE", role)
        .env("PG_URL", url)
        .env("PG_SIDE", side)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn done_lines(output: &str) -> Vec<String> {
    output.lines().filter_map(|l| l.split_once("DONE ").map(|(_, id)| id.trim().to_string())).collect()
}

/// Two worker processes share queued runs; one is killed mid-run. The other takes over its
/// runs once their leases expire, and every run finishes exactly once.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn two_workers_one_killed_every_run_finishes_exactly_once() {
    let url = fresh_schema().await;
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side.log");
    let store = store(&url);
    let flow = chain(WORK_FLOW, WORK_STEPS, Duration::from_millis(60), side.clone(), store.clone());
    let mut queued = BTreeSet::new();
    for _ in 0..8 {
        queued.insert(flow.enqueue(()).await.unwrap().to_string());
    }

    let mut doomed = pg_child_command("worker", &url, &side).spawn().unwrap();
    let survivor = pg_child_command("worker", &url, &side).spawn().unwrap();
    let doomed_pid = doomed.id();
    let started = Instant::now();
    while side_lines(&side).iter().filter(|(pid, _, _)| *pid == doomed_pid).count() < 4 {
        assert!(started.elapsed() < Duration::from_secs(60), "the first worker never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    doomed.kill().unwrap();
    let doomed_out = doomed.wait_with_output().unwrap();
    let survivor_out = survivor.wait_with_output().unwrap();
    let survivor_stdout = String::from_utf8_lossy(&survivor_out.stdout).to_string();
    assert!(survivor_out.status.success(), "{survivor_stdout}\n{}", String::from_utf8_lossy(&survivor_out.stderr));

    let mut finished: BTreeMap<String, usize> = BTreeMap::new();
    for id in done_lines(&String::from_utf8_lossy(&doomed_out.stdout)).into_iter().chain(done_lines(&survivor_stdout)) {
        *finished.entry(id).or_default() += 1;
    }
    assert_eq!(finished.keys().cloned().collect::<BTreeSet<_>>(), queued, "every run finished");
    assert!(finished.values().all(|n| *n == 1), "a run finished twice: {finished:?}");

    let lines = side_lines(&side);
    let taken_over: BTreeSet<&String> = lines
        .iter()
        .filter(|(pid, _, _)| *pid == doomed_pid)
        .map(|(_, run, _)| run)
        .filter(|run| lines.iter().any(|(pid, r, _)| *pid != doomed_pid && r == *run))
        .collect();
    assert!(!taken_over.is_empty(), "the survivor took over the killed worker's runs");
    for id in &queued {
        let run = store.load_run(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Finished);
        assert_eq!(serde_json::from_str::<Tally>(&run.state).unwrap(), expected(WORK_STEPS));
        let checkpointed: Vec<u64> = run.steps.iter().map(|s| s.activation).collect();
        assert_eq!(checkpointed, (0..WORK_STEPS as u64).collect::<Vec<_>>(), "each step stored once");
    }
}

/// A process that stopped (SIGSTOP) past its lease loses the run to a new owner; when it
/// wakes up, its next write is refused by the fencing token and it stops without writing.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_late_owner_cannot_write_after_losing_its_lease() {
    let url = fresh_schema().await;
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side.log");
    let run = RunId::new();
    let mut owner = pg_child_command("owner", &url, &side).env("PG_RUN", run.to_string()).spawn().unwrap();
    let started = Instant::now();
    while side_lines(&side).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "the owner made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = owner.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(1200)).await; // past the 600 ms lease

    let store = store(&url);
    let flow = chain("pg_fenced", 10, Duration::from_millis(100), side.clone(), store.clone());
    let resumed = flow.resume(run).await.unwrap();
    assert_eq!(resumed.state, expected(10));

    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let mut stdout = String::new();
    for line in BufReader::new(owner.stdout.take().unwrap()).lines() {
        stdout.push_str(&line.unwrap());
        stdout.push('\n');
    }
    owner.wait().unwrap();
    assert!(stdout.contains("OWNER LOST"), "the late owner should have been fenced:\n{stdout}");
    let stored = store.load_run(run).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished);
    assert_eq!(serde_json::from_str::<Tally>(&stored.state).unwrap(), expected(10), "the late owner wrote nothing");
}

/// The server goes away mid-run: the run fails with a clear error naming the server and what
/// was being saved; when the server is back, the run resumes and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_run_survives_the_server_going_away() {
    let direct = fresh_schema().await;
    let proxy = Proxy::start().await;
    let port = proxy.port;
    let via_proxy = proxy.url(&direct);
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("side.log");

    let flow = chain("pg_outage", 6, Duration::from_millis(50), side.clone(), store(&via_proxy));
    let run = flow.spawn(()).unwrap();
    let id = run.id();
    let started = Instant::now();
    while side_lines(&side).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.cut();
    let err = run.await.err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Durable(DurableError::Store { .. })), "{msg}");
    assert!(msg.contains(&format!("postgres://postgres@127.0.0.1:{port}/test")), "names the server: {msg}");
    assert!(msg.contains("save the checkpoint after step"), "says what was being saved: {msg}");

    proxy.restore();
    let resumed = flow.resume(id).await.unwrap();
    assert_eq!(resumed.state, expected(6));
    let stored = store(&direct).load_run(id).await.unwrap().unwrap();
    assert_eq!(stored.status, RunStatus::Finished);
}

/// Resume after a fix, fork, and listing, on PostgreSQL.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn resume_fork_and_list_on_postgres() {
    let url = fresh_schema().await;
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let flow = FlowBuilder::<Tally>::new("pg_basic")
        .start("one", |cx: Cx<Tally>, (): ()| async move {
            cx.update(|t| t.sum += 1);
            Ok(1u32)
        })
        .listen("two", "one", move |cx: Cx<Tally>, n: u32| {
            let b = b.clone();
            async move {
                if b.load(Ordering::SeqCst) {
                    return Err(StepError::msg("down"));
                }
                cx.update(|t| t.sum += 10 * n);
                Ok(())
            }
        })
        .store(store(&url))
        .build()
        .unwrap();
    flow.kickoff(()).await.unwrap_err();
    let store = flow.store().unwrap();
    let listed = store.list_runs(&RunFilter { status: Some(RunStatus::Failed), ..RunFilter::default() }).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].steps_done, 1);
    broken.store(false, Ordering::SeqCst);
    let run = flow.resume(listed[0].run_id).await.unwrap();
    assert_eq!(run.state.sum, 11);
    let fork = flow.fork(run.id, ()).await.unwrap();
    assert_eq!(fork.state.sum, 22);
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(all.iter().filter(|r| r.status == RunStatus::Finished).count(), 2);
}

/// A database whose crewflow schema is newer than this crewflow is refused with a clear error.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_newer_schema_is_refused_on_postgres() {
    let url = fresh_schema().await;
    PostgresStore::connect(&url).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute("INSERT INTO crewflow_schema (version) VALUES (13)").await.unwrap();
    let err = PostgresStore::connect(&url).await.err().unwrap();
    assert!(err.to_string().contains("has schema version 13, newer than this crewflow supports (12)"), "{err}");
}

/// PostgreSQL's JSONB cannot hold the character U+0000 in a string (SQLite stores it): a run or
/// checkpoint holding one is refused before it is sent, naming the value and the path inside
/// it, and the checkpoint changes nothing.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_value_postgres_cannot_hold_is_refused_with_the_reason() {
    use crewflow::store::{Checkpoint, NewRun, StepRow};
    let store = store(&fresh_schema().await);
    let with_nul = serde_json::json!({"text": "a\u{0}b"}).to_string();
    let mut run = NewRun {
        run_id: RunId::new(),
        flow: Arc::from("pg_nul"),
        fingerprint: 1,
        status: RunStatus::Running,
        inputs: None,
        payload: None,
        state: with_nul.clone(),
        state_version: 0,
        chained: false,
        frontier: "{}".into(),
        owner: Arc::from("owner"),
        lease: Duration::from_secs(60),
        parent: None,
    };
    let err = store.create_run(&run).await.unwrap_err().to_string();
    assert!(
        err.contains("PostgreSQL cannot store the character U+0000 (NUL), found in the initial state at `text`"),
        "{err}"
    );
    assert!(store.load_run(run.run_id).await.unwrap().is_none());

    run.state = r#"{"text": "fine"}"#.into();
    store.create_run(&run).await.unwrap();
    let checkpoint = Checkpoint {
        run_id: run.run_id,
        fencing: 1,
        seq: 1,
        state: r#"{"text": "new"}"#.into(),
        state_version: 0,
        delta: None,
        chained: false,
        had_chain: false,
        frontier: "{}".into(),
        steps: vec![StepRow { activation: 0, step: Arc::from("s"), output: with_nul, finished_at: chrono::Utc::now() }],
        feedback: None,
    };
    let err = store.save_checkpoint(&checkpoint).await.unwrap_err().to_string();
    assert!(err.contains("found in the output of step `s` at `text`"), "{err}");
    let stored = store.load_run(run.run_id).await.unwrap().unwrap();
    assert_eq!((stored.seq, stored.state.as_str(), stored.steps.len()), (0, r#"{"text": "fine"}"#, 0));
}

/// The server's own words reach the user, with its SQLSTATE code and the fix, never the
/// driver's bare "db error": a database that does not exist, a search path naming no schema,
/// a value the server refuses (an interval out of range). A failed password cannot be
/// produced here: the test server trusts local connections.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn server_errors_keep_the_servers_message_and_say_the_fix() {
    let base = common::postgres::base_url();
    let (head, _db) = base.rsplit_once('/').unwrap();
    let missing_db = format!("crewflow_missing_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let err = PostgresStore::connect(&format!("{head}/{missing_db}")).await.err().unwrap().to_string();
    assert!(err.contains(&format!("database \"{missing_db}\" does not exist")), "{err}");
    assert!(err.contains("SQLSTATE 3D000") && err.contains("createdb"), "{err}");
    assert!(!err.contains("db error"), "{err}");

    let nowhere = with_search_path(&base, "crewflow_no_such_schema");
    let flow =
        chain("pg_nowhere", 1, Duration::ZERO, tempfile::tempdir().unwrap().path().join("side"), store(&nowhere));
    let err = flow.kickoff(()).await.err().unwrap().to_string();
    assert!(err.contains("no schema has been selected to create in"), "{err}");
    assert!(err.contains("SQLSTATE 3F000") && err.contains("create the schema"), "{err}");
    assert!(!err.contains("db error"), "{err}");

    let url = fresh_schema().await;
    let store = store(&url);
    let dir = tempfile::tempdir().unwrap();
    let flow = chain("pg_values", 1, Duration::ZERO, dir.path().join("side"), store.clone());
    let run = flow.kickoff(()).await.unwrap();
    let err = store.claim_run(run.id, "w", Duration::from_secs(u64::MAX), None).await.err().unwrap().to_string();
    assert!(err.contains("interval out of range") && err.contains("SQLSTATE 22008"), "{err}");
    assert!(!err.contains("db error"), "{err}");
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
struct Notes {
    text: String,
    extra: String,
}

/// A flow whose step echoes its state's text (so a NUL travels from the inputs through the
/// output), or, with `to_state`, writes `"x\0y"` into the state and returns a clean output.
fn nul_flow(name: &str, to_state: bool, store: Arc<dyn RunStore>) -> Flow<Notes> {
    FlowBuilder::<Notes>::new(name)
        .start("echo", move |cx: Cx<Notes>, (): ()| async move {
            if to_state {
                cx.update(|n| n.extra = "x\0y".into());
                return Ok("clean".to_string());
            }
            Ok(cx.state(|n| format!("{}!", n.text)))
        })
        .store(store)
        .build()
        .unwrap()
}

/// U+0000 cannot be stored by PostgreSQL (`jsonb` refuses `\u0000`): a value holding it is
/// refused before it is sent, naming the value and the path inside it; nothing is written.
/// SQLite keeps it (tests/store_sqlite.rs).
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_nul_character_is_refused_up_front_naming_where_it_is() {
    let url = fresh_schema().await;
    let store = store(&url);

    let err =
        nul_flow("pg_nul", false, store.clone()).kickoff(serde_json::json!({"text": "a\u{0}b"})).await.err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Durable(DurableError::Store { .. })), "{msg}");
    assert!(msg.contains("PostgreSQL cannot store the character U+0000 (NUL)"), "{msg}");
    assert!(msg.contains("found in the kickoff inputs at `text`"), "{msg}");
    assert!(msg.contains("remove it"), "{msg}");
    assert!(store.list_runs(&RunFilter::default()).await.unwrap().is_empty(), "no run was recorded");

    // Written by a step into the state: refused at the write that saves it (here the run's
    // end, which saves its one step), naming the step and the state's field.
    let err = nul_flow("pg_nul_state", true, store.clone()).kickoff(()).await.err().unwrap().to_string();
    assert!(err.contains("found in the run's state at `extra`"), "{err}");
    assert!(err.contains("record the end of the run after step `echo`"), "{err}");

    // Returned by a step: its output is named first.
    let echo = FlowBuilder::<()>::new("pg_nul_output")
        .start("shout", |_cx: Cx<()>, (): ()| async move { Ok(vec!["fine".to_string(), "bad\0".to_string()]) })
        .store(store.clone())
        .build()
        .unwrap();
    let err = echo.kickoff(()).await.err().unwrap().to_string();
    assert!(err.contains("found in the output of step `shout` at `[1]`"), "{err}");

    // Without the NUL the same flows run.
    let run = nul_flow("pg_nul", false, store.clone()).kickoff(serde_json::json!({"text": "ab"})).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "ab!");
}
