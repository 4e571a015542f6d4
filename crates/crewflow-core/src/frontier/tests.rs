//! Unit and property tests of the frontier alone: no driver, no async, no clock.
//!
//! A small simulator completes in-flight activations in an order chosen by the test (or by
//! proptest), with router decisions given as a function of the router and how many times it
//! ran. That is enough to check the trigger algebra's semantics under every interleaving.
//! Kept as one file on purpose: the simulator and the cases that drive it are read together.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::graph::{GraphSpec, RouterSpec, StartKind, StepSpec};
use crate::trigger::{Trigger, and, label, or, step};

// ---------- building graphs ----------

fn spec(name: &str, start: StartKind, trigger: Option<Trigger>, routes: &[&str], terminal: &[&str]) -> StepSpec {
    StepSpec {
        name: name.into(),
        start,
        trigger,
        router: (!routes.is_empty()).then(|| RouterSpec {
            labels: routes.iter().map(|r| Arc::from(*r)).collect(),
            terminal: terminal.iter().map(|r| Arc::from(*r)).collect(),
            route_type: "String",
        }),
        input: None,
        output: None,
        source: None,
    }
}

fn start(name: &str) -> StepSpec {
    spec(name, StartKind::Always, None, &[], &[])
}
fn start_on(name: &str, t: Trigger) -> StepSpec {
    spec(name, StartKind::Conditional, Some(t), &[], &[])
}
fn listen(name: &str, t: impl Into<Trigger>) -> StepSpec {
    spec(name, StartKind::Listener, Some(t.into()), &[], &[])
}
fn router(name: &str, t: impl Into<Trigger>, routes: &[&str], terminal: &[&str]) -> StepSpec {
    spec(name, StartKind::Listener, Some(t.into()), routes, terminal)
}
fn start_router(name: &str, routes: &[&str], terminal: &[&str]) -> StepSpec {
    spec(name, StartKind::Always, None, routes, terminal)
}

fn graph(steps: Vec<StepSpec>) -> Graph {
    match (GraphSpec { name: "test".into(), steps }).compile() {
        Ok(g) => g,
        Err(e) => panic!("test graph does not compile: {e}"),
    }
}

// ---------- the simulator ----------

/// How the simulated run went.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trace {
    /// Step names in completion order.
    order: Vec<String>,
    /// Completions per step.
    counts: BTreeMap<String, usize>,
    final_step: Option<String>,
    error: Option<String>,
}

/// Runs `graph` to completion. `pick(in_flight)` chooses which in-flight activation
/// completes next; `route(router, nth_call)` chooses a router's label.
fn simulate_with(
    graph: &Graph,
    budget: u64,
    mut pick: impl FnMut(&[Activation]) -> usize,
    route: impl Fn(&str, u32) -> String,
    mut checkpoint: impl FnMut(&mut Frontier),
) -> Trace {
    let mut f = Frontier::new(graph, budget);
    let mut trace = Trace { order: vec![], counts: BTreeMap::new(), final_step: None, error: None };
    let mut calls: BTreeMap<u32, u32> = BTreeMap::new();
    let mut in_flight: Vec<Activation> = match f.start(graph, |_| true) {
        Ok(a) => a,
        Err(e) => {
            trace.error = Some(e.to_string());
            return trace;
        }
    };
    let mut step_of: BTreeMap<u64, u32> = in_flight.iter().map(|a| (a.id, a.step)).collect();
    while !in_flight.is_empty() {
        let a = in_flight.remove(pick(&in_flight) % in_flight.len());
        let name = graph.step_name(a.step).to_string();
        let n = calls.entry(a.step).or_default();
        *n += 1;
        let label = graph.is_router(a.step).then(|| {
            let l = route(&name, *n);
            graph.label_index(&l).unwrap_or_else(|| panic!("router {name} chose unknown label {l}"))
        });
        trace.order.push(name.clone());
        *trace.counts.entry(name).or_default() += 1;
        match f.complete(graph, a.id, label) {
            Ok(ready) => {
                for r in &ready {
                    step_of.insert(r.id, r.step);
                }
                in_flight.extend(ready);
            }
            Err(e) => {
                trace.error = Some(e.to_string());
                return trace;
            }
        }
        checkpoint(&mut f);
    }
    assert!(f.is_idle());
    trace.final_step = f.final_activation().map(|id| graph.step_name(step_of[&id]).to_string());
    trace
}

