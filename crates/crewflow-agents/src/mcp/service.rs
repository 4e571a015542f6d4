//! The server side: crewflow tools and flows served to MCP clients.

use std::sync::Arc;

use crewflow_core::{Flow, FlowState};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, InitializeResult,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde_json::Value;

use super::McpError;
use crate::flow_tool::FlowTool;
use crate::tool::{Tool, ToolSet};

/// Serves a [`ToolSet`] (and flows, as [`FlowTool`]s) to MCP clients: `tools/list` lists the
/// tools with their descriptions and schemas, `tools/call` runs one through the tool set
/// (arguments checked against its schema, its timeout applied).
///
/// A tool's error, or arguments that do not fit, come back as a result with `isError`, so
/// the client's model can correct itself; a call naming no tool is a JSON-RPC error
/// (`-32602`, invalid params) naming the tools there are.
///
/// ```no_run
/// # async fn demo(tools: crewflow_agents::ToolSet) -> Result<(), crewflow_agents::McpError> {
/// use crewflow_agents::McpService;
/// McpService::new("my-tools").tools(&tools).serve_stdio().await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct McpService {
    name: String,
    version: String,
    instructions: Option<String>,
    tools: ToolSet,
}

impl McpService {
    /// A server named `name` (clients show it), with no tools yet.
    pub fn new(name: impl Into<String>) -> Self {
        McpService {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            instructions: None,
            tools: ToolSet::new(),
        }
    }

    /// The version clients are told (crewflow's by default).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// What a client's model is told about using these tools.
    pub fn instructions(mut self, text: impl Into<String>) -> Self {
        self.instructions = Some(text.into());
        self
    }

    /// Serves these tools too (with their options).
    pub fn tools(mut self, tools: &ToolSet) -> Self {
        self.tools = self.tools.merge(tools);
        self
    }

    /// Serves this tool too.
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools = self.tools.with(tool);
        self
    }

    /// Serves `flow` as a tool (see [`FlowTool`]): named after the flow, its arguments the
    /// state's fields, its result the run's output.
    pub fn flow<S: FlowState + JsonSchema>(self, flow: Flow<S>, description: impl Into<String>) -> Self {
        self.tool(FlowTool::new(flow, description))
    }

    /// The tools served.
    pub fn tool_set(&self) -> &ToolSet {
        &self.tools
    }

    /// Serves over this process's standard input and output until the client closes them.
    /// Nothing else may write to standard output meanwhile (log to stderr).
    pub async fn serve_stdio(self) -> Result<(), McpError> {
        if !self.tools.problems().is_empty() {
            return Err(McpError::Tools { server: self.name.clone(), problems: self.tools.problems().to_vec() });
        }
        let running = self.serve(rmcp::transport::stdio()).await.map_err(|e| McpError::Serve(e.to_string()))?;
        running.waiting().await.map_err(|e| McpError::Serve(e.to_string()))?;
        Ok(())
    }

    /// The tools as MCP describes them.
    fn listed(&self) -> Vec<rmcp::model::Tool> {
        self.tools
            .specs()
            .into_iter()
            .map(|spec| {
                let schema = match spec.parameters {
                    Value::Object(o) => o,
                    _ => serde_json::Map::from_iter([("type".to_string(), Value::from("object"))]),
                };
                rmcp::model::Tool::new(spec.name, spec.description, Arc::new(schema))
            })
            .collect()
    }
}

impl ServerHandler for McpService {
    fn get_info(&self) -> ServerConfig {
        let mut info = InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(self.name.clone(), self.version.clone()));
        if let Some(text) = &self.instructions {
            info = info.with_instructions(text.clone());
        }
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.listed()))
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.listed().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let names = self.tools.names();
        if !names.contains(&request.name.as_ref()) {
            return Err(ErrorData::invalid_params(
                format!("there is no tool named `{}`; the tools are: {}", request.name, names.join(", ")),
                None,
            ));
        }
        let args = Value::Object(request.arguments.unwrap_or_default());
        let result = match self.tools.call(&request.name, args).await {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        };
        Ok(result.into())
    }
}
