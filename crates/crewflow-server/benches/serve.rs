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
//! - `serve_turns_pg`: the same with runs and sessions in PostgreSQL (`CREWFLOW_TEST_POSTGRES`,
//!   a fresh schema dropped after; skipped without it). Goals ≥ 3,000 turns/s, p99 ≤ 20 ms.
//! - `serve_turns_keyed`: `serve_turns` behind API keys kept in the store (`tenant_router`
//!   with `Tenants::keys_from`, one tenant): every request carries a key, checked against the
//!   instance's copy of the stored keys. Compare with `serve_turns` of the same sitting.
//! - `serve_stream_fanout`: 1,000 SSE clients at once on `GET /runs/{id}/events` of one running
//!   flow, connected before its step (held by a gate) emits 200 events. `missed_frames`: frames
//!   the clients did not get, against a late subscriber's count (goal 0); `bytes_per_client`:
//!   the SSE bytes each client received (goal ≤ 65,536); `rss_per_client_bytes`: how much this
//!   process's resident memory grew per client while they streamed (server and clients both: an
//!   upper bound of the server's share); `delivery_ms`: from the gate's release until the last
//!   client had the run's end. Needs 2,000+ file descriptors (`scripts/bench` raises
//!   `ulimit -n`).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmarks may panic

// The allocator of `crewflow serve` (crates/crewflow-cli/src/main.rs), whose turns this measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crewflow_chat::{ChatFlow, ChatState, SessionStore};
use crewflow_core::persist::RunStore;
use crewflow_core::{Cx, FlowBuilder, RunId, StepError};
use crewflow_server::{DoubleTexting, NewApiKey, Server, Tenants, issue_api_key, router, tenant_router};
use crewflow_store::{PostgresStore, SqliteStore};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

#[path = "../../../benches/harness/mod.rs"]
mod harness;

use harness::{report, rss_bytes};

const BENCHES: [&str; 4] = ["serve_turns", "serve_turns_keyed", "serve_turns_pg", "serve_stream_fanout"];
const SESSIONS: usize = 64;
const TURNS: usize = 50;
const ROUNDS: usize = 5;
const CLIENTS: usize = 1000;
const EVENTS: usize = 200;
const FANOUT_ROUNDS: usize = 3;

fn main() {
    match harness::child_name() {
        Some(name) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
            match name.as_str() {
                "serve_turns" => rt.block_on(serve_turns(false)),
                "serve_turns_keyed" => rt.block_on(serve_turns(true)),
                "serve_turns_pg" => rt.block_on(serve_turns_pg()),
                "serve_stream_fanout" => rt.block_on(serve_stream_fanout()),
                other => eprintln!("unknown benchmark {other}"),
            }
        }
        None => harness::run_children(&BENCHES),
    }
}

/// Serves `server` on a loopback port; its base URL.
async fn serve(server: Server) -> String {
    serve_app(router(server)).await
}

/// Serves `app` on a loopback port; its base URL.
async fn serve_app(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    crewflow_llm::install_crypto_provider(); // reqwest is built without its own TLS provider
    base
}

/// The conversational flow of the turn benchmarks: one step, no model.
fn reply_chat(sessions: impl SessionStore + 'static) -> ChatFlow<ChatState> {
    let flow = FlowBuilder::<ChatState>::new("bench")
        .start("reply", |_cx, message: String| async move { Ok(format!("you said: {message}")) })
        .build()
        .unwrap();
    ChatFlow::new(flow, sessions)
}

async fn serve_turns(keyed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let runs = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let chat = reply_chat(SqliteStore::open(dir.path().join("sessions.db")));
    if keyed {
        turns_over_http("serve_turns_keyed", runs, &chat, true).await;
    } else {
        turns_over_http("serve_turns", runs, &chat, false).await;
    }
    drop(dir); // the files go once the figures are out
}