/// [`simulate_with`], picking by the number of activations in flight.
fn simulate(
    graph: &Graph,
    budget: u64,
    mut pick: impl FnMut(usize) -> usize,
    route: impl Fn(&str, u32) -> String,
    checkpoint: impl FnMut(&mut Frontier),
) -> Trace {
    simulate_with(graph, budget, |a| pick(a.len()), route, checkpoint)
}

fn fifo(g: &Graph, route: impl Fn(&str, u32) -> String) -> Trace {
    simulate(g, 10_000, |_| 0, route, |_| {})
}

fn lifo(g: &Graph, route: impl Fn(&str, u32) -> String) -> Trace {
    simulate(g, 10_000, |n| n - 1, route, |_| {})
}

fn no_routes(_: &str, _: u32) -> String {
    unreachable!("no routers here")
}

fn count(t: &Trace, step: &str) -> usize {
    t.counts.get(step).copied().unwrap_or(0)
}

// ---------- triggers (reference cases A) ----------

#[test]
fn c01_linear_chain_runs_in_order() {
    let g = graph(vec![start("step_1"), listen("step_2", "step_1")]);
    let t = fifo(&g, no_routes);
    assert_eq!(t.order, ["step_1", "step_2"]);
    assert_eq!(t.final_step.as_deref(), Some("step_2"));
}

#[test]
fn c03_and_join_of_two_starts_runs_once_after_both() {
    let g = graph(vec![start("s1"), start("s2"), listen("s3", and([step("s1"), step("s2")]))]);
    for t in [fifo(&g, no_routes), lifo(&g, no_routes)] {
        assert_eq!(count(&t, "s3"), 1);
        assert_eq!(t.order.last().map(String::as_str), Some("s3"));
    }
}

#[test]
fn or_of_two_parallel_starts_fires_once() {
    let g = graph(vec![start("a"), start("b"), listen("either", or([step("a"), step("b")]))]);
    for t in [fifo(&g, no_routes), lifo(&g, no_routes)] {
        assert_eq!(count(&t, "either"), 1, "{t:?}");
    }
}

#[test]
fn c05_single_branch_or_inside_and() {
    let g = graph(vec![
        start("event_a"),
        listen("event_b", "event_a"),
        router("emit_event_c", "event_b", &["event_c"], &[]),
        listen("event_d", and([step("event_a"), step("event_b"), or([label("event_c")])])),
    ]);
    let t = fifo(&g, |_, _| "event_c".into());
    assert_eq!(count(&t, "event_d"), 1);
    assert_eq!(t.final_step.as_deref(), Some("event_d"));
}

#[test]
fn c07_nested_or_of_ands_over_four_starts_runs_once() {
    let g = graph(vec![
        start("a"),
        start("b"),
        start("c"),
        start("d"),
        listen("result", or([and([step("a"), step("b")]), and([step("c"), step("d")])])),
    ]);
    for order in [vec![0, 0, 0, 0], vec![3, 2, 1, 0], vec![2, 0, 1, 0]] {
        let mut picks = order.into_iter();
        let t = simulate(&g, 100, |_| picks.next().unwrap_or(0), no_routes, |_| {});
        assert_eq!(count(&t, "result"), 1, "{t:?}");
    }
}

#[test]
fn c09_complex_and_or_fan_out() {
    let g = graph(vec![
        start("init"),
        listen("l1a", "init"),
        listen("l1b", "init"),
        listen("l1c", "init"),
        listen("l2a", and([step("l1a"), step("l1b")])),
        listen("l2b", or([step("l1a"), step("l1b"), step("l1c")])),
        listen("last", and([step("l2a"), step("l2b")])),
    ]);
    for t in [fifo(&g, no_routes), lifo(&g, no_routes)] {
        for s in ["init", "l1a", "l1b", "l1c", "l2a", "l2b", "last"] {
            assert_eq!(count(&t, s), 1, "{s} in {t:?}");
        }
        let pos = |s: &str| t.order.iter().position(|x| x == s).unwrap_or(usize::MAX);
        assert!(pos("l2a") > pos("l1a") && pos("l2a") > pos("l1b"));
        assert!(pos("last") > pos("l2a") && pos("last") > pos("l2b"));
        assert_eq!(t.final_step.as_deref(), Some("last"));
    }
}

