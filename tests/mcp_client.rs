//! Tools of a real MCP server (the reference "everything" server from npm, started by the
//! tests over stdio and over streamable HTTP) in crewflow agents: listing, calls through an
//! agent's tool loop (scripted replies in the OpenAI wire format over loopback), the server's
//! errors, a server killed in the middle of a call, unknown tools, timeouts, shutdown on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::time::Duration;

use common::http::{TestServer, openai_completion, openai_llm, openai_tool_calls};
use crewflow::agents::{Agent, McpError, McpServer, Tool, ToolError, ToolOptions, ToolOutcome};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// The everything server over stdio.
fn everything() -> McpServer {
    let mut command = tokio::process::Command::new("node");
    command.arg(common::mcp::everything()).arg("stdio");
    McpServer::stdio(command).name("everything")
}

fn agent(server: &TestServer) -> Agent {
    Agent::new(openai_llm(server)).role("Helper").goal("Use the tools.")
}

#[tokio::test]
async fn lists_the_servers_tools_with_their_schemas() {
    let client = everything().connect().await.unwrap();
    let tools = client.list().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name()).collect();
    assert!(names.contains(&"echo") && names.contains(&"get-sum"), "{names:?}");
    let sum = tools.iter().find(|t| t.name() == "get-sum").unwrap();
    assert_eq!(sum.description(), "Returns the sum of two numbers");
    let schema = sum.parameters();
    assert_eq!(schema["properties"]["a"]["type"], "number", "{schema}");
    assert_eq!(schema["required"], json!(["a", "b"]), "{schema}");
    // As a ToolSet: checked against the server's schema before any call.
    let set = client.tools().await.unwrap();
    assert_eq!(set.call("get-sum", json!({"a": 2, "b": 40})).await.unwrap(), "The sum of 2 and 40 is 42.");
    let err = set.call("get-sum", json!({"a": "two", "b": 1})).await.unwrap_err();
    assert!(matches!(&err, ToolError::InvalidArguments(m) if m.contains("/a")), "{err}");
}

#[tokio::test]
async fn an_agent_calls_mcp_tools_in_its_loop() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[
            ("c1", "echo", json!({"message": "hello from crewflow"})),
            ("c2", "get-sum", json!({"a": 2, "b": 3})),
        ]),
        openai_completion("Echoed, and 2 + 3 = 5."),
    ])
    .await;
    let tools = everything().only(["echo", "get-sum"]).tools().await.unwrap();
    let out = agent(&server).tools(&tools).kickoff("Echo a greeting and add 2 and 3.").await.unwrap();
    assert_eq!(out.raw, "Echoed, and 2 + 3 = 5.");
    let results: Vec<(ToolOutcome, &str)> = out.tool_calls.iter().map(|t| (t.outcome, t.text.as_str())).collect();
    assert_eq!(
        results,
        [(ToolOutcome::Ok, "Echo: hello from crewflow"), (ToolOutcome::Ok, "The sum of 2 and 3 is 5.")]
    );
    let reqs = server.requests();
    let first = reqs[0].json();
    let listed: Vec<&str> =
        first["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["echo", "get-sum"], "only() keeps the server's order");
    assert_eq!(first["tools"][1]["function"]["parameters"]["properties"]["b"]["type"], "number");
    let fed_back = reqs[1].body.clone();
    assert!(
        fed_back.contains("Echo: hello from crewflow") && fed_back.contains("The sum of 2 and 3 is 5."),
        "{fed_back}"
    );
}

#[tokio::test]
async fn server_errors_bad_arguments_and_unknown_tools_go_back_to_the_model() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[
            ("c1", "gzip-file-as-resource", json!({"name": "x.gz", "data": "ftp://example.com/x"})),
            ("c2", "get-sum", json!({"a": "two", "b": 1})),
            ("c3", "no-such-tool", json!({})),
        ]),
        openai_completion("I could not do it."),
    ])
    .await;
    let tools = everything().tools().await.unwrap();
    let out = agent(&server).tools(&tools).kickoff("Try things.").await.unwrap();
    assert_eq!(out.raw, "I could not do it.");
    let [gzip, sum, unknown] = &out.tool_calls[..] else { panic!("{:?}", out.tool_calls) };
    assert_eq!(gzip.outcome, ToolOutcome::Error, "{}", gzip.text);
    assert!(gzip.text.contains("the MCP server `everything` reported an error"), "{}", gzip.text);
    assert!(gzip.text.contains("Unsupported URL protocol"), "the server's own message: {}", gzip.text);
    assert_eq!(sum.outcome, ToolOutcome::Invalid, "{}", sum.text);
    assert!(sum.text.contains("/a"), "{}", sum.text);
    assert_eq!(unknown.outcome, ToolOutcome::Unknown);
    assert!(unknown.text.contains("echo") && unknown.text.contains("get-sum"), "{}", unknown.text);
}

