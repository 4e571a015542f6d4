//! Declarative flows (YAML / JSON): the definition runs with the engine's semantics, its
//! expressions and templates see the state, the outputs and the input, and every mistake a
//! user can make in a file fails the build (or the kickoff) with a message that names the
//! method and the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::http::{TestServer, openai_completion, openai_llm};
use crewflow::declarative::{Call, DeclarativeError, FlowDefinition, Registry};
use crewflow::{Error, StepError};
use serde_json::{Value, json};

const TRIAGE: &str = r#"
schema: crewflow.flow/v1
name: triage
description: Sorts support tickets.
state:
  default: {text: "", priority: normal, notes: []}
methods:
  intake:
    start: true
    do: {call: code, ref: normalise, with: {text: "${state.text}"}}
  classify:
    listen: intake
    router: true
    emit: [urgent, normal]
    do:
      call: expression
      expr: 'input.contains("outage") || state.priority == "high" ? "urgent" : "normal"'
  page_on_call:
    listen: urgent
    do: {call: code, ref: page, with: {message: "URGENT: ${outputs.intake} (${size(state.notes)} notes)"}}
  queue:
    listen: normal
    do: {call: expression, expr: '"queued: " + outputs.intake'}
  close:
    listen: {or: [page_on_call, queue]}
    do: {call: expression, expr: 'outputs.classify + " handled"'}
"#;

fn triage_registry(pages: Arc<AtomicUsize>) -> Registry {
    Registry::new()
        .function("normalise", |_cx, call: Call| async move {
            let text = call.args.as_ref().and_then(|a| a["text"].as_str()).unwrap_or_default();
            Ok(text.trim().to_lowercase())
        })
        .function("page", move |cx: crewflow::Cx<_>, call: Call| {
            let pages = pages.clone();
            async move {
                pages.fetch_add(1, Ordering::SeqCst);
                let message = call.args.unwrap()["message"].clone();
                cx.update(|s: &mut crewflow::declarative::DeclarativeState| s.set("paged", &message));
                Ok(message)
            }
        })
}

