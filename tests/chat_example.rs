//! The `support_chat` example, driven through its standard input: two messages, a restart
//! with the same session, and the history kept. Needs the local models
//! (`CREWFLOW_TEST_LOCAL_MODELS=1` after `scripts/fetch-models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs the example in `dir` with `input` on its standard input; returns its output.
fn run(dir: &std::path::Path, args: &[&str], input: &str) -> String {
    let mut child = Command::new(common::example_binary("support_chat"))
        .args(args)
        .current_dir(dir)
        .env_remove("CREWFLOW_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
#[cfg_attr(not(crewflow_local_model_tests), ignore = "set CREWFLOW_TEST_LOCAL_MODELS=1 after scripts/fetch-models")]
fn the_support_chat_example_remembers_the_session_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), &[], "Hello!\nI was charged twice on my invoice\n/exit\n");
    let session = first
        .lines()
        .find_map(|l| l.strip_prefix("session ").and_then(|rest| rest.split_whitespace().next()))
        .expect("the example prints its session id")
        .to_string();
    assert!(first.contains("[small_talk, turn 0"), "{first}");
    assert!(first.contains("[billing, turn 1"), "{first}");
    assert!(dir.path().join("crewflow.db").exists(), "the session is in the default SQLite file");

    let second = run(dir.path(), &["--session", &session], "/history\nMy API key leaked on GitHub\n/quit\n");
    assert!(second.contains("continuing: 2 turns so far"), "{second}");
    assert!(second.contains("user: I was charged twice on my invoice"), "the history is kept:\n{second}");
    assert!(second.contains("[security, turn 2"), "{second}");
}
