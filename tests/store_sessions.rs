//! A turn's save, clause by clause, on each store (`SessionStore::save_turn` called directly):
//! messages appended or replaced, a refused save writes nothing, and a trace is continued,
//! opened, or finalized when idle and opened again. The PostgreSQL half needs
//! `CREWFLOW_TEST_POSTGRES` and reports itself ignored without it.
//!
//! PostgreSQL sends a turn's statements together (pipelined): these pin that what they write,
//! and what a refusal leaves, is what the statements one at a time wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::time::Duration;

use chrono::Utc;
use crewflow::chat::{ChatMessage, Role, SessionStore, SpanRecord, TraceWrite, TurnRecord, TurnSave};
use crewflow::store::SqliteStore;

mod common;

/// Turn `index` of session `s` (flow `f`): its messages from `from` on, its spans under a
/// trace that would be new with id `trace-<index>`.
fn save(index: u64, expected: u64, from: u64, messages: &[(&str, &str)], idle: Option<Duration>) -> TurnSave {
    let now = Utc::now();
    let turn = TurnRecord {
        session_id: "s".into(),
        index,
        run_id: crewflow::RunId::new(),
        user_message: format!("message {index}"),
        reply: format!("reply {index}"),
        intent: None,
        usage: Default::default(),
        started_at: now,
        finished_at: now,
    };
    let span = |id: String, parent: Option<String>, kind: &str| SpanRecord {
        span_id: id,
        parent_id: parent,
        kind: kind.into(),
        name: format!("turn {index}"),
        started_at: now,
        ended_at: Some(now),
        attributes: serde_json::json!({ "turn": index }),
    };
    let spans = vec![
        span(format!("t{index}"), Some("session".into()), "turn"),
        span(format!("t{index}.s0"), Some(format!("t{index}")), "step"),
    ];
    TurnSave {
        session_id: "s".into(),
        flow: "f".into(),
        state: format!(r#"{{"turns":{}}}"#, index + 1),
        state_version: 0,
        expected_turns: expected,
        messages_from: from,
        messages: messages
            .iter()
            .map(|(role, text)| {
                let role = if *role == "user" { Role::User } else { Role::Assistant };
                ChatMessage::new(role, *text, index)
            })
            .collect(),
        turn,
        trace: Some(TraceWrite { new_trace_id: format!("trace-{index}"), idle_after: idle, spans }),
    }
}

/// The session's transcript as text, its turn count and its turns' replies.
async fn stored(store: &dyn SessionStore) -> (Vec<String>, u64, Vec<String>) {
    let session = store.load_session("f", "s").await.unwrap().expect("the session exists");
    let messages = session.messages.iter().map(|m| m.content.clone()).collect();
    let turns = store.list_turns("f", "s").await.unwrap().into_iter().map(|t| t.reply).collect();
    (messages, session.turns, turns)
}

/// Each trace of the session: (id, turns, finalized, span ids in order).
async fn traces(store: &dyn SessionStore) -> Vec<(String, u64, bool, Vec<String>)> {
    let mut out = Vec::new();
    for trace in store.list_traces("f", "s").await.unwrap() {
        let spans = store.trace_spans(&trace.trace_id).await.unwrap();
        let ids = spans.into_iter().map(|s| s.span_id).collect();
        out.push((trace.trace_id, trace.turns, trace.finalized_at.is_some(), ids));
    }
    out
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn messages_are_appended_and_replaced(store: &dyn SessionStore) {
    store.save_turn(&save(0, 0, 0, &[("user", "a"), ("assistant", "b")], None)).await.unwrap();
    store.save_turn(&save(1, 1, 2, &[("user", "c"), ("assistant", "d")], None)).await.unwrap();
    // A turn that rewrote what it loaded from message 1 on (a summary, say).
    store.save_turn(&save(2, 2, 1, &[("assistant", "b+c+d"), ("user", "e"), ("assistant", "f")], None)).await.unwrap();
    let (messages, turns, replies) = stored(store).await;
    assert_eq!(messages, strings(&["a", "b+c+d", "e", "f"]));
    assert_eq!(turns, 3);
    assert_eq!(replies, strings(&["reply 0", "reply 1", "reply 2"]));
    let session = store.load_session_tail("f", "s", 2).await.unwrap().unwrap();
    assert_eq!((session.messages_from, session.message_count), (2, 4), "the count follows the replacement");
}

async fn a_refused_save_writes_nothing(store: &dyn SessionStore) {
    store.save_turn(&save(0, 0, 0, &[("user", "a"), ("assistant", "b")], None)).await.unwrap();
    store.save_turn(&save(1, 1, 2, &[("user", "c"), ("assistant", "d")], None)).await.unwrap();
    let before = (stored(store).await, traces(store).await);

    // Started from turn 1 while the session is at turn 2: another save came first.
    let err = store.save_turn(&save(1, 1, 2, &[("user", "late"), ("assistant", "late")], None)).await.unwrap_err();
    assert!(err.to_string().contains("nothing of this turn was saved"), "{err}");
    // A new session's first turn, while the session exists.
    let err = store.save_turn(&save(0, 0, 0, &[("user", "again")], None)).await.unwrap_err();
    assert!(err.to_string().contains("nothing of this turn was saved"), "{err}");
    // Messages past the end of the stored transcript.
    let err = store.save_turn(&save(2, 2, 9, &[("user", "gap")], None)).await.unwrap_err();
    assert!(err.to_string().contains("9"), "the gap is named: {err}");

    assert_eq!((stored(store).await, traces(store).await), before, "the refusals changed nothing");
    store.save_turn(&save(2, 2, 4, &[("user", "e"), ("assistant", "f")], None)).await.unwrap();
    assert_eq!(stored(store).await.1, 3, "the session moves on from where it was");
}

async fn a_trace_is_continued_then_reopened_when_idle(store: &dyn SessionStore) {
    let idle = Some(Duration::from_millis(300));
    store.save_turn(&save(0, 0, 0, &[("user", "a"), ("assistant", "b")], idle)).await.unwrap();
    store.save_turn(&save(1, 1, 2, &[("user", "c"), ("assistant", "d")], idle)).await.unwrap();
    let open = traces(store).await;
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].0.as_str(), open[0].1, open[0].2), ("trace-0", 2, false));
    assert_eq!(open[0].3, strings(&["session", "t0", "t0.s0", "t1", "t1.s0"]));
    let last_update = store.list_traces("f", "s").await.unwrap()[0].updated_at;

    tokio::time::sleep(Duration::from_millis(600)).await;
    store.save_turn(&save(2, 2, 4, &[("user", "e"), ("assistant", "f")], idle)).await.unwrap();
    let all = store.list_traces("f", "s").await.unwrap();
    assert_eq!(all.len(), 2, "the idle trace was finalized and a new one opened: {all:?}");
    assert_eq!(all[0].finalized_at, Some(last_update), "finalized as of its last turn");
    let reopened = traces(store).await;
    assert_eq!((reopened[0].1, reopened[0].2), (2, true));
    assert_eq!((reopened[1].0.as_str(), reopened[1].1, reopened[1].2), ("trace-2", 1, false));
    assert_eq!(reopened[1].3, strings(&["session", "t2", "t2.s0"]));

    // Finalized by hand, the next turn opens another.
    assert!(store.finalize_trace("f", "s").await.unwrap());
    store.save_turn(&save(3, 3, 6, &[("user", "g"), ("assistant", "h")], None)).await.unwrap();
    let last = traces(store).await;
    assert_eq!(last.len(), 3);
    assert_eq!((last[2].0.as_str(), last[2].1, last[2].2), ("trace-3", 1, false));
    assert_eq!(last[2].3, strings(&["session", "t3", "t3.s0"]));
}