#[test]
fn c11_and_nested_in_or_waits_for_both() {
    let g = graph(vec![
        start("go"),
        listen("a", "go"),
        listen("b", "go"),
        router("fallback_router", "go", &["fallback"], &["fallback"]),
        listen("done", or([and([step("a"), step("b")]), label("fallback")])),
    ]);
    // The fallback label arrives first here; `done` fires on it, and the and-branch
    // completing later in the same round does not fire it a second time.
    let t = fifo(&g, |_, _| "fallback".into());
    assert_eq!(count(&t, "done"), 1);
    assert_eq!(count(&t, "a"), 1);
    assert_eq!(count(&t, "b"), 1);
}

#[test]
fn x06_or_listener_downstream_of_its_own_member_fires_once() {
    // The docs' example: logger listens to or(start_method, second_method), and second_method
    // listens to start_method. second_method is a descendant, not a new round: once.
    let g = graph(vec![
        start("start_method"),
        listen("second_method", "start_method"),
        listen("logger", or([step("start_method"), step("second_method")])),
    ]);
    assert_eq!(count(&fifo(&g, no_routes), "logger"), 1);
}

// ---------- routers (B) ----------

#[test]
fn c17_router_selects_one_branch() {
    let g = graph(vec![
        start("start_method"),
        router("router", "start_method", &["step_if_true", "step_if_false"], &[]),
        listen("step_if_true", label("step_if_true")),
        listen("step_if_false", label("step_if_false")),
    ]);
    let t = fifo(&g, |_, _| "step_if_true".into());
    assert_eq!(t.order, ["start_method", "router", "step_if_true"]);
}

#[test]
fn labels_and_step_names_are_separate_namespaces() {
    // A route called `write` does not fire the listeners of a step called `write`.
    let g = graph(vec![
        start("begin"),
        router("r", "begin", &["write"], &[]),
        listen("write", label("write")),
        listen("after_write_step", "write"),
    ]);
    let t = fifo(&g, |_, _| "write".into());
    assert_eq!(t.order, ["begin", "r", "write", "after_write_step"]);
}

#[test]
fn c21_routers_listening_to_a_routers_name_all_run() {
    let g = graph(vec![
        start("scan"),
        router("diagnose", "scan", &["diagnosis_complete"], &["diagnosis_complete"]),
        router("diabetes_router", "diagnose", &["diabetes"], &[]),
        router("hypertension_router", "diagnose", &["hypertension"], &[]),
        router("anemia_router", "diagnose", &["anemia"], &[]),
        listen("diabetes_analysis", label("diabetes")),
        listen("hypertension_analysis", label("hypertension")),
        listen("anemia_analysis", label("anemia")),
    ]);
    let t = lifo(&g, |r, _| match r {
        "diagnose" => "diagnosis_complete".into(),
        "diabetes_router" => "diabetes".into(),
        "hypertension_router" => "hypertension".into(),
        _ => "anemia".into(),
    });
    for s in ["diabetes_router", "hypertension_router", "anemia_router"] {
        assert_eq!(count(&t, s), 1);
    }
    for s in ["diabetes_analysis", "hypertension_analysis", "anemia_analysis"] {
        assert_eq!(count(&t, s), 1);
    }
}

#[test]
fn x01_sibling_routers_feed_every_label_to_routers() {
    let g = graph(vec![
        start("x"),
        router("r1", "x", &["a"], &[]),
        router("r2", "x", &["b"], &[]),
        router("r3", label("a"), &["c"], &[]),
        listen("on_a", label("a")),
        listen("on_b", label("b")),
        listen("on_c", label("c")),
    ]);
    let t = fifo(&g, |r, _| match r {
        "r1" => "a".into(),
        "r2" => "b".into(),
        _ => "c".into(),
    });
    for s in ["r1", "r2", "r3", "on_a", "on_b", "on_c"] {
        assert_eq!(count(&t, s), 1, "{s}: {t:?}");
    }
}

