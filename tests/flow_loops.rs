//! Cycles, loops and re-arming: reference cases C (C27–C33) and X10, through the real driver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::Log;
use crewflow::Error;
use crewflow::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Loop {
    #[route(rename = "loop")]
    Again,
    #[route(rename = "exit", terminal)]
    Exit,
}

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    counter: u32,
}

/// C27: a loop through a conditional start, with no unconditional start (so the conditional
/// start is the entry point).
#[tokio::test]
async fn c27_conditional_start_loop() {
    struct Cyclic(Log);
    #[flow(state = Counter)]
    impl Cyclic {
        #[start(Loop::Again)]
        async fn step_1(&self, cx: &Cx<Counter>) -> Result<()> {
            self.0.push(format!("step_1_{}", cx.state(|s| s.counter)));
            Ok(())
        }
        #[listen(step_1)]
        async fn step_2(&self, cx: &Cx<Counter>) -> Result<()> {
            self.0.push(format!("step_2_{}", cx.state(|s| s.counter)));
            Ok(())
        }
        #[router(step_2)]
        async fn step_3(&self, cx: &Cx<Counter>) -> Result<Loop> {
            let n = cx.state(|s| s.counter);
            self.0.push(format!("step_3_{n}"));
            let n = cx.update(|s| {
                s.counter += 1;
                s.counter
            });
            Ok(if n < 3 { Loop::Again } else { Loop::Exit })
        }
    }
    let log = Log::default();
    let run = Cyclic(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    let expected: Vec<String> =
        (0..3).flat_map(|i| [format!("step_1_{i}"), format!("step_2_{i}"), format!("step_3_{i}")]).collect();
    assert_eq!(log.entries(), expected);
    assert_eq!(run.state.counter, 3);
    assert_eq!(run.output::<Loop>().unwrap(), Loop::Exit);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Signal {
    SignalA,
    SignalB,
    #[route(terminal)]
    Stop,
}

/// C29: an `or` listener fires again on every iteration of a router loop.
#[tokio::test]
async fn c29_or_listener_rearms_across_a_router_loop() {
    struct Rearm(Log, AtomicU32);
    #[flow]
    impl Rearm {
        #[start]
        async fn kick(&self) -> Result<()> {
            Ok(())
        }
        #[router(kick)]
        async fn initial_router(&self) -> Result<Signal> {
            Ok(Signal::SignalA)
        }
        #[listen(or(Signal::SignalA, Signal::SignalB))]
        async fn handler(&self) -> Result<()> {
            self.0.push("handler");
            Ok(())
        }
        #[router(handler)]
        async fn loop_router(&self) -> Result<Signal> {
            let calls = self.1.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(if calls < 3 { Signal::SignalB } else { Signal::Stop })
        }
    }
    let log = Log::default();
    Rearm(log.clone(), AtomicU32::new(0)).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.count("handler"), 3);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Kind {
    TypeA,
    TypeB,
    #[route(terminal)]
    Done,
}

/// C31: an `or` merge downstream of alternating handlers fires on every iteration.
#[tokio::test]
async fn c31_or_merge_fires_every_iteration() {
    struct Alternating(Log);
    #[flow(state = Counter)]
    impl Alternating {
        #[start]
        async fn begin(&self) -> Result<()> {
            Ok(())
        }
        #[router(or(begin, loop_back))]
        async fn route(&self, cx: &Cx<Counter>) -> Result<Kind> {
            let i = cx.update(|s| {
                s.counter += 1;
                s.counter
            });
            Ok(match i {
                i if i > 3 => Kind::Done,
                i if !i.is_multiple_of(2) => Kind::TypeA,
                _ => Kind::TypeB,
            })
        }
        #[listen(Kind::TypeA)]
        async fn handler_a(&self) -> Result<()> {
            self.0.push("handler_a");
            Ok(())
        }
        #[listen(Kind::TypeB)]
        async fn handler_b(&self) -> Result<()> {
            self.0.push("handler_b");
            Ok(())
        }
        #[listen(or(handler_a, handler_b))]
        async fn merge(&self) -> Result<()> {
            self.0.push("merge");
            Ok(())
        }
        #[listen(merge)]
        async fn loop_back(&self) -> Result<()> {
            self.0.push("loop_back");
            Ok(())
        }
    }
    let log = Log::default();
    Alternating(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.count("merge"), 3);
    assert_eq!(log.count("loop_back"), 3);
    assert_eq!(log.count("handler_a"), 2);
    assert_eq!(log.count("handler_b"), 1);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Retry {
    #[route(rename = "retry")]
    Retry,
    #[route(terminal)]
    Stop,
}

/// C33: the loop guard. Upstream raises a recursion error counting calls per method (starts
/// excluded); crewflow counts every step execution of the run against one budget and names
/// the step that would exceed it.
#[tokio::test]
async fn c33_loop_guard() {
    struct Endless;
    #[flow(max_steps = 2)]
    impl Endless {
        #[start(Retry::Retry)]
        async fn step(&self) -> Result<()> {
            Ok(())
        }
        #[router(step)]
        async fn decide(&self) -> Result<Retry> {
            Ok(Retry::Retry)
        }
    }
    let flow = Endless.into_flow().unwrap();
    let err = flow.kickoff(()).await.err().unwrap();
    assert!(matches!(err, Error::StepBudgetExceeded { ref step, budget: 2 } if step == "step"), "{err}");
    assert_eq!(
        err.to_string(),
        "step budget exceeded: running `step` would be step 3 of this run, over the budget of 2; if the loop is meant to run that long, raise the budget with max_steps"
    );
    // The budget is per kickoff too.
    let err = flow.kickoff(Kickoff::new().max_steps(7)).await.err().unwrap();
    assert!(matches!(err, Error::StepBudgetExceeded { budget: 7, .. }), "{err}");
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Pass {
    OnlyA,
    OnlyB,
    #[route(terminal)]
    Stop,
}

/// X10 / spec §0 item 8: an `and` join never fires from members of different iterations.
#[tokio::test]
async fn weakness_08_x10_and_join_does_not_mix_iterations() {
    struct Mixed(Log, AtomicU32);
    #[flow]
    impl Mixed {
        #[start]
        async fn s(&self) -> Result<()> {
            Ok(())
        }
        #[router(or(s, again))]
        async fn r(&self) -> Result<Pass> {
            Ok(match self.1.fetch_add(1, Ordering::SeqCst) {
                0 => Pass::OnlyA,
                1 => Pass::OnlyB,
                _ => Pass::Stop,
            })
        }
        #[listen(Pass::OnlyA)]
        async fn a(&self) -> Result<()> {
            self.0.push("a");
            Ok(())
        }
        #[listen(Pass::OnlyB)]
        async fn b(&self) -> Result<()> {
            self.0.push("b");
            Ok(())
        }
        #[listen(or(a, b))]
        async fn again(&self) -> Result<()> {
            Ok(())
        }
        #[listen(and(a, b))]
        async fn j(&self) -> Result<()> {
            self.0.push("j");
            Ok(())
        }
    }
    let log = Log::default();
    Mixed(log.clone(), AtomicU32::new(0)).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["a", "b"]);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Go {
    Go,
    #[route(terminal)]
    Stop,
}

/// An `and` join over parallel branches inside a loop fires exactly once per iteration, even
/// when the branches finish in different orders each time.
#[tokio::test]
async fn and_join_in_a_loop_fires_once_per_iteration() {
    struct Iterate(Log, AtomicU32);
    #[flow]
    impl Iterate {
        #[start]
        async fn s(&self) -> Result<()> {
            Ok(())
        }
        #[router(or(s, j))]
        async fn r(&self) -> Result<Go> {
            Ok(if self.1.fetch_add(1, Ordering::SeqCst) < 5 { Go::Go } else { Go::Stop })
        }
        #[listen(Go::Go)]
        async fn x(&self) -> Result<u32> {
            Ok(self.1.load(Ordering::SeqCst))
        }
        #[listen(x)]
        async fn fast_then_slow(&self, i: u32) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(if i.is_multiple_of(2) { 1 } else { 8 })).await;
            Ok(())
        }
        #[listen(x)]
        async fn slow_then_fast(&self, i: u32) -> Result<()> {
            tokio::time::sleep(Duration::from_millis(if i.is_multiple_of(2) { 8 } else { 1 })).await;
            Ok(())
        }
        #[listen(and(fast_then_slow, slow_then_fast))]
        async fn j(&self) -> Result<()> {
            self.0.push("j");
            Ok(())
        }
    }
    let log = Log::default();
    let run = Iterate(log.clone(), AtomicU32::new(0)).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.count("j"), 5);
    assert_eq!(run.count("r"), 6);
}

/// A long router loop (1,000 iterations) with a raised budget: the loop bookkeeping stays
/// bounded and every iteration runs.
#[tokio::test]
async fn a_thousand_iteration_loop() {
    let counter = Arc::new(AtomicU32::new(0));
    let c = counter.clone();
    let flow = FlowBuilder::<()>::new("spin")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .listen("work", or([step("begin"), route(Go::Go)]), |_cx, (): ()| async move { Ok(()) })
        .router("again", "work", move |_cx, (): ()| {
            let c = c.clone();
            async move { Ok(if c.fetch_add(1, Ordering::SeqCst) < 999 { Go::Go } else { Go::Stop }) }
        })
        .max_steps(3_000)
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.count("work"), 1000);
    assert_eq!(counter.load(Ordering::SeqCst), 1000);
}