mod sqlite {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("sessions.db"));
        (dir, store)
    }

    #[tokio::test]
    async fn messages_are_appended_and_replaced() {
        let (_dir, store) = store();
        super::messages_are_appended_and_replaced(&store).await;
    }

    #[tokio::test]
    async fn a_refused_save_writes_nothing() {
        let (_dir, store) = store();
        super::a_refused_save_writes_nothing(&store).await;
    }

    #[tokio::test]
    async fn a_trace_is_continued_then_reopened_when_idle() {
        let (_dir, store) = store();
        super::a_trace_is_continued_then_reopened_when_idle(&store).await;
    }
}

mod postgres {
    use super::*;
    use crewflow_store::PostgresStore;

    async fn store() -> PostgresStore {
        PostgresStore::connect_lazy(&common::postgres::fresh_schema().await).unwrap()
    }

    /// Whether another process (a store of its own, so other connections) can take the lock.
    async fn free_for(other: &PostgresStore) -> bool {
        match other.lock_session("f", "s", Duration::from_millis(30)).await {
            Ok(Some(guard)) => {
                guard.release().await;
                true
            }
            Ok(None) => panic!("PostgreSQL stores have session locks"),
            Err(e) => {
                assert!(e.to_string().contains("held by another process"), "{e}");
                false
            }
        }
    }

