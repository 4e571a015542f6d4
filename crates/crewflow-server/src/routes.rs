//! The router, the state its handlers share, and the run handlers (start, show, list, events,
//! feedback).

use crewflow_core::{DurableError, FeedbackError};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use crewflow_core::persist::{LoadRun, ParentStep, RunFilter, RunStatus, RunStore, StoredRun};
use crewflow_core::{Error, RunId};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::chat::HostedChat;
use crate::error::ApiError;
use crate::frames::Frame;
use crate::hosted::{Driven, Hosted};
use crate::lanes::{DoubleTexting, Lanes};
use crate::live::{Ended, Live, Table};
use crate::{flows, openapi, page, runs, schedules, sessions};

/// What every handler shares.
pub(crate) struct App {
    pub store: Arc<dyn RunStore>,
    pub flows: BTreeMap<String, Arc<dyn Hosted>>,
    pub chats: BTreeMap<String, (Arc<dyn HostedChat>, DoubleTexting)>,
    pub live: Table,
    pub lanes: Arc<Lanes>,
    /// Sessions created (`POST /sessions`) that have no turn yet.
    pub reserved: sessions::Reservations,
    /// The largest WebSocket message taken (the configured body limit).
    pub max_message_bytes: usize,
    /// The tenant whose schedules this server sees (`""` without tenants).
    pub tenant: String,
    /// How this server fires schedules.
    pub scheduling: schedules::Scheduling,
    /// Why a schedule's latest tick could not fire here, by schedule id (cleared by a fire).
    pub schedule_errors: schedules::Errors,
    /// Counts the runs and turns going, refuses new ones once shutting down.
    pub drain: crate::Drain,
    /// Whether `GET /` serves the web page.
    pub page: bool,
}

pub(crate) type Shared = State<Arc<App>>;
pub(crate) type Reply = Result<Response, ApiError>;

/// Declares the routes once: the router and the list of `(method, path)` the OpenAPI document
/// must cover come from the same table.
macro_rules! routes {
    ($($path:literal => $m1:ident($h1:path) $(. $m:ident($h:path))* ;)*) => {
        /// Every route: (method, path).
        pub(crate) const ROUTES: &[(&str, &str)] = &[$((stringify!($m1), $path), $((stringify!($m), $path),)*)*];

        fn table() -> Router<Arc<App>> {
            Router::new()$(.route($path, axum::routing::$m1($h1)$(.$m($h))*))*
        }
    };
}

routes! {
    "/" => get(page::page);
    "/flows" => get(flows::list_flows);
    "/flows/{flow}" => get(flows::describe_flow);
    "/flows/{flow}/plot" => get(flows::plot_flow);
    "/flows/{flow}/runs" => post(start_run);
    "/runs" => get(list_runs);
    "/runs/{id}" => get(get_run);
    "/runs/{id}/events" => get(run_events);
    "/runs/{id}/feedback" => post(answer_feedback);
    "/runs/{id}/cancel" => post(runs::cancel_run);
    "/runs/{id}/resume" => post(runs::resume_run);
    "/runs/{id}/fork" => post(runs::fork_run);
    "/feedback" => get(list_feedback);
    "/sessions" => get(sessions::list_sessions).post(sessions::create_session);
    "/sessions/{id}" => get(sessions::get_session).delete(sessions::delete_session);
    "/sessions/{id}/turns" => post(sessions::post_turn);
    "/sessions/{id}/ws" => get(sessions::session_ws);
    "/flows/{flow}/schedules" => post(schedules::create_schedule);
    "/schedules" => get(schedules::list_schedules);
    "/schedules/{id}" => get(schedules::get_schedule).delete(schedules::delete_schedule);
    "/openapi.json" => get(openapi::document);
}

pub(crate) fn router(server: crate::Server) -> Router {
    let notifier =
        server.webhook.map(|hook| crate::webhooks::Notifier::start(hook, server.store.clone(), server.tenant.clone()));
    let app = App {
        store: server.store,
        flows: server.flows,
        chats: server.chats,
        live: Table::new(server.keep_events).notify(notifier),
        lanes: Arc::default(),
        reserved: sessions::Reservations::new(server.reservation_ttl),
        max_message_bytes: server.config.max_body_bytes,
        tenant: server.tenant,
        scheduling: server.scheduling,
        schedule_errors: schedules::Errors::default(),
        drain: server.drain.clone(),
        page: server.page,
    };
    let drain = server.drain;
    let app = Arc::new(app);
    schedules::spawn(&app);
    table()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            crate::drain::refuse_work_when_draining(drain.clone(), request, next)
        }))
        // Bodies are read (within the configured limit) before the handlers: see config.rs.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

