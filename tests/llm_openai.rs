//! The OpenAI-compatible provider against a loopback server replaying the Chat Completions
//! wire format (JSON and SSE, cut at awkward places), from OpenAI's API reference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::http::{Body, Reply, TestServer};
use crewflow::llm::{
    ChatRequest, FinishReason, Image, Llm, LlmError, LlmOptions, Message, ResponseFormat, RetryPolicy, StreamEvent,
    Tool, ToolChoice,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn llm(server: &TestServer) -> Llm {
    Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
    )
    .unwrap()
}

fn completion(content: Value, tool_calls: Value, finish: &str) -> Value {
    json!({
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_1", "service_tier": "default",
        "choices": [{ "index": 0, "logprobs": null, "finish_reason": finish,
            "message": { "role": "assistant", "content": content, "refusal": null, "annotations": [], "tool_calls": tool_calls } }],
        "usage": { "prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49,
            "prompt_tokens_details": { "cached_tokens": 32, "audio_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": 0 } }
    })
}

#[tokio::test]
async fn a_request_carries_every_option_and_the_reply_is_read_whole() {
    let server =
        TestServer::start(vec![Reply::json(200, &completion(json!("Blue, mostly."), Value::Null, "stop"))]).await;
    let request = ChatRequest::new([
        Message::system("Be brief."),
        Message::user("What colour is the sky?").with_image(Image::Url("https://example.com/sky.png".into())),
    ])
    .temperature(0.2)
    .top_p(0.9)
    .max_tokens(64)
    .stop("\n\n")
    .seed(7)
    .tool(Tool::new(
        "weather",
        "Current weather",
        json!({ "type": "object", "properties": { "city": { "type": "string" } } }),
    ))
    .tool_choice(ToolChoice::Auto);
    let reply = llm(&server).chat(request).await.unwrap();
    assert_eq!(reply.text, "Blue, mostly.");
    assert_eq!(reply.finish_reason, Some(FinishReason::Stop));
    assert_eq!((reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.cached_tokens), (42, 7, 32));
    assert_eq!(reply.id.as_deref(), Some("chatcmpl-123"));
    assert_eq!(reply.model, "gpt-4o-mini-2024-07-18");

    let sent = &server.requests()[0];
    assert_eq!((sent.method.as_str(), sent.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    let body = sent.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["messages"][0], json!({ "role": "system", "content": "Be brief." }));
    assert_eq!(
        body["messages"][1]["content"],
        json!([{ "type": "text", "text": "What colour is the sky?" }, { "type": "image_url", "image_url": { "url": "https://example.com/sky.png" } }])
    );
    assert_eq!(body["temperature"].as_f64().map(|t| (t * 10.0).round()), Some(2.0));
    assert_eq!(
        (body["max_tokens"].clone(), body["seed"].clone(), body["stop"].clone()),
        (json!(64), json!(7), json!(["\n\n"]))
    );
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "weather");
    assert_eq!(body["tool_choice"], "auto");
    assert!(body.get("stream").is_none());
}

#[tokio::test]
async fn tool_calls_and_tool_results_round_trip() {
    let calls = json!([
        { "id": "call_a", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Paris\"}" } },
        { "id": "call_b", "type": "function", "function": { "name": "weather", "arguments": "{\"city\":\"Oslo\"}" } }
    ]);
    let server = TestServer::start(vec![
        Reply::json(200, &completion(Value::Null, calls, "tool_calls")),
        Reply::json(200, &completion(json!("Paris is warmer."), Value::Null, "stop")),
    ])
    .await;
    let llm = llm(&server);
    let mut request = ChatRequest::new([Message::user("Warmer: Paris or Oslo?")])
        .tool(Tool::new("weather", "Current weather", json!({ "type": "object" })))
        .tool_choice(ToolChoice::Tool("weather".into()));
    let first = llm.chat(request.clone()).await.unwrap();
    assert_eq!(first.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(first.tool_calls.len(), 2);
    assert_eq!(first.tool_calls[1].args::<Value>().unwrap(), json!({ "city": "Oslo" }));
    request.messages.push(first.message());
    for call in &first.tool_calls {
        request
            .messages
            .push(Message::tool_result(call, format!("{{\"temp\": {}}}", if call.id == "call_a" { 21 } else { 9 })));
    }
    assert_eq!(llm.chat(request).await.unwrap().text, "Paris is warmer.");

    let sent = server.requests();
    assert_eq!(sent[0].json()["tool_choice"], json!({ "type": "function", "function": { "name": "weather" } }));
    let messages = sent[1].json()["messages"].clone();
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], Value::Null);
    assert_eq!(messages[1]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(messages[2], json!({ "role": "tool", "content": "{\"temp\": 21}", "tool_call_id": "call_a" }));
}

