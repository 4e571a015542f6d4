//! Conversations on PostgreSQL: sessions, traces, and session locks across processes. These
//! tests need `CREWFLOW_TEST_POSTGRES`; without it they report themselves ignored.
//!
//! Each test works in a schema of its own. Child processes are this test binary, re-executed
//! in the role given by `CHAT_PG_ROLE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::chat::sid;
use common::postgres::fresh_schema;
use crewflow::chat::{ChatError, ChatOptions, ChatState, Role};
use crewflow::prelude::*;
use crewflow_store::PostgresStore;

/// Replies `re: <message>` after a pause; prints `IN TURN` when a turn's step starts.
fn chat_flow(url: &str, pause: Duration, options: ChatOptions) -> ChatFlow<ChatState> {
    let flow = FlowBuilder::<ChatState>::new("pg_chat")
        .start("answer", move |_cx, m: String| async move {
            println!("IN TURN {m}");
            tokio::time::sleep(pause).await;
            Ok(format!("re: {m}"))
        })
        .build()
        .unwrap();
    ChatFlow::new(flow, PostgresStore::connect_lazy(url).unwrap()).with_options(options).unwrap()
}

/// Child processes: `hammer` (5 tasks × 5 turns on session `shared`, tagged with `CHAT_PG_TAG`)
/// or `hold` (one slow turn). Not a test of its own: the cross-process tests re-run this binary
/// with only this function; ignored so `cargo test` skips it.
#[test]
#[ignore = "a child process of the PostgreSQL chat tests, started by them with CHAT_PG_ROLE set"]
fn chat_pg_child() {
    let (Ok(role), Ok(url)) = (std::env::var("CHAT_PG_ROLE"), std::env::var("CHAT_PG_URL")) else {
        panic!("chat_pg_child runs only as a child of the PostgreSQL chat tests");
    };
    let tag = std::env::var("CHAT_PG_TAG").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        if role == "hold" {
            let flow = chat_flow(&url, Duration::from_secs(2), ChatOptions::default());
            flow.handle_turn(sid("held"), "slow").await.unwrap();
            println!("HOLD DONE");
            return;
        }
        let flow = chat_flow(&url, Duration::from_millis(2), ChatOptions::default());
        let mut tasks = Vec::new();
        for t in 0..5 {
            let (flow, tag) = (flow.clone(), tag.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..5 {
                    flow.handle_turn(sid("shared"), &format!("{tag}{t}-{i}")).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        println!("HAMMER DONE");
    });
}

fn child(role: &str, url: &str, tag: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["chat_pg_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CHAT_PG_ROLE", role)
        .env("CHAT_PG_URL", url)
        .env("CHAT_PG_TAG", tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn assert_in_order(state: &ChatState, turns: usize) {
    assert_eq!(state.messages.len(), turns * 2);
    let mut seen = HashSet::new();
    for (n, pair) in state.messages.chunks(2).enumerate() {
        assert_eq!((pair[0].role, pair[1].role), (Role::User, Role::Assistant), "pair {n}");
        assert_eq!(pair[1].content, format!("re: {}", pair[0].content), "pair {n}");
        assert!(seen.insert(pair[0].content.clone()), "{} duplicated", pair[0].content);
    }
}

#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn sessions_turns_and_traces_live_in_postgres() {
    let url = fresh_schema().await;
    {
        let flow = chat_flow(&url, Duration::ZERO, ChatOptions::default());
        flow.handle_turn(sid("s"), "one").await.unwrap();
        flow.handle_turn(sid("s"), "two").await.unwrap();
    }
    let flow = chat_flow(&url, Duration::ZERO, ChatOptions::default()); // a restart
    assert_eq!(flow.handle_turn(sid("s"), "three").await.unwrap().index, 2);
    let session = flow.session(sid("s")).await.unwrap().unwrap();
    assert_in_order(&session.state, 3);
    assert_eq!(session.turns.len(), 3);
    assert_eq!(flow.list_sessions(0).await.unwrap().len(), 1);

    let traces = flow.session_traces(sid("s")).await.unwrap();
    assert_eq!((traces.len(), traces[0].turns), (1, 3));
    let spans = flow.trace_spans(&traces[0].trace_id).await.unwrap();
    let ids: Vec<_> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids, ["session", "t0", "t0.s0", "t1", "t1.s0", "t2", "t2.s0"]);
    assert!(flow.finalize_session(sid("s")).await.unwrap());
    assert!(!flow.finalize_session(sid("s")).await.unwrap(), "finalizing again changes nothing");
    assert!(flow.delete_session(sid("s")).await.unwrap());
    assert!(flow.session(sid("s")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn fifty_turns_from_ten_tasks_on_postgres_keep_a_hundred_messages_in_order() {
    let url = fresh_schema().await;
    let flow = chat_flow(&url, Duration::from_millis(1), ChatOptions::default());
    let mut tasks = Vec::new();
    for t in 0..10 {
        let flow = flow.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                flow.handle_turn(sid("shared"), &format!("m{t}-{i}")).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_in_order(&flow.session(sid("shared")).await.unwrap().unwrap().state, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn two_processes_hammering_one_session_lose_and_duplicate_nothing() {
    let url = fresh_schema().await;
    // Create the tables first, so the children do not race to migrate an empty schema.
    chat_flow(&url, Duration::ZERO, ChatOptions::default()).list_sessions(0).await.unwrap();
    let a = child("hammer", &url, "A").spawn().unwrap();
    let b = child("hammer", &url, "B").spawn().unwrap();
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("HAMMER DONE"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let flow = chat_flow(&url, Duration::ZERO, ChatOptions::default());
    let state = flow.session(sid("shared")).await.unwrap().unwrap().state;
    assert_in_order(&state, 50);
    for tag in ["A", "B"] {
        let mine = state.messages.iter().filter(|m| m.role == Role::User && m.content.starts_with(tag)).count();
        assert_eq!(mine, 25, "every turn of process {tag} is there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_turn_waiting_on_another_process_past_the_timeout_gets_session_busy() {
    let url = fresh_schema().await;
    chat_flow(&url, Duration::ZERO, ChatOptions::default()).list_sessions(0).await.unwrap();
    let mut holder = child("hold", &url, "").spawn().unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    // Wait until the other process is inside its turn (holding the session's lock).
    loop {
        let line = lines.next().expect("the holder ended early").unwrap();
        if line.contains("IN TURN") {
            break;
        }
    }
    let flow = chat_flow(&url, Duration::ZERO, ChatOptions::default().lock_timeout(Duration::from_millis(200)));
    let started = Instant::now();
    let err = flow.handle_turn(sid("held"), "me too").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500), "gave up at the timeout: {:?}", started.elapsed());
    assert!(matches!(&err, ChatError::SessionBusy { session, .. } if session == "held"), "{err:?}");
    assert!(holder.wait().unwrap().success());
    // Once the holder is done, the lock is free again.
    let turn = flow.handle_turn(sid("held"), "now").await.unwrap();
    assert_eq!(turn.index, 1);
}

/// More sessions than the store's connection pool has connections take turns at once: each
/// turn holds its session lock on a connection of its own, so none starves another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn many_sessions_at_once_never_starve_the_pool() {
    let url = fresh_schema().await;
    let flow = chat_flow(&url, Duration::from_millis(50), ChatOptions::default().lock_timeout(Duration::from_secs(10)));
    let started = Instant::now();
    let turns: Vec<_> = (0..24)
        .map(|i| {
            let flow = flow.clone();
            tokio::spawn(async move { flow.handle_turn(sid(&format!("s{i}")), "hi").await })
        })
        .collect();
    for t in turns {
        assert_eq!(t.await.unwrap().unwrap().reply, "re: hi");
    }
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
}

/// A turn given up while it waits for the session's lock (its future dropped) leaves nothing
/// queued on the server: the next turn gets the lock as soon as the holder is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_cancelled_wait_for_a_lock_leaves_no_lock_behind() {
    let url = fresh_schema().await;
    let slow = chat_flow(&url, Duration::from_millis(600), ChatOptions::default());
    // Another process's view: a separate store, so the in-process lock does not serialize.
    let other = chat_flow(&url, Duration::from_millis(1), ChatOptions::default().lock_timeout(Duration::from_secs(5)));
    let holder = tokio::spawn({
        let slow = slow.clone();
        async move { slow.handle_turn(sid("s"), "first").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(100), other.handle_turn(sid("s"), "impatient")).await;
    assert!(gave_up.is_err(), "the wait was cancelled");
    holder.await.unwrap().unwrap();
    let started = Instant::now();
    let third = chat_flow(&url, Duration::from_millis(1), ChatOptions::default().lock_timeout(Duration::from_secs(3)));
    let turn = third.handle_turn(sid("s"), "next").await.unwrap();
    assert_eq!(turn.index, 1);
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
}

/// A session deleted while one of its turns runs stays deleted: the turn's save is refused.
#[tokio::test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_session_deleted_during_a_turn_is_not_brought_back() {
    let url = fresh_schema().await;
    let in_step = std::sync::Arc::new(tokio::sync::Notify::new());
    let signal = in_step.clone();
    let flow = FlowBuilder::<ChatState>::new("pg_chat")
        .start("answer", move |_cx, m: String| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(format!("re: {m}"))
            }
        })
        .build()
        .unwrap();
    let flow = ChatFlow::new(flow, PostgresStore::connect_lazy(&url).unwrap());
    flow.handle_turn(sid("s"), "hello").await.unwrap();
    in_step.notified().await; // the first turn's own signal
    let turn = tokio::spawn({
        let flow = flow.clone();
        async move { flow.handle_turn(sid("s"), "again").await }
    });
    in_step.notified().await; // the second turn loaded the session and runs its step
    assert!(flow.delete_session(sid("s")).await.unwrap());
    let err = turn.await.unwrap().unwrap_err();
    assert!(matches!(err, ChatError::SessionConflict(_)), "{err}");
    assert!(err.to_string().contains("was deleted while this turn ran"), "{err}");
    assert!(flow.session(sid("s")).await.unwrap().is_none());
}
