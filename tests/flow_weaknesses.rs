//! The known weaknesses of the reference engine (reference spec §0) that crewflow does not
//! have: one test per item, named by item number. Items 2, 8 and 25 are tested in their area
//! files: `flow_routers::weakness_02_*`, `flow_loops::weakness_08_*`, `flow_events::weakness_25_*`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

mod common;

use crewflow::{BuildError, GraphRule};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::Log;
use crewflow::Error;
use crewflow::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum A {
    A,
}
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum B {
    B,
}
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum C {
    C,
}

/// §0 item 1: upstream feeds only the last sibling router's label back to routers, so a
/// router listening to an earlier sibling's label never runs (X01). Every label is dispatched.
#[tokio::test]
async fn weakness_01_sibling_routers_keep_each_others_labels() {
    struct Siblings(Log);
    #[flow]
    impl Siblings {
        #[start]
        async fn x(&self) -> Result<()> {
            Ok(())
        }
        #[router(x)]
        async fn r1(&self) -> Result<A> {
            Ok(A::A)
        }
        #[router(x)]
        async fn r2(&self) -> Result<B> {
            Ok(B::B)
        }
        #[router(A::A)]
        async fn r3(&self) -> Result<C> {
            self.0.push("r3");
            Ok(C::C)
        }
        #[listen(A::A)]
        async fn on_a(&self) -> Result<()> {
            self.0.push("on_a");
            Ok(())
        }
        #[listen(B::B)]
        async fn on_b(&self) -> Result<()> {
            self.0.push("on_b");
            Ok(())
        }
        #[listen(C::C)]
        async fn on_c(&self) -> Result<()> {
            self.0.push("on_c");
            Ok(())
        }
    }
    let log = Log::default();
    Siblings(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(entries, ["on_a", "on_b", "on_c", "r3"]);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Go {
    Go,
}

/// §0 item 3: upstream evaluates conditional starts only on labels of listener routers, so a
/// start router's label, or a step completion, never fires them (X03). Here both do.
#[tokio::test]
async fn weakness_03_conditional_starts_fire_on_any_label_or_completion() {
    struct FromStartRouter(Log);
    #[flow]
    impl FromStartRouter {
        #[start]
        #[router]
        async fn r(&self) -> Result<Go> {
            Ok(Go::Go)
        }
        #[start(Go::Go)]
        async fn s(&self) -> Result<()> {
            self.0.push("s");
            Ok(())
        }
    }
    let log = Log::default();
    FromStartRouter(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["s"]);

    // The docs' "mastering flow state" example, which upstream never completes.
    struct Mastering(Log);
    #[flow]
    impl Mastering {
        #[start]
        async fn init(&self) -> Result<()> {
            self.0.push("init");
            Ok(())
        }
        #[start(init)]
        async fn maybe_begin(&self) -> Result<()> {
            self.0.push("maybe_begin");
            Ok(())
        }
        #[listen(and(init, maybe_begin))]
        async fn proceed(&self) -> Result<()> {
            self.0.push("proceed");
            Ok(())
        }
    }
    let log = Log::default();
    Mastering(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["init", "maybe_begin", "proceed"]);
}

#[derive(Default, Serialize, Deserialize)]
struct Topic {
    topic: Option<String>,
}

/// §0 item 4: upstream's `@start(callable)` uses the callable's name as a trigger (so a lambda
/// never fires). `#[start(when = ..)]` is a real predicate, evaluated on the state after the
/// kickoff inputs are merged.
#[tokio::test]
async fn weakness_04_start_predicates_are_evaluated() {
    struct Conditional(Log);
    #[flow(state = Topic)]
    impl Conditional {
        fn has_topic(state: &Topic) -> bool {
            state.topic.is_some()
        }
        #[start(when = Self::has_topic)]
        async fn research(&self) -> Result<()> {
            self.0.push("research");
            Ok(())
        }
        #[start]
        async fn greet(&self) -> Result<()> {
            self.0.push("greet");
            Ok(())
        }
    }
    let log = Log::default();
    let flow = Conditional(log.clone()).into_flow().unwrap();
    flow.kickoff(json!({ "topic": "rust" })).await.unwrap();
    let mut with_topic = log.entries();
    with_topic.sort();
    assert_eq!(with_topic, ["greet", "research"]);

    let log = Log::default();
    Conditional(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["greet"]);
}

/// §0 item 5: upstream "races" the members of an `or` and cancels the losers mid-flight (X04).
/// Here the slower member finishes, its output is recorded and its own listeners run; the
/// `or` listener fires once.
#[tokio::test]
async fn weakness_05_or_never_cancels_the_slower_member() {
    struct Race(Log);
    #[flow]
    impl Race {
        #[start]
        async fn a(&self) -> Result<()> {
            Ok(())
        }
        #[listen(a)]
        async fn b(&self) -> Result<&'static str> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok("b")
        }
        #[listen(a)]
        async fn c(&self) -> Result<&'static str> {
            tokio::time::sleep(Duration::from_millis(60)).await;
            self.0.push("c finished");
            Ok("c")
        }
        #[listen(or(b, c))]
        async fn d(&self, first: String) -> Result<()> {
            self.0.push(format!("d:{first}"));
            Ok(())
        }
        #[listen(c)]
        async fn after_c(&self) -> Result<()> {
            self.0.push("after_c");
            Ok(())
        }
    }
    let log = Log::default();
    let run = Race(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["d:b", "c finished", "after_c"]);
    assert_eq!(run.output_of::<String>("c").unwrap().unwrap(), "c");
}

