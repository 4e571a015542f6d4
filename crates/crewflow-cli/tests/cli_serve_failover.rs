//! Several `crewflow serve` processes behind one PostgreSQL, one conversation across them, and
//! servers killed (SIGKILL) mid-turn: every turn the client sent is answered once, and the
//! session's history holds each message once, in order.
//!
//! This test's binary is also the server: with `CREWFLOW_TEST_AS_SERVER` set it is a binary of
//! one's own (`crewflow_cli::App`) mounting a conversational flow whose sessions live in
//! PostgreSQL, and `serve` serves it. Its one step answers `reply <turn> to <message> from
//! <pid>` (so the test sees which process ran a turn), and waits first while the file named by
//! `CREWFLOW_TEST_HOLD` exists: a turn held that way is in flight until the test kills its
//! server.
//!
//! The client does what a real one does: it makes a key per message (`Idempotency-Key`) and,
//! when a server dies under a turn, sends the same message with the same key to another server.
//! Two deaths are tried: one before the turn was saved (the retry runs it on the survivor) and
//! one after it was saved but before the client read the answer (the retry is answered from the
//! store, `"repeated": true`, and nothing runs twice).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The conversational flow the server processes serve.
fn relay(url: &str, hold: String) -> Result<crewflow_chat::ChatFlow<crewflow_chat::ChatState>, String> {
    use crewflow_chat::{ChatCx, ChatFlow, ChatState};
    use crewflow_core::{Cx, FlowBuilder};
    let flow = FlowBuilder::<ChatState>::new("relay")
        .start("answer", move |cx: Cx<ChatState>, message: String| {
            let hold = hold.clone();
            async move {
                while Path::new(&hold).exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let turn = cx.state(|s| s.turns);
                cx.reply(format!("reply {turn} to {message} from {}", std::process::id()));
                Ok(())
            }
        })
        .build()
        .map_err(|e| e.to_string())?;
    let sessions = crewflow_store::open_sessions(url).map_err(|e| e.to_string())?;
    Ok(ChatFlow::with_shared_store(flow, sessions))
}

fn server_main() -> ExitCode {
    let url = std::env::var("CREWFLOW_TEST_POSTGRES").unwrap_or_default();
    match relay(&url, std::env::var("CREWFLOW_TEST_HOLD").unwrap_or_default()) {
        Ok(chat) => crewflow_cli::App::new().chat(&chat).run(),
        Err(e) => {
            eprintln!("error: the relay flow does not build: {e}");
            ExitCode::from(2)
        }
    }
}

/// A server process, killed when dropped still running (so a failing test leaves none behind).
struct Served(Option<Child>);

