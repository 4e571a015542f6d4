//! Events: sequences (X25), causality (C107), ordering under concurrency (spec §0 item 25).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crewflow::prelude::*;
use serde_json::json;

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Decision {
    #[route(rename = "go")]
    Go,
}

struct Simple;

#[flow]
impl Simple {
    #[start]
    async fn s(&self) -> Result<&'static str> {
        Ok("s")
    }
    #[router(s)]
    async fn r(&self) -> Result<Decision> {
        Ok(Decision::Go)
    }
    #[listen(Decision::Go)]
    async fn g(&self, d: Decision) -> Result<String> {
        Ok(format!("g:{}", d.label()))
    }
}

async fn collect<S: crewflow::FlowState>(flow: &Flow<S>, kickoff: impl Into<Kickoff>) -> Vec<Event> {
    let (handle, mut stream) = flow.stream(kickoff).unwrap();
    let mut events = Vec::new();
    while let Some(e) = stream.next().await {
        events.push(e);
    }
    let _ = handle.await;
    events
}

fn names(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.step {
            Some(s) => format!("{}({s})", e.kind.name()),
            None => e.kind.name().to_string(),
        })
        .collect()
}

/// X25: the event sequence of `s → router r → "go" → g`.
#[tokio::test]
async fn x25_success_sequence() {
    let events = collect(&Simple.into_flow().unwrap(), json!(null)).await;
    assert_eq!(
        names(&events),
        [
            "run_started",
            "step_started(s)",
            "step_finished(s)",
            "step_started(r)",
            "step_finished(r)",
            "route_taken(r)",
            "step_started(g)",
            "step_finished(g)",
            "run_finished",
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    let run_id = events[0].run_id;
    assert!(events.iter().all(|e| e.run_id == run_id));
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    match &events.last().unwrap().kind {
        EventKind::RunFinished { output, steps } => {
            assert_eq!(output.as_ref().unwrap().to_json().unwrap(), json!("g:go"));
            assert_eq!(*steps, 3);
        }
        other => panic!("{other:?}"),
    }
}

/// A failure ends with step_failed then run_failed.
#[tokio::test]
async fn failure_sequence() {
    let flow = FlowBuilder::<()>::new("bad")
        .start("s", |_cx, (): ()| async move { Ok(()) })
        .listen("bad", "s", |_cx, (): ()| async move { Err::<(), _>(StepError::msg("boom")) })
        .build()
        .unwrap();
    let events = collect(&flow, ()).await;
    assert_eq!(
        names(&events),
        ["run_started", "step_started(s)", "step_finished(s)", "step_started(bad)", "step_failed(bad)", "run_failed"]
    );
    let last = events.last().unwrap();
    match &last.kind {
        EventKind::RunFailed { error } => {
            assert_eq!(&**error, format!("step `bad` failed in run {}: boom", last.run_id))
        }
        other => panic!("{other:?}"),
    }
}

/// C107: a step's started event points at the event that triggered it: the triggering
/// step's finished event (the same one for parallel siblings), the route-taken event for a
/// label listener, the last member for an `and`; starts point nowhere.
#[tokio::test]
async fn c107_event_causality() {
    let flow = FlowBuilder::<()>::new("causal")
        .start("a", |_cx, (): ()| async move { Ok(()) })
        .listen("b1", "a", |_cx, (): ()| async move { Ok(()) })
        .listen("b2", "a", |_cx, (): ()| async move {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            Ok(())
        })
        .listen("joined", and([step("b1"), step("b2")]), |_cx, (): ()| async move { Ok(()) })
        .router("r", "joined", |_cx, (): ()| async move { Ok(Decision::Go) })
        .listen("on_go", route(Decision::Go), |_cx, (): ()| async move { Ok(()) })
        .build()
        .unwrap();
    let events = collect(&flow, ()).await;
    let finished: BTreeMap<String, u64> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::StepFinished { .. }))
        .map(|e| (e.step.as_deref().unwrap().to_string(), e.seq))
        .collect();
    let route_seq = events.iter().find(|e| matches!(e.kind, EventKind::RouteTaken { .. })).unwrap().seq;
    let triggered_by: BTreeMap<String, Option<u64>> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::StepStarted { triggered_by, .. } => Some((e.step.as_deref().unwrap().to_string(), triggered_by)),
            _ => None,
        })
        .collect();
    assert_eq!(triggered_by["a"], None);
    assert_eq!(triggered_by["b1"], Some(finished["a"]));
    assert_eq!(triggered_by["b2"], Some(finished["a"]));
    assert_eq!(triggered_by["joined"], Some(finished["b2"]), "the last member of the and");
    assert_eq!(triggered_by["r"], Some(finished["joined"]));
    assert_eq!(triggered_by["on_go"], Some(route_seq));
}

/// Spec §0 item 25: upstream delivers events on a thread pool, so observers can see them out
/// of order. Here 20 concurrent steps each emit 50 events; every observer sees one gap-free
/// sequence, in order, and each step's events in the order it emitted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weakness_25_observers_see_events_in_order_under_concurrency() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut builder = FlowBuilder::<()>::new("noisy").start("go", |_cx, (): ()| async move { Ok(()) });
    for i in 0..20 {
        builder = builder.listen(&format!("worker_{i}"), "go", move |cx: Cx<()>, (): ()| async move {
            for n in 0..50 {
                cx.emit("tick", json!({ "worker": i, "n": n }));
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        });
    }
    let flow = builder.observe(move |e: &Event| sink.lock().unwrap().push(e.clone())).build().unwrap();
    flow.kickoff(()).await.unwrap();
    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let mut per_worker: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in seen.iter() {
        if let EventKind::Custom { data, .. } = &e.kind {
            per_worker.entry(data["worker"].as_u64().unwrap()).or_default().push(data["n"].as_u64().unwrap());
        }
    }
    assert_eq!(per_worker.len(), 20);
    assert!(per_worker.values().all(|ns| *ns == (0..50).collect::<Vec<_>>()));
}

/// Each run has its own stream, numbered from 1; events serialize to JSON with a type tag.
#[tokio::test]
async fn each_run_has_its_own_sequence_and_events_serialize() {
    let flow = Simple.into_flow().unwrap();
    let a = collect(&flow, ()).await;
    let b = collect(&flow, ()).await;
    assert_ne!(a[0].run_id, b[0].run_id);
    assert_eq!(a.iter().map(|e| e.seq).collect::<Vec<_>>(), b.iter().map(|e| e.seq).collect::<Vec<_>>());
    let json = serde_json::to_value(&a[4]).unwrap();
    assert_eq!(json["type"], "step_finished");
    assert_eq!(json["step"], "r");
    assert_eq!(json["output"], "go");
    assert_eq!(json["seq"], 5);
}
