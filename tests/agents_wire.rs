//! The agent's tool loop in Anthropic's and Gemini's real wire formats, over the loopback
//! server the model tests use: a tool call, its result and a final answer; parallel calls
//! answered together in one turn; the forced answer after `max_iter`; an empty reply; typed
//! output repair; and what each API requires of the history sent back (Anthropic: tool results
//! first in one user turn, no empty messages; Gemini: thought signatures and given call ids
//! returned where they came, no empty turns). `tests/agents_loop.rs` covers the OpenAI format.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::http::{Recorded, Reply, TestServer, anthropic_llm, anthropic_message, gemini_llm, gemini_reply};
use crewflow::agents::{Agent, Inputs, ToolFn, ToolOptions, tool};
use crewflow::llm::Llm;
use serde::Deserialize;
use serde_json::{Value, json};

/// Adds two integers.
#[tool]
async fn add(a: i64, b: i64) -> Result<i64, std::convert::Infallible> {
    Ok(a + b)
}

fn calculator(llm: Llm) -> Agent {
    Agent::new(llm).role("Calculator").goal("Compute exactly.").backstory("You check every sum.")
}

/// A tool whose calls wait for each other at a barrier: run one after the other, the first
/// would wait until its timeout.
fn meet() -> impl crewflow::agents::Tool {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Q {
        q: String,
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    ToolFn::new("meet", "Waits for a partner.", move |x: Q| {
        let b = barrier.clone();
        async move {
            b.wait().await;
            Ok::<_, String>(format!("met {}", x.q))
        }
    })
}

#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct Verdict {
    approved: bool,
    reason: String,
}

// ---------------------------------------------------------------- Anthropic

/// Kicks off the calculator with the `meet` tool for a reply that calls it twice in parallel,
/// and checks both calls ran and the answer came back.
async fn meet_twice(llm: Llm) -> crewflow::agents::AgentOutput {
    let out = calculator(llm)
        .tool_with(meet(), ToolOptions::new().timeout(Duration::from_secs(10)))
        .kickoff("Meet twice.")
        .await
        .unwrap();
    assert_eq!(out.raw, "Both met.");
    assert_eq!(out.tool_calls.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["met a", "met b"]);
    out
}

fn anthropic(content: Value, stop: &str) -> Reply {
    Reply::json(200, &anthropic_message(content, stop))
}

fn tool_use(id: &str, name: &str, input: Value) -> Value {
    json!({ "type": "tool_use", "id": id, "name": name, "input": input })
}

fn text(t: &str) -> Value {
    json!({ "type": "text", "text": t })
}

/// The messages of a request, checked against the Messages API's rules: roles alternate,
/// starting with the user; no message is empty; no text block is empty; in a user turn,
/// tool results come before anything else.
fn anthropic_messages(r: &Recorded) -> Vec<Value> {
    let messages = r.json()["messages"].as_array().cloned().unwrap();
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["role"], if i % 2 == 0 { "user" } else { "assistant" }, "roles alternate: {messages:?}");
        let blocks = m["content"].as_array().unwrap();
        assert!(!blocks.is_empty(), "message {i} is empty: {messages:?}");
        assert!(blocks.iter().all(|b| b["type"] != "text" || b["text"] != ""), "an empty text block: {messages:?}");
        let first_other = blocks.iter().position(|b| b["type"] != "tool_result").unwrap_or(blocks.len());
        assert!(
            blocks[first_other..].iter().all(|b| b["type"] != "tool_result"),
            "tool results must come first in a user turn: {m}"
        );
    }
    messages
}