#[derive(Debug, thiserror::Error)]
#[error("quota exhausted for {0}")]
struct QuotaError(&'static str);

/// §0 item 6: upstream swallows exceptions of steps scheduled alongside a race (X05). Here
/// any failing step fails the run, naming the step, with its cause intact.
#[tokio::test]
async fn weakness_06_errors_are_never_swallowed() {
    struct Swallow;
    #[flow]
    impl Swallow {
        #[start]
        async fn a(&self) -> Result<()> {
            Ok(())
        }
        #[listen(a)]
        async fn b(&self) -> Result<()> {
            Ok(())
        }
        #[listen(a)]
        async fn c(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        }
        #[listen(or(b, c))]
        async fn d(&self) -> Result<()> {
            Ok(())
        }
        #[listen(a)]
        async fn e(&self) -> std::result::Result<(), QuotaError> {
            Err(QuotaError("e"))
        }
    }
    let err = Swallow.into_flow().unwrap().kickoff(()).await.err().unwrap();
    let Error::StepFailed { step, source, run_id } = &err else { panic!("{err}") };
    assert_eq!(step, "e");
    assert!(source.downcast_ref::<QuotaError>().is_some(), "the cause keeps its type");
    assert_eq!(err.to_string(), format!("step `e` failed in run {run_id}: quota exhausted for e"));
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Spin {
    Again,
    #[route(terminal)]
    Stop,
}

/// §0 item 7: upstream clears every `or` listener's "fired" mark whenever any method re-runs,
/// so an unrelated loop makes an `or` fire twice. Here a loop goes round while the slow member
/// of `or(a, b)` is still running, and the `or` fires once.
#[tokio::test]
async fn weakness_07_or_rearming_is_per_listener_and_per_round() {
    struct Unrelated(Log, AtomicU32);
    #[flow]
    impl Unrelated {
        #[start]
        async fn a(&self) -> Result<()> {
            Ok(())
        }
        #[start]
        async fn b(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(80)).await;
            Ok(())
        }
        #[start]
        async fn tick(&self) -> Result<()> {
            Ok(())
        }
        #[listen(or(a, b))]
        async fn either(&self) -> Result<()> {
            self.0.push("either");
            Ok(())
        }
        #[router(or(tick, tock))]
        async fn spin(&self) -> Result<Spin> {
            Ok(if self.1.fetch_add(1, Ordering::SeqCst) < 4 { Spin::Again } else { Spin::Stop })
        }
        #[listen(Spin::Again)]
        async fn tock(&self) -> Result<()> {
            self.0.push("tock");
            Ok(())
        }
    }
    let log = Log::default();
    Unrelated(log.clone(), AtomicU32::new(0)).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.count("tock"), 4);
    assert_eq!(log.count("either"), 1);
}

#[derive(Default, Serialize, Deserialize)]
struct Pair {
    left: u64,
    right: u64,
    torn_reads: u64,
}

/// §0 item 15: upstream shares one unlocked state object between concurrent methods. Here 50
/// concurrent steps update the state 100 times each, yielding between updates: no update is
/// lost, and no read ever sees a half-made update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weakness_15_concurrent_steps_never_lose_or_tear_state() {
    let mut builder = FlowBuilder::<Pair>::new("counters").start("go", |_cx, (): ()| async move { Ok(()) });
    for i in 0..50 {
        builder = builder.listen(&format!("worker_{i}"), "go", |cx: Cx<Pair>, (): ()| async move {
            for _ in 0..100 {
                cx.update(|p| {
                    p.left += 1;
                    p.right += 1;
                });
                tokio::task::yield_now().await;
                cx.update(|p| {
                    if p.left != p.right {
                        p.torn_reads += 1;
                    }
                });
            }
            Ok(())
        });
    }
    let run = builder.build().unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.state.left, 5000);
    assert_eq!(run.state.right, 5000);
    assert_eq!(run.state.torn_reads, 0);
}

