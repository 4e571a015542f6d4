//! The text forms are pinned by snapshots checked in under `tests/snapshots/`: a changed
//! picture fails here. After an intended change, rewrite them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p crewflow-plot --test pictures` and review the diff.
//! The HTML page is checked for what a reader relies on: every step drawn once, with its kind,
//! edges left to right, loops apart, nothing fetched from the network.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::sync::Arc;

use crewflow_core::RunId;
use crewflow_core::graph::{Graph, GraphSpec, RouterSpec, SourceLocation, StartKind, StepSpec};
use crewflow_core::persist::{RunStatus, StepRow, StoredRun};
use crewflow_core::trigger::{Trigger, and, label, or, step};
use crewflow_plot::{Join, NodeKind, Picture, Plot};

fn start(name: &str) -> StepSpec {
    StepSpec {
        name: name.into(),
        start: StartKind::Always,
        trigger: None,
        router: None,
        input: None,
        output: None,
        source: None,
    }
}

fn listen(name: &str, t: impl Into<Trigger>) -> StepSpec {
    StepSpec {
        name: name.into(),
        start: StartKind::Listener,
        trigger: Some(t.into()),
        router: None,
        input: None,
        output: None,
        source: None,
    }
}

fn router(mut s: StepSpec, labels: &[&str]) -> StepSpec {
    s.router = Some(RouterSpec {
        labels: labels.iter().map(|l| Arc::from(*l)).collect(),
        terminal: Vec::new(),
        route_type: "String",
    });
    s
}

fn graph(name: &str, steps: Vec<StepSpec>) -> Graph {
    GraphSpec { name: name.into(), steps }.compile().unwrap()
}

/// A chain: the simplest shape.
fn chain() -> Graph {
    graph("chain", vec![start("fetch"), listen("parse", step("fetch")), listen("store", step("parse"))])
}

/// A review loop: a router sends drafts back until approved (a loop through a label), and a
/// retry router loops on itself.
fn review_loop() -> Graph {
    graph(
        "review_loop",
        vec![
            start("brief"),
            listen("draft", or([step("brief"), label("revise")])),
            router(listen("review", step("draft")), &["approve", "revise", "escalate"]),
            listen("publish", label("approve")),
            router(listen("escalate", or([label("escalate"), label("again")])), &["again", "done"]),
            listen("close", label("done")),
        ],
    )
}

/// Joins: a fan-out into `and`, `or`, and a nested `and(or(..), ..)`.
fn joins() -> Graph {
    graph(
        "joins",
        vec![
            start("intake"),
            listen("legal", step("intake")),
            listen("style", step("intake")),
            listen("facts", step("intake")),
            listen("merge", and([step("legal"), step("style")])),
            listen("first_look", or([step("legal"), step("style"), step("facts")])),
            listen("ship", and([or([step("merge"), step("first_look")]), step("facts")])),
        ],
    )
}

/// A router that is a start, a conditional start, and two routers sharing a label; names that
/// need escaping in labels.
fn mixed() -> Graph {
    let mut triage = router(start("triage"), &["bug", "question"]);
    triage.start = StartKind::Always;
    let mut on_call = listen("on_call", label("bug"));
    on_call.start = StartKind::Conditional;
    graph(
        "mixed \"flow\"",
        vec![
            triage,
            on_call,
            router(listen("answer", label("question")), &["bug", "thanks"]),
            listen("reply", label("thanks")),
        ],
    )
}

fn check_snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("no snapshot {} ({e}); write it with UPDATE_SNAPSHOTS=1 and review it", path.display())
    });
    if expected != actual {
        panic!(
            "the picture {name} changed.\n--- expected ({})\n{expected}\n--- actual\n{actual}\nIf the change is intended, \
             rewrite the snapshots with UPDATE_SNAPSHOTS=1 and review the diff.",
            path.display()
        );
    }
}

#[test]
fn mermaid_snapshots() {
    for (name, g) in [("chain", chain()), ("review_loop", review_loop()), ("joins", joins()), ("mixed", mixed())] {
        check_snapshot(&format!("{name}.mmd"), &g.to_mermaid());
    }
}

