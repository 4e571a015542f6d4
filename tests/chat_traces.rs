//! Traces: one per session across its turns (turn > step > model call), finalized once, by
//! `finalize_session` or idleness, never by a flow nested in a turn.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::chat::{echo_builder, echo_flow, on_file, on_file_with, sid, temp_db};
use common::http::{Reply, TestServer};
use crewflow::chat::{ChatOptions, ChatState};
use crewflow::llm::{LlmOptions, RetryPolicy};
use crewflow::prelude::*;
use crewflow::store::SqliteStore;
use serde_json::json;

fn shape(spans: &[crewflow::chat::SpanRecord]) -> Vec<(String, Option<String>, String)> {
    spans.iter().map(|s| (s.span_id.clone(), s.parent_id.clone(), s.kind.clone())).collect()
}

fn row(id: &str, parent: Option<&str>, kind: &str) -> (String, Option<String>, String) {
    (id.to_string(), parent.map(str::to_string), kind.to_string())
}

#[tokio::test]
async fn one_trace_spans_the_sessions_turns_with_steps_and_model_calls_nested() {
    let reply = json!({
        "id": "r1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "finish_reason": "stop", "message": { "role": "assistant", "content": "Hi there" } }],
        "usage": { "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15 }
    });
    let server = TestServer::start(vec![Reply::json(200, &reply), Reply::json(200, &reply)]).await;
    let llm = Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
    )
    .unwrap();
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("traced").start("prepare", |_cx, m: String| async move { Ok(m) }).listen(
            "answer",
            step("prepare"),
            move |_cx, m: String| {
                let llm = llm.clone();
                async move { Ok(llm.complete(&m).await?) }
            },
        ),
        &path,
    );
    let first = flow.handle_turn(sid("s"), "hello").await.unwrap();
    assert_eq!(first.reply, "Hi there");
    assert_eq!(first.usage.total(), 15, "the turn reports its model usage");
    flow.handle_turn(sid("s"), "again").await.unwrap();

    let traces = flow.session_traces(sid("s")).await.unwrap();
    assert_eq!(traces.len(), 1, "one trace for the session");
    assert_eq!((traces[0].turns, traces[0].finalized_at), (2, None));
    let spans = flow.trace_spans(&traces[0].trace_id).await.unwrap();
    assert_eq!(
        shape(&spans),
        vec![
            row("session", None, "session"),
            row("t0", Some("session"), "turn"),
            row("t0.s0", Some("t0"), "step"),
            row("t0.s1", Some("t0"), "step"),
            row("t0.l1", Some("t0.s1"), "llm_call"),
            row("t1", Some("session"), "turn"),
            row("t1.s0", Some("t1"), "step"),
            row("t1.s1", Some("t1"), "step"),
            row("t1.l1", Some("t1.s1"), "llm_call"),
        ]
    );
    let call = &spans[4];
    assert_eq!(call.attributes["usage"]["prompt_tokens"], 12);
    assert!(call.ended_at.is_some() && spans[0].ended_at.is_none(), "the session span stays open");
    assert_eq!(spans[2].name, "prepare");
}

#[tokio::test]
async fn finalize_session_is_idempotent_and_the_next_turn_opens_a_new_trace() {
    let (_dir, path) = temp_db();
    let flow = echo_flow(&path);
    assert!(!flow.finalize_session(sid("s")).await.unwrap(), "nothing to finalize yet");
    flow.handle_turn(sid("s"), "one").await.unwrap();
    assert!(flow.finalize_session(sid("s")).await.unwrap());
    for _ in 0..3 {
        assert!(!flow.finalize_session(sid("s")).await.unwrap(), "a retry changes nothing");
    }
    let traces = flow.session_traces(sid("s")).await.unwrap();
    let closed_at = traces[0].finalized_at.unwrap();
    let spans = flow.trace_spans(&traces[0].trace_id).await.unwrap();
    assert!(spans[0].ended_at.is_some(), "finalizing closes the session span");
    flow.handle_turn(sid("s"), "two").await.unwrap();
    let traces = flow.session_traces(sid("s")).await.unwrap();
    assert_eq!(traces.len(), 2);
    assert_eq!(traces[0].finalized_at, Some(closed_at), "the first trace was not touched again");
    assert_eq!((traces[1].turns, traces[1].finalized_at), (1, None));
}

#[tokio::test]
async fn idle_sessions_finalize_after_the_timeout() {
    let (_dir, path) = temp_db();
    let idle = ChatOptions::default().idle_finalize_after(Duration::from_millis(60));
    let flow = on_file_with(echo_builder(), &path, idle);
    // Another flow in the same store, whose sessions stay open for a long time.
    let patient = on_file(echo_builder().rename("patient"), &path);
    patient.handle_turn(sid("other"), "one").await.unwrap();
    flow.handle_turn(sid("lazy"), "one").await.unwrap();
    flow.handle_turn(sid("swept"), "one").await.unwrap();
    assert_eq!(flow.finalize_idle_sessions().await.unwrap(), 0, "not idle yet");
    tokio::time::sleep(Duration::from_millis(120)).await;
    // On its next turn, an idle session's trace is finalized and a new one opened.
    flow.handle_turn(sid("lazy"), "two").await.unwrap();
    let traces = flow.session_traces(sid("lazy")).await.unwrap();
    assert_eq!(traces.len(), 2);
    assert!(traces[0].finalized_at.is_some() && traces[1].finalized_at.is_none());
    // The sweep finalizes the others.
    assert_eq!(flow.finalize_idle_sessions().await.unwrap(), 1);
    assert!(flow.session_traces(sid("swept")).await.unwrap()[0].finalized_at.is_some());
    // Each flow's idle timeout applies to its own sessions only.
    assert!(patient.session_traces(sid("other")).await.unwrap()[0].finalized_at.is_none());
}

