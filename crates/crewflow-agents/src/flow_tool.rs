//! A flow as a tool: its inputs are the arguments, the run's output is the result.

use crewflow_core::{Flow, FlowState, Kickoff};
use schemars::JsonSchema;
use serde_json::Value;

use crate::error::ToolError;
use crate::tool::{Tool, ToolFuture};

/// A [`Flow`] as a [`Tool`]: a call kicks off a run with the arguments as its inputs (merged
/// over the state's fields, as `flow.kickoff(inputs)` does) and answers with the run's output
/// (its final step's output, as JSON; a string as it is).
///
/// The arguments' schema is the state's, every field optional (a missing input keeps the
/// state's default); [`with_parameters`](FlowTool::with_parameters) sets another. A run that fails, or
/// pauses for human feedback, is the tool's error. Give it to an agent, or serve it to MCP
/// clients with `McpService` (feature `mcp`).
///
/// ```
/// use crewflow_agents::{FlowTool, Tool};
/// use crewflow_core::FlowBuilder;
///
/// #[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// struct Greeting { name: String }
///
/// let flow = FlowBuilder::<Greeting>::new("greet")
///     .start("hello", |cx: crewflow_core::Cx<Greeting>, _: ()| async move {
///         Ok::<_, crewflow_core::StepError>(format!("Hello, {}!", cx.state(|s| s.name.clone())))
///     })
///     .build()
///     .unwrap();
/// let tool = FlowTool::new(flow, "Greets someone by name.");
/// assert_eq!(tool.name(), "greet");
/// assert_eq!(tool.parameters()["properties"]["name"]["type"], "string");
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert_eq!(tool.call(serde_json::json!({"name": "Ada"})).await.unwrap(), "Hello, Ada!");
/// # });
/// ```
pub struct FlowTool<S> {
    flow: Flow<S>,
    name: String,
    description: String,
    parameters: Value,
}

impl<S: FlowState + JsonSchema> FlowTool<S> {
    /// The flow as a tool named after it (characters providers reject become `_`).
    pub fn new(flow: Flow<S>, description: impl Into<String>) -> Self {
        let name = flow.name().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let mut parameters = crewflow_llm::schema_of::<S>();
        if let Some(o) = parameters.as_object_mut() {
            // Every input is optional: the state's default fills what is not given.
            o.remove("required");
        }
        FlowTool { flow, name, description: description.into(), parameters }
    }
}

impl<S> FlowTool<S> {
    /// Renames the tool.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the arguments' JSON Schema (an object whose properties are state fields).
    pub fn with_parameters(mut self, schema: Value) -> Self {
        self.parameters = schema;
        self
    }
}

impl<S: FlowState> Tool for FlowTool<S> {
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
        Box::pin(async move {
            let kickoff = if args.is_null() { Kickoff::new() } else { Kickoff::new().inputs(args) };
            let run = self
                .flow
                .kickoff(kickoff)
                .await
                .map_err(|e| ToolError::Failed(format!("the flow `{}` failed: {e}", self.flow.name())))?;
            let output: Value = run
                .output()
                .map_err(|e| ToolError::Failed(format!("the flow `{}` gave no output: {e}", self.flow.name())))?;
            Ok(match output {
                Value::String(s) => s,
                other => other.to_string(),
            })
        })
    }
}