#[tokio::test]
async fn a_yaml_flow_routes_joins_and_sees_state_outputs_and_input() {
    let pages = Arc::new(AtomicUsize::new(0));
    let flow = FlowDefinition::from_yaml(TRIAGE).unwrap().build(&triage_registry(pages.clone())).unwrap();

    let run = flow.kickoff(json!({"text": "  Total OUTAGE in eu-west ", "notes": ["a", "b"]})).await.unwrap();
    assert_eq!(run.step_names(), ["intake", "classify", "page_on_call", "close"]);
    assert_eq!(run.output_json(), Some(json!("urgent handled")));
    assert_eq!(run.state.get("paged"), Some(&json!("URGENT: total outage in eu-west (2 notes)")));
    assert_eq!(run.state.get("priority"), Some(&json!("normal")), "defaults are kept");
    assert_eq!(run.state.output("intake"), Some(&json!("total outage in eu-west")));
    assert_eq!(pages.load(Ordering::SeqCst), 1);

    // The state decides too: a high priority is urgent whatever the text says.
    let run = flow.kickoff(json!({"text": "printer jam", "priority": "high"})).await.unwrap();
    assert_eq!(run.output_json(), Some(json!("urgent handled")));
    let run = flow.kickoff(json!({"text": "Printer jam"})).await.unwrap();
    assert_eq!(run.step_names(), ["intake", "classify", "queue", "close"]);
    assert_eq!(run.output_json(), Some(json!("normal handled")));
    assert_eq!(pages.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn json_definitions_and_files_read_the_same() {
    let doc = json!({
        "name": "double",
        "methods": {
            "start": {"start": true, "do": {"call": "expression", "expr": "state.n * 2"}},
            "again": {"listen": "start", "do": {"call": "expression", "expr": "input * 2"}}
        }
    });
    let registry = Registry::new();
    let flow = FlowDefinition::from_json(&doc.to_string()).unwrap().build(&registry).unwrap();
    assert_eq!(flow.kickoff(json!({"n": 5})).await.unwrap().output_json(), Some(json!(20)));

    let dir = tempfile::tempdir().unwrap();
    let (json_path, yaml_path) = (dir.path().join("double.json"), dir.path().join("double.yaml"));
    std::fs::write(&json_path, doc.to_string()).unwrap();
    std::fs::write(&yaml_path, TRIAGE).unwrap();
    let flow = FlowDefinition::from_path(&json_path).unwrap().build(&registry).unwrap();
    assert_eq!(flow.kickoff(json!({"n": 1})).await.unwrap().output_json(), Some(json!(4)));
    assert_eq!(FlowDefinition::from_path(&yaml_path).unwrap().name(), "triage");
    let missing = FlowDefinition::from_path(dir.path().join("nope.yaml")).unwrap_err();
    assert!(matches!(missing, DeclarativeError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("nope.yaml"), "{missing}");
}

#[tokio::test]
async fn and_joins_wait_for_both_branches() {
    let flow = FlowDefinition::from_yaml(
        r#"
name: joins
methods:
  fetch: {start: true, do: {call: expression, expr: '"data"'}}
  legal: {listen: fetch, do: {call: expression, expr: '"legal ok"'}}
  style: {listen: fetch, do: {call: expression, expr: '"style ok"'}}
  publish:
    listen: {and: [legal, style]}
    do: {call: expression, expr: 'outputs.legal + ", " + outputs.style'}
"#,
    )
    .unwrap()
    .build(&Registry::new())
    .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.count("publish"), 1);
    assert_eq!(run.output_json(), Some(json!("legal ok, style ok")));
}

#[tokio::test]
async fn a_router_loop_runs_until_the_state_says_stop_within_the_budget() {
    let yaml = |budget: u64| {
        format!(
            r#"
name: counter
config: {{max_steps: {budget}}}
methods:
  begin: {{start: true, do: {{call: code, ref: bump}}}}
  check:
    listen: {{or: [begin, again]}}
    router: true
    emit: [retry, done]
    do: {{call: expression, expr: 'state.count < 3 ? "retry" : "done"'}}
  again: {{listen: retry, do: {{call: code, ref: bump}}}}
  finish: {{listen: done, do: {{call: expression, expr: '"counted to " + string(state.count)'}}}}
"#
        )
    };
    let registry = Registry::new().function("bump", |cx: crewflow::Cx<_>, _call: Call| async move {
        Ok(cx.update(|s: &mut crewflow::declarative::DeclarativeState| {
            let n = s.get("count").and_then(Value::as_i64).unwrap_or(0) + 1;
            s.set("count", n);
            n
        }))
    });
    let flow = FlowDefinition::from_yaml(&yaml(100)).unwrap().build(&registry).unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output_json(), Some(json!("counted to 3")));
    assert_eq!(run.count("check"), 3);

    let tight = FlowDefinition::from_yaml(&yaml(4)).unwrap().build(&registry).unwrap();
    let err = tight.kickoff(()).await.unwrap_err();
    let DeclarativeError::Flow { source, .. } = &err else { panic!("{err}") };
    assert!(matches!(**source, Error::StepBudgetExceeded { .. }), "{err}");
}

#[tokio::test]
async fn each_goes_through_a_list_with_per_item_outputs_and_conditions() {
    let flow = FlowDefinition::from_yaml(
        r#"
name: pricing
methods:
  price:
    start: true
    do:
      call: each
      in: state.items
      do:
        - {name: net, action: {call: expression, expr: 'item.qty * item.unit'}}
        - {name: discounted, if: 'outputs.net > 100', action: {call: expression, expr: 'outputs.net * 9 / 10'}}
        - {name: line, action: {call: code, ref: line, with: {sku: "${item.sku}", total: "${outputs.net}"}}}
  nothing:
    listen: price
    do: {call: each, in: '[]', do: [{name: x, action: {call: expression, expr: '1'}}]}
"#,
    )
    .unwrap()
    .build(&Registry::new().function("line", |_cx, call: Call| async move {
        let args = call.args.unwrap();
        Ok(format!("{}={}", args["sku"].as_str().unwrap(), args["total"]))
    }))
    .unwrap();
    let run = flow
        .kickoff(json!({"items": [{"sku": "a", "qty": 2, "unit": 10}, {"sku": "b", "qty": 5, "unit": 40}]}))
        .await
        .unwrap();
    assert_eq!(run.state.output("price"), Some(&json!(["a=20", "b=200"])));
    assert_eq!(run.output_json(), Some(json!([])), "an empty list gives an empty list");

    // `if` skipping the last step keeps the previous step's output.
    let flow = FlowDefinition::from_yaml(
        r#"
name: skip
methods:
  go:
    start: true
    do:
      call: each
      in: '[1, 20]'
      do:
        - {name: first, action: {call: expression, expr: 'item * 2'}}
        - {name: big, if: 'item > 10', action: {call: expression, expr: '"big " + string(outputs.first)'}}
"#,
    )
    .unwrap()
    .build(&Registry::new())
    .unwrap();
    assert_eq!(flow.kickoff(()).await.unwrap().output_json(), Some(json!([2, "big 40"])));
}

#[tokio::test]
async fn an_llm_action_sends_the_rendered_prompt_to_the_model() {
    let server = TestServer::start(vec![openai_completion("A short, friendly summary.")]).await;
    let llm = openai_llm(&server);
    let flow = FlowDefinition::from_yaml(
        r#"
name: summarise
methods:
  summary:
    start: true
    do:
      call: llm
      model: writer
      system: You write for ${state.audience}.
      prompt: "Summarise in one sentence: ${state.text}"
"#,
    )
    .unwrap()
    .build(&Registry::new().model("writer", llm))
    .unwrap();
    let logged = StepLogs::default();
    let guard = logged.capture();
    let run = flow.kickoff(json!({"audience": "engineers", "text": "the deploy failed twice"})).await.unwrap();
    drop(guard);
    assert_eq!(run.output_json(), Some(json!("A short, friendly summary.")));
    // the step's finish log carries the model's usage (the reply said 20 prompt, 5 completion)
    let finished = logged.0.lock().unwrap().iter().find(|f| f["message"] == "step finished").cloned();
    let finished = finished.expect("a `step finished` line");
    assert_eq!((finished["step"].as_str(), finished.get("input_tokens").map(String::as_str)), ("summary", Some("20")));
    assert_eq!(finished.get("output_tokens").map(String::as_str), Some("5"), "{finished:?}");
    let sent = server.requests()[0].json();
    assert_eq!(sent["messages"][0], json!({"role": "system", "content": "You write for engineers."}));
    assert_eq!(sent["messages"][1]["content"], json!("Summarise in one sentence: the deploy failed twice"));
}

#[tokio::test]
async fn the_state_schema_fills_defaults_and_refuses_bad_inputs_before_anything_runs() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = ran.clone();
    let flow = FlowDefinition::from_yaml(
        r#"
name: brief
state:
  default: {tone: plain}
  json_schema:
    type: object
    required: [topic]
    properties:
      topic: {type: string, minLength: 3}
      audience: {type: string, default: developers}
      words: {type: integer, maximum: 500}
methods:
  write:
    start: true
    do: {call: code, ref: write}
"#,
    )
    .unwrap()
    .build(&Registry::new().function("write", move |cx: crewflow::Cx<_>, _call: Call| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { Ok(cx.state(|s: &crewflow::declarative::DeclarativeState| s.values.clone())) }
    }))
    .unwrap();

    let run = flow.kickoff(json!({"topic": "CRDTs"})).await.unwrap();
    assert_eq!(run.output_json(), Some(json!({"topic": "CRDTs", "audience": "developers", "tone": "plain"})));

    let missing = flow.kickoff(json!({"audience": "ops"})).await.unwrap_err();
    assert!(matches!(missing, DeclarativeError::Input { .. }), "{missing}");
    assert!(missing.to_string().contains("\"topic\" is a required property"), "{missing}");
    let wrong = flow.kickoff(json!({"topic": "ok topic", "words": "many"})).await.unwrap_err();
    assert!(wrong.to_string().contains("/words"), "names the field: {wrong}");
    let not_object = flow.kickoff(json!(["topic"])).await.unwrap_err();
    assert!(not_object.to_string().contains("must be a JSON object"), "{not_object}");
    assert_eq!(ran.load(Ordering::SeqCst), 1, "bad inputs never start a run");
}

