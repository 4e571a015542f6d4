//! Triggers, ordering and conditions: reference cases A (C01–C15), through the real driver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

mod common;

use crewflow::{BuildError, GraphRule};
use std::time::Duration;

use common::Log;
use crewflow::prelude::*;
use crewflow::{Error, trigger};

/// C01: a linear chain runs in order.
#[tokio::test]
async fn c01_linear_chain_runs_in_order() {
    struct Chain(Log);
    #[flow]
    impl Chain {
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
    let log = Log::default();
    let run = Chain(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["step_1", "step_2"]);
    assert_eq!(run.final_step(), Some("step_2"));
}

/// C03: an `and` join of two starts runs exactly once, after both, and last.
#[tokio::test]
async fn c03_and_join_of_two_starts() {
    struct Join(Log);
    #[flow]
    impl Join {
        #[start]
        async fn s1(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0.push("s1");
            Ok(())
        }
        #[start]
        async fn s2(&self) -> Result<()> {
            self.0.push("s2");
            Ok(())
        }
        #[listen(and(s1, s2))]
        async fn s3(&self) -> Result<()> {
            self.0.push("s3");
            Ok(())
        }
    }
    let log = Log::default();
    Join(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.count("s3"), 1);
    assert_eq!(log.entries().last().map(String::as_str), Some("s3"));
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum EventC {
    #[route(rename = "event_c")]
    EventC,
}

/// C05: a single-branch `or` inside an `and` is just that member.
#[tokio::test]
async fn c05_single_branch_or_inside_and() {
    struct Nested;
    #[flow]
    impl Nested {
        #[start]
        async fn event_a(&self) -> Result<&'static str> {
            Ok("a")
        }
        #[listen(event_a)]
        async fn event_b(&self) -> Result<()> {
            Ok(())
        }
        #[router(event_b)]
        async fn emit_event_c(&self) -> Result<EventC> {
            Ok(EventC::EventC)
        }
        #[listen(and(event_a, event_b, or(EventC::EventC)))]
        async fn event_d(&self) -> Result<&'static str> {
            Ok("done")
        }
    }
    let run = Nested.into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "done");
}

/// C07: `or` of two `and` groups over four starts runs once, after a complete group.
#[tokio::test]
async fn c07_deeply_nested_conditions() {
    struct Deep(Log);
    #[flow]
    impl Deep {
        #[start]
        async fn a(&self) -> Result<()> {
            self.0.push("a");
            Ok(())
        }
        #[start]
        async fn b(&self) -> Result<()> {
            self.0.push("b");
            Ok(())
        }
        #[start]
        async fn c(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.0.push("c");
            Ok(())
        }
        #[start]
        async fn d(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.0.push("d");
            Ok(())
        }
        #[listen(or(and(a, b), and(c, d)))]
        async fn result(&self) -> Result<()> {
            self.0.push("result");
            Ok(())
        }
    }
    let log = Log::default();
    Deep(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.count("result"), 1);
    let (a, b, c, d, r) =
        (log.position("a"), log.position("b"), log.position("c"), log.position("d"), log.position("result"));
    assert!((r > a && r > b) || (r > c && r > d), "{:?}", log.entries());
}

/// C09: complex `and`/`or` fan-out: every step runs once, joins after their members.
#[tokio::test]
async fn c09_complex_and_or_branching() {
    struct Fan(Log);
    #[flow]
    impl Fan {
        #[start]
        async fn init(&self) -> Result<()> {
            self.0.push("init");
            Ok(())
        }
        #[listen(init)]
        async fn branch_1a(&self) -> Result<()> {
            self.0.push("1a");
            Ok(())
        }
        #[listen(init)]
        async fn branch_1b(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.0.push("1b");
            Ok(())
        }
        #[listen(init)]
        async fn branch_1c(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.0.push("1c");
            Ok(())
        }
        #[listen(and(branch_1a, branch_1b))]
        async fn branch_2a(&self) -> Result<()> {
            self.0.push("2a");
            Ok(())
        }
        #[listen(or(branch_1a, branch_1b, branch_1c))]
        async fn branch_2b(&self) -> Result<()> {
            self.0.push("2b");
            Ok(())
        }
        #[listen(and(branch_2a, branch_2b))]
        async fn last(&self) -> Result<&'static str> {
            self.0.push("last");
            Ok("last")
        }
    }
    let log = Log::default();
    let run = Fan(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    for s in ["init", "1a", "1b", "1c", "2a", "2b", "last"] {
        assert_eq!(log.count(s), 1, "{s}: {:?}", log.entries());
    }
    assert!(log.position("2a") > log.position("1a") && log.position("2a") > log.position("1b"));
    assert!(log.position("last") > log.position("2a") && log.position("last") > log.position("2b"));
    // 1c may finish after `last`; the output is still `last`'s (it is declared last and
    // nothing listens to it), whichever finishes last.
    assert_eq!(run.output::<String>().unwrap(), "last");
}

