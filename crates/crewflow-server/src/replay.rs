//! A run's events told from the store, for runs whose events this process does not keep (it
//! restarted, another instance drives the run, or it was evicted): one `step_finished` frame
//! per stored step, then the run's end (or pause) once the store has it.
//!
//! The store keeps each completed step (its activation, output and time) and the run's status,
//! output, error and pending feedback, not every event: so a replay holds those frames only
//! (no `step_started`, `route_taken`, `llm_chunk`, ...), each marked `"replayed": true`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use crewflow_core::RunId;
use crewflow_core::persist::{RunStatus, StoredRun};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::frames::Frame;
use crate::routes::App;

/// How often a replay looks in the store for what a run still running did since.
pub(crate) const STORE_POLL: Duration = Duration::from_millis(250);

/// The frames the store tells of a run: its steps in the order they were recorded, then its
/// end or pause (none while it runs).
async fn frames_of(app: &App, stored: &StoredRun) -> (Vec<Frame>, Option<Frame>) {
    let run_id = stored.run_id.to_string();
    let mut steps: Vec<_> = stored.steps.iter().collect();
    // The order a live stream saw them in: by completion. (Activation order differs when
    // parallel steps finish out of order; a step recorded later finishes later.)
    steps.sort_by_key(|s| (s.finished_at, s.activation));
    let frames = steps
        .iter()
        .map(|s| {
            Frame::new(
                "step_finished",
                json!({
                    "run_id": run_id, "at": s.finished_at, "step": &*s.step, "activation": s.activation,
                    "output": parse_json(&s.output), "replayed": true,
                }),
            )
        })
        .collect();
    let end = |kind: &str, mut fields: Value| {
        if let Value::Object(map) = &mut fields {
            map.extend([
                ("run_id".to_string(), json!(run_id)),
                ("at".to_string(), json!(stored.updated_at)),
                ("step".to_string(), Value::Null),
                ("replayed".to_string(), json!(true)),
            ]);
        }
        Some(Frame::new(kind, fields))
    };
    let ended = match stored.status {
        RunStatus::Running | RunStatus::Queued => None,
        RunStatus::Finished => {
            let output = stored
                .final_activation
                .and_then(|a| stored.steps.iter().find(|s| s.activation == a))
                .map_or(Value::Null, |s| parse_json(&s.output));
            end("run_finished", json!({"output": output, "steps": stored.steps.len()}))
        }
        RunStatus::Failed => end("run_failed", json!({"error": stored.error})),
        RunStatus::Cancelled => end("run_cancelled", json!({})),
        RunStatus::Paused => {
            let pending = match app.flows.get(&stored.flow) {
                Some(hosted) => hosted.pending(stored.run_id).await.unwrap_or_default(),
                None => Vec::new(),
            };
            let message = pending.first().map(|r| r.message.clone()).unwrap_or_default();
            end("run_paused", json!({"message": message, "feedback": pending}))
        }
    };
    (frames, ended)
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The run's stored frames after the first `skip` steps, then new ones as the store records
/// them, to the run's end or pause. Step `i` (from 1) has the SSE id `s<i>`; the end has the
/// id of the last step, so a reconnect after it sends the end again (the state then), never
/// skips a step recorded after a pause.
pub(crate) fn stream(
    app: Arc<App>,
    run_id: RunId,
    skip: usize,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures::stream::unfold(Some((app, skip)), move |state| async move {
        let (app, mut sent) = state?;
        loop {
            let stored = match app.store.load_run(run_id).await {
                Ok(Some(stored)) => stored,
                // Deleted meanwhile, or the store is down: say so and end; the client
                // reconnects from its last id.
                Ok(None) => return Some((vec![error_event("unknown_run", "the run is gone from the store")], None)),
                Err(e) => {
                    let message = format!("the run store did not answer: {e}; reconnect with Last-Event-ID");
                    return Some((vec![error_event("store_unavailable", &message)], None));
                }
            };
            let (steps, end) = frames_of(&app, &stored).await;
            let mut out: Vec<SseEvent> = Vec::new();
            for (i, frame) in steps.iter().enumerate().skip(sent) {
                out.push(frame.sse_with_id(&format!("s{}", i + 1)));
            }
            sent = sent.max(steps.len());
            if let Some(end) = end {
                out.push(end.sse_with_id(&format!("s{}", steps.len())));
                return Some((out, None));
            }
            if !out.is_empty() {
                return Some((out, Some((app, sent))));
            }
            tokio::time::sleep(STORE_POLL).await;
        }
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
}

/// A frame saying the replay stopped; it has no id, so the client's `Last-Event-ID` stays.
fn error_event(code: &str, message: &str) -> SseEvent {
    let data = json!({"type": "stream_error", "error": {"code": code, "message": message}});
    SseEvent::default().event("stream_error").data(data.to_string())
}