#[tokio::test]
async fn a_router_returning_an_undeclared_label_fails_the_run_naming_it() {
    let flow = FlowDefinition::from_yaml(
        r#"
name: picky
methods:
  pick:
    start: true
    router: true
    emit: [yes, no]
    do: {call: expression, expr: '"maybe"'}
  a: {listen: yes, do: {call: expression, expr: '1'}}
  b: {listen: no, do: {call: expression, expr: '2'}}
"#,
    )
    .unwrap()
    .build(&Registry::new())
    .unwrap();
    let err = flow.kickoff(()).await.unwrap_err().to_string();
    assert!(err.contains("router `pick` returned \"maybe\", which is not one of its labels [yes, no]"), "{err}");

    let failing = FlowDefinition::from_yaml("name: f\nmethods:\n  go: {start: true, do: {call: code, ref: boom}}")
        .unwrap()
        .build(
            &Registry::new()
                .function("boom", |_cx, _call: Call| async move { Err::<Value, _>(StepError::msg("the API said no")) }),
        )
        .unwrap();
    let err = failing.kickoff(()).await.unwrap_err().to_string();
    assert!(err.contains("function `boom` failed: the API said no"), "{err}");
    assert!(err.contains("`go`"), "names the step: {err}");
}

/// Builds `yaml` and returns the error's message (the build must fail).
fn build_error(yaml: &str, registry: &Registry) -> String {
    match FlowDefinition::from_yaml(yaml).and_then(|d| d.build(registry)) {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn assert_says(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

#[test]
fn mistakes_in_a_definition_fail_the_build_naming_the_place_and_the_fix() {
    let registry = Registry::new().function("draft", |_cx, _call: Call| async move { Ok("x") });
    let cases: &[(&str, &[&str])] = &[
        ("", &["empty", "`name:` and `methods:`"]),
        ("name: x\nmethods: {}", &["`methods:` is empty"]),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}\n  b: [oops",
            &["not a valid flow definition"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}\n  b: {lisen: a, do: {call: code, ref: draft}}",
            &["unknown field `lisen`", "listen"],
        ),
        (
            "schema: crewflow.flow/v9\nname: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["crewflow.flow/v9", "crewflow.flow/v1"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: drafts}}",
            &["method `a`", "no function `drafts` is registered", "did you mean `draft`", "Registry::function"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}\n  b: {listen: draf, do: {call: code, ref: draft}}",
            &["method `b`", "listen: `draf` is neither a method nor a label"],
        ),
        (
            "name: x\nmethods:\n  write: {start: true, do: {call: code, ref: draft}}\n  b: {listen: write, do: {call: code, ref: draft}}\n  c: {listen: b, router: true, emit: [write], do: {call: code, ref: draft}}\n  d: {listen: {label: write}, do: {call: code, ref: draft}}",
            &["method `b`", "`write` is both a method and a route label", "{step: write}"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, router: true, do: {call: code, ref: draft}}",
            &["a router needs `emit"],
        ),
        ("name: x\nmethods:\n  a: {start: true, emit: [y], do: {call: code, ref: draft}}", &["`emit` is for routers"]),
        ("name: x\nmethods:\n  a: {do: {call: code, ref: draft}}", &["method `a`", "never runs"]),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: tool, ref: search}}",
            &["unknown variant `tool`", "a tool is called by an agent: register one with Registry::agent"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: agent, with: {}}}",
            &["method `a`", "unknown field `with`, expected one of `ref`, `prompt`, `inputs`"],
        ),
        ("name: x\nmethods:\n  a: {start: true, do: {call: expression, expr: 'state.('}}", &["does not parse"]),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: expression, expr: '1', extra: 2}}",
            &["unknown field `extra`"],
        ),
        ("name: x\nmethods:\n  a: {start: true}", &["line 3", "missing field `do`"]),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft, with: {t: '${state.x'}}}",
            &["without a closing"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}\n  b: {listen: {or: []}, do: {call: code, ref: draft}}",
            &["`or` needs a non-empty list"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}, human_feedback: {message: ok?, provider: slack}}",
            &["no feedback provider `slack` is registered", "Registry::feedback_provider"],
        ),
        (
            "name: x\nconfig: {feedback_provider: pager}\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["config: no feedback provider `pager`"],
        ),
        (
            "name: x\npersist: {store: '${CREWFLOW_SURELY_UNSET_VAR}'}\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["CREWFLOW_SURELY_UNSET_VAR", "not set"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, router: true, emit: [left, right], do: {call: code, ref: draft}}\n  b: {listen: left, do: {call: code, ref: draft}}",
            &["right"],
        ),
        (
            "name: x\nstate: {json_schema: {type: 12}}\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["state.json_schema is not a valid JSON Schema"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: each, in: '[1]', do: [{name: i, action: {call: each, in: '[]', do: []}}]}}",
            &["cannot hold another `each`"],
        ),
        (
            "name: ''\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["`name: \"\"` is empty", "name: triage"],
        ),
        (
            "name: \"tri\\nage\"\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["holds a line break", "name: triage"],
        ),
        (
            "name: x\nmethods:\n  \"a\\tb\": {start: true, do: {call: code, ref: draft}}",
            &["the method name \"a\\tb\" under `methods:` holds a control character", "plain name"],
        ),
        (
            "name: x\nmethods:\n  \"a\\nb\": {start: true, do: {call: code, ref: draft}}",
            &["the method name \"a\\nb\"", "holds a line break"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, router: true, emit: [l, r, l], do: {call: code, ref: draft}}\n  b: {listen: l, do: {call: code, ref: draft}}\n  c: {listen: r, do: {call: code, ref: draft}}",
            &["method `a`", "`emit` lists `l` twice", "list each outcome once"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}, human_feedback: {message: ok?, emit: [ok, ok]}}\n  b: {listen: ok, do: {call: code, ref: draft}}",
            &["method `a`", "`human_feedback.emit` lists `ok` twice"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, router: true, emit: [l, ''], do: {call: code, ref: draft}}\n  b: {listen: l, do: {call: code, ref: draft}}",
            &["`emit`: the label \"\" is empty"],
        ),
        (
            "name: x\nconfig: {max_steps: 0}\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["`config.max_steps: 0`", "positive budget", "10000"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: expression, expr: 'stat.count + 1'}}",
            &["method `a`", "reads `stat`, which is not defined", "did you mean `state`?"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft, with: {t: 'n=${outptus.a}'}}}",
            &["reads `outptus`", "did you mean `outputs`?"],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: expression, expr: '[1, 2].map(x, x + y)'}}",
            &["reads `y`, which is not defined"],
        ),
        (
            "name: x\npersist: yes\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["line 2", "`persist:` must be `true`, `false` or `{store: URL}`", "not \"yes\""],
        ),
        (
            "name: x\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}\n  a: {start: true, do: {call: code, ref: draft}}",
            &["line 4", "duplicate mapping key: a", "a key may appear once in a mapping"],
        ),
        (
            "name: x\nconfig: {max_steps: -1}\nmethods:\n  a: {start: true, do: {call: code, ref: draft}}",
            &["expected a whole number"],
        ),
        ("name: x\nmethods: [a]", &["expected a mapping"]),
    ];
    for (yaml, _) in cases {
        let message = build_error(yaml, &registry);
        for internal in ["PersistDoc", "DuplicateKeyPolicy", "untagged", "u64", "MethodDoc", "Document"] {
            assert!(!message.contains(internal), "`{internal}` (an implementation name) in: {message}");
        }
    }
    for (yaml, parts) in cases {
        let message = build_error(yaml, &registry);
        assert_says(&message, parts);
    }
}

