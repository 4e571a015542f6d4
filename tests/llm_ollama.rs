//! The Ollama provider against a loopback server replaying `/api/chat` (JSON, and
//! newline-delimited JSON when streaming) and `/api/embed`, from Ollama's API reference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::http::{Reply, TestServer};
use crewflow::llm::{
    ChatRequest, FinishReason, Image, Llm, LlmError, LlmOptions, Message, RetryPolicy, StreamEvent, Tool,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn llm(server: &TestServer) -> Llm {
    Llm::with_options("ollama/llama3.2", LlmOptions::default().base_url(server.url.clone()).retry(RetryPolicy::none()))
        .unwrap()
}

#[tokio::test]
async fn requests_use_options_and_format_and_read_tool_calls() {
    let server = TestServer::start(vec![Reply::json(
        200,
        &json!({ "model": "llama3.2", "created_at": "2026-11-22T10:00:00Z",
            "message": { "role": "assistant", "content": "", "tool_calls": [{ "function": { "name": "weather", "arguments": { "city": "Lima" } } }] },
            "done": true, "done_reason": "stop", "total_duration": 1, "prompt_eval_count": 26, "eval_count": 8 }),
    )])
    .await;
    let request = ChatRequest::new([
        Message::system("Be brief."),
        Message::user("Weather in Lima?")
            .with_image(Image::Base64 { media_type: "image/png".into(), data: "aGk=".into() }),
    ])
    .tool(Tool::new("weather", "Current weather", json!({ "type": "object" })))
    .temperature(0.1)
    .max_tokens(50)
    .seed(9)
    .stop("###");
    let r = llm(&server).chat(request).await.unwrap();
    assert_eq!(r.tool_calls[0].args::<Value>().unwrap(), json!({ "city": "Lima" }));
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (26, 8));
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/api/chat");
    let body = sent.json();
    assert_eq!(body["stream"], false);
    assert_eq!(body["messages"][1]["images"], json!(["aGk="]));
    assert_eq!(body["options"]["num_predict"], 50);
    assert_eq!((body["options"]["seed"].clone(), body["options"]["stop"].clone()), (json!(9), json!(["###"])));
    assert_eq!(body["tools"][0]["function"]["name"], "weather");
}

#[tokio::test]
async fn newline_delimited_streams_are_read_across_awkward_chunks() {
    let lines = vec![
        json!({ "model": "llama3.2", "created_at": "t", "message": { "role": "assistant", "content": "Ça " }, "done": false }),
        json!({ "model": "llama3.2", "created_at": "t", "message": { "role": "assistant", "content": "marche — 👍" }, "done": false }),
        json!({ "model": "llama3.2", "created_at": "t", "message": { "role": "assistant", "content": "" }, "done": true, "done_reason": "length", "prompt_eval_count": 5, "eval_count": 6 }),
    ];
    let server = TestServer::start(vec![Reply::ndjson(&lines)]).await;
    let mut stream = llm(&server).stream("Ça va ?").await.unwrap();
    let mut text = String::new();
    let mut done = None;
    while let Some(e) = stream.next().await {
        match e.unwrap() {
            StreamEvent::Text(t) => text.push_str(&t),
            StreamEvent::Done(r) => done = Some(r),
            StreamEvent::ToolCall { .. } => {}
        }
    }
    assert_eq!(text, "Ça marche — 👍");
    let r = done.unwrap();
    assert_eq!(r.finish_reason, Some(FinishReason::Length));
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (5, 6));
}

#[tokio::test]
async fn structured_output_an_error_line_and_embeddings() {
    let server = TestServer::start(vec![
        Reply::json(200, &json!({ "model": "llama3.2", "message": { "role": "assistant", "content": "{\"ok\": true}" }, "done": true, "done_reason": "stop" })),
        Reply::ndjson(&[json!({ "error": "model runner has unexpectedly stopped" })]),
        Reply::json(200, &json!({ "model": "all-minilm", "embeddings": [[0.1, 0.2], [0.3, 0.4]] })),
    ])
    .await;
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Ok_ {
        ok: bool,
    }
    let llm = llm(&server);
    assert!(llm.generate::<Ok_>("ok?").await.unwrap().ok);
    assert_eq!(server.requests()[0].json()["format"]["properties"]["ok"]["type"], "boolean");

    let err = llm.stream("hi").await.unwrap().response().await.unwrap_err();
    assert!(
        matches!(err, LlmError::Server { ref message, .. } if message == "model runner has unexpectedly stopped"),
        "{err}"
    );

    assert_eq!(llm.embed(&["a", "b"]).await.unwrap(), vec![vec![0.1, 0.2], vec![0.3, 0.4]]);
    assert_eq!(server.requests()[2].path, "/api/embed");
}
