//! Routing accuracy of the main example (`examples/support_triage`): `scripts/bench` (or
//! `cargo bench --bench triage`). Needs `scripts/fetch-models` (the local embedder).
//!
//! - `triage_accuracy`: `accuracy_pct` of the example's routing ([`lanes::routing`]) on the 90
//!   tickets of `benches/data/triage_eval.jsonl` (30 per lane, written apart from the lanes'
//!   examples and never used as examples), and `security_pct`, `priority_pct`, `standard_pct`
//!   per lane.
//! - `triage_choices`: the same set under the alternatives the routing was chosen from
//!   (`nearest_4` is the example's earlier routing: the closest of four examples per lane).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks may panic

use std::sync::Arc;

use crewflow::llm::local::LocalEmbedder;
use crewflow::llm::{Embedder, Intents, Scoring};

#[path = "../examples/support_triage/lanes.rs"]
mod lanes;

mod harness;

use harness::report;

const BENCHES: [&str; 2] = ["triage_accuracy", "triage_choices"];
const LANES: [&str; 3] = ["security", "priority", "standard"];

fn main() {
    let selected = harness::selected(&BENCHES);
    if selected.is_empty() {
        return; // `--only` named other benchmarks: do not load the embedder
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let embedder: Arc<dyn Embedder> =
        Arc::new(LocalEmbedder::load_default().expect("the local embedder (run scripts/fetch-models)"));
    let tickets = eval_set();
    for name in selected {
        rt.block_on(async {
            match name {
                "triage_accuracy" => {
                    let per_lane = accuracy(&lanes::routing(embedder.clone()), &tickets).await;
                    let overall = per_lane.iter().sum::<f64>() / per_lane.len() as f64;
                    report("triage_accuracy", "accuracy_pct", "%", vec![overall]);
                    for (lane, pct) in LANES.iter().zip(per_lane) {
                        report("triage_accuracy", &format!("{lane}_pct"), "%", vec![pct]);
                    }
                }
                _ => {
                    for (metric, intents) in choices(embedder.clone()) {
                        let per_lane = accuracy(&intents, &tickets).await;
                        report("triage_choices", metric, "%", vec![per_lane.iter().sum::<f64>() / 3.0]);
                    }
                }
            }
        });
    }
}

/// (lane, text) per ticket of the evaluation set.
fn eval_set() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/triage_eval.jsonl");
    std::fs::read_to_string(path)
        .expect("benches/data/triage_eval.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (v["lane"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The share of each lane's tickets routed to that lane, in percent.
async fn accuracy(intents: &Intents, tickets: &[(String, String)]) -> Vec<f64> {
    let mut right = [0usize; 3];
    let mut total = [0usize; 3];
    for (lane, text) in tickets {
        let i = LANES.iter().position(|l| l == lane).expect("a known lane");
        total[i] += 1;
        if intents.classify(text).await.expect("a classification").label == *lane {
            right[i] += 1;
        }
    }
    (0..3).map(|i| 100.0 * right[i] as f64 / total[i].max(1) as f64).collect()
}

/// The alternatives measured when choosing the example's routing.
fn choices(embedder: Arc<dyn Embedder>) -> Vec<(&'static str, Intents)> {
    let with = |examples: usize, scoring: Scoring, threshold: f32| {
        Intents::with_embedder(embedder.clone())
            .intent("security", lanes::SECURITY.iter().take(examples).copied())
            .intent("priority", lanes::PRIORITY.iter().take(examples).copied())
            .intent("standard", lanes::STANDARD.iter().take(examples).copied())
            .scoring(scoring)
            .threshold(threshold)
            .unknown("standard")
    };
    vec![
        ("nearest_4", with(4, Scoring::Nearest, -1.0)),
        ("nearest_12", with(12, Scoring::Nearest, -1.0)),
        ("knearest3_12", with(12, Scoring::KNearest(3), -1.0)),
        ("knearest5_12", with(12, Scoring::KNearest(5), -1.0)),
        ("centroid_12", with(12, Scoring::Centroid, -1.0)),
        ("knearest3_12_min20", with(12, Scoring::KNearest(3), 0.20)),
        ("knearest3_12_min25", with(12, Scoring::KNearest(3), 0.25)),
        ("knearest3_12_min30", with(12, Scoring::KNearest(3), 0.30)),
        ("knearest5_12_min30", with(12, Scoring::KNearest(5), 0.30)),
        ("centroid_12_min30", with(12, Scoring::Centroid, 0.30)),
        ("centroid_12_min35", with(12, Scoring::Centroid, 0.35)),
        ("centroid_12_min40", with(12, Scoring::Centroid, 0.40)),
        ("centroid_12_min45", with(12, Scoring::Centroid, 0.45)),
    ]
}