#[test]
fn syntax_errors_point_at_the_line() {
    let message =
        build_error("name: x\nmethods:\n  a:\n    start: true\n    do: {call: code, ref: draft\n", &Registry::new());
    assert_says(&message, &["not a valid flow definition", "line"]);
}

/// Expressions too long or too deeply nested for the CEL parser are refused with the limit and
/// the fix: a syntax error past column 65,535 used to panic inside the parser, and about 1,300
/// nested additions overflowed the stack. Nothing may panic on any input.
#[test]
fn oversized_expressions_are_refused_not_a_panic() {
    let registry = Registry::new().function("draft", |_cx, _call: Call| async move { Ok("x") });
    let long_syntax_error = format!("\"{}\" + (", "a".repeat(70_000));
    let message = build_error(
        &format!("name: x\nmethods:\n  a: {{start: true, do: {{call: expression, expr: '{long_syntax_error}'}}}}"),
        &registry,
    );
    assert_says(&message, &["method `a`", "70006 bytes long, over the limit of 4096", "registered function"]);
    let message = build_error(
        &format!(
            "name: x\nmethods:\n  a: {{start: true, do: {{call: code, ref: draft, with: {{t: 'x ${{{long_syntax_error}}}'}}}}}}"
        ),
        &registry,
    );
    assert_says(&message, &["over the limit of 4096"]);

    let deep = format!("{}1", "1+".repeat(1_500));
    let message = build_error(
        &format!("name: x\nmethods:\n  a: {{start: true, do: {{call: expression, expr: '{deep}'}}}}"),
        &registry,
    );
    assert_says(&message, &["has 1500 operators, over the limit of 500"]);

    // Within the limits, long and nested expressions build and run.
    let near = format!("{}1", "1+".repeat(400));
    let flow = FlowDefinition::from_yaml(&format!(
        "name: x\nmethods:\n  a: {{start: true, do: {{call: expression, expr: '{near}'}}}}"
    ))
    .unwrap()
    .build(&registry)
    .unwrap();
    let run = tokio::runtime::Runtime::new().unwrap().block_on(flow.kickoff(())).unwrap();
    assert_eq!(run.output_json(), Some(json!(401)));
}

