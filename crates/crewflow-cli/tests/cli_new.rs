//! `crewflow new`: the YAML scaffold runs as is; the Rust scaffold names its dependencies and
//! `cargo check`s against this checkout (offline).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::Path;

use common::{Scratch, stderr, stdout};

#[test]
fn the_yaml_scaffold_runs_as_is() {
    let s = Scratch::new();
    let out = s.cmd(&["new", "triage", "--yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "wrote triage.yaml\nrun it with: crewflow run triage.yaml --input text=\"I forgot my password\"\n"
    );
    let out = s.cmd(&["run", "triage.yaml", "--input", "text=I forgot my password"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "escalated to the security team: I forgot my password\n");
    let out = s.cmd(&["run", "triage.yaml", "--input", "text=the app is slow"]).output().unwrap();
    assert_eq!(stdout(&out), "thanks, we are on it: the app is slow\n");

    // never over an existing file; names a flow and a package can have
    let out = s.cmd(&["new", "triage", "--yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: cannot create triage.yaml: it exists already; pick another name or move it away\n"
    );
    let out = s.cmd(&["new", "9lives", "--yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: `9lives` is not a usable name: start with a letter, then letters, digits, `_` or `-` (e.g. ticket-triage)\n"
    );
}

fn checkout() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

#[test]
fn the_rust_scaffold_depends_on_the_release_or_a_checkout() {
    let s = Scratch::new();
    let out = s.cmd(&["new", "triage"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(s.path("triage/Cargo.toml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(manifest.contains(&format!("\ncrewflow = \"{version}\"\ncrewflow-cli = \"{version}\"\n")), "{manifest}");
    assert!(manifest.contains("#   crewflow = { path = \"/path/to/crewflow\" }"), "{manifest}");
    let main = std::fs::read_to_string(s.path("triage/src/main.rs")).unwrap();
    assert!(main.contains("#[flow(state = Ticket, name = \"triage\")]"), "{main}");
    assert!(main.contains("crewflow_cli::App::new().flow(&flow).run()"), "{main}");

    let out = s.cmd(&["new", "triage"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: cannot create the project triage/: it exists already; pick another name or move it away\n"
    );
    let out = s.cmd(&["new", "other", "--path", "/nonexistent/crewflow"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: --path /nonexistent/crewflow: "), "{}", stderr(&out));

    let out = s.cmd(&["new", "local", "--path", checkout().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(s.path("local/Cargo.toml")).unwrap();
    let root = checkout().canonicalize().unwrap();
    assert!(manifest.contains(&format!("crewflow = {{ path = \"{}\" }}", root.display())), "{manifest}");
}

/// A real `cargo check --offline` of the Rust scaffold against this checkout.
#[test]
#[ignore = "checks crewflow's whole dependency tree in a target dir of its own (minutes the first time); run with `cargo test -p crewflow-cli --test cli_new -- --ignored`"]
fn the_rust_scaffold_cargo_checks_against_this_checkout() {
    let s = Scratch::new();
    let out = s.cmd(&["new", "triage", "--path", checkout().to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Its own target dir: the test's cargo may hold the workspace's.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-check");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["check", "--offline", "--quiet"])
        .current_dir(s.path("triage"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo check failed:\n{}", String::from_utf8_lossy(&out.stderr));
}
