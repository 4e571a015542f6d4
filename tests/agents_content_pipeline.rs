//! The `content_pipeline` example (examples/content_pipeline) runs end to end offline on the
//! local model: the research crew runs twice (the quality gate sends the first, thin round
//! back), the writing crew drafts and edits, and the reviewer on standard input asks for a
//! change once (the editor does the task again, told it) and then approves. Its structure is
//! checked, not its wording. It needs the local model (`CREWFLOW_TEST_LOCAL_MODELS=1` after
//! `scripts/fetch-models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

#[test]
#[cfg_attr(not(crewflow_local_model_tests), ignore = "set CREWFLOW_TEST_LOCAL_MODELS=1 after scripts/fetch-models")]
fn the_content_pipeline_runs_offline_with_a_review() {
    let dir = tempfile::tempdir().unwrap();
    // The reviewer: one change asked for, then an empty line (approve).
    let out = common::run_example("content_pipeline", dir.path(), &["async", "runtimes"], "Shorter, please.\n\n");
    assert!(
        out.contains("Model: local") && out.contains("CREWFLOW_MODEL=openai/"),
        "says what a real model adds:\n{out}"
    );
    assert!(out.contains("quality: 1 sources after 1 rounds -> Retry"), "{out}");
    assert!(out.contains("quality: 3 sources after 2 rounds -> Enough"), "{out}");
    assert_eq!(out.matches("[research] by Researcher: ").count(), 2, "{out}");
    assert_eq!(out.matches("[check] by Analyst: ").count(), 2, "{out}");
    assert!(out.contains("[draft] by Writer: "), "{out}");
    let review = out.find("review: revise").unwrap_or_else(|| panic!("{out}"));
    let approved = out.find("review: approved").unwrap_or_else(|| panic!("{out}"));
    assert!(review < approved, "{out}");
    assert!(out.contains("characters, 2 attempts") && out.contains("[edit] by Editor: "), "{out}");
    assert_eq!(common::line_after(&out, "research rounds: ").trim(), "2", "{out}");
    let article = common::line_after(&out, "ARTICLE ");
    assert!(!article.trim().is_empty(), "{out}");
    let tokens: u64 = common::line_after(&out, "tokens: ").trim().parse().unwrap();
    assert!(tokens > 0, "usage is summed over the crew: {out}");
}
