//! Sessions and turns of conversational flows: REST, SSE and the WebSocket, all three driving
//! a turn through [`run_turn`] and its [`Frame`]s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use crewflow_chat::{ChatError, SessionId, TurnEvent, check_turn_key};
use crewflow_core::RunId;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::chat::HostedChat;
use crate::error::ApiError;
use crate::frames::{Frame, turn_frame};
use crate::lanes::{DoubleTexting, Ticket};
use crate::routes::{App, Reply, Shared, body_error, object_body, path_error, query_error};

/// A session's flow, found by its id.
struct Located {
    flow: String,
    chat: Arc<dyn HostedChat>,
    strategy: DoubleTexting,
    id: SessionId,
    /// The store was not asked whether it has the session: the turn's own read of it refuses
    /// an unknown id ([`App::locate_turn`]).
    unchecked: bool,
}

impl Located {
    fn key(&self) -> String {
        format!("{}\0{}", self.flow, self.id)
    }
}

fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::new(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn unknown_session(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_session",
        format!("no session `{id}` here; create it with POST /sessions, GET /sessions lists them"),
    )
}

/// A conversation's error, with the status it deserves.
fn chat_error(e: ChatError) -> ApiError {
    let (status, code) = match &e {
        ChatError::SessionBusy { .. } => (StatusCode::CONFLICT, "session_busy"),
        ChatError::UnknownSession { .. } => (StatusCode::NOT_FOUND, "unknown_session"),
        ChatError::SessionConflict(_) => (StatusCode::CONFLICT, "session_conflict"),
        ChatError::InvalidSessionId { .. } | ChatError::InvalidTurnKey { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        ChatError::TurnKeyReused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "turn_key_reused"),
        ChatError::Store { .. } => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        ChatError::CorruptSession { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_session"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "turn_failed"),
    };
    ApiError::new(status, code, e.to_string())
}

impl App {
    /// The flow a session belongs to: one created here and not started yet, or one a chat
    /// flow's store has.
    async fn locate(&self, text: &str) -> Result<Located, ApiError> {
        self.find(text, false).await
    }

    /// [`locate`](App::locate) for a turn answered whole (REST): with one conversational flow
    /// the store is not asked first, the turn's own read of the session refuses an unknown id
    /// (`unknown_session` all the same), so a turn reads its session once, not twice. Streamed
    /// turns are located first: their `404` comes before the stream's `200`.
    async fn locate_turn(&self, text: &str) -> Result<Located, ApiError> {
        self.find(text, true).await
    }

    async fn find(&self, text: &str, turn_checks: bool) -> Result<Located, ApiError> {
        let id = session_id(text)?;
        let reserved = self.reserved.flow_of(text);
        let found = |flow: &str, id: SessionId, unchecked: bool| {
            self.chats.get(flow).map(|(chat, strategy)| Located {
                flow: flow.to_string(),
                chat: chat.clone(),
                strategy: *strategy,
                id,
                unchecked,
            })
        };
        if let Some(located) = reserved.and_then(|flow| found(&flow, id.clone(), false)) {
            return Ok(located);
        }
        if let (true, 1, Some(flow)) = (turn_checks, self.chats.len(), self.chats.keys().next()) {
            return found(flow, id, true).ok_or_else(|| unknown_session(text));
        }
        for (flow, (chat, _)) in &self.chats {
            if chat.exists(id.clone()).await.map_err(chat_error)? {
                return found(flow, id, false).ok_or_else(|| unknown_session(text));
            }
        }
        Err(unknown_session(text))
    }

    fn reserved_remove(&self, id: &str) {
        self.reserved.remove(id);
    }
}

/// Sessions created (`POST /sessions`) that have no saved turn yet, by id: their flow and when
/// a request last named them. A session is stored with its first turn; until then only this
/// process knows it. A reservation no request names for the TTL lapses (the id is free again),
/// so clients that create sessions and never use them do not grow the map without end.
pub(crate) struct Reservations {
    map: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
    ttl: std::time::Duration,
}

impl Reservations {
    pub(crate) fn new(ttl: std::time::Duration) -> Self {
        Reservations { map: std::sync::Mutex::default(), ttl }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (String, std::time::Instant)>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The reserved session's flow, if the reservation holds (it is renewed: the session is in
    /// use).
    fn flow_of(&self, id: &str) -> Option<String> {
        let mut map = self.lock();
        let now = std::time::Instant::now();
        match map.get_mut(id) {
            Some((flow, at)) if now.duration_since(*at) < self.ttl => {
                *at = now;
                Some(flow.clone())
            }
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Reserves `id` for `flow`, dropping lapsed reservations first (the map holds at most
    /// the sessions reserved within one TTL); `false` if it is reserved already.
    fn reserve(&self, id: &str, flow: &str) -> bool {
        let mut map = self.lock();
        let now = std::time::Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
        if map.contains_key(id) {
            return false;
        }
        map.insert(id.to_string(), (flow.to_string(), now));
        true
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    flow: Option<String>,
    id: Option<String>,
}

/// Creates a session (`{"flow", "id"}`, both optional: the only conversational flow, a new
/// id). It is stored with its first turn.
pub(crate) async fn create_session(State(app): Shared, body: Result<Bytes, BytesRejection>) -> Reply {
    let body = object_body(&body.map_err(body_error)?, "the session's flow and id")?;
    let body: CreateBody = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::bad_request(format!("{e}; the body is {{\"flow\": \"...\", \"id\": \"...\"}}")))?;
    let flow = match body.flow {
        Some(flow) if app.chats.contains_key(&flow) => flow,
        Some(flow) => return Err(app.unknown_flow(&flow)),
        None if app.chats.len() == 1 => app.chats.keys().next().cloned().unwrap_or_default(),
        None => {
            let names: Vec<&str> = app.chats.keys().map(String::as_str).collect();
            return Err(ApiError::bad_request(format!(
                "name the session's flow: {{\"flow\": \"...\"}}, one of the conversational flows ({})",
                names.join(", ")
            )));
        }
    };
    let id = match body.id {
        Some(text) => session_id(&text)?,
        None => SessionId::generate(),
    };
    let taken = match app.locate(id.as_str()).await {
        Ok(_) => true,
        Err(e) if e.code == "unknown_session" => false,
        Err(e) => return Err(e),
    };
    if taken || !app.reserved.reserve(id.as_str(), &flow) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_exists",
            format!(
                "session `{id}` exists already; post its turns to /sessions/{id}/turns, or create one without an id"
            ),
        ));
    }
    let body = json!({"id": id.as_str(), "flow": flow, "turns": 0});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(crate) async fn get_session(State(app): Shared, id: Result<Path<String>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let located = app.locate(&id).await?;
    let mut body = match located.chat.history(located.id.clone()).await.map_err(chat_error)? {
        Some(history) => history,
        // Created here, no turn yet.
        None => json!({"id": id, "flow": located.flow, "messages": [], "summary": null, "turns": []}),
    };
    body["running_turns"] = json!(app.lanes.len(&located.key()));
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    flow: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list_sessions(State(app): Shared, query: Result<Query<ListQuery>, QueryRejection>) -> Reply {
    let Query(query) = query.map_err(query_error)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(format!("`limit` is {limit}; it must be between 1 and 1000")));
    }
    let flow = query.flow.filter(|f| !f.is_empty());
    if let Some(flow) = &flow
        && !app.chats.contains_key(flow)
    {
        return Err(app.unknown_flow(flow));
    }
    let mut sessions = Vec::new();
    for (name, (chat, _)) in &app.chats {
        if flow.as_ref().is_none_or(|f| f == name) {
            sessions.extend(chat.list(limit).await.map_err(chat_error)?);
        }
    }
    sessions.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    sessions.truncate(limit);
    Ok(Json(json!({ "sessions": sessions })).into_response())
}

pub(crate) async fn delete_session(State(app): Shared, id: Result<Path<String>, PathRejection>) -> Reply {
    let Path(id) = id.map_err(path_error)?;
    let located = app.locate(&id).await?;
    located.chat.delete(located.id.clone()).await.map_err(chat_error)?;
    app.reserved_remove(&id);
    Ok(Json(json!({"id": id, "flow": located.flow, "deleted": true})).into_response())
}

/// A turn as sent: its message and, if the client gave one, its idempotency key.
struct TurnBody {
    message: String,
    key: Option<String>,
}

/// The header a REST turn may carry its key in (`idempotency_key` in the body does the same).
const KEY_HEADER: &str = "idempotency-key";

/// The turn of a body: `{"message": "...", "idempotency_key"?: "..."}`.
fn message_of(body: &[u8]) -> Result<TurnBody, ApiError> {
    let body = object_body(&Bytes::copy_from_slice(body), "the turn")?;
    if let Some(extra) = body.keys().find(|k| !matches!(k.as_str(), "message" | "idempotency_key")) {
        return Err(ApiError::bad_request(format!(
            "unknown field `{extra}`; the body is {{\"message\": \"...\", \"idempotency_key\": \"...\"}} (the key is optional)"
        )));
    }
    let key = match body.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(checked_key(key)?),
        Some(other) => {
            return Err(ApiError::bad_request(format!("`idempotency_key` must be a string, not {other}")));
        }
    };
    match body.get("message") {
        Some(Value::String(text)) => Ok(TurnBody { message: text.clone(), key }),
        Some(other) => Err(ApiError::bad_request(format!("`message` must be a string, not {other}"))),
        None => Err(ApiError::bad_request("the body needs `message`: {\"message\": \"hello\"}")),
    }
}

/// A turn key as the chat flow takes it, refused before the turn starts (the chat flow's check).
fn checked_key(key: &str) -> Result<String, ApiError> {
    check_turn_key(key).map_err(chat_error)?;
    Ok(key.to_string())
}

/// The key of a REST turn: the `Idempotency-Key` header or the body's `idempotency_key`
/// (both: they must be equal).
fn key_of(headers: &HeaderMap, body: &mut TurnBody) -> Result<(), ApiError> {
    let Some(value) = headers.get(KEY_HEADER) else { return Ok(()) };
    let header = value
        .to_str()
        .map_err(|_| ApiError::bad_request("the Idempotency-Key header is not visible ASCII; send a UUID"))?;
    let header = checked_key(header)?;
    match &body.key {
        Some(key) if *key != header => Err(ApiError::bad_request(format!(
            "the Idempotency-Key header (`{header}`) and the body's `idempotency_key` (`{key}`) differ; send one of them"
        ))),
        _ => {
            body.key = Some(header);
            Ok(())
        }
    }
}

/// Where a turn's frames go: every frame (SSE, WebSocket), or only the last one, the turn
/// finished, failed or interrupted (REST answers with it alone, so the others are not made).
#[derive(Clone)]
struct Sink {
    tx: UnboundedSender<Frame>,
    every_frame: bool,
}

impl Sink {
    fn every(tx: UnboundedSender<Frame>) -> Self {
        Sink { tx, every_frame: true }
    }

    fn last_only(tx: UnboundedSender<Frame>) -> Self {
        Sink { tx, every_frame: false }
    }

    /// Sends a turn's last frame.
    fn last(&self, frame: Frame) {
        drop(self.tx.send(frame));
    }

    /// Sends a frame of the turn's progress, made only if it goes out.
    fn progress(&self, frame: impl FnOnce() -> Frame) {
        if self.every_frame {
            drop(self.tx.send(frame()));
        }
    }
}

/// Records the turn's arrival in its session's lane (refused under [`DoubleTexting::Reject`]
/// while a turn runs) and runs it in the background, its frames sent to `sink`.
fn start_turn(app: &Arc<App>, located: Located, body: TurnBody, sink: Sink) -> Result<String, ApiError> {
    let turn_id = RunId::new().to_string();
    let ticket = app.lanes.enter(located.key(), turn_id.clone(), located.strategy).map_err(|running| {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "turn_running",
            format!(
                "session `{}` is answering turn {running}; this flow rejects a turn sent meanwhile: wait for its reply, then send again",
                located.id
            ),
        );
        e.detail = Some(json!({"running_turn_id": running}));
        e
    })?;
    let tracked = app.drain.track(format!("turn {turn_id}"));
    let app = app.clone();
    tokio::spawn(async move {
        let _tracked = tracked; // counted as going until the turn ends
        if run_turn(&located, &body, &ticket, &sink).await {
            app.reserved_remove(located.id.as_str());
        }
        drop(ticket);
    });
    Ok(turn_id)
}

