//! Agents: a role, a goal and a backstory, a model and tools, in a loop until a final answer.

use std::sync::Arc;
use std::time::Duration;

use crewflow_core::EventKind;
use crewflow_core::TokenUsage;
use crewflow_llm::{ChatRequest, ChatResponse, Llm, LlmError, Message, ResponseFormat, ToolChoice};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{AgentError, excerpt};
use crate::journal;
use crate::memory::AgentMemory;
use crate::template::Inputs;
use crate::tool::{Tool, ToolOptions, ToolResult, ToolSet};

/// The iteration limit of a new agent ([`Agent::max_iter`]).
pub const DEFAULT_MAX_ITER: u32 = 10;

/// An agent: who it is (role, goal, backstory), the model it thinks with and the tools it
/// may call.
///
/// [`kickoff`](Agent::kickoff) runs its loop: the model is called with the prompt and the
/// tools; while it asks for tool calls they run (a reply's calls concurrently) and their
/// results go back to it; its first reply without tool calls is the final answer. After
/// `max_iter` iterations it is asked once more, without tools, for its final answer.
///
/// Role, goal and backstory may hold `{placeholder}`s, filled from the inputs of
/// [`kickoff_with`](Agent::kickoff_with). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Agent {
    role: String,
    goal: String,
    backstory: String,
    llm: Llm,
    tools: ToolSet,
    max_iter: u32,
    max_execution_time: Option<Duration>,
    allow_delegation: bool,
    memory: Option<AgentMemory>,
}

/// What an agent produced.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AgentOutput {
    /// The agent's role (interpolated).
    pub agent: String,
    /// The final answer, as the model wrote it.
    pub raw: String,
    /// The final answer as JSON, when a typed output was asked for.
    pub json: Option<Value>,
    /// Tokens used over the whole loop (every model call, the repair included).
    pub usage: TokenUsage,
    /// How many model calls the loop made (the forced answer and the repair included).
    pub iterations: u32,
    /// True when the answer was forced after `max_iter`.
    pub forced: bool,
    /// Every tool call, in order, with what the model was given back.
    pub tool_calls: Vec<ToolResult>,
}

/// Decodes a checked answer as the output type (to report serde's complaints).
type Decode = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// The expected shape of a final answer: a JSON Schema and a check.
#[derive(Clone)]
pub(crate) struct OutputSpec {
    pub name: String,
    pub schema: Value,
    validator: Arc<jsonschema::Validator>,
    decode: Decode,
}

impl OutputSpec {
    pub fn of<T: JsonSchema + DeserializeOwned + 'static>() -> Result<Self, AgentError> {
        let schema = crewflow_llm::schema_of::<T>();
        let name = type_label::<T>();
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| AgentError::Config(format!("the JSON Schema of {name} is not valid: {e}")))?;
        Ok(OutputSpec {
            name,
            schema,
            validator: Arc::new(validator),
            decode: Arc::new(|v| serde_json::from_value::<T>(v.clone()).map(drop).map_err(|e| e.to_string())),
        })
    }

    /// The answer's JSON, or what is wrong with it (for the repair prompt).
    pub fn check(&self, reply: &str) -> Result<Value, String> {
        let value: Value = serde_json::from_str(json_in(reply)).map_err(|e| format!("it is not JSON ({e})"))?;
        let problems: Vec<String> = self
            .validator
            .iter_errors(&value)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
            })
            .collect();
        if !problems.is_empty() {
            return Err(format!("it does not match the schema: {}", problems.join("; ")));
        }
        (self.decode)(&value).map_err(|e| format!("it does not decode as {}: {e}", self.name))?;
        Ok(value)
    }
}

/// The JSON in a reply: the whole reply, a fenced block's content, or from the first `{` to
/// the last `}`.
fn json_in(reply: &str) -> &str {
    let t = reply.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_alphanumeric());
        if let Some(end) = rest.rfind("```") {
            return rest[..end].trim();
        }
    }
    if t.starts_with('{') || t.starts_with('[') {
        return t;
    }
    match (t.find('{'), t.rfind('}')) {
        (Some(a), Some(b)) if b > a => &t[a..=b],
        _ => t,
    }
}

fn type_label<T>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full).rsplit("::").next().unwrap_or(full);
    let clean: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if clean.is_empty() { "output".into() } else { clean }
}

impl Agent {
    /// An agent thinking with `llm`; give it a [`role`](Agent::role), a
    /// [`goal`](Agent::goal) and a [`backstory`](Agent::backstory).
    pub fn new(llm: Llm) -> Self {
        Agent {
            role: String::new(),
            goal: String::new(),
            backstory: String::new(),
            llm,
            tools: ToolSet::new(),
            max_iter: DEFAULT_MAX_ITER,
            max_execution_time: None,
            allow_delegation: false,
            memory: None,
        }
    }