async fn serve_turns_pg() {
    let Ok(url) = std::env::var("CREWFLOW_TEST_POSTGRES") else {
        eprintln!("serve_turns_pg skipped: set CREWFLOW_TEST_POSTGRES=postgres://...");
        return;
    };
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("PostgreSQL");
    tokio::spawn(conn);
    let schema = format!("crewflow_bench_{}", RunId::new().to_string().replace('-', ""));
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("a schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    // One store for runs and sessions: its pools (48 connections) are shared.
    let store = PostgresStore::connect_lazy(&format!("{url}{sep}options=-csearch_path%3D{schema}")).unwrap();
    let chat = reply_chat(store.clone());
    turns_over_http("serve_turns_pg", Arc::new(store), &chat, false).await;
    let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// 64 sessions sending turns one after the other, [`ROUNDS`] rounds on fresh sessions.
/// With `keyed`, behind a key kept in `runs` (`serve_turns_keyed`).
async fn turns_over_http(bench: &str, runs: Arc<dyn RunStore>, chat: &ChatFlow<ChatState>, keyed: bool) {
    let server = Server::new(runs.clone()).chat(chat, DoubleTexting::Enqueue).unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    let base = if keyed {
        let key = issue_api_key(&*runs, &NewApiKey::new("bench")).await.unwrap().key;
        headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
        serve_app(tenant_router(Tenants::new().tenant("bench", server).unwrap().keys_from(runs))).await
    } else {
        serve(server).await
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(SESSIONS).default_headers(headers).build().unwrap();
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
    report(bench, "turns_per_s", "turns/s", rates);
    report(bench, "p99_ms", "ms", p99s);
}

#[derive(Default, Serialize, Deserialize)]
struct Ticks {}

/// A flow whose one step waits for a permit of `gate`, then emits [`EVENTS`] events, a
/// millisecond's pause after every tenth (a run that talks while it works, not one burst).
fn ticking(store: &Arc<dyn RunStore>, gate: Arc<Semaphore>) -> crewflow_core::Flow<Ticks> {
    FlowBuilder::<Ticks>::new("ticking")
        .start("tick", move |cx: Cx<Ticks>, (): ()| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.map_err(StepError::msg)?.forget();
                for i in 0..EVENTS {
                    cx.emit("tick", serde_json::json!({"i": i, "of": EVENTS}));
                    if i % 10 == 9 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                Ok("done")
            }
        })
        .store(store.clone())
        .build()
        .unwrap()
}

/// What one SSE client got: its frames (checked to be numbered 1, 2, ... with none left out)
/// and the bytes of the body.
#[derive(Default)]
struct Received {
    frames: usize,
    bytes: usize,
    gaps: usize,
}

impl Received {
    /// Reads the stream at `url` to its end; `ready` gets a permit once its first bytes came.
    async fn read(client: &reqwest::Client, url: &str, ready: Option<&Semaphore>) -> Received {
        let mut resp = client.get(url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let (mut got, mut line, mut signalled) = (Received::default(), Vec::new(), ready.is_none());
        while let Some(chunk) = resp.chunk().await.unwrap() {
            got.bytes += chunk.len();
            for &b in chunk.iter() {
                if b != b'\n' {
                    line.push(b);
                    continue;
                }
                if let Some(id) = line.strip_prefix(b"id: ") {
                    let id: usize = std::str::from_utf8(id).unwrap().parse().unwrap();
                    got.gaps += usize::from(id != got.frames + 1);
                    got.frames += 1;
                }
                line.clear();
            }
            if !signalled {
                ready.unwrap().add_permits(1);
                signalled = true;
            }
        }
        got
    }
}

async fn serve_stream_fanout() {
    let limit = open_files_limit();
    assert!(
        limit >= 2 * CLIENTS as u64 + 100,
        "{CLIENTS} clients need ~{} open files; raise `ulimit -n` (it is {limit})",
        2 * CLIENTS + 100
    );
    let dir = tempfile::tempdir().unwrap();
    let runs = crewflow_store::open(dir.path().join("runs.db").to_str().unwrap()).unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let base = serve(Server::new(runs.clone()).flow(&ticking(&runs, gate.clone())).unwrap()).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    let (mut missed, mut bytes, mut rss, mut delivery) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..FANOUT_ROUNDS {
        let resp = client.post(format!("{base}/flows/ticking/runs")).body("{}").send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        let started: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        let url = format!("{base}/runs/{}/events", started["run_id"].as_str().unwrap());
        let before = rss_bytes();
        let peak = Arc::new(AtomicI64::new(before));
        let sampler = tokio::spawn(sample_rss(peak.clone()));
        let ready = Arc::new(Semaphore::new(0));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, url, ready) = (client.clone(), url.clone(), ready.clone());
                tokio::spawn(async move { Received::read(&client, &url, Some(&ready)).await })
            })
            .collect();
        ready.acquire_many(CLIENTS as u32).await.unwrap().forget();
        let released = Instant::now();
        gate.add_permits(1);
        let mut got = Vec::with_capacity(CLIENTS);
        for task in clients {
            got.push(task.await.unwrap());
        }
        delivery.push(released.elapsed().as_secs_f64() * 1000.0);
        sampler.abort();
        // A late subscriber reads the whole run from the server's memory: the frames there are.
        let all = Received::read(&client, &url, None).await;
        assert!(all.frames > EVENTS && all.gaps == 0, "the run's stream has {} frames", all.frames);
        missed.push(got.iter().map(|g| all.frames - g.frames.min(all.frames) + g.gaps).sum::<usize>() as f64);
        bytes.push(got.iter().map(|g| g.bytes).sum::<usize>() as f64 / CLIENTS as f64);
        rss.push((peak.load(Ordering::Relaxed) - before).max(0) as f64 / CLIENTS as f64);
    }
    report("serve_stream_fanout", "missed_frames", "frames", missed);
    report("serve_stream_fanout", "bytes_per_client", "bytes", bytes);
    report("serve_stream_fanout", "rss_per_client_bytes", "bytes", rss);
    report("serve_stream_fanout", "delivery_ms", "ms", delivery);
    drop(dir);
}

/// Keeps the highest resident memory seen in `peak`, every 5 ms, until aborted.
async fn sample_rss(peak: Arc<AtomicI64>) {
    loop {
        peak.fetch_max(rss_bytes(), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// This process's soft limit of open files (`/proc/self/limits`); 0 when unreadable.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
    line.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}
