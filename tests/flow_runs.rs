//! Kickoff, inputs, state and output: reference cases D (C35–C43), blocking and concurrent
//! runs, cancellation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

mod common;

use crewflow::InputError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Log;
use crewflow::prelude::*;
use crewflow::{Error, RunId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

struct Restart(Log);

#[flow]
impl Restart {
    #[start]
    async fn step_1(&self) -> Result<()> {
        self.0.push("step_1");
        Ok(())
    }
    #[listen(step_1)]
    async fn step_2(&self) -> Result<()> {
        self.0.push("step_2");
        Ok(())
    }
}

/// C35: one flow kicked off twice runs twice. (Upstream also carries the state and its id
/// over to the second run, X07; in crewflow every run starts from the default state with a
/// fresh id, so runs of one flow never leak into each other. Resuming a run is explicit.)
#[tokio::test]
async fn c35_kicking_off_twice_runs_twice_with_fresh_state() {
    let log = Log::default();
    let flow = Restart(log.clone()).into_flow().unwrap();
    let first = flow.kickoff(()).await.unwrap();
    let second = flow.kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["step_1", "step_2", "step_1", "step_2"]);
    assert_ne!(first.id, second.id);
}

#[derive(Default, Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Message {
    counter: u32,
    message: String,
}

struct Structured;

#[flow(state = Message)]
impl Structured {
    #[start]
    async fn first(&self, cx: &Cx<Message>) -> Result<RunId> {
        cx.update(|s| {
            s.counter += 1;
            s.message = "initial".into();
        });
        Ok(cx.run_id())
    }
    #[listen(first)]
    async fn second(&self, cx: &Cx<Message>, id_seen_by_first: RunId) -> Result<bool> {
        cx.update(|s| {
            s.counter += 1;
            s.message = "final".into();
        });
        Ok(id_seen_by_first == cx.run_id())
    }
}

/// C37: every run has an id (a 36-character UUID v7, stable within the run); typed state
/// without an id field works.
#[tokio::test]
async fn c37_run_ids_and_structured_state() {
    let run = Structured.into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.id.to_string().len(), 36);
    assert_eq!(run.id.as_uuid().get_version_num(), 7);
    assert!(run.output::<bool>().unwrap(), "the id is the same in every step");
    assert_eq!(run.state, Message { counter: 2, message: "final".into() });
}

/// C39: inputs merge into a dict (JSON map) state; the run-started event carries the inputs,
/// step-started events carry each step's input, the run-finished event the output.
/// (Upstream also snapshots the whole state into every step event; crewflow keeps events
/// cheap and leaves the state to the run, see `Run::state`.)
#[tokio::test]
async fn c39_inputs_into_dict_state_and_events() {
    type Poem = Map<String, Value>;
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let flow = FlowBuilder::<Poem>::new("PoemFlow")
        .start("prepare_flower", |cx: Cx<Poem>, (): ()| async move {
            cx.update(|s| s.insert("flower".into(), json!("roses")));
            Ok("foo")
        })
        .start("prepare_color", |cx: Cx<Poem>, (): ()| async move {
            cx.update(|s| s.insert("color".into(), json!("red")));
            Ok(())
        })
        .listen(
            "write_first_sentence",
            and([step("prepare_flower"), step("prepare_color")]),
            |cx: Cx<Poem>, (): ()| async move {
                Ok(cx.state(|s| {
                    format!("{} are {}", s["flower"].as_str().unwrap_or(""), s["color"].as_str().unwrap_or(""))
                }))
            },
        )
        .listen("finish_poem", "write_first_sentence", |cx: Cx<Poem>, first: String| async move {
            let sep = cx.state(|s| s.get("separator").and_then(Value::as_str).unwrap_or("\n").to_string());
            Ok(format!("{first}{sep}violets are blue"))
        })
        .listen("save_poem_to_database", "finish_poem", |_cx, poem: String| async move { Ok(poem) })
        .observe(move |e: &Event| sink.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let run = flow.kickoff(json!({ "separator": ", " })).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "roses are red, violets are blue");
    assert_eq!(run.state["separator"], json!(", "));

    let events = events.lock().unwrap();
    let started: Vec<_> = events.iter().filter(|e| matches!(e.kind, EventKind::RunStarted { .. })).collect();
    assert_eq!(started.len(), 1);
    match &started[0].kind {
        EventKind::RunStarted { flow, inputs } => {
            assert_eq!(&**flow, "PoemFlow");
            assert_eq!(inputs, &Some(json!({ "separator": ", " })));
        }
        _ => unreachable!(),
    }
    let step_inputs: Vec<(String, Option<Value>)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::StepStarted { input, .. } => {
                Some((e.step.as_deref().unwrap_or("").to_string(), input.as_ref().map(|i| i.to_json().unwrap())))
            }
            _ => None,
        })
        .collect();
    assert_eq!(step_inputs.len(), 5);
    let finish = step_inputs.iter().find(|(s, _)| s == "finish_poem").unwrap();
    assert_eq!(finish.1, Some(json!("roses are red")));
    let finished = events.iter().find_map(|e| match &e.kind {
        EventKind::RunFinished { output, .. } => output.as_ref().map(|o| o.to_json().unwrap()),
        _ => None,
    });
    assert_eq!(finished, Some(json!("roses are red, violets are blue")));
}

