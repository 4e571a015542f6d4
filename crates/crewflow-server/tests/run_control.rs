//! Cancel, resume and fork; a flow's description and picture; SSE reconnects with
//! `Last-Event-ID`. Real HTTP on loopback, a real SQLite file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{error_of, runs_server};
use serde_json::json;
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_is_cancelled_and_says_so() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(0))).await;
    let (code, started) = srv.post("/flows/gated/runs", "").await;
    assert_eq!(code, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    // Wait (on the events, not the clock) until the held step runs.
    let mut events = srv.sse("GET", &format!("/runs/{id}/events"), None, None).await;
    let seen = events.until("step_started").await;
    assert_eq!(seen.last().unwrap().data["step"], "first");
    events.until("step_started").await;

    let (code, cancelled) = srv.post(&format!("/runs/{id}/cancel?wait=true"), "").await;
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let rest = events.all().await;
    assert_eq!(rest.last().unwrap().event, "run_cancelled", "{rest:?}");
    let run = srv.wait_status(&id, "cancelled").await;
    assert_eq!(run["steps"][0]["step"], "first", "the completed step stays recorded: {run}");

    let (code, again) = srv.post(&format!("/runs/{id}/cancel"), "").await;
    assert_eq!((code, error_of(&again).0), (409, "not_running"), "{again}");
    assert!(error_of(&again).1.contains("cancelled"), "{again}");
    let (code, e) = srv.post("/runs/0193f7a2-0000-7000-8000-000000000000/cancel", "").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_run"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_from_its_checkpoint() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(0))).await;
    let (code, failed) = srv.post("/flows/flaky/runs?wait=true", "").await;
    assert_eq!((code, failed["status"].as_str()), (200, Some("failed")), "{failed}");
    let id = failed["run_id"].as_str().unwrap().to_string();

    let (code, done) = srv.post(&format!("/runs/{id}/resume?wait=true"), "").await;
    assert_eq!(code, 200, "{done}");
    assert_eq!((done["status"].as_str(), done["output"].as_u64()), (Some("finished"), Some(42)), "{done}");
    let run = srv.wait_status(&id, "finished").await;
    let steps: Vec<&str> = run["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["prepare", "finish"], "`prepare` did not run again: {run}");
    // The run's stream holds both drives: the failure, then the resumed run to its end.
    let names = srv.event_names(&id).await;
    assert!(names.contains(&"run_failed".to_string()) && names.last().unwrap() == "run_finished", "{names:?}");

    let (code, e) = srv.post(&format!("/runs/{id}/resume"), "").await;
    assert_eq!((code, error_of(&e).0), (409, "not_resumable"), "{e}");
    let (_, paused) = srv.post("/flows/review/runs?wait=true", "").await;
    let (code, e) = srv.post(&format!("/runs/{}/resume", paused["run_id"].as_str().unwrap()), "").await;
    assert_eq!((code, error_of(&e).0), (409, "not_resumable"), "{e}");
    assert!(error_of(&e).1.contains("/feedback"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_starts_a_new_run_from_another_runs_state() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(0))).await;
    let (_, source) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Ada", "times": 3}"#).await;
    let source_id = source["run_id"].as_str().unwrap().to_string();

    let (code, forked) = srv.post(&format!("/runs/{source_id}/fork?wait=true"), r#"{"name": "Bo"}"#).await;
    assert_eq!(code, 200, "{forked}");
    assert_eq!(forked["output"], "HELLO, BO");
    let fork_id = forked["run_id"].as_str().unwrap().to_string();
    assert_ne!(fork_id, source_id);
    let (_, run) = srv.get(&format!("/runs/{fork_id}")).await;
    assert_eq!(run["flow"], "greet");
    // Without inputs, the fork starts from the source's state as it was.
    let (code, same) = srv.post(&format!("/runs/{source_id}/fork?wait=true"), "").await;
    assert_eq!((code, same["output"].as_str()), (200, Some("HELLO, ADA")), "{same}");
    let (_, src) = srv.get(&format!("/runs/{source_id}")).await;
    assert_eq!(src["output"], "HELLO, ADA", "the source is left as it was");

    let (code, e) = srv.post(&format!("/runs/{source_id}/fork"), r#"{"nmae": "x"}"#).await;
    assert_eq!((code, error_of(&e).0), (400, "bad_inputs"), "{e}");
    assert!(error_of(&e).1.contains("name"), "{e}");
    let (code, started) = srv.post(&format!("/runs/{source_id}/fork"), r#"{"name": "Cy"}"#).await;
    assert_eq!(code, 202, "{started}");
    let run = srv.wait_status(started["run_id"].as_str().unwrap(), "finished").await;
    assert_eq!(run["output"], "HELLO, CY");
    let (_, list) = srv.get("/runs?flow=greet").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 4, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_are_described_and_drawn() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(0))).await;
    let (code, review) = srv.get("/flows/review").await;
    assert_eq!(code, 200, "{review}");
    let steps: Vec<(&str, &str)> = review["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["trigger"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(steps, [("draft", "-"), ("on_approved", "'approved'"), ("on_rejected", "'rejected'")], "{review}");
    assert_eq!(review["steps"][0]["start"], "always");
    // where each step is defined: the `start` call in tests/common/flows.rs (the builder
    // tracks its caller)
    let source = review["steps"][0]["source"].as_str().unwrap_or_else(|| panic!("{review}"));
    assert!(source.starts_with("crates/crewflow-server/tests/common/flows.rs:72:"), "{review}");
    assert_eq!(review["conversational"], false);
    let (_, greet) = srv.get("/flows/greet").await;
    assert_eq!(
        greet["inputs"],
        json!({"name": {"type": "string", "default": ""}, "times": {"type": "integer", "default": 0}})
    );

    let (code, mime, html) = srv.text("/flows/greet/plot").await;
    assert_eq!((code, mime.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.contains("<svg") && html.contains("shout"), "{html}");
    let (code, _, mermaid) = srv.text("/flows/review/plot?format=mermaid").await;
    assert_eq!(code, 200);
    assert!(mermaid.contains("flowchart LR") && mermaid.contains("approved"), "{mermaid}");
    let (code, e) = srv.get("/flows/greet/plot?format=png").await;
    assert_eq!(code, 400);
    assert!(error_of(&e).1.contains("mermaid"), "{e}");
    let (code, e) = srv.get("/flows/nope").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_flow"));
    let (code, e) = srv.get("/flows/nope/plot").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_flow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_resumes_without_duplicates() {
    let gate = Arc::new(Semaphore::new(0));
    let (srv, _dir) = runs_server(gate.clone()).await;
    // Read up to the held step, then drop the connection.
    let (_, path, seen) = read_to_the_held_step(&srv).await;
    let last = seen.last().unwrap().id.clone();
    assert_eq!(last, seen.len().to_string());

    gate.add_permits(1);
    let rest = srv.sse("GET", &path, None, Some(&last)).await.all().await;
    let whole = srv.sse("GET", &path, None, None).await.all().await;
    let mut joined = seen.clone();
    joined.extend(rest.clone());
    assert_eq!(joined, whole, "the first part and the replay make the whole stream, once each");
    assert_eq!(rest.first().unwrap().id, (seen.len() + 1).to_string());
    assert_eq!(whole.last().unwrap().event, "run_finished");
    // `?after=` does the same for clients that cannot set the header; past the end is empty.
    let after = srv.sse("GET", &format!("{path}?after={last}"), None, None).await.all().await;
    assert_eq!(after, rest);
    let none = srv.sse("GET", &format!("{path}?after=999"), None, None).await.all().await;
    assert!(none.is_empty(), "{none:?}");
    let bad = srv.sse("GET", &path, None, Some("yesterday")).await;
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_run_is_cancelled_through_the_store_even_from_another_server() {
    let (srv, dir) = runs_server(Arc::new(Semaphore::new(0))).await;
    let (_, paused) = srv.post("/flows/review/runs?wait=true", "").await;
    assert_eq!(paused["status"], "paused", "{paused}");
    let id = paused["run_id"].as_str().unwrap().to_string();

    let (code, cancelled) = srv.post(&format!("/runs/{id}/cancel"), "").await;
    assert_eq!((code, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    let (_, run) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(run.get("feedback").is_none(), "nothing waits for an answer: {run}");
    let (_, pending) = srv.get("/feedback").await;
    assert_eq!(pending["feedback"], json!([]), "a cancelled pause is not listed");
    let (code, e) = srv.post(&format!("/runs/{id}/feedback"), r#"{"answer": "approved"}"#).await;
    assert_eq!((code, error_of(&e).0), (409, "not_paused"), "{e}");
    assert!(error_of(&e).1.contains("cancelled"), "{e}");
    let (code, e) = srv.post(&format!("/runs/{id}/cancel"), "").await;
    assert_eq!((code, error_of(&e).0), (409, "not_running"), "{e}");
    // The run's stream ends with its cancellation, after its pause.
    let names = srv.event_names(&id).await;
    let tail: Vec<&str> = names.iter().rev().take(2).rev().map(String::as_str).collect();
    assert_eq!(tail, ["run_paused", "run_cancelled"], "{names:?}");

    // A run paused by one server is cancelled by another on the same store.
    let store = crewflow_store::open(common::runs_db(&dir).as_str()).unwrap();
    let other = common::serve(common::runs_hosting(&store, Arc::new(Semaphore::new(0)))).await;
    let (_, paused) = srv.post("/flows/review/runs?wait=true", "").await;
    let id = paused["run_id"].as_str().unwrap().to_string();
    let (code, cancelled) = other.post(&format!("/runs/{id}/cancel"), "").await;
    assert_eq!((code, cancelled["status"].as_str()), (200, Some("cancelled")), "{cancelled}");
    let (code, e) = srv.post(&format!("/runs/{id}/feedback?wait=true"), r#"{"answer": "approved"}"#).await;
    assert_eq!((code, error_of(&e).0), (409, "not_paused"), "{e}");
    srv.wait_status(&id, "cancelled").await;

    // An answer and a cancel at once: exactly one wins, and the run shows which.
    for _ in 0..5 {
        let (_, paused) = srv.post("/flows/review/runs?wait=true", "").await;
        let id = paused["run_id"].as_str().unwrap().to_string();
        let (answer_path, cancel_path) = (format!("/runs/{id}/feedback?wait=true"), format!("/runs/{id}/cancel"));
        let (answer, cancel) =
            tokio::join!(srv.post(&answer_path, r#"{"answer": "approved"}"#), other.post(&cancel_path, ""));
        let run = match (answer.0, cancel.0) {
            (200, 409) => srv.wait_status(&id, "finished").await,
            (409, 200) => srv.wait_status(&id, "cancelled").await,
            other => panic!("both or neither won: {other:?} {answer:?} {cancel:?}"),
        };
        if run["status"] == "finished" {
            assert_eq!(run["output"], "published", "{run}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_reconnect_replays_what_the_store_knows() {
    let gate = Arc::new(Semaphore::new(0));
    let (srv, dir) = runs_server(gate.clone()).await;
    let (id, path, seen) = read_to_the_held_step(&srv).await;
    let last = seen.last().unwrap().id.clone();
    // While the client is away the run finishes; then the server restarts.
    gate.add_permits(1);
    srv.wait_status(&id, "finished").await;
    srv.stop();
    // (A new client: the old one's pooled connection outlives the listener.)
    let gone = reqwest::Client::new().get(format!("{}/flows", srv.base)).send().await;
    assert!(gone.is_err(), "the first server still takes connections: {gone:?}");
    let store = crewflow_store::open(common::runs_db(&dir).as_str()).unwrap();
    let restarted = common::serve(common::runs_hosting(&store, Arc::new(Semaphore::new(0)))).await;

    // The reconnect gets the run from the store: its steps, then its end.
    let replay = restarted.sse("GET", &path, None, Some(&last)).await.all().await;
    let kinds: Vec<&str> = replay.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(kinds, ["step_finished", "step_finished", "run_finished"], "{replay:?}");
    let ids: Vec<&str> = replay.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["s1", "s2", "s2"]);
    assert!(replay.iter().all(|f| f.data["replayed"] == true && f.data["run_id"] == id.as_str()), "{replay:?}");
    let seen_first = seen.iter().find(|f| f.event == "step_finished").unwrap();
    assert_eq!(replay[0].data["activation"], seen_first.data["activation"], "a step seen before is recognisable");
    assert_eq!((replay[0].data["step"].as_str(), replay[0].data["output"].as_str()), (Some("first"), Some("first")));
    assert_eq!((replay[1].data["step"].as_str(), replay[1].data["output"].as_str()), (Some("wait"), Some("released")));
    assert_eq!(replay[2].data["output"], "released");
    // A reconnect within the replay continues it; `?after=` does the same.
    let rest = restarted.sse("GET", &path, None, Some("s1")).await.all().await;
    assert_eq!(rest, replay[1..].to_vec());
    let end = restarted.sse("GET", &format!("{path}?after=s2"), None, None).await.all().await;
    assert_eq!(end, replay[2..].to_vec());
    let bad = restarted.sse("GET", &path, None, Some("s-1")).await;
    assert_eq!(bad.status(), 400);
    let (code, e) = restarted.get("/runs/0193f7a2-0000-7000-8000-000000000000/events").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_run"), "{e}");

    // A paused run replays up to its pause, with what it waits for.
    let (_, paused) = restarted.post("/flows/review/runs?wait=true", "").await;
    let paused_id = paused["run_id"].as_str().unwrap();
    let store = crewflow_store::open(common::runs_db(&dir).as_str()).unwrap();
    let third = common::serve(common::runs_hosting(&store, Arc::new(Semaphore::new(0)))).await;
    let replay = third.sse("GET", &format!("/runs/{paused_id}/events"), None, None).await.all().await;
    assert_eq!(replay.last().unwrap().event, "run_paused", "{replay:?}");
    assert_eq!(replay.last().unwrap().data["feedback"][0]["message"], "Publish?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_driven_by_another_server_is_followed_through_the_store() {
    let gate = Arc::new(Semaphore::new(0));
    let (srv, dir) = runs_server(gate.clone()).await;
    let (_, started) = srv.post("/flows/gated/runs", "").await;
    let id = started["run_id"].as_str().unwrap().to_string();
    common::poll("the first step to be stored", || async {
        let (_, run) = srv.get(&format!("/runs/{id}")).await;
        (run["steps"].as_array().is_some_and(|s| s.len() == 1)).then_some(())
    })
    .await;
    let store = crewflow_store::open(common::runs_db(&dir).as_str()).unwrap();
    let other = common::serve(common::runs_hosting(&store, Arc::new(Semaphore::new(0)))).await;
    let mut stream = other.sse("GET", &format!("/runs/{id}/events"), None, None).await;
    let first = stream.next().await.unwrap();
    assert_eq!((first.event.as_str(), first.data["step"].as_str()), ("step_finished", Some("first")));
    gate.add_permits(1);
    let rest = stream.all().await;
    let kinds: Vec<&str> = rest.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(kinds, ["step_finished", "run_finished"], "{rest:?}");
    assert_eq!(rest[1].data["output"], "released");
}

/// Starts the gated flow and reads its events up to the held step, then drops the connection:
/// the run's id, its events path and the frames seen.
async fn read_to_the_held_step(srv: &common::Running) -> (String, String, Vec<common::SseFrame>) {
    let (_, started) = srv.post("/flows/gated/runs", "").await;
    let id = started["run_id"].as_str().unwrap().to_string();
    let path = format!("/runs/{id}/events");
    let mut first = srv.sse("GET", &path, None, None).await;
    let mut seen = first.until("step_finished").await;
    seen.extend(first.until("step_started").await);
    (id, path, seen)
}

/// A draining server takes no new work (`503 shutting_down`) but still answers reads and
/// streams; it counts the run in flight until that run ends, and `idle` resolves then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_takes_no_new_work_and_waits_for_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(common::runs_db(&dir).as_str()).unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let server = common::runs_hosting(&store, gate.clone());
    let drain = server.drain();
    let srv = common::serve(server).await;
    let (code, started) = srv.post("/flows/gated/runs", "").await;
    assert_eq!(code, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    let mut events = srv.sse("GET", &format!("/runs/{id}/events"), None, None).await;
    events.until("step_started").await;
    events.until("step_started").await; // `wait` holds on the gate
    assert_eq!(drain.in_flight(), [format!("run {id}")]);

    drain.begin();
    assert!(drain.is_draining());
    for (path, body) in [
        ("/flows/greet/runs", r#"{"name": "Ada"}"#.to_string()),
        (&*format!("/runs/{id}/resume"), String::new()),
        (&*format!("/runs/{id}/fork"), "{}".to_string()),
        (&*format!("/runs/{id}/feedback"), r#"{"answer": "ok"}"#.to_string()),
    ] {
        let (code, e) = srv.post(path, &body).await;
        assert_eq!((code, error_of(&e).0), (503, "shutting_down"), "{path}: {e}");
        assert!(error_of(&e).1.contains("another instance"), "{e}");
    }
    let (code, _) = srv.get("/flows").await;
    assert_eq!(code, 200, "reads are still served");
    let (code, run) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!((code, run["status"].as_str()), (200, Some("running")));

    let idle = tokio::spawn({
        let drain = drain.clone();
        async move { drain.idle().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!idle.is_finished(), "idle while a run goes");
    gate.add_permits(1);
    tokio::time::timeout(std::time::Duration::from_secs(10), idle).await.unwrap().unwrap();
    assert!(drain.in_flight().is_empty());
    let rest = events.all().await;
    assert_eq!(rest.last().unwrap().event, "run_finished", "the stream ends with the run: {rest:?}");
    srv.wait_status(&id, "finished").await;
}
