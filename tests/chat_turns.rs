//! Conversation turns: the user message and the reply appended exactly once, replies by
//! `cx.reply` or by a returned string, routes, errors that save nothing, streaming.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::chat::{echo_flow, on_file, on_file_with, sid, temp_db};
use common::http::{Reply, TestServer};
use crewflow::EventKind;
use crewflow::chat::{ChatError, ChatState, Role, SessionId, TurnEvent};
use crewflow::prelude::*;
use serde::{Deserialize, Serialize};

fn roles_and_texts(state: &ChatState) -> Vec<(Role, String)> {
    state.messages.iter().map(|m| (m.role, m.content.clone())).collect()
}

#[tokio::test]
async fn a_turn_appends_the_message_and_the_reply_once_and_saves_them() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    let first = flow.handle_turn(sid("s1"), "hello").await.unwrap();
    assert_eq!((first.index, first.reply.as_str()), (0, "echo: hello (#0)"));
    let second = flow.handle_turn(sid("s1"), "again").await.unwrap();
    assert_eq!((second.index, second.reply.as_str()), (1, "echo: again (#1)"));
    assert_ne!(first.run_id, second.run_id, "each turn is its own run");

    let session = flow.session(sid("s1")).await.unwrap().unwrap();
    assert_eq!(
        roles_and_texts(&session.state),
        vec![
            (Role::User, "hello".into()),
            (Role::Assistant, "echo: hello (#0)".into()),
            (Role::User, "again".into()),
            (Role::Assistant, "echo: again (#1)".into()),
        ]
    );
    assert_eq!(session.state.turns, 2);
    assert_eq!(session.state.last_user_message.as_deref(), Some("again"));
    let turns: Vec<_> = session.turns.iter().map(|t| (t.index, t.user_message.as_str(), t.reply.as_str())).collect();
    assert_eq!(turns, [(0, "hello", "echo: hello (#0)"), (1, "again", "echo: again (#1)")]);
}

#[tokio::test]
async fn cx_reply_is_the_reply_and_is_appended_once() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("replying").start("think", |cx: Cx<ChatState>, message: String| async move {
            // The user message is in the state before the graph runs, exactly once.
            let users = cx.state(|s| s.by_role(Role::User).filter(|m| m.content == message).count());
            cx.reply(format!("{users} copy of `{message}`"));
            Ok(42u32) // not a string: the reply comes from cx.reply
        }),
        &path,
    );
    let turn = flow.handle_turn(sid("s"), "hi").await.unwrap();
    assert_eq!(turn.reply, "1 copy of `hi`");
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.by_role(Role::Assistant).count(), 1);
    assert_eq!(state.pending_reply(), None, "the pending reply is consumed");
}

#[tokio::test]
async fn a_turn_without_a_reply_fails_names_the_fix_and_saves_nothing() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("mute").start("nothing", |_cx, _m: String| async move { Ok(7u32) }),
        &path,
    );
    let err = flow.handle_turn(sid("s"), "hello?").await.unwrap_err();
    assert!(matches!(err, ChatError::NoReply { turn: 0, .. }), "{err:?}");
    assert!(err.to_string().contains("cx.reply"), "{err}");
    assert!(flow.session(sid("s")).await.unwrap().is_none(), "nothing of a failed turn is saved");
}

#[tokio::test]
async fn a_failed_turn_saves_nothing_and_the_next_turn_starts_clean() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("flaky").start("answer", |_cx, m: String| async move {
            if m == "boom" { Err(StepError::msg("exploded")) } else { Ok(format!("ok {m}")) }
        }),
        &path,
    );
    flow.handle_turn(sid("s"), "one").await.unwrap();
    let err = flow.handle_turn(sid("s"), "boom").await.unwrap_err();
    assert!(err.to_string().contains("exploded"), "{err}");
    let turn = flow.handle_turn(sid("s"), "two").await.unwrap();
    assert_eq!(turn.index, 1, "the failed turn did not count");
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    let texts: Vec<_> = state.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["one", "ok one", "two", "ok two"], "the failed turn's user message was not half-saved");
}

