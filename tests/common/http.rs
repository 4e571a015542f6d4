//! A loopback HTTP/1.1 server that replays scripted replies, for the provider tests.
//!
//! It writes bodies in the chunks it is given (chunked transfer encoding), with a pause
//! between them, so tests control exactly where the bytes are cut: inside an SSE line, a JSON
//! token, a multi-byte UTF-8 character. It records every request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A scripted reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

/// How a reply's body is written.
#[derive(Clone, Debug)]
pub enum Body {
    /// In one piece, with a Content-Length.
    Full(Vec<u8>),
    /// In these chunks, pausing between them.
    Chunks(Vec<Vec<u8>>, Duration),
    /// This chunk again and again until the client goes away.
    Endless(Vec<u8>, Duration),
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::Full(body.to_string().into_bytes()),
        }
    }

    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Body::Full(body.as_bytes().to_vec()),
        }
    }

    /// Server-sent events, each `(event name, data)`, cut into awkward chunks.
    pub fn sse(events: &[(Option<&str>, String)]) -> Reply {
        let mut raw = String::new();
        for (name, data) in events {
            if let Some(n) = name {
                raw.push_str(&format!("event: {n}\n"));
            }
            raw.push_str(&format!("data: {data}\n\n"));
        }
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: Body::Chunks(awkward_chunks(raw.as_bytes()), Duration::from_millis(1)),
        }
    }

    /// Newline-delimited JSON, cut into awkward chunks.
    pub fn ndjson(lines: &[Value]) -> Reply {
        let raw: String = lines.iter().map(|l| format!("{l}\n")).collect();
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
            body: Body::Chunks(awkward_chunks(raw.as_bytes()), Duration::from_millis(1)),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Cuts bytes into chunks of 1, 7, 3, 13, 2, 5 bytes, over and over: boundaries land
/// everywhere, including inside multi-byte characters.
pub fn awkward_chunks(bytes: &[u8]) -> Vec<Vec<u8>> {
    let sizes = [1usize, 7, 3, 13, 2, 5];
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < bytes.len() {
        let n = sizes[i % sizes.len()].min(bytes.len() - at);
        out.push(bytes[at..at + n].to_vec());
        at += n;
        i += 1;
    }
    out
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The server; dropping it stops accepting connections.
pub struct TestServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    disconnects: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves `replies` in order, one per request.
    pub async fn start(replies: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let disconnects = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(VecDeque::from(replies)));
        let (r, d) = (requests.clone(), disconnects.clone());
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (r, d, script) = (r.clone(), d.clone(), script.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, r, d, script).await;
                });
            }
        });
        TestServer { url, requests, disconnects, task }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times a client went away in the middle of an endless body.
    pub fn disconnects(&self) -> usize {
        self.disconnects.load(Ordering::SeqCst)
    }
}

async fn serve(
    socket: TcpStream,
    requests: Arc<Mutex<Vec<Recorded>>>,
    disconnects: Arc<AtomicUsize>,
    script: Arc<Mutex<VecDeque<Reply>>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            read.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_lowercase(), v.trim().to_string()));
            }
        }
        let length: usize =
            headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length];
        read.read_exact(&mut body).await?;
        requests.lock().unwrap_or_else(|e| e.into_inner()).push(Recorded {
            method,
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let reply = script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or_else(|| Reply::text(500, "the test server has no scripted reply for this request"));
        let reason = match reply.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            _ => "Status",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match &reply.body {
            Body::Full(bytes) => {
                head.push_str(&format!("content-length: {}\r\n\r\n", bytes.len()));
                write.write_all(head.as_bytes()).await?;
                write.write_all(bytes).await?;
            }
            Body::Chunks(chunks, pause) => {
                head.push_str("transfer-encoding: chunked\r\n\r\n");
                write.write_all(head.as_bytes()).await?;
                for c in chunks {
                    write.write_all(format!("{:x}\r\n", c.len()).as_bytes()).await?;
                    write.write_all(c).await?;
                    write.write_all(b"\r\n").await?;
                    write.flush().await?;
                    tokio::time::sleep(*pause).await;
                }
                write.write_all(b"0\r\n\r\n").await?;
            }
            Body::Endless(chunk, pause) => {
                head.push_str("transfer-encoding: chunked\r\n\r\n");
                write.write_all(head.as_bytes()).await?;
                loop {
                    let sent = async {
                        write.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                        write.write_all(chunk).await?;
                        write.write_all(b"\r\n").await?;
                        write.flush().await
                    }
                    .await;
                    if sent.is_err() {
                        disconnects.fetch_add(1, Ordering::SeqCst);
                        return Ok(());
                    }
                    tokio::time::sleep(*pause).await;
                }
            }
        }
        write.flush().await?;
    }
}

