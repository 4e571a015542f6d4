//! The rules of a flow's graph: a start exists, every trigger names a step or a label that
//! exists, no step triggers itself, and every label a router can return is handled.
//!
//! The builder (`GraphSpec::compile`), the `#[flow]` macro (at expansion time) and declarative
//! flows (through the builder) call these checks, so a graph is refused with the same words
//! everywhere; each front end adds only where the problem is (a span, a line).

use std::fmt;

use crate::closest;

/// A broken rule of a flow's graph. The message names the step, the flow and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GraphRule {
    /// The flow has no start step.
    NoStart {
        /// The flow.
        flow: String,
    },
    /// A step's trigger names the step itself.
    SelfTrigger {
        /// The step.
        step: String,
    },
    /// A trigger names a step the flow does not have.
    UnknownStep {
        /// The flow.
        flow: String,
        /// The step whose trigger is wrong.
        listener: String,
        /// The name that matches no step.
        missing: String,
        /// The closest step name, when one is close.
        suggestion: Option<String>,
    },
    /// A trigger names a route label no router of the flow returns.
    UnknownLabel {
        /// The flow.
        flow: String,
        /// The step whose trigger is wrong.
        listener: String,
        /// The label nobody returns.
        label: String,
        /// The closest declared label, when one is close.
        suggestion: Option<String>,
        /// A step has this name: the trigger most likely meant that step.
        names_a_step: bool,
    },
    /// A router can return a label no step listens to.
    UnhandledRoute {
        /// The flow.
        flow: String,
        /// The router.
        router: String,
        /// The label nobody handles.
        label: String,
    },
}

impl fmt::Display for GraphRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphRule::NoStart { flow } => write!(
                f,
                "flow `{flow}` has no start step; mark at least one step as a start (#[start], .start(..), or `start: true` in YAML)"
            ),
            GraphRule::SelfTrigger { step } => write!(
                f,
                "step `{step}` is triggered by its own completion, which would loop forever; loop through a router label instead"
            ),
            GraphRule::UnknownStep { flow, listener, missing, suggestion } => {
                write!(f, "step `{listener}` is triggered by `{missing}`, but flow `{flow}` has no step of that name")?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                Ok(())
            }
            GraphRule::UnknownLabel { flow, listener, label, suggestion, names_a_step } => {
                write!(f, "step `{listener}` listens to route `{label}`, but no router of flow `{flow}` returns it")?;
                if *names_a_step {
                    // A trigger spelled as a label but naming a step is the common porting slip
                    // (CrewAI's `listen("send")` names the method).
                    write!(
                        f,
                        "; `{label}` is a step: to run after it, name the step, not a label (#[listen({label})] without quotes, step(\"{label}\") in the builder)"
                    )
                } else if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")
                } else {
                    Ok(())
                }
            }
            GraphRule::UnhandledRoute { flow, router, label } => write!(
                f,
                "router `{router}` can return route `{label}`, but no step of flow `{flow}` listens to it; add a step that listens to it, or declare it terminal (terminal = [..] on a string router, #[route(terminal)] on a typed route's variant, .terminal([..]) in the builder)"
            ),
        }
    }
}

impl std::error::Error for GraphRule {}

/// A flow needs at least one start step.
pub fn check_start(flow: &str, has_start: bool) -> Result<(), GraphRule> {
    if has_start { Ok(()) } else { Err(GraphRule::NoStart { flow: flow.to_string() }) }
}

/// A trigger of step `listener` that names step `named`: it must exist and must not be `listener`.
pub fn check_step_trigger<'a>(
    flow: &str,
    listener: &str,
    named: &str,
    steps: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<(), GraphRule> {
    if named == listener {
        return Err(GraphRule::SelfTrigger { step: listener.to_string() });
    }
    if steps.clone().into_iter().any(|s| s == named) {
        return Ok(());
    }
    Err(GraphRule::UnknownStep {
        flow: flow.to_string(),
        listener: listener.to_string(),
        missing: named.to_string(),
        suggestion: closest(named, steps).map(str::to_string),
    })
}

/// A trigger of step `listener` that names route label `label`: some router must return it.
pub fn check_label_trigger<'a>(
    flow: &str,
    listener: &str,
    label: &str,
    labels: impl IntoIterator<Item = &'a str> + Clone,
    steps: impl IntoIterator<Item = &'a str>,
) -> Result<(), GraphRule> {
    if labels.clone().into_iter().any(|l| l == label) {
        return Ok(());
    }
    Err(GraphRule::UnknownLabel {
        flow: flow.to_string(),
        listener: listener.to_string(),
        label: label.to_string(),
        suggestion: closest(label, labels).map(str::to_string),
        names_a_step: steps.into_iter().any(|s| s == label),
    })
}

/// Every label router `router` can return must be listened to or declared terminal; the labels
/// that are neither, in the router's order.
pub fn unhandled_routes<'a>(
    flow: &str,
    router: &str,
    routes: impl IntoIterator<Item = &'a str>,
    is_handled: impl Fn(&str) -> bool,
    terminal: impl Fn(&str) -> bool,
) -> Vec<GraphRule> {
    routes
        .into_iter()
        .filter(|l| !is_handled(l) && !terminal(l))
        .map(|l| GraphRule::UnhandledRoute { flow: flow.to_string(), router: router.to_string(), label: l.to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_graph_rule_is_reached_with_its_fix() {
        let steps = ["research", "write", "send"];
        assert_eq!(check_start("f", true), Ok(()));
        assert!(check_start("f", false).is_err_and(|e| e.to_string().contains("no start step")));
        assert!(check_step_trigger("f", "write", "write", steps).is_err_and(|e| e.to_string().contains("its own")));
        let typo = check_step_trigger("f", "write", "reserch", steps).map_err(|e| e.to_string());
        assert_eq!(
            typo,
            Err("step `write` is triggered by `reserch`, but flow `f` has no step of that name (did you mean `research`?)".into())
        );
        assert_eq!(check_step_trigger("f", "write", "research", steps), Ok(()));
        let labels = ["approved", "rejected"];
        let step_as_label = check_label_trigger("f", "log", "send", labels, steps).map_err(|e| e.to_string());
        assert!(step_as_label.is_err_and(|m| m.contains("`send` is a step")));
        let label_typo = check_label_trigger("f", "log", "aproved", labels, steps).map_err(|e| e.to_string());
        assert!(label_typo.is_err_and(|m| m.ends_with("(did you mean `approved`?)")));
        let open = unhandled_routes("f", "gate", labels, |l| l == "approved", |_| false);
        assert_eq!(open.len(), 1);
        assert!(open[0].to_string().contains("route `rejected`"));
        assert!(unhandled_routes("f", "gate", labels, |l| l == "approved", |l| l == "rejected").is_empty());
    }
}
