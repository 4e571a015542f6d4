//! The OpenAPI document covers exactly the routes the router serves, every documented route
//! is served, and the document is valid OpenAPI 3.1 (checked by the `openapi-spec-validator`
//! Python package, which `.ci/run` installs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::serve;
use crewflow_server::{Server, routes};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_covers_every_route_and_only_those() {
    let store = crewflow_store::open("sqlite::memory:").unwrap();
    let srv = serve(Server::new(store)).await;
    let (code, doc) = srv.get("/openapi.json").await;
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    let served: BTreeSet<(String, String)> = routes().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), path.clone())))
        .collect();
    assert_eq!(served, documented, "served routes vs documented ones");
    assert!(served.len() >= 19, "{served:?}");

    // Every documented route is really served at its path: asked with sample ids, none
    // answers `not_found` or `method_not_allowed`.
    for (method, path) in &served {
        let concrete = path.replace("{flow}", "nope").replace("{id}", "0193f7a2-0000-7000-8000-000000000000");
        let url = format!("{}{concrete}", srv.base);
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = srv.client.request(method.clone(), url).body("{}").send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(status != 405 && !text.contains("\"not_found\""), "{method} {path}: {status} {text}");
    }

    // Each operation has an id (unique), a summary and responses; every $ref resolves.
    let mut ids = BTreeSet::new();
    for ops in doc["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            assert!(ids.insert(op["operationId"].as_str().unwrap().to_string()), "{op}");
            assert!(op["summary"].is_string() && op["responses"].is_object(), "{op}");
        }
    }
    check_refs(&doc, &doc);
    validate_with_python(&doc);
}

fn check_refs(doc: &Value, node: &Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target.strip_prefix('#').unwrap();
                assert!(doc.pointer(pointer).is_some(), "unresolved $ref {target}");
            }
            map.values().for_each(|v| check_refs(doc, v));
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
        _ => {}
    }
}

fn validate_with_python(doc: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 runs (the OpenAPI validator is a Python package)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !text.contains("No module named"),
        "the openapi-spec-validator Python package is missing; install it (`python3 -m pip install openapi-spec-validator`, as .ci/run does): {text}"
    );
    assert!(out.status.success() && text.contains("OK"), "the document is not valid OpenAPI: {text}");
}
