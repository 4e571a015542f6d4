//! Hostile and careless clients over real HTTP on loopback: oversized and malformed bodies,
//! slow bodies (slowloris-style), requests over the timeout, CORS, per-key rate limits. Each
//! test tries the bypasses it can think of and checks nothing leaks across tenants and nothing
//! accepted is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Running, error_of, runs_hosting, serve, serve_app};

use crewflow_server::{DoubleTexting, RateLimit, Server, ServerConfig, ServerError, Tenants, tenant_router};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The runs server of the other tests, plus a conversational `echo`, with `config`.
fn hosting(dir: &tempfile::TempDir, gate: Arc<Semaphore>, config: ServerConfig) -> Server {
    let store = crewflow_store::open(common::runs_db(dir).as_str()).unwrap();
    let chat = common::echo_chat(dir.path().join("sessions.db"));
    runs_hosting(&store, gate).chat(&chat, DoubleTexting::Enqueue).unwrap().config(config)
}

/// Sends `head` then each of `parts` (after its delay) on a raw connection, and reads the
/// answer to the end of the connection: (status, body). The server must close the connection
/// (tests wait at most 10 s).
async fn raw(srv: &Running, head: &str, parts: Vec<(Duration, Vec<u8>)>) -> (u16, String) {
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    // The sender goes on at its pace; it stops once the server closes the connection. It
    // keeps its half open after (a closed half is a client gone, for the server).
    let sender = tokio::spawn(async move {
        for (delay, bytes) in parts {
            tokio::time::sleep(delay).await;
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(wr);
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
    sender.abort();
    // A reset after the answer is fine: what matters is what was answered.
    if let Ok(Err(e)) = &read {
        assert!(!answer.is_empty(), "the connection failed before an answer: {e}");
    }
    assert!(read.is_ok(), "the server kept the connection open: {}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn post_head(path: &str, extra: &str) -> String {
    format!("POST /api{path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{extra}\r\n")
}

/// The JSON of an answer's body, chunked or not.
fn json_in(body: &str) -> Value {
    let start = body.find('{').unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let end = body.rfind('}').unwrap();
    serde_json::from_str(&body[start..=end]).unwrap()
}

async fn run_count(srv: &Running) -> usize {
    let (code, list) = srv.get("/runs").await;
    assert_eq!(code, 200, "{list}");
    list["runs"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_bodies_are_refused_plainly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new().max_body_bytes(1024);
    let srv = serve(hosting(&dir, Arc::new(Semaphore::new(0)), config)).await;

    // Declared too large: refused before the body is read, naming the limit and the knob.
    let huge = json!({"name": "x".repeat(2000)}).to_string();
    let (code, e) = srv.post("/flows/greet/runs", &huge).await;
    assert_eq!((code, error_of(&e).0), (413, "body_too_large"), "{e}");
    assert!(error_of(&e).1.contains("1024 bytes") && error_of(&e).1.contains("max_body_bytes"), "{e}");
    // Not declared (chunked): refused once it passes the limit.
    let chunk = |text: &str| format!("{:x}\r\n{text}\r\n", text.len()).into_bytes();
    let parts = vec![
        (Duration::ZERO, chunk(&format!("{{\"name\": \"{}", "y".repeat(700)))),
        (Duration::ZERO, chunk(&"y".repeat(700))),
        (Duration::ZERO, chunk("\"}")),
        (Duration::ZERO, b"0\r\n\r\n".to_vec()),
    ];
    let (code, body) = raw(&srv, &post_head("/flows/greet/runs", "transfer-encoding: chunked\r\n"), parts).await;
    assert_eq!((code, error_of(&json_in(&body)).0), (413, "body_too_large"), "{body}");
    // Exactly at the limit is taken.
    let name = "z".repeat(1024 - json!({"name": ""}).to_string().len());
    let at_limit = json!({ "name": name }).to_string();
    assert_eq!(at_limit.len(), 1024);
    let (code, run) = srv.post("/flows/greet/runs?wait=true", &at_limit).await;
    assert_eq!((code, run["status"].as_str()), (200, Some("finished")), "{run}");

    // Malformed bodies: 400, the message naming what is wrong.
    for (body, says) in [
        (r#"{"name": "#.to_string(), "not valid JSON"),
        (r#"{"name": "Ada",}"#.to_string(), "trailing comma"),
        ("[1, 2]".to_string(), "JSON object"),
        ("\"just text\"".to_string(), "JSON object"),
        (format!("{}{}", "[".repeat(200), "]".repeat(200)), "recursion limit"),
    ] {
        let (code, e) = srv.post("/flows/greet/runs", &body).await;
        assert_eq!((code, error_of(&e).0), (400, "bad_request"), "{body}: {e}");
        assert!(error_of(&e).1.contains(says), "{body}: {e}");
    }
    let resp = srv
        .request(reqwest::Method::POST, "/flows/greet/runs")
        .body(vec![b'{', 0xff, 0xfe, b'}'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let e: Value = resp.json().await.unwrap();
    assert!(error_of(&e).1.contains("not valid JSON"), "{e}");
    for (path, body) in [
        ("/runs/0193f7a2-0000-7000-8000-000000000000/feedback", r#"{"answer": "#),
        ("/sessions", r#"{"flow": "echo""#),
        ("/runs/0193f7a2-0000-7000-8000-000000000000/fork", "{]"),
    ] {
        let (code, e) = srv.post(path, body).await;
        assert_eq!(code, 400, "{path}: {e}");
        assert!(error_of(&e).1.contains("not valid JSON"), "{path}: {e}");
    }

    // A WebSocket message over the limit closes the socket, and no turn is taken.
    let (code, _) = srv.post("/sessions", r#"{"flow": "echo", "id": "ws"}"#).await;
    assert_eq!(code, 201);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/sessions/ws/ws", srv.addr)).await.unwrap();
    let big = json!({"message": "w".repeat(2000)}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(big.into())).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
    assert!(
        matches!(next, None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))),
        "{next:?}"
    );
    let (_, session) = srv.get("/sessions/ws").await;
    assert_eq!(session["messages"], json!([]), "{session}");

    // Of all that, only the run at the limit was started.
    assert_eq!(run_count(&srv).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_oversized_body_reads_the_413_not_a_reset() {
    // The server answers as soon as the declared length is over the limit, while the client is
    // still writing: had it closed at once, the unread bytes would turn the close into a reset
    // and the client (reqwest, curl) would report a broken pipe instead of the 413, as CI once
    // saw. It reads on, discarding, then answers.
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(hosting(&dir, Arc::new(Semaphore::new(0)), ServerConfig::new().max_body_bytes(1024))).await;
    // A client that writes its whole body before it reads (as Python's http.client does),
    // at a pace that outlasts the socket's buffers.
    let declared = 64 * 16 * 1024;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let head = post_head("/flows/greet/runs", &format!("content-length: {declared}\r\n"));
    tcp.write_all(head.as_bytes()).await.unwrap();
    for part in 0..64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Err(e) = tcp.write_all(&[b' '; 16 * 1024]).await {
            panic!("the server cut the body off at part {part} of 64 instead of reading on: {e}");
        }
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(error_of(&json_in(&answer)).0, "body_too_large", "{answer}");
    // Through a real client too, several times: each read its answer.
    let huge = json!({"name": "x".repeat(3 << 20)}).to_string();
    for attempt in 0..5 {
        let sent = srv
            .request(reqwest::Method::POST, "/flows/greet/runs")
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await;
        let resp = sent.unwrap_or_else(|e| panic!("attempt {attempt}: the refusal did not reach the client: {e:?}"));
        assert_eq!(resp.status().as_u16(), 413, "attempt {attempt}");
    }
    assert_eq!(run_count(&srv).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_off_without_holding_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new().body_timeout(Duration::from_millis(500));
    let srv = serve(hosting(&dir, Arc::new(Semaphore::new(0)), config)).await;

    // 32 clients each declare 64 bytes and send one every 100 ms: too slow to finish in time.
    let mut slow = Vec::new();
    for _ in 0..32 {
        let srv = srv.clone();
        slow.push(tokio::spawn(async move {
            let drip = (0..64).map(|_| (Duration::from_millis(100), b" ".to_vec())).collect();
            raw(&srv, &post_head("/flows/greet/runs", "content-length: 64\r\n"), drip).await
        }));
    }
    // Meanwhile the server answers others as usual.
    let (code, run) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Ada"}"#).await;
    assert_eq!((code, run["output"].as_str()), (200, Some("HELLO, ADA")), "{run}");
    for client in slow {
        let (code, body) = client.await.unwrap();
        let e = json_in(&body);
        assert_eq!((code, error_of(&e).0), (408, "body_timeout"), "{body}");
        assert!(error_of(&e).1.contains("body_timeout"), "{e}");
    }
    // A body sent in parts, but within the limit, is taken.
    let body = br#"{"name": "Bo"}"#;
    let parts = vec![(Duration::from_millis(50), body[..5].to_vec()), (Duration::from_millis(50), body[5..].to_vec())];
    let head = post_head("/flows/greet/runs", &format!("content-length: {}\r\nconnection: close\r\n", body.len()));
    let (code, body) = raw(&srv, &head, parts).await;
    assert_eq!(code, 202, "{body}");
    // The cut-off clients started nothing.
    assert_eq!(run_count(&srv).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_timeout_answers_504_and_its_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let config = ServerConfig::new().request_timeout(Duration::from_millis(300));
    let srv = serve(hosting(&dir, gate.clone(), config)).await;

    let (code, e) = srv.post("/flows/gated/runs?wait=true", "").await;
    assert_eq!((code, error_of(&e).0), (504, "request_timeout"), "{e}");
    assert!(error_of(&e).1.contains("request_timeout") && error_of(&e).1.contains("goes on"), "{e}");
    // The run was not lost: it is listed, and finishes once let go.
    let (_, list) = srv.get("/runs?flow=gated").await;
    let id = list["runs"][0]["run_id"].as_str().unwrap().to_string();
    // A stream lasts longer than the timeout: only the wait for its answer's start counts.
    let mut events = srv.sse("GET", &format!("/runs/{id}/events"), None, None).await;
    events.until("step_started").await;
    events.until("step_started").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    gate.add_permits(1);
    assert_eq!(events.all().await.last().unwrap().event, "run_finished");
    let run = srv.wait_status(&id, "finished").await;
    assert_eq!(run["output"], "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_answers_only_the_listed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let srv = serve(hosting(&dir, Arc::new(Semaphore::new(0)), ServerConfig::new())).await;
    let preflight = |srv: &Running, origin: &str| {
        srv.request(reqwest::Method::OPTIONS, "/flows/greet/runs")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let resp = preflight(&srv, "https://app.example.com").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none(), "{:?}", resp.headers());
    let resp = srv.request(reqwest::Method::GET, "/flows").header("origin", "https://app.example.com").send().await;
    assert!(resp.unwrap().headers().get("access-control-allow-origin").is_none());

    // Behind keys, with one origin allowed: the preflight needs no key, the call does.
    let other = tempfile::tempdir().unwrap();
    let config = ServerConfig::new().cors_origins(["https://app.example.com", "http://localhost:3000"]).unwrap();
    let tenants = Tenants::new()
        .tenant("acme", hosting(&other, Arc::new(Semaphore::new(0)), ServerConfig::new()))
        .unwrap()
        .key("acme", "sk-acme")
        .unwrap()
        .config(config);
    let srv = serve_app(tenant_router(tenants)).await;
    let resp = preflight(&srv, "https://app.example.com").await.unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    assert_eq!(resp.headers()["access-control-allow-origin"], "https://app.example.com");
    let allowed = resp.headers()["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    for origin in ["https://evil.example.com", "https://app.example.com.evil.example", "null"] {
        let resp = preflight(&srv, origin).await.unwrap();
        assert!(resp.headers().get("access-control-allow-origin").is_none(), "{origin}: {:?}", resp.headers());
    }
    // CORS lets a page call; it does not let it past the key.
    let resp = srv.request(reqwest::Method::GET, "/runs").header("origin", "https://app.example.com").send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = srv.with_key("sk-acme").request(reqwest::Method::GET, "/runs").header("origin", "http://localhost:3000");
    let resp = resp.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "http://localhost:3000");

    for bad in ["app.example.com", "https://app.example.com/path", "ftp://files.example.com", "https://"] {
        let e = ServerConfig::new().cors_origins([bad]).unwrap_err();
        assert!(matches!(e, ServerError::BadCorsOrigin { .. }) && e.to_string().contains("scheme"), "{bad}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_rate_limit_and_refused_requests_do_nothing() {
    let (acme, globex) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let limit = RateLimit::new(3, Duration::from_secs(2)).unwrap();
    let tenants = Tenants::new()
        .tenant("acme", hosting(&acme, Arc::new(Semaphore::new(0)), ServerConfig::new()))
        .unwrap()
        .tenant("globex", hosting(&globex, Arc::new(Semaphore::new(0)), ServerConfig::new()))
        .unwrap()
        .key("acme", "sk-acme-1")
        .unwrap()
        .key("acme", "sk-acme-2")
        .unwrap()
        .key("globex", "sk-globex")
        .unwrap()
        .rate_limit(limit)
        .config(ServerConfig::new().max_body_bytes(1024));
    let srv = serve_app(tenant_router(tenants)).await;
    let (a1, a2, g) = (srv.with_key("sk-acme-1"), srv.with_key("sk-acme-2"), srv.with_key("sk-globex"));

    for name in ["one", "two", "three"] {
        let (code, run) = a1.post("/flows/greet/runs?wait=true", &json!({ "name": name }).to_string()).await;
        assert_eq!(code, 200, "{run}");
    }
    let resp = a1
        .request(reqwest::Method::POST, "/flows/greet/runs?wait=true")
        .body(r#"{"name": "four"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let e: Value = resp.json().await.unwrap();
    assert_eq!(error_of(&e).0, "rate_limited");
    assert!(error_of(&e).1.contains("3 requests per 2 s") && error_of(&e).1.contains("Retry-After"), "{e}");
    // The same key by another header, or padded, is the same key.
    let by_header = srv.request(reqwest::Method::GET, "/runs").header("x-api-key", "sk-acme-1").send().await;
    assert_eq!(by_header.unwrap().status().as_u16(), 429);
    let padded = srv.request(reqwest::Method::GET, "/runs").header("authorization", "Bearer  sk-acme-1 ").send().await;
    assert_eq!(padded.unwrap().status().as_u16(), 429);
    // An unknown key is refused as unknown, whatever the rate: its body is not read.
    let (code, e) = srv.with_key("sk-guess").post("/flows/greet/runs", &"x".repeat(4096)).await;
    assert_eq!((code, error_of(&e).0), (401, "unauthorized"), "{e}");

    // Other keys, of the same tenant or another, have their own allowance.
    let (code, list) = a2.get("/runs").await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["runs"].as_array().unwrap().len(), 3, "the refused fourth started nothing: {list}");
    let (code, runs) = g.get("/runs").await;
    assert_eq!((code, runs["runs"].clone()), (200, json!([])), "nothing of acme's shows to globex");
    // Within its allowance, a key still gets the body limit.
    let (code, e) = g.post("/flows/greet/runs", &json!({"name": "x".repeat(2000)}).to_string()).await;
    assert_eq!((code, error_of(&e).0), (413, "body_too_large"), "{e}");

    // After the wait it was told, the key is served again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (code, run) = a1.post("/flows/greet/runs?wait=true", r#"{"name": "four"}"#).await;
    assert_eq!((code, run["output"].as_str()), (200, Some("HELLO, FOUR")), "{run}");

    let e = RateLimit::new(0, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, ServerError::BadRateLimit { .. }), "{e}");
    assert!(RateLimit::new(1, Duration::ZERO).is_err());
}
