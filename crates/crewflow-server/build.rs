//! Tells the tests whether a PostgreSQL server was given (`CREWFLOW_TEST_POSTGRES`), so that the
//! tests needing it report themselves ignored, not passed, without it.

fn main() {
    println!("cargo::rerun-if-env-changed=CREWFLOW_TEST_POSTGRES");
    println!("cargo::rustc-check-cfg=cfg(crewflow_postgres_tests)");
    if std::env::var("CREWFLOW_TEST_POSTGRES").is_ok_and(|v| !v.is_empty() && v != "0") {
        println!("cargo::rustc-cfg=crewflow_postgres_tests");
    }
}