impl Served {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `serve` process of this binary on a free port, and its address.
fn serve(url: &str, hold: &Path) -> (Served, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("CREWFLOW_TEST_AS_SERVER", "1")
        .env("CREWFLOW_TEST_HOLD", hold)
        .env_remove("CREWFLOW_DB")
        .args(["serve", "--addr", "127.0.0.1:0", "--store", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::listening_address(&mut child);
    (Served(Some(child)), addr)
}

/// Writes a request (with an `Idempotency-Key` when `key` is given) on a new connection.
fn send(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let key = key.map(|k| format!("Idempotency-Key: {k}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

/// One request: the status and the body as JSON.
fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let mut reply = String::new();
    send(addr, method, path, key, body).read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {reply:?}"));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}")))
}

/// What the client sent and got: per turn, its message and the one answer it accepted.
struct Client {
    session: String,
    sent: Vec<(String, Value)>,
}

impl Client {
    fn message(&self, n: usize) -> String {
        format!("message {n} of {}", self.session)
    }

    fn key(&self, n: usize) -> String {
        format!("{}-m{n}", self.session)
    }

    /// Sends message `n` to `addr` and takes its answer, which must be `200`.
    fn turn(&mut self, addr: &str, n: usize) -> Value {
        let body = serde_json::json!({"message": self.message(n)}).to_string();
        let path = format!("/sessions/{}/turns", self.session);
        let (status, turn) = http(addr, "POST", &path, Some(&self.key(n)), &body);
        assert_eq!(status, 200, "message {n} to {addr}: {turn}");
        assert_eq!(self.sent.len(), n, "message {n} answered out of order");
        self.sent.push((self.message(n), turn.clone()));
        turn
    }
}

fn pid_of(reply: &Value) -> u32 {
    reply["reply"].as_str().unwrap().rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `GET /sessions/{id}` on `addr` until the session has `turns` saved turns (a deadline,
/// not a fixed sleep).
fn wait_saved(addr: &str, session: &str, turns: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, history) = http(addr, "GET", &format!("/sessions/{session}"), None, "");
        if status == 200 && history["turns"].as_array().map(Vec::len) == Some(turns) {
            return;
        }
        assert!(Instant::now() < deadline, "turn {} was never saved: {history}", turns - 1);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigkill(server: Served) {
    let mut child = server.take();
    child.kill().unwrap(); // SIGKILL: no drain, no goodbye
    child.wait().unwrap();
}

fn main() -> ExitCode {
    if std::env::var_os("CREWFLOW_TEST_AS_SERVER").is_some() {
        return server_main();
    }
    let Some(url) = std::env::var("CREWFLOW_TEST_POSTGRES").ok().filter(|u| !u.is_empty()) else {
        eprintln!("cli_serve_failover: skipped (set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL to run it)");
        return ExitCode::SUCCESS;
    };
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let (a, addr_a) = serve(&url, &hold);
    let (b, addr_b) = serve(&url, &hold);
    let (pid_a, pid_b) = (a.id(), b.id());
    let session = format!("failover-{}-{}", std::process::id(), crewflow_core::RunId::new());
    let mut client = Client { session: session.clone(), sent: Vec::new() };

    let (status, created) = http(&addr_a, "POST", "/sessions", None, &format!(r#"{{"id": "{session}"}}"#));
    assert_eq!(status, 201, "{created}");
    // Turns alternate between the two servers; each is answered by the one it was sent to.
    for n in 0..4 {
        let (addr, pid) = if n % 2 == 0 { (&addr_a, pid_a) } else { (&addr_b, pid_b) };
        let turn = client.turn(addr, n);
        assert_eq!((turn["index"].as_u64(), pid_of(&turn)), (Some(n as u64), pid), "{turn}");
        assert_eq!(turn["repeated"], false, "{turn}");
    }

    // Message 4 goes to A and is held in its step; A is killed mid-turn, before the save.
    std::fs::write(&hold, "").unwrap();
    let body = serde_json::json!({"message": client.message(4)}).to_string();
    let mut stream =
        send(&addr_a, "POST", &format!("/sessions/{session}/turns?stream=sse"), Some(&client.key(4)), &body);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("event: step_started") {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended before the step started: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    sigkill(a);
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest); // EOF or a reset: the answer is lost either way
    seen.extend_from_slice(&rest);
    let seen = String::from_utf8_lossy(&seen);
    assert!(!seen.contains("turn_finished") && !seen.contains("turn_failed"), "{seen}");
    std::fs::remove_file(&hold).unwrap();
    // The client retries on B. A's session lock died with its connection; nothing of the
    // turn was saved, so B runs it.
    let turn = client.turn(&addr_b, 4);
    assert_eq!((turn["index"].as_u64(), pid_of(&turn), &turn["repeated"]), (Some(4), pid_b, &Value::from(false)));

    // A new server C joins; the conversation goes on across B and C.
    let (c, addr_c) = serve(&url, &hold);
    let pid_c = c.id();
    for n in 5..7 {
        let (addr, pid) = if n % 2 == 1 { (&addr_c, pid_c) } else { (&addr_b, pid_b) };
        let turn = client.turn(addr, n);
        assert_eq!((turn["index"].as_u64(), pid_of(&turn)), (Some(n as u64), pid), "{turn}");
    }

    // Message 7 goes to C, which saves the turn and is killed before the client reads the
    // answer: for the client, the same lost answer as before.
    let body = serde_json::json!({"message": client.message(7)}).to_string();
    let unread = send(&addr_c, "POST", &format!("/sessions/{session}/turns"), Some(&client.key(7)), &body);
    wait_saved(&addr_b, &session, 8);
    sigkill(c);
    drop(unread);
    // The retry on B is answered from the store: C's reply, and nothing runs again.
    let turn = client.turn(&addr_b, 7);
    assert_eq!((turn["index"].as_u64(), pid_of(&turn), &turn["repeated"]), (Some(7), pid_c, &Value::from(true)));
    let turn = client.turn(&addr_b, 8);
    assert_eq!((turn["index"].as_u64(), pid_of(&turn), &turn["repeated"]), (Some(8), pid_b, &Value::from(false)));

    // A key names one message: sent again with another, it is refused and runs nothing.
    let (status, refused) = http(
        &addr_b,
        "POST",
        &format!("/sessions/{session}/turns"),
        Some(&client.key(8)),
        r#"{"message": "something else"}"#,
    );
    assert_eq!((status, refused["error"]["code"].as_str()), (422, Some("turn_key_reused")), "{refused}");

    // Every message sent got one answer; the history holds each message and each reply once,
    // in the order sent.
    let (status, history) = http(&addr_b, "GET", &format!("/sessions/{session}"), None, "");
    assert_eq!(status, 200, "{history}");
    let stored: Vec<(String, String, u64)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (m["role"].as_str().unwrap().into(), m["content"].as_str().unwrap().into(), m["turn"].as_u64().unwrap())
        })
        .collect();
    let expected: Vec<(String, String, u64)> = client
        .sent
        .iter()
        .enumerate()
        .flat_map(|(n, (message, answer))| {
            let reply = answer["reply"].as_str().unwrap().to_string();
            [("user".into(), message.clone(), n as u64), ("assistant".into(), reply, n as u64)]
        })
        .collect();
    assert_eq!(stored, expected, "the history is not each message once, in order");
    let turns = history["turns"].as_array().unwrap();
    let recorded: Vec<(u64, &str)> =
        turns.iter().map(|t| (t["index"].as_u64().unwrap(), t["user_message"].as_str().unwrap())).collect();
    let sent: Vec<(u64, &str)> = client.sent.iter().enumerate().map(|(n, (m, _))| (n as u64, m.as_str())).collect();
    assert_eq!(recorded, sent);
    for (n, (_, answer)) in client.sent.iter().enumerate() {
        assert_eq!(answer["run_id"], turns[n]["run_id"], "answer {n} is not the stored turn {n}");
    }

    let (status, _) = http(&addr_b, "DELETE", &format!("/sessions/{session}"), None, "");
    assert_eq!(status, 200);
    let mut b = b.take();
    assert!(Command::new("kill").args(["-TERM", &b.id().to_string()]).status().unwrap().success());
    assert_eq!(b.wait().unwrap().code(), Some(0));
    eprintln!("cli_serve_failover: ok ({} turns over 3 servers, 2 killed mid-turn)", client.sent.len());
    ExitCode::SUCCESS
}
