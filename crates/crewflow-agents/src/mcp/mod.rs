//! MCP (the Model Context Protocol): tools of MCP servers as crewflow tools
//! ([`McpServer`] → [`McpClient`] → [`McpTool`]s in a [`ToolSet`]), and crewflow tools and
//! flows served to MCP clients ([`McpService`]). On the `rmcp` crate.

mod client;
mod content;
mod service;

pub use client::{McpClient, McpServer, McpTool};
pub use service::McpService;

/// Why an MCP server could not be started, reached, or listed.
///
/// A failed tool *call* is not one of these: inside an agent's loop it goes back to the model
/// as the tool's result, as a native tool's error does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The server's process could not be started.
    #[error(
        "the MCP server `{server}` could not be started: {source}; check the command and that the program is installed"
    )]
    Spawn {
        /// The server (its name).
        server: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server did not complete the MCP handshake (`initialize`).
    #[error("the MCP server `{server}` did not complete the MCP handshake: {message}")]
    Handshake {
        /// The server.
        server: String,
        /// What went wrong (with the end of the server's standard error, if any).
        message: String,
    },
    /// The server did not answer in time while connecting or listing its tools.
    #[error(
        "the MCP server `{server}` did not {what} within {limit:?}; is it an MCP server on this transport? (raise `McpServer::connect_timeout` if it is slow to start)"
    )]
    Timeout {
        /// The server.
        server: String,
        /// What it did not do.
        what: &'static str,
        /// The limit.
        limit: std::time::Duration,
    },
    /// A request to the server failed (listing its tools, say).
    #[error("the MCP server `{server}` could not {what}: {message}")]
    Request {
        /// The server.
        server: String,
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// The server's tools cannot be used as they are (a schema that is not a valid JSON
    /// Schema, a name given to [`McpServer::only`] that the server does not have, ...).
    #[error("the tools of the MCP server `{server}` cannot be used: {}", problems.join("; "))]
    Tools {
        /// The server.
        server: String,
        /// What is wrong, tool by tool.
        problems: Vec<String>,
    },
    /// Serving over MCP failed.
    #[error("serving MCP failed: {0}")]
    Serve(String),
}