/// C41: without inputs, the run-started event has none; the run-finished output is the last
/// step's return value.
#[tokio::test]
async fn c41_no_inputs() {
    let (handle, mut events) = Restart(Log::default()).into_flow().unwrap().stream(()).unwrap();
    let mut inputs_seen = None;
    let mut output_seen = None;
    while let Some(e) = events.next().await {
        match e.kind {
            EventKind::RunStarted { inputs, .. } => inputs_seen = Some(inputs),
            EventKind::RunFinished { output, .. } => output_seen = output.map(|o| o.to_json().unwrap()),
            _ => {}
        }
    }
    handle.await.unwrap();
    assert_eq!(inputs_seen, Some(None));
    assert_eq!(output_seen, Some(Value::Null), "step_2 returns ()");
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Webhook {
    ticket: u32,
}

struct Triggered(Log);

#[flow]
impl Triggered {
    #[start]
    async fn with_payload(&self, payload: Option<Webhook>) -> Result<Option<Webhook>> {
        self.0.push(format!("with_payload:{payload:?}"));
        Ok(payload)
    }
    #[start]
    async fn also_with_payload(&self, payload: Option<Webhook>) -> Result<()> {
        self.0.push(format!("also:{payload:?}"));
        Ok(())
    }
    #[start]
    async fn without_payload(&self) -> Result<&'static str> {
        self.0.push("without_payload");
        Ok("finished")
    }
    #[listen(with_payload)]
    async fn listener(&self) -> Result<()> {
        self.0.push("listener");
        Ok(())
    }
}

/// C43: a kickoff payload reaches every start that takes an input; starts without one run
/// normally; an absent payload is `None` for an optional input.
#[tokio::test]
async fn c43_trigger_payload_injection() {
    let log = Log::default();
    let flow = Triggered(log.clone()).into_flow().unwrap();
    let run = flow.kickoff(Kickoff::new().payload(Webhook { ticket: 7 })).await.unwrap();
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(
        entries,
        ["also:Some(Webhook { ticket: 7 })", "listener", "with_payload:Some(Webhook { ticket: 7 })", "without_payload"]
    );
    assert_eq!(run.output_of::<Option<Webhook>>("with_payload").unwrap().unwrap(), Some(Webhook { ticket: 7 }));

    let log = Log::default();
    Triggered(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert!(log.entries().contains(&"with_payload:None".to_string()));
}

/// A start whose input is not optional needs a payload: without one the run fails with an
/// error that says how to pass it.
#[tokio::test]
async fn a_required_start_input_without_a_payload_is_a_clear_error() {
    let flow =
        FlowBuilder::<()>::new("f").start("needs", |_cx, w: Webhook| async move { Ok(w.ticket) }).build().unwrap();
    let err = flow.kickoff(()).await.err().unwrap();
    assert!(err.to_string().contains("Kickoff::payload"), "{err}");
    assert_eq!(flow.kickoff(Kickoff::new().payload(Webhook { ticket: 1 })).await.unwrap().output::<u32>().unwrap(), 1);
}

#[derive(Default, Serialize, Deserialize, Debug)]
struct Article {
    topic: String,
    words: u32,
}

struct Writer;

#[flow(state = Article)]
impl Writer {
    #[start]
    async fn write(&self, cx: &Cx<Article>) -> Result<String> {
        Ok(cx.state(|a| format!("{} ({} words)", a.topic, a.words)))
    }
}

/// Inputs merge into typed state; unknown keys are an error naming all of them and the fields
/// (never silently dropped), and wrongly typed ones an error naming each field. Nothing runs.
#[tokio::test]
async fn typed_state_inputs_are_checked() {
    let flow = Writer.into_flow().unwrap();
    let run = flow.kickoff(json!({ "topic": "rust", "words": 300 })).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "rust (300 words)");

    let err = flow.kickoff(json!({ "topik": "rust" })).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "unknown input `topik` (did you mean `topic`?) for state `flow_runs::Article`; the state's fields are: topic, words"
    );
    let err = flow.kickoff(json!({ "topik": "rust", "wrods": 3, "extra": true })).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "unknown inputs `extra`, `topik` (did you mean `topic`?), `wrods` (did you mean `words`?) for state `flow_runs::Article`; the state's fields are: topic, words"
    );
    let err = flow.kickoff(json!({ "words": "many" })).await.err().unwrap();
    assert!(matches!(err, Error::Input(InputError::InvalidInput { .. })), "{err}");
    assert_eq!(
        err.to_string(),
        r#"invalid inputs for state `flow_runs::Article`: inputs.words: expected u32, got string "many""#
    );
    let err = flow.kickoff(json!({ "topic": 1, "words": -3 })).await.err().unwrap().to_string();
    assert!(
        err.ends_with("inputs.topic: expected a string, got integer `1`; inputs.words: expected u32, got integer `-3`"),
        "{err}"
    );
    let err = flow.kickoff(json!(["topic"])).await.err().unwrap();
    assert_eq!(err.to_string(), "kickoff inputs must be a JSON object of state fields, got an array");
}

