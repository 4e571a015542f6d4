//! `crewflow serve`: the real binary serves a YAML flow over loopback HTTP; a run is started
//! and read back over HTTP, and SIGTERM stops the server cleanly: a run in flight finishes
//! within the grace period, or is left checkpointed for another instance to finish.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One HTTP/1.1 request over a fresh connection: the status and the body as JSON.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")))
}

#[test]
fn serve_starts_runs_over_http_and_stops_on_sigterm() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .args(["serve", "--flows", "review.yaml", "--addr", "127.0.0.1:0", "--store", &db])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim_end().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{first:?}")).to_string();

    let (status, flows) = http(&addr, "GET", "/flows", "");
    assert_eq!((status, flows["flows"][0]["name"].as_str()), (200, Some("review")));
    let (status, run) = http(&addr, "POST", "/flows/review/runs?wait=true", r#"{"topic": "rust flows"}"#);
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (run["status"].as_str(), run["output"].as_str()),
        (Some("finished"), Some("published: draft about rust flows"))
    );
    let id = run["run_id"].as_str().unwrap().to_string();
    let (status, stored) = http(&addr, "GET", &format!("/runs/{id}"), "");
    assert_eq!(
        (status, stored["status"].as_str(), stored["steps"].as_array().map(Vec::len)),
        (200, Some("finished"), Some(3))
    );
    let (status, unknown) = http(&addr, "POST", "/flows/nope/runs", "{}");
    assert_eq!((status, unknown["error"]["code"].as_str()), (404, Some("unknown_flow")));

    let status = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = server.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), format!("serving flows review with runs in {db}; Ctrl-C stops it\nserver stopped\n"));
    // the run is in the store the server was given, for the other commands to read
    let listed = json_lines(&s.cmd(&["runs", "list", "--store", &db, "--json"]).output().unwrap());
    assert_eq!((listed.len(), listed[0]["run_id"].as_str()), (1, Some(id.as_str())));
}

#[test]
fn serve_refuses_no_flows_and_a_taken_address() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out = s.cmd(&["serve", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "error: no flows to serve: give their definitions with --flows FILE…\n");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = s.cmd(&["serve", "--flows", "review.yaml", "--addr", &addr, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("error: cannot listen on {addr}: ")), "{err}");
    assert!(err.ends_with("; pick a free address with --addr HOST:PORT (port 0: any free port)\n"), "{err}");

    // a store that does not answer: exit 4 before listening
    let dead = "postgres://postgres@127.0.0.1:1/none";
    let out = s.cmd(&["serve", "--flows", "review.yaml", "--addr", "127.0.0.1:0", "--store", dead]).output().unwrap();
    assert_eq!((out.status.code(), stdout(&out).as_str()), (Some(4), ""));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("error: could not list runs in the store `{dead}`: ")), "{err}");
    assert!(err.ends_with("; check the URL (--store or $CREWFLOW_DB) and that the database is up\n"), "{err}");

    let out = s.cmd(&["serve", "--flows", "missing.yaml", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: cannot read the flow definition missing.yaml: "), "{}", stderr(&out));
}

/// A flow whose first step asks a model (the OpenAI wire format, served by [`SlowModel`]).
const SLOW: &str = r#"
name: slow
methods:
  think:
    start: true
    do: {call: llm, model: openai/stub, prompt: "think"}
  done:
    listen: think
    do: {call: expression, expr: '"done: " + input'}
"#;

/// A loopback OpenAI-compatible endpoint that takes its time: each request is announced on
/// `received`, then answered (`an idea`) after `delay_ms`, read when the request arrives.
struct SlowModel {
    url: String,
    received: mpsc::Receiver<()>,
    delay_ms: Arc<AtomicU64>,
}

impl SlowModel {
    fn start(delay_ms: u64) -> SlowModel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let (tx, received) = mpsc::channel();
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let delay_ms = delay.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (tx, delay) = (tx.clone(), delay.load(Ordering::SeqCst));
                std::thread::spawn(move || answer_slowly(stream, &tx, delay));
            }
        });
        SlowModel { url, received, delay_ms }
    }

    /// Waits until the model has been asked (the step is then in flight).
    fn wait_asked(&self) {
        self.received.recv_timeout(Duration::from_secs(20)).expect("the model was never asked");
    }
}

