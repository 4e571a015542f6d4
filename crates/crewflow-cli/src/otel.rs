//! OpenTelemetry export of stored traces (feature `otel`): a run's or a session's trace — the
//! tree `crewflow trace` prints, session > turn > step > model call / tool call, or run >
//! step — as OTLP spans with the GenAI semantic-convention attributes, sent over OTLP/HTTP
//! (protobuf) to a collector.
//!
//! The spans are built from what the store kept, after the fact, so they are written as OTLP
//! messages directly (`opentelemetry-proto`) rather than through an SDK tracer, which would
//! stamp its own ids and times: here the trace id is the run's (or the stored trace's) id, and
//! a span's id is derived from its place in the tree, so exporting twice gives the same spans.
//! Nothing global is installed (no tracer provider, no propagator) and nothing is sent unless
//! an endpoint is given.
//!
//! A run's trace holds the runs started from its steps (nested flows, crews run as flows):
//! load them with [`RunTree::load`] and send [`run_tree_request`].
//!
//! ```no_run
//! # async fn demo(run: crewflow_core::persist::StoredRun) -> Result<(), crewflow_cli::otel::OtelError> {
//! let request = crewflow_cli::otel::run_request(&run);
//! let exporter = crewflow_cli::otel::OtlpExporter::new("http://127.0.0.1:4318")?;
//! let sent = exporter.export(&request).await?; // POST http://127.0.0.1:4318/v1/traces
//! # Ok(()) }
//! ```

use chrono::{DateTime, Utc};
use crewflow_chat::{SpanRecord, TraceSummary};
use crewflow_core::persist::{RunStatus, RunTree, StoredRun};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use serde_json::{Value, json};

/// What can go wrong sending spans.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("`{endpoint}` is not an OTLP/HTTP endpoint; give the collector's URL, e.g. http://127.0.0.1:4318")]
    BadEndpoint {
        /// What was given.
        endpoint: String,
    },
    /// The collector could not be reached, or did not accept the spans.
    #[error("could not send the spans to {url}: {reason}; check that an OTLP/HTTP collector listens there")]
    Send {
        /// Where they were sent.
        url: String,
        /// What happened.
        reason: String,
    },
}

/// Sends spans to an OTLP/HTTP collector (`POST {endpoint}/v1/traces`, protobuf).
#[derive(Clone, Debug)]
pub struct OtlpExporter {
    url: String,
    client: reqwest::Client,
}

impl OtlpExporter {
    /// An exporter to `endpoint`: the collector's base URL (`http://host:4318`, to which
    /// `/v1/traces` is added) or the full traces URL (ending in `/v1/traces`).
    pub fn new(endpoint: &str) -> Result<OtlpExporter, OtelError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(OtelError::BadEndpoint { endpoint: endpoint.to_string() });
        }
        let trimmed = endpoint.trim_end_matches('/');
        let url = if trimmed.ends_with("/v1/traces") { trimmed.to_string() } else { format!("{trimmed}/v1/traces") };
        // reqwest is built without a TLS provider; crewflow-llm installs ring's (once) before
        // any client of its own, and so does this one.
        crewflow_llm::install_crypto_provider();
        Ok(OtlpExporter { url, client: reqwest::Client::new() })
    }

    /// The traces URL spans are posted to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends the spans; returns how many were sent.
    pub async fn export(&self, request: &ExportTraceServiceRequest) -> Result<usize, OtelError> {
        let body = prost::Message::encode_to_vec(request);
        let failed = |reason: String| OtelError::Send { url: self.url.clone(), reason };
        let reply = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !reply.status().is_success() {
            let status = reply.status();
            let text = reply.text().await.unwrap_or_default();
            return Err(failed(format!("the collector answered {status} {}", crate::commands::clip(&text, 200))));
        }
        Ok(request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum())
    }
}

