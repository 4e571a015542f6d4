//! `crewflow trace --otlp URL` (feature `otel`): the real binary sends a stored run's and a
//! stored session's trace to an OTLP/HTTP receiver in this test (axum on loopback), which
//! decodes the protobuf with opentelemetry-proto; the span tree, parent links and GenAI
//! attributes are checked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::collections::HashMap;

use axum::body::Bytes;
use chrono::{Duration, Utc};
use common::*;
use crewflow_chat::{SessionStore, SpanRecord, TraceWrite, TurnRecord, TurnSave};
use crewflow_core::{RunId, TokenUsage};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use tokio::sync::mpsc;

/// A loopback OTLP/HTTP receiver: its base URL, and the requests it decoded.
fn receiver(rt: &tokio::runtime::Runtime) -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = <ExportTraceServiceRequest as prost::Message>::decode(body).unwrap();
                tx.send(request).unwrap();
                // an empty ExportTraceServiceResponse
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

fn spans(request: &ExportTraceServiceRequest) -> Vec<Span> {
    let resource = &request.resource_spans[0];
    let attrs = &resource.resource.as_ref().unwrap().attributes;
    assert_eq!(text(attrs, "service.name"), Some("crewflow".to_string()));
    resource.scope_spans.iter().flat_map(|s| s.spans.clone()).collect()
}

fn attr<'a>(attrs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<&'a Any> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn text(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(Any::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Any::IntValue(n)) => Some(*n),
        _ => None,
    }
}

#[test]
fn a_run_is_exported_as_a_run_span_over_its_steps() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, mut rx) = receiver(&rt);
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out = s.cmd(&["run", "review.yaml", "--store", &db, "--json"]).output().unwrap();
    let id = json_lines(&out).last().unwrap()["run_id"].as_str().unwrap().to_string();

    let out = s.cmd(&["trace", &id, "--otlp", &url, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("sent 4 spans of run {id} to {url}/v1/traces\n"));
    let spans = spans(&rx.blocking_recv().unwrap());
    assert_eq!(spans.len(), 4);
    let run_trace: Vec<u8> = hex(&id.replace('-', ""));
    assert!(spans.iter().all(|s| s.trace_id == run_trace), "the trace id is the run's id");
    let root = &spans[0];
    assert_eq!((root.name.as_str(), root.parent_span_id.is_empty()), ("run review", true));
    assert_eq!(text(&root.attributes, "crewflow.run_id"), Some(id.clone()));
    assert_eq!(text(&root.attributes, "crewflow.status"), Some("finished".into()));
    let steps: Vec<(&str, i64)> = spans[1..]
        .iter()
        .map(|s| {
            assert_eq!(s.parent_span_id, root.span_id, "{} hangs under the run", s.name);
            assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
            assert!(
                root.start_time_unix_nano <= s.start_time_unix_nano && s.end_time_unix_nano <= root.end_time_unix_nano
            );
            (s.name.as_str(), int(&s.attributes, "crewflow.step.activation").unwrap())
        })
        .collect();
    assert_eq!(steps, [("draft", 0), ("check", 1), ("publish", 2)]);
    let ids: std::collections::HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    assert_eq!(ids.len(), 4, "span ids are distinct");

    // twice: the same spans (ids derived from the store), so a re-export does not duplicate
    let out = s.cmd(&["trace", &id, "--otlp", &url, "--store", &db, "--json"]).output().unwrap();
    assert_eq!(json_lines(&out), [json!({"sent": 4, "url": format!("{url}/v1/traces")})]);
    let again = self::spans(&rx.blocking_recv().unwrap());
    assert_eq!(
        again.iter().map(|s| &s.span_id).collect::<Vec<_>>(),
        spans.iter().map(|s| &s.span_id).collect::<Vec<_>>()
    );
}

/// Runs started from a step join the outer run's trace: each nested run's span hangs under
/// the span of the step execution that started it, its steps under it.
#[test]
fn nested_runs_join_the_outer_runs_trace_under_their_step() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, mut rx) = receiver(&rt);
    let s = Scratch::new();
    let (outer, nested) = store_nested_runs(&s.path("runs.db"), &rt);

    let out = s.cmd(&["trace", &outer, "--otlp", &url, "--store", &s.db("runs.db")]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("sent 12 spans of run {outer} and 2 nested runs to {url}/v1/traces\n"));
    let spans = spans(&rx.blocking_recv().unwrap());
    assert!(spans.iter().all(|s| s.trace_id == hex(&outer.replace('-', ""))), "one trace: the outer run's");
    let ids: std::collections::HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    assert_eq!(ids.len(), 12, "span ids are distinct");
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();
    let root = named("run report")[0];
    assert!(root.parent_span_id.is_empty());
    let gather = named("gather")[0];
    assert_eq!(gather.parent_span_id, root.span_id);
    let inner = named("run research");
    assert_eq!(
        inner.iter().map(|s| text(&s.attributes, "crewflow.run_id").unwrap()).collect::<Vec<_>>(),
        nested,
        "the nested runs, in the order they started"
    );
    for run in &inner {
        assert_eq!(run.parent_span_id, gather.span_id, "a nested run hangs under the step that started it");
        assert!(gather.start_time_unix_nano <= run.start_time_unix_nano);
        let steps: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id == run.span_id).collect();
        assert_eq!(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["search", "summarize"]);
        // the side effect `search` recorded in its run's journal hangs under it
        let calls: Vec<&Span> = spans.iter().filter(|s| s.parent_span_id == steps[0].span_id).collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].name.as_str(), text(&calls[0].attributes, "crewflow.journal.key")),
            ("call fetch", Some("fetch".into()))
        );
    }
}

