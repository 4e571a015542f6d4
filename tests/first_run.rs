//! What the README's first command compiles on a fresh machine (`cargo run -p support_triage`):
//! the crates kept out of it on purpose stay out (docs/architecture.md, "Build time"). Each
//! was a measurable part of the first run's compile on 2 cores; a dependency change that
//! brings one back fails here with the path that pulls it in.

use std::process::Command;

/// Crates the main example must not build, and why each was cut.
const KEPT_OUT: &[(&str, &str)] = &[
    ("candle-transformers", "125 model architectures for the 2 in crewflow-llm/src/local/models (~110 s of CPU)"),
    ("cel", "declarative flows' expressions: the facade's `declarative` feature, off for the example"),
    ("serde-saphyr", "declarative flows' YAML: the `declarative` feature"),
    ("crewflow-agents", "the `agents` feature"),
    ("crewflow-plot", "the `plot` feature"),
    ("proptest", "a dev-dependency of the root package: the example is a package of its own"),
    ("trybuild", "a dev-dependency of the root package"),
    ("tokio-postgres", "the PostgreSQL store, for the tests only"),
    ("aws-lc-sys", "a C build; TLS goes through ring"),
];

fn cargo_tree(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "-p", "support_triage", "-e", "normal,build"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo tree: {e}"));
    assert!(output.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_main_example_builds_none_of_the_crates_kept_out_of_the_first_run() {
    let tree = cargo_tree(&["--prefix", "none"]);
    let built: Vec<&str> = tree.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(built.contains(&"crewflow"), "the tree lists the facade: {tree}");
    assert!(built.contains(&"candle-core"), "and the local model's kernels: {tree}");
    let back: Vec<String> = KEPT_OUT
        .iter()
        .filter(|(name, _)| built.contains(name))
        .map(|(name, why)| format!("{name} ({why}), pulled in by:\n{}", cargo_tree(&["-i", name])))
        .collect();
    assert!(back.is_empty(), "the main example builds crates kept out of the first run:\n{}", back.join("\n"));
}