/// The blocking variant works without a runtime and refuses to block inside one.
#[test]
fn kickoff_blocking_outside_and_inside_a_runtime() {
    let flow = Writer.into_flow().unwrap();
    let run = flow.kickoff_blocking(json!({ "topic": "sync" })).unwrap();
    assert_eq!(run.output::<String>().unwrap(), "sync (0 words)");

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let err = rt.block_on(async { flow.kickoff_blocking(()) }).err().unwrap();
    assert!(matches!(err, Error::BlockingInsideRuntime { .. }), "{err}");
}

#[test]
fn async_kickoff_outside_a_runtime_is_a_clear_error() {
    let flow = Writer.into_flow().unwrap();
    let err = futures::FutureExt::now_or_never(flow.kickoff(())).unwrap().err().unwrap();
    assert!(err.to_string().contains("needs a Tokio runtime"), "{err}");
}

#[derive(Default, Serialize, Deserialize)]
struct Tally {
    n: u64,
}

struct Slow;

#[flow(state = Tally)]
impl Slow {
    #[start]
    async fn begin(&self, cx: &Cx<Tally>) -> Result<u64> {
        Ok(cx.state(|t| t.n))
    }
    #[listen(begin)]
    async fn wait(&self, cx: &Cx<Tally>, n: u64) -> Result<u64> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cx.update(|t| t.n += 1);
        Ok(n)
    }
    #[listen(wait)]
    async fn end(&self, cx: &Cx<Tally>) -> Result<u64> {
        Ok(cx.state(|t| t.n))
    }
}

/// One flow value serves many concurrent runs, each with its own state; they overlap in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flow_serves_many_concurrent_runs() {
    let flow = Slow.into_flow().unwrap();
    let started = Instant::now();
    let runs: Vec<_> = (0..200).map(|i| flow.spawn(json!({ "n": i })).unwrap()).collect();
    let mut outputs = Vec::new();
    for r in runs {
        outputs.push(r.await.unwrap().output::<u64>().unwrap());
    }
    assert_eq!(outputs, (1..=200).collect::<Vec<u64>>());
    // 200 runs of a 50 ms step finish in far less than 200 × 50 ms when they overlap.
    assert!(started.elapsed() < Duration::from_secs(5), "runs did not overlap: {:?}", started.elapsed());
}