/// Names an expression may use besides `state`, `outputs`, `input` and `item`: variables bound
/// by macros, type names and the `optional` namespace.
#[tokio::test]
async fn macro_variables_and_type_names_are_not_unknown_names() {
    let flow = FlowDefinition::from_yaml(
        r#"
name: names
state:
  default: {xs: [1, 2, 3]}
methods:
  a:
    start: true
    do:
      call: expression
      expr: '[state.xs.all(x, x > 0), state.xs.exists(y, state.xs.exists(z, y + z == 5)), type(1) == int, state.xs.map(v, v * 2), optional.of(1).hasValue()]'
"#,
    )
    .unwrap()
    .build(&Registry::new())
    .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output_json(), Some(json!([true, true, true, [2, 4, 6], true])));
}

/// A definition that declares its state's keys (`state.default`, the schema's `properties`)
/// refuses unknown inputs like a Rust flow does, all of them at once with the closest keys; one
/// that declares none, or whose schema admits more (`additionalProperties`), takes any input.
#[tokio::test]
async fn unknown_inputs_are_refused_when_the_definition_declares_its_keys() {
    let build = |yaml: &str| FlowDefinition::from_yaml(yaml).unwrap().build(&Registry::new()).unwrap();
    let method = "methods:\n  a: {start: true, do: {call: expression, expr: 'state'}}";

    let declared = build(&format!(
        "name: d\nstate:\n  default: {{tone: plain}}\n  json_schema: {{type: object, properties: {{topic: {{type: string}}, words: {{type: integer}}}}}}\n{method}"
    ));
    let err = declared.kickoff(json!({"topic": "t", "wrods": 3, "tonne": "x"})).await.unwrap_err();
    assert!(matches!(err, DeclarativeError::Input { .. }), "{err}");
    assert_says(
        &err.to_string(),
        &[
            "unknown inputs `tonne` (did you mean `tone`?), `wrods` (did you mean `words`?)",
            "the state's keys are: tone, topic, words",
            "`state.default` or `state.json_schema.properties`",
        ],
    );
    let run = declared.kickoff(json!({"topic": "t", "words": 3})).await.unwrap();
    assert_eq!(run.output_json(), Some(json!({"tone": "plain", "topic": "t", "words": 3})));

    let defaults_only = build(&format!("name: d\nstate:\n  default: {{count: 0}}\n{method}"));
    let err = defaults_only.kickoff(json!({"cuont": 1})).await.unwrap_err().to_string();
    assert_says(&err, &["unknown input `cuont` (did you mean `count`?)"]);

    let open = build(&format!(
        "name: d\nstate:\n  json_schema: {{type: object, properties: {{a: {{type: integer}}}}, additionalProperties: true}}\n{method}"
    ));
    assert_eq!(open.kickoff(json!({"a": 1, "b": 2})).await.unwrap().output_json(), Some(json!({"a": 1, "b": 2})));
    let undeclared = build(&format!("name: d\n{method}"));
    assert_eq!(undeclared.kickoff(json!({"any": 1})).await.unwrap().output_json(), Some(json!({"any": 1})));
}

