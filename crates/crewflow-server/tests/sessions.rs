//! Sessions and turns of conversational flows over real HTTP on loopback: REST, SSE and the
//! WebSocket tell the same conversation; double-texting strategies, each driven by steps that
//! wait on a signal (no timing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Running, SseFrame, error_of, fresh_pg_schema, normalized, serve};
use crewflow_chat::{ChatCx, ChatFlow, ChatState};
use crewflow_core::{Cx, FlowBuilder, StepError};
use crewflow_server::{DoubleTexting, Server};
use crewflow_store::SqliteStore;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

fn echo(store: &Arc<SqliteStore>) -> ChatFlow<ChatState> {
    let flow = FlowBuilder::<ChatState>::new("echo")
        .start("answer", |cx: Cx<ChatState>, message: String| async move {
            let turn = cx.state(|s| s.turns);
            cx.reply(format!("turn {turn}: you said {message}"));
            Ok(())
        })
        .build()
        .unwrap();
    ChatFlow::with_shared_store(flow, store.clone())
}

/// A chat flow whose step waits for a permit of `gate` (one per turn) before replying.
fn gated(name: &str, store: &Arc<SqliteStore>, gate: Arc<Semaphore>) -> ChatFlow<ChatState> {
    let flow = FlowBuilder::<ChatState>::new(name)
        .start("answer", move |_cx: Cx<ChatState>, message: String| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.map_err(StepError::msg)?.forget();
                Ok(format!("done: {message}"))
            }
        })
        .build()
        .unwrap();
    ChatFlow::with_shared_store(flow, store.clone())
}

struct Gates {
    reject: Arc<Semaphore>,
    queue: Arc<Semaphore>,
    interrupt: Arc<Semaphore>,
}

async fn server() -> (Running, Gates, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let runs = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let sessions = Arc::new(SqliteStore::open(dir.path().join("sessions.db")));
    let gates = Gates {
        reject: Arc::new(Semaphore::new(0)),
        queue: Arc::new(Semaphore::new(0)),
        interrupt: Arc::new(Semaphore::new(0)),
    };
    let server = Server::new(runs)
        .chat(&echo(&sessions), DoubleTexting::Enqueue)
        .unwrap()
        .chat(&gated("reject", &sessions, gates.reject.clone()), DoubleTexting::Reject)
        .unwrap()
        .chat(&gated("queue", &sessions, gates.queue.clone()), DoubleTexting::Enqueue)
        .unwrap()
        .chat(&gated("interrupt", &sessions, gates.interrupt.clone()), DoubleTexting::Interrupt)
        .unwrap();
    (serve(server).await, gates, dir)
}

async fn create(srv: &Running, flow: &str, id: &str) {
    let (code, body) = srv.post("/sessions", &json!({"flow": flow, "id": id}).to_string()).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!((body["id"].as_str(), body["flow"].as_str()), (Some(id), Some(flow)));
}

fn turn_body(message: &str) -> String {
    json!({ "message": message }).to_string()
}

/// A turn streamed over SSE, read to its end.
async fn sse_turn(srv: &Running, session: &str, message: &str) -> Vec<SseFrame> {
    let path = format!("/sessions/{session}/turns?stream=sse");
    let stream = srv.sse("POST", &path, Some(&turn_body(message)), None).await;
    assert_eq!(stream.status(), 200);
    stream.all().await
}