#[tokio::test]
async fn anthropic_tool_loop_feeds_results_back_in_its_wire_format() {
    let server = TestServer::start(vec![
        anthropic(json!([text("I'll add them."), tool_use("toolu_01", "add", json!({"a": 2, "b": 3}))]), "tool_use"),
        anthropic(json!([tool_use("toolu_02", "add", json!({"a": 5, "b": 10}))]), "tool_use"),
        anthropic(json!([text("The answer is 15.")]), "end_turn"),
    ])
    .await;
    let out = calculator(anthropic_llm(&server)).tool(Add).kickoff("What is 2 + 3 + 10?").await.unwrap();
    assert_eq!(out.raw, "The answer is 15.");
    assert_eq!((out.iterations, out.forced), (3, false));
    assert_eq!(out.usage.total(), 3 * (130 + 12), "usage (cache reads included) summed over the loop");
    assert_eq!(out.tool_calls.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["5", "15"]);
    assert_eq!(out.tool_calls[0].id, "toolu_01");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let first = reqs[0].json();
    assert!(first["system"].as_str().unwrap().starts_with("You are Calculator."), "{first}");
    assert_eq!(first["tools"][0]["name"], "add");
    assert_eq!(first["tools"][0]["input_schema"]["properties"]["a"]["type"], "integer");
    assert!(first.get("tool_choice").is_none(), "the model chooses: {first}");

    let second = anthropic_messages(&reqs[1]);
    assert_eq!(second.len(), 3);
    assert_eq!(
        second[1]["content"],
        json!([text("I'll add them."), tool_use("toolu_01", "add", json!({"a": 2, "b": 3}))])
    );
    assert_eq!(second[2]["content"], json!([{ "type": "tool_result", "tool_use_id": "toolu_01", "content": "5" }]));
    let third = anthropic_messages(&reqs[2]);
    assert_eq!(third.len(), 5);
    assert_eq!(third[3]["content"], json!([tool_use("toolu_02", "add", json!({"a": 5, "b": 10}))]));
    assert_eq!(third[4]["content"], json!([{ "type": "tool_result", "tool_use_id": "toolu_02", "content": "15" }]));
}

#[tokio::test]
async fn anthropic_parallel_calls_run_together_and_answer_in_one_user_turn() {
    let server = TestServer::start(vec![
        anthropic(
            json!([tool_use("toolu_a", "meet", json!({"q": "a"})), tool_use("toolu_b", "meet", json!({"q": "b"}))]),
            "tool_use",
        ),
        anthropic(json!([text("Both met.")]), "end_turn"),
    ])
    .await;
    meet_twice(anthropic_llm(&server)).await;
    let sent = anthropic_messages(&server.requests()[1]);
    assert_eq!(sent.len(), 3, "one assistant turn with both calls, one user turn with both results");
    assert_eq!(
        sent[2]["content"],
        json!([
            { "type": "tool_result", "tool_use_id": "toolu_a", "content": "met a" },
            { "type": "tool_result", "tool_use_id": "toolu_b", "content": "met b" }
        ])
    );
}

#[tokio::test]
async fn anthropic_forced_answer_turns_tools_off_and_keeps_results_first() {
    let server = TestServer::start(vec![
        anthropic(json!([tool_use("toolu_1", "add", json!({"a": 1, "b": 1}))]), "tool_use"),
        anthropic(json!([text("2, as far as I got.")]), "end_turn"),
    ])
    .await;
    let out = calculator(anthropic_llm(&server)).tool(Add).max_iter(1).kickoff("Add.").await.unwrap();
    assert!(out.forced);
    assert_eq!(out.raw, "2, as far as I got.");
    let forced = &server.requests()[1];
    let body = forced.json();
    assert_eq!(body["tool_choice"], json!({ "type": "none" }));
    assert_eq!(body["tools"][0]["name"], "add", "the tools stay declared: the history holds their calls");
    let messages = anthropic_messages(forced);
    let last = messages.last().unwrap()["content"].as_array().cloned().unwrap();
    assert_eq!(last[0]["type"], "tool_result");
    assert!(last[1]["text"].as_str().unwrap().contains("used all 1 iterations"), "{last:?}");
}

#[tokio::test]
async fn anthropic_an_empty_reply_is_not_sent_back_as_an_empty_message() {
    let server =
        TestServer::start(vec![anthropic(json!([]), "end_turn"), anthropic(json!([text("Here it is.")]), "end_turn")])
            .await;
    let out = calculator(anthropic_llm(&server)).kickoff("Answer.").await.unwrap();
    assert_eq!(out.raw, "Here it is.");
    let messages = anthropic_messages(&server.requests()[1]);
    let asked = messages.last().unwrap()["content"].to_string();
    assert!(asked.contains("Your reply was empty"), "{asked}");
}

