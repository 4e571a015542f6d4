//! Retries, backoff, `Retry-After`, error classes, timeouts; typed output with one repair;
//! classification; model-call events inside a flow.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{Body, Reply, TestServer};
use crewflow::llm::{Llm, LlmError, LlmOptions, RetryPolicy};
use crewflow::prelude::*;
use serde_json::{Value, json};

fn quick_retries(n: u32) -> RetryPolicy {
    RetryPolicy { max_retries: n, base_delay: Duration::from_millis(5), max_delay: Duration::from_millis(500) }
}

fn openai(server: &TestServer, retry: RetryPolicy) -> Llm {
    Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(server.url.clone()).api_key("k").retry(retry),
    )
    .unwrap()
}

fn ok(text: &str) -> Reply {
    Reply::json(
        200,
        &json!({ "id": "c1", "model": "gpt-4o-mini", "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 3, "completion_tokens": 2 } }),
    )
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, &json!({ "error": { "message": message, "type": "error", "code": null } }))
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let server = TestServer::start(vec![
        error(429, "Rate limit reached").header("retry-after", "0.2"),
        error(500, "The server had an error"),
        error(503, "Overloaded"),
        ok("finally"),
    ])
    .await;
    let started = Instant::now();
    let text = openai(&server, quick_retries(3)).complete("hi").await.unwrap();
    assert_eq!(text, "finally");
    assert_eq!(server.requests().len(), 4);
    assert!(started.elapsed() >= Duration::from_millis(200), "Retry-After was honoured");
}

#[tokio::test]
async fn retry_after_ms_and_http_dates_are_read() {
    let server = TestServer::start(vec![error(429, "slow down").header("retry-after-ms", "120"), ok("ok")]).await;
    let started = Instant::now();
    openai(&server, quick_retries(1)).complete("hi").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(120));

    // An HTTP date has one-second resolution, so aim three seconds out and expect at least two.
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
    let server = TestServer::start(vec![error(429, "slow down").header("retry-after", &later), ok("ok")]).await;
    let started = Instant::now();
    let patient = RetryPolicy { max_delay: Duration::from_secs(5), ..quick_retries(1) };
    openai(&server, patient).complete("hi").await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "waited for the date: {:?}", started.elapsed());
}

#[tokio::test]
async fn an_overloaded_anthropic_529_is_retried() {
    let overloaded =
        Reply::json(529, &json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }));
    let fine = Reply::json(
        200,
        &json!({ "id": "m", "type": "message", "role": "assistant", "model": "claude", "content": [{ "type": "text", "text": "ok" }],
            "stop_reason": "end_turn", "usage": { "input_tokens": 1, "output_tokens": 1 } }),
    );
    let server = TestServer::start(vec![overloaded, fine]).await;
    let llm = Llm::with_options(
        "anthropic/claude",
        LlmOptions::default().base_url(server.url.clone()).api_key("k").retry(quick_retries(2)),
    )
    .unwrap();
    assert_eq!(llm.complete("hi").await.unwrap(), "ok");
    assert_eq!(server.requests().len(), 2);
}

/// A canned error reply and the classification the client must give it.
type ErrorCase = (Reply, fn(&LlmError) -> bool);

#[tokio::test]
async fn client_errors_are_not_retried_and_are_classified() {
    let cases: Vec<ErrorCase> = vec![
        (
            error(400, "Invalid 'messages': empty array"),
            |e| matches!(e, LlmError::BadRequest { status: 400, message, .. } if message.contains("empty array")),
        ),
        (error(401, "Incorrect API key provided"), |e| matches!(e, LlmError::Auth { status: 401, .. })),
        (
            Reply::json(
                400,
                &json!({ "error": { "message": "This model's maximum context length is 128000 tokens.", "code": "context_length_exceeded" } }),
            ),
            |e| matches!(e, LlmError::ContextTooLong { .. }),
        ),
        (error(404, "The model `gpt-9` does not exist"), |e| matches!(e, LlmError::BadRequest { status: 404, .. })),
    ];
    for (reply, expected) in cases {
        let server = TestServer::start(vec![reply]).await;
        let err = openai(&server, quick_retries(3)).complete("hi").await.unwrap_err();
        assert!(expected(&err), "{err:?}");
        assert_eq!(server.requests().len(), 1, "not retried: {err}");
    }
}