fn chunk(delta: Value, finish: Value) -> String {
    json!({ "id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": null, "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }], "usage": null })
    .to_string()
}

#[tokio::test]
async fn a_stream_is_put_back_together_whatever_the_chunk_boundaries() {
    let events: Vec<(Option<&str>, String)> = vec![
        (None, chunk(json!({ "role": "assistant", "content": "", "refusal": null }), Value::Null)),
        (None, chunk(json!({ "content": "Déjà " }), Value::Null)),
        (None, chunk(json!({ "content": "vu — ✓" }), Value::Null)),
        (None, chunk(json!({ "tool_calls": [{ "index": 0, "id": "call_1", "type": "function", "function": { "name": "lookup", "arguments": "" } }] }), Value::Null)),
        (None, chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"q\":" } }] }), Value::Null)),
        (None, chunk(json!({ "tool_calls": [{ "index": 1, "id": "call_2", "type": "function", "function": { "name": "lookup", "arguments": "{\"q\":\"b\"}" } }] }), Value::Null)),
        (None, chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "\"été\"}" } }] }), Value::Null)),
        (None, chunk(json!({}), json!("tool_calls"))),
        (None, json!({ "id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18", "choices": [],
            "usage": { "prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20, "prompt_tokens_details": { "cached_tokens": 0 } } }).to_string()),
        (None, "[DONE]".to_string()),
    ];
    let server = TestServer::start(vec![Reply::sse(&events)]).await;
    let mut stream = llm(&server).stream("Say déjà vu, then look things up.").await.unwrap();
    let mut text = String::new();
    let mut arg_pieces = 0;
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Text(t) => text.push_str(&t),
            StreamEvent::ToolCall { arguments, .. } if !arguments.is_empty() => arg_pieces += 1,
            StreamEvent::ToolCall { .. } => {}
            StreamEvent::Done(response) => done = Some(response),
        }
    }
    assert_eq!(text, "Déjà vu — ✓");
    assert!(arg_pieces >= 3);
    let response = done.expect("the last event is the whole reply");
    assert_eq!(response.text, "Déjà vu — ✓");
    assert_eq!(response.tool_calls.len(), 2);
    assert_eq!(response.tool_calls[0].id, "call_1");
    assert_eq!(response.tool_calls[0].args::<Value>().unwrap(), json!({ "q": "été" }));
    assert_eq!(response.tool_calls[1].args::<Value>().unwrap(), json!({ "q": "b" }));
    assert_eq!(response.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!((response.usage.prompt_tokens, response.usage.completion_tokens), (11, 9));
    let sent = server.requests()[0].json();
    assert_eq!(
        (sent["stream"].clone(), sent["stream_options"].clone()),
        (json!(true), json!({ "include_usage": true }))
    );
}

#[tokio::test]
async fn dropping_a_stream_cancels_the_request() {
    let tick = format!("data: {}\n\n", chunk(json!({ "content": "la " }), Value::Null));
    let server = TestServer::start(vec![Reply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: Body::Endless(tick.into_bytes(), Duration::from_millis(5)),
    }])
    .await;
    let mut stream = llm(&server).stream("Sing forever.").await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap(), StreamEvent::Text("la ".into()));
    drop(stream);
    let started = std::time::Instant::now();
    while server.disconnects() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the server kept sending after the stream was dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn structured_output_sends_a_strict_schema() {
    #[derive(serde::Deserialize, schemars::JsonSchema, Debug, PartialEq)]
    struct Verdict {
        lane: String,
        confidence: f64,
    }
    let server = TestServer::start(vec![Reply::json(
        200,
        &completion(json!("{\"lane\":\"security\",\"confidence\":0.9}"), Value::Null, "stop"),
    )])
    .await;
    let verdict: Verdict = llm(&server).generate("Classify: my password leaked").await.unwrap();
    assert_eq!(verdict, Verdict { lane: "security".into(), confidence: 0.9 });
    let format = server.requests()[0].json()["response_format"].clone();
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["name"], "Verdict");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(format["json_schema"]["schema"]["additionalProperties"], false);
    let _ = ResponseFormat::Json;
}

#[tokio::test]
async fn azure_gets_its_key_header_and_embeddings_come_back_in_order() {
    let server = TestServer::start(vec![Reply::json(
        200,
        &json!({ "object": "list", "model": "text-embedding-3-small", "usage": { "prompt_tokens": 4, "total_tokens": 4 },
            "data": [{ "object": "embedding", "index": 1, "embedding": [0.0, 1.0] }, { "object": "embedding", "index": 0, "embedding": [1.0, 0.0] }] }),
    )])
    .await;
    // Azure's v1 API is OpenAI's, with the key in an `api-key` header.
    let llm = Llm::with_options(
        "azure/embeddings-deployment",
        LlmOptions::default()
            .base_url(format!("{}/openai/v1", server.url))
            .api_key("azure-key")
            .retry(RetryPolicy::none()),
    )
    .unwrap();
    let vectors = llm.embed(&["first", "second"]).await.unwrap();
    assert_eq!(vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/openai/v1/embeddings");
    assert_eq!(sent.header("api-key"), Some("azure-key"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.json()["model"], "embeddings-deployment");
    assert_eq!(sent.json()["input"], json!(["first", "second"]));
}

#[tokio::test]
async fn malformed_json_is_a_protocol_error_carrying_the_raw_reply() {
    let server = TestServer::start(vec![Reply::text(200, "{\"choices\": [ {\"message\": oops")]).await;
    let err = llm(&server).chat("hi").await.unwrap_err();
    let LlmError::Protocol { raw, .. } = &err else { panic!("{err}") };
    assert!(raw.contains("oops"));
    assert!(err.to_string().starts_with("openai sent a reply that could not be read"), "{err}");
}
