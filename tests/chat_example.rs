//! The `support_chat` example, driven through its standard input: two messages, a restart
//! with the same session, and the history kept. Needs the local models
//! (`CREWFLOW_TEST_LOCAL_MODELS=1` after `scripts/fetch-models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The example's binary, built on demand (`cargo test` builds examples only for whole runs).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let binary = profile_dir.join("examples").join("support_chat");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--example", "support_chat"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "the example did not build");
    }
    binary
}

/// Runs the example in `dir` with `input` on its standard input; returns its output.
fn run(dir: &std::path::Path, args: &[&str], input: &str) -> String {
    let mut child = Command::new(example_binary())
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