/// Runs one turn once the turns before it have left, sending its frames; `true` if it was
/// saved. Ends with `turn_finished`, `turn_failed` or `turn_interrupted`.
async fn run_turn(at: &Located, body: &TurnBody, ticket: &Ticket, sink: &Sink) -> bool {
    let (flow, turn_id, session) = (at.flow.as_str(), ticket.turn_id.as_str(), at.id.as_str());
    let send = |frame: Frame| sink.last(frame);
    let interrupted = || Frame::new("turn_interrupted", json!({"turn_id": turn_id, "session_id": session}));
    if ticket.ahead > 0 {
        sink.progress(|| {
            Frame::new("turn_queued", json!({"turn_id": turn_id, "session_id": session, "ahead": ticket.ahead}))
        });
    }
    tokio::select! {
        () = ticket.wait_turn() => {}
        () = ticket.interrupted() => {
            send(interrupted());
            return false;
        }
    }
    sink.progress(|| Frame::new("turn_started", json!({"turn_id": turn_id, "session_id": session, "flow": flow})));
    let mut stream = at.chat.stream_turn(&at.id, &body.message, body.key.as_deref(), at.unchecked);
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            // Dropping the stream cancels the turn: nothing of it is saved.
            () = ticket.interrupted() => {
                drop(stream);
                send(interrupted());
                return false;
            }
        };
        match item {
            Some(Ok(event @ TurnEvent::Finished(_))) => {
                send(turn_frame(flow, turn_id, &event));
                return true;
            }
            Some(Ok(event)) => sink.progress(|| turn_frame(flow, turn_id, &event)),
            Some(Err(e)) => {
                let e = chat_error(e);
                send(Frame::new(
                    "turn_failed",
                    json!({"turn_id": turn_id, "error": {"code": e.code, "message": e.message}}),
                ));
                return false;
            }
            None => {
                let error = json!({"code": "turn_failed", "message": "the turn ended without a result"});
                send(Frame::new("turn_failed", json!({"turn_id": turn_id, "error": error})));
                return false;
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct TurnQuery {
    stream: Option<String>,
}

/// Posts a turn: `200` and the turn when it is answered, or its frames as SSE with
/// `?stream=sse`.
pub(crate) async fn post_turn(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<TurnQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = body.map_err(body_error)?;
    let Path(id) = id.map_err(path_error)?;
    let Query(query) = query.map_err(query_error)?;
    let sse = match query.stream.as_deref() {
        None | Some("") => false,
        Some("sse") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("`stream` is `{other}`; it must be `sse`, or absent")));
        }
    };
    let mut turn = message_of(&body)?;
    key_of(&headers, &mut turn)?;
    let located = if sse { app.locate(&id).await? } else { app.locate_turn(&id).await? };
    let (tx, mut rx) = unbounded_channel();
    start_turn(&app, located, turn, if sse { Sink::every(tx) } else { Sink::last_only(tx) })?;
    if sse {
        let stream = futures::stream::unfold((rx, 0usize), |(mut rx, n)| async move {
            let frame = rx.recv().await?;
            Some((Ok::<_, Infallible>(frame.sse(n + 1)), (rx, n + 1)))
        });
        return Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response());
    }
    while let Some(frame) = rx.recv().await {
        let data: Value = serde_json::from_str(&frame.data).unwrap_or_default();
        match &*frame.kind {
            "turn_finished" => return Ok(Json(data["turn"].clone()).into_response()),
            "turn_failed" => {
                let message = data["error"]["message"].as_str().unwrap_or_default().to_string();
                let (status, code) = match data["error"]["code"].as_str() {
                    // The turn found no such session (a turn located without the store).
                    Some("unknown_session") => return Err(unknown_session(&id)),
                    Some("session_busy") => (StatusCode::CONFLICT, "session_busy"),
                    Some("session_conflict") => (StatusCode::CONFLICT, "session_conflict"),
                    Some("store_unavailable") => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
                    Some("corrupt_session") => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_session"),
                    Some("turn_key_reused") => (StatusCode::UNPROCESSABLE_ENTITY, "turn_key_reused"),
                    Some("bad_request") => (StatusCode::BAD_REQUEST, "bad_request"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "turn_failed"),
                };
                return Err(ApiError::new(status, code, message));
            }
            "turn_interrupted" => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "turn_interrupted",
                    "a later turn of this session interrupted this one (the flow interrupts on double-texting); nothing of it was saved",
                ));
            }
            _ => {}
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "turn_failed", "the turn ended without a result"))
}

/// The session's WebSocket: send `{"message": "..."}`, receive the turn's frames (the same
/// JSON as the SSE `data:` lines); a refusal is a `turn_rejected` or `error` frame.
pub(crate) async fn session_ws(
    State(app): Shared,
    id: Result<Path<String>, PathRejection>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(path_error)?;
    app.locate(&id).await?;
    let max = app.max_message_bytes;
    Ok(ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| serve_socket(app, id, socket)))
}

async fn serve_socket(app: Arc<App>, id: String, mut socket: WebSocket) {
    let (tx, mut rx) = unbounded_channel::<Frame>();
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                if socket.send(Message::Text(frame.data.to_string().into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let refusal = match message_of(text.as_bytes()) {
                        Ok(turn) => match app.locate(&id).await {
                            Ok(located) => start_turn(&app, located, turn, Sink::every(tx.clone())).err(),
                            Err(e) => Some(e),
                        },
                        Err(e) => Some(e),
                    };
                    if let Some(e) = refusal {
                        let kind = if e.code == "turn_running" { "turn_rejected" } else { "error" };
                        let frame = Frame::new(kind, json!({"error": e.body()}));
                        drop(tx.send(frame));
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
}