/// §0 item 16: upstream drops a parent flow's steps from a subclass and silently returns
/// `None` for a flow without a start. Rust has no inheritance; flows are extended by
/// composition (`into_builder().include(..)` / adding steps), which keeps every step, and a
/// flow without a start is an error.
#[tokio::test]
async fn weakness_16_extending_a_flow_keeps_its_steps_and_no_start_is_an_error() {
    struct Base(Log);
    #[flow]
    impl Base {
        #[start]
        async fn a(&self) -> Result<()> {
            self.0.push("a");
            Ok(())
        }
        #[listen(a)]
        async fn b(&self) -> Result<()> {
            self.0.push("b");
            Ok(())
        }
    }
    let log = Log::default();
    let child_log = log.clone();
    let child = Base(log.clone())
        .into_builder()
        .rename("Child")
        .listen("c", "b", move |_cx, (): ()| {
            let log = child_log.clone();
            async move {
                log.push("c");
                Ok(())
            }
        })
        .build()
        .unwrap();
    assert_eq!(child.name(), "Child");
    child.kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["a", "b", "c"]);

    let err = FlowBuilder::<()>::new("headless").build().err().unwrap();
    assert_eq!(
        err.to_string(),
        "flow `headless` has no start step; mark at least one step as a start (#[start], .start(..), or `start: true` in YAML)"
    );
}

/// §0 item 22: upstream returns whatever finished last. Here the output of a run with
/// parallel branches of random durations is always the same step's.
#[tokio::test]
async fn weakness_22_the_final_output_does_not_depend_on_timing() {
    let flow = FlowBuilder::<()>::new("parallel")
        .start("fetch", |_cx, (): ()| async move { Ok(()) })
        .listen("summary", "fetch", |_cx, (): ()| async move {
            tokio::time::sleep(Duration::from_millis(jitter())).await;
            Ok("summary")
        })
        .listen("audit_log", "fetch", |_cx, (): ()| async move {
            tokio::time::sleep(Duration::from_millis(jitter())).await;
            Ok("audit")
        })
        .listen("notify", "summary", |_cx, (): ()| async move {
            tokio::time::sleep(Duration::from_millis(jitter())).await;
            Ok("notified")
        })
        .build()
        .unwrap();
    for _ in 0..20 {
        let run = flow.kickoff(()).await.unwrap();
        // `audit_log` and `notify` are the steps nothing listens to; `notify` is declared last.
        assert_eq!(run.final_step(), Some("notify"));
        assert_eq!(run.output::<String>().unwrap(), "notified");
    }
}

fn jitter() -> u64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 7)
        as u64
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Retry {
    Retry,
    #[route(terminal)]
    Stop,
}

