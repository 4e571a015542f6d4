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
