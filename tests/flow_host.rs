//! The hosting seam (`crewflow::host`): a run started from the host's state, recorded in no store
//! or in another one, its events handed over in order, cancelled through its canceller.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::FeedbackError;
use std::sync::Arc;
use std::time::Duration;

use common::chat::temp_db;
use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStatus, RunStore, SqliteStore};
use crewflow::{DeferredFeedback, Error};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default, Serialize, Deserialize)]
struct Notes {
    lines: Vec<String>,
    author: String,
}

fn noting(store: Option<SqliteStore>) -> Flow<Notes> {
    let builder = FlowBuilder::<Notes>::new("notes")
        .start("note", |cx: Cx<Notes>, line: String| async move {
            cx.update(|n| n.lines.push(line));
            Ok(cx.state(|n| format!("{} lines by {}", n.lines.len(), n.author)))
        })
        .listen("echo", step("note"), |cx: Cx<Notes>, summary: String| async move {
            cx.emit("noted", &summary);
            Ok(summary)
        });
    match store {
        Some(store) => builder.store(store).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

async fn runs_in(store: &SqliteStore) -> Vec<crewflow::RunId> {
    store.list_runs(&RunFilter::default()).await.unwrap().into_iter().map(|r| r.run_id).collect()
}

#[tokio::test]
async fn a_hosted_run_starts_from_the_hosts_state_with_the_inputs_merged_over_it() {
    let flow = noting(None);
    let kept = Notes { lines: vec!["kept".into()], author: "nobody".into() };
    let kickoff = Kickoff::new().payload("new".to_string()).inputs(json!({ "author": "ada" }));
    let run = flow.host(kickoff).state(kept).run().await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "2 lines by ada");
    assert_eq!(run.state.lines, ["kept", "new"], "the final state is the host's to keep");
    // Without a state of its own, the run starts from the default, like a kickoff.
    let fresh = flow.host(Kickoff::new().payload("one".to_string())).run().await.unwrap();
    assert_eq!(fresh.state.lines, ["one"]);
}

#[tokio::test]
async fn a_hosted_run_is_recorded_where_the_host_says_and_the_flow_keeps_its_store() {
    let (_dir, path) = temp_db();
    let own = SqliteStore::open(&path);
    let (_other_dir, other_path) = temp_db();
    let other = SqliteStore::open(&other_path);
    let flow = noting(Some(own.clone()));
    let payload = || Kickoff::new().payload("x".to_string());

    let unrecorded = flow.host(payload()).without_store().run().await.unwrap();
    assert_eq!(unrecorded.output::<String>().unwrap(), "1 lines by ");
    assert!(runs_in(&own).await.is_empty(), "a run without a store writes nothing to the flow's");

    let elsewhere = flow.host(payload()).store(Arc::new(other.clone())).run().await.unwrap();
    assert_eq!(runs_in(&other).await, [elsewhere.id]);
    let stored = other.load_run(elsewhere.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.steps.len()), (RunStatus::Finished, 2), "recorded with its checkpoints");
    assert!(runs_in(&own).await.is_empty(), "the flow's own store was not used");

    // The flow itself is unchanged: its own runs still go to its store.
    let own_run = flow.host(payload()).run().await.unwrap();
    let kicked = flow.kickoff(payload()).await.unwrap();
    let mut ids = runs_in(&own).await;
    ids.sort();
    assert_eq!(ids, [own_run.id, kicked.id]);
}

#[tokio::test]
async fn every_event_reaches_the_callback_in_order() {
    let flow = noting(None);
    let mut events = Vec::new();
    let run = flow
        .host(Kickoff::new().payload("x".to_string()))
        .run_with_events(|e| events.push((e.seq, e.kind.name().to_string())))
        .await
        .unwrap();
    let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "in order, none missing");
    let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["run_started", "step_started", "step_finished", "step_started", "custom", "step_finished", "run_finished"],
        "the events of the run's last moments are there too"
    );
    assert_eq!(run.steps_run(), 2);
}

#[tokio::test]
async fn the_canceller_stops_a_hosted_run() {
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    let flow = FlowBuilder::<()>::new("slow")
        .start("wait", move |cx: Cx<()>, (): ()| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                tokio::select! {
                    _ = cx.cancelled() => Ok("cancelled".to_string()),
                    _ = tokio::time::sleep(Duration::from_secs(30)) => Ok("slept".to_string()),
                }
            }
        })
        .build()
        .unwrap();
    let hosted = flow.host(());
    let canceller = hosted.canceller();
    let run = tokio::spawn(hosted.run());
    started.notified().await;
    canceller.cancel();
    let err = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err:?}");
}

#[tokio::test]
async fn a_pause_without_a_store_fails_the_run_and_names_the_step() {
    let (_dir, path) = temp_db();
    let store = SqliteStore::open(&path);
    let flow = FlowBuilder::<()>::new("review")
        .start("draft", |_cx, (): ()| async move { Ok("draft".to_string()) })
        .human_feedback(HumanFeedback::new("Publish?").provider(DeferredFeedback))
        .store(store.clone())
        .build()
        .unwrap();
    let err = flow.host(()).without_store().run().await.unwrap_err();
    assert!(
        matches!(&err, Error::Feedback(FeedbackError::PauseWithoutStore { step, .. }) if step == "draft"),
        "{err:?}"
    );
    assert!(runs_in(&store).await.is_empty());
    // With its store, the same flow pauses.
    let paused = flow.host(()).run().await.unwrap();
    assert!(paused.paused().is_some());
}
