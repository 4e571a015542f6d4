//! The handlers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crewflow_core::persist::{RunFilter, RunStatus, RunStore, StoredRun};
use crewflow_core::{Error, RunId};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::hosted::{Hosted, Outcome};
use crate::live::{Ended, Live, Table};

struct App {
    store: Arc<dyn RunStore>,
    flows: BTreeMap<String, Arc<dyn Hosted>>,
    live: Table,
}

type Shared = State<Arc<App>>;
type Reply = Result<Response, ApiError>;

pub(crate) fn router(server: crate::Server) -> Router {
    let app = App { store: server.store, flows: server.flows, live: Table::new(server.keep_events) };
    Router::new()
        .route("/flows", get(list_flows))
        .route("/flows/{flow}/runs", post(start_run))
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/feedback", post(answer_feedback))
        .route("/feedback", get(list_feedback))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Arc::new(app))
}

impl App {
    fn flow(&self, name: &str) -> Result<&Arc<dyn Hosted>, ApiError> {
        self.flows
            .get(name)
            .ok_or_else(|| ApiError::unknown_flow(name, &self.flows.keys().cloned().collect::<Vec<_>>()))
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; the routes are /flows, /flows/{flow}/runs, /runs, /runs/{id}, /runs/{id}/events, /runs/{id}/feedback and /feedback",
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served on {}; see docs/server.md for each route's method", uri.path()),
    )
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path: {e}"))
}

fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", e.body_text()))
}

fn body_error(e: BytesRejection) -> ApiError {
    let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_request" };
    ApiError::new(e.status(), code, format!("the body could not be read: {}", e.body_text()))
}

fn parse_run_id(text: &str) -> Result<RunId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_run",
            format!("`{text}` is not a run id (a UUID such as 0193f7a2-…); GET /runs lists them"),
        )
    })
}

/// A JSON object body; empty means `{}`.
fn object_body(body: &Bytes, what: &str) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::bad_request(format!("the body must be a JSON object of {what}, not {other}"))),
        Err(e) => Err(ApiError::bad_request(format!("the body is not valid JSON: {e}"))),
    }
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    wait: bool,
}

async fn list_flows(State(app): Shared) -> Json<Value> {
    let flows: Vec<Value> = app.flows.values().map(|f| json!({"name": f.name(), "steps": f.steps()})).collect();
    Json(json!({ "flows": flows }))
}

fn outcome_json(run_id: RunId, flow: &str, ended: &Ended) -> (StatusCode, Value) {
    let body = match ended {
        Ended::Ok(outcome) => match &outcome.paused {
            Some(request) => json!({
                "run_id": run_id.to_string(), "flow": flow, "status": "paused",
                "steps": outcome.steps, "output": outcome.output, "feedback": request,
            }),
            None => json!({
                "run_id": run_id.to_string(), "flow": flow, "status": "finished",
                "steps": outcome.steps, "output": outcome.output,
            }),
        },
        Ended::Err { cancelled, message, .. } => json!({
            "run_id": run_id.to_string(), "flow": flow,
            "status": if *cancelled { "cancelled" } else { "failed" }, "error": message,
        }),
    };
    (StatusCode::OK, body)
}

/// Drives a started or resumed run in the background, recording its events and its end.
fn drive(live: Arc<Live>, run: crate::hosted::Fut<Outcome>, events: crewflow_core::EventStream) {
    tokio::spawn(async move {
        let pump = async {
            let mut events = events;
            while let Some(event) = events.next().await {
                live.push(&event);
            }
        };
        let (result, ()) = tokio::join!(run, pump);
        live.end(match result {
            Ok(outcome) => Ended::Ok(Box::new(outcome)),
            Err(e) => {
                let cancelled = matches!(e, Error::Cancelled { .. });
                let refused = refused(&e);
                let api = ApiError::engine(e);
                Ended::Err { cancelled, refused, message: api.message, status: api.status, code: api.code }
            }
        });
    });
}

/// Errors that leave the run as it was (an answer refused), rather than failing it.
fn refused(e: &Error) -> bool {
    matches!(
        e,
        Error::UnmatchedFeedback { .. }
            | Error::FeedbackRequestNeeded { .. }
            | Error::NotPaused { .. }
            | Error::RunOwned(_)
            | Error::AlreadyDriven { .. }
            | Error::UnknownRun { .. }
            | Error::DefinitionChanged { .. }
            | Error::Store { .. }
    )
}