/// A run can be cancelled through its handle: in-flight steps stop and the run ends with
/// `Error::Cancelled` (and a run-cancelled event).
#[tokio::test]
async fn cancelling_a_run() {
    let stopped = Arc::new(AtomicBool::new(false));
    let seen = stopped.clone();
    let flow = FlowBuilder::<()>::new("long")
        .start("forever", move |cx: Cx<()>, (): ()| {
            let seen = seen.clone();
            async move {
                cx.cancelled().await;
                seen.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .start("sleepy", |_cx, (): ()| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
        .build()
        .unwrap();
    let (handle, mut events) = flow.stream(()).unwrap();
    let id = handle.id();
    tokio::time::sleep(Duration::from_millis(20)).await;
    handle.cancel();
    let err = handle.await.err().unwrap();
    assert!(matches!(err, Error::Cancelled { ref run_id } if *run_id == id.to_string()), "{err}");
    let mut last = None;
    while let Some(e) = events.next().await {
        last = Some(e.kind.name());
    }
    assert_eq!(last, Some("run_cancelled"));
}

/// A start predicate (`start_when`) that panics fails the run with an error that says so,
/// for a spawned run as for an awaited one; the caller of `spawn` gets its handle, not the panic.
#[tokio::test]
async fn a_panicking_start_predicate_fails_the_run_not_its_caller() {
    let flow = FlowBuilder::<Map<String, Value>>::new("gated")
        .start_when("maybe", |_state: &Map<String, Value>| panic!("no such field"), |_cx, (): ()| async move { Ok(()) })
        .build()
        .unwrap();
    let spawned = flow.spawn(()).expect("spawn hands back a handle");
    for result in [spawned.await, flow.kickoff(()).await] {
        let e = result.expect_err("the run fails").to_string();
        assert!(e.contains("`when` predicate panicked") && e.contains("no such field"), "{e}");
    }
}

/// A step fails with a message (`Err("..".into())`, `?` on a `Result<_, String>` or `&str`),
/// and the failed run's error carries its id: the fix-then-resume pattern of docs/store.md
/// needs nothing else.
#[tokio::test]
async fn a_failed_run_names_its_id_and_resumes_from_it_after_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let flow = {
        let fixed = fixed.clone();
        FlowBuilder::<Map<String, Value>>::new("stock")
            .store(crewflow::store::SqliteStore::open(dir.path().join("runs.db")))
            .start("count", |_cx, (): ()| async move {
                let parsed: Result<u32, &str> = Ok(3);
                Ok(parsed?) // `?` on a `&str` error
            })
            .listen("reserve", step("count"), move |_cx, count: u32| {
                let fixed = fixed.clone();
                async move {
                    if !fixed.load(Ordering::SeqCst) {
                        return Err(format!("only {count} left").into());
                    }
                    let checked: Result<(), String> = Ok(());
                    checked?; // and on a `String` error
                    Ok(count)
                }
            })
            .build()
            .unwrap()
    };
    let err = flow.kickoff(()).await.unwrap_err();
    let Error::StepFailed { run_id, step, .. } = &err else { panic!("{err}") };
    assert_eq!(step, "reserve");
    assert_eq!(err.to_string(), format!("step `reserve` failed in run {run_id}: only 3 left"));

    fixed.store(true, Ordering::SeqCst);
    let run = flow.resume(*run_id).await.unwrap();
    assert_eq!(run.id, *run_id);
    assert_eq!(run.output::<u32>().unwrap(), 3);
}

/// `Err("...".into())` in a `#[flow]` step compiles and fails the run with the message.
#[tokio::test]
async fn a_macro_step_fails_with_a_plain_message() {
    struct Refuse;
    #[flow]
    impl Refuse {
        #[start]
        async fn check(&self) -> Result<()> {
            Err("not today".into())
        }
    }
    let err = Refuse.into_flow().unwrap().kickoff(()).await.unwrap_err();
    assert!(err.to_string().ends_with(": not today"), "{err}");
}

/// `#[blocking]` steps run on the blocking pool: two starts that block their thread until the
/// other one has started run side by side, even on a single-threaded runtime (without the
/// mark, the first would block the only thread and the handshake could never happen).
#[tokio::test(flavor = "current_thread")]
async fn blocking_steps_run_side_by_side() {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, Sender, channel};
    struct Handshake {
        to_b: Sender<()>,
        from_a: Mutex<Receiver<()>>,
        to_a: Sender<()>,
        from_b: Mutex<Receiver<()>>,
    }
    #[flow]
    impl Handshake {
        #[start]
        #[blocking]
        async fn a(&self) -> Result<&'static str> {
            self.to_b.send(())?;
            self.from_b.lock().unwrap().recv_timeout(Duration::from_secs(20))?; // blocks the thread
            Ok("a met b")
        }
        #[start]
        #[blocking]
        async fn b(&self) -> Result<&'static str> {
            self.to_a.send(())?;
            self.from_a.lock().unwrap().recv_timeout(Duration::from_secs(20))?;
            tokio::time::sleep(Duration::from_millis(1)).await; // the runtime still drives timers
            Ok("b met a")
        }
        #[listen(a & b)]
        async fn joined(&self) -> Result<&'static str> {
            Ok("both")
        }
    }
    let (to_b, from_a) = channel();
    let (to_a, from_b) = channel();
    let flow = Handshake { to_b, from_a: Mutex::new(from_a), to_a, from_b: Mutex::new(from_b) }.into_flow().unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "both");
}
