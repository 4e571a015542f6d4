//! API keys and tenants over real HTTP on loopback: each tenant's runs and sessions live in its
//! own stores; another tenant's ids answer 404 and never show in lists or streams; requests
//! without a known key answer 401, whatever the path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Running, error_of, serve_app};
use crewflow_core::persist::RunStore;
use crewflow_core::{Cx, FlowBuilder};
use crewflow_server::{DoubleTexting, Server, ServerError, Tenants, tenant_router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Default, Serialize, Deserialize)]
struct Greeting {
    name: String,
}

/// One tenant's server: its own run store and session store, in its own files.
fn tenant_server(dir: &std::path::Path, tenant: &str) -> Server {
    let store: Arc<dyn RunStore> =
        crewflow_store::open(dir.join(format!("{tenant}-runs.db")).to_str().unwrap()).unwrap();
    let greet = FlowBuilder::<Greeting>::new("greet")
        .start(
            "hello",
            |cx: Cx<Greeting>, (): ()| async move { Ok(format!("hello, {}", cx.state(|g| g.name.clone()))) },
        )
        .store(store.clone())
        .build()
        .unwrap();
    let chat = common::echo_chat(dir.join(format!("{tenant}-sessions.db")));
    Server::new(store).flow(&greet).unwrap().chat(&chat, DoubleTexting::Enqueue).unwrap()
}

/// Calls `srv` with `key` (none: no key).
async fn call(srv: &Running, method: &str, key: Option<&str>, path: &str, body: Option<Value>) -> (u16, Value) {
    let srv = match key {
        Some(key) => srv.with_key(key),
        None => srv.clone(),
    };
    let body = body.map(|b| b.to_string());
    match method {
        "GET" => srv.get(path).await,
        "DELETE" => srv.delete(path).await,
        _ => srv.post(path, body.as_deref().unwrap_or("")).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenant_sees_only_its_own_runs_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = Tenants::new()
        .tenant("acme", tenant_server(dir.path(), "acme"))
        .unwrap()
        .tenant("globex", tenant_server(dir.path(), "globex"))
        .unwrap()
        .key("acme", "sk-acme")
        .unwrap()
        // sha256("sk-globex"), as a configuration file would hold it.
        .key_sha256("globex", "486e1dad908597991e4425462823f650cfc9ded21de30af03481f0a489f983db")
        .unwrap();
    let shown = format!("{tenants:?}");
    assert!(!shown.contains("sk-acme") && shown.contains("acme"), "keys are kept hashed: {shown}");

    let c = serve_app(tenant_router(tenants)).await;
    let (acme, globex) = (Some("sk-acme"), Some("sk-globex"));

    // Without a known key nothing is served, not even the route's existence.
    for (key, path) in [(None, "/flows"), (Some("sk-wrong"), "/flows"), (None, "/nowhere"), (None, "/openapi.json")] {
        let (code, e) = call(&c, "GET", key, path, None).await;
        assert_eq!((code, error_of(&e).0), (401, "unauthorized"), "{path}: {e}");
    }

    let (code, run) = call(&c, "POST", acme, "/flows/greet/runs?wait=true", Some(json!({"name": "Ada"}))).await;
    assert_eq!((code, run["output"].as_str()), (200, Some("hello, Ada")), "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    let (code, _) = call(&c, "POST", acme, "/sessions", Some(json!({"id": "s1"}))).await;
    assert_eq!(code, 201);
    let (code, turn) = call(&c, "POST", acme, "/sessions/s1/turns", Some(json!({"message": "hi"}))).await;
    assert_eq!((code, turn["reply"].as_str()), (200, Some("echo: hi")), "{turn}");

    // The other tenant: every way to reach acme's run or session is a 404, lists are empty.
    for (method, path) in [
        ("GET", format!("/runs/{id}")),
        ("GET", format!("/runs/{id}/events")),
        ("POST", format!("/runs/{id}/fork")),
        ("POST", format!("/runs/{id}/resume")),
        ("POST", format!("/runs/{id}/cancel")),
        ("GET", "/sessions/s1".to_string()),
        ("DELETE", "/sessions/s1".to_string()),
    ] {
        let (code, e) = call(&c, method, globex, &path, None).await;
        assert_eq!(code, 404, "{method} {path}: {e}");
        assert!(!e.to_string().contains("Ada") && !e.to_string().contains("acme"), "{e}");
    }
    let (code, e) = call(&c, "POST", globex, "/sessions/s1/turns", Some(json!({"message": "mine now"}))).await;
    assert_eq!((code, error_of(&e).0), (404, "unknown_session"), "{e}");
    let (_, runs) = call(&c, "GET", globex, "/runs", None).await;
    assert_eq!(runs["runs"], json!([]));
    let (_, sessions) = call(&c, "GET", globex, "/sessions", None).await;
    assert_eq!(sessions["sessions"], json!([]));
    // The same id is free for the other tenant: its own session, apart from acme's.
    let (code, _) = call(&c, "POST", globex, "/sessions", Some(json!({"id": "s1"}))).await;
    assert_eq!(code, 201);

    // Acme still has its run and its session, untouched.
    let (code, run) = call(&c, "GET", acme, &format!("/runs/{id}"), None).await;
    assert_eq!((code, run["status"].as_str()), (200, Some("finished")));
    let (_, session) = call(&c, "GET", acme, "/sessions/s1", None).await;
    assert_eq!(session["messages"].as_array().unwrap().len(), 2, "{session}");
}

#[test]
fn tenants_refuse_keys_they_cannot_place() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tenants::new().key("nobody", "k").unwrap_err();
    assert!(matches!(e, ServerError::UnknownTenant { .. }) && e.to_string().contains("Tenants::tenant"), "{e}");
    let t = Tenants::new().tenant("a", tenant_server(dir.path(), "a")).unwrap();
    let e = t.key_sha256("a", "abc").unwrap_err();
    assert!(matches!(e, ServerError::BadKeyHash { .. }) && e.to_string().contains("64"), "{e}");
    let e = Tenants::new()
        .tenant("a", tenant_server(dir.path(), "a2"))
        .unwrap()
        .tenant("a", tenant_server(dir.path(), "a3"))
        .unwrap_err();
    assert!(matches!(e, ServerError::DuplicateTenant { .. }), "{e}");
}
