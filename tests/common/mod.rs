//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod chat;
pub mod faults;
pub mod http;
pub mod mcp;
pub mod postgres;
pub mod proxy;

use std::sync::{Arc, Mutex};

/// A log of what the steps did, shared between a flow and its test.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(entry.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count(&self, entry: &str) -> usize {
        self.entries().iter().filter(|e| e.as_str() == entry).count()
    }

    pub fn position(&self, entry: &str) -> usize {
        self.entries()
            .iter()
            .position(|e| e == entry)
            .unwrap_or_else(|| panic!("`{entry}` never ran: {:?}", self.entries()))
    }
}

/// Runs this test binary again with only the ignored child-process helper `test`, with `env`
/// set; returns its standard output (and panics with both outputs if it fails).
pub fn run_child(test: &str, env: &[(&str, String)]) -> String {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"]);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "child {test} {env:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The rest of the first line of `stdout` after `tag` (the test harness prints its own prefix
/// on the same line, so the tag may not start it).
pub fn line_after<'a>(stdout: &'a str, tag: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.find(tag).map(|at| &l[at + tag.len()..]))
        .unwrap_or_else(|| panic!("no `{tag}` line in:\n{stdout}"))
}

/// The binary of example `name`, built on demand (`cargo test` builds examples only for whole
/// runs), in the profile of this test binary.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let binary = profile_dir.join("examples").join(name);
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--example", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "the example {name} did not build");
    }
    binary
}

/// Runs example `name` in `dir` with `args` and `input` on its standard input, on its defaults
/// (no `$CREWFLOW_DB`, no `$CREWFLOW_MODEL`: the SQLite file in `dir` and the local model);
/// returns its standard output and panics with both outputs if it fails.
pub fn run_example(name: &str, dir: &std::path::Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(example_binary(name))
        .args(args)
        .current_dir(dir)
        .env_remove("CREWFLOW_DB")
        .env_remove("CREWFLOW_MODEL")
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