#[tokio::test]
async fn the_servers_answer_to_an_unknown_name_is_an_error() {
    let client = everything().connect().await.unwrap();
    let err = client.call("no-such-tool", json!({})).await.unwrap_err();
    assert!(err.to_string().contains("no-such-tool not found"), "{err}");
}

#[tokio::test]
async fn a_server_killed_mid_call_is_an_error_for_the_model() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "trigger-long-running-operation", json!({"duration": 60, "steps": 1}))]),
        openai_tool_calls(&[("c2", "echo", json!({"message": "still there?"}))]),
        openai_completion("The server went away."),
    ])
    .await;
    let client = everything().connect().await.unwrap();
    let tools = client.tools().await.unwrap();
    let pid = client.pid().unwrap();
    // Kill the server while the minute-long call is in flight.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        assert!(status.success());
    });
    let out = agent(&server).tools(&tools).kickoff("Run the long operation.").await.unwrap();
    killer.await.unwrap();
    assert_eq!(out.raw, "The server went away.");
    for call in &out.tool_calls {
        assert_eq!(call.outcome, ToolOutcome::Error, "{}", call.text);
        assert!(call.text.contains("the MCP server `everything` is not running any more"), "{}", call.text);
    }
    assert_eq!(out.tool_calls.len(), 2);
}

#[tokio::test]
async fn a_slow_call_times_out_by_the_tools_options() {
    let tools = everything()
        .only(["trigger-long-running-operation"])
        .tool_options(ToolOptions::new().timeout(Duration::from_millis(300)))
        .tools()
        .await
        .unwrap();
    let err = tools.call("trigger-long-running-operation", json!({"duration": 30, "steps": 1})).await.unwrap_err();
    assert!(err.to_string().contains("did not answer within its timeout"), "{err}");
}

#[tokio::test]
async fn prefixes_and_only_name_the_tools() {
    let client = everything().prefix("ev_").only(["echo"]).connect().await.unwrap();
    let tools = client.list().await.unwrap();
    assert_eq!(tools.len(), 1);
    assert_eq!((tools[0].name(), tools[0].remote_name()), ("ev_echo", "echo"));
    assert_eq!(tools[0].call(json!({"message": "x"})).await.unwrap(), "Echo: x");
    let err = everything().only(["echo", "nope"]).tools().await.unwrap_err();
    assert!(matches!(&err, McpError::Tools { problems, .. } if problems[0] == "it has no tool `nope`"), "{err}");
    assert!(err.to_string().contains("its tools are: echo"), "{err}");
}

#[tokio::test]
async fn a_program_that_cannot_start_is_a_clear_error() {
    let err = McpServer::stdio(std::process::Command::new("/nonexistent/mcp-server")).connect().await.unwrap_err();
    assert!(matches!(err, McpError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("`mcp-server` could not be started"), "{err}");
    // A program that is not an MCP server: it exits, and its stderr is in the error.
    let mut command = tokio::process::Command::new("node");
    command.args(["-e", "console.error('not an MCP server'); process.exit(3)"]);
    let err = McpServer::stdio(command).connect().await.unwrap_err();
    assert!(matches!(err, McpError::Handshake { .. }), "{err}");
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn dropping_the_client_and_its_tools_shuts_the_server_down() {
    let client = everything().connect().await.unwrap();
    let tools = client.tools().await.unwrap();
    let pid = client.pid().unwrap();
    assert!(!gone(pid));
    drop(tools);
    drop(client);
    let mut waited = 0;
    while !gone(pid) {
        assert!(waited < 200, "the server (pid {pid}) is still running 20 s after its client was dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    // close() does it at once.
    let client = everything().connect().await.unwrap();
    let pid = client.pid().unwrap();
    client.close().await;
    assert!(gone(pid), "close() returns once the server has exited");
    let err = client.call("echo", json!({"message": "x"})).await.unwrap_err();
    assert!(err.to_string().contains("is not running any more"), "{err}");
}

#[tokio::test]
async fn tools_over_streamable_http() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut node = tokio::process::Command::new("node")
        .arg(common::mcp::everything())
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(node.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next_line().await.unwrap().expect("the HTTP server exited before listening");
        if line.contains("listening on port") {
            break;
        }
    }
    let client = McpServer::http(format!("http://127.0.0.1:{port}/mcp")).connect().await.unwrap();
    let tools = client.tools().await.unwrap();
    assert!(tools.names().contains(&"get-sum"), "{:?}", tools.names());
    assert_eq!(tools.call("echo", json!({"message": "over HTTP"})).await.unwrap(), "Echo: over HTTP");
    let err = tools.call("gzip-file-as-resource", json!({"data": "ftp://example.com/x"})).await.unwrap_err();
    assert!(err.to_string().contains("Unsupported URL protocol"), "{err}");
    client.close().await;
    node.kill().await.unwrap();
}
