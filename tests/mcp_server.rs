//! crewflow tools and a flow served over MCP (examples/mcp_server), driven by a real MCP
//! client: the official TypeScript SDK from npm (tests/mcp/client.mjs), over stdio; and by
//! crewflow's own MCP client (JSON-RPC errors mapped).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use serde_json::{Value, json};

/// The example's binary, built on demand (it needs the feature `mcp`, which
/// `common::example_binary` does not pass).
fn example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let binary = profile_dir.join("examples/mcp_server");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--example", "mcp_server", "--features", "mcp"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "the example mcp_server did not build");
    }
    binary
}

/// Runs the SDK client against the example server, making `calls`; its JSON report.
fn drive(calls: Value) -> Value {
    let binary = example();
    let out = std::process::Command::new("node")
        .arg(common::mcp::client_script())
        .arg(&binary)
        .env("CALLS", calls.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the MCP client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn an_mcp_client_lists_and_calls_crewflow_tools_and_flows() {
    let report = drive(json!([
        {"name": "word_count", "arguments": {"text": "one two three"}},
        {"name": "shipping_quote", "arguments": {"weight_kg": 2.5, "express": true}},
        {"name": "shipping_quote", "arguments": {}},
        {"name": "to_fahrenheit", "arguments": {"celsius": "hot"}},
        {"name": "no_such_tool", "arguments": {}},
    ]));
    assert_eq!(report["server"]["name"], "crewflow-example");
    let tools = report["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["word_count", "to_fahrenheit", "shipping_quote"]);
    assert_eq!(tools[0]["description"], "Counts the words of a text.");
    assert_eq!(tools[0]["inputSchema"]["properties"]["text"]["type"], "string");
    let quote = &tools[2]["inputSchema"];
    assert_eq!(quote["properties"]["weight_kg"]["type"], "number", "{quote}");
    assert!(quote.get("required").is_none(), "a flow's inputs are optional: {quote}");

    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0], json!({"isError": false, "text": "3"}));
    // The flow ran: 2 × (4.5 + 1.2 × 2.5) = 15.
    assert_eq!(results[1], json!({"isError": false, "text": "express shipping: 15.00 EUR"}));
    // The flow's step failed: the tool's error, for the client's model.
    assert_eq!(results[2]["isError"], true, "{}", results[2]);
    assert!(results[2]["text"].as_str().unwrap().contains("the weight must be more than 0 kg"), "{}", results[2]);
    // Arguments are checked against the schema before the call.
    assert_eq!(results[3]["isError"], true, "{}", results[3]);
    assert!(results[3]["text"].as_str().unwrap().contains("/celsius"), "{}", results[3]);
    // A name no tool has is a protocol error (invalid params) naming the tools.
    assert_eq!(results[4]["rpcError"], -32602, "{}", results[4]);
    assert!(results[4]["message"].as_str().unwrap().contains("the tools are: word_count"), "{}", results[4]);
}

#[tokio::test]
async fn a_crewflow_client_uses_a_crewflow_server_and_maps_its_json_rpc_errors() {
    use crewflow::agents::McpServer;
    let client = McpServer::stdio(std::process::Command::new(example())).name("example").connect().await.unwrap();
    let tools = client.tools().await.unwrap();
    assert_eq!(tools.names(), ["word_count", "to_fahrenheit", "shipping_quote"]);
    assert_eq!(tools.call("shipping_quote", json!({"weight_kg": 1.0})).await.unwrap(), "standard shipping: 5.70 EUR");
    // The server answers a name it does not know with a JSON-RPC error (not a tool result).
    let err = client.call("nope", json!({})).await.unwrap_err().to_string();
    assert!(err.contains("the MCP server `example` refused the call"), "{err}");
    assert!(err.contains("JSON-RPC error -32602") && err.contains("the tools are: word_count"), "{err}");
    client.close().await;
}
