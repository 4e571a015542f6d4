//! The real MCP packages from npm that the MCP tests run against (tests/mcp, installed by
//! .ci/run with `npm ci`).

use std::path::PathBuf;

/// `tests/mcp/node_modules/<rest>`, or a panic saying how to install it.
pub fn node_module(rest: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/node_modules").join(rest);
    assert!(
        path.exists(),
        "{} is missing: run `npm ci` in tests/mcp (.ci/run does) to install the MCP test packages",
        path.display()
    );
    path
}

/// The reference "everything" MCP server's entry point.
pub fn everything() -> PathBuf {
    node_module("@modelcontextprotocol/server-everything/dist/index.js")
}

/// The test client script (tests/mcp/client.mjs), after checking the SDK is installed.
pub fn client_script() -> PathBuf {
    node_module("@modelcontextprotocol/sdk/package.json");
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.mjs")
}

/// The MCP server of tests/mcp_durable.rs (tests/mcp/effects.mjs: tools that append to a
/// file), after checking the SDK is installed.
pub fn effects_script() -> PathBuf {
    node_module("@modelcontextprotocol/sdk/package.json");
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/effects.mjs")
}
