//! Tools and the agent loop against scripted replies in the OpenAI wire format over a real
//! loopback HTTP server: `#[tool]` schemas, argument validation, tool errors and timeouts,
//! unknown tools, call budgets, the result cache, repeated-call detection, parallel calls,
//! `max_iter` and the forced answer, typed output with one repair, placeholders,
//! `max_execution_time`, usage summed over the loop, and the events of an agent in a step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::http::{Recorded, TestServer, openai_completion, openai_llm, openai_tool_calls};
use crewflow::agents::{Agent, AgentError, Inputs, Tool, ToolError, ToolFn, ToolOptions, ToolOutcome, ToolSet, tool};
use crewflow::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// Adds two integers.
#[tool]
async fn add(a: i64, b: i64) -> Result<i64, std::convert::Infallible> {
    Ok(a + b)
}

/// Looks a word up; fails for words it does not know.
#[tool(name = "lookup-word")]
async fn lookup(word: String, lang: Option<String>) -> Result<String, String> {
    match word.as_str() {
        "rust" => Ok(format!("a reddish-brown oxide ({})", lang.unwrap_or_else(|| "en".into()))),
        other => Err(format!("no entry for `{other}`")),
    }
}

/// The messages of a recorded request.
fn messages(r: &Recorded) -> Vec<Value> {
    r.json()["messages"].as_array().cloned().unwrap_or_default()
}

fn tool_messages(r: &Recorded) -> Vec<(String, String)> {
    messages(r)
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (m["tool_call_id"].as_str().unwrap_or("").to_string(), m["content"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

fn agent(server: &TestServer) -> Agent {
    Agent::new(openai_llm(server)).role("Calculator").goal("Compute exactly.").backstory("You check every sum.")
}

/// A tool counting its calls.
fn counter(name: &str, calls: Arc<AtomicUsize>) -> impl Tool {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Q {
        q: String,
    }
    ToolFn::new(name, "Searches.", move |x: Q| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(format!("results for {}", x.q))
        }
    })
}

#[tokio::test]
async fn tool_attribute_derives_name_description_and_schema() {
    assert_eq!(Add.name(), "add");
    assert_eq!(Add.description(), "Adds two integers.");
    let schema = Add.parameters();
    assert_eq!(schema["properties"]["a"]["type"], "integer", "{schema}");
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["a", "b"]);
    assert_eq!(Lookup.name(), "lookup-word");
    let schema = Lookup.parameters();
    assert_eq!(schema["required"], json!(["word"]), "an Option parameter is not required: {schema}");

    let tools = ToolSet::new().with(Add).with(Lookup);
    assert_eq!(tools.call("add", json!({"a": 2, "b": 40})).await.unwrap(), "42");
    assert_eq!(tools.call("lookup-word", json!({"word": "rust"})).await.unwrap(), "a reddish-brown oxide (en)");
    // Arguments are checked before the call, naming the field.
    let err = tools.call("add", json!({"a": "two", "b": 1})).await.unwrap_err();
    assert!(matches!(&err, ToolError::InvalidArguments(m) if m.contains("/a") && m.contains("integer")), "{err}");
    let err = tools.call("add", json!({"a": 1})).await.unwrap_err();
    assert!(err.to_string().contains("\"b\" is a required property"), "{err}");
    // The tool's own error, and an unknown tool.
    let err = tools.call("lookup-word", json!({"word": "zzz"})).await.unwrap_err();
    assert!(err.to_string().contains("no entry for `zzz`"), "{err}");
    let err = tools.call("nope", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("the tools are: add, lookup-word"), "{err}");
    // Set-up errors are kept and refuse the agent's start.
    assert_eq!(ToolSet::new().with(Add).with(Add).problems().len(), 1);
}

#[tokio::test]
async fn the_tool_loop_feeds_results_back_and_sums_usage() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("call_1", "add", json!({"a": 2, "b": 3}))]),
        openai_tool_calls(&[("call_2", "add", json!({"a": 5, "b": 10}))]),
        openai_completion("The answer is 15."),
    ])
    .await;
    let out = agent(&server).tool(Add).kickoff("What is 2 + 3 + 10?").await.unwrap();
    assert_eq!(out.raw, "The answer is 15.");
    assert_eq!((out.iterations, out.forced), (3, false));
    assert_eq!(out.usage.total(), 40 + 40 + 25, "usage is summed over every model call");
    let texts: Vec<&str> = out.tool_calls.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["5", "15"]);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let first = reqs[0].json();
    assert_eq!(first["tools"][0]["function"]["name"], "add");
    assert_eq!(first["tools"][0]["function"]["description"], "Adds two integers.");
    assert_eq!(first["tools"][0]["function"]["parameters"]["properties"]["b"]["type"], "integer");
    let system = messages(&reqs[0])[0]["content"].as_str().unwrap_or("").to_string();
    assert!(system.contains("You are Calculator") && system.contains("Compute exactly."), "{system}");
    assert_eq!(tool_messages(&reqs[1]), [("call_1".to_string(), "5".to_string())]);
    assert_eq!(tool_messages(&reqs[2]).last().unwrap(), &("call_2".to_string(), "15".to_string()));
}

