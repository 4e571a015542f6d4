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
    let addr = common::listening_address(&mut server);

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

    let out = s.cmd(&["serve", "--flows", "review.yaml", "--store", &db, "--max-lateness", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("invalid value 'soon' for '--max-lateness <DURATION|none>'"), "{err}");
    assert!(err.contains("give a duration (`30m`, `2h`, `1day`) or `none` (no limit)"), "{err}");

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
    let addr = common::listening_address(&mut server);
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

/// A request the receiver got: its headers (lower-cased names) and its body.
type Delivery = (Vec<(String, String)>, String);

/// A webhook receiver on loopback: each request sent on the channel, answered 204.
fn receiver() -> (String, std::sync::mpsc::Receiver<Delivery>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.push((name.trim().to_lowercase(), value.trim().to_string()));
                }
            }
            let len: usize = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").unwrap();
            if tx.send((headers, String::from_utf8(body).unwrap())).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn serve_fires_cron_schedules_and_sends_signed_webhooks() {
    const SECRET: &str = "whsec_cli_0123456789abcdef";
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let (hook, deliveries) = receiver();

    // No secret: refused before anything listens, naming the variable.
    let out = s
        .cmd(&["serve", "--flows", "review.yaml", "--addr", "127.0.0.1:0", "--store", &db, "--webhook", &hook])
        .env_remove("CREWFLOW_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("set $CREWFLOW_WEBHOOK_SECRET"), "{}", stderr(&out));

    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .env("CREWFLOW_WEBHOOK_SECRET", SECRET)
        .args(["serve", "--flows", "review.yaml", "--addr", "127.0.0.1:0", "--store", &db, "--webhook", &hook])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::listening_address(&mut server);

    // Every second, a run of `review` with the schedule's inputs; its end is a signed webhook.
    let (status, created) =
        http(&addr, "POST", "/flows/review/schedules", r#"{"cron": "* * * * * *", "inputs": {"topic": "ticks"}}"#);
    assert_eq!(status, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    let (headers, body) = deliveries.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).unwrap_or("");
    crewflow_server::verify_signature(
        SECRET.as_bytes(),
        header("crewflow-signature"),
        body.as_bytes(),
        crewflow_server::DEFAULT_TOLERANCE,
    )
    .unwrap();
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((event["type"].as_str(), header("crewflow-event")), (Some("run.finished"), "run.finished"));
    assert_eq!(event["data"]["output"], "published: draft about ticks", "{event}");
    let (status, schedule) = http(&addr, "GET", &format!("/schedules/{id}"), "");
    assert_eq!(status, 200);
    let fired: Vec<&Value> = schedule["fires"].as_array().unwrap().iter().map(|f| &f["run_id"]).collect();
    assert!(fired.contains(&&event["data"]["run_id"]), "{schedule}");
    let (status, _) = http(&addr, "DELETE", &format!("/schedules/{id}"), "");
    assert_eq!(status, 200);

    let status = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(server.wait_with_output().unwrap().status.code(), Some(0));
}

/// Starts `crewflow serve` on a free port; its address.
fn serve_on(s: &Scratch, store: &str, flow: &str) -> (std::process::Child, String) {
    let mut server = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .args(["serve", "--flows", flow, "--addr", "127.0.0.1:0", "--store", store])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::listening_address(&mut server);
    (server, addr)
}

/// Two `crewflow serve` processes on one PostgreSQL database: a schedule firing every second
/// fires each tick once between them, one run per tick.
#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "needs CREWFLOW_TEST_POSTGRES")]
fn two_serve_processes_on_one_postgres_fire_each_tick_once() {
    let url = std::env::var("CREWFLOW_TEST_POSTGRES").unwrap();
    let s = Scratch::new();
    // A flow of its own name, so the shared database's other runs are not counted.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let name = format!("ticks_{}_{nanos}", std::process::id());
    s.write("ticks.yaml", &REVIEW.replacen("name: review", &format!("name: {name}"), 1));
    let (mut one, addr_one) = serve_on(&s, &url, "ticks.yaml");
    let (mut two, addr_two) = serve_on(&s, &url, "ticks.yaml");

    let (status, created) = http(
        &addr_one,
        "POST",
        &format!("/flows/{name}/schedules"),
        r#"{"cron": "* * * * * *", "inputs": {"topic": "twice?"}}"#,
    );
    assert_eq!(status, 201, "{created}");
    let id = created["schedule_id"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let (status, schedule) = http(&addr_two, "GET", &format!("/schedules/{id}"), "");
    assert_eq!(status, 200);
    let (status, _) = http(&addr_two, "DELETE", &format!("/schedules/{id}"), "");
    assert_eq!(status, 200);
    let deleted_at = chrono::Utc::now();

    let fires = schedule["fires"].as_array().unwrap();
    assert!(fires.len() >= 3, "{schedule}");
    let ticks: std::collections::BTreeSet<String> =
        fires.iter().map(|f| f["tick"].as_str().unwrap().to_string()).collect();
    assert_eq!(ticks.len(), fires.len(), "a tick fired twice: {schedule}");
    let first: chrono::DateTime<chrono::Utc> = fires.last().unwrap()["tick"].as_str().unwrap().parse().unwrap();
    // Every run of the flow came from a tick, one per tick: no more runs than seconds went by.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let listed = json_lines(&s.cmd(&["runs", "list", "--flow", &name, "--store", &url, "--json"]).output().unwrap());
    let most = (deleted_at - first).num_seconds() + 1;
    assert!(listed.len() as i64 <= most, "{} runs for at most {most} ticks", listed.len());
    assert!(listed.len() >= fires.len(), "{} runs, {} fires", listed.len(), fires.len());

    for server in [&mut one, &mut two] {
        let status = std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
    assert_eq!((one.wait().unwrap().code(), two.wait().unwrap().code()), (Some(0), Some(0)));
}

/// `crewflow worker --webhook`: the runs a worker drives (here queued with `run --queue`, as
/// scheduled runs a server leaves to workers are) send the same signed events a server sends.
#[test]
fn a_worker_sends_signed_webhooks_for_the_runs_it_drives() {
    const SECRET: &str = "whsec_worker_0123456789abcdef";
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    s.write("reviewed.yaml", REVIEWED);
    let db = s.db("runs.db");
    let (hook, deliveries) = receiver();
    let worker_args = ["worker", "--flows", "review.yaml", "reviewed.yaml", "--store", &db, "--poll-ms", "50"];
    let out = s.cmd(&worker_args).args(["--webhook", &hook]).env_remove("CREWFLOW_WEBHOOK_SECRET").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("set $CREWFLOW_WEBHOOK_SECRET"), "{}", stderr(&out));

    let mut queued = Vec::new();
    for (flow, topic) in [("review.yaml", "worker hooks"), ("reviewed.yaml", "a pause")] {
        let input = format!("topic={topic}");
        let out = s.cmd(&["run", flow, "--queue", "--input", &input, "--store", &db]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        queued.push(stdout(&out).trim().to_string());
    }
    let worker = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .env("CREWFLOW_WEBHOOK_SECRET", SECRET)
        .args(worker_args)
        .args(["--webhook", &hook])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = std::collections::BTreeMap::new();
    for _ in 0..2 {
        // generous: only a guard against a hung worker, not a speed check
        let (headers, body) = deliveries.recv_timeout(Duration::from_secs(60)).expect("no webhook from the worker");
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
        crewflow_server::verify_signature(
            SECRET.as_bytes(),
            &header("crewflow-signature"),
            body.as_bytes(),
            crewflow_server::DEFAULT_TOLERANCE,
        )
        .unwrap();
        let event: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["type"].as_str(), Some(header("crewflow-event").as_str()), "{event}");
        events.insert(event["data"]["run_id"].as_str().unwrap().to_string(), event);
    }
    let finished = &events[&queued[0]];
    assert_eq!(finished["type"], "run.finished", "{finished}");
    assert_eq!(finished["data"]["output"], "published: draft about worker hooks", "{finished}");
    assert_eq!((finished["data"]["flow"].as_str(), finished["data"]["steps"].as_u64()), (Some("review"), Some(3)));
    let paused = &events[&queued[1]];
    assert_eq!(paused["type"], "run.paused", "{paused}");
    assert_eq!(paused["data"]["feedback"]["message"], "Is this draft good?", "{paused}");

    sigterm(&worker);
    let (code, err, _) = exit_within(worker, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(deliveries.try_recv().is_err(), "an event was sent twice");
}

/// `GET path` with `key` as `Authorization: Bearer` (none: no header); the status.
fn get_with_key(addr: &str, path: &str, key: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Starts `crewflow serve` on review.yaml, a free port and `db`, with `extra` arguments.
fn serve_review(s: &Scratch, db: &str, extra: &[&str]) -> Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .args(["serve", "--flows", "review.yaml", "--addr", "127.0.0.1:0", "--store", db])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `crewflow keys` and `crewflow serve --api-keys`: a key made with the binary lets requests
/// in, a wrong or missing one does not, and a revoked one is refused within the refresh time.
#[test]
fn serve_with_api_keys_lets_in_the_stores_keys_until_revoked() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let serve = |extra: &[&str]| serve_review(&s, &db, &[&["--api-keys"], extra].concat());

    // No key for the tenant yet: refused at start, naming the fix.
    let out = serve(&[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("crewflow keys create --tenant default"), "{}", stderr(&out));

    let made = s.cmd(&["keys", "create", "--label", "ci", "--store", &db]).output().unwrap();
    assert!(made.status.success(), "{}", stderr(&made));
    let key = stdout(&made).trim().to_string();
    assert!(key.starts_with("cfk_") && !key.contains('\n'), "{key}");
    assert!(stderr(&made).contains("shown only now"), "{}", stderr(&made));
    let other =
        json_lines(&s.cmd(&["keys", "create", "--tenant", "globex", "--store", &db, "--json"]).output().unwrap());
    let other_key = other[0]["key"].as_str().unwrap().to_string();
    // Bad names are refused, and nothing is stored.
    let bad = s.cmd(&["keys", "create", "--tenant", "a b", "--store", &db]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));

    let mut server = serve(&["--key-refresh", "200ms"]);
    let addr = common::listening_address(&mut server);
    assert_eq!(get_with_key(&addr, "/flows", None), 401);
    assert_eq!(get_with_key(&addr, "/flows", Some("cfk_wrong")), 401);
    assert_eq!(get_with_key(&addr, "/flows", Some(&other_key)), 401, "another tenant's key");
    assert_eq!(get_with_key(&addr, "/flows", Some(&key)), 200);
    assert_eq!(get_with_key(&addr, "/", None), 200, "the page asks for the key itself");

    let listed = json_lines(&s.cmd(&["keys", "list", "--store", &db, "--json"]).output().unwrap());
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!((listed[0]["tenant"].as_str(), listed[0]["label"].as_str()), (Some("default"), Some("ci")));
    assert!(listed.iter().all(|k| k.get("key").is_none() && k["revoked_at"].is_null()), "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap();
    let revoked = s.cmd(&["keys", "revoke", id, "--store", &db]).output().unwrap();
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let start = Instant::now();
    while get_with_key(&addr, "/flows", Some(&key)) != 401 {
        assert!(start.elapsed() < Duration::from_secs(5), "a revoked key still works");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A key made with an expiry works until then, then not.
    let expiring =
        json_lines(&s.cmd(&["keys", "create", "--expires-in", "3s", "--store", &db, "--json"]).output().unwrap());
    assert!(expiring[0]["expires_at"].is_string(), "{expiring:?}");
    let expiring_key = expiring[0]["key"].as_str().unwrap();
    // New: let in within a second (an unknown key reads the keys again at most once a second).
    let start = Instant::now();
    while get_with_key(&addr, "/flows", Some(expiring_key)) != 200 {
        assert!(start.elapsed() < Duration::from_millis(1400), "a new key is not let in");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    while get_with_key(&addr, "/flows", Some(expiring_key)) != 401 {
        assert!(start.elapsed() < Duration::from_secs(6), "an expired key still works");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bad = s.cmd(&["keys", "create", "--expires-in", "soon", "--store", &db]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    let unknown = s.cmd(&["keys", "revoke", "key_nope", "--store", &db]).output().unwrap();
    assert_eq!(unknown.status.code(), Some(5), "{}", stderr(&unknown));
    let table = stdout(&s.cmd(&["keys", "list", "--store", &db]).output().unwrap());
    assert!(table.starts_with("ID") && table.contains(id) && table.contains("globex"), "{table}");
    assert!(table.lines().next().unwrap().contains("EXPIRES (UTC)"), "{table}");

    sigterm(&server);
    let out = server.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("every request needs an API key of tenant `default`"), "{}", stderr(&out));
}

/// Sends `head` (request line and headers, without the blank line) and `body`; the status and
/// the response's head, lowercased.
fn raw(addr: &str, head: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "{head}\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let head = reply.split("\r\n\r\n").next().unwrap().to_lowercase();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), head)
}

/// `serve --rate-limit`, `--max-body-bytes`, `--cors-origin`: the library's limits, from the
/// command line; bad values are refused before anything is served.
#[test]
fn serve_takes_a_rate_limit_a_body_limit_and_cors_origins() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let key = stdout(&s.cmd(&["keys", "create", "--store", &db]).output().unwrap()).trim().to_string();
    let serve = |extra: &[&str]| serve_review(&s, &db, extra);
    for (bad, says) in [
        (vec!["--api-keys", "--rate-limit", "0/1s"], "lets nothing through"),
        (vec!["--api-keys", "--rate-limit", "5"], "is not REQUESTS/PERIOD"),
        (vec!["--rate-limit", "5/1s"], "--api-keys"),
        (vec!["--cors-origin", "app.example.com/path"], "is not an origin"),
    ] {
        let out = serve(&bad).wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{bad:?}: {}", stderr(&out));
    }

    let mut server = serve(&[
        "--api-keys",
        "--rate-limit",
        "3/1m",
        "--max-body-bytes",
        "64",
        "--cors-origin",
        "https://app.example.com",
    ]);
    let addr = common::listening_address(&mut server);
    let auth = format!("Authorization: Bearer {key}");
    // A browser's preflight is answered for the named origin, before any key.
    let (status, head) = raw(
        &addr,
        "OPTIONS /flows HTTP/1.1\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST",
        "",
    );
    assert!(status < 300 && head.contains("access-control-allow-origin: https://app.example.com"), "{head}");
    let (_, head) = raw(
        &addr,
        "OPTIONS /flows HTTP/1.1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST",
        "",
    );
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    // A body over 64 bytes: 413, whatever it holds.
    let big = format!(r#"{{"topic": "{}"}}"#, "x".repeat(100));
    let (status, _) =
        raw(&addr, &format!("POST /flows/review/runs HTTP/1.1\r\n{auth}\r\nContent-Type: application/json"), &big);
    assert_eq!(status, 413);
    // Three requests a minute for the key: two more, then 429 with Retry-After.
    for _ in 0..2 {
        assert_eq!(raw(&addr, &format!("GET /flows HTTP/1.1\r\n{auth}"), "").0, 200);
    }
    let (status, head) = raw(&addr, &format!("GET /flows HTTP/1.1\r\n{auth}"), "");
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("retry-after: "), "{head}");

    sigterm(&server);
    assert_eq!(server.wait_with_output().unwrap().status.code(), Some(0));
}
