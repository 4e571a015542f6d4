//! The `yaml_review` example (examples/yaml_review): its YAML file builds, and the program
//! runs a review on the terminal and a deferred review answered by later processes. The runs
//! need the local model (`CREWFLOW_TEST_LOCAL_MODELS=1` after `scripts/fetch-models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::Path;

use crewflow::declarative::{Call, FlowDefinition, Registry};

fn run(dir: &std::path::Path, args: &[&str], input: &str) -> String {
    common::run_example("yaml_review", dir, args, input)
}

fn run_id(output: &str) -> String {
    output
        .split_whitespace()
        .skip_while(|w| *w != "--answer")
        .nth(1)
        .expect("the example prints how to answer")
        .to_string()
}

#[test]
fn the_example_definition_builds_with_the_functions_it_names() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/yaml_review/review.yaml");
    let definition = FlowDefinition::from_path(&path).unwrap();
    assert_eq!(definition.name(), "release_note_review");
    let noop = |_cx, _call: Call| async move { Ok(()) };
    let registry = Registry::new().function("first_sentence", noop).function("publish", noop);
    definition.build(&registry).unwrap();
    let missing = definition.build(&Registry::new()).unwrap_err().to_string();
    assert!(missing.contains("no function `first_sentence` is registered"), "{missing}");
}

#[test]
#[cfg_attr(not(crewflow_local_model_tests), ignore = "set CREWFLOW_TEST_LOCAL_MODELS=1 after scripts/fetch-models")]
fn a_review_on_the_terminal_publishes_after_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["Dark mode in the settings page"], "mention the settings page\npublish\n");
    assert_eq!(out.matches("Publish this release note?").count(), 2, "asked twice:\n{out}");
    assert!(out.contains("published:\n- "), "{out}");
    assert!(out.contains("(Dark mode in the settings page)"), "{out}");
    assert!(out.contains("done after 2 review(s)"), "{out}");
    let dropped = run(dir.path(), &["Dark mode in the settings page"], "drop\n");
    assert!(dropped.contains("dropped after 1 review(s)"), "{dropped}");
}

#[test]
#[cfg_attr(not(crewflow_local_model_tests), ignore = "set CREWFLOW_TEST_LOCAL_MODELS=1 after scripts/fetch-models")]
fn a_deferred_review_is_answered_by_later_processes() {
    let dir = tempfile::tempdir().unwrap();
    let paused = run(dir.path(), &["--defer", "Search is three times faster"], "");
    assert!(paused.contains("waiting for a review"), "{paused}");
    let id = run_id(&paused);
    assert!(dir.path().join("crewflow.db").exists(), "kept in the default SQLite file");

    let again = run(dir.path(), &["--answer", &id, "say", "how", "much", "faster"], "");
    assert!(again.contains("waiting for a review"), "a rewrite pauses for the next review:\n{again}");
    assert_eq!(run_id(&again), id, "the same run");
    let done = run(dir.path(), &["--answer", &id, "publish"], "");
    assert!(done.contains("(Search is three times faster)"), "{done}");
    assert!(done.contains("done after 2 review(s)"), "{done}");
}
