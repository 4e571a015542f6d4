//! A YAML flow that pauses for human feedback, driven through the real binary: the run exits
//! 3, is listed as pending, drawn and traced as paused, answered by another process, and
//! cancelled; and pictures of flows from the command line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::{REVIEW, REVIEWED, Scratch, json_lines, stderr, stdout};

fn pause(s: &Scratch, db: &str) -> String {
    s.write("reviewed.yaml", REVIEWED);
    let out = s.cmd(&["run", "reviewed.yaml", "-i", "topic=YAML", "--store", db]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    let paused = err.lines().find(|l| l.starts_with("paused: run ")).unwrap_or_else(|| panic!("{err}"));
    let id = paused["paused: run ".len()..].split(' ').next().unwrap().to_string();
    assert_eq!(paused, format!("paused: run {id} waits for feedback on step `generate`: Is this draft good?"));
    assert!(
        err.contains(&format!(
            "  answer with: crewflow feedback answer {id} <answer> --flow reviewed.yaml --store {db}"
        )),
        "{err}"
    );
    id
}

#[test]
fn a_paused_yaml_flow_is_listed_answered_and_finishes() {
    let s = Scratch::new();
    let db = s.db("reviews.db");
    let id = pause(&s, &db);

    let list = s.cmd(&["feedback", "list", "--json", "--store", &db]).output().unwrap();
    let pending = json_lines(&list);
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["run_id"], id.as_str());
    assert_eq!(pending[0]["request"]["step"], "generate");
    assert_eq!(pending[0]["request"]["output"], "a draft about YAML");
    let text = stdout(&s.cmd(&["feedback", "list", "--store", &db]).output().unwrap());
    assert!(text.starts_with(&format!("{id}  reviewed  request 0  step `generate`: Is this draft good?\n")), "{text}");

    let runs = json_lines(&s.cmd(&["runs", "list", "--status", "paused", "--json", "--store", &db]).output().unwrap());
    assert_eq!(runs.len(), 1);

    // drawn and traced as paused
    let html = s.cmd(&["plot", "reviewed.yaml", "--run", &id, "-o", "paused.html", "--store", &db]).output().unwrap();
    assert_eq!(html.status.code(), Some(0), "{}", stderr(&html));
    let page = std::fs::read_to_string(s.path("paused.html")).unwrap();
    assert!(
        page.contains("<g class=\"node start paused untaken\" data-step=\"generate\">"),
        "the paused step is marked"
    );
    assert!(page.contains(&format!("run {id} · paused")));
    let trace = stdout(&s.cmd(&["trace", &id, "--store", &db]).output().unwrap());
    assert!(trace.contains("└─ paused on `generate`: Is this draft good?"), "{trace}");

    // answered (by another process, from the same definition)
    let out =
        s.cmd(&["feedback", "answer", &id, "approved", "--flow", "reviewed.yaml", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "resumed:approved\n");
    let shown = json_lines(&s.cmd(&["runs", "show", &id, "--json", "--store", &db]).output().unwrap());
    assert_eq!(shown[0]["status"], "finished");
    let trace = stdout(&s.cmd(&["trace", &id, "--store", &db]).output().unwrap());
    assert!(trace.contains("feedback on `generate`: \"approved\""), "{trace}");

    // a second answer finds nothing to answer
    let out = s.cmd(&["feedback", "answer", &id, "again", "--flow", "reviewed.yaml", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stderr(&out), format!("error: run {id} is finished, not paused: it waits for no feedback\n"));
    let out = s.cmd(&["feedback", "list", "--store", &db]).output().unwrap();
    assert_eq!((stdout(&out).as_str(), stderr(&out)), ("", format!("no run waits for feedback in {db}\n")));
}

#[test]
fn answering_with_another_flow_or_an_unknown_request_is_refused() {
    let s = Scratch::new();
    let db = s.db("reviews.db");
    let id = pause(&s, &db);
    s.write("review.yaml", REVIEW);
    let out = s.cmd(&["feedback", "answer", &id, "ok", "--flow", "review.yaml", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("run {id} belongs to flow `reviewed`, not `review`")), "{}", stderr(&out));
    let out = s
        .cmd(&["feedback", "answer", &id, "ok", "--flow", "reviewed.yaml", "--request", "9", "--store", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("error: run {id} has no pending feedback request 9; it waits for: 0 (step `generate`)\n")
    );
    // still paused, still answerable
    let out = s
        .cmd(&["--json", "feedback", "answer", &id, "fine", "--flow", "reviewed.yaml", "--store", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = json_lines(&out).pop().unwrap();
    assert_eq!((result["status"].as_str(), result["output"].as_str()), (Some("finished"), Some("resumed:fine")));
}

#[test]
fn a_paused_run_can_be_cancelled_once() {
    let s = Scratch::new();
    let db = s.db("reviews.db");
    let id = pause(&s, &db);
    let out = s.cmd(&["runs", "cancel", &id, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("cancelled run {id} (it was paused)\n"));
    let shown = json_lines(&s.cmd(&["runs", "show", &id, "--json", "--store", &db]).output().unwrap());
    assert_eq!(shown[0]["status"], "cancelled");
    let out = s.cmd(&["runs", "cancel", &id, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), format!("error: run {id} has cancelled already; there is nothing to cancel\n"));
    let out = s.cmd(&["feedback", "answer", &id, "late", "--flow", "reviewed.yaml", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn plot_writes_html_by_default_and_text_forms_to_stdout() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let out = s.cmd(&["plot", "review.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "wrote review.html (4 steps)\n");
    let page = std::fs::read_to_string(s.path("review.html")).unwrap();
    for step in ["draft", "check", "publish", "reject"] {
        assert_eq!(page.matches(&format!("data-step=\"{step}\"")).count(), 1, "{step} drawn once");
    }
    assert!(!s.path("crewflow.db").exists(), "a picture opens no store");

    let out = s.cmd(&["plot", "review.yaml", "--format", "mermaid"]).output().unwrap();
    assert_eq!(
        stdout(&out),
        concat!(
            "---\ntitle: review\n---\nflowchart LR\n",
            "  n0([\"draft\"]):::start\n  n1{\"check\"}:::router\n  n2[\"publish\"]:::listen\n  n3[\"reject\"]:::listen\n",
            "  n0 --> n1\n  n1 -- \"good\" --> n2\n  n1 -- \"bad\" --> n3\n",
            "  classDef start fill:#dcfce7,stroke:#15803d,color:#14532d\n",
            "  classDef listen fill:#e0f2fe,stroke:#0369a1,color:#0c4a6e\n",
            "  classDef router fill:#fef3c7,stroke:#b45309,color:#78350f\n",
            "  classDef label fill:#f3f4f6,stroke:#6b7280,color:#374151\n",
        )
    );
    let out = s.cmd(&["plot", "review.yaml", "--format", "dot", "-o", "review.dot"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let dot = std::fs::read_to_string(s.path("review.dot")).unwrap();
    assert!(dot.starts_with("digraph \"review\" {\n  rankdir=LR;"), "{dot}");
    assert!(dot.contains("  n1 -> n2 [label=\"good\"];"), "{dot}");

    let out = s.cmd(&["plot", "review.yaml", "--format", "png"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid value 'png' for '--format <FORMAT>'"), "{}", stderr(&out));
    let out = s.cmd(&["plot", "review.yaml", "-o", "no/such/dir/x.html"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: cannot write the flow picture to no/such/dir/x.html: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sessions_of_an_empty_store_and_unknown_sessions() {
    let s = Scratch::new();
    let db = s.db("reviews.db");
    pause(&s, &db);
    let out = s.cmd(&["sessions", "list", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("no sessions in {db}\n"));
    let out = s.cmd(&["sessions", "show", "support", "alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        stderr(&out),
        format!(
            "error: no session `alice` of flow `support` in the store `{db}`; `crewflow sessions list` shows them\n"
        )
    );
    let out = s.cmd(&["sessions", "delete", "support", "alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    let out = s.cmd(&["trace", "--session", "support/alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stderr(&out), format!("error: no trace of session `alice` of flow `support` in the store `{db}`\n"));
    let out = s.cmd(&["trace", "--session", "alice", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
