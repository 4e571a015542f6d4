//! The HTML page in a real headless Chromium (Debian's `chromium`, installed by `.ci/run`):
//! every step is drawn, a real mouse click on a step opens the panel with its triggers and where
//! the step is defined, and a screenshot lands in `target/plot-screenshots/` for a reviewer to
//! open.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod cdp;

use crewflow_core::FlowBuilder;
use crewflow_core::trigger::{and, label, or, step};
use crewflow_plot::Plot;
use serde_json::json;

type State = serde_json::Map<String, serde_json::Value>;

/// A start, listeners, a router whose `revise` label loops back, an `or` and an `and` join.
fn review() -> crewflow_core::Flow<State> {
    FlowBuilder::<State>::new("review")
        .start("brief", |_cx, (): ()| async { Ok(()) })
        .listen("draft", or([step("brief"), label("revise")]), |_cx, (): ()| async { Ok(()) })
        .router("review", step("draft"), |_cx, (): ()| async { Ok("approve".to_string()) })
        .routes(["approve", "revise"])
        .listen("legal", label("approve"), |_cx, (): ()| async { Ok(()) })
        .listen("style", label("approve"), |_cx, (): ()| async { Ok(()) })
        .listen("merge", and([step("legal"), step("style")]), |_cx, (): ()| async { Ok(()) })
        .listen("publish", step("merge"), |_cx, (): ()| async { Ok(()) })
        .build()
        .unwrap()
}

#[test]
fn the_page_draws_every_step_and_a_click_shows_its_triggers_and_source() {
    let flow = review();
    let dir = tempfile::tempdir().unwrap();
    let page = flow.plot(dir.path().join("review.html")).unwrap();
    let mut browser = cdp::Browser::launch(1200, 700);
    browser.open(&page);

    let drawn = browser.eval("[...document.querySelectorAll('g.node')].map(g => g.dataset.step)");
    let mut drawn: Vec<String> = serde_json::from_value(drawn).unwrap();
    drawn.sort();
    assert_eq!(drawn, ["brief", "draft", "legal", "merge", "publish", "review", "style"]);
    // each step has a visible box on the screen, inside the viewport (the page fits the graph)
    let boxes = browser.eval(
        "[...document.querySelectorAll('g.node')].map(g => { const r = g.getBoundingClientRect(); \
         return r.width > 10 && r.height > 10 && r.left >= 0 && r.right <= innerWidth && r.bottom <= innerHeight; })",
    );
    assert_eq!(boxes, json!(vec![true; 7]), "a step is off screen or has no size");
    // the router's loop back to `draft` is drawn apart
    assert!(browser.eval("document.querySelectorAll('g.edge.back').length").as_u64().unwrap() >= 1);
    assert_eq!(browser.eval("document.getElementById('info').hidden"), json!(true));

    let at = browser.eval(
        "(() => { const r = document.querySelector('g.node[data-step=\"merge\"] .shape').getBoundingClientRect(); \
         return [r.left + r.width / 2, r.top + r.height / 2]; })()",
    );
    browser.click(at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    assert_eq!(browser.eval("document.getElementById('info').hidden"), json!(false), "the click opened no panel");
    let panel = browser.eval("document.getElementById('info').innerText").as_str().unwrap().to_string();
    assert!(panel.starts_with("merge\n"), "{panel}");
    assert!(panel.contains("runs when: and(legal, style)"), "{panel}");
    let from = panel.lines().find(|l| l.starts_with("triggered by:")).unwrap_or_else(|| panic!("{panel}"));
    assert!(from.contains("legal") && from.contains("style"), "{panel}");
    assert!(panel.contains("triggers: publish"), "{panel}");
    // and where the step is defined: the builder's `listen("merge", ..)` call above
    let merge = flow.graph().source(flow.graph().step_index("merge").unwrap()).unwrap().to_string();
    assert!(merge.starts_with(&format!("{}:", file!())), "{merge}");
    assert!(panel.lines().any(|l| l == format!("defined at: {merge}")), "no source location in the panel: {panel}");
    // hovering highlighted the step's paths: the rest of the graph is dimmed
    assert_eq!(browser.eval("document.getElementById('graph').classList.contains('dim')"), json!(true));

    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot = cdp::target_dir("plot-screenshots").join("review-merge-clicked.png");
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot: {}", shot.display());
}
