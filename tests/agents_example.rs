//! The `research_crew` example (examples/research_crew) runs end to end offline on the local
//! model: the page is fetched through the example's tool, both tasks of the crew answer, and
//! the article is the flow's output (its structure is checked, not its wording). It needs the
//! local model (`CREWFLOW_TEST_LOCAL_MODELS=1` after `scripts/fetch-models`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

#[test]
#[cfg_attr(not(crewflow_local_model_tests), ignore = "set CREWFLOW_TEST_LOCAL_MODELS=1 after scripts/fetch-models")]
fn the_research_crew_runs_offline_on_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_example("research_crew", dir.path(), &["lighthouses"], "");
    assert!(
        out.contains("Model: local") && out.contains("CREWFLOW_MODEL=openai/"),
        "says what a real model adds:\n{out}"
    );
    assert!(out.contains("[research] by lighthouses Researcher: "), "{out}");
    assert!(out.contains("[article] by Writer: "), "{out}");
    let article = common::line_after(&out, "ARTICLE ");
    assert!(!article.trim().is_empty(), "{out}");
    let tokens: u64 = common::line_after(&out, "tokens: ").trim().parse().unwrap();
    assert!(tokens > 0, "usage is summed over the crew: {out}");
}
