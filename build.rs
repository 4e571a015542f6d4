//! Tells the integration tests whether a PostgreSQL server was given (`CREWFLOW_TEST_POSTGRES`),
//! so that its tests report themselves ignored, not passed, without one.

fn main() {
    println!("cargo::rerun-if-env-changed=CREWFLOW_TEST_POSTGRES");
    println!("cargo::rustc-check-cfg=cfg(crewflow_postgres_tests)");
    if std::env::var("CREWFLOW_TEST_POSTGRES").is_ok_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=crewflow_postgres_tests");
    }
}