    /// Who it is (`Senior Researcher`); also its name in events, errors and delegation.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.role = role.into();
        self
    }

    /// What it works towards.
    pub fn goal(mut self, goal: impl Into<String>) -> Self {
        self.goal = goal.into();
        self
    }

    /// Its background (shapes how it works).
    pub fn backstory(mut self, backstory: impl Into<String>) -> Self {
        self.backstory = backstory.into();
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: impl Tool) -> Self {
        self.tools = self.tools.with(tool);
        self
    }

    /// Adds a tool with options (timeout, call budget, cache).
    pub fn tool_with(mut self, tool: impl Tool, options: ToolOptions) -> Self {
        self.tools = self.tools.with_options(tool, options);
        self
    }

    /// Adds the tools of a set.
    pub fn tools(mut self, tools: &ToolSet) -> Self {
        self.tools = self.tools.merge(tools);
        self
    }

    /// The most iterations (model calls with tools) before it must answer; default
    /// [`DEFAULT_MAX_ITER`]. When they are used up, it is asked once more for a final answer,
    /// without tools.
    pub fn max_iter(mut self, n: u32) -> Self {
        self.max_iter = n;
        self
    }

    /// The longest a kickoff may take; past it the kickoff fails with
    /// [`AgentError::Timeout`].
    pub fn max_execution_time(mut self, limit: Duration) -> Self {
        self.max_execution_time = Some(limit);
        self
    }

    /// In a sequential crew, the agent may delegate to and ask the crew's other agents, through
    /// the `delegate_work` and `ask_coworker` tools (CrewAI's `allow_delegation`; default off).
    pub fn allow_delegation(mut self, allow: bool) -> Self {
        self.allow_delegation = allow;
        self
    }

    /// What it remembers between kickoffs (see [`AgentMemory`]): before each kickoff (or
    /// task) it recalls what it remembers about the work, and after it answers it remembers
    /// the work and the answer, in a scope of its own.
    pub fn memory(mut self, memory: AgentMemory) -> Self {
        self.memory = Some(memory);
        self
    }

    /// Whether it may delegate in a sequential crew.
    pub fn delegates(&self) -> bool {
        self.allow_delegation
    }

    /// Its role, as written (placeholders not filled).
    pub fn role_name(&self) -> &str {
        &self.role
    }

    /// Its goal, as written.
    pub fn goal_text(&self) -> &str {
        &self.goal
    }

    /// Its model.
    pub fn llm(&self) -> &Llm {
        &self.llm
    }

    /// Its tools.
    pub fn tool_set(&self) -> &ToolSet {
        &self.tools
    }

    /// Runs the loop on `prompt` (no inputs: placeholders anywhere are errors).
    pub async fn kickoff(&self, prompt: impl Into<String>) -> Result<AgentOutput, AgentError> {
        self.kickoff_with(&prompt.into(), &Inputs::new()).await
    }

    /// Runs the loop on `prompt`, with `{placeholder}`s of the prompt, role, goal and backstory
    /// filled from `inputs`.
    pub async fn kickoff_with(&self, prompt: &str, inputs: &Inputs) -> Result<AgentOutput, AgentError> {
        let prompt = inputs.interpolate(prompt, "prompt")?;
        self.run(&prompt, inputs, None).await
    }

    /// Runs the loop on `prompt` as it is (its braces are not placeholders: it may quote text
    /// holding `{...}`), with the role, goal and backstory's `{placeholder}`s filled from
    /// `inputs`.
    pub async fn kickoff_verbatim(&self, prompt: &str, inputs: &Inputs) -> Result<AgentOutput, AgentError> {
        self.run(prompt, inputs, None).await
    }

    /// Runs the loop and decodes the final answer as `T`: the model is told `T`'s JSON Schema,
    /// the answer is checked against it and, if it does not fit, the model is asked once to
    /// repair it, told what was wrong. Failing again is [`AgentError::InvalidOutput`].
    pub async fn kickoff_as<T: JsonSchema + DeserializeOwned + 'static>(
        &self,
        prompt: &str,
        inputs: &Inputs,
    ) -> Result<(T, AgentOutput), AgentError> {
        let prompt = inputs.interpolate(prompt, "prompt")?;
        let spec = OutputSpec::of::<T>()?;
        let out = self.run(&prompt, inputs, Some(&spec)).await?;
        let value = out.json.clone().unwrap_or(Value::Null);
        let typed = serde_json::from_value(value).map_err(|e| AgentError::InvalidOutput {
            agent: out.agent.clone(),
            expected: spec.name.clone(),
            problem: e.to_string(),
            raw: excerpt(&out.raw, 400),
        })?;
        Ok((typed, out))
    }

    /// The prompt with what the agent recalls about it (the prompt alone without memory).
    async fn recalled(&self, agent: &str, prompt: &str) -> Result<String, AgentError> {
        let Some(memory) = &self.memory else { return Ok(prompt.to_string()) };
        let recalled = memory.recall(&self.role, agent, prompt).await?;
        Ok(crate::memory::with_memories(prompt, &recalled))
    }

    /// Remembers `prompt` and its `answer` (for `task`, when a task's), if it has memory.
    pub(crate) async fn remember(
        &self,
        agent: &str,
        prompt: &str,
        answer: &str,
        task: Option<&str>,
    ) -> Result<(), AgentError> {
        match &self.memory {
            Some(memory) => memory.remember(&self.role, agent, prompt, answer, task).await,
            None => Ok(()),
        }
    }

    /// The role, goal and backstory with the inputs filled in.
    pub(crate) fn persona(&self, inputs: &Inputs) -> Result<(String, String, String), AgentError> {
        if self.role.trim().is_empty() {
            return Err(AgentError::Config(
                "an agent needs a role: Agent::new(llm).role(\"Researcher\").goal(..).backstory(..)".into(),
            ));
        }
        let role = inputs.interpolate(&self.role, "role of an agent")?;
        let goal = inputs.interpolate(&self.goal, &format!("goal of agent \"{role}\""))?;
        let backstory = inputs.interpolate(&self.backstory, &format!("backstory of agent \"{role}\""))?;
        Ok((role, goal, backstory))
    }

    /// The loop, on an interpolated prompt; `output` asks for a typed final answer. With
    /// memory, it recalls before and remembers the prompt and its answer after.
    pub(crate) async fn run(
        &self,
        prompt: &str,
        inputs: &Inputs,
        output: Option<&OutputSpec>,
    ) -> Result<AgentOutput, AgentError> {
        let out = self.run_unremembered(prompt, inputs, output).await?;
        self.remember(&out.agent, prompt, &out.raw, None).await?;
        Ok(out)
    }

    /// [`run`](Agent::run) without remembering the answer (a task remembers it once its
    /// guardrails and review accept it).
    pub(crate) async fn run_unremembered(
        &self,
        prompt: &str,
        inputs: &Inputs,
        output: Option<&OutputSpec>,
    ) -> Result<AgentOutput, AgentError> {
        let (role, goal, backstory) = self.persona(inputs)?;
        if let Some(problem) = self.tools.problems().first() {
            return Err(AgentError::Config(format!("agent \"{role}\": {problem}")));
        }
        let scope = crewflow_core::scope::current();
        if let Some(s) = &scope {
            let (agent, tools, max_iter) =
                (role.clone(), self.tools.names().iter().map(|n| n.to_string()).collect(), self.max_iter);
            s.emit(|| EventKind::AgentStarted { agent, tools, max_iter });
        }
        let looped = async {
            let prompt = self.recalled(&role, prompt).await?;
            self.looped(&role, &goal, &backstory, &prompt, output).await
        };
        let result = match self.max_execution_time {
            Some(limit) => match tokio::time::timeout(limit, looped).await {
                Ok(r) => r,
                Err(_) => Err(AgentError::Timeout { agent: role.clone(), limit }),
            },
            None => looped.await,
        };
        if let Some(s) = &scope {
            match &result {
                Ok(out) => {
                    let (agent, iterations, usage, forced) = (role.clone(), out.iterations, out.usage, out.forced);
                    s.emit(|| EventKind::AgentFinished { agent, iterations, usage, forced });
                }
                Err(e) => {
                    let (agent, error) = (role.clone(), e.to_string());
                    s.emit(|| EventKind::AgentFailed { agent, error });
                }
            }
        }
        result
    }

    async fn looped(
        &self,
        role: &str,
        goal: &str,
        backstory: &str,
        prompt: &str,
        output: Option<&OutputSpec>,
    ) -> Result<AgentOutput, AgentError> {
        let scope = crewflow_core::scope::current();
        let path = journal::join(&journal::current_path(), &format!("agent:{role}"));
        let mut system = format!("You are {role}.");
        if !backstory.trim().is_empty() {
            system.push(' ');
            system.push_str(backstory.trim());
        }
        if !goal.trim().is_empty() {
            system.push_str(&format!("\nYour personal goal is: {}", goal.trim()));
        }
        if !self.tools.is_empty() {
            system.push_str(
                "\nUse the tools when they help; when you have what you need, reply with your final answer and no tool call.",
            );
        }
        let mut user = prompt.to_string();
        if let Some(spec) = output {
            user.push_str(&format!(
                "\n\nYour final answer must be only a JSON value matching this JSON Schema:\n{}",
                spec.schema
            ));
        }
        let mut messages = vec![Message::system(system), Message::user(user)];
        let specs = self.tools.specs();
        let mut session = self.tools.session(path.clone());
        let mut out = AgentOutput {
            agent: role.to_string(),
            raw: String::new(),
            json: None,
            usage: TokenUsage::default(),
            iterations: 0,
            forced: false,
            tool_calls: Vec::new(),
        };
        loop {
            let forced = out.iterations >= self.max_iter;
            out.iterations += 1;
            if let Some(s) = &scope {
                let (agent, iteration) = (role.to_string(), out.iterations);
                s.emit(|| EventKind::AgentIteration { agent, iteration, forced });
            }
            if forced {
                out.forced = true;
                messages.push(Message::user(format!(
                    "You have used all {} iterations you had. Give your best final answer now, from what you have; do not call tools.",
                    self.max_iter
                )));
            }
            let mut request = ChatRequest::new(messages.iter().cloned());
            if !specs.is_empty() {
                request.tools = specs.clone();
                if forced {
                    request.tool_choice = Some(ToolChoice::None);
                }
            }
            let reply = self.model_call(role, &path, request).await?;
            out.usage.add(&reply.usage);
            if !forced && !reply.tool_calls.is_empty() {
                messages.push(reply.message());
                let results = session
                    .run(&reply.tool_calls)
                    .await
                    .map_err(|e| AgentError::Journal { agent: role.to_string(), message: e.to_string() })?;
                for (call, result) in reply.tool_calls.iter().zip(&results) {
                    messages.push(Message::tool_result(call, result.text.clone()));
                }
                out.tool_calls.extend(results);
                continue;
            }
            if reply.text.trim().is_empty() {
                if forced || !reply.tool_calls.is_empty() {
                    return Err(AgentError::NoAnswer { agent: role.to_string(), max_iter: self.max_iter });
                }
                // An empty answer without tool calls: ask once more, like a forced answer.
                if out.iterations <= self.max_iter {
                    messages.push(reply.message());
                    messages.push(Message::user("Your reply was empty. Give your final answer now."));
                    continue;
                }
            }
            out.raw = reply.text.clone();
            if let Some(spec) = output {
                match spec.check(&reply.text) {
                    Ok(json) => out.json = Some(json),
                    Err(problem) => {
                        messages.push(Message::assistant(reply.text.clone()));
                        messages.push(Message::user(format!(
                            "That final answer is not valid: {problem}. Reply again with only the JSON, matching the schema."
                        )));
                        let mut repair = ChatRequest::new(messages.iter().cloned());
                        repair.response_format = Some(ResponseFormat::JsonSchema {
                            name: spec.name.clone(),
                            schema: spec.schema.clone(),
                            strict: false,
                        });
                        if !specs.is_empty() {
                            repair.tools = specs.clone();
                            repair.tool_choice = Some(ToolChoice::None);
                        }
                        out.iterations += 1;
                        let second = self.model_call(role, &path, repair).await?;
                        out.usage.add(&second.usage);
                        out.raw = second.text.clone();
                        out.json = Some(spec.check(&second.text).map_err(|problem| AgentError::InvalidOutput {
                            agent: role.to_string(),
                            expected: spec.name.clone(),
                            problem,
                            raw: excerpt(&second.text, 400),
                        })?);
                    }
                }
            }
            return Ok(out);
        }
    }

    /// One model call; inside a durable run its reply is recorded under `path/llm` (so a
    /// re-run of the step gets it back), unless the model was made with `journaled(false)`.
    async fn model_call(&self, role: &str, path: &str, request: ChatRequest) -> Result<ChatResponse, AgentError> {
        let llm = self.llm.clone().journaled(false);
        let scope = if self.llm.is_journaled() { crewflow_core::scope::current() } else { None };
        let llm_error = |source: LlmError| AgentError::Llm { agent: role.to_string(), source };
        let Some(scope) = scope else { return llm.chat(request).await.map_err(llm_error) };
        let name = format!("{path}/llm");
        scope.once(&name, |_| async move { llm.chat(request).await }).await.map_err(|e| match e {
            crewflow_core::journal::OnceError::Failed { source, .. } => match source.downcast::<LlmError>() {
                Ok(e) => llm_error(*e),
                Err(other) => AgentError::Journal { agent: role.to_string(), message: other.to_string() },
            },
            other => AgentError::Journal { agent: role.to_string(), message: other.to_string() },
        })
    }
}