fn answer_slowly(stream: TcpStream, asked: &mpsc::Sender<()>, delay_ms: u64) {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let _ = asked.send(());
    std::thread::sleep(Duration::from_millis(delay_ms));
    let reply = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "stub",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "an idea"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    })
    .to_string();
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

/// `crewflow serve` of `slow.yaml` with the model at `model`; the child and its address.
fn serve_slow(s: &Scratch, db: &str, model: &SlowModel, grace: &str) -> (Child, String) {
    s.write("slow.yaml", SLOW);
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .env("OPENAI_BASE_URL", &model.url)
        .env("OPENAI_API_KEY", "sk-test")
        .args(["serve", "--flows", "slow.yaml", "--addr", "127.0.0.1:0", "--store", db, "--grace", grace])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let addr = first.trim_end().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{first:?}")).to_string();
    (server, addr)
}

fn sigterm(child: &Child) {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits for the child to exit (at most `limit`); its exit code, stderr, and how long it took.
fn exit_within(mut child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code(), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the server did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stored_run(s: &Scratch, db: &str, id: &str) -> Value {
    let out = s.cmd(&["runs", "show", id, "--store", db, "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn sigterm_lets_a_run_in_flight_finish_and_takes_no_new_one() {
    let s = Scratch::new();
    let db = s.db("runs.db");
    let model = SlowModel::start(1500);
    let (server, addr) = serve_slow(&s, &db, &model, "20s");
    let (status, started) = http(&addr, "POST", "/flows/slow/runs", "{}");
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    model.wait_asked(); // `think` is in flight

    sigterm(&server);
    // no new run is taken: the listener is closed (or, on a connection still open, 503)
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(mut stream) = TcpStream::connect(&addr) {
        let _ = write!(
            stream,
            "POST /flows/slow/runs HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 503"), "a run was taken while stopping: {reply}");
    }
    let (code, err, _) = exit_within(server, Duration::from_secs(15));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stopping: no new runs; waiting up to 20s for 1 run or turn in flight\n"), "{err}");
    assert!(err.ends_with("server stopped\n") && !err.contains("grace period over"), "{err}");
    let run = stored_run(&s, &db, &id);
    let last = run["steps"].as_array().and_then(|s| s.last()).map(|s| s["output"].clone());
    assert_eq!((run["status"].as_str(), last), (Some("finished"), Some(Value::from("done: an idea"))), "{run}");
    assert_eq!(model.received.try_iter().count(), 0, "the model was asked once");
}

#[test]
fn a_run_still_going_after_the_grace_period_is_left_for_another_instance() {
    let s = Scratch::new();
    let db = s.db("runs.db");
    let model = SlowModel::start(5000);
    let (server, addr) = serve_slow(&s, &db, &model, "300ms");
    let (status, started) = http(&addr, "POST", "/flows/slow/runs", "{}");
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    model.wait_asked();

    sigterm(&server);
    let (code, err, took) = exit_within(server, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(took < Duration::from_secs(4), "exited after {took:?}, not at the end of the grace period");
    assert!(
        err.contains(&format!("grace period over: left running, checkpointed in the store: {id}; `crewflow runs resume ID` (or a worker, or another instance) continues them\n")),
        "{err}"
    );
    assert_eq!(stored_run(&s, &db, &id)["status"].as_str(), Some("running"));

    // another instance (this host, the server's process gone) takes it over and finishes it
    model.delay_ms.store(0, Ordering::SeqCst);
    let out = s
        .cmd(&["runs", "resume", &id, "--flow", "slow.yaml", "--store", &db])
        .env("OPENAI_BASE_URL", &model.url)
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = stored_run(&s, &db, &id);
    let last = run["steps"].as_array().and_then(|s| s.last()).map(|s| s["output"].clone());
    assert_eq!((run["status"].as_str(), last), (Some("finished"), Some(Value::from("done: an idea"))), "{run}");
}