#[tokio::test]
async fn max_iter_forces_one_final_answer_without_tools() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "search", json!({"q": "one"}))]),
        openai_tool_calls(&[("c2", "search", json!({"q": "two"}))]),
        openai_completion("Best I can say: one and two."),
    ])
    .await;
    let out = agent(&server).tool(counter("search", calls.clone())).max_iter(2).kickoff("Find things.").await.unwrap();
    assert_eq!(out.raw, "Best I can say: one and two.");
    assert!(out.forced);
    assert_eq!(out.iterations, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "exactly one forced call after max_iter");
    assert_eq!(reqs[2].json()["tool_choice"], "none", "{}", reqs[2].body);
    assert!(reqs[1].json().get("tool_choice").is_none());
    let last = messages(&reqs[2]).last().cloned().unwrap();
    assert!(last["content"].as_str().unwrap().contains("used all 2 iterations"), "{last}");
}

#[tokio::test]
async fn a_forced_answer_that_still_calls_tools_is_a_clear_error() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "add", json!({"a": 1, "b": 1}))]),
        openai_tool_calls(&[("c2", "add", json!({"a": 2, "b": 2}))]),
    ])
    .await;
    let err = agent(&server).tool(Add).max_iter(1).kickoff("Add.").await.unwrap_err();
    assert!(matches!(err, AgentError::NoAnswer { max_iter: 1, .. }), "{err}");
    assert!(err.to_string().contains("raise max_iter"), "{err}");
}

#[tokio::test]
async fn tool_errors_unknown_tools_and_timeouts_go_back_to_the_model() {
    /// Never answers in time.
    #[tool]
    async fn slow() -> Result<String, String> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok("late".into())
    }
    let server = TestServer::start(vec![
        openai_tool_calls(&[
            ("c1", "lookup-word", json!({"word": "zzz"})),
            ("c2", "teleport", json!({})),
            ("c3", "slow", json!({})),
        ]),
        openai_completion("Nothing worked."),
    ])
    .await;
    let out = agent(&server)
        .tool(Lookup)
        .tool_with(Slow, ToolOptions::new().timeout(Duration::from_millis(100)))
        .kickoff("Try.")
        .await
        .unwrap();
    assert_eq!(out.raw, "Nothing worked.");
    let outcomes: Vec<ToolOutcome> = out.tool_calls.iter().map(|t| t.outcome).collect();
    assert_eq!(outcomes, [ToolOutcome::Error, ToolOutcome::Unknown, ToolOutcome::Timeout]);
    let sent = tool_messages(&server.requests()[1]);
    assert_eq!(sent.len(), 3, "every call is answered, in order");
    assert!(sent[0].1.contains("`lookup-word` failed: no entry for `zzz`"), "{sent:?}");
    assert!(sent[1].1.contains("no tool named `teleport`") && sent[1].1.contains("lookup-word, slow"), "{sent:?}");
    assert!(sent[2].1.contains("timeout of 100ms"), "{sent:?}");
}

#[tokio::test]
async fn invalid_arguments_are_rejected_before_the_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(vec![
        Reply::json_tool_raw("c1", "search", "{\"q\": 42}"),
        Reply::json_tool_raw("c2", "search", "{not json"),
        openai_completion("done"),
    ])
    .await;
    let out = agent(&server).tool(counter("search", calls.clone())).kickoff("Search.").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the tool never ran");
    assert_eq!(out.tool_calls[0].outcome, ToolOutcome::Invalid);
    assert!(
        out.tool_calls[0].text.contains("at /q") && out.tool_calls[0].text.contains("string"),
        "{:?}",
        out.tool_calls
    );
    assert!(out.tool_calls[1].text.contains("not valid JSON"), "{:?}", out.tool_calls);
    assert_eq!(tool_messages(&server.requests()[1])[0].1, out.tool_calls[0].text);
}

/// Raw tool-call replies (arguments as written, possibly not JSON).
trait RawToolCall {
    fn json_tool_raw(id: &str, name: &str, arguments: &str) -> common::http::Reply;
}

impl RawToolCall for Reply {
    fn json_tool_raw(id: &str, name: &str, arguments: &str) -> common::http::Reply {
        common::http::Reply::json(
            200,
            &json!({
                "id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{ "index": 0, "finish_reason": "tool_calls",
                    "message": { "role": "assistant", "content": null, "tool_calls": [
                        { "id": id, "type": "function", "function": { "name": name, "arguments": arguments } }] } }],
                "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 }
            }),
        )
    }
}