/// C11: an `and` nested in an `or` waits for both members; neither sibling is cancelled.
#[tokio::test]
async fn c11_and_inside_or_waits_for_both() {
    struct NoRace(Log);
    #[flow]
    impl NoRace {
        #[start]
        async fn go(&self) -> Result<()> {
            Ok(())
        }
        #[listen(go)]
        async fn a(&self) -> Result<()> {
            self.0.push("a");
            Ok(())
        }
        #[listen(go)]
        async fn b(&self) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0.push("b");
            Ok(())
        }
        /// Returns "ok" (terminal) here; "fallback" is the alternative `done` also accepts.
        #[router(go, routes = ["ok", "fallback"], terminal = ["ok"])]
        async fn check(&self) -> Result<String> {
            Ok("ok".into())
        }
        #[listen(or(and(a, b), "fallback"))]
        async fn done(&self) -> Result<()> {
            self.0.push("done");
            Ok(())
        }
    }
    let log = Log::default();
    NoRace(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["a", "b", "done"]);
}

/// C13: a listener receives the triggering step's output; one without a parameter gets none.
#[tokio::test]
async fn c13_listener_argument_passing() {
    struct Args(Log);
    #[flow]
    impl Args {
        #[start]
        async fn step_1(&self) -> Result<String> {
            Ok("step_1_result".into())
        }
        #[listen(step_1)]
        async fn no_params(&self) -> Result<()> {
            Ok(())
        }
        // Declared last of the two steps nothing listens to, so its output is the run's.
        #[listen(step_1)]
        async fn step_2(&self, result: String) -> Result<&'static str> {
            self.0.push(result);
            Ok("final_result")
        }
    }
    let log = Log::default();
    let run = Args(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["step_1_result"]);
    assert_eq!(run.output::<String>().unwrap(), "final_result");
}

/// C15: invalid step names and conditions are rejected when the flow is built. (With the
/// macro, a name is a Rust identifier and a condition a trigger expression, so both are
/// compile errors: see tests/ui.)
#[test]
fn c15_invalid_method_names_and_conditions_are_rejected() {
    let err =
        FlowBuilder::<()>::new("f").start("process-rows", |_cx, (): ()| async move { Ok(()) }).build().err().unwrap();
    assert!(err.to_string().contains("must match ^[A-Za-z_][A-Za-z0-9_]*$"), "{err}");

    let err = FlowBuilder::<()>::new("f")
        .start("a", |_cx, (): ()| async move { Ok(()) })
        .listen("b", trigger::or([]), |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Build(BuildError::EmptyTrigger { ref step, .. }) if step == "b"), "{err}");
}

#[test]
fn unknown_step_in_a_builder_trigger_is_a_build_error_with_a_suggestion() {
    let err = FlowBuilder::<()>::new("pipeline")
        .start("research", |_cx, (): ()| async move { Ok(()) })
        .listen("write", "reserch", |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "step `write` is triggered by `reserch`, but flow `pipeline` has no step of that name (did you mean `research`?)"
    );
}

#[test]
fn a_step_listening_to_itself_is_a_build_error() {
    let err = FlowBuilder::<()>::new("f")
        .start("a", |_cx, (): ()| async move { Ok(()) })
        .listen("b", or([step("a"), step("b")]), |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Build(BuildError::Graph(GraphRule::SelfTrigger { ref step })) if step == "b"),
        "{err}"
    );
}

#[test]
fn duplicate_step_names_are_a_build_error() {
    let err = FlowBuilder::<()>::new("f")
        .start("a", |_cx, (): ()| async move { Ok(()) })
        .listen("a", "a", |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Build(BuildError::DuplicateStep { .. })), "{err}");
}

#[test]
fn a_payload_type_mismatch_names_both_steps_and_both_types() {
    let err = FlowBuilder::<()>::new("f")
        .start("count", |_cx, (): ()| async move { Ok(3u32) })
        .listen("shout", "count", |_cx, text: String| async move { Ok(text.to_uppercase()) })
        .build()
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("step `shout` takes an input of type `alloc::string::String`"), "{msg}");
    assert!(msg.contains("step `count`, whose output is `u32`"), "{msg}");
}