/// A Chat Completions reply (the OpenAI wire format) whose message is `text`.
pub fn openai_completion(text: &str) -> Reply {
    Reply::json(
        200,
        &serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
            "choices": [{ "index": 0, "finish_reason": "stop", "logprobs": null,
                "message": { "role": "assistant", "content": text, "refusal": null } }],
            "usage": { "prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25 }
        }),
    )
}

/// A model client speaking the OpenAI wire format to `server`, without retries.
pub fn openai_llm(server: &TestServer) -> crewflow::llm::Llm {
    let options = crewflow::llm::LlmOptions::default()
        .base_url(format!("{}/v1", server.url))
        .api_key("sk-test")
        .retry(crewflow::llm::RetryPolicy::none());
    crewflow::llm::Llm::with_options("openai/gpt-4o-mini", options).unwrap()
}

/// A Chat Completions reply (the OpenAI wire format) asking for tool calls, each
/// `(id, tool, arguments)`.
pub fn openai_tool_calls(calls: &[(&str, &str, Value)]) -> Reply {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, args)| {
            serde_json::json!({ "id": id, "type": "function",
                "function": { "name": name, "arguments": args.to_string() } })
        })
        .collect();
    Reply::json(
        200,
        &serde_json::json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
            "choices": [{ "index": 0, "finish_reason": "tool_calls", "logprobs": null,
                "message": { "role": "assistant", "content": null, "refusal": null, "tool_calls": calls } }],
            "usage": { "prompt_tokens": 30, "completion_tokens": 10, "total_tokens": 40 }
        }),
    )
}

/// A model client speaking Anthropic's Messages API to `server`, without retries.
pub fn anthropic_llm(server: &TestServer) -> crewflow::llm::Llm {
    let options = crewflow::llm::LlmOptions::default()
        .base_url(server.url.clone())
        .api_key("ak-test")
        .retry(crewflow::llm::RetryPolicy::none());
    crewflow::llm::Llm::with_options("anthropic/claude-sonnet-4-5", options).unwrap()
}

/// A Messages API reply (Anthropic's wire format) with these content blocks and stop reason;
/// its usage is 30 input + 100 cache-read input + 12 output tokens.
pub fn anthropic_message(content: Value, stop: &str) -> Value {
    serde_json::json!({ "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": content,
        "stop_reason": stop, "stop_sequence": null,
        "usage": { "input_tokens": 30, "output_tokens": 12, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0, "service_tier": "standard" } })
}

/// A model client speaking Gemini's generateContent API to `server` (model `model`), without
/// retries.
pub fn gemini_llm(server: &TestServer, model: &str) -> crewflow::llm::Llm {
    let options = crewflow::llm::LlmOptions::default()
        .base_url(server.url.clone())
        .api_key("g-test")
        .retry(crewflow::llm::RetryPolicy::none());
    crewflow::llm::Llm::with_options(&format!("gemini/{model}"), options).unwrap()
}

/// A generateContent reply (Gemini's wire format) with these parts and finish reason; its usage
/// is 17 prompt (4 cached) + 5 candidate tokens.
pub fn gemini_reply(parts: Value, finish: &str) -> Value {
    serde_json::json!({ "candidates": [{ "content": { "role": "model", "parts": parts }, "finishReason": finish, "index": 0 }],
        "usageMetadata": { "promptTokenCount": 17, "candidatesTokenCount": 5, "totalTokenCount": 22, "cachedContentTokenCount": 4 },
        "modelVersion": "gemini-2.5-flash", "responseId": "resp-1" })
}