const MESSAGES: [&str; 3] = ["hello", "how are you?", "bye"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_sse_and_websocket_tell_the_same_conversation() {
    let (srv, _gates, _dir) = server().await;
    for id in ["by-rest", "by-sse", "by-ws"] {
        create(&srv, "echo", id).await;
    }
    let (code, e) = srv.post("/sessions", r#"{"flow": "echo", "id": "by-rest"}"#).await;
    assert_eq!((code, error_of(&e).0), (409, "session_exists"), "{e}");
    let (code, empty) = srv.get("/sessions/by-rest").await;
    assert_eq!((code, empty["messages"].clone()), (200, json!([])), "{empty}");

    let mut rest = Vec::new();
    for message in MESSAGES {
        let (code, turn) = srv.post("/sessions/by-rest/turns", &turn_body(message)).await;
        assert_eq!(code, 200, "{turn}");
        rest.push(turn);
    }
    let mut sse = Vec::new();
    for message in MESSAGES {
        sse.extend(sse_turn(&srv, "by-sse", message).await);
    }
    let ws = ws_conversation(&srv, "by-ws").await;

    // The frames: the same kinds and contents, in the same order, both ways.
    let sse_data: Vec<Value> = sse.iter().map(|f| f.data.clone()).collect();
    assert_eq!(sse.iter().map(|f| f.event.as_str()).collect::<Vec<_>>()[..2], ["turn_started", "run_started"]);
    for (frame, data) in sse.iter().zip(&sse_data) {
        assert_eq!(data["type"], frame.event.as_str(), "the SSE event name is the frame's type");
    }
    assert_eq!(sse_data.iter().map(normalized).collect::<Vec<_>>(), ws.iter().map(normalized).collect::<Vec<_>>());

    // The replies and the turns, the same by all three.
    let finished = |frames: &[Value]| -> Vec<Value> {
        frames.iter().filter(|f| f["type"] == "turn_finished").map(|f| normalized(&f["turn"])).collect()
    };
    let rest: Vec<Value> = rest.iter().map(normalized).collect();
    assert_eq!(rest, finished(&sse_data));
    assert_eq!(rest, finished(&ws));
    assert_eq!(rest[2]["reply"], "turn 2: you said bye");

    // The stored transcripts and traces.
    let mut stored = Vec::new();
    for id in ["by-rest", "by-sse", "by-ws"] {
        let (code, session) = srv.get(&format!("/sessions/{id}")).await;
        assert_eq!(code, 200, "{session}");
        assert_eq!(session["messages"].as_array().unwrap().len(), 6, "{session}");
        assert!(!session["traces"][0]["spans"].as_array().unwrap().is_empty(), "{session}");
        let kept = json!({"messages": session["messages"], "turns": session["turns"], "traces": session["traces"]});
        // The session span is named after the session: the one difference, by design.
        let text = kept.to_string().replace(&format!(r#""name":"{id}""#), r#""name":"<session>""#);
        stored.push(normalized(&serde_json::from_str(&text).unwrap()));
    }
    assert_eq!(stored[0], stored[1]);
    assert_eq!(stored[0], stored[2]);
    assert_eq!(stored[0]["messages"][1], json!({"role": "assistant", "content": "turn 0: you said hello", "turn": 0}));
}

/// The conversation over the session's WebSocket: every frame received, in order.
async fn ws_conversation(srv: &Running, session: &str) -> Vec<Value> {
    let url = format!("ws://{}/api/sessions/{session}/ws", srv.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut frames = Vec::new();
    for message in MESSAGES {
        ws.send(Message::Text(turn_body(message).into())).await.unwrap();
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.unwrap() else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            let done = frame["type"] == "turn_finished";
            frames.push(frame);
            if done {
                break;
            }
        }
    }
    // A message that is not a turn gets an error frame, and the socket stays usable.
    ws.send(Message::Text(r#"{"msg": "hi"}"#.into())).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("no error frame") };
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((error["type"].as_str(), error["error"]["code"].as_str()), (Some("error"), Some("bad_request")));
    ws.close(None).await.unwrap();
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_listed_deleted_and_refused_plainly() {
    let (srv, _gates, _dir) = server().await;
    create(&srv, "echo", "a").await;
    create(&srv, "echo", "b").await;
    for id in ["a", "b"] {
        let (code, _) = srv.post(&format!("/sessions/{id}/turns"), &turn_body("hi")).await;
        assert_eq!(code, 200);
    }
    let (code, list) = srv.get("/sessions?flow=echo").await;
    assert_eq!(code, 200, "{list}");
    let mut ids: Vec<&str> = list["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    // (Newest first by the store's clock; two turns may share a millisecond, so no order here.)
    ids.sort_unstable();
    assert_eq!(ids, ["a", "b"]);
    let (_, none) = srv.get("/sessions?flow=queue").await;
    assert_eq!(none["sessions"], json!([]));
    let (code, e) = srv.get("/sessions?flow=nope").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_flow"));

    let (code, gone) = srv.delete("/sessions/a").await;
    assert_eq!((code, gone["deleted"].as_bool()), (200, Some(true)), "{gone}");
    let (code, e) = srv.get("/sessions/a").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_session"), "{e}");
    let (code, e) = srv.post("/sessions/a/turns", &turn_body("hi")).await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_session"), "{e}");

    let (code, e) = srv.post("/sessions/b/turns", r#"{"message": 3}"#).await;
    assert_eq!(code, 400);
    assert!(error_of(&e).1.contains("`message`"), "{e}");
    let (code, e) = srv.post("/sessions/b/turns", r#"{"message": "x", "extra": 1}"#).await;
    assert!(code == 400 && error_of(&e).1.contains("`extra`"), "{e}");
    let (code, e) = srv.post("/sessions/b/turns?stream=ws", &turn_body("x")).await;
    assert_eq!(code, 400, "{e}");
    let (code, e) = srv.post("/sessions", r#"{"id": "c"}"#).await;
    assert_eq!(code, 400, "several chat flows: the flow must be named: {e}");
    let (code, e) = srv.post("/sessions", r#"{"flow": "echo", "id": ""}"#).await;
    assert!(code == 400 && error_of(&e).1.contains("session id"), "{e}");
    let (code, made) = srv.post("/sessions", r#"{"flow": "echo"}"#).await;
    assert_eq!(code, 201, "{made}");
    assert!(!made["id"].as_str().unwrap().is_empty());
}

/// Starts a turn over SSE and reads it until its step runs (so it holds the session).
async fn running_turn(srv: &Running, session: &str, message: &str) -> (common::Sse, String) {
    let path = format!("/sessions/{session}/turns?stream=sse");
    let mut stream = srv.sse("POST", &path, Some(&turn_body(message)), None).await;
    let frames = stream.until("step_started").await;
    let turn_id = frames[0].data["turn_id"].as_str().unwrap().to_string();
    assert_eq!(frames[0].event, "turn_started");
    (stream, turn_id)
}

async fn transcript(srv: &Running, session: &str) -> Vec<(String, String)> {
    let (code, body) = srv.get(&format!("/sessions/{session}")).await;
    assert_eq!(code, 200, "{body}");
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_string(), m["content"].as_str().unwrap().to_string()))
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_texting_reject_names_the_running_turn() {
    let (srv, gates, _dir) = server().await;
    create(&srv, "reject", "r").await;
    let (first, turn_id) = running_turn(&srv, "r", "one").await;
    let (code, e) = srv.post("/sessions/r/turns", &turn_body("two")).await;
    assert_eq!((code, error_of(&e).0), (409, "turn_running"), "{e}");
    assert_eq!(e["error"]["running_turn_id"], turn_id.as_str());
    assert!(error_of(&e).1.contains(&turn_id), "{e}");
    let (_, session) = srv.get("/sessions/r").await;
    assert_eq!(session["running_turns"], 1);

    // Over the WebSocket, the refusal is a `turn_rejected` frame naming the running turn.
    let url = format!("ws://{}/api/sessions/r/ws", srv.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::Text(turn_body("three").into())).await.unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else { panic!("no frame") };
    let rejected: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(rejected["type"], "turn_rejected", "{rejected}");
    assert_eq!(rejected["error"]["code"], "turn_running");
    assert_eq!(rejected["error"]["running_turn_id"], turn_id.as_str());
    ws.close(None).await.unwrap();
    // A socket for a session that does not exist is refused before the upgrade.
    let url = format!("ws://{}/api/sessions/nobody/ws", srv.addr);
    let refused = tokio_tungstenite::connect_async(url).await.unwrap_err().to_string();
    assert!(refused.contains("404"), "{refused}");

    gates.reject.add_permits(1);
    let rest = first.all().await;
    assert_eq!(rest.last().unwrap().event, "turn_finished", "{rest:?}");
    gates.reject.add_permits(1);
    let (code, turn) = srv.post("/sessions/r/turns", &turn_body("two")).await;
    assert_eq!((code, turn["index"].as_u64()), (200, Some(1)), "{turn}");
    assert_eq!(
        transcript(&srv, "r").await,
        pairs(&[("user", "one"), ("assistant", "done: one"), ("user", "two"), ("assistant", "done: two")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_texting_enqueue_runs_turns_in_arrival_order() {
    let (srv, gates, _dir) = server().await;
    create(&srv, "queue", "q").await;
    let (first, _) = running_turn(&srv, "q", "one").await;
    let mut waiting = Vec::new();
    for (ahead, message) in [(1, "two"), (2, "three")] {
        let path = "/sessions/q/turns?stream=sse";
        let mut stream = srv.sse("POST", path, Some(&turn_body(message)), None).await;
        // Its arrival is recorded before the next is sent: the first frame says it waits.
        let queued = stream.next().await.unwrap();
        assert_eq!((queued.event.as_str(), queued.data["ahead"].as_u64()), ("turn_queued", Some(ahead)), "{queued:?}");
        waiting.push(stream);
    }
    gates.queue.add_permits(3);
    for stream in std::iter::once(first).chain(waiting) {
        let frames = stream.all().await;
        assert_eq!(frames.last().unwrap().event, "turn_finished", "{frames:?}");
    }
    let (_, session) = srv.get("/sessions/q").await;
    let indexes: Vec<(u64, &str)> = session["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["index"].as_u64().unwrap(), t["user_message"].as_str().unwrap()))
        .collect();
    assert_eq!(indexes, [(0, "one"), (1, "two"), (2, "three")]);
    assert_eq!(session["running_turns"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_texting_interrupt_cancels_the_running_turn_cleanly() {
    let (srv, gates, _dir) = server().await;
    create(&srv, "interrupt", "i").await;
    let (first, _) = running_turn(&srv, "i", "one").await;
    let path = "/sessions/i/turns?stream=sse";
    let mut second = srv.sse("POST", path, Some(&turn_body("never mind, two")), None).await;
    let interrupted = first.all().await;
    assert_eq!(interrupted.last().unwrap().event, "turn_interrupted", "{interrupted:?}");
    let started = second.until("step_started").await;
    assert_eq!(started[0].event, "turn_queued");
    gates.interrupt.add_permits(1);
    let rest = second.all().await;
    assert_eq!(rest.last().unwrap().data["turn"]["index"], 0, "the interrupted turn left nothing: {rest:?}");
    assert_eq!(
        transcript(&srv, "i").await,
        pairs(&[("user", "never mind, two"), ("assistant", "done: never mind, two")])
    );
    // Over REST, the interrupted turn answers 409 turn_interrupted.
    let post = |message: &'static str| {
        let (client, url) = (srv.client.clone(), format!("{}/sessions/i/turns", srv.base));
        tokio::spawn(async move {
            let resp = client.post(url).header("content-type", "application/json").body(turn_body(message));
            let resp = resp.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    let three = post("three");
    srv.wait_running("i", 1).await;
    let four = post("four");
    let (code, body) = three.await.unwrap();
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("turn_interrupted"), "{body}");
    gates.interrupt.add_permits(1);
    let (code, body) = four.await.unwrap();
    assert_eq!(code, 200, "{body}");
    let said: Vec<String> = transcript(&srv, "i").await.into_iter().map(|(_, text)| text).collect();
    assert_eq!(said, ["never mind, two", "done: never mind, two", "four", "done: four"]);
}

/// Two servers on one PostgreSQL: a turn sent to the second while the first runs a turn of
/// the same session waits for the session lock (across processes), then runs; the history
/// has both turns once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL")]
async fn two_servers_on_one_postgres_run_a_sessions_turns_one_at_a_time() {
    let url = fresh_pg_schema().await;
    let gate = Arc::new(Semaphore::new(0));
    let mut servers = Vec::new();
    for _ in 0..2 {
        let runs = crewflow_store::open(&url).unwrap();
        let sessions = crewflow_store::open_sessions(&url).unwrap();
        let flow = FlowBuilder::<ChatState>::new("queue")
            .start("answer", {
                let gate = gate.clone();
                move |_cx: Cx<ChatState>, message: String| {
                    let gate = gate.clone();
                    async move {
                        gate.acquire().await.map_err(StepError::msg)?.forget();
                        Ok(format!("done: {message}"))
                    }
                }
            })
            .build()
            .unwrap();
        let chat = ChatFlow::with_shared_store(flow, sessions);
        servers.push(serve(Server::new(runs).chat(&chat, DoubleTexting::Enqueue).unwrap()).await);
    }
    let (a, b) = (&servers[0], &servers[1]);
    create(a, "queue", "shared").await;
    let (first, _) = running_turn(a, "shared", "one").await;
    // B does not know the reserved id until A saves a turn: the first turn must end first.
    let (code, e) = b.post("/sessions/shared/turns", &turn_body("early")).await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_session"), "{e}");
    gate.add_permits(1);
    assert_eq!(first.all().await.last().unwrap().event, "turn_finished");

    let (held, _) = running_turn(a, "shared", "two").await;
    // B's turn starts, then waits for the session lock A's turn holds.
    let mut second = b.sse("POST", "/sessions/shared/turns?stream=sse", Some(&turn_body("three")), None).await;
    assert_eq!(second.next().await.unwrap().event, "turn_started");
    gate.add_permits(2);
    assert_eq!(held.all().await.last().unwrap().event, "turn_finished");
    let rest = second.all().await;
    assert_eq!(rest.last().unwrap().data["turn"]["index"], 2, "{rest:?}");
    let said: Vec<String> = transcript(b, "shared").await.into_iter().map(|(_, text)| text).collect();
    assert_eq!(said, ["one", "done: one", "two", "done: two", "three", "done: three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_session_that_never_gets_a_turn_lapses() {
    let dir = tempfile::tempdir().unwrap();
    let runs = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let sessions = Arc::new(SqliteStore::open(dir.path().join("sessions.db")));
    let server = Server::new(runs)
        .chat(&echo(&sessions), DoubleTexting::Enqueue)
        .unwrap()
        .reservation_ttl(std::time::Duration::from_secs(1));
    let srv = serve(server).await;
    for id in ["ghost", "kept"] {
        create(&srv, "echo", id).await;
    }
    let (code, _) = srv.post("/sessions/kept/turns", &turn_body("hi")).await;
    assert_eq!(code, 200);
    let (code, e) = srv.post("/sessions", r#"{"flow": "echo", "id": "ghost"}"#).await;
    assert_eq!((code, error_of(&e).0), (409, "session_exists"), "reserved, not lapsed yet: {e}");

    // Nothing names `ghost` for the TTL: it lapses.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (code, e) = srv.get("/sessions/ghost").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_session"), "{e}");
    let (code, e) = srv.post("/sessions/ghost/turns", &turn_body("too late")).await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_session"), "{e}");
    let (_, list) = srv.get("/sessions").await;
    let ids: Vec<&str> = list["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["kept"], "the lapsed one left nothing behind");
    // Its id is free again; the session that got a turn is stored and never lapses.
    create(&srv, "echo", "ghost").await;
    let (code, kept) = srv.get("/sessions/kept").await;
    assert_eq!((code, kept["messages"].as_array().map(Vec::len)), (200, Some(2)), "{kept}");

    // A reservation in use is renewed by each request naming it.
    create(&srv, "echo", "busy").await;
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let (code, body) = srv.get("/sessions/busy").await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, turn) = srv.post("/sessions/busy/turns", &turn_body("at last")).await;
    assert_eq!((code, turn["index"].as_u64()), (200, Some(0)), "{turn}");
}

/// A turn sent again with its idempotency key (a client retrying after a lost answer) is
/// answered from the store, over REST and the WebSocket alike, and stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_sent_again_with_its_key_is_answered_once() {
    let (srv, _gates, _dir) = server().await;
    create(&srv, "echo", "keyed").await;
    let keyed = |key: &str, body: &str| {
        srv.request(reqwest::Method::POST, "/sessions/keyed/turns")
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let json = |resp: reqwest::Response| async move { (resp.status().as_u16(), resp.json::<Value>().await.unwrap()) };
    let (code, first) = json(keyed("k-1", &turn_body("hello")).await.unwrap()).await;
    assert_eq!((code, first["index"].as_u64(), &first["repeated"]), (200, Some(0), &json!(false)), "{first}");
    let (code, again) = json(keyed("k-1", &turn_body("hello")).await.unwrap()).await;
    assert_eq!((code, &again["repeated"]), (200, &json!(true)), "{again}");
    assert_eq!(
        (&again["index"], &again["run_id"], &again["reply"]),
        (&first["index"], &first["run_id"], &first["reply"])
    );
    // The key in the body does the same.
    let (code, body) = srv.post("/sessions/keyed/turns", r#"{"message": "hello", "idempotency_key": "k-1"}"#).await;
    assert_eq!((code, &body["repeated"], &body["run_id"]), (200, &json!(true), &first["run_id"]), "{body}");

    // Over the WebSocket: a new key runs, the same key again is answered from the store.
    let url = format!("ws://{}/api/sessions/keyed/ws", srv.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut finished = Vec::new();
    for key in ["k-2", "k-2", "k-1"] {
        let message = if key == "k-1" { "hello" } else { "again" };
        let text = json!({"message": message, "idempotency_key": key}).to_string();
        ws.send(Message::Text(text.into())).await.unwrap();
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.unwrap() else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "turn_finished" {
                finished.push((frame["turn"]["index"].as_u64(), frame["turn"]["repeated"].as_bool()));
                break;
            }
        }
    }
    ws.close(None).await.unwrap();
    assert_eq!(finished, [(Some(1), Some(false)), (Some(1), Some(true)), (Some(0), Some(true))]);

    // A key names one message; a key must be usable; header and body must agree.
    let (code, e) = json(keyed("k-1", &turn_body("something else")).await.unwrap()).await;
    assert_eq!((code, error_of(&e).0), (422, "turn_key_reused"), "{e}");
    assert!(error_of(&e).1.contains("was used by turn 0, whose message differs"), "{e}");
    let (code, e) = json(keyed("k-3", r#"{"message": "x", "idempotency_key": "k-4"}"#).await.unwrap()).await;
    assert_eq!((code, error_of(&e).0), (400, "bad_request"), "{e}");
    assert!(error_of(&e).1.contains("differ; send one of them"), "{e}");
    let (code, e) = srv.post("/sessions/keyed/turns", r#"{"message": "x", "idempotency_key": ""}"#).await;
    assert_eq!((code, error_of(&e).0), (400, "bad_request"), "{e}");
    assert!(error_of(&e).1.contains("invalid turn key ``: it is empty; use a non-empty string"), "{e}");

    let (code, session) = srv.get("/sessions/keyed").await;
    assert_eq!(code, 200);
    let said: Vec<&str> =
        session["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(said, ["hello", "turn 0: you said hello", "again", "turn 1: you said again"]);
}