use common::http::Reply;

#[tokio::test]
async fn parallel_calls_run_concurrently() {
    // Each call waits for the other at a barrier: run one after the other, the first would
    // time out.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Q {
        q: String,
    }
    let b = barrier.clone();
    let meet = ToolFn::new("meet", "Waits for a partner.", move |x: Q| {
        let b = b.clone();
        async move {
            b.wait().await;
            Ok::<_, String>(format!("met {}", x.q))
        }
    });
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "meet", json!({"q": "a"})), ("c2", "meet", json!({"q": "b"}))]),
        openai_completion("both met"),
    ])
    .await;
    let out = agent(&server)
        .tool_with(meet, ToolOptions::new().timeout(Duration::from_secs(10)))
        .kickoff("Meet.")
        .await
        .unwrap();
    let texts: Vec<&str> = out.tool_calls.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["met a", "met b"], "both ran, results in the calls' order");
}

#[tokio::test]
async fn a_repeated_identical_call_is_answered_from_the_earlier_result() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "search", json!({"q": "rust"}))]),
        // The same arguments (and, in one reply, twice more).
        openai_tool_calls(&[
            ("c2", "search", json!({"q": "rust"})),
            ("c3", "search", json!({"q": "go"})),
            ("c4", "search", json!({"q": "go"})),
        ]),
        openai_completion("done"),
    ])
    .await;
    let out = agent(&server).tool(counter("search", calls.clone())).kickoff("Search.").await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "rust once, go once");
    let outcomes: Vec<ToolOutcome> = out.tool_calls.iter().map(|t| t.outcome).collect();
    assert_eq!(outcomes, [ToolOutcome::Ok, ToolOutcome::Repeated, ToolOutcome::Ok, ToolOutcome::Repeated]);
    let sent = tool_messages(&server.requests()[2]);
    assert!(sent[1].1.starts_with("results for rust") && sent[1].1.contains("already called `search`"), "{sent:?}");
    assert!(sent[3].1.starts_with("results for go"), "{sent:?}");
}

#[tokio::test]
async fn budgets_refuse_calls_and_the_cache_answers_across_kickoffs() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "search", json!({"q": "a"}))]),
        openai_tool_calls(&[("c2", "search", json!({"q": "b"}))]),
        openai_completion("first done"),
        openai_tool_calls(&[("c1", "search", json!({"q": "a"}))]),
        openai_completion("second done"),
    ])
    .await;
    let agent = agent(&server).tool_with(counter("search", calls.clone()), ToolOptions::new().max_calls(1).cache(true));
    let first = agent.kickoff("Search a, then b.").await.unwrap();
    assert_eq!(first.tool_calls[1].outcome, ToolOutcome::Budget);
    assert!(first.tool_calls[1].text.contains("at most 1 times"), "{:?}", first.tool_calls);
    let second = agent.kickoff("Search a again.").await.unwrap();
    assert_eq!(second.raw, "second done");
    assert_eq!(second.tool_calls[0].outcome, ToolOutcome::Cached);
    assert_eq!(second.tool_calls[0].text, "results for a");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
struct Verdict {
    approved: bool,
    reason: String,
}

#[tokio::test]
async fn typed_output_is_repaired_once() {
    let server = TestServer::start(vec![
        openai_completion("I approve, it looks fine."),
        openai_completion("{\"approved\": true, \"reason\": \"fine\"}"),
    ])
    .await;
    let (verdict, out) = agent(&server).kickoff_as::<Verdict>("Review it.", &Inputs::new()).await.unwrap();
    assert_eq!(verdict, Verdict { approved: true, reason: "fine".into() });
    assert_eq!(out.iterations, 2);
    let reqs = server.requests();
    let first_user = messages(&reqs[0])[1]["content"].as_str().unwrap().to_string();
    assert!(first_user.contains("\"approved\""), "the schema is in the prompt: {first_user}");
    assert_eq!(reqs[1].json()["response_format"]["type"], "json_schema");
    let repair = messages(&reqs[1]).last().cloned().unwrap();
    assert!(repair["content"].as_str().unwrap().contains("it is not JSON"), "{repair}");

    let server = TestServer::start(vec![
        openai_completion("{\"approved\": \"yes\"}"),
        openai_completion("{\"approved\": \"still yes\"}"),
    ])
    .await;
    let err = agent(&server).kickoff_as::<Verdict>("Review it.", &Inputs::new()).await.unwrap_err();
    assert!(matches!(&err, AgentError::InvalidOutput { expected, .. } if expected == "Verdict"), "{err}");
    assert!(err.to_string().contains("still yes"), "{err}");
    assert_eq!(server.requests().len(), 2, "one repair, no more");
}

