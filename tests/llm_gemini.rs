//! The Gemini provider against a loopback server replaying the generateContent wire format
//! (JSON, and SSE with `alt=sse`), from Google's API reference.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::http::{Reply, TestServer, gemini_llm, gemini_reply};
use crewflow::llm::{ChatRequest, FinishReason, Image, Llm, Message, StreamEvent, Tool, ToolChoice};
use futures::StreamExt;
use serde_json::{Value, json};

fn llm(server: &TestServer, model: &str) -> Llm {
    gemini_llm(server, model)
}

fn reply(parts: Value, finish: &str) -> Value {
    gemini_reply(parts, finish)
}

#[tokio::test]
async fn requests_map_roles_tools_and_generation_config() {
    let server = TestServer::start(vec![Reply::json(
        200,
        &reply(json!([{ "functionCall": { "name": "weather", "args": { "city": "Rome" } } }]), "STOP"),
    )])
    .await;
    // An id from elsewhere (another provider's conversation) is sent back with the call.
    let call = crewflow::llm::ToolCall::new("call_0", "weather", "{\"city\":\"Oslo\"}");
    let request = ChatRequest::new([
        Message::system("Be exact."),
        Message::user("Weather?")
            .with_image(Image::Base64 { media_type: "image/png".into(), data: "iVBORw0KGgo=".into() }),
        Message::assistant_tool_calls("", vec![call.clone()]),
        Message::tool_result(&call, "{\"celsius\": 3}"),
    ])
    .tool(Tool::new(
        "weather",
        "Current weather",
        json!({ "type": "object", "properties": { "city": { "type": "string" } } }),
    ))
    .tool_choice(ToolChoice::Tool("weather".into()))
    .temperature(0.5)
    .max_tokens(100)
    .seed(3);
    let r = llm(&server, "gemini-2.5-flash").chat(request).await.unwrap();
    assert_eq!(r.tool_calls[0].name, "weather");
    assert_eq!(r.tool_calls[0].args::<Value>().unwrap(), json!({ "city": "Rome" }));
    assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.cached_tokens), (17, 5, 4));
    assert_eq!((r.id.as_deref(), r.model.as_str()), (Some("resp-1"), "gemini-2.5-flash"));

    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.header("x-goog-api-key"), Some("g-test"));
    let body = sent.json();
    assert_eq!(body["systemInstruction"], json!({ "parts": [{ "text": "Be exact." }] }));
    let roles: Vec<&str> = body["contents"].as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert_eq!(
        body["contents"][0]["parts"][1],
        json!({ "inlineData": { "mimeType": "image/png", "data": "iVBORw0KGgo=" } })
    );
    assert_eq!(
        body["contents"][1]["parts"][0],
        json!({ "functionCall": { "id": "call_0", "name": "weather", "args": { "city": "Oslo" } } })
    );
    assert_eq!(
        body["contents"][2]["parts"][0],
        json!({ "functionResponse": { "id": "call_0", "name": "weather", "response": { "result": { "celsius": 3 } } } })
    );
    assert_eq!(body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["type"], "object");
    assert_eq!(
        body["toolConfig"]["functionCallingConfig"],
        json!({ "mode": "ANY", "allowedFunctionNames": ["weather"] })
    );
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 100);
    assert_eq!(body["generationConfig"]["seed"], 3);
}