#[test]
fn c23_start_router_dispatches_its_label() {
    let g = graph(vec![start_router("decide", &["continue"], &[]), listen("handle_continue", label("continue"))]);
    let t = fifo(&g, |_, _| "continue".into());
    assert_eq!(t.order, ["decide", "handle_continue"]);
}

#[test]
fn c25_conditional_start_reentered_by_router_label() {
    let g = graph(vec![
        start("begin"),
        router("route", "begin", &["branch_event"], &[]),
        start_on("branch", label("branch_event")),
        listen("done", "branch"),
    ]);
    let t = fifo(&g, |_, _| "branch_event".into());
    assert_eq!(t.order, ["begin", "route", "branch", "done"]);
}

#[test]
fn x03_conditional_starts_fire_on_start_router_labels_and_step_completions() {
    let g = graph(vec![start_router("r", &["go"], &[]), start_on("s", label("go")), listen("l", label("go"))]);
    let t = fifo(&g, |_, _| "go".into());
    assert_eq!(count(&t, "s"), 1);
    assert_eq!(count(&t, "l"), 1);

    let g = graph(vec![
        start("init"),
        start_on("maybe_begin", step("init")),
        listen("proceed", and([step("init"), step("maybe_begin")])),
    ]);
    let t = fifo(&g, no_routes);
    assert_eq!(t.order, ["init", "maybe_begin", "proceed"]);
}

// ---------- cycles (C) ----------

#[test]
fn c27_conditional_start_loop_without_unconditional_start() {
    let g = graph(vec![
        start_on("step_1", label("loop")),
        listen("step_2", "step_1"),
        router("step_3", "step_2", &["loop", "exit"], &["exit"]),
    ]);
    let t = fifo(&g, |_, n| if n < 3 { "loop".into() } else { "exit".into() });
    assert_eq!(t.order, ["step_1", "step_2", "step_3"].repeat(3));
    assert_eq!(t.final_step.as_deref(), Some("step_3"));
}

#[test]
fn c29_or_listener_fires_again_each_loop_iteration() {
    let g = graph(vec![
        start("kick"),
        router("initial_router", "kick", &["SignalA"], &[]),
        listen("handler", or([label("SignalA"), label("SignalB")])),
        router("loop_router", "handler", &["SignalB", "stop"], &["stop"]),
    ]);
    let t = fifo(&g, |r, n| match r {
        "initial_router" => "SignalA".into(),
        _ if n < 3 => "SignalB".into(),
        _ => "stop".into(),
    });
    assert_eq!(count(&t, "handler"), 3);
}

fn c31_graph() -> Graph {
    graph(vec![
        start("begin"),
        router("route", or([step("begin"), step("loop_back")]), &["type_a", "type_b", "done"], &["done"]),
        listen("handler_a", label("type_a")),
        listen("handler_b", label("type_b")),
        listen("merge", or([step("handler_a"), step("handler_b")])),
        listen("loop_back", "merge"),
    ])
}

fn c31_route(_: &str, i: u32) -> String {
    match i {
        i if i > 3 => "done".into(),
        i if i % 2 == 1 => "type_a".into(),
        _ => "type_b".into(),
    }
}

#[test]
fn c31_or_merge_of_alternating_handlers_fires_every_iteration() {
    let t = fifo(&c31_graph(), c31_route);
    assert_eq!(count(&t, "merge"), 3);
    assert_eq!(count(&t, "loop_back"), 3);
    assert_eq!(count(&t, "handler_a"), 2);
    assert_eq!(count(&t, "handler_b"), 1);
    assert_eq!(count(&t, "route"), 4);
}