async fn start_run(
    State(app): Shared,
    flow: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(body_error)?;
    let Path(flow) = flow.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let hosted = app.flow(&flow)?.clone();
    let inputs = object_body(&body, "the run's inputs")?;
    let (run_id, run, events) = hosted.start(inputs).map_err(ApiError::engine)?;
    let live = app.live.begin(run_id, &flow).ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "run_busy", format!("run {run_id} is already being driven"))
    })?;
    drive(live.clone(), run, events);
    if !query.wait {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": run_id.to_string(), "flow": flow, "status": "running"})),
        )
            .into_response());
    }
    let ended = live.wait().await;
    // The run could not even be recorded: the store is down, not the run at fault.
    if let Ended::Err { status: StatusCode::SERVICE_UNAVAILABLE, message, code, .. } = ended {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message));
    }
    let (status, body) = outcome_json(run_id, &flow, &ended);
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    flow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(State(app): Shared, query: Result<Query<ListQuery>, QueryRejection>) -> Reply {
    let Query(query) = query.map_err(query_error)?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(text) => Some(RunStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "`status` is `{text}`; it must be one of queued, running, paused, finished, failed, cancelled"
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(format!("`limit` is {limit}; it must be between 1 and 1000")));
    }
    let filter = RunFilter { flow: query.flow.filter(|f| !f.is_empty()), status, limit };
    let runs = app.store.list_runs(&filter).await.map_err(ApiError::store)?;
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "run_id": r.run_id.to_string(),
                "flow": r.flow,
                "status": r.status.as_str(),
                "steps": r.steps_done,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
                "error": r.error,
            })
        })
        .collect();
    Ok(Json(json!({ "runs": runs })).into_response())
}

fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

