//! `crewflow run` and the run listings, driven through the real binary on a real SQLite file
//! (and PostgreSQL when `CREWFLOW_TEST_POSTGRES` is set); every error message is pinned.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::{REVIEW, Scratch, json_lines, stderr, stdout};

#[test]
fn a_yaml_flow_runs_end_to_end_on_sqlite_and_is_listed_and_shown() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out = s.cmd(&["run", "review.yaml", "--input", "topic=rust and more", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "published: draft about rust and more\n");
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines[0].starts_with("run ") && lines[0].ends_with(" of flow `review` started"), "{err}");
    let order = ["  start  draft #0", "  done   draft #0 in ", "  route  check -> good", "  start  publish #2"];
    let mut at = 0;
    for want in order {
        at += lines[at..]
            .iter()
            .position(|l| l.starts_with(want))
            .unwrap_or_else(|| panic!("no `{want}` after line {at}:\n{err}"));
    }
    assert!(lines.last().unwrap().starts_with("finished: run "), "{err}");
    assert!(lines.last().unwrap().contains(" of flow `review`, 3 steps in "), "{err}");

    // the run is in the file: listed, and shown with its steps, state and output
    let list = s.cmd(&["runs", "list", "--store", &db, "--json"]).output().unwrap();
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let runs = json_lines(&list);
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0]["flow"].as_str(), runs[0]["status"].as_str(), runs[0]["steps"].as_u64()),
        (Some("review"), Some("finished"), Some(3))
    );
    let id = runs[0]["run_id"].as_str().unwrap().to_string();
    assert!(lines[0].contains(&id), "the progress names the stored run");

    let text = stdout(&s.cmd(&["runs", "list", "--store", &db]).output().unwrap());
    assert!(text.starts_with("RUN "), "{text}");
    assert!(text.lines().nth(1).unwrap().starts_with(&format!("{id}  review ")), "{text}");

    let show = s.cmd(&["runs", "show", &id, "--store", &db, "--json"]).output().unwrap();
    let shown = &json_lines(&show)[0];
    let steps: Vec<&str> = shown["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["draft", "check", "publish"]);
    assert_eq!(shown["state"]["topic"], "rust and more");
    assert_eq!(shown["steps"][2]["output"], "published: draft about rust and more");
    let text = stdout(&s.cmd(&["runs", "show", &id, "--store", &db]).output().unwrap());
    assert!(text.contains("status   finished\n"), "{text}");
    assert!(text.contains("\"published: draft about rust and more\" (output)"), "{text}");

    // and traced: one row per step, in order
    let trace = stdout(&s.cmd(&["trace", &id, "--store", &db]).output().unwrap());
    assert!(trace.starts_with(&format!("run {id} · flow `review` · finished · ")), "{trace}");
    let rows: Vec<&str> = trace.lines().filter(|l| l.starts_with("├─ #") || l.starts_with("└─ #")).collect();
    assert_eq!(rows.len(), 3, "{trace}");
    assert!(rows[0].contains(" draft ") && rows[1].contains(" check ") && rows[2].contains(" publish "), "{trace}");
}

#[test]
fn json_prints_one_event_per_line_then_the_result() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out =
        s.cmd(&["run", "review.yaml", "--json", "--inputs", r#"{"topic": "x"}"#, "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "nothing but JSON, and nothing on stderr");
    let events = json_lines(&out);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"run_started"));
    assert!(types.contains(&"route_taken"));
    let route = events.iter().find(|e| e["type"] == "route_taken").unwrap();
    assert_eq!((route["step"].as_str(), route["label"].as_str()), (Some("check"), Some("bad")));
    let last = events.last().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["status"], "finished");
    assert_eq!(last["output"], "rejected: draft about x");
    assert_eq!(last["run_id"], events[0]["run_id"]);
}