#[test]
fn c33_loop_guard_names_the_step_and_the_budget() {
    let g = graph(vec![start_on("step", label("retry")), router("decide", "step", &["retry", "stop"], &["stop"])]);
    let t = simulate(&g, 2, |_| 0, |_, _| "retry".into(), |_| {});
    let err = t.error.unwrap_or_default();
    assert!(err.contains("running `step` would be step 3"), "{err}");
    assert!(err.contains("budget of 2"), "{err}");
}

#[test]
fn x10_and_join_never_mixes_loop_iterations() {
    // Pass 1 emits only_a, pass 2 only_b: the join must not fire from a(1) + b(2).
    let g = graph(vec![
        start("s"),
        router("r", or([step("s"), step("again")]), &["only_a", "only_b", "stop"], &["stop"]),
        listen("a", label("only_a")),
        listen("b", label("only_b")),
        listen("again", or([step("a"), step("b")])),
        listen("j", and([step("a"), step("b")])),
    ]);
    let t = fifo(&g, |_, n| match n {
        1 => "only_a".into(),
        2 => "only_b".into(),
        _ => "stop".into(),
    });
    assert_eq!(count(&t, "a"), 1);
    assert_eq!(count(&t, "b"), 1);
    assert_eq!(count(&t, "j"), 0, "{t:?}");
}

#[test]
fn and_join_inside_a_loop_fires_once_per_iteration() {
    let g = graph(vec![
        start("s"),
        router("r", or([step("s"), step("j")]), &["go", "stop"], &["stop"]),
        listen("x", label("go")),
        listen("a", "x"),
        listen("b", "x"),
        listen("j", and([step("a"), step("b")])),
    ]);
    for t in [
        fifo(&g, |_, n| if n <= 5 { "go".into() } else { "stop".into() }),
        lifo(&g, |_, n| if n <= 5 { "go".into() } else { "stop".into() }),
    ] {
        assert_eq!(count(&t, "j"), 5, "{t:?}");
        assert_eq!(count(&t, "r"), 6);
    }
}

#[test]
fn an_unrelated_loop_does_not_rearm_an_or_listener() {
    // Spec weakness 7: upstream clears every `or` mark whenever any method re-runs. Here a
    // loop (`spin` <-> `tock`) goes round four times after `a` fired `either` and before the
    // slow start `b` finishes; `either` still fires once, because `b` is not a new round.
    let g = graph(vec![
        start("a"),
        start("b"),
        start("tick"),
        listen("either", or([step("a"), step("b")])),
        router("spin", or([step("tick"), step("tock")]), &["again", "stop"], &["stop"]),
        listen("tock", label("again")),
    ]);
    let b = g.step_index("b").unwrap_or(u32::MAX);
    let t = simulate_with(
        &g,
        100,
        |in_flight| in_flight.iter().position(|a| a.step != b).unwrap_or(0),
        |_, n| if n < 5 { "again".into() } else { "stop".into() },
        |_| {},
    );
    assert_eq!(count(&t, "tock"), 4);
    assert_eq!(t.order.last().map(String::as_str), Some("b"), "{t:?}");
    assert_eq!(count(&t, "either"), 1, "{t:?}");
}

#[test]
fn open_watches_stay_bounded_in_long_loops() {
    let g = c31_graph();
    let mut max_open = 0;
    let t = simulate(
        &g,
        100_000,
        |_| 0,
        |_, n| {
            if n > 2000 {
                "done".into()
            } else if n % 2 == 1 {
                "type_a".into()
            } else {
                "type_b".into()
            }
        },
        |f| {
            max_open = max_open.max(f.open_watches());
        },
    );
    assert_eq!(count(&t, "merge"), 2000);
    assert!(max_open <= 4, "open watches grew to {max_open}");
}

#[test]
fn final_output_is_the_listened_to_nobody_step_declared_last() {
    // `l` is declared first but `or(a, b)` fires on whichever finishes first; the output
    // is always `l`'s, never the unlucky member's.
    let g = graph(vec![listen("l", or([step("a"), step("b")])), start("a"), start("b")]);
    assert_eq!(fifo(&g, no_routes).final_step.as_deref(), Some("l"));
    assert_eq!(lifo(&g, no_routes).final_step.as_deref(), Some("l"));
}

