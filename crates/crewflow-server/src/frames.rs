//! The one serializer of streamed frames: a run's events and a turn's events become [`Frame`]s
//! once, and SSE and the WebSocket send the same frame text, so the two carry equal
//! transcripts by construction.

use std::sync::Arc;

use axum::response::sse::Event as SseEvent;
use crewflow_chat::{Turn, TurnEvent};
use crewflow_core::Event;
use serde_json::{Value, json};

/// One streamed frame: its type (the SSE `event:` name) and its JSON text (the SSE `data:`,
/// the WebSocket text message), which holds the type too.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub kind: Arc<str>,
    pub data: Arc<str>,
}

impl Frame {
    /// A frame of `kind` whose data is `fields` with `"type": kind` added.
    pub fn new(kind: &str, mut fields: Value) -> Self {
        if let Value::Object(map) = &mut fields {
            map.insert("type".into(), json!(kind));
        }
        Frame { kind: kind.into(), data: fields.to_string().into() }
    }

    /// A run's event, serialized with serde exactly as the engine defines it.
    pub fn event(event: &Event) -> Self {
        Frame::event_of(event, None)
    }

    /// A run's event; `turn_id` (the turn whose run it is) is added for a turn's events.
    pub fn event_of(event: &Event, turn_id: Option<&str>) -> Self {
        let mut value = serde_json::to_value(event)
            .unwrap_or_else(|e| json!({"type": "unserializable", "seq": event.seq, "error": e.to_string()}));
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("event").to_string();
        if let (Some(turn_id), Value::Object(map)) = (turn_id, &mut value) {
            map.insert("turn_id".into(), json!(turn_id));
        }
        Frame { kind: kind.into(), data: value.to_string().into() }
    }

    /// The frame as an SSE event whose id is its position in the stream (from 1).
    pub fn sse(&self, position: usize) -> SseEvent {
        self.sse_with_id(&position.to_string())
    }

    /// The frame as an SSE event with the id `id`.
    pub fn sse_with_id(&self, id: &str) -> SseEvent {
        SseEvent::default().event(&*self.kind).id(id).data(&*self.data)
    }
}

/// A turn as its final frame and the REST reply show it.
pub(crate) fn turn_json(flow: &str, turn_id: &str, turn: &Turn) -> Value {
    json!({
        "turn_id": turn_id,
        "flow": flow,
        "session_id": turn.session_id.as_str(),
        "index": turn.index,
        "run_id": turn.run_id.to_string(),
        "reply": turn.reply,
        "intent": turn.intent,
        "routes": turn.routes,
        "usage": turn.usage,
        "compacted": turn.compacted,
        "repeated": turn.repeated,
        "elapsed_ms": u64::try_from(turn.elapsed.as_millis()).unwrap_or(u64::MAX),
    })
}

/// A turn stream's item as a frame.
pub(crate) fn turn_frame(flow: &str, turn_id: &str, event: &TurnEvent) -> Frame {
    match event {
        TurnEvent::Token(text) => Frame::new("token", json!({"turn_id": turn_id, "text": text})),
        TurnEvent::ToolCall { id, name, arguments } => {
            Frame::new("tool_call", json!({"turn_id": turn_id, "id": id, "name": name, "arguments": arguments}))
        }
        TurnEvent::Event(e) => Frame::event_of(e, Some(turn_id)),
        TurnEvent::Finished(turn) => Frame::new("turn_finished", json!({"turn": turn_json(flow, turn_id, turn)})),
        _ => Frame::new("turn_event", json!({"turn_id": turn_id, "debug": format!("{event:?}")})),
    }
}