impl App {
    pub(crate) fn flow(&self, name: &str) -> Result<&Arc<dyn Hosted>, ApiError> {
        self.flows.get(name).ok_or_else(|| self.unknown_flow(name))
    }
}

async fn not_found() -> ApiError {
    no_route()
}

pub(crate) fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; GET /openapi.json lists the routes")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not served on {}; see docs/server.md for each route's method", uri.path()),
    )
}

pub(crate) fn path_error(e: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path: {e}"))
}

pub(crate) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", e.body_text()))
}

pub(crate) fn body_error(e: BytesRejection) -> ApiError {
    let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "bad_request" };
    ApiError::new(e.status(), code, format!("the body could not be read: {}", e.body_text()))
}

pub(crate) fn parse_run_id(text: &str) -> Result<RunId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_run",
            format!("`{text}` is not a run id (a UUID such as 0193f7a2-…); GET /runs lists them"),
        )
    })
}

/// A JSON object body; empty means `{}`.
pub(crate) fn object_body(body: &Bytes, what: &str) -> Result<Map<String, Value>, ApiError> {
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
pub(crate) struct WaitQuery {
    #[serde(default)]
    pub wait: bool,
}

pub(crate) fn outcome_json(run_id: RunId, flow: &str, ended: &Ended) -> (StatusCode, Value) {
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
pub(crate) fn drive(app: &App, live: Arc<Live>, driven: Driven) {
    let Driven { run_id, run, events, cancel } = driven;
    live.set_cancel(cancel);
    let tracked = app.drain.track(format!("run {run_id}"));
    tokio::spawn(async move {
        let _tracked = tracked; // counted as going until the run's end is recorded
        let pump = async {
            let mut events = events;
            while let Some(event) = events.next().await {
                live.push(Frame::event(&event));
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

/// Answers `202 {"run_id", "flow", "status": "running"}`, or waits for the run's end (or
/// pause) with `?wait=true` and answers its result.
pub(crate) async fn accepted_or_wait(live: &Live, run_id: RunId, flow: &str, wait: bool) -> Reply {
    if !wait {
        // Answered once the run is in the store, so a client listing runs right after the 202
        // sees it; a run that could not be recorded (or an answer refused) answers its error.
        match live.recorded().await {
            Some(Ended::Err { refused: true, message, status, code, .. }) => {
                return Err(ApiError::new(status, code, message));
            }
            Some(Ended::Err { status: StatusCode::SERVICE_UNAVAILABLE, message, code, .. }) => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message));
            }
            _ => {}
        }
        let body = json!({"run_id": run_id.to_string(), "flow": flow, "status": "running"});
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    match live.wait().await {
        Ended::Err { refused: true, message, status, code, .. } => Err(ApiError::new(status, code, message)),
        // The run could not even be recorded: the store is down, not the run at fault.
        Ended::Err { status: StatusCode::SERVICE_UNAVAILABLE, message, code, .. } => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message))
        }
        ended => {
            let (status, body) = outcome_json(run_id, flow, &ended);
            Ok((status, Json(body)).into_response())
        }
    }
}

/// Errors that leave the run as it was (an answer refused), rather than failing it.
fn refused(e: &Error) -> bool {
    matches!(
        e,
        Error::Feedback(FeedbackError::UnmatchedFeedback { .. })
            | Error::Feedback(FeedbackError::FeedbackRequestNeeded { .. })
            | Error::Feedback(FeedbackError::NotPaused { .. })
            | Error::Durable(DurableError::RunOwned(_))
            | Error::Durable(DurableError::AlreadyDriven { .. })
            | Error::Durable(DurableError::UnknownRun { .. })
            | Error::Durable(DurableError::DefinitionChanged { .. })
            | Error::Durable(DurableError::Store { .. })
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
    let driven = hosted.start(inputs).map_err(ApiError::engine)?;
    let run_id = driven.run_id;
    let live = app.live.begin(run_id, &flow).ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "run_busy", format!("run {run_id} is already being driven"))
    })?;
    drive(&app, live.clone(), driven);
    accepted_or_wait(&live, run_id, &flow, query.wait).await
}