#[test]
fn a_frontier_survives_serialization_mid_run() {
    let g = c31_graph();
    let plain = fifo(&g, c31_route);
    let round_tripped = simulate(
        &g,
        10_000,
        |_| 0,
        c31_route,
        |f| {
            let json = serde_json::to_string(f).unwrap_or_default();
            match serde_json::from_str::<Frontier>(&json) {
                Ok(back) => *f = back,
                Err(e) => panic!("frontier did not deserialize: {e}\n{json}"),
            }
            assert!(f.fits(&g));
        },
    );
    assert_eq!(plain, round_tripped);
}

// ---------- properties ----------

/// A random acyclic flow: `starts` start steps, then listeners whose triggers only mention
/// earlier steps (so nothing loops), in single, `or`, `and` and nested shapes.
fn dag_strategy() -> impl Strategy<Value = Vec<StepSpec>> {
    (1usize..4, 1usize..10)
        .prop_flat_map(|(starts, listeners)| {
            let shapes = (0..listeners)
                .map(move |i| {
                    let earlier = starts + i;
                    (0u8..4, proptest::collection::vec(0..earlier, 1..4), proptest::collection::vec(0..earlier, 1..3))
                })
                .collect::<Vec<_>>();
            (Just(starts), shapes)
        })
        .prop_map(|(starts, shapes)| {
            let name = |i: usize| format!("s{i}");
            let mut steps: Vec<StepSpec> = (0..starts).map(|i| start(&name(i))).collect();
            for (i, (kind, xs, ys)) in shapes.into_iter().enumerate() {
                let leaves = |v: &[usize]| v.iter().map(|j| step(name(*j))).collect::<Vec<_>>();
                let t = match kind {
                    0 => step(name(xs[0])),
                    1 => or(leaves(&xs)),
                    2 => and(leaves(&xs)),
                    _ => or([and(leaves(&xs)), and(leaves(&ys))]),
                };
                steps.push(listen(&name(starts + i), t));
            }
            steps
        })
}

/// A random acyclic flow with routers: each listener is a plain step, a router choosing one of
/// two labels, or a conditional start; later steps trigger on earlier steps and on the labels
/// of earlier routers (so routers chain). A router's choice depends only on its name.
fn routed_dag_strategy() -> impl Strategy<Value = Vec<StepSpec>> {
    (1usize..3, 2usize..10)
        .prop_flat_map(|(starts, listeners)| {
            let shapes = (0..listeners)
                .map(move |i| {
                    let earlier = starts + i;
                    (0u8..3, 0u8..3, proptest::collection::vec((0..earlier, any::<bool>()), 1..3))
                })
                .collect::<Vec<_>>();
            (Just(starts), shapes)
        })
        .prop_map(|(starts, shapes)| {
            let name = |i: usize| format!("s{i}");
            let mut steps: Vec<StepSpec> = (0..starts).map(|i| start(&name(i))).collect();
            let mut routers: Vec<usize> = Vec::new();
            for (i, (kind, combine, members)) in shapes.into_iter().enumerate() {
                let me = starts + i;
                let leaves: Vec<Trigger> = members
                    .iter()
                    .map(|(j, use_label)| match routers.iter().rev().find(|r| **r <= *j) {
                        Some(r) if *use_label => label(format!("{}_{}", name(*r), j % 2)),
                        _ => step(name(*j)),
                    })
                    .collect();
                let t = if combine == 0 { and(leaves) } else { or(leaves) };
                let lbl = |k: usize| format!("{}_{k}", name(me));
                steps.push(match kind {
                    0 => listen(&name(me), t),
                    1 => {
                        routers.push(me);
                        spec(&name(me), StartKind::Listener, Some(t), &[&lbl(0), &lbl(1)], &[&lbl(0), &lbl(1)])
                    }
                    _ => start_on(&name(me), t),
                });
            }
            steps
        })
}

