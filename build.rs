//! Tells the integration tests which real services they may use, so that tests needing one
//! that was not given report themselves ignored, not passed:
//! - `CREWFLOW_TEST_POSTGRES`: a PostgreSQL server's URL;
//! - `CREWFLOW_TEST_LOCAL_MODELS=1`: the local models are installed (`scripts/fetch-models`);
//! - `CREWFLOW_TEST_TOOL_MODEL`: a local GGUF whose chat template takes tools (Qwen2.5's), which
//!   no registry ships with a stated licence, so CI has none (docs/agents.md, "Small models").

fn main() {
    for (var, cfg) in [
        ("CREWFLOW_TEST_POSTGRES", "crewflow_postgres_tests"),
        ("CREWFLOW_TEST_LOCAL_MODELS", "crewflow_local_model_tests"),
        ("CREWFLOW_TEST_TOOL_MODEL", "crewflow_tool_model_tests"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0") {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