#[tokio::test]
async fn a_json_value_input_accepts_any_output() {
    let flow = FlowBuilder::<()>::new("f")
        .start("count", |_cx, (): ()| async move { Ok(3u32) })
        .listen("show", "count", |_cx, v: serde_json::Value| async move { Ok(format!("got {v}")) })
        .build()
        .unwrap();
    assert_eq!(flow.kickoff(()).await.unwrap().output::<String>().unwrap(), "got 3");
}

/// A label trigger spelled like a step (a CrewAI port's `listen("send")`) is refused with the
/// spelling that names the step.
#[test]
fn a_label_named_like_a_step_suggests_the_step() {
    let err = crewflow::FlowBuilder::<()>::new("mailer")
        .start("send", |_cx, (): ()| async move { Ok(()) })
        .listen("confirm", trigger::label("send"), |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("listens to route `send`"), "{err}");
    assert!(err.contains(r#"`send` is a step: to run after it, name the step, not a label"#), "{err}");
    assert!(err.contains(r#"step("send") in the builder"#), "{err}");
}

/// `|` and `&` spell triggers alike in `#[listen(..)]` and in the builder (`&` binds tighter),
/// and build the same tree as `or(..)` / `and(..)`.
#[tokio::test]
async fn operators_spell_triggers_alike_in_the_macro_and_the_builder() {
    use crewflow::trigger::{and, label, or, step};
    struct Ops(Log);
    #[flow]
    impl Ops {
        #[start]
        async fn a(&self) -> Result<()> {
            Ok(())
        }
        #[start]
        async fn b(&self) -> Result<()> {
            Ok(())
        }
        #[router(a, routes = ["again"], terminal = ["again"])]
        async fn pick(&self) -> Result<String> {
            Ok("again".into())
        }
        #[listen(a & b | "again")]
        async fn joined(&self) -> Result<()> {
            self.0.push("joined");
            Ok(())
        }
        #[listen(and(a, b) | ("again" & pick))]
        async fn nested(&self) -> Result<()> {
            Ok(())
        }
    }
    let log = Log::default();
    let flow = Ops(log.clone()).into_flow().unwrap();
    let graph = flow.graph();
    let trigger_of = |name: &str| graph.trigger(graph.step_index(name).unwrap()).unwrap().clone();
    assert_eq!(trigger_of("joined"), or([and([step("a"), step("b")]), label("again")]));
    assert_eq!(trigger_of("joined"), step("a") & step("b") | label("again"));
    assert_eq!(trigger_of("nested"), or([and([step("a"), step("b")]), and([label("again"), step("pick")])]));
    flow.kickoff(()).await.unwrap();
    assert!(log.count("joined") >= 1);
}

/// Every step knows where it is defined: `#[flow]` records the method's name (file, line,
/// column), the builder the call that added the step; pictures show it when a step is clicked.
#[test]
fn every_step_knows_where_it_is_defined() {
    struct Located;
    #[flow]
    impl Located {
        #[start]
        async fn first(&self) -> Result<()> {
            Ok(())
        }

        #[listen(first)]
        async fn second(&self) -> Result<()> {
            Ok(())
        }
    }
    let start_line = line!() - 9; // the line of `async fn first`
    let flow = Located.into_flow().unwrap();
    let at = |flow: &Flow<()>, name: &str| {
        let g = flow.graph();
        g.source(g.step_index(name).unwrap()).map(ToString::to_string)
    };
    let file = file!();
    assert_eq!(at(&flow, "first").as_deref(), Some(&*format!("{file}:{start_line}:18")));
    assert_eq!(at(&flow, "second").as_deref(), Some(&*format!("{file}:{}:18", start_line + 5)));

    // the builder: the line and column of the `start` call
    let built_at = line!() + 1;
    let flow = FlowBuilder::<()>::new("built").start("only", |_cx, (): ()| async { Ok(()) }).build().unwrap();
    assert_eq!(at(&flow, "only").as_deref(), Some(&*format!("{file}:{built_at}:48")));
    let flow = FlowBuilder::<()>::new("placed")
        .start("only", |_cx, (): ()| async { Ok(()) })
        .defined_at("flows/placed.rs", 7, 0)
        .build()
        .unwrap();
    assert_eq!(at(&flow, "only").as_deref(), Some("flows/placed.rs:7"));
}
