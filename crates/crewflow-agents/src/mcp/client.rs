//! The client side: an MCP server's tools as crewflow [`Tool`]s.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ServiceError, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::McpError;
use super::content::result_text;
use crate::error::ToolError;
use crate::tool::{Tool, ToolFuture, ToolOptions, ToolSet};

/// How long connecting (start, handshake) and listing may take by default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of a server's standard error are kept for error messages.
const STDERR_LINES: usize = 20;

enum Transport {
    Stdio(tokio::process::Command),
    Http { url: String, auth: Option<String> },
}

/// An MCP server to take tools from: a program spoken to over its standard input and output
/// ([`stdio`](McpServer::stdio)) or a URL speaking streamable HTTP ([`http`](McpServer::http)).
///
/// [`tools`](McpServer::tools) connects and lists the server's tools as a [`ToolSet`]: they go
/// to an agent like native tools (`agent.tools(&set)`), and their calls get the same argument
/// validation (against the server's input schemas), [`ToolOptions`] (timeout, budget, cache),
/// repeated-call detection and journaling. The connection lives as long as any of its tools
/// (or the [`McpClient`]); when the last is dropped the server's process is shut down.
pub struct McpServer {
    name: String,
    transport: Transport,
    prefix: String,
    only: Option<Vec<String>>,
    options: ToolOptions,
    connect_timeout: Duration,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer").field("name", &self.name).finish_non_exhaustive()
    }
}

impl McpServer {
    /// A server started as a child process, spoken to over its stdin and stdout (its stderr is
    /// kept for error messages). Named after its program until [`name`](McpServer::name).
    pub fn stdio(command: impl Into<tokio::process::Command>) -> Self {
        let command: tokio::process::Command = command.into();
        let program = std::path::Path::new(command.as_std().get_program())
            .file_name()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        McpServer::new(program, Transport::Stdio(command))
    }

    /// A server at `url` speaking MCP's streamable HTTP transport (`http://host:port/mcp`).
    pub fn http(url: impl Into<String>) -> Self {
        let url = url.into();
        McpServer::new(url.clone(), Transport::Http { url, auth: None })
    }

    fn new(name: String, transport: Transport) -> Self {
        McpServer {
            name,
            transport,
            prefix: String::new(),
            only: None,
            options: ToolOptions::default(),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// The name errors and tool results call the server by.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends `Authorization: Bearer <token>` with every HTTP request.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        if let Transport::Http { auth, .. } = &mut self.transport {
            *auth = Some(token.into());
        }
        self
    }

    /// Prefixes the tools' names (`fs_` makes `read_file` `fs_read_file`), so tools of
    /// several servers cannot clash. The server is still called by its own names.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Takes only these of the server's tools (by the server's names); naming one it does not
    /// have is an error.
    pub fn only<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.only = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// The [`ToolOptions`] of every tool of this server (timeout, call budget, cache).
    pub fn tool_options(mut self, options: ToolOptions) -> Self {
        self.options = options;
        self
    }

    /// How long starting the server and the MCP handshake may take (30 s by default).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit;
        self
    }

    /// Connects and lists the server's tools.
    pub async fn tools(self) -> Result<ToolSet, McpError> {
        self.connect().await?.tools().await
    }

    /// Starts (or reaches) the server and does the MCP handshake.
    pub async fn connect(self) -> Result<McpClient, McpError> {
        let McpServer { name, transport, prefix, only, options, connect_timeout } = self;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let started = async {
            match transport {
                Transport::Stdio(command) => spawn(&name, command, &stderr).await,
                Transport::Http { url, auth } => reach(&name, url, auth).await,
            }
        };
        let (service, pid) = match tokio::time::timeout(connect_timeout, started).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(McpError::Timeout {
                    server: name,
                    what: "complete the MCP handshake",
                    limit: connect_timeout,
                });
            }
        };
        let connection = Connection {
            peer: service.peer().clone(),
            service: Mutex::new(Some(service)),
            name,
            pid,
            stderr,
            prefix,
            only,
            options,
            timeout: connect_timeout,
        };
        Ok(McpClient { connection: Arc::new(connection) })
    }
}

