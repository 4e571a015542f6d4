//! Helpers shared by the server's tests: a server on loopback, a JSON client, an incremental
//! SSE reader.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use crewflow_server::{Server, router};
use serde_json::Value;

pub struct Running {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
}

/// Serves `server` on a loopback port, mounted under `/api` as a user's app would.
pub async fn serve(server: Server) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().nest("/api", router(server));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    crewflow_llm::install_crypto_provider(); // reqwest is built without its own TLS provider
    Running { base: format!("http://{addr}/api"), addr, client: reqwest::Client::new() }
}

impl Running {
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        json_of(path, resp).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        json_of(path, resp).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let resp = self.client.delete(format!("{}{path}", self.base)).send().await.unwrap();
        json_of(path, resp).await
    }

    pub async fn text(&self, path: &str) -> (u16, String, String) {
        let resp = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = resp.status().as_u16();
        let mime = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, mime, resp.text().await.unwrap())
    }

    /// Opens an SSE stream (GET, or POST with a body), with an optional `Last-Event-ID`.
    pub async fn sse(&self, method: &str, path: &str, body: Option<&str>, last_id: Option<&str>) -> Sse {
        let url = format!("{}{path}", self.base);
        let mut req = if method == "POST" { self.client.post(url) } else { self.client.get(url) };
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        Sse { resp, buf: String::new() }
    }

    pub async fn wait_status(&self, run_id: &str, status: &str) -> Value {
        for _ in 0..3000 {
            let (code, body) = self.get(&format!("/runs/{run_id}")).await;
            assert_eq!(code, 200, "{body}");
            if body["status"] == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {run_id} never became {status}");
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
