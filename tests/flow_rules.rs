//! One rule set: the builder and declarative flows refuse the same human-feedback options with
//! the same words (`crewflow_rules`), and the `#[flow]` macro refuses them at compile time
//! (tests/ui/human_feedback_errors.rs and human_feedback_learn.rs pin its messages). Each case
//! here is one drift the three front ends once disagreed on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use crewflow::declarative::{Call, FlowDefinition, Registry};
use crewflow::feedback::{FeedbackLearner, ImproveFuture, LearnFuture, LearnRequest};
use crewflow::llm::{Llm, LlmOptions};
use crewflow::{FlowBuilder, HumanFeedback};

/// A model that is never called: building a flow only needs one to exist.
fn judge() -> Llm {
    Llm::with_options("openai/gpt-4o-mini", LlmOptions::default().api_key("sk-unused")).unwrap()
}

struct NoLessons;

impl FeedbackLearner for NoLessons {
    fn improve(&self, _: &LearnRequest) -> ImproveFuture {
        Box::pin(async { Ok(None) })
    }
    fn learn(&self, _: &LearnRequest) -> LearnFuture {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// The builder's message for a reviewed start step configured with `feedback`.
fn builder_error(feedback: HumanFeedback) -> String {
    let built = FlowBuilder::<serde_json::Value>::new("rules")
        .start("draft", |_cx, (): ()| async move { Ok("draft") })
        .human_feedback(feedback)
        .build();
    match built {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// The declarative message for a reviewed start step with `human_feedback: {<options>}`.
fn yaml_error(options: &str) -> String {
    let yaml = format!(
        "name: rules\nmethods:\n  draft: {{start: true, do: {{call: code, ref: draft}}, human_feedback: {{message: ok?, {options}}}}}"
    );
    let registry = Registry::new()
        .function("draft", |_cx, _call: Call| async move { Ok("draft") })
        .learner("lessons", NoLessons)
        .model("judge", judge());
    match FlowDefinition::from_yaml(&yaml).unwrap().build(&registry) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

fn assert_both(builder: String, yaml: String, rule: &str) {
    assert!(builder.contains(rule), "builder: {builder:?} lacks {rule:?}");
    assert!(builder.contains("step `draft`"), "builder names the step: {builder:?}");
    assert!(yaml.contains(rule), "YAML: {yaml:?} lacks {rule:?}");
    assert!(yaml.contains("method `draft`"), "YAML names the method: {yaml:?}");
}

#[test]
fn learn_source_without_a_learner_is_refused_everywhere() {
    // Was accepted by the builder (and silently ignored), refused by the macro and YAML.
    assert_both(
        builder_error(HumanFeedback::new("ok?").learn_source("qa")),
        yaml_error("learn_source: qa"),
        "`learn_source` needs a learner: set `learn`",
    );
}

#[test]
fn learn_strict_without_a_learner_is_refused_everywhere() {
    assert_both(
        builder_error(HumanFeedback::new("ok?").learn_strict(true)),
        yaml_error("learn_strict: true"),
        "`learn_strict` needs a learner: set `learn`",
    );
}

#[test]
fn a_model_without_outcomes_is_refused_everywhere() {
    // Was refused by YAML only: the builder and the macro kept a classifier with nothing to
    // classify into.
    let model = judge();
    assert_both(
        builder_error(HumanFeedback::new("ok?").classifier(model)),
        yaml_error("llm: judge"),
        "`llm` maps answers to outcomes; it needs `emit` outcomes",
    );
}

#[test]
fn default_outcome_rules_agree() {
    assert_both(
        builder_error(HumanFeedback::new("ok?").default_outcome("maybe")),
        yaml_error("default_outcome: maybe"),
        "`default_outcome` \"maybe\" needs `emit` outcomes to choose from",
    );
    assert_both(
        builder_error(HumanFeedback::new("ok?").emit(["yes", "no"]).default_outcome("maybe")),
        yaml_error("emit: [yes, no], default_outcome: maybe"),
        "`default_outcome` \"maybe\" is not one of the `emit` outcomes [\"yes\", \"no\"]",
    );
}

#[test]
fn repeated_outcomes_are_refused_by_the_builder_too() {
    let builder = builder_error(HumanFeedback::new("ok?").emit(["ok", "ok"]));
    assert!(builder.contains("the `emit` outcome \"ok\" is listed twice"), "{builder}");
}

#[test]
fn valid_options_build_in_both() {
    let builder = builder_error(HumanFeedback::new("ok?").emit(["yes", "no"]).default_outcome("no").learn(NoLessons));
    assert_eq!(builder, "");
    assert_eq!(yaml_error("emit: [yes, no], default_outcome: no, learn: lessons, learn_source: qa, llm: judge"), "");
}

/// The graph's rules (`crewflow_rules::GraphRule`) read the same from the builder and from YAML;
/// the macro's ui cases (`self_trigger`, `string_router_routes`, `unknown_step`, `no_start`)
/// pin the same sentences at compile time.
#[test]
fn graph_rules_read_the_same_in_the_builder_and_yaml() {
    let registry = Registry::new().function("noop", |_cx, _call: Call| async move { Ok("done") });
    let yaml_error = |methods: &str| {
        let yaml = format!("name: rules\nmethods:\n{methods}");
        match FlowDefinition::from_yaml(&yaml).unwrap().build(&registry) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let builder_error = |built: Result<crewflow::Flow<serde_json::Value>, crewflow::Error>| match built {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };

    let self_trigger = "step `again` is triggered by its own completion, which would loop forever; loop through a router label instead";
    let builder = builder_error(
        FlowBuilder::new("rules")
            .start("draft", |_cx, (): ()| async move { Ok(()) })
            .listen(
                "again",
                crewflow::trigger::or([crewflow::trigger::step("draft"), crewflow::trigger::step("again")]),
                |_cx, (): ()| async move { Ok(()) },
            )
            .build(),
    );
    let yaml = yaml_error(
        "  draft: {start: true, do: {call: code, ref: noop}}\n  again: {listen: {or: [draft, again]}, do: {call: code, ref: noop}}",
    );
    assert!(builder.contains(self_trigger), "builder: {builder}");
    assert!(yaml.contains(self_trigger), "YAML: {yaml}");

    let unhandled = "router `pick` can return route `right`, but no step of flow `rules` listens to it; add a step that listens to it, or declare it terminal";
    let builder = builder_error(
        FlowBuilder::new("rules")
            .start("draft", |_cx, (): ()| async move { Ok(()) })
            .router("pick", "draft", |_cx, (): ()| async move { Ok("left".to_string()) })
            .routes(["left", "right"])
            .listen("go_left", crewflow::trigger::label("left"), |_cx, (): ()| async move { Ok(()) })
            .build(),
    );
    let yaml = yaml_error(
        "  draft: {start: true, do: {call: code, ref: noop}}\n  pick: {listen: draft, router: true, emit: [left, right], do: {call: code, ref: noop}}\n  go_left: {listen: left, do: {call: code, ref: noop}}",
    );
    assert!(builder.contains(unhandled), "builder: {builder}");
    assert!(yaml.contains(unhandled), "YAML: {yaml}");
}
