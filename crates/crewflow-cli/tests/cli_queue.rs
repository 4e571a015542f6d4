//! `crewflow runs fork`, `crewflow run --queue` with `crewflow worker`, and `crewflow trace
//! --html`, through the real binary on a real SQLite file; messages pinned.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{REVIEW, Scratch, json_lines, stderr, stdout};

fn run_review(s: &Scratch, db: &str, topic: &str) -> String {
    let out =
        s.cmd(&["run", "review.yaml", "--input", &format!("topic={topic}"), "--store", db, "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json_lines(&out).last().unwrap()["run_id"].as_str().unwrap().to_string()
}

#[test]
fn a_fork_starts_over_from_the_state_a_run_reached_with_new_inputs() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let source = run_review(&s, &db, "x"); // a short draft: rejected
    let out = s
        .cmd(&["runs", "fork", &source, "--flow", "review.yaml", "--input", "topic=rust and more", "--store", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "published: draft about rust and more\n");
    let err = stderr(&out);
    let first = err.lines().next().unwrap();
    assert!(first.starts_with(&format!("forking run {source} of flow `review` as run ")), "{err}");
    let fork = first.rsplit(' ').next().unwrap().to_string();
    assert!(
        err.lines().last().unwrap().starts_with(&format!("finished: run {fork} of flow `review`, 3 steps")),
        "{err}"
    );

    // both runs are stored; the source is as it was
    let runs = json_lines(&s.cmd(&["runs", "list", "--store", &db, "--json"]).output().unwrap());
    assert_eq!(runs.len(), 2);
    let show = json_lines(&s.cmd(&["runs", "show", &source, "--store", &db, "--json"]).output().unwrap());
    assert_eq!(show[0]["state"]["topic"], "x");
    assert_eq!(show[0]["steps"][2]["step"], "reject");
    let show = json_lines(&s.cmd(&["runs", "show", &fork, "--store", &db, "--json"]).output().unwrap());
    assert_eq!(show[0]["state"]["topic"], "rust and more");

    // an unknown source run, an unknown input
    let missing = "0193f7a2-0000-7000-8000-000000000000";
    let out = s.cmd(&["runs", "fork", missing, "--flow", "review.yaml", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("\nerror: no run {missing} in sqlite:")), "{err}");
    assert!(err.ends_with("; list the stored runs to find it (a new run is never started in its place)\n"), "{err}");
    let out = s
        .cmd(&["runs", "fork", &source, "--flow", "review.yaml", "--input", "topc=go", "--store", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown input `topc` (did you mean `topic`?)"), "{}", stderr(&out));
}

#[test]
fn queued_runs_are_run_by_a_worker_until_it_is_interrupted() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let mut queued = Vec::new();
    for topic in ["rust and more", "x"] {
        let out = s
            .cmd(&["run", "review.yaml", "--queue", "--input", &format!("topic={topic}"), "--store", &db])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let id = stdout(&out).trim().to_string();
        assert_eq!(stderr(&out), format!("queued run {id} of flow `review`; `crewflow worker` runs it\n"));
        queued.push(id);
    }
    let listed =
        json_lines(&s.cmd(&["runs", "list", "--status", "queued", "--store", &db, "--json"]).output().unwrap());
    assert_eq!(listed.len(), 2);

    let mut worker = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .args(["worker", "--flows", "review.yaml", "--store", &db, "--poll-ms", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let lines = BufReader::new(worker.stderr.take().unwrap()).lines();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| drop(tx.send(l))));
    // generous: only a guard against a hung worker, not a speed check
    let next = || rx.recv_timeout(Duration::from_secs(120)).expect("the worker said nothing");
    assert_eq!(next(), format!("worker on {db} for flows review; Ctrl-C stops it"));
    let mut ended: Vec<String> = (0..2).map(|_| next()).collect();
    ended.sort();
    let mut want: Vec<String> = queued.iter().map(|id| format!("run {id} of flow `review` ended")).collect();
    want.sort();
    assert_eq!(ended, want);

    // Ctrl-C (SIGINT) stops it cleanly
    let status = std::process::Command::new("kill").args(["-INT", &worker.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(next(), "worker stopped");
    assert_eq!(worker.wait().unwrap().code(), Some(0));

    let show = json_lines(&s.cmd(&["runs", "show", &queued[0], "--store", &db, "--json"]).output().unwrap());
    assert_eq!((show[0]["status"].as_str(), show[0]["steps"][2]["step"].as_str()), (Some("finished"), Some("publish")));
    let show = json_lines(&s.cmd(&["runs", "show", &queued[1], "--store", &db, "--json"]).output().unwrap());
    assert_eq!((show[0]["status"].as_str(), show[0]["steps"][2]["step"].as_str()), (Some("finished"), Some("reject")));
}

#[test]
fn a_worker_needs_a_store_and_flows_and_queuing_needs_a_store() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let out = s.cmd(&["worker", "--flows", "review.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: a worker needs the store its runs are queued in: give --store URL (or set $CREWFLOW_DB)\n"
    );
    let out = s.cmd(&["worker", "--store", &s.db("runs.db")]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "error: no flows to run: give their definitions with --flows FILE…\n");
    let out = s.cmd(&["run", "review.yaml", "--queue"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "error: flow `review` has no store to queue the run in; name one with --store or $CREWFLOW_DB\n"
    );
}

#[test]
fn trace_html_writes_the_timeline_as_one_self_contained_page() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let id = run_review(&s, &db, "rust and more");
    let out = s.cmd(&["trace", &id, "--html", "trace.html", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), format!("wrote trace.html (run {id}, 3 steps)\n"));
    let page = std::fs::read_to_string(s.path("trace.html")).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains(&format!("<h1>run {id} · flow `review` · finished</h1>")), "{page}");
    let steps: Vec<&str> = page
        .match_indices("<li class=\"step\" data-step=\"")
        .map(|(i, m)| &page[i + m.len()..])
        .map(|r| &r[..r.find('"').unwrap()])
        .collect();
    assert_eq!(steps, ["draft", "check", "publish"]);
    for outside in ["http://", "https://", "<script", "<link", "@import", "url("] {
        assert!(!page.contains(outside), "the page reaches outside itself: {outside}");
    }
    let out = s.cmd(&["trace", &id, "--html", "no/such/dir/t.html", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: cannot write no/such/dir/t.html: "), "{}", stderr(&out));
    assert!(stderr(&out).ends_with("; check the directory\n"), "{}", stderr(&out));
}

#[test]
fn a_json_worker_prints_one_line_per_run_it_ran() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out = s.cmd(&["run", "review.yaml", "--queue", "--json", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let queued = json_lines(&out);
    assert_eq!(queued[0]["status"], "queued");
    let id = queued[0]["run_id"].as_str().unwrap().to_string();

    let mut worker = std::process::Command::new(assert_cmd::cargo::cargo_bin!("crewflow"))
        .current_dir(s.dir.path())
        .env_remove("CREWFLOW_DB")
        .args(["worker", "--json", "--flows", "review.yaml", "--store", &db, "--poll-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(worker.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(report, serde_json::json!({"run_id": id, "flow": "review", "status": "ended", "error": null}));
    let status = std::process::Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = worker.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "", "--json keeps stderr quiet");
}
