//! Command-line benchmarks: `scripts/bench` (or `cargo bench -p crewflow-cli --bench cli -- [--only a,b]`).
//!
//! Prints one JSON line per figure:
//! `{"bench": NAME, "metric": NAME, "median": X, "min": X, "max": X, "unit": U, "n": N}`.
//!
//! - `cli_startup`: `crewflow --version`, the process's wall time (`wall_ms`; goal ≤ 10).
//! - `cli_run_yaml`: `crewflow run` of a 5-step YAML flow on a SQLite file, process wall time,
//!   the store's file created by the first run (`wall_ms`; goal ≤ 60).
//! - `plot_1000`: a 1,000-step flow (chains, routers with loops, `and`/`or` joins) to its HTML
//!   page: picture, layout and page text (`ms`; goal ≤ 200).
//! - `plot_1000_render`: that page in headless Chromium (Debian's `chromium`): `load_ms`, from
//!   navigation to a complete, fitted page; `click_ms`, a real click on a step to its panel
//!   shown (the page stays responsive).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // benchmarks may panic

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use crewflow_core::graph::{GraphSpec, RouterSpec, StartKind, StepSpec};
use crewflow_core::trigger::{Trigger, and, label, or, step};
use crewflow_plot::Plot;

#[path = "../../../benches/harness/mod.rs"]
mod harness;

#[path = "../../crewflow-plot/tests/cdp/mod.rs"]
mod cdp;

use harness::report;

const BENCHES: [&str; 4] = ["cli_startup", "cli_run_yaml", "plot_1000", "plot_1000_render"];
const EXE: &str = env!("CARGO_BIN_EXE_crewflow");

fn main() {
    match harness::child_name() {
        Some(name) => match name.as_str() {
            "cli_startup" => startup(),
            "cli_run_yaml" => run_yaml(),
            "plot_1000" => plot_1000(),
            "plot_1000_render" => plot_1000_render(),
            other => eprintln!("unknown benchmark {other}"),
        },
        None => harness::run_children(&BENCHES),
    }
}

fn wall(args: &[&str], dir: &std::path::Path) -> f64 {
    let t = Instant::now();
    let out = Command::new(EXE).args(args).current_dir(dir).output().unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ms
}

fn startup() {
    let dir = std::env::temp_dir();
    for _ in 0..5 {
        wall(&["--version"], &dir);
    }
    let samples = (0..50).map(|_| wall(&["--version"], &dir)).collect();
    report("cli_startup", "wall_ms", "ms", samples);
}

fn run_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("name: five\nmethods:\n  m0: {start: true, do: {call: expression, expr: '0'}}\n");
    for i in 1..5 {
        writeln!(yaml, "  m{i}: {{listen: m{}, do: {{call: expression, expr: 'input + 1'}}}}", i - 1).unwrap();
    }
    std::fs::write(dir.path().join("five.yaml"), yaml).unwrap();
    let args = ["run", "five.yaml", "--store", "sqlite://runs.db"];
    for _ in 0..3 {
        wall(&args, dir.path());
    }
    let samples = (0..30).map(|_| wall(&args, dir.path())).collect();
    report("cli_run_yaml", "wall_ms", "ms", samples);
}

fn spec(name: String, start: StartKind, trigger: Option<Trigger>, routes: Option<Vec<String>>) -> StepSpec {
    StepSpec {
        name: name.into(),
        start,
        trigger,
        router: routes.map(|labels| RouterSpec {
            labels: labels.into_iter().map(Arc::from).collect(),
            terminal: Vec::new(),
            route_type: "String",
        }),
        input: None,
        output: None,
        source: None,
    }
}

/// 1,000 steps in blocks of ten: a fan-out of three, an `and` join, an `or` join, a router
/// that loops back to the block's start or goes on to the next block.
fn thousand() -> GraphSpec {
    let mut steps = vec![spec("s0_a".into(), StartKind::Always, None, None)];
    for b in 0..100 {
        let p = |s: &str| format!("s{b}_{s}");
        if b > 0 {
            let prev_next = format!("next{}", b - 1);
            steps.push(spec(
                p("a"),
                StartKind::Listener,
                Some(or([label(prev_next), label(format!("again{b}"))])),
                None,
            ));
        }
        for (k, s) in ["b", "c", "d"].iter().enumerate() {
            let _ = k;
            steps.push(spec(p(s), StartKind::Listener, Some(step(p("a"))), None));
        }
        steps.push(spec(p("e"), StartKind::Listener, Some(and([step(p("b")), step(p("c"))])), None));
        steps.push(spec(p("f"), StartKind::Listener, Some(or([step(p("c")), step(p("d"))])), None));
        steps.push(spec(p("g"), StartKind::Listener, Some(and([step(p("e")), step(p("f"))])), None));
        steps.push(spec(p("h"), StartKind::Listener, Some(step(p("g"))), None));
        steps.push(spec(p("i"), StartKind::Listener, Some(step(p("h"))), None));
        steps.push(spec(
            p("j"),
            StartKind::Listener,
            Some(step(p("i"))),
            Some(if b == 0 { vec![format!("next{b}")] } else { vec![format!("next{b}"), format!("again{b}")] }),
        ));
    }
    // the last block's `next` label ends the flow
    steps.push(spec("done".into(), StartKind::Listener, Some(label("next99")), None));
    GraphSpec { name: "thousand".into(), steps }
}

fn plot_1000() {
    let graph = thousand().compile().unwrap();
    assert_eq!(graph.len(), 1001);
    let html = graph.to_html();
    assert_eq!(html.matches("<g class=\"node ").count(), 1001);
    let samples = (0..20)
        .map(|_| {
            let t = Instant::now();
            let html = graph.to_html();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            assert!(html.len() > 100_000);
            ms
        })
        .collect();
    report("plot_1000", "ms", "ms", samples);
}

fn plot_1000_render() {
    let dir = tempfile::tempdir().unwrap();
    let page = thousand().compile().unwrap().plot(dir.path().join("thousand.html")).unwrap();
    let mut browser = cdp::Browser::launch(1400, 900);
    let (mut load, mut click) = (Vec::new(), Vec::new());
    for i in 0..6 {
        browser.call("Page.navigate", serde_json::json!({"url": "about:blank"}));
        let t = Instant::now();
        browser.open(&page);
        assert_eq!(browser.eval("document.querySelectorAll('g.node').length"), 1001);
        let loaded = t.elapsed().as_secs_f64() * 1e3;
        let at = browser.eval(
            "(() => { const r = document.querySelector('g.node[data-step=\"s50_e\"] .shape').getBoundingClientRect(); \
             return [r.left + r.width / 2, r.top + r.height / 2]; })()",
        );
        let t = Instant::now();
        browser.click(at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        assert_eq!(browser.eval("document.getElementById('info').hidden"), false);
        let clicked = t.elapsed().as_secs_f64() * 1e3;
        if i > 0 {
            load.push(loaded); // the first load warms the browser's caches
            click.push(clicked);
        }
    }
    report("plot_1000_render", "load_ms", "ms", load);
    report("plot_1000_render", "click_ms", "ms", click);
}