async fn stored_json(app: &App, stored: &StoredRun) -> Value {
    let steps: Vec<Value> = stored
        .steps
        .iter()
        .map(|s| {
            json!({"activation": s.activation, "step": &*s.step, "output": parse_json(&s.output), "finished_at": s.finished_at})
        })
        .collect();
    let output = match (stored.status, stored.final_activation) {
        (RunStatus::Finished, Some(a)) => {
            stored.steps.iter().find(|s| s.activation == a).map(|s| parse_json(&s.output)).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    let mut body = json!({
        "run_id": stored.run_id.to_string(),
        "flow": stored.flow,
        "status": stored.status.as_str(),
        "output": output,
        "error": stored.error,
        "inputs": stored.inputs.as_deref().map(parse_json),
        "steps": steps,
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
    });
    if stored.status == RunStatus::Paused
        && let Some(hosted) = app.flows.get(&stored.flow)
        && let Ok(pending) = hosted.pending(stored.run_id).await
    {
        body["feedback"] = json!(pending);
    }
    // An answer refused in the background leaves the run paused: say why.
    if let Some(live) = app.live.get(stored.run_id)
        && let Some(Ended::Err { refused: true, message, .. }) = live.ended()
        && stored.status == RunStatus::Paused
    {
        body["last_answer_error"] = json!(message);
    }
    body
}

async fn get_run(State(app): Shared, id: Result<Path<String>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let run_id = parse_run_id(&id)?;
    let stored = app.store.load_run(run_id).await.map_err(ApiError::store)?;
    if let Some(stored) = stored {
        return Ok(Json(stored_json(&app, &stored).await).into_response());
    }
    // Started here but not recorded yet (or never: the store refused it).
    match app.live.get(run_id) {
        Some(live) => {
            let body = match live.ended() {
                None => json!({"run_id": run_id.to_string(), "flow": live.flow, "status": "running", "steps": []}),
                Some(ended) => outcome_json(run_id, &live.flow, &ended).1,
            };
            Ok(Json(body).into_response())
        }
        None => Err(ApiError::unknown_run(&id)),
    }
}

async fn run_events(State(app): Shared, id: Result<Path<String>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let run_id = parse_run_id(&id)?;
    let Some(live) = app.live.get(run_id) else {
        let known = app.store.load_run(run_id).await.map_err(ApiError::store)?.is_some();
        return Err(if known {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_events",
                format!(
                    "run {run_id} was not started by this server process (or long ago): its events are gone; GET /runs/{run_id} shows its steps"
                ),
            )
        } else {
            ApiError::unknown_run(&id)
        });
    };
    let stream = futures::stream::unfold((live, 0usize, false), |(live, mut cursor, done)| async move {
        if done {
            return None;
        }
        let mut rx = live.subscribe();
        loop {
            rx.borrow_and_update();
            let (frames, ended) = live.frames_from(cursor);
            if !frames.is_empty() {
                let batch: Vec<Result<SseEvent, Infallible>> =
                    frames.iter().enumerate().map(|(i, f)| Ok(sse_event(cursor + i + 1, f))).collect();
                cursor += frames.len();
                return Some((futures::stream::iter(batch), (live, cursor, false)));
            }
            if ended {
                return None;
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// One event as an SSE frame: its type as the event name, its position in the stream (from 1;
/// a continued run's own `seq` starts again after `run_resumed`) as the id, its JSON as data.
fn sse_event(position: usize, frame: &str) -> SseEvent {
    let kind: Option<String> = serde_json::from_str::<Value>(frame)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_string));
    let event = SseEvent::default().data(frame).id(position.to_string());
    match kind {
        Some(kind) => event.event(kind),
        None => event,
    }
}

async fn list_feedback(State(app): Shared) -> Reply {
    let filter = RunFilter { flow: None, status: Some(RunStatus::Paused), limit: 1000 };
    let runs = app.store.list_runs(&filter).await.map_err(ApiError::store)?;
    let mut pending = Vec::new();
    for run in runs {
        let Some(hosted) = app.flows.get(&run.flow) else { continue };
        match hosted.pending(run.run_id).await {
            Ok(requests) => {
                for request in requests {
                    pending.push(json!({"run_id": run.run_id.to_string(), "flow": run.flow, "request": request}));
                }
            }
            Err(Error::Store { .. }) => return Err(ApiError::store("loading a paused run failed")),
            // A run of an earlier definition, or answered meanwhile: not answerable here.
            Err(_) => {}
        }
    }
    Ok(Json(json!({ "feedback": pending })).into_response())
}

async fn answer_feedback(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WaitQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(body_error)?;
    let Path(id) = id.map_err(path_error)?;
    let run_id = parse_run_id(&id)?;
    let Query(query) = query.map_err(query_error)?;
    let body = object_body(&body, "the answer")?;
    let answer = match body.get("answer") {
        Some(Value::String(text)) => text.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!("`answer` must be a string, not {other}")));
        }
        None => return Err(ApiError::bad_request("the body needs `answer`: {\"answer\": \"approved\"}")),
    };
    if let Some(extra) = body.keys().find(|k| k.as_str() != "answer") {
        return Err(ApiError::bad_request(format!("unknown field `{extra}`; the body is {{\"answer\": \"...\"}}")));
    }
    let stored =
        app.store.load_run(run_id).await.map_err(ApiError::store)?.ok_or_else(|| ApiError::unknown_run(&id))?;
    let hosted = app.flow(&stored.flow)?.clone();
    let busy = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_paused",
            format!(
                "run {run_id} is running (already answered, or not paused yet); GET /runs/{run_id} shows where it stands"
            ),
        )
    };
    if app.live.get(run_id).is_some_and(|l| l.ended().is_none()) {
        return Err(busy());
    }
    if stored.status != RunStatus::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_paused",
            format!("run {run_id} is {}, not paused: there is nothing to answer", stored.status.as_str()),
        ));
    }
    let live = app.live.begin(run_id, &stored.flow).ok_or_else(busy)?;
    let (run, events) = match hosted.answer(run_id, answer) {
        Ok(started) => started,
        Err(e) => {
            let api = ApiError::engine(e);
            let ended = Ended::Err {
                cancelled: false,
                refused: true,
                message: api.message.clone(),
                status: api.status,
                code: api.code,
            };
            live.end(ended);
            return Err(api);
        }
    };
    drive(live.clone(), run, events);
    if !query.wait {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": run_id.to_string(), "flow": stored.flow, "status": "running"})),
        )
            .into_response());
    }
    match live.wait().await {
        Ended::Err { refused: true, message, status, code, .. } => Err(ApiError::new(status, code, message)),
        ended => {
            let (status, body) = outcome_json(run_id, &stored.flow, &ended);
            Ok((status, Json(body)).into_response())
        }
    }
}
