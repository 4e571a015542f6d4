//! The Anthropic provider against a loopback server replaying the Messages API wire format
//! (JSON, and SSE with named events), from Anthropic's API reference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::http::{Reply, TestServer, anthropic_llm, anthropic_message};
use crewflow::llm::{ChatRequest, FinishReason, Llm, LlmError, Message, StreamEvent, Tool, ToolChoice};
use futures::StreamExt;
use serde_json::{Value, json};

fn llm(server: &TestServer) -> Llm {
    anthropic_llm(server)
}

fn message(content: Value, stop: &str) -> Value {
    anthropic_message(content, stop)
}

#[tokio::test]
async fn requests_put_system_apart_alternate_roles_and_map_tools() {
    let server = TestServer::start(vec![Reply::json(
        200,
        &message(
            json!([{ "type": "text", "text": "Checking." }, { "type": "tool_use", "id": "toolu_1", "name": "weather", "input": { "city": "Paris" } }]),
            "tool_use",
        ),
    )])
    .await;
    let call = crewflow::llm::ToolCall::new("toolu_0", "weather", "{\"city\":\"Oslo\"}");
    let request = ChatRequest::new([
        Message::system("You are terse."),
        Message::user("Weather in Oslo and Paris?"),
        Message::assistant_tool_calls(
            "",
            vec![call.clone(), crewflow::llm::ToolCall { id: "toolu_9".into(), ..call.clone() }],
        ),
        Message::tool_result(&call, "3°C"),
        Message::tool_result(&crewflow::llm::ToolCall { id: "toolu_9".into(), ..call.clone() }, "4°C"),
    ])
    .tool(Tool::new(
        "weather",
        "Current weather",
        json!({ "type": "object", "properties": { "city": { "type": "string" } } }),
    ))
    .tool_choice(ToolChoice::Required)
    .temperature(0.0)
    .stop("END");
    let reply = llm(&server).chat(request).await.unwrap();
    assert_eq!(reply.text, "Checking.");
    assert_eq!(reply.tool_calls[0].id, "toolu_1");
    assert_eq!(reply.tool_calls[0].args::<Value>().unwrap(), json!({ "city": "Paris" }));
    assert_eq!(reply.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!((reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.cached_tokens), (130, 12, 100));

    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("ak-test"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    let body = sent.json();
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(body["max_tokens"], 4096, "required by the API; a default is sent");
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["tool_choice"], json!({ "type": "any" }));
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.iter().map(|m| m["role"].as_str().unwrap()).collect::<Vec<_>>(), ["user", "assistant", "user"]);
    assert_eq!(
        messages[1]["content"][0],
        json!({ "type": "tool_use", "id": "toolu_0", "name": "weather", "input": { "city": "Oslo" } })
    );
    assert_eq!(messages[2]["content"].as_array().unwrap().len(), 2, "both tool results in one user turn");
    assert_eq!(messages[2]["content"][1], json!({ "type": "tool_result", "tool_use_id": "toolu_9", "content": "4°C" }));
}

fn stream_events() -> Vec<(Option<&'static str>, String)> {
    vec![
        (Some("message_start"), json!({ "type": "message_start", "message": { "id": "msg_s", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5 } } }).to_string()),
        (Some("content_block_start"), json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }).to_string()),
        (Some("ping"), json!({ "type": "ping" }).to_string()),
        (Some("content_block_delta"), json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "Naïve " } }).to_string()),
        (Some("content_block_delta"), json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": "café ☕" } }).to_string()),
        (Some("content_block_stop"), json!({ "type": "content_block_stop", "index": 0 }).to_string()),
        (Some("content_block_start"), json!({ "type": "content_block_start", "index": 1, "content_block": { "type": "tool_use", "id": "toolu_s", "name": "weather", "input": {} } }).to_string()),
        (Some("content_block_delta"), json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "input_json_delta", "partial_json": "" } }).to_string()),
        (Some("content_block_delta"), json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "input_json_delta", "partial_json": "{\"city\": \"Zür" } }).to_string()),
        (Some("content_block_delta"), json!({ "type": "content_block_delta", "index": 1, "delta": { "type": "input_json_delta", "partial_json": "ich\"}" } }).to_string()),
        (Some("content_block_stop"), json!({ "type": "content_block_stop", "index": 1 }).to_string()),
        (Some("message_delta"), json!({ "type": "message_delta", "delta": { "stop_reason": "tool_use", "stop_sequence": null }, "usage": { "output_tokens": 42 } }).to_string()),
        (Some("message_stop"), json!({ "type": "message_stop" }).to_string()),
    ]
}

#[tokio::test]
async fn a_stream_of_named_events_is_put_back_together() {
    let server = TestServer::start(vec![Reply::sse(&stream_events())]).await;
    let mut stream = llm(&server).stream("Weather in Zürich?").await.unwrap();
    let mut text = String::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Text(t) => text.push_str(&t),
            StreamEvent::Done(r) => done = Some(r),
            StreamEvent::ToolCall { .. } => {}
        }
    }
    assert_eq!(text, "Naïve café ☕");
    let r = done.unwrap();
    assert_eq!(r.tool_calls.len(), 1);
    assert_eq!(r.tool_calls[0].id, "toolu_s");
    assert_eq!(r.tool_calls[0].args::<Value>().unwrap(), json!({ "city": "Zürich" }));
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.cached_tokens), (30, 42, 5));
    assert_eq!(r.id.as_deref(), Some("msg_s"));
    assert_eq!(server.requests()[0].json()["stream"], true);
}

#[tokio::test]
async fn an_error_event_in_a_stream_surfaces_with_its_message() {
    let events = vec![
        (Some("message_start"), json!({ "type": "message_start", "message": { "id": "m", "model": "claude", "usage": { "input_tokens": 1 } } }).to_string()),
        (Some("error"), json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }).to_string()),
    ];
    let server = TestServer::start(vec![Reply::sse(&events)]).await;
    let err = llm(&server).stream("hi").await.unwrap().response().await.unwrap_err();
    assert!(matches!(err, LlmError::Server { ref message, .. } if message == "Overloaded"), "{err}");
}

#[derive(serde::Deserialize, schemars::JsonSchema, Debug, PartialEq)]
struct Lane {
    lane: String,
}

#[tokio::test]
async fn structured_output_goes_through_a_forced_tool() {
    let server = TestServer::start(vec![Reply::json(
        200,
        &message(json!([{ "type": "tool_use", "id": "toolu_r", "name": "respond_with_json", "input": { "lane": "priority" } }]), "tool_use"),
    )])
    .await;
    let lane: Lane = llm(&server).generate("Checkout is down for everyone!").await.unwrap();
    assert_eq!(lane, Lane { lane: "priority".into() });
    let body = server.requests()[0].json();
    assert_eq!(body["tool_choice"], json!({ "type": "tool", "name": "respond_with_json" }));
    assert_eq!(body["tools"][0]["input_schema"]["properties"]["lane"]["type"], "string");
}