#[tokio::test]
async fn routes_drive_listeners_and_a_route_label_is_never_the_reply() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("routed")
            .start_router("route", |cx: Cx<ChatState>, m: String| async move {
                let intent = if m.contains("bill") { "billing" } else { "other" };
                cx.set_intent(intent);
                Ok(intent.to_string())
            })
            .routes(["billing", "other"])
            .terminal(["other"])
            .listen("billing_desk", label("billing"), |_cx, (): ()| async move { Ok("billing here".to_string()) }),
        &path,
    );
    let turn = flow.handle_turn(sid("s"), "my bill is wrong").await.unwrap();
    assert_eq!(turn.reply, "billing here");
    assert_eq!(turn.intent.as_deref(), Some("billing"));
    assert_eq!(turn.routes, ["billing"]);
    // No listener for `other`: the run's output is the label itself, which is not a reply.
    let err = flow.handle_turn(sid("s"), "hello").await.unwrap_err();
    assert!(matches!(err, ChatError::NoReply { .. }), "{err:?}");
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.last_intent.as_deref(), Some("billing"));
}

#[tokio::test]
async fn the_intent_of_the_last_turn_is_never_replayed() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("intents").start("answer", |cx: Cx<ChatState>, m: String| async move {
            if m == "bill" {
                cx.set_intent("billing");
            }
            Ok(cx.state(|s| format!("now {:?}, before {:?}", s.last_intent, s.previous_intent)))
        }),
        &path,
    );
    assert_eq!(flow.handle_turn(sid("s"), "bill").await.unwrap().intent.as_deref(), Some("billing"));
    let second = flow.handle_turn(sid("s"), "chat").await.unwrap();
    assert_eq!(second.intent, None);
    assert_eq!(second.reply, r#"now None, before Some("billing")"#);
}

#[derive(Default, Serialize, Deserialize)]
struct Support {
    chat: ChatState,
    customer: Option<String>,
}
crewflow::conversational!(Support, chat);

#[tokio::test]
async fn a_typed_state_embeds_the_chat_state() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<Support>::new("support").start("answer", |cx: Cx<Support>, m: String| async move {
            if let Some(name) = m.strip_prefix("I am ") {
                cx.update(|s| s.customer = Some(name.to_string()));
            }
            Ok(format!("hello {}", cx.state(|s| s.customer.clone().unwrap_or_default())))
        }),
        &path,
    );
    flow.handle_turn(sid("s"), "I am Ada").await.unwrap();
    assert_eq!(flow.handle_turn(sid("s"), "hi").await.unwrap().reply, "hello Ada");
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.chat.messages.len(), 4);
}

#[tokio::test]
async fn stream_turn_yields_events_then_the_turn() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    let mut stream = flow.stream_turn(sid("s"), "hi");
    let mut kinds = Vec::new();
    let mut finished = None;
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            TurnEvent::Event(e) => kinds.push(e.kind.name()),
            TurnEvent::Token(t) => kinds.push(if t.is_empty() { "empty token" } else { "token" }),
            TurnEvent::Finished(turn) => finished = Some(turn),
            _ => {}
        }
    }
    assert_eq!(kinds, ["run_started", "step_started", "step_finished", "run_finished"]);
    assert_eq!(finished.unwrap().reply, "echo: hi (#0)");
    assert_eq!(flow.session(sid("s")).await.unwrap().unwrap().turns.len(), 1);
}

#[tokio::test]
async fn an_existing_turn_refuses_an_unknown_session_and_creates_nothing() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    let refused = flow.stream_existing_turn(sid("nobody"), "hi", None).finish().await.unwrap_err();
    assert!(matches!(&refused, ChatError::UnknownSession { session } if session == "nobody"), "{refused:?}");
    assert!(refused.to_string().contains("no session `nobody`"), "{refused}");
    assert!(flow.session(sid("nobody")).await.unwrap().is_none(), "nothing was saved");

    // A session the store has goes on as with stream_turn, with a key as once.
    flow.handle_turn(sid("known"), "one").await.unwrap();
    let turn = flow.stream_existing_turn(sid("known"), "two", None).finish().await.unwrap();
    assert_eq!((turn.index, turn.reply.as_str()), (1, "echo: two (#1)"));
    let keyed = flow.stream_existing_turn(sid("known"), "three", Some("k-3")).finish().await.unwrap();
    let again = flow.stream_existing_turn(sid("known"), "three", Some("k-3")).finish().await.unwrap();
    assert_eq!((keyed.index, again.index, again.repeated), (2, 2, true));
}

