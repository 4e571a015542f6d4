//! Webhooks over real loopback HTTP, to a receiver (an axum server in the test) that checks
//! every signature: a finished, a failed and a paused run each send their event, with the run
//! as the payload; a delivery answered 500 is tried again (same delivery id, a fresh
//! signature); a receiver that keeps failing gets the configured number of attempts and no
//! more; the signature check refuses a changed body, another secret, an old timestamp; the
//! Python verifier of docs/server.md accepts a real delivery and refuses a changed one; an
//! event outlives a server that could not deliver it; two servers on one PostgreSQL deliver
//! each event once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{flaky, greet, poll, review, serve};
use crewflow_core::persist::RunStore;
use crewflow_server::{DEFAULT_TOLERANCE, Server, SignatureError, Webhook, sign, verify_signature};
use serde_json::Value;

const SECRET: &str = "whsec_test_0123456789abcdef";

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    headers: HeaderMap,
    body: Bytes,
    /// What the signature check said, at arrival.
    verified: Result<(), SignatureError>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on loopback: records every request; answers 500 when `fail(attempt)`.
async fn receiver(fail: fn(u32) -> bool) -> (String, Arc<Mutex<Vec<Got>>>) {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let signature = headers.get("crewflow-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
                let verified = verify_signature(SECRET.as_bytes(), signature, &body, DEFAULT_TOLERANCE);
                let attempt: u32 =
                    headers.get("crewflow-attempt").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
                seen.lock().unwrap().push(Got { headers, body, verified });
                if fail(attempt) { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn hosting(store: &Arc<dyn RunStore>, hook: Webhook) -> Server {
    Server::new(store.clone())
        .flow(&greet(store))
        .unwrap()
        .flow(&flaky(store, Arc::default()))
        .unwrap()
        .flow(&review(store))
        .unwrap()
        .webhook(hook)
}

/// The deliveries of `run_id` so far, in arrival order.
fn of_run(got: &Mutex<Vec<Got>>, run_id: &str) -> Vec<Got> {
    got.lock().unwrap().iter().filter(|g| g.json()["data"]["run_id"] == run_id).cloned().collect()
}

/// Waits for `n` deliveries of `run_id`.
async fn deliveries(got: &Arc<Mutex<Vec<Got>>>, run_id: &str, n: usize) -> Vec<Got> {
    poll(&format!("{n} deliveries for run {run_id}"), || async {
        let seen = of_run(got, run_id);
        (seen.len() >= n).then_some(seen)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_failed_and_paused_runs_are_told_signed_and_retried_after_a_500() {
    // Every first attempt fails with a 500; the second goes through.
    let (url, got) = receiver(|attempt| attempt == 1).await;
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let hook = Webhook::new(&url, SECRET).unwrap().first_retry(Duration::from_millis(100));
    let srv = serve(hosting(&store, hook)).await;

    // finished
    let (code, run) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Ada"}"#).await;
    assert_eq!((code, run["status"].as_str()), (200, Some("finished")), "{run}");
    let id = run["run_id"].as_str().unwrap();
    let seen = deliveries(&got, id, 2).await;
    let (first, second) = (&seen[0], &seen[1]);
    assert_eq!((first.header("crewflow-attempt"), second.header("crewflow-attempt")), ("1", "2"));
    assert_eq!(first.header("crewflow-delivery"), second.header("crewflow-delivery"), "one delivery, tried twice");
    assert_eq!(first.body, second.body, "the same payload on each attempt");
    assert_eq!(second.header("crewflow-event"), "run.finished");
    assert_eq!(second.header("content-type"), "application/json");
    for g in &seen {
        assert_eq!(g.verified, Ok(()), "signature of {g:?}");
    }
    let payload = second.json();
    assert_eq!(payload["type"], "run.finished");
    assert_eq!(payload["id"], second.header("crewflow-delivery"));
    assert_eq!(
        (payload["data"]["status"].as_str(), payload["data"]["output"].as_str()),
        (Some("finished"), Some("HELLO, ADA"))
    );
    assert_eq!((payload["data"]["flow"].as_str(), payload["data"]["steps"].as_u64()), (Some("greet"), Some(2)));
    assert!(payload["created_at"].as_str().unwrap().ends_with('Z'), "{payload}");

    // failed
    let (_, run) = srv.post("/flows/flaky/runs?wait=true", "{}").await;
    assert_eq!(run["status"], "failed", "{run}");
    let seen = deliveries(&got, run["run_id"].as_str().unwrap(), 2).await;
    let payload = seen[1].json();
    assert_eq!((payload["type"].as_str(), payload["data"]["status"].as_str()), (Some("run.failed"), Some("failed")));
    assert!(payload["data"]["error"].as_str().unwrap().contains("the first attempt fails"), "{payload}");
    assert_eq!(seen[1].verified, Ok(()));

    // paused, then answered: finished
    let (_, run) = srv.post("/flows/review/runs?wait=true", "{}").await;
    assert_eq!(run["status"], "paused", "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    let seen = deliveries(&got, &id, 2).await;
    let payload = seen[1].json();
    assert_eq!((payload["type"].as_str(), payload["data"]["status"].as_str()), (Some("run.paused"), Some("paused")));
    assert_eq!(payload["data"]["feedback"]["message"], "Publish?", "{payload}");
    let (code, answered) = srv.post(&format!("/runs/{id}/feedback?wait=true"), r#"{"answer": "approved"}"#).await;
    assert_eq!((code, answered["output"].as_str()), (200, Some("published")), "{answered}");
    let seen = deliveries(&got, &id, 4).await;
    let payload = seen[3].json();
    assert_eq!(
        (payload["type"].as_str(), payload["data"]["output"].as_str()),
        (Some("run.finished"), Some("published"))
    );
    assert_ne!(seen[3].header("crewflow-delivery"), seen[1].header("crewflow-delivery"), "a new event, a new id");

    // The receiver-side check in docs/server.md (Python) accepts a real delivery, refuses a
    // changed one.
    python_verifies(&seen[3], true);
    let mut changed = seen[3].clone();
    changed.body = Bytes::from(String::from_utf8(changed.body.to_vec()).unwrap().replace("published", "binned"));
    python_verifies(&changed, false);
}

/// A run a schedule fired here sends its webhook like any run the server drives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_sends_its_webhook() {
    let (url, got) = receiver(|_| false).await;
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let hook = Webhook::new(&url, SECRET).unwrap();
    let srv = serve(hosting(&store, hook).schedule_every(Duration::from_millis(50))).await;
    let (code, created) =
        srv.post("/flows/greet/schedules", r#"{"cron": "* * * * * *", "inputs": {"name": "tick"}}"#).await;
    assert_eq!(code, 201, "{created}");
    let payload = poll("a scheduled run's webhook", || async {
        got.lock().unwrap().first().map(|g| {
            assert_eq!(g.verified, Ok(()));
            g.json()
        })
    })
    .await;
    assert_eq!(
        (payload["type"].as_str(), payload["data"]["output"].as_str()),
        (Some("run.finished"), Some("HELLO, TICK"))
    );
    let (_, schedule) = srv.get(&format!("/schedules/{}", created["schedule_id"].as_str().unwrap())).await;
    let fired: Vec<&Value> = schedule["fires"].as_array().unwrap().iter().map(|f| &f["run_id"]).collect();
    assert!(fired.contains(&&payload["data"]["run_id"]), "{payload} {schedule}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_keeps_failing_gets_the_configured_attempts_and_no_more() {
    let (url, got) = receiver(|_| true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let hook = Webhook::new(&url, SECRET).unwrap().attempts(3).first_retry(Duration::from_millis(50));
    let srv = serve(hosting(&store, hook)).await;
    let started = std::time::Instant::now();
    let (_, run) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Bo"}"#).await;
    let id = run["run_id"].as_str().unwrap();
    let seen = deliveries(&got, id, 3).await;
    // Backoff: 50 ms, then 100 ms, between the attempts.
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(of_run(&got, id).len(), 3, "more than 3 attempts");
    let attempts: Vec<&str> = seen.iter().map(|g| g.header("crewflow-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);

    // A webhook to a port nobody listens on fails the same way, without hurting the run.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hook = Webhook::new(&format!("http://{closed}/hook"), SECRET)
        .unwrap()
        .attempts(2)
        .first_retry(Duration::from_millis(10));
    let srv = serve(hosting(&store, hook)).await;
    let (code, run) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Cy"}"#).await;
    assert_eq!((code, run["output"].as_str()), (200, Some("HELLO, CY")), "{run}");
}

/// An event is kept in the store until delivered: a server that stops while its receiver is
/// down loses nothing; the next server on the store delivers it (same delivery id, a later
/// attempt), once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_outlives_the_server_that_could_not_deliver_it() {
    // A port with nobody listening yet: the receiver comes up there later.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let hook = || {
        Webhook::new(&url, SECRET)
            .unwrap()
            .attempts(1000)
            .first_retry(Duration::from_millis(50))
            .timeout(Duration::from_secs(1))
    };
    let first = serve(hosting(&store, hook())).await;
    let (_, run) = first.post("/flows/greet/runs?wait=true", r#"{"name": "Di"}"#).await;
    let id = run["run_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await; // a few refused attempts
    first.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            async move {
                let signature = headers.get("crewflow-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
                let verified = verify_signature(SECRET.as_bytes(), signature, &body, DEFAULT_TOLERANCE);
                seen.lock().unwrap().push(Got { headers, body, verified });
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // The stopped server's delivery loop ended with it: the event waits in the store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(of_run(&got, &id).is_empty(), "the stopped server delivered");

    let second = serve(hosting(&store, hook())).await;
    let seen = deliveries(&got, &id, 1).await;
    assert_eq!(seen[0].verified, Ok(()));
    assert_eq!(seen[0].json()["data"]["output"], "HELLO, DI");
    let attempt: u32 = seen[0].header("crewflow-attempt").parse().unwrap();
    assert!(attempt >= 2, "the first server tried first: attempt {attempt}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(of_run(&got, &id).len(), 1, "delivered once");
    second.stop();
}

/// Two servers on one PostgreSQL database deliver each event once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL")]
async fn two_servers_on_one_postgres_deliver_each_event_once() {
    let (url, got) = receiver(|_| false).await;
    let db = common::fresh_pg_schema().await;
    let open = || -> Arc<dyn RunStore> { Arc::new(crewflow_store::PostgresStore::connect_lazy(&db).unwrap()) };
    let hook = || Webhook::new(&url, SECRET).unwrap().first_retry(Duration::from_millis(20));
    let (one, two) = (open(), open());
    let servers = [serve(hosting(&one, hook())).await, serve(hosting(&two, hook())).await];
    let mut ids = Vec::new();
    for i in 0..12 {
        let (code, run) = servers[i % 2].post("/flows/greet/runs?wait=true", &format!(r#"{{"name": "n{i}"}}"#)).await;
        assert_eq!(code, 200, "{run}");
        ids.push(run["run_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        deliveries(&got, id, 1).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = got.lock().unwrap().clone();
    assert_eq!(all.len(), ids.len(), "{} deliveries for {} events", all.len(), ids.len());
    let delivery_ids: std::collections::BTreeSet<&str> = all.iter().map(|g| g.header("crewflow-delivery")).collect();
    assert_eq!(delivery_ids.len(), ids.len());
    assert!(all.iter().all(|g| g.verified.is_ok() && g.header("crewflow-attempt") == "1"));
}

#[test]
fn signatures_refuse_a_changed_body_another_secret_an_old_timestamp_and_garbage() {
    let body = br#"{"type":"run.finished","data":{"output":"ok"}}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = sign(SECRET.as_bytes(), now, body);
    assert!(header.starts_with(&format!("t={now},v1=")) && header.len() == format!("t={now},v1=").len() + 64);
    assert_eq!(verify_signature(SECRET.as_bytes(), &header, body, DEFAULT_TOLERANCE), Ok(()));
    // Several signatures (a secret being rotated): one matching is enough.
    let rotated = format!("{header},v1={}", "00".repeat(32));
    assert_eq!(verify_signature(SECRET.as_bytes(), &rotated, body, DEFAULT_TOLERANCE), Ok(()));

    let changed = br#"{"type":"run.finished","data":{"output":"no"}}"#;
    assert_eq!(verify_signature(SECRET.as_bytes(), &header, changed, DEFAULT_TOLERANCE), Err(SignatureError::Mismatch));
    assert_eq!(
        verify_signature(b"another secret entirely", &header, body, DEFAULT_TOLERANCE),
        Err(SignatureError::Mismatch)
    );
    // The timestamp is signed: moving it breaks the signature.
    let moved = header.replacen(&format!("t={now}"), &format!("t={}", now + 1), 1);
    assert_eq!(verify_signature(SECRET.as_bytes(), &moved, body, DEFAULT_TOLERANCE), Err(SignatureError::Mismatch));
    // A genuine but old signature (a replay): refused, saying how old.
    let old = sign(SECRET.as_bytes(), now - 3600, body);
    match verify_signature(SECRET.as_bytes(), &old, body, DEFAULT_TOLERANCE) {
        Err(SignatureError::Stale { age_seconds, tolerance_seconds: 300 }) => assert!(age_seconds >= 3600),
        other => panic!("{other:?}"),
    }
    assert!(verify_signature(SECRET.as_bytes(), &old, body, Duration::from_secs(7200)).is_ok());
    for garbage in ["", "v1=abcd", &format!("t={now}"), "t=soon,v1=00", &format!("t={now},v1=zz")] {
        assert!(verify_signature(SECRET.as_bytes(), garbage, body, DEFAULT_TOLERANCE).is_err(), "{garbage}");
    }
    // Bad configurations are refused, naming the fix.
    let e = Webhook::new("ftp://example.com/hook", SECRET).unwrap_err().to_string();
    assert!(e.contains("http:// or https://"), "{e}");
    let e = Webhook::new("https://example.com/hook", "short").unwrap_err().to_string();
    assert!(e.contains("at least 16"), "{e}");
}

/// Runs the Python receiver of docs/server.md ("Verifying a webhook") on a delivery.
fn python_verifies(got: &Got, expected: bool) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/server.md")).unwrap();
    let section = doc.split("### Verifying a webhook").nth(1).expect("docs/server.md has the section");
    let code = section.split("```python\n").nth(1).and_then(|s| s.split("\n```").next()).expect("a python block");
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, &got.body).unwrap();
    let script = format!(
        "{code}\nimport os, sys\nbody = open(sys.argv[1], 'rb').read()\nprint(verify(os.environ['SECRET'].encode(), os.environ['SIGNATURE'], body))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&body)
        .env("SECRET", SECRET)
        .env("SIGNATURE", got.header("crewflow-signature"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), if expected { "True" } else { "False" });
}
