//! One test per weakness of the reference's conversational layer (W-A1..W-A12 in
//! `reference/crewai-conversation-agents-spec.md`), each showing crewflow does not have it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::chat::{echo_flow, on_file, on_file_with, sid, temp_db};
use crewflow::Error;
use crewflow::chat::{ChatError, ChatMessage, ChatOptions, ChatState, Role, Summarizer, SummaryFuture, TurnEvent};
use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStore, SqliteStore};

/// W-A1: the reply that is not appended by the step itself (the returned string) was appended
/// after the last snapshot and vanished. Here it is saved with the turn, atomically.
#[tokio::test]
async fn weakness_a1_the_promoted_reply_is_persisted() {
    let (_dir, path) = temp_db();
    echo_flow(&path).handle_turn(sid("s"), "hello").await.unwrap();
    let reopened = echo_flow(&path); // a new process
    let state = reopened.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(
        state.messages.last().map(|m| (m.role, m.content.as_str())),
        Some((Role::Assistant, "echo: hello (#0)"))
    );
    let turn = reopened.handle_turn(sid("s"), "next").await.unwrap();
    assert_eq!(turn.index, 1, "the next turn sees the reply and continues after it");
}

/// W-A2: a new session id on a reused flow object carried the previous session's transcript.
#[tokio::test]
async fn weakness_a2_a_new_session_id_starts_fresh() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    flow.handle_turn(sid("first"), "secret of the first session").await.unwrap();
    let turn = flow.handle_turn(sid("second"), "hi").await.unwrap();
    assert_eq!(turn.index, 0);
    let state = flow.session(sid("second")).await.unwrap().unwrap().state;
    let texts: Vec<_> = state.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["hi", "echo: hi (#0)"], "nothing of the first session leaked");
}

/// W-A3: concurrent turns of one session lost or duplicated messages. (The 50-turn version
/// is in `chat_locks.rs`; the cross-process one in `chat_postgres.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weakness_a3_concurrent_turns_are_serialised() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("slow").start("answer", |_cx, m: String| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(format!("reply to {m}"))
        }),
        &path,
    );
    let (x, y) = tokio::join!(flow.handle_turn(sid("s"), "X"), flow.handle_turn(sid("s"), "Y"));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!((x.reply.as_str(), y.reply.as_str()), ("reply to X", "reply to Y"));
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    let mut texts: Vec<_> = state.messages.iter().map(|m| m.content.clone()).collect();
    assert_eq!(texts.len(), 4);
    texts.sort();
    assert_eq!(texts, ["X", "Y", "reply to X", "reply to Y"], "no message lost or duplicated");
}

/// W-A4: a paused or failed turn was reported as completed, with the exception as its result.
/// A failed turn is an error, on `handle_turn` and on the stream (no `Finished`), and saves
/// nothing. (Pauses arrive with human feedback, issue 6; a paused run is not a finished run,
/// so `handle_turn` cannot see it as one: it only completes on `Ok(Run)`.)
#[tokio::test]
async fn weakness_a4_a_failed_turn_is_never_reported_completed() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("failing")
            .start("answer", |_cx, _m: String| async move { Err::<String, _>(StepError::msg("model down")) }),
        &path,
    );
    assert!(flow.handle_turn(sid("s"), "hi").await.is_err());
    let mut stream = flow.stream_turn(sid("s"), "hi");
    let (mut finished, mut failed) = (false, false);
    while let Some(item) = stream.next().await {
        match item {
            Ok(TurnEvent::Finished(_)) => finished = true,
            Err(e) => failed = e.to_string().contains("model down"),
            Ok(_) => {}
        }
    }
    assert!(failed && !finished);
    assert!(flow.session(sid("s")).await.unwrap().is_none());
}

/// W-A4 (pauses): a turn that reaches a feedback step whose provider pauses is not reported as
/// a completed turn either: it fails, naming the step and what to do, and saves nothing.
#[tokio::test]
async fn weakness_a4_a_paused_turn_is_never_reported_completed() {
    let (_dir, path) = temp_db();
    // A pausing provider needs a store to build; a turn still runs without it.
    let flow = on_file(
        FlowBuilder::<ChatState>::new("pausing_chat")
            .start("draft", |_cx, m: String| async move { Ok(format!("draft for {m}")) })
            .human_feedback(crewflow::HumanFeedback::new("Send it?").provider(crewflow::DeferredFeedback))
            .store(SqliteStore::open(&path)),
        &path,
    );
    let err = flow.handle_turn(sid("s"), "refund please").await.unwrap_err();
    assert!(matches!(err, ChatError::PauseInTurn { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("`draft`") && text.contains("next message is the answer"), "{text}");
    assert!(flow.session(sid("s")).await.unwrap().is_none(), "nothing of the turn was saved");
}

/// W-A5: a streamed turn lost the user message (the reply was "reply to None").
#[tokio::test]
async fn weakness_a5_a_streamed_turn_keeps_the_user_message() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    let turn = flow.stream_turn(sid("s"), "streamed hello").finish().await.unwrap();
    assert_eq!(turn.reply, "echo: streamed hello (#0)");
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.messages[0].content, "streamed hello");
}