#[test]
fn dot_snapshots() {
    for (name, g) in [("chain", chain()), ("review_loop", review_loop()), ("joins", joins()), ("mixed", mixed())] {
        check_snapshot(&format!("{name}.dot"), &g.to_dot());
    }
}

#[test]
fn a_picture_has_one_node_per_step_with_its_kind_and_an_edge_per_trigger_leaf() {
    let p = Picture::of(&review_loop());
    let kinds: Vec<(&str, NodeKind)> = p.nodes.iter().map(|n| (n.name.as_str(), n.kind)).collect();
    assert_eq!(
        kinds,
        [
            ("brief", NodeKind::Start),
            ("draft", NodeKind::Listen),
            ("review", NodeKind::Router),
            ("publish", NodeKind::Listen),
            ("escalate", NodeKind::Router),
            ("close", NodeKind::Listen),
        ]
    );
    let edge = |from: &str, to: &str| {
        p.edges
            .iter()
            .find(|e| p.nodes[e.from].name == from && p.nodes[e.to].name == to)
            .unwrap_or_else(|| panic!("no edge {from} -> {to}"))
    };
    // the loop back to `draft` is the labelled member of an `or`, and is the back edge
    let revise = edge("review", "draft");
    assert_eq!((revise.label.as_deref(), revise.join, revise.back), (Some("revise"), Join::Or, true));
    assert_eq!(revise.text().as_deref(), Some("or: revise"));
    let first = edge("brief", "draft");
    assert_eq!((first.label.as_deref(), first.join, first.back), (None, Join::Or, false));
    // a router listening to its own label: a self-loop, marked back
    let again = edge("escalate", "escalate");
    assert!(again.back);
    assert_eq!(again.label.as_deref(), Some("again"));
    // no other edge is a back edge
    assert_eq!(p.edges.iter().filter(|e| e.back).count(), 2, "{:?}", p.edges);
    assert_eq!(p.edges.len(), 7);
}

#[test]
fn nested_joins_name_their_innermost_operator() {
    let p = Picture::of(&joins());
    let join_of = |from: &str, to: &str| {
        p.edges.iter().find(|e| p.nodes[e.from].name == from && p.nodes[e.to].name == to).map(|e| e.join)
    };
    assert_eq!(join_of("legal", "merge"), Some(Join::And));
    assert_eq!(join_of("facts", "first_look"), Some(Join::Or));
    assert_eq!(join_of("merge", "ship"), Some(Join::Or));
    assert_eq!(join_of("facts", "ship"), Some(Join::And));
    assert_eq!(join_of("intake", "legal"), Some(Join::Single));
    assert!(p.edges.iter().all(|e| !e.back), "joins has no loop");
}

#[test]
fn a_label_declared_by_two_routers_gets_an_edge_from_each() {
    let p = Picture::of(&mixed());
    let into_on_call: Vec<&str> =
        p.edges.iter().filter(|e| p.nodes[e.to].name == "on_call").map(|e| p.nodes[e.from].name.as_str()).collect();
    assert_eq!(into_on_call, ["triage", "answer"]);
    assert!(p.nodes[0].also_start && p.nodes[0].kind == NodeKind::Router);
}

#[test]
fn a_steps_source_location_reaches_the_page_data_and_the_dot_tooltip_not_mermaid() {
    let mut steps = vec![start("fetch"), listen("parse", step("fetch"))];
    steps[0].source = Some(SourceLocation::new("src/flows/fetch.rs", 12, 5));
    steps[1].source = Some(SourceLocation::new("flows/\"odd\".yaml", 7, 0));
    let g = graph("located", steps);
    let p = Picture::of(&g);
    assert_eq!(p.nodes[0].source.as_deref(), Some("src/flows/fetch.rs:12:5"));
    assert_eq!(p.nodes[1].source.as_deref(), Some("flows/\"odd\".yaml:7"));
    // the page's data block, which the click panel reads
    let html = p.to_html();
    let block = html.find("<script type=\"application/json\" id=\"flow-data\">").unwrap();
    let json = &html[block..];
    let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
    let data: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(data["nodes"][0]["source"], "src/flows/fetch.rs:12:5");
    assert_eq!(data["nodes"][1]["source"], "flows/\"odd\".yaml:7");
    assert!(html.contains("defined at:"), "the panel's script names the location");
    let dot = p.to_dot();
    assert!(dot.contains("tooltip=\"src/flows/fetch.rs:12:5\""), "{dot}");
    assert!(dot.contains("tooltip=\"flows/\\\"odd\\\".yaml:7\""), "{dot}");
    assert!(!p.to_mermaid().contains("fetch.rs"));
    // the location is no part of the fingerprint: moving a step keeps stored runs resumable
    let moved = graph("located", vec![start("fetch"), listen("parse", step("fetch"))]);
    assert_eq!(g.fingerprint(), moved.fingerprint());
}

