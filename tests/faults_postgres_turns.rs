//! PostgreSQL cut in the middle of a conversation turn: a proxy between the turn and the server
//! drops every connection at one of the turn's statements — the lock's try, the session's read,
//! each statement of the save (sent together, pipelined), its `COMMIT`, the lock's release
//! riding on it — at a chosen moment (before the statement reaches the server, run but not
//! committed, committed but unanswered).
//!
//! Whatever the moment: the turn is saved whole or not at all; its lock does not outlive the
//! connection (the retry does not wait for it); the client's retry with the same idempotency
//! key leaves the message stored once, the trace with the turn's spans once; and the next turn
//! goes on as usual.
//!
//! These tests need `CREWFLOW_TEST_POSTGRES`; each case works in a schema of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::chat::sid;
use common::proxy::{Cut, Proxy};
use crewflow::chat::{ChatOptions, ChatState};
use crewflow::prelude::*;
use crewflow_store::PostgresStore;

/// The turn's statements (substrings of the store's SQL), in the order a turn sends them.
const TRY_LOCK: &str = "pg_try_advisory_lock";
const READ: &str = "CROSS JOIN LATERAL";
const SESSION: &str = "UPDATE crewflow_sessions SET state";
const TURN: &str = "INSERT INTO crewflow_turns";
const TRACE: &str = "AND NOT ($3::float8";
const COMMIT: &str = "COMMIT";
const RELEASE: &str = "pg_advisory_unlock($1) FROM crewflow_turns";

fn chat(url: &str) -> ChatFlow<ChatState> {
    let flow = FlowBuilder::<ChatState>::new("pg_cut")
        .start("answer", |_cx, m: String| async move { Ok(format!("re: {m}")) })
        .build()
        .unwrap();
    let options = ChatOptions::default().lock_timeout(Duration::from_secs(3));
    ChatFlow::new(flow, PostgresStore::connect_lazy(url).unwrap()).with_options(options).unwrap()
}

/// A session with one turn, its second turn cut at `sql` (`cut`), retried with its key, then a
/// third turn: the session holds each message once, in order, and one trace of three turns.
async fn cut_in_a_turn(sql: &str, cut: Cut) {
    let url = common::postgres::fresh_schema().await;
    let proxy = Proxy::start().await;
    let flow = chat(&proxy.url(&url));
    flow.handle_turn_once(sid("s"), "one", "k0").await.unwrap();

    proxy.cut_at(sql, 1, cut);
    let cut_turn = flow.handle_turn_once(sid("s"), "two", "k1").await;
    let fired = proxy.fired();
    assert!(fired.is_some(), "the cut at `{sql}` ({cut:?}) never fired");
    eprintln!("{fired:?}: the cut turn {}", if cut_turn.is_ok() { "was answered" } else { "failed" });
    proxy.restore();

    let started = std::time::Instant::now();
    let retried = flow.handle_turn_once(sid("s"), "two", "k1").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "the retry waited for a lock that outlived its connection");
    assert_eq!((retried.index, retried.reply.as_str()), (1, "re: two"), "{fired:?}");
    if cut_turn.is_ok() {
        assert!(retried.repeated, "a turn answered before the cut is repeated, not run again: {fired:?}");
    }
    flow.handle_turn_once(sid("s"), "three", "k2").await.unwrap();

    // Read back without the proxy.
    let direct = chat(&url);
    let session = direct.session(sid("s")).await.unwrap().unwrap();
    let texts: Vec<_> = session.state.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["one", "re: one", "two", "re: two", "three", "re: three"], "{fired:?}");
    let replies: Vec<_> = session.turns.iter().map(|t| t.reply.as_str()).collect();
    assert_eq!(replies, ["re: one", "re: two", "re: three"], "{fired:?}");
    let traces = direct.session_traces(sid("s")).await.unwrap();
    assert_eq!(traces.len(), 1, "{fired:?}");
    assert_eq!(traces[0].turns, 3, "{fired:?}");
    let spans = direct.trace_spans(&traces[0].trace_id).await.unwrap();
    let ids: Vec<_> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids, ["session", "t0", "t0.s0", "t1", "t1.s0", "t2", "t2.s0"], "{fired:?}");
}

macro_rules! cut_cases {
    ($($name:ident: $sql:expr, $cut:expr;)*) => {$(
        #[tokio::test]
        #[cfg_attr(
            not(crewflow_postgres_tests),
            ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests"
        )]
        async fn $name() {
            cut_in_a_turn($sql, $cut).await;
        }
    )*};
}

cut_cases! {
    cut_before_the_lock: TRY_LOCK, Cut::Before;
    cut_at_the_read: READ, Cut::Uncommitted;
    cut_before_the_session_update: SESSION, Cut::Before;
    cut_after_the_session_update: SESSION, Cut::Committed;
    cut_after_the_turn_insert: TURN, Cut::Uncommitted;
    cut_after_the_trace_update: TRACE, Cut::Committed;
    cut_before_the_commit: COMMIT, Cut::Before;
    cut_after_the_commit: COMMIT, Cut::Committed;
    cut_before_the_release: RELEASE, Cut::Before;
    cut_after_the_release: RELEASE, Cut::Committed;
}