/// A stored run as one trace: the run's span (trace id: the run's id), and one span per step
/// execution under it (from the previous completion to its own, as `crewflow trace` draws it).
pub fn run_request(run: &StoredRun) -> ExportTraceServiceRequest {
    run_tree_request(&RunTree::leaf(run.clone()))
}

/// A run and the runs started from its steps ([`RunTree::load`]) as one trace: the outer
/// run's spans as [`run_request`] makes them, and each nested run's span (with its steps)
/// under the span of the step execution it was started from — under the outer run's span
/// when that execution stored no output (it failed, or still runs).
pub fn run_tree_request(tree: &RunTree) -> ExportTraceServiceRequest {
    let mut records = Vec::new();
    run_records(tree, "", None, &mut records);
    request(&tree.run.flow, &[(tree.run.run_id.to_string(), records)])
}

/// The spans of one run of the tree; their stored ids start with `prefix` (empty for the
/// outer run, so its span ids stay those of [`run_request`]).
fn run_records(tree: &RunTree, prefix: &str, parent: Option<String>, out: &mut Vec<SpanRecord>) {
    let run = &tree.run;
    let tl = crate::trace::timeline(run);
    let at = |ms: f64| run.created_at + chrono::Duration::microseconds((ms * 1000.0) as i64);
    let run_span = format!("{prefix}run");
    out.push(SpanRecord {
        span_id: run_span.clone(),
        parent_id: parent,
        kind: "run".into(),
        name: run.flow.clone(),
        started_at: run.created_at,
        ended_at: Some(at(tl.total)),
        attributes: json!({"run_id": run.run_id.to_string(), "flow": run.flow, "status": run.status.as_str(),
                           "error": if run.status == RunStatus::Failed { run.error.clone() } else { None }}),
    });
    for (activation, step, since, finished) in &tl.rows {
        out.push(SpanRecord {
            span_id: format!("{prefix}s{activation}"),
            parent_id: Some(run_span.clone()),
            kind: "step".into(),
            name: step.clone(),
            started_at: at(*since),
            ended_at: Some(at(*finished)),
            attributes: json!({"activation": activation}),
        });
    }
    call_records(tree, &tl, prefix, &run_span, out);
    for nested in &tree.nested {
        let activation = nested.run.parent.map(|p| p.activation);
        let parent = match activation {
            Some(a) if tl.rows.iter().any(|row| row.0 == a) => format!("{prefix}s{a}"),
            _ => run_span.clone(),
        };
        run_records(nested, &format!("{}/", nested.run.run_id), Some(parent), out);
    }
}