    /// Inside a turn the save runs on the lock's connection and releases the lock with its
    /// commit (one round trip); a save that stores nothing keeps the lock until the guard lets
    /// go; the guard's release after a save that released changes nothing.
    #[tokio::test]
    #[cfg_attr(
        not(crewflow_postgres_tests),
        ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests"
    )]
    async fn a_turns_save_releases_its_lock_only_once_committed() {
        let url = common::postgres::fresh_schema().await;
        let (store, other) = (PostgresStore::connect_lazy(&url).unwrap(), PostgresStore::connect_lazy(&url).unwrap());
        let wait = Duration::from_secs(1);

        // A first turn is saved step by step: the lock stays with the guard.
        let (guard, loaded) = store.lock_and_load("f", "s", wait, Some(20)).await.unwrap();
        assert!(loaded.is_none());
        store.save_turn(&save(0, 0, 0, &[("user", "a"), ("assistant", "b")], None)).await.unwrap();
        assert!(!free_for(&other).await, "still locked after a step-by-step save");
        guard.unwrap().release().await;
        assert!(free_for(&other).await);

        // A later turn: committed and released in one go, before the guard lets go.
        let (guard, loaded) = store.lock_and_load("f", "s", wait, Some(20)).await.unwrap();
        assert_eq!(loaded.unwrap().messages.len(), 2);
        assert!(!free_for(&other).await);
        store.save_turn(&save(1, 1, 2, &[("user", "c"), ("assistant", "d")], None)).await.unwrap();
        assert!(free_for(&other).await, "the save released the lock with its commit");
        guard.unwrap().release().await;
        assert!(free_for(&other).await);

        // A refused save keeps the lock: what follows it still runs under the lock.
        let (guard, _) = store.lock_and_load("f", "s", wait, Some(20)).await.unwrap();
        let err = store.save_turn(&save(1, 1, 2, &[("user", "late")], None)).await.unwrap_err();
        assert!(err.to_string().contains("nothing of this turn was saved"), "{err}");
        assert!(!free_for(&other).await, "a refused save does not release the lock");
        guard.unwrap().release().await;
        assert!(free_for(&other).await);

        // Many turns in a row reuse the lock connections (none leaks, none stays locked).
        for turn in 2..40u64 {
            let (guard, loaded) = store.lock_and_load("f", "s", wait, Some(2)).await.unwrap();
            assert_eq!(loaded.unwrap().turns, turn);
            let from = turn * 2;
            store.save_turn(&save(turn, turn, from, &[("user", "x"), ("assistant", "y")], None)).await.unwrap();
            guard.unwrap().release().await;
        }
        assert!(free_for(&other).await);
        assert_eq!(stored(&store).await.1, 40);
    }

    #[tokio::test]
    #[cfg_attr(
        not(crewflow_postgres_tests),
        ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests"
    )]
    async fn messages_are_appended_and_replaced() {
        super::messages_are_appended_and_replaced(&store().await).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(crewflow_postgres_tests),
        ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests"
    )]
    async fn a_refused_save_writes_nothing() {
        super::a_refused_save_writes_nothing(&store().await).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(crewflow_postgres_tests),
        ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests"
    )]
    async fn a_trace_is_continued_then_reopened_when_idle() {
        super::a_trace_is_continued_then_reopened_when_idle(&store().await).await;
    }
}