type Service = RunningService<RoleClient, ()>;

/// Spawns the server's process and does the handshake over its stdio.
async fn spawn(
    name: &str,
    mut command: tokio::process::Command,
    stderr: &Arc<Mutex<VecDeque<String>>>,
) -> Result<(Service, Option<u32>), McpError> {
    // If the runtime goes away before the graceful shutdown has run, the process is killed
    // rather than left behind.
    command.kill_on_drop(true);
    let (process, err) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| McpError::Spawn { server: name.to_string(), source })?;
    let pid = process.id();
    if let Some(err) = err {
        let lines = stderr.clone();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut lines = lines.lock().unwrap_or_else(PoisonError::into_inner);
                if lines.len() == STDERR_LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
    }
    let service = ().serve(process).await.map_err(|e| McpError::Handshake {
        server: name.to_string(),
        message: format!("{e}{}", stderr_tail(stderr)),
    })?;
    Ok((service, pid))
}

/// Reaches the server over streamable HTTP and does the handshake.
async fn reach(name: &str, url: String, auth: Option<String>) -> Result<(Service, Option<u32>), McpError> {
    // reqwest is built without a TLS provider: install the workspace's.
    crewflow_llm::install_crypto_provider();
    let client = reqwest::Client::builder().build().map_err(|e| McpError::Handshake {
        server: name.to_string(),
        message: format!("the HTTP client could not be built: {e}"),
    })?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(url);
    if let Some(token) = auth {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::with_client(client, config);
    let service =
        ().serve(transport)
            .await
            .map_err(|e| McpError::Handshake { server: name.to_string(), message: e.to_string() })?;
    Ok((service, None))
}

/// `; its standard error ended with: ...`, or nothing.
fn stderr_tail(stderr: &Mutex<VecDeque<String>>) -> String {
    let lines = stderr.lock().unwrap_or_else(PoisonError::into_inner);
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its standard error ended with:\n{}", lines.iter().cloned().collect::<Vec<_>>().join("\n"))
    }
}

struct Connection {
    name: String,
    peer: Peer<RoleClient>,
    /// The running service; dropping it shuts the server down (taken by `close`).
    service: Mutex<Option<Service>>,
    pid: Option<u32>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    prefix: String,
    only: Option<Vec<String>>,
    options: ToolOptions,
    timeout: Duration,
}

impl Connection {
    /// A failed request, in words for the model (or the caller).
    fn describe(&self, e: &ServiceError) -> String {
        let server = &self.name;
        match e {
            ServiceError::McpError(data) => {
                format!("the MCP server `{server}` refused the call: {} (JSON-RPC error {})", data.message, data.code.0)
            }
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => format!(
                "the MCP server `{server}` is not running any more or its connection is closed ({e}){}; it must be connected again",
                stderr_tail(&self.stderr)
            ),
            ServiceError::Timeout { timeout } => format!("the MCP server `{server}` did not answer within {timeout:?}"),
            other => format!("the MCP server `{server}` failed: {other}"),
        }
    }
}

/// A connection to an MCP server (from [`McpServer::connect`]).
///
/// Cheap to clone; the server is shut down when the last clone and the last of its tools are
/// dropped, or at [`close`](McpClient::close).
#[derive(Clone)]
pub struct McpClient {
    connection: Arc<Connection>,
}

impl std::fmt::Debug for McpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClient").field("server", &self.connection.name).field("pid", &self.connection.pid).finish()
    }
}

impl McpClient {
    /// The server's name.
    pub fn name(&self) -> &str {
        &self.connection.name
    }

    /// The server process's id (stdio servers).
    pub fn pid(&self) -> Option<u32> {
        self.connection.pid
    }

