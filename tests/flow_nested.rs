//! Nested runs: a flow kicked off, spawned or queued inside another run's step is recorded
//! with that step execution as its parent, so one trace can draw both (`crewflow trace`, the
//! OpenTelemetry export) and `RunTree::load` finds it from the outer run. Real SQLite files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::sync::Arc;

use crewflow::prelude::*;
use crewflow::store::{ParentStep, RunFilter, RunStore, RunTree, SqliteStore};
use crewflow::{Flow, RunId};
use serde_json::{Map, Value};

type Dict = Map<String, Value>;

/// `search` → `summarize`, recorded in `store`.
fn research(store: &Arc<dyn RunStore>) -> Flow<Dict> {
    FlowBuilder::<Dict>::new("research")
        .start("search", |_cx, (): ()| async move { Ok("three sources") })
        .listen("summarize", step("search"), |_cx, found: String| async move { Ok(format!("summary of {found}")) })
        .store(store.clone())
        .build()
        .unwrap()
}

/// `plan` → `gather` (kicks `research` off twice, spawns it once and queues it once) →
/// `write`, in the same store.
fn report(store: &Arc<dyn RunStore>, inner: Flow<Dict>) -> Flow<Dict> {
    FlowBuilder::<Dict>::new("report")
        .start("plan", |_cx, (): ()| async move { Ok(()) })
        .listen("gather", step("plan"), move |_cx, (): ()| {
            let inner = inner.clone();
            async move {
                let first = inner.kickoff(()).await.map_err(|e| e.to_string())?;
                let second = inner.kickoff(()).await.map_err(|e| e.to_string())?;
                let spawned = inner.spawn(()).map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
                let queued = inner.enqueue(()).await.map_err(|e| e.to_string())?;
                Ok(vec![first.id.to_string(), second.id.to_string(), spawned.id.to_string(), queued.to_string()])
            }
        })
        .listen("write", step("gather"), |_cx, ids: Vec<String>| async move { Ok(ids) })
        .store(store.clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_run_started_in_a_step_records_that_step_as_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    let inner = research(&store);
    let outer = report(&store, inner.clone());
    let run = outer.kickoff(()).await.unwrap();
    let nested: Vec<RunId> = run.output::<Vec<String>>().unwrap().iter().map(|id| id.parse().unwrap()).collect();
    assert_eq!(nested.len(), 4);

    let gather = store
        .load_run(run.id)
        .await
        .unwrap()
        .unwrap()
        .steps
        .iter()
        .find(|s| &*s.step == "gather")
        .map(|s| s.activation)
        .unwrap();
    let parent = Some(ParentStep { run_id: run.id, activation: gather });
    for id in &nested {
        assert_eq!(store.load_run(*id).await.unwrap().unwrap().parent, parent, "kicked off, spawned and queued alike");
    }
    assert_eq!(store.load_run(run.id).await.unwrap().unwrap().parent, None, "a run started outside a step has none");
    let top = inner.kickoff(()).await.unwrap();
    assert_eq!(store.load_run(top.id).await.unwrap().unwrap().parent, None);

    let filter = RunFilter { parent: Some(run.id), ..RunFilter::default() };
    let mut listed: Vec<RunId> = store.list_runs(&filter).await.unwrap().iter().map(|s| s.run_id).collect();
    let mut expected = nested.clone();
    listed.sort_by_key(RunId::to_string);
    expected.sort_by_key(RunId::to_string);
    assert_eq!(listed, expected, "the outer run's nested runs, and not the top-level one");

    let tree = RunTree::load(store.as_ref(), run.id).await.unwrap().unwrap();
    assert_eq!(tree.run.run_id, run.id);
    assert_eq!(tree.nested.iter().map(|n| n.run.run_id).collect::<Vec<_>>(), nested, "oldest first");
    assert_eq!(tree.runs().len(), 5);
    let first = &tree.nested[0].run;
    assert_eq!(first.steps.iter().map(|s| &*s.step).collect::<Vec<_>>(), ["search", "summarize"]);
    assert!(RunTree::load(store.as_ref(), RunId::new()).await.unwrap().is_none(), "an unknown run is none");
}

/// A run started from a step of a nested run is that nested run's: the tree goes as deep as
/// the runs did.
#[tokio::test]
async fn nested_runs_nest_as_deep_as_they_were_started() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    let leaf = research(&store);
    let middle = FlowBuilder::<Dict>::new("middle")
        .start("delegate", move |_cx, (): ()| {
            let leaf = leaf.clone();
            async move { Ok(leaf.kickoff(()).await.map_err(|e| e.to_string())?.id.to_string()) }
        })
        .store(store.clone())
        .build()
        .unwrap();
    let top = FlowBuilder::<Dict>::new("top")
        .start("delegate", move |_cx, (): ()| {
            let middle = middle.clone();
            async move { Ok(middle.kickoff(()).await.map_err(|e| e.to_string())?.id.to_string()) }
        })
        .store(store.clone())
        .build()
        .unwrap();
    let run = top.kickoff(()).await.unwrap();
    let tree = RunTree::load(store.as_ref(), run.id).await.unwrap().unwrap();
    let flows: Vec<&str> = tree.runs().iter().map(|r| r.flow.as_str()).collect();
    assert_eq!(flows, ["top", "middle", "research"]);
    let middle_run = &tree.nested[0];
    assert_eq!(middle_run.run.parent.map(|p| p.run_id), Some(run.id));
    assert_eq!(middle_run.nested[0].run.parent.map(|p| p.run_id), Some(middle_run.run.run_id));
}