#[tokio::test]
async fn streams_and_structured_output() {
    let chunks = vec![
        (None, reply(json!([{ "text": "Grüße " }]), "").to_string().replace(",\"finishReason\":\"\"", "")),
        (None, reply(json!([{ "text": "aus Köln" }]), "STOP").to_string()),
    ];
    let server = TestServer::start(vec![
        Reply::sse(&chunks),
        Reply::json(200, &reply(json!([{ "text": "{\"city\": \"Köln\"}" }]), "STOP")),
    ])
    .await;
    let llm = llm(&server, "gemini-2.5-flash");
    let mut stream = llm.stream("Greet me in German.").await.unwrap();
    let mut text = String::new();
    let mut done = None;
    while let Some(e) = stream.next().await {
        match e.unwrap() {
            StreamEvent::Text(t) => text.push_str(&t),
            StreamEvent::Done(r) => done = Some(r),
            StreamEvent::ToolCall { .. } => {}
        }
    }
    assert_eq!(text, "Grüße aus Köln");
    assert_eq!(done.unwrap().finish_reason, Some(FinishReason::Stop));
    assert_eq!(server.requests()[0].path, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse");

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct City {
        city: String,
    }
    let city: City = llm.generate("Which city?").await.unwrap();
    assert_eq!(city.city, "Köln");
    let config = server.requests()[1].json()["generationConfig"].clone();
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(config["responseJsonSchema"]["properties"]["city"]["type"], "string");
}

/// A JSON schema beside function declarations: Gemini 3 takes both (`responseJsonSchema` with
/// the tools), Gemini 2.x refuses the pair with a 400, so for it the tools stay and the schema
/// is left to the prompt.
#[tokio::test]
async fn a_schema_beside_tools_is_sent_only_to_models_that_take_both() {
    for (model, schema_sent) in [("gemini-3-pro-preview", true), ("gemini-2.5-flash", false), ("gemini-1.5-pro", false)]
    {
        let server =
            TestServer::start(vec![Reply::json(200, &reply(json!([{ "text": "{\"city\": \"Rome\"}" }]), "STOP"))])
                .await;
        let mut request = ChatRequest::new([Message::user("Which city? Reply as JSON.")]).tool(Tool::new(
            "weather",
            "Current weather",
            json!({ "type": "object", "properties": { "city": { "type": "string" } } }),
        ));
        request.tool_choice = Some(ToolChoice::None);
        request.response_format = Some(crewflow::llm::ResponseFormat::JsonSchema {
            name: "City".into(),
            schema: json!({ "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] }),
            strict: false,
        });
        let r = llm(&server, model).chat(request).await.unwrap();
        assert_eq!(r.text, "{\"city\": \"Rome\"}");
        let body = server.requests()[0].json();
        assert_eq!(body["tools"][0]["functionDeclarations"][0]["name"], "weather", "{model}");
        assert_eq!(body["toolConfig"]["functionCallingConfig"], json!({ "mode": "NONE" }), "{model}");
        let config = &body["generationConfig"];
        assert_eq!(config["responseJsonSchema"]["required"] == json!(["city"]), schema_sent, "{model}: {body}");
        assert_eq!(config["responseMimeType"] == json!("application/json"), schema_sent, "{model}: {body}");
    }
}

#[tokio::test]
async fn embeddings_in_a_batch() {
    let server = TestServer::start(vec![Reply::json(
        200,
        &json!({ "embeddings": [{ "values": [0.5, 0.25] }, { "values": [1.0, 0.0] }] }),
    )])
    .await;
    let vectors = llm(&server, "text-embedding-004").embed(&["a", "b"]).await.unwrap();
    assert_eq!(vectors, vec![vec![0.5, 0.25], vec![1.0, 0.0]]);
    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1beta/models/text-embedding-004:batchEmbedContents");
    assert_eq!(
        sent.json()["requests"][1],
        json!({ "model": "models/text-embedding-004", "content": { "parts": [{ "text": "b" }] } })
    );
}

/// A function call's thought signature survives a stream (Gemini 3 needs it back): it is on
/// the reassembled call, and sent back on the same part.
#[tokio::test]
async fn a_streamed_call_keeps_its_thought_signature() {
    let chunk = reply(
        json!([{ "functionCall": { "name": "weather", "args": { "city": "Rome" } }, "thoughtSignature": "c2lnLTE=" }]),
        "STOP",
    );
    let server = TestServer::start(vec![
        Reply::sse(&[(None, chunk.to_string())]),
        Reply::json(200, &reply(json!([{ "text": "ok" }]), "STOP")),
    ])
    .await;
    let llm = llm(&server, "gemini-3-pro-preview");
    let done = llm.stream("Weather in Rome?").await.unwrap().response().await.unwrap();
    assert_eq!(done.tool_calls[0].signature.as_deref(), Some("c2lnLTE="));
    let call = done.tool_calls[0].clone();
    llm.chat(ChatRequest::new([
        Message::user("Weather in Rome?"),
        done.message(),
        Message::tool_result(&call, "sunny"),
    ]))
    .await
    .unwrap();
    let sent = server.requests()[1].json();
    assert_eq!(sent["contents"][1]["parts"][0]["thoughtSignature"], "c2lnLTE=");
    assert!(sent["contents"][1]["parts"][0]["functionCall"].get("id").is_none(), "a made-up id is not sent");
}
