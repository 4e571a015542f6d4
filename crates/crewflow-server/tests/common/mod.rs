//! Helpers shared by the server's tests: the flows they host, a server on loopback, a JSON
//! client, an incremental SSE reader, polling for a condition, a fresh PostgreSQL schema.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod flows;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crewflow_core::persist::RunStore;
use crewflow_server::{Server, router};
pub use flows::*;
use serde_json::Value;
use tokio::sync::Semaphore;

/// A server listening on loopback, and a client for it.
#[derive(Clone)]
pub struct Running {
    /// `http://127.0.0.1:<port>/api`.
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    /// Sent as `Authorization: Bearer <key>` with every request, when set.
    pub key: Option<String>,
    /// The task serving the router: abort it to stop the server.
    pub task: Arc<tokio::task::JoinHandle<()>>,
}

/// Serves `server` on a loopback port, mounted under `/api` as a user's app would.
pub async fn serve(server: Server) -> Running {
    serve_app(router(server)).await
}

/// Serves an app (a router of the server's, or one wrapping it) under `/api`.
pub async fn serve_app(app: axum::Router) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest("/api", app);
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    crewflow_llm::install_crypto_provider(); // reqwest is built without its own TLS provider
    Running {
        base: format!("http://{addr}/api"),
        addr,
        client: reqwest::Client::new(),
        key: None,
        task: Arc::new(task),
    }
}

/// A server hosting `greet`, `gated` (held by `gate`), `flaky` and `review` over a SQLite file
/// in a fresh directory (kept alive by the returned `TempDir`).
pub async fn runs_server(gate: Arc<Semaphore>) -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(runs_db(&dir).as_str()).unwrap();
    (serve(runs_hosting(&store, gate)).await, dir)
}

/// The SQLite file `runs_server` keeps its runs in.
pub fn runs_db(dir: &tempfile::TempDir) -> String {
    dir.path().join("runs.db").to_str().unwrap().to_string()
}

/// The `Server` of [`runs_server`], over `store`.
pub fn runs_hosting(store: &Arc<dyn RunStore>, gate: Arc<Semaphore>) -> Server {
    Server::new(store.clone())
        .flow(&greet(store))
        .unwrap()
        .flow(&gated(store, gate))
        .unwrap()
        .flow(&flaky(store, Arc::default()))
        .unwrap()
        .flow(&review(store))
        .unwrap()
}

/// Calls `check` every few milliseconds until it gives a value (a condition, not a delay);
/// panics naming `what` after 30 s.
pub async fn poll<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    for _ in 0..6000 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("gave up waiting: {what}");
}

/// A fresh schema of the test database (`CREWFLOW_TEST_POSTGRES`), and the URL that works in it.
pub async fn fresh_pg_schema() -> String {
    let base = std::env::var("CREWFLOW_TEST_POSTGRES").unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let schema = format!("crewflow_srv_{}_{:08x}", now.as_secs(), now.subsec_nanos() ^ std::process::id());
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

impl Running {
    /// The kinds of a run's events, in order, from its whole stream.
    pub async fn event_names(&self, run_id: &str) -> Vec<String> {
        let frames = self.sse("GET", &format!("/runs/{run_id}/events"), None, None).await.all().await;
        frames.into_iter().map(|f| f.event).collect()
    }

    /// The same server, called with `key`.
    pub fn with_key(&self, key: &str) -> Running {
        Running { key: Some(key.to_string()), ..self.clone() }
    }

    /// Stops serving: the listener closes (connections already open are not waited for).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A request to `path`, with the key if there is one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(key) => req.header("authorization", format!("Bearer {key}")),
            None => req,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.request(reqwest::Method::GET, path).send().await.unwrap();
        json_of(path, resp).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        json_of(path, resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self.request(reqwest::Method::DELETE, path).send().await.unwrap();
        json_of(path, resp).await
    }

    pub async fn text(&self, path: &str) -> (u16, String, String) {
        let resp = self.request(reqwest::Method::GET, path).send().await.unwrap();
        let status = resp.status().as_u16();
        let mime = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, mime, resp.text().await.unwrap())
    }

    /// Opens an SSE stream (GET, or POST with a body), with an optional `Last-Event-ID`.
    pub async fn sse(&self, method: &str, path: &str, body: Option<&str>, last_id: Option<&str>) -> Sse {
        let method = if method == "POST" { reqwest::Method::POST } else { reqwest::Method::GET };
        let mut req = self.request(method, path);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        Sse { resp, buf: String::new() }
    }

    /// Polls the run until it has `status`; its body then.
    pub async fn wait_status(&self, run_id: &str, status: &str) -> Value {
        poll(&format!("run {run_id} to be {status}"), || async {
            let (code, body) = self.get(&format!("/runs/{run_id}")).await;
            assert_eq!(code, 200, "{body}");
            (body["status"] == status).then_some(body)
        })
        .await
    }

    /// Polls the session until `n` turns run or wait in it.
    pub async fn wait_running(&self, session: &str, n: u64) {
        poll(&format!("session {session} to have {n} turns running"), || async {
            let (_, body) = self.get(&format!("/sessions/{session}")).await;
            (body["running_turns"] == n).then_some(())
        })
        .await
    }
}

async fn json_of(path: &str, resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
}

/// An SSE response read frame by frame, as they arrive.
pub struct Sse {
    pub resp: reqwest::Response,
    buf: String,
}

/// One SSE frame: `event:`, `id:` and the parsed `data:`.
#[derive(Clone, Debug, PartialEq)]
pub struct SseFrame {
    pub event: String,
    pub id: String,
    pub data: Value,
}

impl Sse {
    pub fn status(&self) -> u16 {
        self.resp.status().as_u16()
    }

    /// The next frame, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(frame) = parse_block(&block) {
                    return Some(frame);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk()).await.unwrap().unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Every frame to the end of the stream.
    pub async fn all(mut self) -> Vec<SseFrame> {
        let mut out = Vec::new();
        while let Some(frame) = self.next().await {
            out.push(frame);
        }
        out
    }

    /// Frames up to and including the first of type `kind`.
    pub async fn until(&mut self, kind: &str) -> Vec<SseFrame> {
        let mut out = Vec::new();
        while let Some(frame) = self.next().await {
            let done = frame.event == kind;
            out.push(frame);
            if done {
                return out;
            }
        }
        panic!("the stream ended before a `{kind}` frame: {out:?}");
    }
}

fn parse_block(block: &str) -> Option<SseFrame> {
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
    if data.is_empty() {
        return None;
    }
    Some(SseFrame { event, id, data: serde_json::from_str(&data).unwrap() })
}

pub fn error_of(body: &Value) -> (&str, &str) {
    (body["error"]["code"].as_str().unwrap(), body["error"]["message"].as_str().unwrap())
}

/// A frame's data without what differs between two equal conversations (times, ids).
pub fn normalized(data: &Value) -> Value {
    match data {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "at" | "run_id" | "turn_id" | "session_id" | "started_at" | "finished_at")
                        && !k.ends_with("_us")
                        && !k.ends_with("_ms")
                        && !k.ends_with("_at")
                        && k.as_str() != "trace_id"
                })
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}
