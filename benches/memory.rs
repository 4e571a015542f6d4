//! Memory benchmarks: `scripts/bench` (or `cargo bench --bench memory -- [--only a,b]`).
//!
//! Prints one JSON line per figure, like the other benchmarks:
//! - `recall_10k`: `ms_per_recall`, one [`Memory::recall`] over 10,000 memories of one scope
//!   in a SQLite file (256-dimension `HashEmbedder` vectors): the scope's rows read with their
//!   embeddings, cosine against each, ranking, touching the top 10. `ms_per_remember` is one
//!   `remember` (embed, insert) into the same file, for comparison.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks may panic

use std::time::Instant;

use crewflow::llm::HashEmbedder;
use crewflow::memory::{Memory, RecallOptions, RememberOptions};
use crewflow::store::SqliteStore;

mod harness;

use harness::report;

const BENCHES: [&str; 1] = ["recall_10k"];
const RECORDS: usize = 10_000;
const DIMENSIONS: usize = 256;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    for name in harness::selected(&BENCHES) {
        if name == "recall_10k" {
            rt.block_on(recall_10k());
        }
    }
}

const WORDS: [&str; 24] = [
    "invoice", "customer", "payment", "refund", "shipping", "delay", "discount", "contract", "renewal", "support",
    "ticket", "urgent", "billing", "account", "password", "report", "monthly", "quarter", "tax", "europe", "order",
    "return", "warranty", "citation",
];

fn text(i: usize) -> String {
    let mut x = i.wrapping_mul(2_654_435_761) ^ 0x9e37;
    (0..12)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            WORDS[(x >> 33) % WORDS.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn recall_10k() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("memory.db"));
    let memory = Memory::new(store, HashEmbedder { dimensions: DIMENSIONS }).root_scope("/bench");
    let texts: Vec<String> = (0..RECORDS).map(text).collect();
    for chunk in texts.chunks(1000) {
        memory.remember_many(chunk, RememberOptions::new().scope("facts")).await.unwrap();
    }
    let mut samples = Vec::new();
    for i in 0..30 {
        let start = Instant::now();
        let found = memory.recall(&text(RECORDS + i), RecallOptions::new().scope("facts").limit(10)).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found.len(), 10);
    }
    report("recall_10k", "ms_per_recall", "ms", samples);
    let mut samples = Vec::new();
    for i in 0..30 {
        let start = Instant::now();
        memory.remember(&text(2 * RECORDS + i), RememberOptions::new().scope("facts")).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    report("recall_10k", "ms_per_remember", "ms", samples);
}