/// A model call a persisted run's step made through `Llm` is recorded in the run's journal;
/// its trace draws it under the step (text: model, tokens, finish reason) and exports it as a
/// `chat MODEL` span with the GenAI attributes. The model is an OpenAI-compatible server on
/// loopback answering in OpenAI's wire format.
#[test]
fn a_runs_model_calls_are_chat_spans_under_their_step() {
    use std::sync::Arc;

    use crewflow_core::FlowBuilder;
    use serde_json::{Map, Value};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, mut rx) = receiver(&rt);
    let openai = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            axum::Json(json!({
                "id": "chatcmpl-trace-1", "object": "chat.completion", "created": 1_765_000_000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "three sources"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
            }))
        }),
    );
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, openai).await });

    let s = Scratch::new();
    let store: Arc<dyn crewflow_core::persist::RunStore> =
        Arc::new(crewflow_store::SqliteStore::open(s.path("runs.db")));
    let options = crewflow_llm::LlmOptions::default().api_key("test-key").base_url(base);
    let llm = crewflow_llm::Llm::with_options("openai/gpt-4o-mini", options).unwrap();
    let flow = FlowBuilder::<Map<String, Value>>::new("ask")
        .start("question", move |_cx, (): ()| {
            let llm = llm.clone();
            async move { Ok(llm.chat("Where do I look?").await?.text) }
        })
        .store(store)
        .build()
        .unwrap();
    let run = rt.block_on(flow.kickoff(())).unwrap();
    let id = run.id.to_string();

    let out = s.cmd(&["trace", &id, "--store", &s.db("runs.db")]).output().unwrap();
    let printed = stdout(&out);
    let call = printed.lines().nth(2).unwrap_or_default();
    assert!(call.starts_with("   └─ chat gpt-4o-mini-2024-07-18 · tokens 9+3 · stop  +"), "{printed}");

    let out = s.cmd(&["trace", &id, "--otlp", &url, "--store", &s.db("runs.db")]).output().unwrap();
    assert_eq!(stderr(&out), format!("sent 3 spans of run {id} to {url}/v1/traces\n"));
    let spans = spans(&rx.blocking_recv().unwrap());
    let step = spans.iter().find(|s| s.name == "question").unwrap();
    let chat = spans.iter().find(|s| s.name == "chat gpt-4o-mini-2024-07-18").unwrap();
    assert_eq!(chat.parent_span_id, step.span_id, "the call hangs under its step");
    assert_eq!(chat.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32);
    assert!(
        step.start_time_unix_nano <= chat.start_time_unix_nano && chat.start_time_unix_nano <= chat.end_time_unix_nano
    );
    let a = &chat.attributes;
    assert_eq!(text(a, "gen_ai.operation.name"), Some("chat".into()));
    assert_eq!(text(a, "gen_ai.provider.name"), Some("openai".into()));
    assert_eq!((int(a, "gen_ai.usage.input_tokens"), int(a, "gen_ai.usage.output_tokens")), (Some(9), Some(3)));
    assert_eq!(text(a, "gen_ai.response.id"), Some("chatcmpl-trace-1".into()));
    assert_eq!(text(a, "crewflow.journal.key"), Some("llm:openai/gpt-4o-mini".into()));
    assert_eq!(int(a, "crewflow.step.activation"), Some(0));
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// A stored turn with a model call that asked for a tool, as `crewflow-chat` records it.
fn store_session(path: &std::path::Path, rt: &tokio::runtime::Runtime) -> String {
    let store = crewflow_store::SqliteStore::open(path);
    let t0 = Utc::now();
    let at = |ms: i64| t0 + Duration::milliseconds(ms);
    let span = |id: &str, parent: &str, kind: &str, name: &str, from: i64, to: i64, attributes| SpanRecord {
        span_id: id.into(),
        parent_id: Some(parent.into()),
        kind: kind.into(),
        name: name.into(),
        started_at: at(from),
        ended_at: Some(at(to)),
        attributes,
    };
    let run_id = RunId::new();
    let usage = TokenUsage { prompt_tokens: 12, completion_tokens: 5, cached_tokens: 0 };
    let trace_id = RunId::new().to_string();
    let spans = vec![
        span("t0", "session", "turn", "turn 0", 0, 40, json!({"run_id": run_id.to_string(), "usage": usage})),
        span("t0.s1", "t0", "step", "answer", 1, 39, json!({"activation": 1})),
        span(
            "t0.l1",
            "t0.s1",
            "llm_call",
            "qwen3-0.6b",
            2,
            30,
            json!({"provider": "local", "stream": true, "usage": usage, "finish_reason": "tool_calls", "response_id": "resp-7"}),
        ),
        span("t0.l1.e4", "t0.l1", "tool_call", "lookup", 29, 29, json!({"tool_call_id": "call-1", "arguments": "{}"})),
        span("t0.s2", "t0", "step", "broken", 31, 39, json!({"activation": 2, "error": "no such order"})),
    ];
    let save = TurnSave {
        session_id: "ada".into(),
        flow: "support".into(),
        state: "{}".into(),
        state_version: 0,
        expected_turns: 0,
        messages_from: 0,
        messages: Vec::new(),
        turn: TurnRecord {
            session_id: "ada".into(),
            index: 0,
            run_id,
            user_message: "where is my order?".into(),
            reply: "looking".into(),
            intent: None,
            usage,
            started_at: at(0),
            finished_at: at(40),
        },
        trace: Some(TraceWrite { new_trace_id: trace_id.clone(), idle_after: None, spans }),
    };
    rt.block_on(store.save_turn(&save)).unwrap();
    trace_id
}