/// The `<g class="node ...">` elements of a page: (classes, step, x, y, width) of its shape.
fn drawn_nodes(html: &str) -> Vec<(String, String, f64, f64)> {
    let mut out = Vec::new();
    for part in html.split("<g class=\"node ").skip(1) {
        let classes = part[..part.find('"').unwrap()].to_string();
        let step = attr(part, "data-step").unwrap();
        let (x, y) = match attr(part, "x") {
            Some(x) => (x.parse().unwrap(), attr(part, "y").unwrap().parse().unwrap()),
            None => {
                // a polygon: its first point's y, its leftmost x
                let pts = attr(part, "points").unwrap();
                let xs: Vec<f64> = pts.split(' ').map(|p| p.split(',').next().unwrap().parse().unwrap()).collect();
                let y0 = pts.split(' ').next().unwrap().split(',').nth(1).unwrap().parse().unwrap();
                (xs.iter().copied().fold(f64::MAX, f64::min), y0)
            }
        };
        out.push((classes, step, x, y));
    }
    out
}

fn attr(s: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let i = s.find(&needle)? + needle.len();
    Some(s[i..i + s[i..].find('"')?].to_string())
}

#[test]
fn the_page_draws_every_step_once_left_to_right_and_fetches_nothing() {
    let g = review_loop();
    let html = g.to_html();
    let drawn = drawn_nodes(&html);
    let names: Vec<&str> = drawn.iter().map(|d| d.1.as_str()).collect();
    assert_eq!(names, ["brief", "draft", "review", "publish", "escalate", "close"]);
    assert!(drawn[0].0.starts_with("start"), "{}", drawn[0].0);
    assert!(drawn[2].0.starts_with("router"), "{}", drawn[2].0);
    assert!(drawn[3].0.starts_with("listen"), "{}", drawn[3].0);
    // every forward edge goes to the right; the loop edges are drawn apart
    let p = Picture::of(&g);
    for e in p.edges.iter().filter(|e| !e.back) {
        assert!(drawn[e.from].2 < drawn[e.to].2, "{} is not left of {}", drawn[e.from].1, drawn[e.to].1);
    }
    assert_eq!(html.matches("<g class=\"edge back\">").count(), 2);
    assert_eq!(html.matches("<g class=\"edge").count(), p.edges.len());
    assert!(html.contains(">or: revise</text>"));
    // self-contained: no script or style from elsewhere, no URL but the SVG namespace
    for needle in ["src=", "href=", "@import", "url(http"] {
        assert!(!html.contains(needle), "the page refers elsewhere: {needle}");
    }
    assert_eq!(html.matches("http").count(), 1, "only the SVG namespace");
    // what a Content-Security-Policy allows by hash is all the inline code there is: one style
    // element, one script that runs, no style attribute, no event handler attribute
    let inline = Picture::html_inline_code();
    assert!(html.contains(&format!("<style>{}</style>", inline.style)));
    assert!(html.contains(&format!("<script>{}</script>", inline.script)));
    assert_eq!((html.matches("<style").count(), html.matches("<script>").count()), (1, 1));
    assert!(!html.contains(" style=\""), "an inline style attribute");
    let handlers = html.match_indices(" on").filter(|(at, _)| {
        html[at + 3..].split('=').next().is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
    });
    assert_eq!(handlers.count(), 0, "an inline event handler");
    // the data the script reads is valid JSON naming every step
    let start = html.find("id=\"flow-data\">").unwrap() + "id=\"flow-data\">".len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
    assert_eq!(data["nodes"].as_array().unwrap().len(), 6);
    assert_eq!(data["nodes"][1]["trigger"], "or(brief, 'revise')");
    assert_eq!(data["edges"].as_array().unwrap().len(), 7);
}