/// Each method of a YAML flow knows where it is defined: the file it was read from and the
/// line and column of its name under `methods:` (`<yaml>` for text given inline), so a
/// picture's click panel can point at it.
#[test]
fn methods_know_their_file_and_line() {
    let text = "name: placed\nmethods:\n  first:\n    start: true\n    do: {call: expression, expr: '1'}\n\n  second: {listen: first, do: {call: expression, expr: '2'}}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("placed.yaml");
    std::fs::write(&path, text).unwrap();
    let flow = FlowDefinition::from_path(&path).unwrap().build(&Registry::new()).unwrap();
    let at = |flow: &crewflow::declarative::DeclarativeFlow, name: &str| {
        let g = flow.flow().graph();
        g.source(g.step_index(name).unwrap()).map(ToString::to_string)
    };
    assert_eq!(at(&flow, "first"), Some(format!("{}:3:3", path.display())));
    assert_eq!(at(&flow, "second"), Some(format!("{}:7:3", path.display())));
    let inline = FlowDefinition::from_yaml(text).unwrap().build(&Registry::new()).unwrap();
    assert_eq!(at(&inline, "second").as_deref(), Some("<yaml>:7:3"));
}

/// The `crewflow::step` log lines a run emits, each as its fields (`message`, `step`, ...).
#[derive(Clone, Default)]
struct StepLogs(Arc<std::sync::Mutex<Vec<std::collections::BTreeMap<String, String>>>>);

impl StepLogs {
    /// Captures this thread's step logs until the guard drops. tracing caches, process-wide,
    /// whether a log line has a listener, decided on the thread that first reaches it: a
    /// sibling test reaching `step finished` first, with no subscriber, would silence it for
    /// every thread (a flake seen in full runs). A global subscriber that listens to every
    /// line keeps that answer "yes"; it keeps what it hears, which nothing reads.
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        static KEEP_INTEREST: std::sync::Once = std::sync::Once::new();
        KEEP_INTEREST.call_once(|| {
            let _ = tracing::subscriber::set_global_default(StepLogs::default());
            tracing::callsite::rebuild_interest_cache();
        });
        tracing::subscriber::set_default(self.clone())
    }
}

impl tracing::Subscriber for StepLogs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(std::collections::BTreeMap<String, String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_string(), format!("{value:?}"));
            }
        }
        if event.metadata().target() == "crewflow::step" {
            let mut fields = Fields(std::collections::BTreeMap::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