/// Counts its calls; summarises as "<n> messages".
#[derive(Clone, Default)]
struct CountingSummarizer(Arc<AtomicUsize>);

impl Summarizer for CountingSummarizer {
    fn summarize<'a>(&'a self, previous: Option<&'a str>, messages: &'a [ChatMessage]) -> SummaryFuture<'a> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let before: usize = previous.and_then(|p| p.split(' ').next()?.parse().ok()).unwrap_or(0);
        let text = format!("{} messages", before + messages.len());
        Box::pin(async move { Ok(text) })
    }
}

/// W-A6: the whole transcript went to the model every turn. Steps get a window plus a summary
/// of the compacted turns, whose size does not grow with the session.
#[tokio::test]
async fn weakness_a6_the_context_a_step_sees_is_bounded() {
    let (_dir, path) = temp_db();
    let summarizer = CountingSummarizer::default();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("bounded").start("answer", |cx: Cx<ChatState>, _m: String| async move {
            let (summary, recent) = cx.recent_history();
            let (covered, total) = cx.state(|s| (if s.summary.is_some() { s.summarized } else { 0 }, s.messages.len()));
            Ok(format!("{}|{covered}|{total}|{}", recent.len(), summary.unwrap_or_default()))
        }),
        &path,
        ChatOptions::default().window(4).summarize(10, summarizer.clone()),
    );
    let mut seen = Vec::new();
    for i in 0..30 {
        seen.push(flow.handle_turn(sid("s"), &format!("q{i}")).await.unwrap().reply);
    }
    for reply in &seen {
        let parts: Vec<&str> = reply.split('|').collect();
        let (recent, covered, total): (usize, usize, usize) =
            (parts[0].parse().unwrap(), parts[1].parse().unwrap(), parts[2].parse().unwrap());
        assert!(recent <= 11, "a step saw at most summarize_after + the new message: {seen:?}");
        assert_eq!(covered + recent, total, "no message is in neither the summary nor the history: {reply}");
    }
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.messages.len(), 60, "the transcript itself is kept whole");
    assert!(state.summarized >= 48, "older messages were compacted: {}", state.summarized);
    assert_eq!(state.summary.as_deref(), Some(format!("{} messages", state.summarized).as_str()));
}

/// W-A7: many model round trips per turn (classification, routing, history check, reply).
/// The engine makes no model call of its own: a turn costs exactly the calls its steps make,
/// and compaction runs once per `summarize_after - window` messages, not per turn.
#[tokio::test]
async fn weakness_a7_the_engine_adds_no_model_calls() {
    let (_dir, path) = temp_db();
    let summarizer = CountingSummarizer::default();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("frugal").start("answer", |_cx, m: String| async move { Ok(m) }),
        &path,
        ChatOptions::default().window(4).summarize(14, summarizer.clone()),
    );
    for i in 0..20 {
        let turn = flow.handle_turn(sid("s"), &format!("q{i}")).await.unwrap();
        assert_eq!(turn.usage.total(), 0);
    }
    // 40 messages; a compaction leaves 4 uncovered, the next comes once more than 14 are.
    let calls = summarizer.0.load(Ordering::SeqCst);
    assert!((2..=3).contains(&calls), "{calls} summaries for 20 turns");
}

/// W-A8: every step appended a full-state row: the transcript stored turns × steps times.
/// Here a session is one row, replaced at each turn, and turns write no run records.
#[tokio::test]
async fn weakness_a8_storage_grows_with_the_transcript_only() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path);
    let flow = FlowBuilder::<ChatState>::new("chain")
        .start("a", |_cx, m: String| async move { Ok(m) })
        .listen("b", step("a"), |_cx, m: String| async move { Ok(m) })
        .listen("c", step("b"), |_cx, m: String| async move { Ok(format!("done {m}")) })
        .store(store.clone()) // the flow keeps runs here, and the sessions are here too
        .build()
        .unwrap();
    let flow = ChatFlow::new(flow, store.clone());
    for i in 0..20 {
        flow.handle_turn(sid("s"), &format!("message {i}")).await.unwrap();
    }
    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    assert!(runs.is_empty(), "turns keep no per-turn copy of the state: {} run records", runs.len());
    let sessions = flow.list_sessions(0).await.unwrap();
    assert_eq!(sessions.len(), 1);
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    let stored = serde_json::to_string(&state).unwrap().len();
    let transcript: usize = state.messages.iter().map(|m| m.content.len()).sum();
    // Each message costs its text plus ~45 bytes of JSON keys: the transcript once, not per step.
    let bound = transcript + 60 * state.messages.len() + 300;
    assert!(stored < bound, "the stored state ({stored} bytes) holds the transcript ({transcript}) more than once");
}

