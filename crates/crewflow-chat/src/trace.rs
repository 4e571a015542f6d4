//! A turn's spans, built from its run's events: turn > step > model call > tool call.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::store::SpanRecord;
use crewflow_core::{Event, EventKind};

/// The id of the session span, parent of every turn span.
pub(crate) const SESSION_SPAN: &str = "session";

/// Builds the spans of turn `index` from its events (in sequence order).
pub(crate) fn turn_spans(
    index: u64,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    attributes: Value,
    events: &[Event],
) -> Vec<SpanRecord> {
    let turn_id = format!("t{index}");
    let mut spans = vec![SpanRecord {
        span_id: turn_id.clone(),
        parent_id: Some(SESSION_SPAN.to_string()),
        kind: "turn".into(),
        name: format!("turn {index}"),
        started_at,
        ended_at: Some(finished_at),
        attributes,
    }];
    let mut open: HashMap<String, usize> = HashMap::new(); // span id -> position in `spans`
    let mut step_span: HashMap<Arc<str>, String> = HashMap::new(); // step -> its latest span
    for e in events {
        on_event(&turn_id, e, &mut spans, &mut open, &mut step_span);
    }
    spans
}

fn on_event(
    turn_id: &str,
    e: &Event,
    spans: &mut Vec<SpanRecord>,
    open: &mut HashMap<String, usize>,
    step_span: &mut HashMap<Arc<str>, String>,
) {
    let step = e.step.clone().unwrap_or_else(|| Arc::from(""));
    let mut start = |id: String, parent: String, kind: &str, name: String, attrs: Value| {
        open.insert(id.clone(), spans.len());
        spans.push(SpanRecord {
            span_id: id,
            parent_id: Some(parent),
            kind: kind.into(),
            name,
            started_at: e.at,
            ended_at: None,
            attributes: attrs,
        });
    };
    match &e.kind {
        EventKind::StepStarted { activation, .. } => {
            let id = format!("{turn_id}.s{activation}");
            step_span.insert(step.clone(), id.clone());
            start(id, turn_id.to_string(), "step", step.to_string(), json!({ "activation": activation }));
        }
        EventKind::LlmCallStarted { call, provider, model, stream, .. } => {
            let parent = step_span.get(&step).cloned().unwrap_or_else(|| turn_id.to_string());
            let attrs = json!({ "provider": provider, "stream": stream });
            start(format!("{turn_id}.l{call}"), parent, "llm_call", model.to_string(), attrs);
        }
        EventKind::StepFinished { activation, elapsed_us, .. } => {
            end(spans, open, &format!("{turn_id}.s{activation}"), e.at, "elapsed_us", json!(elapsed_us));
        }
        EventKind::StepFailed { activation, error } => {
            end(spans, open, &format!("{turn_id}.s{activation}"), e.at, "error", json!(error));
        }
        EventKind::RouteTaken { activation, label } => {
            set(spans, open, &format!("{turn_id}.s{activation}"), "route", json!(label));
        }
        EventKind::LlmCallFinished { call, usage, finish_reason, response_id, latency_ms, .. } => {
            let id = format!("{turn_id}.l{call}");
            set(spans, open, &id, "usage", json!(usage));
            set(spans, open, &id, "finish_reason", json!(finish_reason));
            set(spans, open, &id, "response_id", json!(response_id));
            end(spans, open, &id, e.at, "latency_ms", json!(latency_ms));
        }
        EventKind::LlmCallFailed { call, error, .. } => {
            end(spans, open, &format!("{turn_id}.l{call}"), e.at, "error", json!(error));
        }
        EventKind::ToolCallRequested { call, id, name, arguments } => {
            // A point in time: the model asked; running the tool is the step's (or an agent's)
            // own span.
            // The event's sequence number keeps span ids unique even if a provider repeats a
            // tool call id.
            let span_id = format!("{turn_id}.l{call}.e{}", e.seq);
            let attrs = json!({ "tool_call_id": id, "arguments": arguments });
            start(span_id.clone(), format!("{turn_id}.l{call}"), "tool_call", name.clone(), attrs);
            end(spans, open, &span_id, e.at, "requested", json!(true));
        }
        _ => {}
    }
}

fn set(spans: &mut [SpanRecord], open: &HashMap<String, usize>, id: &str, key: &str, value: Value) {
    if let Some(span) = open.get(id).and_then(|&i| spans.get_mut(i))
        && let Value::Object(map) = &mut span.attributes
    {
        map.insert(key.to_string(), value);
    }
}

fn end(
    spans: &mut [SpanRecord],
    open: &mut HashMap<String, usize>,
    id: &str,
    at: DateTime<Utc>,
    key: &str,
    value: Value,
) {
    set(spans, open, id, key, value);
    if let Some(span) = open.remove(id).and_then(|i| spans.get_mut(i)) {
        span.ended_at = Some(at);
    }
}
