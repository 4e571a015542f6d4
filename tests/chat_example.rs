//! The `support_chat` example, driven through its standard input: two messages, a restart
//! with the same session, and the history kept. Needs the local models
//! (`CREWFLOW_TEST_LOCAL_MODELS=1` after `scripts/fetch-models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

fn run(dir: &std::path::Path, args: &[&str], input: &str) -> String {
    common::run_example("support_chat", dir, args, input)
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
