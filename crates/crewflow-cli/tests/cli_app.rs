//! `crewflow_cli::App` in a binary of one's own: this test's binary *is* the example
//! `examples/own_binary.rs` when `CREWFLOW_TEST_AS_EXAMPLE` is set, and otherwise drives that
//! binary as a user would (a real process, its real command line).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;
#[path = "../examples/own_binary.rs"]
mod own_binary;

use std::process::{Command, ExitCode, Output};

/// One HTTP/1.1 request over loopback; the body as JSON.
fn http(addr: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}"))
}

fn main() -> ExitCode {
    if std::env::var_os("CREWFLOW_TEST_AS_EXAMPLE").is_some() {
        return own_binary::main();
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], db: Option<&str>| -> Output {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("CREWFLOW_TEST_AS_EXAMPLE", "1").env_remove("CREWFLOW_DB").current_dir(dir.path()).args(args);
        if let Some(db) = db {
            cmd.env("CREWFLOW_DB", db);
        }
        cmd.output().unwrap()
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();

    // the compiled flow runs by name, with the same progress lines and output as YAML flows
    let out = run(&["run", "greet", "--input", "name=Ada"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "greeted\n");
    let err = text(&out.stderr);
    assert!(err.contains(" of flow `greet` started") && err.contains("  route  check -> short"), "{err}");
    assert!(err.lines().last().unwrap().contains(" of flow `greet`, 3 steps in "), "{err}");

    // --store cannot give a compiled flow a store: said, not silently ignored
    let out = run(&["run", "greet", "--store", "sqlite://elsewhere.db"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).starts_with(
            "note: flow `greet` was built without a store, so this run is kept nowhere; give it one with FlowBuilder::store\n"
        ),
        "{}",
        text(&out.stderr)
    );

    // plot by name
    let out = run(&["plot", "greet", "--format", "mermaid"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\nflowchart LR\n  n0([\"hello\"]):::start\n"), "{}", text(&out.stdout));

    // a name that is neither a mounted flow nor a file: the file error, exit 2
    let out = run(&["run", "gret"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: cannot read the flow definition gret: "), "{err}");
    assert!(
        err.ends_with("; check the path of the flow file; or name a flow compiled into this binary: greet\n"),
        "{err}"
    );

    // with a store: listed, and forked with other inputs
    let db = format!("sqlite://{}", dir.path().join("greet.db").display());
    let out = run(&["run", "greet", "--input", "name=Ada", "--json"], Some(&db));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let last: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let id = last["run_id"].as_str().unwrap().to_string();
    let out = run(&["runs", "fork", &id, "--flow", "greet", "--input", "name=Ada Lovelace, Countess"], Some(&db));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "greeted at length\n");
    let out = run(&["runs", "list", "--json"], Some(&db));
    assert_eq!(text(&out.stdout).lines().count(), 2, "{}", text(&out.stdout));

    // chat: piped lines are turns, replies on stdout; a session goes on where it was left
    let chat = |args: &[&str], input: &str| -> Output {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("CREWFLOW_TEST_AS_EXAMPLE", "1")
            .env("CREWFLOW_DB", &db)
            .current_dir(dir.path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refused command exits before it reads its input: the pipe may be closed already.
        if let Err(e) = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        child.wait_with_output().unwrap()
    };
    let out = chat(&["chat", "echo", "--session", "ada"], "hello\n\nagain\n/quit\nnot sent\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "turn 0: you said hello\nturn 1: you said again\n");
    assert_eq!(
        text(&out.stderr),
        "new session `ada` of flow `echo`; /quit ends it\nsession `ada` kept; `… chat echo --session ada` goes on with it\n"
    );
    let out = chat(&["chat", "echo", "--session", "ada", "--json"], "third\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let tokens: Vec<&str> =
        lines.iter().filter(|l| l["type"] == "token").map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(tokens, ["turn ", "2: ", "you ", "said ", "third"], "the reply streams as it arrives");
    let turn = lines.last().unwrap();
    assert_eq!(turn["type"], "turn");
    assert_eq!((turn["index"].as_u64(), turn["reply"].as_str()), (Some(2), Some("turn 2: you said third")));
    let out = chat(&["chat", "echo", "--session", "ada"], "");
    assert_eq!(
        text(&out.stderr),
        "session `ada` of flow `echo`, 6 messages; /quit ends it\nyou> hello\necho> turn 0: you said hello\nyou> again\necho> turn 1: you said again\nyou> third\necho> turn 2: you said third\nsession `ada` kept; `… chat echo --session ada` goes on with it\n"
    );
    let out = run(&["sessions", "show", "echo", "ada", "--json"], Some(&db));
    let shown: serde_json::Value = serde_json::from_str(text(&out.stdout).trim_end()).unwrap();
    assert_eq!(shown["turns"].as_array().map(Vec::len), Some(3), "{shown}");
    let out = chat(&["chat", "greet"], "hi\n");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "error: no conversational flow `greet`; this binary has: echo\n");
    let out = chat(&["chat", "echo", "--session", ""], "hi\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("error: --session: "), "{}", text(&out.stderr));

    // serve: the compiled flow (in its own store) and the conversational one, over HTTP
    let mut server = Command::new(std::env::current_exe().unwrap())
        .env("CREWFLOW_TEST_AS_EXAMPLE", "1")
        .env("CREWFLOW_DB", &db)
        .current_dir(dir.path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::listening_address(&mut server);
    let flows = http(&addr, "GET", "/flows", "");
    let names: Vec<(&str, bool)> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["conversational"].as_bool().unwrap()))
        .collect();
    assert_eq!(names, [("echo", true), ("greet", false)]);
    let started = http(&addr, "POST", "/flows/greet/runs?wait=true", r#"{"name": "Grace"}"#);
    assert_eq!(started["output"].as_str(), Some("greeted"), "{started}");
    let turn = http(&addr, "POST", "/sessions/ada/turns", r#"{"message": "over http"}"#);
    assert_eq!(turn["reply"].as_str(), Some("turn 3: you said over http"), "{turn}");
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    let out = server.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).ends_with("server stopped\n"), "{}", text(&out.stderr));

    // a compiled flow that keeps its runs nowhere cannot be served: said, with the fix
    let out = run(&["serve", "--addr", "127.0.0.1:0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: cannot serve: flow `greet` keeps its runs in no store; build it with the server's store (FlowBuilder::store(store.clone()))\n"
    );

    // the binary's help lists the same subcommands
    let help = text(&run(&["--help"], None).stdout);
    for sub in ["run", "plot", "runs", "feedback", "worker", "trace", "new", "serve", "chat"] {
        assert!(help.contains(&format!("\n  {sub} ")), "no `{sub}` in:\n{help}");
    }
    eprintln!("cli_app: ok");
    ExitCode::SUCCESS
}