fn route_by_name(router: &str, _: u32) -> String {
    let pick = router.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 2;
    format!("{router}_{pick}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// In an acyclic flow every step runs at most once, and which steps run (and the final
    /// output) does not depend on the order in which concurrent steps finish.
    #[test]
    fn acyclic_flows_are_schedule_independent(steps in dag_strategy(), picks in proptest::collection::vec(any::<usize>(), 64)) {
        let g = graph(steps);
        let reference = fifo(&g, no_routes);
        let mut i = 0;
        let other = simulate(&g, 10_000, |n| { i += 1; picks[i % picks.len()] % n }, no_routes, |_| {});
        prop_assert!(reference.counts.values().all(|c| *c == 1));
        prop_assert_eq!(&reference.counts, &other.counts);
        prop_assert_eq!(&reference.final_step, &other.final_step);
    }

    /// A loop whose body fans out into parallel branches and joins them again runs the body
    /// exactly once per iteration, whatever the completion order.
    #[test]
    fn loops_with_joins_run_once_per_iteration(width in 1usize..5, iterations in 1u32..8, picks in proptest::collection::vec(any::<usize>(), 64)) {
        let mut steps = vec![
            start("s"),
            router("r", or([step("s"), step("join")]), &["go", "stop"], &["stop"]),
            listen("x", label("go")),
        ];
        let branch = |i: usize| format!("b{i}");
        for i in 0..width {
            steps.push(listen(&branch(i), "x"));
        }
        steps.push(listen("join", and((0..width).map(|i| step(branch(i))))));
        steps.push(listen("either", or((0..width).map(|i| step(branch(i))))));
        let g = graph(steps);
        let mut i = 0;
        let t = simulate(&g, 10_000, |n| { i += 1; picks[i % picks.len()] % n }, |_, n| if n <= iterations { "go".into() } else { "stop".into() }, |_| {});
        prop_assert_eq!(&t.error, &None);
        let k = iterations as usize;
        prop_assert_eq!(count(&t, "r"), k + 1);
        prop_assert_eq!(count(&t, "join"), k);
        prop_assert_eq!(count(&t, "either"), k);
        for b in 0..width {
            prop_assert_eq!(count(&t, &branch(b)), k);
        }
    }

    /// The step budget is never exceeded, and it is hit exactly when the run needs more.
    #[test]
    fn the_budget_bounds_every_run(iterations in 1u32..30, budget in 1u64..60) {
        let g = graph(vec![
            start_on("step", label("retry")),
            router("decide", "step", &["retry", "stop"], &["stop"]),
        ]);
        let needed = 2 * u64::from(iterations);
        let t = simulate(&g, budget, |_| 0, |_, n| if n < iterations { "retry".into() } else { "stop".into() }, |_| {});
        let ran = t.order.len() as u64;
        prop_assert!(ran <= budget);
        prop_assert_eq!(t.error.is_some(), needed > budget);
    }

    /// With routers chaining on each other's labels and conditional starts on them, which steps
    /// run and the final output still do not depend on completion order.
    #[test]
    fn routed_flows_are_schedule_independent(steps in routed_dag_strategy(), picks in proptest::collection::vec(any::<usize>(), 64)) {
        let g = graph(steps);
        let reference = fifo(&g, route_by_name);
        let mut i = 0;
        let other = simulate(&g, 10_000, |n| { i += 1; picks[i % picks.len()] % n }, route_by_name, |_| {});
        prop_assert!(reference.counts.values().all(|c| *c == 1));
        prop_assert_eq!(&reference.counts, &other.counts);
        prop_assert_eq!(&reference.final_step, &other.final_step);
    }

    /// Checkpointing the frontier (JSON round trip) after any completion changes nothing.
    #[test]
    fn checkpoints_are_exact(steps in dag_strategy(), every in 1usize..4) {
        let g = graph(steps);
        let plain = fifo(&g, no_routes);
        let mut n = 0;
        let resumed = simulate(&g, 10_000, |_| 0, no_routes, |f| {
            n += 1;
            if n % every == 0 {
                let json = serde_json::to_vec(f).unwrap_or_default();
                if let Ok(back) = serde_json::from_slice(&json) { *f = back; }
            }
        });
        prop_assert_eq!(plain, resumed);
    }
}