#[test]
fn a_session_is_exported_with_gen_ai_attributes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, mut rx) = receiver(&rt);
    let s = Scratch::new();
    let trace_id = store_session(&s.path("chat.db"), &rt);

    let out =
        s.cmd(&["trace", "--session", "support/ada", "--otlp", &url, "--store", &s.db("chat.db")]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("sent 6 spans of session support/ada to {url}/v1/traces\n"));
    let spans = spans(&rx.blocking_recv().unwrap());
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    let names: std::collections::BTreeSet<&str> = by_name.keys().copied().collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["answer", "broken", "chat qwen3-0.6b", "execute_tool lookup", "session ada", "turn 0"]
    );
    assert!(spans.iter().all(|s| s.trace_id == hex(&trace_id.replace('-', ""))));
    let parent =
        |child: &str, of: &str| assert_eq!(by_name[child].parent_span_id, by_name[of].span_id, "{child} under {of}");
    assert!(by_name["session ada"].parent_span_id.is_empty());
    parent("turn 0", "session ada");
    parent("answer", "turn 0");
    parent("broken", "turn 0");
    parent("chat qwen3-0.6b", "answer");
    parent("execute_tool lookup", "chat qwen3-0.6b");

    let llm = &by_name["chat qwen3-0.6b"].attributes;
    assert_eq!(text(llm, "gen_ai.operation.name"), Some("chat".into()));
    assert_eq!(text(llm, "gen_ai.request.model"), Some("qwen3-0.6b".into()));
    assert_eq!(text(llm, "gen_ai.provider.name"), Some("local".into()));
    assert_eq!((int(llm, "gen_ai.usage.input_tokens"), int(llm, "gen_ai.usage.output_tokens")), (Some(12), Some(5)));
    assert_eq!(text(llm, "gen_ai.response.id"), Some("resp-7".into()));
    match attr(llm, "gen_ai.response.finish_reasons") {
        Some(Any::ArrayValue(a)) => {
            assert_eq!(a.values.len(), 1);
            assert_eq!(a.values[0].value, Some(Any::StringValue("tool_calls".into())));
        }
        other => panic!("finish_reasons: {other:?}"),
    }
    assert_eq!(by_name["chat qwen3-0.6b"].kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32);
    let tool = &by_name["execute_tool lookup"].attributes;
    assert_eq!(
        (text(tool, "gen_ai.tool.name"), text(tool, "gen_ai.tool.call.id")),
        (Some("lookup".into()), Some("call-1".into()))
    );
    let broken = by_name["broken"].status.as_ref().unwrap();
    assert_eq!((broken.code, broken.message.as_str()), (2, "no such order"));
    assert_eq!(by_name["answer"].status.as_ref().unwrap().code, 0);
}

#[test]
fn export_errors_are_named() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out = s.cmd(&["run", "review.yaml", "--store", &db, "--json"]).output().unwrap();
    let id = json_lines(&out).last().unwrap()["run_id"].as_str().unwrap().to_string();

    let out = s.cmd(&["trace", &id, "--otlp", "localhost:4318", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: `localhost:4318` is not an OTLP/HTTP endpoint; give the collector's URL, e.g. http://127.0.0.1:4318\n"
    );
    // a port nothing listens on
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{free}");
    let out = s.cmd(&["trace", &id, "--otlp", &url, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("error: could not send the spans to {url}/v1/traces: ")), "{err}");
    assert!(err.ends_with("; check that an OTLP/HTTP collector listens there\n"), "{err}");
}