#[tokio::test]
async fn placeholders_are_filled_and_a_missing_one_is_named() {
    let server = TestServer::start(vec![openai_completion("ok")]).await;
    let a = Agent::new(openai_llm(&server))
        .role("{topic} Researcher")
        .goal("Find news on {topic} for {audience}")
        .backstory("An expert.");
    let inputs = Inputs::from([("topic", "Rust"), ("audience", "engineers")]);
    let out = a.kickoff_with("Summarise {topic}.", &inputs).await.unwrap();
    assert_eq!(out.agent, "Rust Researcher");
    let msgs = messages(&server.requests()[0]);
    assert!(msgs[0]["content"].as_str().unwrap().contains("Find news on Rust for engineers"), "{msgs:?}");
    assert_eq!(msgs[1]["content"], "Summarise Rust.");
    let err = a.kickoff_with("Go.", &Inputs::from([("topic", "Rust")])).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("`{audience}`") && text.contains("inputs present: topic"), "{text}");
    assert_eq!(server.requests().len(), 1, "nothing is sent when a placeholder is missing");
}

#[tokio::test]
async fn max_execution_time_stops_the_loop() {
    /// Takes long.
    #[tool]
    async fn ponder() -> String {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "done".into()
    }
    let server = TestServer::start(vec![openai_tool_calls(&[("c1", "ponder", json!({}))])]).await;
    let err =
        agent(&server).tool(Ponder).max_execution_time(Duration::from_millis(200)).kickoff("Think.").await.unwrap_err();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("max_execution_time"), "{err}");
}

#[tokio::test]
async fn an_agent_in_a_step_reports_its_loop_as_events_of_the_step() {
    let server =
        TestServer::start(vec![openai_tool_calls(&[("c1", "add", json!({"a": 1, "b": 2}))]), openai_completion("3")])
            .await;
    let llm = openai_llm(&server);
    let events = Arc::new(std::sync::Mutex::new(Vec::<Event>::new()));
    let seen = events.clone();
    let flow = crewflow::FlowBuilder::<()>::new("agentic")
        .start("research", move |_cx: Cx<()>, (): ()| {
            let llm = llm.clone();
            async move {
                let agent = Agent::new(llm).role("Calculator").tool(Add);
                let out = agent.kickoff("1 + 2?").await?;
                Ok::<_, StepError>(out.raw)
            }
        })
        .observe(move |e: &Event| seen.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "3");
    let events = events.lock().unwrap();
    let in_step: Vec<&str> = events
        .iter()
        .filter(|e| e.step.as_deref() == Some("research"))
        .map(|e| e.kind.name())
        .filter(|n| !n.starts_with("step_"))
        .collect();
    assert_eq!(
        in_step,
        [
            "agent_started",
            "agent_iteration",
            "llm_call_started",
            "llm_call_finished",
            "tool_call_requested",
            "tool_call_started",
            "tool_call_finished",
            "agent_iteration",
            "llm_call_started",
            "llm_call_finished",
            "agent_finished"
        ]
    );
    let finished = events.iter().find_map(|e| match &e.kind {
        EventKind::ToolCallFinished { outcome, result, .. } => Some((outcome.clone(), result.clone())),
        _ => None,
    });
    assert_eq!(finished, Some(("ok".to_string(), "3".to_string())));
    let usage = events.iter().find_map(|e| match &e.kind {
        EventKind::AgentFinished { usage, iterations, .. } => Some((usage.total(), *iterations)),
        _ => None,
    });
    assert_eq!(usage, Some((65, 2)));
}

#[tokio::test]
async fn arguments_in_another_key_order_are_the_same_call() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "add", json!({"a": 1, "b": 2}))]),
        Reply::json_tool_raw("c2", "add", "{\"b\": 2, \"a\": 1}"),
        Reply::json_tool_raw("c3", "add", "{\"b\": 1, \"a\": 2}"),
        openai_completion("3"),
    ])
    .await;
    let out = agent(&server).tool(Add).kickoff("1 + 2?").await.unwrap();
    let outcomes: Vec<ToolOutcome> = out.tool_calls.iter().map(|t| t.outcome).collect();
    assert_eq!(outcomes, [ToolOutcome::Ok, ToolOutcome::Repeated, ToolOutcome::Ok], "other values are another call");
}

#[tokio::test]
async fn an_agent_with_conflicting_tools_refuses_to_start() {
    let server = TestServer::start(vec![]).await;
    let err = agent(&server).tool(Add).tool(Add).kickoff("Go.").await.unwrap_err();
    assert!(matches!(&err, AgentError::Config(m) if m.contains("two tools are named `add`")), "{err}");
    let err = Agent::new(openai_llm(&server)).kickoff("Go.").await.unwrap_err();
    assert!(err.to_string().contains("an agent needs a role"), "{err}");
    assert!(server.requests().is_empty());
}
