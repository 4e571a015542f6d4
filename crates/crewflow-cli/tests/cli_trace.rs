//! `crewflow trace RUN`: a run started from another run's step is drawn under that step, in
//! the printed tree, in `--json` and in `--html`; `runs show` names a nested run's parent.
//! The store is a real SQLite file written by flows run in this test; the binary reads it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::*;
use serde_json::json;

#[test]
fn nested_runs_are_drawn_under_the_step_that_started_them() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    let (outer, nested) = store_nested_runs(&s.path("runs.db"), &rt);
    let db = s.db("runs.db");

    let out = s.cmd(&["trace", &outer, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    // The shape of the tree, without the times and bars.
    let shape: Vec<String> = text.lines().skip(1).filter(|l| !l.starts_with('(')).map(numbers_as_nines).collect();
    let (a, b) = (numbers_as_nines(&nested[0]), numbers_as_nines(&nested[1]));
    assert_eq!(
        shape,
        [
            "├─ #9   plan".to_string(),
            "├─ #9   gather".to_string(),
            format!("│  ├─ run {a} · flow `research` · finished · 9 ms"),
            "│  │  ├─ #9   search".to_string(),
            "│  │  │  └─ call fetch".to_string(),
            "│  │  └─ #9   summarize".to_string(),
            format!("│  └─ run {b} · flow `research` · finished · 9 ms"),
            "│     ├─ #9   search".to_string(),
            "│     │  └─ call fetch".to_string(),
            "│     └─ #9   summarize".to_string(),
            "└─ #9   write".to_string(),
        ],
        "{text}"
    );

    let out = s.cmd(&["trace", &outer, "--store", &db, "--json"]).output().unwrap();
    let trace = &json_lines(&out)[0];
    assert_eq!(trace["run_id"], json!(outer));
    assert!(trace.get("parent").is_none(), "{trace}");
    let runs = trace["nested"].as_array().unwrap();
    assert_eq!(runs.iter().map(|r| r["run_id"].clone()).collect::<Vec<_>>(), [json!(nested[0]), json!(nested[1])]);
    let gather =
        trace["steps"].as_array().unwrap().iter().find(|s| s["step"] == "gather").unwrap()["activation"].clone();
    for run in runs {
        assert_eq!(run["parent"], json!({"run_id": outer, "activation": gather}), "{run}");
        assert_eq!(run["steps"].as_array().unwrap().len(), 2, "{run}");
        let calls = run["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1, "{run}");
        assert_eq!(
            (&calls[0]["key"], &calls[0]["kind"], &calls[0]["activation"]),
            (&json!("fetch"), &json!("other"), &json!(0))
        );
        assert!(calls[0]["recorded_ms"].as_f64().unwrap() >= 0.0, "{run}");
    }

    let out = s.cmd(&["runs", "list", "--parent", &outer, "--store", &db, "--json"]).output().unwrap();
    let listed: Vec<serde_json::Value> = json_lines(&out).iter().map(|r| r["run_id"].clone()).collect();
    assert_eq!(listed, [json!(nested[1]), json!(nested[0])], "the nested runs, newest first");
    let out = s.cmd(&["runs", "list", "--parent", "not-a-run", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let out = s.cmd(&["runs", "show", &nested[1], "--store", &db]).output().unwrap();
    assert!(stdout(&out).contains(&format!("parent   run {outer} (step execution #{gather})")), "{}", stdout(&out));
    let out = s.cmd(&["runs", "show", &nested[1], "--store", &db, "--json"]).output().unwrap();
    assert_eq!(json_lines(&out)[0]["parent"], json!({"run_id": outer, "activation": gather}));

    // The page: the nested runs' lists sit inside the outer run's, after the `gather` row.
    let page = s.path("trace.html");
    let out = s.cmd(&["trace", &outer, "--store", &db, "--html", page.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("{needle} not in the page:\n{html}"));
    assert!(at("data-step=\"gather\"") < at(&format!("data-run=\"{}\"", nested[0])));
    assert!(at(&format!("data-run=\"{}\"", nested[1])) < at("data-step=\"write\""));
    assert_eq!(html.matches("data-step=\"summarize\"").count(), 2);
    assert_eq!(html.matches("<li class=\"note call\">call fetch").count(), 2, "{html}");
}

/// A step that recorded a side effect and then failed stored no output, but its journal did:
/// the trace shows the execution, what it recorded, and the run's error.
#[test]
fn a_failed_executions_recorded_calls_are_drawn() {
    use std::sync::Arc;

    use crewflow_core::FlowBuilder;
    use serde_json::{Map, Value};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = Scratch::new();
    let store: Arc<dyn crewflow_core::persist::RunStore> =
        Arc::new(crewflow_store::SqliteStore::open(s.path("runs.db")));
    let flow = FlowBuilder::<Map<String, Value>>::new("pay")
        .start("charge", |cx, (): ()| async move {
            let receipt: String =
                cx.once("charge", |_| async { Ok::<_, std::io::Error>("receipt-7".to_string()) }).await?;
            Err::<(), _>(format!("the ledger refused {receipt}").into())
        })
        .store(store.clone())
        .build()
        .unwrap();
    rt.block_on(flow.kickoff(())).unwrap_err();
    let id = rt.block_on(store.list_runs(&crewflow_core::persist::RunFilter::default())).unwrap()[0].run_id.to_string();

    let out = s.cmd(&["trace", &id, "--store", &s.db("runs.db")]).output().unwrap();
    let text = stdout(&out);
    let shape: Vec<String> = text.lines().skip(1).filter(|l| !l.starts_with('(')).map(numbers_as_nines).collect();
    assert_eq!(shape.len(), 3, "{text}");
    assert_eq!(shape[0], "├─ #9   (stored no output: the execution failed or still runs)", "{text}");
    assert_eq!(shape[1], "│  └─ call charge", "{text}");
    assert!(shape[2].starts_with("└─ error: ") && shape[2].contains("the ledger refused receipt-9"), "{text}");
}

/// A line up to its time column (a step row's `+… ms`), each run of digits and dots as `9`.
fn numbers_as_nines(line: &str) -> String {
    let line = line.split(" +").next().unwrap().trim_end();
    let mut out = String::new();
    for c in line.chars() {
        let numeric = c.is_ascii_digit() || c == '.';
        if !numeric {
            out.push(c);
        } else if !out.ends_with('9') {
            out.push('9');
        }
    }
    out
}