#[test]
fn nodes_of_one_layer_never_overlap() {
    let html = joins().to_html();
    let drawn = drawn_nodes(&html);
    for (i, a) in drawn.iter().enumerate() {
        for b in &drawn[i + 1..] {
            if (a.2 - b.2).abs() < 1.0 {
                assert!((a.3 - b.3).abs() >= 36.0, "{} and {} overlap", a.1, b.1);
            }
        }
    }
}

#[test]
fn text_in_names_and_labels_is_escaped_in_every_form() {
    let g = mixed();
    assert!(g.to_html().contains("<title>mixed &quot;flow&quot; · crewflow</title>"));
    assert!(g.to_dot().starts_with("digraph \"mixed \\\"flow\\\"\" {"));
    assert!(g.to_mermaid().starts_with("---\ntitle: mixed #quot;flow#quot;\n---"));
    // a script-closing sequence in data cannot end the data block early
    let html = g.to_html();
    let data_block = &html[html.find("id=\"flow-data\"").unwrap()..];
    assert!(!data_block[..data_block.find("</script>").unwrap()].contains('<'));
}

fn stored(steps: &[&str], status: RunStatus, error: Option<&str>, feedback: Option<&str>) -> StoredRun {
    let now = chrono::Utc::now();
    StoredRun {
        run_id: RunId::new(),
        flow: "review_loop".into(),
        fingerprint: 0,
        status,
        fencing: 1,
        owner: None,
        lease_until: None,
        seq: steps.len() as u64,
        inputs: None,
        payload: None,
        state: "{}".into(),
        state_version: 0,
        frontier: "{}".into(),
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepRow {
                activation: i as u64,
                step: Arc::from(*s),
                output: "null".into(),
                finished_at: now,
            })
            .collect(),
        final_activation: None,
        error: error.map(String::from),
        feedback: feedback.map(String::from),
        created_at: now,
        updated_at: now,
        parent: None,
    }
}

#[test]
fn a_run_drawn_over_its_flow_shows_counts_and_where_it_paused() {
    let run = stored(
        &["brief", "draft", "review", "draft", "review"],
        RunStatus::Paused,
        None,
        Some(r#"{"pending":[{"activation":5,"request":{"step":"review"}}],"history":[]}"#),
    );
    let p = Picture::of(&review_loop()).with_run(&run);
    let overlay = p.run.as_ref().unwrap();
    assert_eq!(overlay.counts, [1, 2, 2, 0, 0, 0]);
    assert_eq!(overlay.paused, [2]);
    assert_eq!(overlay.status, "paused");
    let html = p.to_html();
    let drawn = drawn_nodes(&html);
    assert!(drawn[2].0.contains("paused") && drawn[2].0.contains("taken"), "{}", drawn[2].0);
    assert!(drawn[3].0.contains("untaken"), "{}", drawn[3].0);
    assert!(html.contains(">×2</text>"));
    assert!(html.contains("· paused</span>"));
    assert!(p.to_mermaid().contains("n2{\"review ×2\"}:::paused"));
    assert!(p.to_dot().contains("n1 [label=\"draft ×2\""));
}

#[test]
fn a_failed_run_marks_the_step_its_error_names() {
    let run = stored(&["brief", "draft"], RunStatus::Failed, Some("step `review` failed: timeout"), None);
    let p = Picture::of(&review_loop()).with_run(&run);
    assert_eq!(p.run.as_ref().unwrap().failed, [2]);
    assert!(p.to_html().contains("step `review` failed: timeout</span>"));
}

#[test]
fn writing_to_a_missing_directory_says_where_and_what_to_do() {
    let err = chain().plot("/nonexistent-dir/for/sure/flow.html").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("cannot write the flow picture to /nonexistent-dir/for/sure/flow.html: "), "{msg}");
    assert!(msg.ends_with("check that the directory exists and is writable"), "{msg}");
}