#[tokio::test]
async fn exhausted_retries_report_the_last_failure() {
    let server = TestServer::start(vec![
        error(429, "Rate limit reached for requests").header("retry-after", "0.01"),
        error(429, "Rate limit reached for requests").header("retry-after", "0.01"),
    ])
    .await;
    let err = openai(&server, quick_retries(1)).complete("hi").await.unwrap_err();
    let LlmError::RateLimited { retry_after, message, .. } = &err else { panic!("{err}") };
    assert_eq!(*retry_after, Some(Duration::from_millis(10)));
    assert_eq!(message, "Rate limit reached for requests");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_retry_after_longer_than_the_policy_waits_is_returned_not_cut_short() {
    let server = TestServer::start(vec![error(429, "quota exhausted").header("retry-after", "120"), ok("ok")]).await;
    let started = Instant::now();
    let err = openai(&server, quick_retries(3)).complete("hi").await.unwrap_err();
    assert!(
        matches!(err, LlmError::RateLimited { retry_after: Some(d), .. } if d == Duration::from_secs(120)),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1, "retrying before the server's time would only fail again");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_servers_and_slow_replies_are_network_errors_and_timeouts() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nobody = Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("http://127.0.0.1:{port}")).api_key("k").retry(quick_retries(2)),
    )
    .unwrap();
    let err = nobody.complete("hi").await.unwrap_err();
    assert!(matches!(err, LlmError::Network { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "names where: {err}");

    let slow = Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Body::Chunks(vec![b"{".to_vec(), b"}".to_vec()], Duration::from_secs(3)),
    };
    let server = TestServer::start(vec![slow]).await;
    let llm = Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default()
            .base_url(server.url.clone())
            .api_key("k")
            .retry(RetryPolicy::none())
            .timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let started = Instant::now();
    let err = llm.complete("hi").await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[derive(serde::Deserialize, schemars::JsonSchema, Debug, PartialEq)]
struct Invoice {
    number: String,
    total_cents: u64,
}

#[tokio::test]
async fn typed_output_is_repaired_once_quoting_the_problem_then_fails_clearly() {
    let server =
        TestServer::start(vec![ok("{\"number\": \"A-7\"}"), ok("{\"number\": \"A-7\", \"total_cents\": 1250}")]).await;
    let invoice: Invoice = openai(&server, RetryPolicy::none()).generate("Extract the invoice.").await.unwrap();
    assert_eq!(invoice, Invoice { number: "A-7".into(), total_cents: 1250 });
    let repair = server.requests()[1].json();
    let messages = repair["messages"].as_array().unwrap();
    assert_eq!(messages[1]["content"], "{\"number\": \"A-7\"}");
    let prompt = messages[2]["content"].as_str().unwrap();
    assert!(prompt.contains("does not match the schema") && prompt.contains("total_cents"), "{prompt}");

    let server = TestServer::start(vec![ok("I cannot help with invoices."), ok("Still no.")]).await;
    let err = openai(&server, RetryPolicy::none()).generate::<Invoice>("Extract.").await.unwrap_err();
    let LlmError::InvalidOutput { expected, raw, .. } = &err else { panic!("{err}") };
    assert_eq!((expected.as_str(), raw.as_str()), ("Invoice", "Still no."));
}

#[tokio::test]
async fn classification_picks_one_label_of_a_closed_set() {
    let server =
        TestServer::start(vec![ok("{\"label\": \"priority\"}"), ok("I'd say Security."), ok("unclear"), ok("no idea")])
            .await;
    let llm = openai(&server, RetryPolicy::none());
    let labels = ["security", "priority", "standard"];
    assert_eq!(llm.classify("Checkout is down!", &labels).await.unwrap(), "priority");
    assert_eq!(llm.classify("Someone logged in from abroad", &labels).await.unwrap(), "security");
    assert!(matches!(llm.classify("??", &labels).await, Err(LlmError::InvalidOutput { .. })));
    let schema = server.requests()[0].json()["response_format"]["json_schema"]["schema"].clone();
    assert_eq!(schema["properties"]["label"]["enum"], json!(labels));
}

/// Inside a flow step, model calls report on the run's event stream and count into its usage.
#[tokio::test]
async fn model_calls_inside_a_step_are_run_events() {
    let server = TestServer::start(vec![
        ok("A short reply."),
        Reply::sse(&[
            (None, json!({ "id": "s1", "model": "gpt-4o-mini", "choices": [{ "index": 0, "delta": { "content": "Str" }, "finish_reason": null }] }).to_string()),
            (None, json!({ "id": "s1", "model": "gpt-4o-mini", "choices": [{ "index": 0, "delta": { "content": "eamed" }, "finish_reason": "stop" }] }).to_string()),
            (None, json!({ "id": "s1", "model": "gpt-4o-mini", "choices": [], "usage": { "prompt_tokens": 4, "completion_tokens": 2 } }).to_string()),
            (None, "[DONE]".to_string()),
        ]),
        error(400, "bad"),
    ])
    .await;
    let llm = openai(&server, RetryPolicy::none());
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let (l1, l2, l3) = (llm.clone(), llm.clone(), llm);
    let flow = FlowBuilder::<()>::new("talk")
        .start("ask", move |_cx, (): ()| {
            let llm = l1.clone();
            async move { Ok(llm.chat(ChatRequest::from("hi").temperature(0.3).seed(1)).await?.text) }
        })
        .listen("stream", "ask", move |_cx, (): ()| {
            let llm = l2.clone();
            async move { Ok(llm.stream("go on").await?.response().await?.text) }
        })
        .listen("fail", "stream", move |_cx, (): ()| {
            let llm = l3.clone();
            async move { Ok(llm.complete("oops").await.is_err()) }
        })
        .observe(move |e: &Event| sink.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output_of::<String>("stream").unwrap().unwrap(), "Streamed");
    assert_eq!((run.usage().prompt_tokens, run.usage().completion_tokens), (7, 4), "both calls' tokens");

    let events = events.lock().unwrap();
    let llm_events: Vec<(String, String)> = events
        .iter()
        .filter(|e| e.kind.name().starts_with("llm"))
        .map(|e| (e.step.as_deref().unwrap_or("").to_string(), e.kind.name().to_string()))
        .collect();
    let names: Vec<&str> = llm_events.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "llm_call_started",
            "llm_call_finished",
            "llm_call_started",
            "llm_chunk",
            "llm_chunk",
            "llm_call_finished",
            "llm_call_started",
            "llm_call_failed"
        ]
    );
    assert!(llm_events.iter().all(|(step, _)| ["ask", "stream", "fail"].contains(&step.as_str())));
    let started = events.iter().find_map(|e| match &e.kind {
        EventKind::LlmCallStarted { provider, model, params, stream, call } => {
            Some((provider.to_string(), model.to_string(), params.clone(), *stream, *call))
        }
        _ => None,
    });
    let (provider, model, params, stream, call) = started.unwrap();
    assert_eq!((provider.as_str(), model.as_str(), stream, call), ("openai", "gpt-4o-mini", false, 1));
    assert_eq!(params["seed"], 1);
    assert_eq!(params["temperature"].as_f64().map(|t| (t * 10.0).round()), Some(3.0));
    let finished: Vec<(u64, Option<String>, Option<String>, f64)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::LlmCallFinished { call, finish_reason, response_id, latency_ms, .. } => {
                Some((*call, finish_reason.clone(), response_id.clone(), *latency_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(finished[0].0, 1);
    assert_eq!((finished[1].0, finished[1].1.as_deref(), finished[1].2.as_deref()), (2, Some("stop"), Some("s1")));
    assert!(finished.iter().all(|f| f.3 > 0.0));
    let failed = events.iter().find_map(|e| match &e.kind {
        EventKind::LlmCallFailed { error, .. } => Some(error.to_string()),
        _ => None,
    });
    assert!(failed.unwrap().contains("rejected the request (400): bad"));
    let _: Option<Value> = None;
}