#[tokio::test]
async fn custom_step_events_reach_the_stream() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("tokens").start("answer", |cx: Cx<ChatState>, _m: String| async move {
            // Events a step emits while the turn runs.
            for piece in ["Hel", "lo"] {
                cx.emit("llm_chunk_stand_in", piece);
            }
            Ok("Hello".to_string())
        }),
        &path,
    );
    let mut stream = flow.stream_turn(sid("s"), "hi");
    let mut custom = 0;
    while let Some(item) = stream.next().await {
        if let TurnEvent::Event(e) = item.unwrap()
            && matches!(e.kind, EventKind::Custom { .. })
        {
            custom += 1;
        }
    }
    assert_eq!(custom, 2, "step events reach the stream as they happen");
}

#[tokio::test]
async fn bad_session_ids_are_refused() {
    for bad in ["", "a\nb", &"x".repeat(300)] {
        let err = SessionId::new(bad).unwrap_err();
        assert!(matches!(err, ChatError::InvalidSessionId { .. }), "{err:?}");
    }
}

fn completion(text: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "r", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "finish_reason": "stop", "message": { "role": "assistant", "content": text } }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12 }
    })
}

/// Issue 12: the transcript's messages are the model layer's, so `cx.recent_messages()` (and a
/// `ChatMessage` through `Message::from`) goes to a model without hand conversion: roles and
/// texts arrive as they were said, the summary first.
#[tokio::test]
async fn the_recent_history_goes_to_a_model_as_it_is() {
    use crewflow::chat::{ChatMessage, ChatOptions, Summarizer, SummaryFuture};
    use crewflow::llm::{LlmOptions, RetryPolicy};

    struct Fixed;
    impl Summarizer for Fixed {
        fn summarize<'a>(&'a self, _previous: Option<&'a str>, _messages: &'a [ChatMessage]) -> SummaryFuture<'a> {
            Box::pin(async { Ok("they said hello".to_string()) })
        }
    }

    let replies = ["first answer", "second answer", "third answer"];
    let server = TestServer::start(replies.iter().map(|r| Reply::json(200, &completion(r))).collect()).await;
    let llm = Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
    )
    .unwrap();
    let (_dir, path) = temp_db();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("modelled").start("answer", move |cx: Cx<ChatState>, _m: String| {
            let llm = llm.clone();
            async move {
                let history = cx.recent_messages();
                let request = ChatRequest::new(std::iter::once(Message::system("Be brief.")).chain(history));
                Ok(llm.chat(request).await?.text)
            }
        }),
        &path,
        ChatOptions::default().window(2).summarize(3, Fixed),
    );
    for m in ["hello", "and again", "once more"] {
        flow.handle_turn(sid("s"), m).await.unwrap();
    }
    let sent: Vec<_> = server.requests().iter().map(|r| r.json()["messages"].clone()).collect();
    let msg = |role: &str, content: &str| serde_json::json!({ "role": role, "content": content });
    assert_eq!(
        sent[1],
        serde_json::json!([
            msg("system", "Be brief."),
            msg("user", "hello"),
            msg("assistant", "first answer"),
            msg("user", "and again"),
        ])
    );
    // After compaction (4 messages > 3 uncovered): the summary, then what it does not cover.
    assert_eq!(
        sent[2],
        serde_json::json!([
            msg("system", "Be brief."),
            msg("system", "Earlier in this conversation: they said hello"),
            msg("user", "and again"),
            msg("assistant", "second answer"),
            msg("user", "once more"),
        ])
    );
    // The same conversion by hand, from the stored transcript.
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    let converted: Vec<Message> = state.messages.iter().map(Message::from).collect();
    assert_eq!(converted[1], Message::assistant("first answer"));
    assert_eq!(converted.len(), state.messages.len());
}