#[tokio::test]
async fn flows_nested_in_a_turn_never_finalize_the_sessions_trace() {
    let (_dir, path) = temp_db();
    let nested_chat = echo_flow(&path).clone();
    let nested_plain = FlowBuilder::<()>::new("plain")
        .start("work", |_cx, (): ()| async move { Ok(1u32) })
        .store(SqliteStore::open(&path))
        .build()
        .unwrap();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("outer").start("answer", move |_cx, m: String| {
            let (nested_chat, nested_plain) = (nested_chat.clone(), nested_plain.clone());
            async move {
                nested_plain.kickoff(()).await?;
                let inner = nested_chat.handle_turn(sid("inner-session"), &m).await?;
                Ok(format!("outer saw {}", inner.reply))
            }
        }),
        &path,
    );
    flow.handle_turn(sid("s"), "hi").await.unwrap();
    flow.handle_turn(sid("s"), "again").await.unwrap();
    let traces = flow.session_traces(sid("s")).await.unwrap();
    assert_eq!(traces.len(), 1);
    assert_eq!((traces[0].turns, traces[0].finalized_at), (2, None), "still open, with both turns");
}

fn chunk(delta: serde_json::Value, finish: serde_json::Value) -> String {
    json!({ "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }], "usage": null })
    .to_string()
}

#[tokio::test]
async fn a_streamed_model_reply_reaches_the_turn_stream_as_tokens_in_order() {
    use crewflow::chat::TurnEvent;
    let events: Vec<(Option<&str>, String)> = vec![
        (None, chunk(json!({ "role": "assistant", "content": "" }), serde_json::Value::Null)),
        (None, chunk(json!({ "content": "Hel" }), serde_json::Value::Null)),
        (None, chunk(json!({ "content": "lo, " }), serde_json::Value::Null)),
        (None, chunk(json!({ "content": "Ada!" }), json!("stop"))),
        (None, "[DONE]".to_string()),
    ];
    let server = TestServer::start(vec![Reply::sse(&events)]).await;
    let llm = Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
    )
    .unwrap();
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("streamed").start("answer", move |_cx, m: String| {
            let llm = llm.clone();
            async move { Ok(llm.stream(m.as_str()).await?.response().await?.text) }
        }),
        &path,
    );
    let mut stream = flow.stream_turn(sid("s"), "Say hello to Ada");
    let (mut tokens, mut reply, mut kinds) = (String::new(), None, Vec::new());
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            TurnEvent::Token(t) => {
                assert!(reply.is_none(), "tokens come before the turn");
                tokens.push_str(&t);
                kinds.push("token");
            }
            TurnEvent::Event(e) => kinds.push(e.kind.name()),
            TurnEvent::Finished(turn) => reply = Some(turn.reply),
            _ => {}
        }
    }
    assert_eq!(tokens, "Hello, Ada!");
    assert_eq!(reply.as_deref(), Some("Hello, Ada!"));
    let first_token = kinds.iter().position(|k| *k == "token").unwrap();
    let started = kinds.iter().position(|k| *k == "llm_call_started").unwrap();
    let finished = kinds.iter().position(|k| *k == "llm_call_finished").unwrap();
    assert!(started < first_token && first_token < finished, "{kinds:?}");
}

/// Tool calls a model asks for reach the turn stream and the trace, nested in their model call.
#[tokio::test]
async fn tool_calls_reach_the_turn_stream_and_the_trace() {
    use crewflow::chat::TurnEvent;
    use crewflow::llm::{ChatRequest, Message, Tool};
    let reply = json!({
        "id": "r2", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": { "role": "assistant", "content": null,
            "tool_calls": [{ "id": "call_7", "type": "function",
                "function": { "name": "lookup_order", "arguments": "{\"order\":\"A-17\"}" } }] } }],
        "usage": { "prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29 }
    });
    let server = TestServer::start(vec![Reply::json(200, &reply)]).await;
    let llm = Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
    )
    .unwrap();
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("tools").start("answer", move |_cx, m: String| {
            let llm = llm.clone();
            async move {
                let request = ChatRequest::new([Message::user(m)]).tool(Tool::new(
                    "lookup_order",
                    "Find an order",
                    json!({ "type": "object", "properties": { "order": { "type": "string" } } }),
                ));
                let response = llm.chat(request).await?;
                Ok(format!("looking up {}", response.tool_calls[0].arguments))
            }
        }),
        &path,
    );
    let mut stream = flow.stream_turn(sid("s"), "Where is order A-17?");
    let mut calls = Vec::new();
    while let Some(item) = stream.next().await {
        if let TurnEvent::ToolCall { id, name, arguments } = item.unwrap() {
            calls.push((id, name, arguments));
        }
    }
    assert_eq!(calls, [("call_7".to_string(), "lookup_order".to_string(), "{\"order\":\"A-17\"}".to_string())]);
    let traces = flow.session_traces(sid("s")).await.unwrap();
    let spans = flow.trace_spans(&traces[0].trace_id).await.unwrap();
    let tool = spans.iter().find(|s| s.kind == "tool_call").expect("a tool call span");
    assert_eq!((tool.name.as_str(), tool.parent_id.as_deref()), ("lookup_order", Some("t0.l1")));
    assert_eq!(tool.attributes["arguments"], json!("{\"order\":\"A-17\"}"));
}