#[test]
fn inputs_come_from_flags_json_or_a_file_and_flags_win() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    s.write("inputs.json", r#"{"topic": "from the file", "drafts": 2}"#);
    let db = s.db("runs.db");
    let out = s
        .cmd(&["run", "review.yaml", "--inputs-file", "inputs.json", "-i", "drafts=7", "--store", &db])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "published: draft about from the file\n");
    let runs = json_lines(&s.cmd(&["runs", "list", "--json", "--store", &db]).output().unwrap());
    let shown = json_lines(
        &s.cmd(&["runs", "show", runs[0]["run_id"].as_str().unwrap(), "--json", "--store", &db]).output().unwrap(),
    );
    assert_eq!(shown[0]["state"]["drafts"], 7, "a JSON-looking value is JSON");
    assert_eq!(shown[0]["state"]["topic"], "from the file");
}

/// Runs `crewflow ARGS` and returns (exit code, stderr).
fn fails(s: &Scratch, args: &[&str]) -> (i32, String) {
    let out = s.cmd(args).output().unwrap();
    assert_eq!(stdout(&out), "", "nothing on stdout when failing");
    (out.status.code().unwrap(), stderr(&out))
}

#[test]
fn bad_flow_files_are_usage_errors_naming_the_problem() {
    let s = Scratch::new();
    let (code, err) = fails(&s, &["run", "missing.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: cannot read the flow definition missing.yaml: No such file or directory (os error 2); check the path of the flow file\n"
    );

    s.write("bad.yaml", "name: [\n");
    let (code, err) = fails(&s, &["run", "bad.yaml"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: bad.yaml is not a valid flow definition: "), "{err}");
    assert!(err.contains("line 1 column 7"), "{err}");

    s.write("unknown.yaml", &REVIEW.replace("listen: good", "listen: goood"));
    let (code, err) = fails(&s, &["run", "unknown.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: flow `review`, method `publish`: listen: `goood` is neither a method nor a label any router emits — did you mean `good`? (methods: check, draft, publish, reject; labels: bad, good)\n"
    );

    s.write("code.yaml", "name: coded\nmethods:\n  a: {start: true, do: {call: code, ref: normalise}}\n");
    let (code, err) = fails(&s, &["run", "code.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: flow `coded`, method `a`: do: no function `normalise` is registered (registered: none); register it with Registry::function; the crewflow command registers no Rust functions: run this flow from your own binary, whose Registry has them\n"
    );

    // the same errors from `plot`
    let (code, err) = fails(&s, &["plot", "unknown.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("did you mean `good`?"), "{err}");
}

#[test]
fn bad_inputs_are_usage_errors() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let (code, err) = fails(&s, &["run", "review.yaml", "--input", "topic", "--store", &db]);
    assert_eq!((code, err.as_str()), (2, "error: --input `topic` is not KEY=VALUE (e.g. --input topic=rust)\n"));
    let (code, err) = fails(&s, &["run", "review.yaml", "--inputs", "[1]", "--store", &db]);
    assert_eq!((code, err.as_str()), (2, "error: --inputs must be a JSON object of state values, not [1]\n"));
    let (code, err) = fails(&s, &["run", "review.yaml", "--inputs", "{", "--store", &db]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: --inputs is not valid JSON: EOF while parsing an object"), "{err}");
    let (code, err) = fails(&s, &["run", "review.yaml", "-i", "topc=x", "--store", &db]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: flow `review`: the inputs do not fit the state: unknown input `topc` (did you mean `topic`?); the state's keys are: drafts, topic. Declare it under `state.default` or `state.json_schema.properties`\n"
    );
    let (code, err) = fails(&s, &["run", "review.yaml", "--inputs-file", "nope.json", "--store", &db]);
    assert_eq!(code, 2);
    assert_eq!(err, "error: cannot read the inputs file nope.json: No such file or directory (os error 2)\n");
    // nothing was run, nothing stored
    let runs = json_lines(&s.cmd(&["runs", "list", "--json", "--store", &db]).output().unwrap());
    assert!(runs.is_empty(), "{runs:?}");
}

#[test]
fn a_failing_step_fails_the_run_with_exit_1_and_the_run_is_stored_failed() {
    let s = Scratch::new();
    s.write("failing.yaml", &REVIEW.replace(r#"'"published: " + outputs.draft'"#, r#"'outputs.nothing + 1'"#));
    let db = s.db("runs.db");
    let (code, err) = fails(&s, &["run", "failing.yaml", "-i", "topic=long enough topic", "--store", &db]);
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: run ") && last.contains(" of flow `review` failed: step `publish` failed: "),
        "{err}"
    );
    assert!(err.contains("  FAILED publish #2: "), "{err}");
    let runs = json_lines(&s.cmd(&["runs", "list", "--json", "--status", "failed", "--store", &db]).output().unwrap());
    assert_eq!(runs.len(), 1);
    assert!(runs[0]["error"].as_str().unwrap().contains("publish"), "{runs:?}");
    let trace = stdout(&s.cmd(&["trace", runs[0]["run_id"].as_str().unwrap(), "--store", &db]).output().unwrap());
    assert!(trace.lines().any(|l| l.starts_with("└─ error: ") && l.contains("publish")), "{trace}");
}

#[test]
fn a_dead_postgres_url_is_a_store_error_with_exit_4() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let dead = "postgres://postgres@127.0.0.1:1/nothing";
    let (code, err) = fails(&s, &["runs", "list", "--store", dead]);
    assert_eq!(code, 4);
    assert_eq!(
        err,
        "error: could not list runs in the store `postgres://postgres@127.0.0.1:1/nothing`: cannot reach PostgreSQL at postgres://postgres@127.0.0.1:1/nothing: error connecting to server: Connection refused (os error 111); check the URL (--store or $CREWFLOW_DB) and that the database is up\n"
    );
    let (code, err) = fails(&s, &["run", "review.yaml", "--store", dead]);
    assert_eq!(code, 4);
    assert!(err.starts_with("error: run "), "{err}");
    assert!(
        err.ends_with(" of flow `review` failed: could not record the new run in postgres://postgres@127.0.0.1:1/nothing: cannot reach PostgreSQL at postgres://postgres@127.0.0.1:1/nothing: error connecting to server: Connection refused (os error 111)\n"),
        "{err}"
    );
}

#[test]
fn reading_commands_never_create_a_store_and_unknown_runs_are_exit_5() {
    let s = Scratch::new();
    let (code, err) = fails(&s, &["runs", "list", "--store", "nowhere.db"]);
    assert_eq!(
        (code, err.as_str()),
        (4, "error: no SQLite store at `nowhere.db`; name the store runs were kept in with --store or $CREWFLOW_DB\n")
    );
    assert!(!s.path("nowhere.db").exists());
    // the default store is crewflow.db in the working directory, or $CREWFLOW_DB
    let (code, err) = fails(&s, &["runs", "list"]);
    assert_eq!(
        (code, err.as_str()),
        (4, "error: no SQLite store at `crewflow.db`; name the store runs were kept in with --store or $CREWFLOW_DB\n")
    );
    let out = s.cmd(&["runs", "list"]).env("CREWFLOW_DB", "elsewhere.db").output().unwrap();
    assert!(stderr(&out).contains("`elsewhere.db`"), "{}", stderr(&out));

    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    assert_eq!(s.cmd(&["run", "review.yaml", "--store", &db]).output().unwrap().status.code(), Some(0));
    let (code, err) = fails(&s, &["runs", "show", "not-an-id", "--store", &db]);
    assert_eq!(
        (code, err.as_str()),
        (2, "error: `not-an-id` is not a run id (a UUID such as 0193f7a2-…); `crewflow runs list` shows them\n")
    );
    let unknown = "01a24bd0-38ee-718c-975d-e56bc3250262";
    let (code, err) = fails(&s, &["runs", "show", unknown, "--store", &db]);
    assert_eq!(code, 5);
    assert_eq!(
        err,
        format!("error: no run {unknown} in the store `{}`; `crewflow runs list` shows the stored runs\n", db)
    );
    let (code, _) = fails(&s, &["trace", unknown, "--store", &db]);
    assert_eq!(code, 5);
    let (code, err) = fails(&s, &["runs", "list", "--status", "done", "--store", &db]);
    assert_eq!(
        (code, err.as_str()),
        (2, "error: unknown status `done`; use queued, running, paused, finished, failed or cancelled\n")
    );
}

#[test]
fn usage_help_version_and_completions() {
    let s = Scratch::new();
    let out = s.cmd(&["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for needle in [
        "Usage: crewflow [OPTIONS] <COMMAND>",
        "Examples:",
        "crewflow run review.yaml --input topic=rust",
        "Exit codes: 0 done",
    ] {
        assert!(help.contains(needle), "no `{needle}` in:\n{help}");
    }
    let out = s.cmd(&["--version"]).output().unwrap();
    assert_eq!(stdout(&out), format!("crewflow {}\n", env!("CARGO_PKG_VERSION")));
    let out = s.cmd(&["rnu"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unrecognized subcommand 'rnu'"), "{}", stderr(&out));
    assert!(stderr(&out).contains("tip: a similar subcommand exists: 'runs'"), "{}", stderr(&out));
    let out = s.cmd(&["completions", "bash"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("_crewflow()"), "a bash completion function");
}

#[test]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "needs CREWFLOW_TEST_POSTGRES")]
fn a_yaml_flow_runs_on_postgres() {
    let s = Scratch::new();
    // a flow name of its own: other tests' runs share the database
    let name = format!("review_{}", std::process::id());
    s.write("review.yaml", &REVIEW.replace("name: review", &format!("name: {name}")));
    let url = std::env::var("CREWFLOW_TEST_POSTGRES").unwrap();
    let out = s.cmd(&["run", "review.yaml", "-i", "topic=postgres is here", "--store", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "published: draft about postgres is here\n");
    let runs = json_lines(&s.cmd(&["runs", "list", "--flow", &name, "--json", "--store", &url]).output().unwrap());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "finished");
}

/// `crewflow compact` removes ended runs past their time and says how much; without a policy
/// it refuses (and changes nothing); a bad age names the problem.
#[test]
fn compact_removes_ended_runs_and_refuses_an_empty_policy() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    for _ in 0..3 {
        let out = s.cmd(&["run", "review.yaml", "-i", "topic=long enough topic", "--store", &db]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let (code, err) = fails(&s, &["compact", "--store", &db]);
    assert_eq!(code, 2);
    assert_eq!(
        err.trim_end(),
        "error: nothing to compact: give --older-than AGE, --flow-ttl FLOW=AGE, --journal-older-than AGE, --traces-older-than AGE or --vacuum"
    );
    let (code, err) = fails(&s, &["compact", "--older-than", "soon", "--store", &db]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'soon' for '--older-than <AGE>'"), "{err}");
    // A long time to live keeps them; a flow's own short one removes them.
    let kept = s.cmd(&["compact", "--older-than", "30d", "--store", &db, "--json"]).output().unwrap();
    assert_eq!(json_lines(&kept), [serde_json::json!({"runs": 0, "steps": 0, "journal": 0, "traces": 0})]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = s.cmd(&["compact", "--older-than", "30d", "--flow-ttl", "review=1ms", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(": 3 runs, 9 step outputs, 0 journal entries and 0 traces removed\n"),
        "{}",
        stdout(&out)
    );
    let runs = json_lines(&s.cmd(&["runs", "list", "--json", "--store", &db]).output().unwrap());
    assert!(runs.is_empty(), "{runs:?}");
}

/// Without the `otel` feature, `--otlp` says how to get it (and sends nothing).
#[cfg(not(feature = "otel"))]
#[test]
fn otlp_needs_the_otel_feature() {
    let s = Scratch::new();
    s.write("review.yaml", REVIEW);
    let db = s.db("runs.db");
    let out = s.cmd(&["run", "review.yaml", "--store", &db, "--json"]).output().unwrap();
    let id = json_lines(&out).last().unwrap()["run_id"].as_str().unwrap().to_string();
    let out = s.cmd(&["trace", &id, "--otlp", "http://127.0.0.1:4318", "--store", &db]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: this crewflow was built without OpenTelemetry export; build it with the `otel` feature (cargo install crewflow-cli --features otel)\n"
    );
}