#[tokio::test]
async fn anthropic_typed_output_is_repaired_through_its_forced_tool() {
    let server = TestServer::start(vec![
        anthropic(json!([text("Looks fine to me.")]), "end_turn"),
        anthropic(
            json!([tool_use("toolu_r", "respond_with_json", json!({"approved": true, "reason": "fine"}))]),
            "tool_use",
        ),
    ])
    .await;
    let (verdict, out) =
        calculator(anthropic_llm(&server)).tool(Add).kickoff_as::<Verdict>("Review it.", &Inputs::new()).await.unwrap();
    assert_eq!(verdict, Verdict { approved: true, reason: "fine".into() });
    assert_eq!(out.iterations, 2);
    let repair = server.requests()[1].json();
    assert_eq!(repair["tool_choice"], json!({ "type": "tool", "name": "respond_with_json" }));
    let names: Vec<&str> = repair["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["add", "respond_with_json"]);
    anthropic_messages(&server.requests()[1]);
}

// ---------------------------------------------------------------- Gemini

fn gemini(parts: Value) -> Reply {
    Reply::json(200, &gemini_reply(parts, "STOP"))
}

fn call(name: &str, args: Value) -> Value {
    json!({ "functionCall": { "name": name, "args": args } })
}

fn signed(mut part: Value, signature: &str) -> Value {
    part["thoughtSignature"] = json!(signature);
    part
}

fn response(name: &str, result: Value) -> Value {
    json!({ "functionResponse": { "name": name, "response": { "result": result } } })
}

/// The contents of a request, checked against the API's rules: roles alternate, starting with
/// the user, and no turn is empty.
fn gemini_contents(r: &Recorded) -> Vec<Value> {
    let contents = r.json()["contents"].as_array().cloned().unwrap();
    for (i, c) in contents.iter().enumerate() {
        assert_eq!(c["role"], if i % 2 == 0 { "user" } else { "model" }, "roles alternate: {contents:?}");
        assert!(!c["parts"].as_array().unwrap().is_empty(), "turn {i} is empty: {contents:?}");
    }
    contents
}

#[tokio::test]
async fn gemini_tool_loop_sends_thought_signatures_back_where_they_came() {
    let server = TestServer::start(vec![
        gemini(json!([signed(call("add", json!({"a": 2, "b": 3})), "sig-one")])),
        gemini(json!([signed(call("add", json!({"a": 5, "b": 10})), "sig-two")])),
        gemini(json!([{ "text": "The answer is 15." }])),
    ])
    .await;
    let out =
        calculator(gemini_llm(&server, "gemini-3-pro-preview")).tool(Add).kickoff("What is 2 + 3 + 10?").await.unwrap();
    assert_eq!(out.raw, "The answer is 15.");
    assert_eq!(out.iterations, 3);
    assert_eq!(out.usage.total(), 3 * 22);
    assert_eq!(out.tool_calls.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["5", "15"]);

    let reqs = server.requests();
    let first = reqs[0].json();
    assert!(first["systemInstruction"]["parts"][0]["text"].as_str().unwrap().starts_with("You are Calculator."));
    assert_eq!(first["tools"][0]["functionDeclarations"][0]["name"], "add");
    assert_eq!(first["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["required"], json!(["a", "b"]));
    let contents = gemini_contents(&reqs[2]);
    assert_eq!(contents.len(), 5);
    // Gemini 3 refuses a step of the current turn whose first function call lost its signature.
    assert_eq!(contents[1]["parts"], json!([signed(call("add", json!({"a": 2, "b": 3})), "sig-one")]));
    assert_eq!(contents[2]["parts"], json!([response("add", json!(5))]));
    assert_eq!(contents[3]["parts"], json!([signed(call("add", json!({"a": 5, "b": 10})), "sig-two")]));
    assert_eq!(contents[4]["parts"], json!([response("add", json!(15))]));
}

#[tokio::test]
async fn gemini_parallel_calls_run_together_and_answer_in_one_turn() {
    let server = TestServer::start(vec![
        // Parallel calls: only the first carries the signature.
        gemini(json!([signed(call("meet", json!({"q": "a"})), "sig-p"), call("meet", json!({"q": "b"}))])),
        gemini(json!([{ "text": "Both met." }])),
    ])
    .await;
    let out = meet_twice(gemini_llm(&server, "gemini-2.5-flash")).await;
    assert_ne!(out.tool_calls[0].id, out.tool_calls[1].id, "calls without ids are told apart");
    let contents = gemini_contents(&server.requests()[1]);
    assert_eq!(contents.len(), 3);
    assert_eq!(
        contents[1]["parts"],
        json!([signed(call("meet", json!({"q": "a"})), "sig-p"), call("meet", json!({"q": "b"}))]),
        "made-up ids are not sent; the signature stays on the first call only"
    );
    assert_eq!(contents[2]["parts"], json!([response("meet", json!("met a")), response("meet", json!("met b"))]));
}

#[tokio::test]
async fn gemini_call_ids_it_gave_are_sent_back_with_the_call_and_its_response() {
    let server = TestServer::start(vec![
        gemini(json!([{ "functionCall": { "id": "fc-7", "name": "add", "args": { "a": 1, "b": 2 } } }])),
        gemini(json!([{ "text": "3" }])),
    ])
    .await;
    let out = calculator(gemini_llm(&server, "gemini-2.5-flash")).tool(Add).kickoff("1 + 2?").await.unwrap();
    assert_eq!(out.tool_calls[0].id, "fc-7");
    let contents = gemini_contents(&server.requests()[1]);
    assert_eq!(contents[1]["parts"][0]["functionCall"]["id"], "fc-7");
    assert_eq!(contents[2]["parts"][0]["functionResponse"]["id"], "fc-7");
}

#[tokio::test]
async fn gemini_forced_answer_and_tool_errors() {
    /// Always fails.
    #[tool]
    async fn broken() -> Result<String, String> {
        Err("the backend is down".into())
    }
    let server = TestServer::start(vec![
        gemini(json!([call("broken", json!({})), call("add", json!({"a": "x"}))])),
        gemini(json!([{ "text": "I could not compute it." }])),
    ])
    .await;
    let out = calculator(gemini_llm(&server, "gemini-2.5-flash"))
        .tool(Add)
        .tool(Broken)
        .max_iter(1)
        .kickoff("Compute.")
        .await
        .unwrap();
    assert!(out.forced);
    let forced = server.requests()[1].json();
    assert_eq!(forced["toolConfig"]["functionCallingConfig"], json!({ "mode": "NONE" }));
    assert_eq!(forced["tools"][0]["functionDeclarations"].as_array().unwrap().len(), 2);
    let contents = gemini_contents(&server.requests()[1]);
    let last = contents.last().unwrap()["parts"].as_array().cloned().unwrap();
    // The tool's error and the invalid arguments go back as the calls' responses (text is
    // not JSON, so it is sent as a string), then the request for a final answer.
    let error = last[0]["functionResponse"]["response"]["result"].as_str().unwrap();
    assert!(error.contains("the backend is down"), "{last:?}");
    let invalid = last[1]["functionResponse"]["response"]["result"].as_str().unwrap();
    assert!(invalid.contains("at /a"), "{last:?}");
    assert!(last[2]["text"].as_str().unwrap().contains("used all 1 iterations"), "{last:?}");
}

#[tokio::test]
async fn gemini_an_empty_reply_is_not_sent_back_as_an_empty_turn() {
    let server = TestServer::start(vec![
        Reply::json(
            200,
            &json!({ "candidates": [{ "content": { "role": "model" }, "finishReason": "STOP", "index": 0 }],
                "usageMetadata": { "promptTokenCount": 3, "totalTokenCount": 3 } }),
        ),
        gemini(json!([{ "text": "Here it is." }])),
    ])
    .await;
    let out = calculator(gemini_llm(&server, "gemini-2.5-flash")).kickoff("Answer.").await.unwrap();
    assert_eq!(out.raw, "Here it is.");
    let contents = gemini_contents(&server.requests()[1]);
    assert!(contents.last().unwrap().to_string().contains("Your reply was empty"), "{contents:?}");
}
