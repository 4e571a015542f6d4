//! The driver's structured logs through `tracing`: each step's start, finish and failure, with
//! the run id, the step, its activation and how long it took, reach any subscriber (here a
//! minimal one that records the events of target `crewflow::step`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crewflow_core::{Cx, FlowBuilder};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber, span};

type Logged = Arc<Mutex<Vec<(tracing::Level, BTreeMap<String, String>)>>>;

struct Capture(Logged);

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == "crewflow::step" {
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push((*event.metadata().level(), fields.0));
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[test]
fn steps_log_their_start_finish_and_failure_with_run_id_and_duration() {
    let flow = FlowBuilder::<()>::new("logged")
        .start("fetch", |_cx: Cx<()>, (): ()| async { Ok(3u32) })
        .listen("parse", "fetch", |_cx: Cx<()>, n: u32| async move {
            if n > 2 { Err("too many pages".into()) } else { Ok(n) }
        })
        .build()
        .unwrap();
    let logged = Logged::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = tracing::subscriber::with_default(Capture(logged.clone()), || runtime.block_on(flow.kickoff(())))
        .err()
        .unwrap();
    let logged = logged.lock().unwrap();
    let seen: Vec<(tracing::Level, &str, &str)> =
        logged.iter().map(|(l, f)| (*l, f["step"].as_str(), f["message"].as_str())).collect();
    use tracing::Level;
    assert_eq!(
        seen,
        [
            (Level::DEBUG, "fetch", "step started"),
            (Level::INFO, "fetch", "step finished"),
            (Level::DEBUG, "parse", "step started"),
            (Level::WARN, "parse", "step failed"),
        ]
    );
    let run_id = &logged[0].1["run_id"];
    assert!(err.to_string().contains(run_id.as_str()), "{err} names {run_id}");
    assert!(logged.iter().all(|(_, f)| &f["run_id"] == run_id));
    assert_eq!((logged[1].1["activation"].as_str(), logged[3].1["activation"].as_str()), ("0", "1"));
    assert!(logged[1].1["elapsed_us"].parse::<u64>().is_ok(), "{:?}", logged[1].1);
    assert!(logged[3].1["error"].contains("too many pages"), "{:?}", logged[3].1);
}

/// A step's finish line carries the tokens its model calls used, summed (model clients report
/// each call's usage to the step's scope, as `crewflow-llm` does); a step that called no
/// model carries none; a retried step's line sums every attempt, a failed one's too.
#[test]
fn a_steps_finish_log_carries_the_tokens_of_its_model_calls() {
    use crewflow_core::{Retry, TokenUsage};
    use std::sync::atomic::{AtomicU32, Ordering};
    fn call_model(prompt: u64, completion: u64) {
        let scope = crewflow_core::scope::current().expect("inside a step");
        scope.add_usage(&TokenUsage { prompt_tokens: prompt, completion_tokens: completion, cached_tokens: 0 });
    }
    let attempts = Arc::new(AtomicU32::new(0));
    let flow = FlowBuilder::<()>::new("metered")
        .start("plan", |_cx: Cx<()>, (): ()| async {
            call_model(120, 30);
            call_model(80, 12);
            Ok(())
        })
        .listen("tidy", "plan", |_cx: Cx<()>, (): ()| async { Ok(()) })
        .listen("write", "tidy", move |_cx: Cx<()>, (): ()| {
            let attempts = attempts.clone();
            async move {
                call_model(10, 5);
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 { Err("rate limited".into()) } else { Ok(()) }
            }
        })
        .retry(Retry::attempts(2).backoff(std::time::Duration::ZERO))
        .listen("judge", "write", |_cx: Cx<()>, (): ()| async {
            call_model(7, 1);
            Err::<(), _>("unparsable verdict".into())
        })
        .build()
        .unwrap();
    let logged = Logged::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = tracing::subscriber::with_default(Capture(logged.clone()), || runtime.block_on(flow.kickoff(())));
    assert!(result.is_err());
    let logged = logged.lock().unwrap();
    let tokens = |message: &str, step: &str| {
        let (_, f) = logged
            .iter()
            .find(|(_, f)| f["message"] == message && f["step"] == step)
            .unwrap_or_else(|| panic!("no `{message}` line for {step}: {logged:?}"));
        (f.get("input_tokens").cloned(), f.get("output_tokens").cloned())
    };
    let some = |i: &str, o: &str| (Some(i.to_string()), Some(o.to_string()));
    assert_eq!(tokens("step finished", "plan"), some("200", "42"));
    assert_eq!(tokens("step finished", "tidy"), (None, None));
    assert_eq!(tokens("step finished", "write"), some("20", "10"), "both attempts count");
    assert_eq!(tokens("step failed", "judge"), some("7", "1"));
}
