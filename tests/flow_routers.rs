//! Routers: reference cases B (C17–C25) and the observed behaviours X01–X03, through the
//! real driver. Where upstream loses labels or passes the wrong argument (spec §0 items 1–3),
//! these tests pin the better behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

mod common;

use common::Log;
use crewflow::BuildError;
use crewflow::Error;
use crewflow::prelude::*;

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Branch {
    #[route(rename = "step_if_true")]
    IfTrue,
    #[route(rename = "step_if_false")]
    IfFalse,
}

/// C17: a router selects one branch; the other never runs.
#[tokio::test]
async fn c17_router_selects_one_branch() {
    struct Routed(Log);
    #[flow]
    impl Routed {
        #[start]
        async fn start_method(&self) -> Result<()> {
            self.0.push("start_method");
            Ok(())
        }
        #[router(start_method)]
        async fn router(&self) -> Result<Branch> {
            self.0.push("router");
            Ok(Branch::IfTrue)
        }
        #[listen(Branch::IfTrue)]
        async fn step_if_true(&self) -> Result<()> {
            self.0.push("step_if_true");
            Ok(())
        }
        #[listen(Branch::IfFalse)]
        async fn step_if_false(&self) -> Result<()> {
            self.0.push("step_if_false");
            Ok(())
        }
    }
    let log = Log::default();
    Routed(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["start_method", "router", "step_if_true"]);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Digit {
    #[route(rename = "0")]
    Zero,
    #[route(rename = "1")]
    One,
}

/// C19: "falsy" routes still route. Upstream stringifies an integer 0 to the label "0"; with
/// typed routes the label is the variant's (renamed here to "0") and listeners receive the
/// typed value.
#[tokio::test]
async fn c19_a_zero_route_still_routes() {
    struct Zero(Log);
    #[flow]
    impl Zero {
        #[start]
        async fn begin(&self) -> Result<()> {
            self.0.push("begin");
            Ok(())
        }
        #[router(begin)]
        async fn decide(&self) -> Result<Digit> {
            self.0.push("decide");
            Ok(Digit::Zero)
        }
        #[listen(Digit::Zero)]
        async fn handle_zero(&self, d: Digit) -> Result<()> {
            self.0.push(format!("handle_zero:{d:?}"));
            Ok(())
        }
        #[listen(Digit::One)]
        async fn handle_one(&self) -> Result<()> {
            self.0.push("handle_one");
            Ok(())
        }
    }
    let log = Log::default();
    let run = Zero(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["begin", "decide", "handle_zero:Zero"]);
    assert_eq!(run.output_of::<serde_json::Value>("decide").unwrap().unwrap(), serde_json::json!("0"));
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Diagnosis {
    #[route(terminal)]
    Complete,
}
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Condition {
    Diabetes,
    Hypertension,
    Anemia,
}

/// C21: several routers listening to one router's name all run, and each label reaches
/// its listener.
#[tokio::test]
async fn c21_multiple_routers_from_the_same_trigger() {
    struct Medical(Log);
    #[flow]
    impl Medical {
        #[start]
        async fn scan_medical(&self) -> Result<()> {
            Ok(())
        }
        #[router(scan_medical)]
        async fn diagnose_conditions(&self) -> Result<Diagnosis> {
            self.0.push("diagnose");
            Ok(Diagnosis::Complete)
        }
        #[router(diagnose_conditions)]
        async fn diabetes_router(&self) -> Result<Condition> {
            self.0.push("diabetes_router");
            Ok(Condition::Diabetes)
        }
        #[router(diagnose_conditions)]
        async fn hypertension_router(&self) -> Result<Condition> {
            self.0.push("hypertension_router");
            Ok(Condition::Hypertension)
        }
        #[router(diagnose_conditions)]
        async fn anemia_router(&self) -> Result<Condition> {
            self.0.push("anemia_router");
            Ok(Condition::Anemia)
        }
        #[listen(Condition::Diabetes)]
        async fn diabetes_analysis(&self) -> Result<()> {
            self.0.push("diabetes_analysis");
            Ok(())
        }
        #[listen(Condition::Hypertension)]
        async fn hypertension_analysis(&self) -> Result<()> {
            self.0.push("hypertension_analysis");
            Ok(())
        }
        #[listen(Condition::Anemia)]
        async fn anemia_analysis(&self) -> Result<()> {
            self.0.push("anemia_analysis");
            Ok(())
        }
    }
    let log = Log::default();
    Medical(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    for (router, analysis) in [
        ("diabetes_router", "diabetes_analysis"),
        ("hypertension_router", "hypertension_analysis"),
        ("anemia_router", "anemia_analysis"),
    ] {
        assert_eq!(log.count(router), 1);
        assert_eq!(log.count(analysis), 1);
        assert!(log.position(analysis) > log.position(router));
        assert!(log.position(router) > log.position("diagnose"));
    }
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Next {
    Continue,
}

/// C23: a router that is also a start dispatches its label; the label's listener receives
/// the route.
#[tokio::test]
async fn c23_start_router_dispatches_its_label() {
    struct StartRouter(Log);
    #[flow]
    impl StartRouter {
        #[start]
        #[router]
        async fn decide(&self) -> Result<Next> {
            self.0.push("decide");
            Ok(Next::Continue)
        }
        #[listen(Next::Continue)]
        async fn handle_continue(&self, next: Next) -> Result<&'static str> {
            self.0.push(format!("handle_continue:{}", next.label()));
            Ok("done")
        }
    }
    let log = Log::default();
    let run = StartRouter(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["decide", "handle_continue:Continue"]);
    assert_eq!(run.output::<String>().unwrap(), "done");
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Branching {
    BranchEvent,
}

/// C25: a conditional start is not run at kickoff when an unconditional start exists; it runs
/// when a router returns its label.
#[tokio::test]
async fn c25_conditional_start_reentered_by_a_router_label() {
    struct Reentry(Log);
    #[flow]
    impl Reentry {
        #[start]
        async fn begin(&self) -> Result<()> {
            self.0.push("begin");
            Ok(())
        }
        #[router(begin)]
        async fn route(&self) -> Result<Branching> {
            self.0.push("route");
            Ok(Branching::BranchEvent)
        }
        #[start(Branching::BranchEvent)]
        async fn branch(&self) -> Result<()> {
            self.0.push("branch");
            Ok(())
        }
        #[listen(branch)]
        async fn done(&self) -> Result<()> {
            self.0.push("done");
            Ok(())
        }
    }
    let log = Log::default();
    Reentry(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    assert_eq!(log.entries(), ["begin", "route", "branch", "done"]);
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Sig {
    SigA,
    SigB,
}

/// Spec §0 item 2 / X02: a chained router receives the route that triggered it (upstream
/// passes the original wave's result to every router).
#[tokio::test]
async fn weakness_02_x02_chained_router_receives_the_route_that_triggered_it() {
    struct Chained(Log);
    #[flow]
    impl Chained {
        #[start]
        async fn k(&self) -> Result<String> {
            Ok("K-OUT".into())
        }
        #[router(k)]
        async fn ra(&self, p: String) -> Result<Sig> {
            self.0.push(format!("ra:{p}"));
            Ok(Sig::SigA)
        }
        #[router(Sig::SigA)]
        async fn rb(&self, p: Sig) -> Result<Sig> {
            self.0.push(format!("rb:{p:?}"));
            Ok(Sig::SigB)
        }
        #[listen(Sig::SigA)]
        async fn la(&self, p: Sig) -> Result<()> {
            self.0.push(format!("la:{p:?}"));
            Ok(())
        }
        #[listen(Sig::SigB)]
        async fn lb(&self, p: Sig) -> Result<()> {
            self.0.push(format!("lb:{p:?}"));
            Ok(())
        }
    }
    let log = Log::default();
    Chained(log.clone()).into_flow().unwrap().kickoff(()).await.unwrap();
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(entries, ["la:SigA", "lb:SigB", "ra:K-OUT", "rb:SigA"]);
}

/// String routers (flows assembled at run time) declare their labels; returning another
/// label fails the run with an error naming the router, the label and the declared ones.
#[tokio::test]
async fn a_string_router_returning_an_undeclared_label_fails_the_run() {
    let flow = FlowBuilder::<()>::new("strict")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .router("pick", "begin", |_cx, (): ()| async move { Ok("sideways".to_string()) })
        .routes(["left", "right"])
        .listen("go_left", label("left"), |_cx, (): ()| async move { Ok(()) })
        .listen("go_right", label("right"), |_cx, (): ()| async move { Ok(()) })
        .build()
        .unwrap();
    let err = flow.kickoff(()).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "router `pick` returned `sideways`, which is not one of its declared routes (left, right)"
    );
}

#[test]
fn a_string_router_without_declared_labels_is_a_build_error() {
    let err = FlowBuilder::<()>::new("f")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .router("pick", "begin", |_cx, (): ()| async move { Ok("x".to_string()) })
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Build(BuildError::RoutesNotDeclared { ref router, .. }) if router == "pick"), "{err}");
}

#[test]
fn a_route_nobody_handles_is_a_build_error_unless_terminal() {
    let build = |terminal: &[&str]| {
        FlowBuilder::<()>::new("f")
            .start("begin", |_cx, (): ()| async move { Ok(()) })
            .router("pick", "begin", |_cx, (): ()| async move { Ok("left".to_string()) })
            .routes(["left", "done"])
            .terminal(terminal.iter().copied())
            .listen("go_left", label("left"), |_cx, (): ()| async move { Ok(()) })
            .build()
    };
    let err = build(&[]).err().unwrap();
    assert_eq!(
        err.to_string(),
        "router `pick` can return route `done`, but no step of flow `f` listens to it; add a step that listens to it, or declare it terminal (terminal = [..] on a string router, #[route(terminal)] on a typed route's variant, .terminal([..]) in the builder)"
    );
    assert!(build(&["done"]).is_ok());
}

#[test]
fn a_listener_on_a_label_no_router_returns_is_a_build_error() {
    let err = FlowBuilder::<()>::new("f")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .router("pick", "begin", |_cx, (): ()| async move { Ok("left".to_string()) })
        .routes(["left", "right"])
        .listen("go_left", label("left"), |_cx, (): ()| async move { Ok(()) })
        .listen("go_right", label("rigth"), |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "step `go_right` listens to route `rigth`, but no router of flow `f` returns it (did you mean `right`?)"
    );
}

#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Review {
    Done,
}
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Publish {
    Done,
}

#[test]
fn one_label_from_two_route_types_is_a_build_error() {
    let err = FlowBuilder::<()>::new("f")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .router("review", "begin", |_cx, (): ()| async move { Ok(Review::Done) })
        .router("publish", "begin", |_cx, (): ()| async move { Ok(Publish::Done) })
        .listen("end", route(Review::Done), |_cx, (): ()| async move { Ok(()) })
        .build()
        .err()
        .unwrap();
    assert!(matches!(err, Error::Build(BuildError::LabelConflict { ref label, .. }) if label == "Done"), "{err}");
}