/// The calls a run's journal recorded, each a span under its step execution's (under the
/// run's span when the execution stored no output): a model call as `llm_call` (GenAI
/// attributes), a tool call as `tool_call`, another side effect as `call`. The journal keeps
/// when each result was recorded; a call's span starts at the previous call of its execution
/// (or where its step's span starts) and ends there.
fn call_records(tree: &RunTree, tl: &crate::trace::Timeline, prefix: &str, run_span: &str, out: &mut Vec<SpanRecord>) {
    let run = &tree.run;
    let run_end = run.created_at + chrono::Duration::microseconds((tl.total * 1000.0) as i64);
    let mut previous: Option<(u64, DateTime<Utc>)> = None;
    for (i, entry) in tree.journal.iter().enumerate() {
        let row = tl.rows.iter().find(|row| row.0 == entry.activation);
        let step_start =
            row.map_or(run.created_at, |row| run.created_at + chrono::Duration::microseconds((row.2 * 1000.0) as i64));
        let end = entry.recorded_at.unwrap_or(run_end);
        let start = match previous {
            Some((a, at)) if a == entry.activation => at,
            _ => step_start,
        }
        .min(end);
        previous = Some((entry.activation, end));
        let parent = if row.is_some() { format!("{prefix}s{}", entry.activation) } else { run_span.to_string() };
        let (kind, name, attributes) = match crate::calls::kind(entry) {
            crate::calls::CallKind::Model {
                model,
                provider,
                input_tokens,
                output_tokens,
                finish_reason,
                response_id,
            } => (
                "llm_call",
                model,
                json!({"provider": provider, "finish_reason": finish_reason, "response_id": response_id,
                       "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}}),
            ),
            crate::calls::CallKind::Tool { name, call_id } => ("tool_call", name, json!({"tool_call_id": call_id})),
            crate::calls::CallKind::Other => ("call", entry.key.clone(), json!({})),
        };
        let mut attributes = attributes;
        attributes["activation"] = json!(entry.activation);
        attributes["journal_key"] = json!(entry.key);
        out.push(SpanRecord {
            span_id: format!("{prefix}c{i}"),
            parent_id: Some(parent),
            kind: kind.into(),
            name,
            started_at: start,
            ended_at: Some(end),
            attributes,
        });
    }
}

/// A session's stored traces (`SessionStore::list_traces` and `trace_spans`), each an OTLP
/// trace: session > turn > step > model call / tool call.
pub fn session_request(flow: &str, traces: &[(TraceSummary, Vec<SpanRecord>)]) -> ExportTraceServiceRequest {
    let traces: Vec<(String, Vec<SpanRecord>)> =
        traces.iter().map(|(t, spans)| (t.trace_id.clone(), spans.clone())).collect();
    request(flow, &traces)
}

fn request(flow: &str, traces: &[(String, Vec<SpanRecord>)]) -> ExportTraceServiceRequest {
    let spans = traces.iter().flat_map(|(trace, records)| convert_trace(trace, records)).collect();
    let resource =
        Resource { attributes: vec![kv("service.name", "crewflow"), kv("crewflow.flow", flow)], ..Default::default() };
    let scope = InstrumentationScope {
        name: "crewflow".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans { scope: Some(scope), spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn convert_trace(trace: &str, records: &[SpanRecord]) -> Vec<Span> {
    let trace_id = trace_id(trace);
    // An open span (the session span until its trace is finalized) ends with the trace's last.
    let last = records.iter().filter_map(|r| r.ended_at).chain(records.iter().map(|r| r.started_at)).max();
    records
        .iter()
        .map(|r| {
            let (name, kind, mut attributes) = describe(r);
            attributes.push(kv("crewflow.span.kind", r.kind.as_str()));
            // A call read from a run's journal: the key it was recorded under, and (for model
            // and tool calls, whose attributes follow the GenAI conventions) its execution.
            if let Some(key) = r.attributes.get("journal_key").and_then(Value::as_str) {
                attributes.push(kv("crewflow.journal.key", key));
                if let (true, Some(n)) = (r.kind != "call", r.attributes.get("activation").and_then(Value::as_u64)) {
                    attributes.push(int("crewflow.step.activation", n));
                }
            }
            let error = r.attributes.get("error").filter(|e| !e.is_null());
            Span {
                trace_id: trace_id.clone(),
                span_id: span_id(trace, &r.span_id),
                parent_span_id: r
                    .parent_id
                    .as_deref()
                    .filter(|p| records.iter().any(|o| o.span_id == *p))
                    .map(|p| span_id(trace, p))
                    .unwrap_or_default(),
                name,
                kind: kind as i32,
                start_time_unix_nano: nanos(r.started_at),
                end_time_unix_nano: nanos(r.ended_at.or(last).unwrap_or(r.started_at)),
                attributes,
                status: Some(match error {
                    Some(e) => Status {
                        code: status::StatusCode::Error as i32,
                        message: e.as_str().map(String::from).unwrap_or_else(|| e.to_string()),
                    },
                    None => Status { code: status::StatusCode::Unset as i32, message: String::new() },
                }),
                ..Default::default()
            }
        })
        .collect()
}

/// A span's name, kind and attributes, after the GenAI semantic conventions for model and
/// tool calls (`chat {model}`, `execute_tool {tool}`).
fn describe(r: &SpanRecord) -> (String, span::SpanKind, Vec<KeyValue>) {
    let a = &r.attributes;
    let text = |key: &str| a.get(key).and_then(Value::as_str);
    let mut attrs = Vec::new();
    let usage = |attrs: &mut Vec<KeyValue>| {
        if let Some(u) = a.get("usage") {
            for (from, to) in
                [("prompt_tokens", "gen_ai.usage.input_tokens"), ("completion_tokens", "gen_ai.usage.output_tokens")]
            {
                if let Some(n) = u.get(from).and_then(Value::as_u64) {
                    attrs.push(int(to, n));
                }
            }
        }
    };
    match r.kind.as_str() {
        "llm_call" => {
            attrs.push(kv("gen_ai.operation.name", "chat"));
            attrs.push(kv("gen_ai.request.model", &r.name));
            if let Some(p) = text("provider") {
                attrs.push(kv("gen_ai.provider.name", p));
            }
            usage(&mut attrs);
            if let Some(f) = text("finish_reason") {
                attrs.push(pair("gen_ai.response.finish_reasons", array(&[f])));
            }
            if let Some(id) = text("response_id") {
                attrs.push(kv("gen_ai.response.id", id));
            }
            (format!("chat {}", r.name), span::SpanKind::Client, attrs)
        }
        "tool_call" => {
            attrs.push(kv("gen_ai.operation.name", "execute_tool"));
            attrs.push(kv("gen_ai.tool.name", &r.name));
            if let Some(id) = text("tool_call_id") {
                attrs.push(kv("gen_ai.tool.call.id", id));
            }
            (format!("execute_tool {}", r.name), span::SpanKind::Internal, attrs)
        }
        kind => {
            usage(&mut attrs);
            for key in ["run_id", "flow", "status", "intent", "route"] {
                if let Some(v) = text(key) {
                    attrs.push(kv(&format!("crewflow.{key}"), v));
                }
            }
            if let Some(n) = a.get("activation").and_then(Value::as_u64) {
                attrs.push(int("crewflow.step.activation", n));
            }
            let name = if kind == "step" || kind == "turn" { r.name.clone() } else { format!("{kind} {}", r.name) };
            (name, span::SpanKind::Internal, attrs)
        }
    }
}

fn pair(key: &str, value: AnyValue) -> KeyValue {
    KeyValue { key: key.into(), value: Some(value), ..Default::default() }
}

fn kv(key: &str, value: &str) -> KeyValue {
    pair(key, AnyValue { value: Some(any_value::Value::StringValue(value.into())) })
}

fn int(key: &str, value: u64) -> KeyValue {
    let n = i64::try_from(value).unwrap_or(i64::MAX);
    pair(key, AnyValue { value: Some(any_value::Value::IntValue(n)) })
}

fn array(items: &[&str]) -> AnyValue {
    let values = items.iter().map(|s| AnyValue { value: Some(any_value::Value::StringValue((*s).into())) }).collect();
    AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values })) }
}

fn nanos(at: DateTime<Utc>) -> u64 {
    at.timestamp_nanos_opt().and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The trace id: the 16 bytes of a UUID (run ids and stored trace ids are UUIDs), else a hash.
fn trace_id(text: &str) -> Vec<u8> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() == 32
        && let Some(bytes) = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect()
    {
        return bytes;
    }
    [fnv(text, 0), fnv(text, 1)].iter().flat_map(|h| h.to_be_bytes()).collect()
}

/// A span id derived from the trace and the span's stored id: stable across exports.
fn span_id(trace: &str, span: &str) -> Vec<u8> {
    fnv(&format!("{trace}/{span}"), 0).max(1).to_be_bytes().to_vec()
}

/// FNV-1a, 64 bits, with a seed byte first (two seeds give a 128-bit trace id).
fn fnv(text: &str, seed: u8) -> u64 {
    std::iter::once(seed)
        .chain(text.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}