/// W-A9: dead configuration fields and no async turn API. Every `ChatOptions` field changes
/// behaviour (window: A6; summarize: A6/A7; lock_timeout: `chat_locks.rs`; idle finalize:
/// `chat_traces.rs`; traces below), and the turn API is async.
#[tokio::test]
async fn weakness_a9_chat_options_are_all_live() {
    let (_dir, path) = temp_db();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("untraced").start("a", |_cx, m: String| async move { Ok(m) }),
        &path,
        ChatOptions::default().traces(false),
    );
    flow.handle_turn(sid("s"), "hi").await.unwrap();
    assert!(flow.session_traces(sid("s")).await.unwrap().is_empty(), "traces(false) keeps no trace");
    let traced = common::chat::echo_flow(&path);
    traced.handle_turn(sid("s"), "hi").await.unwrap();
    assert_eq!(traced.session_traces(sid("s")).await.unwrap().len(), 1, "traces are on by default");
}

/// W-A10 (`answer_from_history` mostly unreachable) does not apply: crewflow has no built-in
/// routes that a router could shadow; routing is the flow's own graph, and every label a
/// router returns is dispatched (a label nobody handles is a build error). Shown here: a
/// history-answering route is reached whenever the router picks it.
#[tokio::test]
async fn weakness_a10_every_route_a_router_picks_is_reached() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("history")
            .start_router("route", |cx: Cx<ChatState>, m: String| async move {
                let seen = cx.state(|s| s.messages.iter().filter(|x| x.content == m).count());
                Ok(if seen > 1 { "from_history" } else { "converse" }.to_string())
            })
            .routes(["from_history", "converse"])
            .listen(
                "recall",
                label("from_history"),
                |_cx, (): ()| async move { Ok("you said that before".to_string()) },
            )
            .listen("talk", label("converse"), |_cx, (): ()| async move { Ok("new to me".to_string()) }),
        &path,
    );
    assert_eq!(flow.handle_turn(sid("s"), "x").await.unwrap().reply, "new to me");
    assert_eq!(flow.handle_turn(sid("s"), "x").await.unwrap().reply, "you said that before");
}

/// W-A11: blocking waits (30 s for handlers, a thread per sync turn) and a stream whose close
/// could not cancel the turn. Dropping a turn's stream cancels it: nothing is saved and the
/// session's lock is free at once.
#[tokio::test]
async fn weakness_a11_dropping_a_stream_cancels_the_turn() {
    let (_dir, path) = temp_db();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("slow").start("answer", |_cx, m: String| async move {
            if m == "slow" {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Ok(m)
        }),
        &path,
        ChatOptions::default().lock_timeout(Duration::from_millis(500)),
    );
    let mut stream = flow.stream_turn(sid("s"), "slow");
    // Wait until the step runs, then walk away.
    while let Some(Ok(TurnEvent::Event(e))) = stream.next().await {
        if e.kind.name() == "step_started" {
            break;
        }
    }
    drop(stream);
    let turn = tokio::time::timeout(Duration::from_secs(2), flow.handle_turn(sid("s"), "fast")).await.unwrap().unwrap();
    assert_eq!(turn.index, 0, "the cancelled turn saved nothing");
}

/// W-A12: routing failures hidden behind silent fallbacks. A router label that is not declared
/// fails the turn with an error naming the router and the label; nothing falls back silently.
/// (Intent classification makes its `unknown` route explicit: see `chat_intents.rs`.)
#[tokio::test]
async fn weakness_a12_routing_failures_are_errors() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("strict")
            .start_router("route", |_cx, _m: String| async move { Ok("bogus".to_string()) })
            .routes(["known"])
            .listen("known_desk", label("known"), |_cx, (): ()| async move { Ok("ok".to_string()) }),
        &path,
    );
    let err = flow.handle_turn(sid("s"), "hi").await.unwrap_err();
    assert!(matches!(err, ChatError::Run(Error::UndeclaredRoute { .. })), "{err:?}");
    assert!(err.to_string().contains("bogus"), "{err}");
}
