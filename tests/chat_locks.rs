//! Session locks: turns of one session run one at a time, in order; a turn that waits too
//! long gets a clear error; turns of different sessions do not wait for each other.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::{Duration, Instant};

use common::chat::{on_file_with, sid, temp_db};
use crewflow::chat::{ChatError, ChatOptions, ChatState, Role};
use crewflow::prelude::*;

/// Replies `re: <message>` after yielding a few times, so concurrent turns would interleave
/// if nothing serialised them.
fn slow_echo(path: &std::path::Path, pause: Duration, options: ChatOptions) -> ChatFlow<ChatState> {
    on_file_with(
        FlowBuilder::<ChatState>::new("slow_echo").start("answer", move |_cx, m: String| async move {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(pause).await;
            Ok(format!("re: {m}"))
        }),
        path,
        options,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_turns_from_ten_tasks_give_a_hundred_messages_in_order() {
    let (_dir, path) = temp_db();
    let flow = slow_echo(&path, Duration::from_millis(1), ChatOptions::default());
    let mut tasks = Vec::new();
    for t in 0..10 {
        let flow = flow.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let turn = flow.handle_turn(sid("shared"), &format!("m{t}-{i}")).await.unwrap();
                assert_eq!(turn.reply, format!("re: m{t}-{i}"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let state = flow.session(sid("shared")).await.unwrap().unwrap().state;
    assert_eq!(state.messages.len(), 100);
    assert_eq!(state.turns, 50);
    let mut seen = std::collections::HashSet::new();
    for (n, pair) in state.messages.chunks(2).enumerate() {
        assert_eq!((pair[0].role, pair[1].role), (Role::User, Role::Assistant), "pair {n}");
        assert_eq!(pair[1].content, format!("re: {}", pair[0].content), "each reply follows its message");
        assert_eq!((pair[0].turn, pair[1].turn), (n as u64, n as u64));
        assert!(seen.insert(pair[0].content.clone()), "{} duplicated", pair[0].content);
    }
    // Each task's messages are in the order it sent them.
    for t in 0..10 {
        let order: Vec<_> =
            state.messages.iter().filter(|m| m.content.starts_with(&format!("m{t}-"))).map(|m| &m.content).collect();
        let expected: Vec<_> = (0..5).map(|i| format!("m{t}-{i}")).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_turn_that_waits_past_the_timeout_gets_session_busy() {
    let (_dir, path) = temp_db();
    let options = ChatOptions::default().lock_timeout(Duration::from_millis(50));
    let flow = slow_echo(&path, Duration::from_millis(400), options);
    let first = tokio::spawn({
        let flow = flow.clone();
        async move { flow.handle_turn(sid("s"), "slow").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = flow.handle_turn(sid("s"), "impatient").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(300), "it gave up at the timeout");
    assert!(matches!(&err, ChatError::SessionBusy { session, .. } if session == "s"), "{err:?}");
    assert!(err.to_string().contains("lock_timeout"), "the message says what to change: {err}");
    first.await.unwrap().unwrap();
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.messages.len(), 2, "the refused turn left no trace in the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn turns_of_different_sessions_do_not_wait_for_each_other() {
    let (_dir, path) = temp_db();
    let flow = slow_echo(&path, Duration::from_millis(300), ChatOptions::default());
    let started = Instant::now();
    let (a, b) = tokio::join!(flow.handle_turn(sid("a"), "x"), flow.handle_turn(sid("b"), "y"));
    a.unwrap();
    b.unwrap();
    assert!(started.elapsed() < Duration::from_millis(550), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separately_built_copies_of_a_flow_share_the_session_lock() {
    let (_dir, path) = temp_db();
    // A server that builds the flow per request: two values, two store handles, one session.
    let copies: Vec<_> = (0..4).map(|_| slow_echo(&path, Duration::from_millis(2), ChatOptions::default())).collect();
    let mut tasks = Vec::new();
    for (c, flow) in copies.iter().enumerate() {
        let flow = flow.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                flow.handle_turn(sid("shared"), &format!("c{c}-{i}")).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let state = copies[0].session(sid("shared")).await.unwrap().unwrap().state;
    assert_eq!(state.messages.len(), 40, "no turn was refused or lost");
}

/// One message sent many times at once with its key (a client retrying): it runs once, each
/// call gets that turn, and the session holds it once. A key names one message, and a session
/// remembers the last `TURN_KEYS_KEPT` keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_turn_sent_many_times_at_once_runs_once() {
    let (_dir, path) = temp_db();
    let flow = slow_echo(&path, Duration::from_millis(1), ChatOptions::default());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let flow = flow.clone();
            tokio::spawn(async move { flow.handle_turn_once(sid("retried"), "hello", "key-1").await.unwrap() })
        })
        .collect();
    let mut turns = Vec::new();
    for call in calls {
        turns.push(call.await.unwrap());
    }
    assert_eq!(turns.iter().filter(|t| !t.repeated).count(), 1, "{turns:?}");
    assert!(turns.iter().all(|t| (t.index, t.run_id, t.reply.as_str()) == (0, turns[0].run_id, "re: hello")));
    let session = flow.session(sid("retried")).await.unwrap().unwrap();
    assert_eq!((session.turns.len(), session.state.messages.len()), (1, 2));

    let err = flow.handle_turn_once(sid("retried"), "other", "key-1").await.unwrap_err();
    assert!(matches!(err, ChatError::TurnKeyReused { turn: 0, .. }), "{err}");
    let err = flow.handle_turn_once(sid("retried"), "hello", "").await.unwrap_err();
    assert!(err.to_string().starts_with("invalid turn key ``: it is empty; "), "{err}");

    // The oldest key is forgotten once TURN_KEYS_KEPT newer keyed turns were saved.
    for n in 0..crewflow::chat::TURN_KEYS_KEPT {
        assert!(!flow.handle_turn_once(sid("retried"), &format!("m{n}"), &format!("k{n}")).await.unwrap().repeated);
    }
    let last = crewflow::chat::TURN_KEYS_KEPT - 1;
    let again = flow.handle_turn_once(sid("retried"), &format!("m{last}"), &format!("k{last}")).await.unwrap();
    assert!(again.repeated && again.index == crewflow::chat::TURN_KEYS_KEPT as u64);
    let forgotten = flow.handle_turn_once(sid("retried"), "hello", "key-1").await.unwrap();
    assert!(!forgotten.repeated && forgotten.index == crewflow::chat::TURN_KEYS_KEPT as u64 + 1);
}
