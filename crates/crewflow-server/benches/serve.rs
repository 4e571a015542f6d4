//! Run server benchmarks: `scripts/bench` (or `cargo bench -p crewflow-server --bench serve -- [--only a,b]`).
//!
//! Prints one JSON line per figure:
//! `{"bench": NAME, "metric": NAME, "median": X, "min": X, "max": X, "unit": U, "n": N}`.
//!
//! - `serve_turns`: sustained turns over HTTP on loopback (REST, `POST /sessions/{id}/turns`),
//!   64 sessions at once, each sending its next turn when the last is answered; a conversational
//!   flow whose one step replies without a model; runs and sessions in SQLite files. The server
//!   and the 64 clients share this process (and its cores). `turns_per_s` (goal ≥ 10,000) and
//!   `p99_ms`, the 99th percentile of a turn's round trip (goal ≤ 20); one sample per round of
//!   64 × 50 turns on fresh sessions.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmarks may panic

use std::time::Instant;

use crewflow_chat::{ChatFlow, ChatState};
use crewflow_core::FlowBuilder;
use crewflow_server::{DoubleTexting, Server, router};
use crewflow_store::SqliteStore;

#[path = "../../../benches/harness/mod.rs"]
mod harness;

use harness::report;

const BENCHES: [&str; 1] = ["serve_turns"];
const SESSIONS: usize = 64;
const TURNS: usize = 50;
const ROUNDS: usize = 5;

fn main() {
    match harness::child_name() {
        Some(name) => match name.as_str() {
            "serve_turns" => {
                let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
                rt.block_on(serve_turns());
            }
            other => eprintln!("unknown benchmark {other}"),
        },
        None => harness::run_children(&BENCHES),
    }
}

async fn serve_turns() {
    let dir = tempfile::tempdir().unwrap();
    let runs = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let flow = FlowBuilder::<ChatState>::new("bench")
        .start("reply", |_cx, message: String| async move { Ok(format!("you said: {message}")) })
        .build()
        .unwrap();
    let chat = ChatFlow::new(flow, SqliteStore::open(dir.path().join("sessions.db")));
    let server = Server::new(runs).chat(&chat, DoubleTexting::Enqueue).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(server)).await.unwrap() });
    crewflow_llm::install_crypto_provider(); // reqwest is built without its own TLS provider
    let client = reqwest::Client::builder().pool_max_idle_per_host(SESSIONS).build().unwrap();

    let (mut rates, mut p99s) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut ids = Vec::new();
        for s in 0..SESSIONS {
            let id = format!("r{round}-s{s}");
            let resp = client.post(format!("{base}/sessions")).body(format!(r#"{{"id": "{id}"}}"#)).send().await;
            assert_eq!(resp.unwrap().status().as_u16(), 201);
            ids.push(id);
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for id in ids {
            let (client, url) = (client.clone(), format!("{base}/sessions/{id}/turns"));
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(TURNS);
                for turn in 0..TURNS {
                    let sent = Instant::now();
                    let resp = client.post(&url).body(format!(r#"{{"message": "turn {turn}"}}"#)).send().await.unwrap();
                    assert_eq!(resp.status().as_u16(), 200);
                    resp.bytes().await.unwrap();
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            }));
        }
        let mut latencies: Vec<f64> = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        rates.push(latencies.len() as f64 / elapsed);
        p99s.push(latencies[(latencies.len() * 99).div_ceil(100) - 1]);
    }
    report("serve_turns", "turns_per_s", "turns/s", rates);
    report("serve_turns", "p99_ms", "ms", p99s);
    drop(dir); // the files go once the figures are out
}
