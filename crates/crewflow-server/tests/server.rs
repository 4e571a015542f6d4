//! The server over real HTTP on loopback: a real SQLite file, real runs, a reqwest client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Doc, Running, SseFrame, error_of, fresh_pg_schema, greet, review, runs_server, serve};
use crewflow_core::{Cx, FlowBuilder};
use crewflow_server::{Server, ServerError};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// A run's SSE stream read to its end.
async fn events(srv: &Running, run_id: &str) -> Vec<SseFrame> {
    let stream = srv.sse("GET", &format!("/runs/{run_id}/events"), None, None).await;
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.resp.headers()["content-type"], "text/event-stream");
    stream.all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_start_wait_show_and_list() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(100))).await;

    let (code, flows) = srv.get("/flows").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = flows["flows"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["flaky", "gated", "greet", "review"]);
    assert_eq!(flows["flows"][2]["steps"], 2);

    let (code, done) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Ada"}"#).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(
        (done["status"].as_str(), done["output"].as_str(), done["steps"].as_u64()),
        (Some("finished"), Some("HELLO, ADA"), Some(2))
    );
    let id = done["run_id"].as_str().unwrap().to_string();

    let (code, run) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(code, 200, "{run}");
    assert_eq!(run["status"], "finished");
    assert_eq!(run["flow"], "greet");
    assert_eq!(run["output"], "HELLO, ADA");
    assert_eq!(run["inputs"], json!({"name": "Ada"}));
    let steps: Vec<(&str, &str)> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["output"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("hello", "hello, Ada"), ("shout", "HELLO, ADA")]);

    // A second run, then the listing and its filters.
    let (_, second) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "Bo"}"#).await;
    let (code, list) = srv.get("/runs?flow=greet&status=finished&limit=1").await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["runs"].as_array().unwrap().len(), 1);
    assert_eq!(list["runs"][0]["run_id"], second["run_id"], "newest first");
    let (_, all) = srv.get("/runs?flow=greet").await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 2);
    let (_, none) = srv.get("/runs?flow=review").await;
    assert_eq!(none["runs"], json!([]));
    let (_, failed) = srv.get("/runs?status=failed").await;
    assert_eq!(failed["runs"], json!([]));

    let (code, bad) = srv.get("/runs?status=done").await;
    assert_eq!(code, 400);
    assert!(error_of(&bad).1.contains("`status`") && error_of(&bad).1.contains("finished"), "{bad}");
    let (code, bad) = srv.get("/runs?limit=lots").await;
    assert_eq!(code, 400);
    assert!(error_of(&bad).1.contains("limit"), "{bad}");
    let (code, bad) = srv.get("/runs?limit=0").await;
    assert_eq!(code, 400, "{bad}");
}

