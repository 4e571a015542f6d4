//! Declarative flow benchmarks: `scripts/bench` (or `cargo bench --bench declarative -- [--only a,b]`).
//!
//! Prints one JSON line per figure:
//! `{"bench": NAME, "metric": NAME, "median": X, "min": X, "max": X, "unit": U, "n": N}`.
//!
//! - `yaml_chain100`: 1 start + 99 chained methods, each a CEL expression `input + 1`
//!   (`per_step_ns`; compare with the engine's `chain100`, a Rust closure per step).
//! - `yaml_code_chain100`: the same chain calling a registered Rust function with templated
//!   `with:` arguments (`per_step_ns`).
//! - `yaml_build`: parsing and building `examples/yaml_review/review.yaml` (`per_build_us`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks may panic

use std::fmt::Write;
use std::time::Instant;

use crewflow::declarative::{Call, DeclarativeFlow, FlowDefinition, Registry};
use serde_json::json;

const BENCHES: [&str; 3] = ["yaml_chain100", "yaml_code_chain100", "yaml_build"];

mod harness;

use harness::report;

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
            "yaml_chain100" => chain("yaml_chain100", "{call: expression, expr: 'input + 1'}").await,
            "yaml_code_chain100" => chain("yaml_code_chain100", "{call: code, ref: add, with: {n: '${input}'}}").await,
            "yaml_build" => build(),
            other => eprintln!("unknown benchmark {other}"),
        }
    });
}

/// A chain of 100 methods, each doing `action` to the previous output.
fn chain_definition(action: &str) -> String {
    let mut yaml = String::from("name: chain\nmethods:\n  m0: {start: true, do: {call: expression, expr: '0'}}\n");
    for i in 1..100 {
        writeln!(yaml, "  m{i}: {{listen: m{}, do: {action}}}", i - 1).unwrap();
    }
    yaml
}

fn registry() -> Registry {
    Registry::new().function("add", |_cx, call: Call| async move {
        Ok(call.args.as_ref().and_then(|a| a["n"].as_i64()).unwrap_or(0) + 1)
    })
}

async fn chain(bench: &str, action: &str) {
    let flow: DeclarativeFlow =
        FlowDefinition::from_yaml(&chain_definition(action)).unwrap().build(&registry()).unwrap();
    let (batch, samples) = (20, 15);
    for _ in 0..batch {
        assert_eq!(flow.kickoff(()).await.unwrap().output_json(), Some(json!(99)));
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..batch {
            flow.kickoff(()).await.unwrap();
        }
        out.push(t.elapsed().as_nanos() as f64 / (batch * 100) as f64);
    }
    report(bench, "per_step_ns", "ns", out);
}

fn build() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/yaml_review/review.yaml")).unwrap();
    let registry = Registry::new()
        .function("first_sentence", |_cx, _call: Call| async move { Ok(()) })
        .function("publish", |_cx, _call: Call| async move { Ok(()) });
    let mut out = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        for _ in 0..50 {
            FlowDefinition::from_yaml(&text).unwrap().build(&registry).unwrap();
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / 50.0);
    }
    report("yaml_build", "per_build_us", "us", out);
}