#[derive(Deserialize)]
struct ListQuery {
    flow: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
    parent: Option<String>,
}

/// A nested run's parent step execution, as JSON (`null` for a top-level run).
fn parent_json(parent: Option<ParentStep>) -> Value {
    parent.map_or(Value::Null, |p| json!({"run_id": p.run_id.to_string(), "activation": p.activation}))
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
    let parent = match query.parent.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<crewflow_core::RunId>().map_err(|_| {
            ApiError::bad_request(format!("`parent` is `{text}`; it must be a run id (the outer run of nested runs)"))
        })?),
    };
    let filter = RunFilter { flow: query.flow.filter(|f| !f.is_empty()), status, limit, parent };
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
                "parent": parent_json(r.parent),
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
        "parent": parent_json(stored.parent),
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

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<String>,
}

/// Where a reconnecting client resumes: a position in this process's stream of the run (`12`),
/// or in the store's replay of it (`s3`).
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Memory(usize),
    Store(usize),
}

/// The cursor of the `Last-Event-ID` header (what `EventSource` sends by itself), or of
/// `?after=`; the start for a first connection.
fn resume_after(headers: &HeaderMap, query: &EventsQuery) -> Result<Cursor, ApiError> {
    let (text, what) = match headers.get("last-event-id") {
        Some(header) => (header.to_str().unwrap_or("?").trim().to_string(), "`Last-Event-ID`"),
        None => (query.after.clone().unwrap_or_default().trim().to_string(), "`after`"),
    };
    if text.is_empty() {
        return Ok(Cursor::Memory(0));
    }
    let parsed = match text.strip_prefix('s') {
        Some(n) => n.parse().map(Cursor::Store),
        None => text.parse().map(Cursor::Memory),
    };
    parsed.map_err(|_| {
        ApiError::bad_request(format!(
            "{what} is `{text}`; it must be the `id:` of a frame of this stream (a number, or `s` and a number for frames replayed from the store), or absent"
        ))
    })
}

async fn run_events(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let run_id = parse_run_id(&id)?;
    let Query(query) = query.map_err(query_error)?;
    let cursor = resume_after(&headers, &query)?;
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
    let (live, after) = match (app.live.get(run_id), cursor) {
        (Some(live), Cursor::Memory(after)) => (live, after),
        // Not kept here (a restart, another instance, evicted), or a client continuing a
        // replay: the store tells what it knows. A position in another process's stream
        // cannot be placed in the store's, so the replay starts at the run's first step.
        (_, cursor) => {
            if app.store.load_run_with(run_id, LoadRun::new()).await.map_err(ApiError::store)?.is_none() {
                return Err(ApiError::unknown_run(&id));
            }
            let skip = match cursor {
                Cursor::Store(skip) => skip,
                Cursor::Memory(_) => 0,
            };
            return Ok(Sse::new(crate::replay::stream(app.clone(), run_id, skip))
                .keep_alive(keep_alive)
                .into_response());
        }
    };
    let stream = futures::stream::unfold((live, after), |(live, mut cursor)| async move {
        let mut rx = live.subscribe();
        loop {
            rx.borrow_and_update();
            let (frames, ended) = live.frames_from(cursor);
            if !frames.is_empty() {
                let batch: Vec<Result<_, Infallible>> =
                    frames.iter().enumerate().map(|(i, f)| Ok(f.sse(cursor + i + 1))).collect();
                cursor += frames.len();
                return Some((futures::stream::iter(batch), (live, cursor)));
            }
            if ended || rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .flatten();
    Ok(Sse::new(stream).keep_alive(keep_alive).into_response())
}

async fn list_feedback(State(app): Shared) -> Reply {
    let filter = RunFilter { flow: None, status: Some(RunStatus::Paused), limit: 1000, ..Default::default() };
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
            Err(Error::Durable(DurableError::Store { .. })) => {
                return Err(ApiError::store("loading a paused run failed"));
            }
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
    let driven = match hosted.answer(run_id, answer) {
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
    drive(&app, live.clone(), driven);
    accepted_or_wait(&live, run_id, &stored.flow, query.wait).await
}