/// §0 item 23: upstream counts calls per method (not starts) and raises a bare recursion
/// error after partial work. Here one budget counts every step execution of the run, starts
/// included, is set per flow or per kickoff, and its error names the step and the budget.
#[tokio::test]
async fn weakness_23_the_step_budget_is_clear_and_configurable() {
    struct Looping;
    #[flow(max_steps = 10)]
    impl Looping {
        #[start(Retry::Retry)]
        async fn attempt(&self) -> Result<()> {
            Ok(())
        }
        #[router(attempt)]
        async fn decide(&self) -> Result<Retry> {
            Ok(Retry::Retry)
        }
    }
    let flow = Looping.into_flow().unwrap();
    let err = flow.kickoff(()).await.err().unwrap();
    assert!(matches!(err, Error::StepBudgetExceeded { ref step, budget: 10 } if step == "attempt"), "{err}");
    assert_eq!(err.step(), Some("attempt"));
    // attempt, decide, attempt: the fourth execution would be `decide`.
    let err = flow.kickoff(Kickoff::new().max_steps(3)).await.err().unwrap();
    assert!(matches!(err, Error::StepBudgetExceeded { ref step, budget: 3 } if step == "decide"), "{err}");
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Next {
    #[route(rename = "write")]
    Write,
}

/// §0 item 28: upstream treats declared routes as advisory, ends a branch silently on a label
/// nobody handles, and shares one namespace between labels and method names. Here an
/// undeclared label fails the run, an unhandled one fails the build, and a route named like a
/// step does not fire that step's listeners.
#[tokio::test]
async fn weakness_28_routes_are_enforced_and_separate_from_step_names() {
    struct Namespaces(Log);
    #[flow]
    impl Namespaces {
        #[start]
        async fn begin(&self) -> Result<()> {
            Ok(())
        }
        #[router(begin)]
        async fn decide(&self) -> Result<Next> {
            Ok(Next::Write)
        }
        #[listen(Next::Write)]
        async fn on_route(&self) -> Result<()> {
            self.0.push("on_route");
            Ok(())
        }
        #[start(Next::Write)]
        async fn write(&self) -> Result<()> {
            self.0.push("write");
            Ok(())
        }
        #[listen(write)]
        async fn after_write_step(&self) -> Result<()> {
            self.0.push("after_write_step");
            Ok(())
        }
    }
    let log = Log::default();
    Namespaces(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    let mut entries = log.entries();
    entries.sort();
    // after_write_step runs once, after the *step* `write`, not because of the *route* "write".
    assert_eq!(entries, ["after_write_step", "on_route", "write"]);

    let undeclared = FlowBuilder::<()>::new("f")
        .start("s", |_cx, (): ()| async move { Ok(()) })
        .router("r", "s", |_cx, (): ()| async move { Ok("elsewhere".to_string()) })
        .routes(["here"])
        .listen("h", label("here"), |_cx, (): ()| async move { Ok(()) })
        .build()
        .unwrap();
    assert!(matches!(undeclared.kickoff(()).await, Err(Error::UndeclaredRoute { .. })));
    let unhandled = FlowBuilder::<()>::new("f")
        .start("s", |_cx, (): ()| async move { Ok(()) })
        .router("r", "s", |_cx, (): ()| async move { Ok("here".to_string()) })
        .routes(["here", "there"])
        .listen("h", label("here"), |_cx, (): ()| async move { Ok(()) })
        .build();
    assert!(
        matches!(unhandled, Err(Error::Build(BuildError::Graph(GraphRule::UnhandledRoute { ref label, .. }))) if label == "there")
    );
}

/// §0 item 30: upstream lets the other branches of a failed run keep running uncontrolled.
/// Here the first failure fails the run promptly with its cause; siblings are told to stop
/// (and can clean up within the grace period), long-running ones are dropped, and the failed
/// run's other listeners never run.
#[tokio::test]
async fn weakness_30_a_failure_cancels_siblings_cooperatively() {
    let cleaned_up = Arc::new(AtomicBool::new(false));
    let after_good_ran = Arc::new(AtomicBool::new(false));
    let (c, a) = (cleaned_up.clone(), after_good_ran.clone());
    let flow = FlowBuilder::<()>::new("fragile")
        .start("bad", |_cx, (): ()| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<(), _>(StepError::from(QuotaError("bad")))
        })
        .start("good", |_cx, (): ()| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })
        .start("careful", move |cx: Cx<()>, (): ()| {
            let c = c.clone();
            async move {
                cx.cancelled().await;
                c.store(true, Ordering::SeqCst); // e.g. abort an upload
                Ok(())
            }
        })
        .listen("after_good", "good", move |_cx, (): ()| {
            let a = a.clone();
            async move {
                a.store(true, Ordering::SeqCst);
                Ok(())
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = flow.kickoff(()).await.err().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "the run waited for its siblings: {:?}", started.elapsed());
    assert_eq!(err.step(), Some("bad"));
    let Error::StepFailed { source, .. } = &err else { panic!("{err}") };
    assert!(source.downcast_ref::<QuotaError>().is_some(), "the cause keeps its type");
    assert!(cleaned_up.load(Ordering::SeqCst), "the careful sibling saw the cancellation");
    assert!(!after_good_ran.load(Ordering::SeqCst));
}

/// A panicking step fails the run like an error, naming the step.
#[tokio::test]
async fn a_panicking_step_fails_the_run_with_its_message() {
    let flow = FlowBuilder::<()>::new("f")
        .start("explode", |_cx, (): ()| async move {
            if jitter() < 100 {
                panic!("index out of range");
            }
            Ok(())
        })
        .build()
        .unwrap();
    let err = flow.kickoff(()).await.err().unwrap();
    let Error::StepFailed { run_id, .. } = &err else { panic!("{err}") };
    assert_eq!(
        err.to_string(),
        format!("step `explode` failed in run {run_id}: the step panicked: index out of range")
    );
}

/// §0 item 31: upstream checks a listener's arity only when it is called, and every flow
/// creates a memory store as a side effect. Here arity is a compile error (tests/ui:
/// `two_inputs.rs`), and building and running a flow touches no file.
#[tokio::test]
async fn weakness_31_building_and_running_a_flow_has_no_side_effects() {
    let listing = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    };
    let cwd = std::env::current_dir().unwrap();
    let data = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"));
    let before = (listing(&cwd), data.as_deref().map(listing));
    let flow = FlowBuilder::<()>::new("quiet").start("s", |_cx, (): ()| async move { Ok(1) }).build().unwrap();
    flow.kickoff(()).await.unwrap();
    let after = (listing(&cwd), data.as_deref().map(listing));
    assert_eq!(before, after);
}
