#![doc = include_str!("../../../docs/agents.md")]

// `#[tool]` names this crate `::crewflow_agents`, here too.
extern crate self as crewflow_agents;

mod agent;
mod crew;
mod error;
mod flow_tool;
mod guardrail;
mod journal;
#[cfg(feature = "mcp")]
mod mcp;
mod memory;
mod output_file;
mod review;
mod template;
mod tool;
mod yaml;

pub use agent::{Agent, AgentOutput, DEFAULT_MAX_ITER};
pub use crew::{Crew, CrewOutput, Process, Task, TaskOutput};
pub use crewflow_macros::tool;
pub use error::{AgentError, ToolError};
pub use flow_tool::FlowTool;
pub use guardrail::Guardrail;
#[cfg(feature = "mcp")]
pub use mcp::{McpClient, McpError, McpServer, McpService, McpTool};
pub use memory::{AGENT_MEMORY_SOURCE, AgentMemory, DEFAULT_RECALL_LIMIT};
pub use review::{DEFAULT_MAX_REVISIONS, HumanReview};
pub use template::Inputs;
pub use tool::{IntoToolResult, Tool, ToolFn, ToolFuture, ToolOptions, ToolOutcome, ToolResult, ToolSet};
pub use yaml::{CrewRegistry, YamlError};

/// Support for the code `#[tool]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::tool::parse_args;
    pub use crewflow_llm::schema_of;
    pub use schemars;
    pub use serde;
    pub use serde_json;

    /// A tool fn's return value as the tool's result.
    pub fn output<R: crate::IntoToolResult>(r: R) -> Result<String, crate::ToolError> {
        r.into_tool_result()
    }
}
