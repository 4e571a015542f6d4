//! Conversation benchmarks: `scripts/bench` (or `cargo bench --bench chat -- [--only a,b]`).
//!
//! Prints one JSON line per figure:
//! `{"bench": NAME, "metric": NAME, "median": X, "min": X, "max": X, "unit": U, "n": N}`.
//! Each benchmark runs in its own process (the harness re-executes itself), so the memory
//! figure is not polluted by the benchmark before it.
//!
//! - `turn_overhead`: 100 turns on one session, SQLite, a reply step with no model call
//!   (`per_turn_us`, with the default session trace; `per_turn_us_untraced` without;
//!   `per_turn_us_commit_checkpoints` traced, with `SqliteStore::background_checkpoints(false)`).
//! - `sessions_10k`: 10,000 sessions × 10 turns, 64 sessions at a time (`turns_per_s`,
//!   `peak_rss_mb`).
//! - `turn_flatness`: 1 session × 200 turns, SQLite, a reply step with no model call, each
//!   turn timed on its own; `late_over_early` is the median of turns 191–200 over the median of
//!   turns 1–10 (flat in history: ≤ 1.10), `t91_100_over_t1_10` the same for turns 91–100, and
//!   `early_us` / `late_us` the two medians. 5 fresh sessions; each metric's samples are per session.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks may panic

use std::time::Instant;

use crewflow::chat::{ChatFlow, ChatOptions, ChatState, SessionId};
use crewflow::prelude::*;
use crewflow::store::SqliteStore;
use futures::StreamExt;

const BENCHES: [&str; 3] = ["turn_overhead", "sessions_10k", "turn_flatness"];

mod harness;

use harness::{peak_rss_bytes, report};

fn main() {
    match harness::child_name() {
        Some(name) => run_child(&name),
        None => harness::run_children(&BENCHES),
    }
}

fn run_child(name: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        match name {
            "turn_overhead" => turn_overhead().await,
            "sessions_10k" => sessions_10k().await,
            "turn_flatness" => turn_flatness().await,
            other => eprintln!("unknown benchmark {other}"),
        }
    });
}

/// A conversational flow whose one step replies without a model.
fn reply_flow(path: &std::path::Path, traces: bool) -> ChatFlow<ChatState> {
    reply_flow_on(SqliteStore::open(path), traces)
}

fn reply_flow_on(store: SqliteStore, traces: bool) -> ChatFlow<ChatState> {
    let flow = FlowBuilder::<ChatState>::new("bench_chat")
        .start("reply", |_cx, message: String| async move { Ok(format!("you said: {message}")) })
        .build()
        .expect("a flow");
    ChatFlow::new(flow, store).with_options(ChatOptions::default().traces(traces)).expect("options")
}

fn session(id: &str) -> SessionId {
    SessionId::new(id).expect("a valid session id")
}

/// Microseconds per turn of 100 turns on one fresh session.
async fn hundred_turns(flow: &ChatFlow<ChatState>, session: &SessionId) -> f64 {
    let started = Instant::now();
    for i in 0..100 {
        flow.handle_turn(session, &format!("message number {i}")).await.expect("a turn");
    }
    started.elapsed().as_secs_f64() * 1e6 / 100.0
}

async fn turn_overhead() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let runs = [
        (true, true, "per_turn_us"),
        (false, true, "per_turn_us_untraced"),
        (true, false, "per_turn_us_commit_checkpoints"),
    ];
    for (traces, background, metric) in runs {
        let store = SqliteStore::open(dir.path().join(format!("turns-{metric}.db"))).background_checkpoints(background);
        let flow = reply_flow_on(store, traces);
        hundred_turns(&flow, &session("warmup")).await;
        let mut samples = Vec::new();
        for s in 0..7 {
            samples.push(hundred_turns(&flow, &session(&format!("session-{s}"))).await);
        }
        report("turn_overhead", metric, "us", samples);
    }
}

async fn sessions_10k() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let flow = reply_flow(&dir.path().join("sessions.db"), true);
    let started = Instant::now();
    let sessions = futures::stream::iter(0..10_000)
        .map(|s| {
            let flow = flow.clone();
            async move {
                let id = session(&format!("session-{s}"));
                for t in 0..10 {
                    flow.handle_turn(&id, &format!("turn {t} of {id}")).await.expect("a turn");
                }
            }
        })
        .buffer_unordered(64);
    sessions.collect::<Vec<()>>().await;
    let elapsed = started.elapsed().as_secs_f64();
    report("sessions_10k", "turns_per_s", "turns/s", vec![100_000.0 / elapsed]);
    report("sessions_10k", "peak_rss_mb", "MB", vec![peak_rss_bytes() as f64 / (1024.0 * 1024.0)]);
}

/// The median of `samples` (not empty).
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 }
}

async fn turn_flatness() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let flow = reply_flow(&dir.path().join("flatness.db"), true);
    hundred_turns(&flow, &session("warmup")).await;
    let (mut ratio, mut ratio_mid, mut early, mut late) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in 0..5 {
        let id = session(&format!("session-{s}"));
        let mut per_turn = Vec::with_capacity(200);
        for i in 0..200 {
            let started = Instant::now();
            flow.handle_turn(&id, &format!("message number {i}")).await.expect("a turn");
            per_turn.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let first = median(per_turn[0..10].to_vec());
        let middle = median(per_turn[90..100].to_vec());
        let last = median(per_turn[190..200].to_vec());
        ratio.push(last / first);
        ratio_mid.push(middle / first);
        early.push(first);
        late.push(last);
    }
    report("turn_flatness", "late_over_early", "ratio", ratio);
    report("turn_flatness", "t91_100_over_t1_10", "ratio", ratio_mid);
    report("turn_flatness", "early_us", "us", early);
    report("turn_flatness", "late_us", "us", late);
}