    /// The server's tools (those chosen with [`McpServer::only`]), each a [`Tool`].
    pub async fn list(&self) -> Result<Vec<McpTool>, McpError> {
        let c = &self.connection;
        let listed = match tokio::time::timeout(c.timeout, c.peer.list_all_tools()).await {
            Ok(r) => r.map_err(|e| McpError::Request {
                server: c.name.clone(),
                what: "list its tools",
                message: c.describe(&e),
            })?,
            Err(_) => {
                return Err(McpError::Timeout { server: c.name.clone(), what: "list its tools", limit: c.timeout });
            }
        };
        if let Some(only) = &c.only {
            let missing: Vec<String> = only
                .iter()
                .filter(|n| !listed.iter().any(|t| t.name == n.as_str()))
                .map(|n| format!("it has no tool `{n}`"))
                .collect();
            if !missing.is_empty() {
                let names: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
                let mut problems = missing;
                problems.push(format!("its tools are: {}", names.join(", ")));
                return Err(McpError::Tools { server: c.name.clone(), problems });
            }
        }
        Ok(listed
            .into_iter()
            .filter(|t| c.only.as_ref().is_none_or(|only| only.iter().any(|n| t.name == n.as_str())))
            .map(|t| McpTool {
                name: format!("{}{}", c.prefix, sanitize(&t.name)),
                remote: t.name.to_string(),
                description: t.description.as_deref().or(t.title.as_deref()).unwrap_or_default().to_string(),
                parameters: Value::Object((*t.input_schema).clone()),
                connection: c.clone(),
            })
            .collect())
    }

    /// The server's tools as a [`ToolSet`], each with the server's [`ToolOptions`]. A tool
    /// whose input schema is not a valid JSON Schema (or whose name clashes) is an error
    /// naming it; leave it out with [`McpServer::only`].
    pub async fn tools(&self) -> Result<ToolSet, McpError> {
        let mut set = ToolSet::new();
        for tool in self.list().await? {
            set = set.with_options(tool, self.connection.options.clone());
        }
        if !set.problems().is_empty() {
            return Err(McpError::Tools { server: self.connection.name.clone(), problems: set.problems().to_vec() });
        }
        Ok(set)
    }

    /// Calls the server's tool `name` (its own name) with `args`, outside any agent (no
    /// validation, no options): its text, or the error.
    pub async fn call(&self, name: &str, args: Value) -> Result<String, ToolError> {
        call(&self.connection, name, args).await
    }

    /// Shuts the server down now (for a stdio server: closes its stdin, waits for it to exit,
    /// then terminates it). Its tools fail from then on. Dropping every clone and tool does
    /// the same, in the background.
    pub async fn close(&self) {
        let service = self.connection.service.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut service) = service {
            // The join error of a panicked service task leaves nothing more to close.
            let _ = service.close().await;
        }
    }
}

/// Calls `name` on the server and maps its answer.
async fn call(c: &Connection, name: &str, args: Value) -> Result<String, ToolError> {
    let mut params = CallToolRequestParams::new(name.to_string());
    match args {
        Value::Object(map) => params = params.with_arguments(map),
        Value::Null => {}
        other => {
            return Err(ToolError::InvalidArguments(format!("the arguments must be a JSON object, not {other}")));
        }
    }
    match c.peer.call_tool(params).await {
        Ok(result) => result_text(&c.name, result),
        Err(e) => Err(ToolError::Failed(c.describe(&e))),
    }
}

/// `name` with every character providers reject (anything but letters, digits, `_`, `-`)
/// as `_`.
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// One tool of an MCP server, usable like a native [`Tool`].
pub struct McpTool {
    name: String,
    remote: String,
    description: String,
    parameters: Value,
    connection: Arc<Connection>,
}

impl std::fmt::Debug for McpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTool").field("name", &self.name).field("server", &self.connection.name).finish()
    }
}

impl McpTool {
    /// The tool's name on its server (its [`Tool::name`] may carry a prefix, or `_` for
    /// characters providers reject).
    pub fn remote_name(&self) -> &str {
        &self.remote
    }
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> Value {
        self.parameters.clone()
    }
    fn call(&self, args: Value) -> ToolFuture<'_> {
        Box::pin(call(&self.connection, &self.remote, args))
    }
}
