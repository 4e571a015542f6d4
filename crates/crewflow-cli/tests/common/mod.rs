//! What the CLI tests share: the real `crewflow` binary in a scratch directory, and flows.

#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;

use assert_cmd::Command;

/// A router flow: `draft` → `check` routes `good`/`bad` → `publish` or `reject`.
pub const REVIEW: &str = r#"
name: review
state:
  default: {topic: flows, drafts: 0}
methods:
  draft:
    start: true
    do: {call: expression, expr: '"draft about " + state.topic'}
  check:
    listen: draft
    router: true
    emit: [good, bad]
    do: {call: expression, expr: 'input.size() > 14 ? "good" : "bad"'}
  publish:
    listen: good
    do: {call: expression, expr: '"published: " + outputs.draft'}
  reject:
    listen: bad
    do: {call: expression, expr: '"rejected: " + outputs.draft'}
"#;

/// A flow whose `generate` step pauses for a person's review (the deferred provider, the
/// command's default); `finish` answers with what the reviewer said.
pub const REVIEWED: &str = r#"
name: reviewed
state:
  default: {topic: flows}
methods:
  generate:
    start: true
    do: {call: expression, expr: '"a draft about " + state.topic'}
    human_feedback:
      message: Is this draft good?
  finish:
    listen: generate
    do: {call: expression, expr: '"resumed:" + input.feedback'}
"#;

/// A scratch directory with flow files in it; commands run there, with no `$CREWFLOW_DB`.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().unwrap() }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `crewflow ARGS` in the scratch directory.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin!("crewflow"));
        cmd.current_dir(self.dir.path()).env_remove("CREWFLOW_DB").args(args);
        cmd
    }

    /// The SQLite store URL of a file in the scratch directory.
    pub fn db(&self, name: &str) -> String {
        format!("sqlite://{}", self.path(name).display())
    }
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The JSON lines of a `--json` command's stdout.
pub fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The address a `serve` process prints first (`listening on http://ADDR`), read from its
/// piped stdout.
pub fn listening_address(server: &mut Child) -> String {
    let mut first = String::new();
    let stdout = server.stdout.take().unwrap_or_else(|| panic!("the server's stdout is not piped"));
    if let Err(e) = BufReader::new(stdout).read_line(&mut first) {
        panic!("the server did not print its address: {e}");
    }
    first.trim_end().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{first:?}")).to_string()
}

/// Runs, in the SQLite file at `path`, a `report` flow whose `gather` step kicks a
/// `research` flow (`search` → `summarize`) off twice: the outer run's id and the nested
/// runs' ids, in order.
pub fn store_nested_runs(path: &Path, rt: &tokio::runtime::Runtime) -> (String, Vec<String>) {
    use std::sync::Arc;

    use crewflow_core::FlowBuilder;
    use crewflow_core::trigger::step;
    use serde_json::{Map, Value};

    type Dict = Map<String, Value>;
    let store: Arc<dyn crewflow_core::persist::RunStore> = Arc::new(crewflow_store::SqliteStore::open(path));
    let inner = FlowBuilder::<Dict>::new("research")
        .start("search", |cx, (): ()| async move {
            // a side effect recorded in the run's journal: drawn under its step
            let found: String =
                cx.once("fetch", |_| async { Ok::<_, std::io::Error>("three sources".to_string()) }).await?;
            Ok(found)
        })
        .listen("summarize", step("search"), |_cx, found: String| async move { Ok(format!("summary of {found}")) })
        .store(store.clone())
        .build()
        .unwrap();
    let outer = FlowBuilder::<Dict>::new("report")
        .start("plan", |_cx, (): ()| async move { Ok(()) })
        .listen("gather", step("plan"), move |_cx, (): ()| {
            let inner = inner.clone();
            async move {
                let first = inner.kickoff(()).await.map_err(|e| e.to_string())?;
                let second = inner.kickoff(()).await.map_err(|e| e.to_string())?;
                Ok(vec![first.id.to_string(), second.id.to_string()])
            }
        })
        .listen("write", step("gather"), |_cx, ids: Vec<String>| async move { Ok(ids) })
        .store(store)
        .build()
        .unwrap();
    let run = rt.block_on(outer.kickoff(())).unwrap();
    (run.id.to_string(), run.output::<Vec<String>>().unwrap())
}