/// A run started from another run's step names that step execution as its `parent`, in
/// `GET /runs/{id}` and in the listing; `GET /runs?parent=ID` lists exactly those runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_runs_name_their_parent_and_are_listed_by_it() {
    type Dict = serde_json::Map<String, Value>;
    let dir = tempfile::tempdir().unwrap();
    let store = crewflow_store::open(common::runs_db(&dir).as_str()).unwrap();
    let inner = FlowBuilder::<Dict>::new("inner")
        .start("work", |_cx: Cx<Dict>, (): ()| async move { Ok("done") })
        .store(store.clone())
        .build()
        .unwrap();
    let nested = inner.clone();
    let outer = FlowBuilder::<Dict>::new("outer")
        .start("delegate", move |_cx: Cx<Dict>, (): ()| {
            let inner = nested.clone();
            async move { Ok(inner.kickoff(()).await.map_err(|e| e.to_string())?.id.to_string()) }
        })
        .store(store.clone())
        .build()
        .unwrap();
    let srv = serve(Server::new(store.clone()).flow(&inner).unwrap().flow(&outer).unwrap()).await;

    let (code, done) = srv.post("/flows/outer/runs?wait=true", "{}").await;
    assert_eq!(code, 200, "{done}");
    let (outer_id, inner_id) = (done["run_id"].as_str().unwrap(), done["output"].as_str().unwrap());
    let (_, run) = srv.get(&format!("/runs/{inner_id}")).await;
    assert_eq!(run["parent"], json!({"run_id": outer_id, "activation": 0}), "{run}");
    let (_, top) = srv.get(&format!("/runs/{outer_id}")).await;
    assert_eq!(top["parent"], Value::Null, "{top}");

    srv.post("/flows/inner/runs?wait=true", "{}").await; // a top-level run of the same flow
    let (code, list) = srv.get(&format!("/runs?parent={outer_id}")).await;
    assert_eq!(code, 200, "{list}");
    let runs = list["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{list}");
    assert_eq!((&runs[0]["run_id"], &runs[0]["parent"]["run_id"]), (&json!(inner_id), &json!(outer_id)));
    let (_, all) = srv.get("/runs?flow=inner").await;
    assert_eq!(all["runs"].as_array().unwrap().len(), 2);
    let (code, bad) = srv.get("/runs?parent=nope").await;
    assert_eq!(code, 400, "{bad}");
    assert!(error_of(&bad).1.contains("`parent` is `nope`"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_run_answers_at_once_and_streams_its_events() {
    let gate = Arc::new(Semaphore::new(0));
    let (srv, _dir) = runs_server(gate.clone()).await;

    let (code, started) = srv.post("/flows/gated/runs", "").await;
    assert_eq!(code, 202, "{started}");
    assert_eq!(started["status"], "running");
    let id = started["run_id"].as_str().unwrap().to_string();

    // The step is held: the run is running, and stays so.
    let (code, run) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(run["status"], "running", "{run}");

    // Two subscribers: one before the release (it has read up to the held step when the gate
    // opens), one after the end (replayed from memory).
    let mut early_stream = srv.sse("GET", &format!("/runs/{id}/events"), None, None).await;
    let mut early = early_stream.until("step_finished").await;
    early.extend(early_stream.until("step_started").await);
    gate.add_permits(1);
    let run = srv.wait_status(&id, "finished").await;
    assert_eq!(run["output"], "released");
    early.extend(early_stream.all().await);
    let late = events(&srv, &id).await;

    let names: Vec<&str> = early.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(
        names,
        ["run_started", "step_started", "step_finished", "step_started", "step_finished", "run_finished"],
        "{early:?}"
    );
    for frame in &early {
        assert_eq!(frame.data["type"], frame.event.as_str());
        assert_eq!(frame.data["run_id"], id.as_str());
    }
    let seqs: Vec<u64> = early.iter().map(|f| f.data["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(early, late, "a late subscriber sees the same events");
    assert_eq!(early[4].data["output"], "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_pauses_are_listed_answered_once_and_refused_after() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(100))).await;

    let (code, paused) = srv.post("/flows/review/runs?wait=true", "{}").await;
    assert_eq!(code, 200, "{paused}");
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["feedback"]["message"], "Publish?");
    assert_eq!(paused["feedback"]["output"], "the draft");
    let id = paused["run_id"].as_str().unwrap().to_string();

    let (code, pending) = srv.get("/feedback").await;
    assert_eq!(code, 200);
    let listed: Vec<&str> =
        pending["feedback"].as_array().unwrap().iter().map(|p| p["run_id"].as_str().unwrap()).collect();
    assert_eq!(listed, [id.as_str()]);
    assert_eq!(pending["feedback"][0]["request"]["emit"], json!(["approved", "rejected"]));
    let (_, run) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(run["status"], "paused");
    assert_eq!(run["feedback"][0]["step"], "draft");

    // Bad answers: named field, nothing changes.
    let (code, bad) = srv.post(&format!("/runs/{id}/feedback"), r#"{"answer": 5}"#).await;
    assert_eq!(code, 400);
    assert!(error_of(&bad).1.contains("`answer`"), "{bad}");
    let (code, bad) = srv.post(&format!("/runs/{id}/feedback"), r#"{"reply": "ok"}"#).await;
    assert_eq!(code, 400);
    assert!(error_of(&bad).1.contains("`answer`"), "{bad}");
    let (code, bad) = srv.post(&format!("/runs/{id}/feedback"), r#"{"answer": "ok", "extra": 1}"#).await;
    assert_eq!(code, 400);
    assert!(error_of(&bad).1.contains("`extra`"), "{bad}");

    let (code, done) = srv.post(&format!("/runs/{id}/feedback?wait=true"), r#"{"answer": "Approved"}"#).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!((done["status"].as_str(), done["output"].as_str()), (Some("finished"), Some("published")));

    // The run's stream tells it all: up to the pause, then the continuation to its end.
    let events = events(&srv, &id).await;
    let names: Vec<&str> = events.iter().map(|f| f.event.as_str()).collect();
    let paused_at = names.iter().position(|n| *n == "run_paused").expect("a run_paused event");
    assert_eq!(names[0], "run_started");
    assert_eq!(names[paused_at + 1], "run_resumed", "{names:?}");
    assert_eq!(names.last(), Some(&"run_finished"), "{names:?}");
    assert!(names.contains(&"feedback_received"), "{names:?}");
    // The SSE ids number the frames of the one stream, though the continuation's seq restarts.
    let ids: Vec<String> = events.iter().map(|f| f.id.clone()).collect();
    let expected: Vec<String> = (1..=events.len()).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected);
    assert_eq!(events[paused_at + 1].data["seq"], 1, "the continuation numbers its own events");
    let finished = &events.last().unwrap().data;
    assert_eq!(finished["output"], "published");

    let (code, again) = srv.post(&format!("/runs/{id}/feedback"), r#"{"answer": "rejected"}"#).await;
    assert_eq!(code, 409, "{again}");
    assert_eq!(error_of(&again).0, "not_paused");
    assert!(error_of(&again).1.contains("finished"), "{again}");
    let (_, pending) = srv.get("/feedback").await;
    assert_eq!(pending["feedback"], json!([]));

    // Two answers at once to one pause: exactly one is taken.
    let (_, paused) = srv.post("/flows/review/runs?wait=true", "").await;
    let id = paused["run_id"].as_str().unwrap().to_string();
    let path = format!("/runs/{id}/feedback");
    let (a, b) =
        tokio::join!(srv.post(&path, r#"{"answer": "approved"}"#), srv.post(&path, r#"{"answer": "rejected"}"#));
    let mut codes = [a.0, b.0];
    codes.sort();
    assert_eq!(codes, [202, 409], "{a:?} {b:?}");
    let run = srv.wait_status(&id, "finished").await;
    let winner = if a.0 == 202 { "published" } else { "binned" };
    assert_eq!(run["output"], winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_json_with_the_right_status() {
    let (srv, _dir) = runs_server(Arc::new(Semaphore::new(100))).await;

    let (code, e) = srv.post("/flows/nope/runs", "{}").await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_flow"));
    assert!(error_of(&e).1.contains("`nope`") && error_of(&e).1.contains("greet"), "{e}");

    let (code, e) = srv.post("/flows/greet/runs", r#"{"nmae": "Ada"}"#).await;
    assert_eq!((code, error_of(&e).0), (400, "bad_inputs"), "{e}");
    assert!(error_of(&e).1.contains("nmae") && error_of(&e).1.contains("name"), "{e}");
    let (code, e) = srv.post("/flows/greet/runs", r#"{"times": "many"}"#).await;
    assert_eq!((code, error_of(&e).0), (400, "bad_inputs"), "{e}");
    assert!(error_of(&e).1.contains("times"), "{e}");
    let (code, e) = srv.post("/flows/greet/runs", r#"{"name": "#).await;
    assert_eq!(code, 400);
    assert!(error_of(&e).1.contains("not valid JSON"), "{e}");
    let (code, e) = srv.post("/flows/greet/runs", "[1, 2]").await;
    assert_eq!(code, 400);
    assert!(error_of(&e).1.contains("JSON object"), "{e}");
    let (code, e) = srv.post("/flows/greet/runs?wait=maybe", "{}").await;
    assert_eq!(code, 400, "{e}");
    let huge = format!(r#"{{"name": "{}"}}"#, "x".repeat(3 << 20));
    let (code, e) = srv.post("/flows/greet/runs", &huge).await;
    assert_eq!((code, error_of(&e).0), (413, "body_too_large"), "{e}");
    // Nothing was started by the refused requests.
    let (_, list) = srv.get("/runs").await;
    assert_eq!(list["runs"], json!([]));

    let unknown = "0193f7a2-0000-7000-8000-000000000000";
    for path in [format!("/runs/{unknown}"), format!("/runs/{unknown}/events"), "/runs/not-a-uuid".to_string()] {
        let (code, e) = srv.get(&path).await;
        assert_eq!((code, error_of(&e).0), (404, "unknown_run"), "{path}: {e}");
    }
    let (code, e) = srv.post(&format!("/runs/{unknown}/feedback"), r#"{"answer": "x"}"#).await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_run"), "{e}");
    let resp = srv.client.delete(format!("{}/flows", srv.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let e: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(error_of(&e).0, "method_not_allowed", "{e}");
    let (code, e) = srv.get("/nowhere").await;
    assert_eq!((code, error_of(&e).0), (404, "not_found"));

    // A run that is not paused cannot be answered; an answer no outcome matches is a 400 and
    // leaves the pause as it was.
    let (_, done) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "x"}"#).await;
    let (code, e) =
        srv.post(&format!("/runs/{}/feedback", done["run_id"].as_str().unwrap()), r#"{"answer": "x"}"#).await;
    assert_eq!((code, error_of(&e).0), (409, "not_paused"), "{e}");
    let (_, paused) = srv.post("/flows/review/runs?wait=true", "").await;
    let id = paused["run_id"].as_str().unwrap();
    let (code, e) = srv.post(&format!("/runs/{id}/feedback?wait=true"), r#"{"answer": "perhaps"}"#).await;
    assert_eq!((code, error_of(&e).0), (400, "bad_feedback"), "{e}");
    let (_, run) = srv.get(&format!("/runs/{id}")).await;
    assert_eq!(run["status"], "paused", "{run}");
    let (code, done) = srv.post(&format!("/runs/{id}/feedback?wait=true"), r#"{"answer": "rejected"}"#).await;
    assert_eq!((code, done["output"].as_str()), (200, Some("binned")), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_answer_is_a_503() {
    // Nothing listens on port 1: every store call fails.
    let store = crewflow_store::open("postgres://postgres@127.0.0.1:1/nowhere").unwrap();
    let srv = serve(Server::new(store.clone()).flow(&greet(&store)).unwrap()).await;
    for path in ["/runs", "/feedback", "/runs/0193f7a2-0000-7000-8000-000000000000"] {
        let (code, e) = srv.get(path).await;
        assert_eq!((code, error_of(&e).0), (503, "store_unavailable"), "{path}: {e}");
    }
    // A run cannot be recorded: a 503 naming the store, and nothing panics.
    let (code, e) = srv.post("/flows/greet/runs?wait=true", r#"{"name": "x"}"#).await;
    assert_eq!((code, error_of(&e).0), (503, "store_unavailable"), "{e}");
    assert!(error_of(&e).1.contains("127.0.0.1:1"), "{e}");
    // Nor without waiting: a 202 is only answered once the run is recorded.
    let (code, e) = srv.post("/flows/greet/runs", r#"{"name": "x"}"#).await;
    assert_eq!((code, error_of(&e).0), (503, "store_unavailable"), "{e}");
    let (code, e) = srv.get("/flows").await;
    assert_eq!(code, 200, "{e}");
}

#[test]
fn flows_must_keep_their_runs_in_the_servers_store() {
    let store = crewflow_store::open("sqlite::memory:").unwrap();
    let other = crewflow_store::open("sqlite::memory:").unwrap();
    let no_store =
        FlowBuilder::<Doc>::new("loose").start("s", |_cx: Cx<Doc>, (): ()| async move { Ok(1) }).build().unwrap();
    let e = Server::new(store.clone()).flow(&no_store).err().unwrap();
    assert!(matches!(e, ServerError::FlowWithoutStore { .. }), "{e}");
    assert!(e.to_string().contains("FlowBuilder::store("), "{e}");
    let e = Server::new(store.clone()).flow(&greet(&other)).err().unwrap();
    assert!(matches!(e, ServerError::OtherStore { .. }), "{e}");
    let e = Server::new(store.clone()).flow(&greet(&store)).unwrap().flow(&greet(&store)).err().unwrap();
    assert!(matches!(e, ServerError::DuplicateFlow { .. }) && e.to_string().contains("`greet`"), "{e}");
}

/// Two servers on one PostgreSQL database: a pause made on one is listed and answered on the
/// other, and both then show the run finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES to a PostgreSQL URL")]
async fn two_servers_on_one_postgres_share_runs_and_pauses() {
    let url = fresh_pg_schema().await;
    let store_a = crewflow_store::open(&url).unwrap();
    let store_b = crewflow_store::open(&url).unwrap();
    let a = serve(Server::new(store_a.clone()).flow(&review(&store_a)).unwrap()).await;
    let b = serve(Server::new(store_b.clone()).flow(&review(&store_b)).unwrap()).await;

    let (code, paused) = a.post("/flows/review/runs?wait=true", "").await;
    assert_eq!((code, paused["status"].as_str()), (200, Some("paused")), "{paused}");
    let id = paused["run_id"].as_str().unwrap().to_string();

    let (_, pending) = b.get("/feedback").await;
    assert_eq!(pending["feedback"][0]["run_id"], id.as_str(), "{pending}");
    // B never drove this run: its stream is told from the store, up to the pause.
    let replay = b.sse("GET", &format!("/runs/{id}/events"), None, None).await.all().await;
    let kinds: Vec<&str> = replay.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(kinds, ["run_paused"], "{replay:?}");
    assert_eq!(replay[0].data["feedback"][0]["message"], "Publish?");

    let (code, done) = b.post(&format!("/runs/{id}/feedback?wait=true"), r#"{"answer": "rejected"}"#).await;
    assert_eq!((code, done["output"].as_str()), (200, Some("binned")), "{done}");
    let (code, again) = a.post(&format!("/runs/{id}/feedback"), r#"{"answer": "approved"}"#).await;
    assert_eq!((code, error_of(&again).0), (409, "not_paused"), "{again}");
    let (_, run) = a.get(&format!("/runs/{id}")).await;
    assert_eq!((run["status"].as_str(), run["output"].as_str()), (Some("finished"), Some("binned")), "{run}");
    let (_, list) = a.get("/runs?status=finished").await;
    assert_eq!(list["runs"][0]["run_id"], id.as_str());
}
