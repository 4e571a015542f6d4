//! Tasks and crews: work described for agents, done in order or through a manager.

use std::sync::{Arc, Mutex, PoisonError};

use crewflow_core::TokenUsage;
use crewflow_llm::Llm;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::agent::{Agent, OutputSpec};
use crate::error::{AgentError, ToolError};
use crate::guardrail::Guardrail;
use crate::journal;
use crate::review::{Decision, HumanReview};
use crate::template::Inputs;
use crate::tool::{Tool, ToolFuture, ToolSet};

/// The default of [`Task::guardrail_max_retries`].
const DEFAULT_GUARDRAIL_RETRIES: u32 = 3;

/// Work for an agent: a description, the expected output (both may hold `{placeholder}`s
/// filled from the crew's inputs), optionally the outputs of earlier tasks as context, a
/// typed output and guardrails.
#[derive(Clone)]
pub struct Task {
    name: String,
    description: String,
    expected_output: String,
    agent: Option<Agent>,
    context: Option<Vec<String>>,
    output: Option<OutputSpec>,
    output_problem: Option<String>,
    guardrails: Vec<Guardrail>,
    guardrail_max_retries: u32,
    output_file: Option<String>,
    review: Option<HumanReview>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("agent", &self.agent.as_ref().map(Agent::role_name))
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// What a task produced.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TaskOutput {
    /// The task's name.
    pub name: String,
    /// Its description (interpolated).
    pub description: String,
    /// The agent that answered (its role; the manager's in a hierarchical crew).
    pub agent: String,
    /// The answer.
    pub raw: String,
    /// The answer as JSON, for a task with a typed output.
    pub json: Option<Value>,
    /// Tokens used (the agents it delegated to included).
    pub usage: TokenUsage,
    /// How many answers were made (more than 1 when a guardrail rejected some).
    pub attempts: u32,
}

impl TaskOutput {
    /// The answer as `T` (from [`json`](TaskOutput::json), else from the raw text).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        let parsed = match &self.json {
            Some(v) => serde_json::from_value(v.clone()),
            None => serde_json::from_str(&self.raw),
        };
        parsed.map_err(|e| AgentError::InvalidOutput {
            agent: self.agent.clone(),
            expected: std::any::type_name::<T>().to_string(),
            problem: e.to_string(),
            raw: crate::error::excerpt(&self.raw, 400),
        })
    }
}

impl Task {
    /// A task named `name` (how other tasks name it as context) described by `description`.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Task {
            name: name.into(),
            description: description.into(),
            expected_output: String::new(),
            agent: None,
            context: None,
            output: None,
            output_problem: None,
            guardrails: Vec::new(),
            guardrail_max_retries: DEFAULT_GUARDRAIL_RETRIES,
            output_file: None,
            review: None,
        }
    }

    /// What a good answer looks like.
    pub fn expected_output(mut self, text: impl Into<String>) -> Self {
        self.expected_output = text.into();
        self
    }

    /// The agent that does it (in a hierarchical crew the manager decides instead).
    pub fn agent(mut self, agent: Agent) -> Self {
        self.agent = Some(agent);
        self
    }

    /// The earlier tasks whose outputs it is given. Without this, a task in a crew is given
    /// the outputs of every task before it.
    pub fn context<S: Into<String>>(mut self, tasks: impl IntoIterator<Item = S>) -> Self {
        self.context = Some(tasks.into_iter().map(Into::into).collect());
        self
    }

    /// The answer must be a `T` (JSON matching its schema; one repair attempt).
    pub fn output_type<T: JsonSchema + DeserializeOwned + 'static>(mut self) -> Self {
        match OutputSpec::of::<T>() {
            Ok(spec) => self.output = Some(spec),
            Err(e) => self.output_problem = Some(e.to_string()),
        }
        self
    }

    /// Adds a guardrail in code: `Err(feedback)` rejects the output. Guardrails run in the
    /// order they were added; the first rejection counts.
    pub fn guardrail(self, check: impl Fn(&TaskOutput) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.with_guardrail(Guardrail::function(check))
    }

    /// Adds a [`Guardrail`], such as [`Guardrail::model`] (a model judging the output against
    /// criteria written in words).
    pub fn with_guardrail(mut self, guardrail: Guardrail) -> Self {
        self.guardrails.push(guardrail);
        self
    }

    /// A person reviews the output once the guardrails accept it: they approve it, or say
    /// what to change and the agent does the task again (see [`HumanReview`]).
    pub fn human_review(mut self, review: HumanReview) -> Self {
        self.review = Some(review);
        self
    }

    /// How many times the agent may try again after a guardrail rejected its answer (default 3).
    pub fn guardrail_max_retries(mut self, n: u32) -> Self {
        self.guardrail_max_retries = n;
        self
    }

    /// Writes the task's output to `path` (its `{placeholder}`s filled from the inputs;
    /// missing directories created): the JSON, pretty, for a typed output, else the raw
    /// answer. Inside a durable run the write is recorded in the journal, so a step that
    /// replays the task does not write it again.
    pub fn output_file(mut self, path: impl Into<String>) -> Self {
        self.output_file = Some(path.into());
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Does the task alone with its agent, given `context` (earlier outputs).
    pub async fn execute(&self, inputs: &Inputs, context: &[TaskOutput]) -> Result<TaskOutput, AgentError> {
        let Some(agent) = &self.agent else {
            return Err(AgentError::Config(format!(
                "task \"{}\" has no agent: give it one with Task::agent(..)",
                self.name
            )));
        };
        let path = journal::join(&journal::current_path(), &format!("task:{}", self.name));
        journal::with_path(path, self.run_with(agent, inputs, context, None)).await
    }

    fn prompt(&self, inputs: &Inputs, context: &[TaskOutput]) -> Result<(String, String), AgentError> {
        let description = inputs.interpolate(&self.description, &format!("description of task \"{}\"", self.name))?;
        let expected =
            inputs.interpolate(&self.expected_output, &format!("expected_output of task \"{}\"", self.name))?;
        let mut prompt = description.clone();
        if !expected.trim().is_empty() {
            prompt.push_str(&format!(
                "\n\nThis is the expected criteria for your final answer: {expected}\nYou MUST return the actual complete content as the final answer, not a summary."
            ));
        }
        if !context.is_empty() {
            prompt.push_str("\n\nThis is the context you're working with:");
            for c in context {
                prompt.push_str(&format!("\n\n[{}]\n{}", c.name, c.raw));
            }
        }
        Ok((description, prompt))
    }

    /// Runs the task with `agent` (and the guardrails); `extra` usage is added (delegation).
    async fn run_with(
        &self,
        agent: &Agent,
        inputs: &Inputs,
        context: &[TaskOutput],
        extra: Option<&Mutex<TokenUsage>>,
    ) -> Result<TaskOutput, AgentError> {
        if let Some(problem) = &self.output_problem {
            return Err(AgentError::Config(format!("task \"{}\": {problem}", self.name)));
        }
        let (description, prompt) = self.prompt(inputs, context)?;
        // Interpolated before the model is called: a missing placeholder costs nothing.
        let output_file = match &self.output_file {
            Some(path) => Some(crate::output_file::path(&self.name, path, inputs)?),
            None => None,
        };
        let mut usage = TokenUsage::default();
        let mut rejection: Option<Rejection> = None;
        let (mut rejected_by_guardrails, mut revisions) = (0u32, 0u32);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut this_prompt = prompt.clone();
            match &rejection {
                None => {}
                Some(Rejection::Guardrail(f)) => this_prompt.push_str(&format!(
                    "\n\nYour previous answer was rejected: {f}\nFix that and give your final answer again."
                )),
                Some(Rejection::Review { feedback, previous }) => this_prompt.push_str(&format!(
                    "\n\nA reviewer read your previous answer and asked for changes: {feedback}\nYour previous answer was:\n<previous_answer>\n{}\n</previous_answer>\nRevise it accordingly and give your complete final answer again.",
                    crate::error::excerpt(previous, 8000)
                )),
            }
            let out = agent.run_unremembered(&this_prompt, inputs, self.output.as_ref()).await?;
            usage.add(&out.usage);
            if let Some(extra) = extra {
                usage.add(&std::mem::take(&mut *extra.lock().unwrap_or_else(PoisonError::into_inner)));
            }
            let mut output = TaskOutput {
                name: self.name.clone(),
                description: description.clone(),
                agent: out.agent,
                raw: out.raw,
                json: out.json,
                usage,
                attempts: attempt,
            };
            let mut refused = None;
            for guardrail in &self.guardrails {
                refused = guardrail.check(&self.name, &output, &mut usage).await?;
                if refused.is_some() {
                    break;
                }
            }
            output.usage = usage;
            if let Some(feedback) = refused {
                rejected_by_guardrails += 1;
                if rejected_by_guardrails > self.guardrail_max_retries {
                    return Err(AgentError::Guardrail { task: self.name.clone(), attempts: attempt, feedback });
                }
                rejection = Some(Rejection::Guardrail(feedback));
                continue;
            }
            if let Some(review) = &self.review
                && let Decision::Revise(feedback) = review.ask(&self.name, &output, revisions + 1).await?
            {
                revisions += 1;
                if revisions > review.revisions() {
                    return Err(AgentError::ReviewRejected { task: self.name.clone(), rounds: revisions, feedback });
                }
                rejection = Some(Rejection::Review { feedback, previous: output.raw });
                continue;
            }
            if let Some(path) = &output_file {
                crate::output_file::write(&self.name, path, &output).await?;
            }
            agent.remember(&output.agent, &description, &output.raw, Some(&self.name)).await?;
            return Ok(output);
        }
    }
}

/// Why an answer was sent back.
enum Rejection {
    /// A guardrail's feedback.
    Guardrail(String),
    /// A reviewer's, on this answer.
    Review { feedback: String, previous: String },
}

/// How a crew's tasks are done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Process {
    /// In order, each by its own agent.
    #[default]
    Sequential,
    /// In order, each by a manager agent that delegates to the crew's agents through the
    /// `delegate_work` and `ask_coworker` tools (set it with [`Crew::manager`] or
    /// [`Crew::manager_llm`]).
    Hierarchical,
}

/// Agents and tasks, done together: [`kickoff`](Crew::kickoff) does the tasks in order and
/// gives each the outputs it needs.
#[derive(Clone, Debug)]
pub struct Crew {
    agents: Vec<Agent>,
    tasks: Vec<Task>,
    process: Process,
    manager: Option<Agent>,
}

/// What a crew produced.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CrewOutput {
    /// The last task's answer.
    pub raw: String,
    /// The last task's answer as JSON, when it has a typed output.
    pub json: Option<Value>,
    /// Every task's output, in order.
    pub tasks: Vec<TaskOutput>,
    /// Tokens used by every agent of the crew.
    pub usage: TokenUsage,
}

impl CrewOutput {
    /// The last task's answer as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        match self.tasks.last() {
            Some(t) => t.parse(),
            None => Err(AgentError::Config("the crew has no tasks, so no output".into())),
        }
    }
}

impl Crew {
    /// A crew of `agents` doing `tasks` (sequentially unless told otherwise).
    pub fn new(agents: impl IntoIterator<Item = Agent>, tasks: impl IntoIterator<Item = Task>) -> Self {
        Crew {
            agents: agents.into_iter().collect(),
            tasks: tasks.into_iter().collect(),
            process: Process::Sequential,
            manager: None,
        }
    }

    /// How the tasks are done.
    pub fn process(mut self, process: Process) -> Self {
        self.process = process;
        self
    }

    /// The manager of a hierarchical crew (its delegation tools are added to its own).
    pub fn manager(mut self, agent: Agent) -> Self {
        self.manager = Some(agent);
        self
    }

    /// A default manager of a hierarchical crew, thinking with `llm`.
    pub fn manager_llm(self, llm: Llm) -> Self {
        self.manager(
            Agent::new(llm)
                .role("Crew Manager")
                .goal("Get each task done well by delegating it to the right coworker and checking the result.")
                .backstory(
                    "You are a seasoned manager who knows your coworkers' strengths. You do not do the work yourself: you delegate it and review it.",
                ),
        )
    }

    /// Does the tasks with `inputs` filling their placeholders (and the agents').
    pub async fn kickoff(&self, inputs: &Inputs) -> Result<CrewOutput, AgentError> {
        self.check()?;
        let manager = match self.process {
            Process::Sequential => None,
            Process::Hierarchical => Some(self.manager_with_tools(inputs)?),
        };
        let base = journal::current_path();
        let mut outputs: Vec<TaskOutput> = Vec::with_capacity(self.tasks.len());
        let mut usage = TokenUsage::default();
        for task in &self.tasks {
            let context: Vec<TaskOutput> = match &task.context {
                Some(names) => names.iter().filter_map(|n| outputs.iter().find(|o| &o.name == n).cloned()).collect(),
                None => outputs.clone(),
            };
            let path = journal::join(&base, &format!("task:{}", task.name));
            let output = match (&manager, &task.agent) {
                (Some((m, extra)), _) => {
                    journal::with_path(path, task.run_with(m, inputs, &context, Some(extra))).await?
                }
                (None, Some(agent)) if agent.delegates() => {
                    let (role, _, _) = agent.persona(inputs)?;
                    let (tools, extra) = self.coworker_tools(inputs, Some(&role))?;
                    let agent = agent.clone().tools(&tools);
                    journal::with_path(path, task.run_with(&agent, inputs, &context, Some(&extra))).await?
                }
                (None, Some(agent)) => journal::with_path(path, task.run_with(agent, inputs, &context, None)).await?,
                (None, None) => unreachable_checked(&task.name)?,
            };
            usage.add(&output.usage);
            outputs.push(output);
        }
        let last = outputs.last();
        Ok(CrewOutput {
            raw: last.map(|o| o.raw.clone()).unwrap_or_default(),
            json: last.and_then(|o| o.json.clone()),
            tasks: outputs,
            usage,
        })
    }

    /// Kicks the crew off once per inputs, at most `concurrency` at a time, and gives the
    /// outputs in the order of the inputs. The first failure (in input order) is the error.
    /// Inside a durable run each kickoff's calls are journaled under `each:<index>`, so
    /// concurrent kickoffs never share a journal key.
    pub async fn kickoff_for_each(
        &self,
        inputs: impl IntoIterator<Item = Inputs>,
        concurrency: usize,
    ) -> Result<Vec<CrewOutput>, AgentError> {
        use futures::{StreamExt, TryStreamExt};
        if concurrency == 0 {
            return Err(AgentError::Config(
                "kickoff_for_each needs a concurrency of at least 1 (how many kickoffs run at once)".into(),
            ));
        }
        self.check()?;
        let base = journal::current_path();
        futures::stream::iter(inputs.into_iter().enumerate())
            .map(|(i, inputs)| {
                let path = journal::join(&base, &format!("each:{i}"));
                async move { journal::with_path(path, self.kickoff(&inputs)).await }
            })
            .buffered(concurrency)
            .try_collect()
            .await
    }

    /// Set-up errors, before anything runs.
    fn check(&self) -> Result<(), AgentError> {
        if self.tasks.is_empty() {
            return Err(AgentError::Config(
                "a crew needs at least one task: Crew::new(agents, [Task::new(..)])".into(),
            ));
        }
        for (i, task) in self.tasks.iter().enumerate() {
            if self.tasks[..i].iter().any(|t| t.name == task.name) {
                return Err(AgentError::Config(format!(
                    "two tasks are named \"{}\": give one another name",
                    task.name
                )));
            }
            for c in task.context.iter().flatten() {
                if !self.tasks[..i].iter().any(|t| &t.name == c) {
                    let earlier: Vec<&str> = self.tasks[..i].iter().map(|t| t.name.as_str()).collect();
                    return Err(AgentError::Config(format!(
                        "task \"{}\" takes context from \"{c}\", which is not a task before it (tasks before it: {})",
                        task.name,
                        if earlier.is_empty() { "none".to_string() } else { earlier.join(", ") }
                    )));
                }
            }
            if self.process == Process::Sequential && task.agent.is_none() {
                return Err(AgentError::Config(format!(
                    "task \"{}\" has no agent: give it one with Task::agent(..), or make the crew hierarchical",
                    task.name
                )));
            }
        }
        if self.process == Process::Hierarchical {
            if self.manager.is_none() {
                return Err(AgentError::Config(
                    "a hierarchical crew needs a manager: Crew::manager(agent) or Crew::manager_llm(llm)".into(),
                ));
            }
            if self.agents.is_empty() {
                return Err(AgentError::Config(
                    "a hierarchical crew needs agents for its manager to delegate to".into(),
                ));
            }
        }
        Ok(())
    }

    /// The manager with its delegation tools, and the usage its coworkers add.
    fn manager_with_tools(&self, inputs: &Inputs) -> Result<(Agent, Arc<Mutex<TokenUsage>>), AgentError> {
        let Some(manager) = &self.manager else {
            return Err(AgentError::Config("a hierarchical crew needs a manager".into()));
        };
        let (tools, usage) = self.coworker_tools(inputs, None)?;
        Ok((manager.clone().tools(&tools), usage))
    }

    /// `delegate_work` and `ask_coworker` over the crew's agents (but the one whose role is
    /// `except`: an agent does not delegate to itself), and the usage the coworkers add.
    fn coworker_tools(
        &self,
        inputs: &Inputs,
        except: Option<&str>,
    ) -> Result<(ToolSet, Arc<Mutex<TokenUsage>>), AgentError> {
        let mut coworkers = Vec::with_capacity(self.agents.len());
        for agent in &self.agents {
            let (role, _, _) = agent.persona(inputs)?;
            if except == Some(role.as_str()) {
                continue;
            }
            if coworkers.iter().any(|(r, _): &(String, Agent)| r == &role) {
                return Err(AgentError::Config(format!(
                    "two agents have the role \"{role}\": the manager names coworkers by role, so give them different roles"
                )));
            }
            coworkers.push((role, agent.clone()));
        }
        let usage = Arc::new(Mutex::new(TokenUsage::default()));
        if coworkers.is_empty() {
            // Nobody to delegate to: no tools that could only be refused.
            return Ok((ToolSet::new(), usage));
        }
        let shared = Arc::new(Coworkers { agents: coworkers, inputs: inputs.clone(), usage: usage.clone() });
        let tools = ToolSet::new()
            .with(Delegation { kind: DelegationKind::Delegate, coworkers: shared.clone() })
            .with(Delegation { kind: DelegationKind::Ask, coworkers: shared });
        Ok((tools, usage))
    }
}

fn unreachable_checked(task: &str) -> Result<TaskOutput, AgentError> {
    Err(AgentError::Config(format!("task \"{task}\" has no agent")))
}

struct Coworkers {
    agents: Vec<(String, Agent)>,
    inputs: Inputs,
    usage: Arc<Mutex<TokenUsage>>,
}

#[derive(Clone, Copy)]
enum DelegationKind {
    Delegate,
    Ask,
}

/// `delegate_work` and `ask_coworker`: the manager's tools.
struct Delegation {
    kind: DelegationKind,
    coworkers: Arc<Coworkers>,
}

/// The arguments of `delegate_work`.
#[derive(Deserialize, JsonSchema)]
struct DelegateArgs {
    /// The coworker to delegate to (one of the roles listed).
    coworker: String,
    /// The task: what to do, completely (the coworker knows nothing else).
    task: String,
    /// Everything the coworker needs to know to do it.
    #[serde(default)]
    context: String,
}

/// The arguments of `ask_coworker`.
#[derive(Deserialize, JsonSchema)]
struct AskArgs {
    /// The coworker to ask (one of the roles listed).
    coworker: String,
    /// The question.
    question: String,
    /// Everything the coworker needs to know to answer.
    #[serde(default)]
    context: String,
}

impl Tool for Delegation {
    fn name(&self) -> &str {
        match self.kind {
            DelegationKind::Delegate => "delegate_work",
            DelegationKind::Ask => "ask_coworker",
        }
    }

    fn description(&self) -> &str {
        match self.kind {
            DelegationKind::Delegate => {
                "Delegate a task to one of your coworkers, named by role; you get back their answer. Give them the complete task and context: they know nothing else."
            }
            DelegationKind::Ask => {
                "Ask one of your coworkers, named by role, a question; you get back their answer. Give them the context they need: they know nothing else."
            }
        }
    }

    fn parameters(&self) -> Value {
        let mut schema = match self.kind {
            DelegationKind::Delegate => crewflow_llm::schema_of::<DelegateArgs>(),
            DelegationKind::Ask => crewflow_llm::schema_of::<AskArgs>(),
        };
        let roles: Vec<Value> = self.coworkers.agents.iter().map(|(r, _)| Value::String(r.clone())).collect();
        if let Some(coworker) = schema.pointer_mut("/properties/coworker").and_then(Value::as_object_mut) {
            coworker.insert("enum".into(), Value::Array(roles));
        }
        schema
    }

    fn call(&self, args: Value) -> ToolFuture<'_> {
        Box::pin(async move {
            let (coworker, work, context) = match self.kind {
                DelegationKind::Delegate => {
                    let a: DelegateArgs = crate::tool::parse_args(args)?;
                    (a.coworker, a.task, a.context)
                }
                DelegationKind::Ask => {
                    let a: AskArgs = crate::tool::parse_args(args)?;
                    (a.coworker, a.question, a.context)
                }
            };
            let wanted = coworker.trim();
            let Some((_, agent)) = self.coworkers.agents.iter().find(|(r, _)| r.eq_ignore_ascii_case(wanted)) else {
                let roles: Vec<&str> = self.coworkers.agents.iter().map(|(r, _)| r.as_str()).collect();
                return Err(ToolError::InvalidArguments(format!(
                    "there is no coworker \"{wanted}\"; the coworkers are: {}",
                    roles.join(", ")
                )));
            };
            let mut prompt = work;
            if !context.trim().is_empty() {
                prompt.push_str(&format!("\n\nThis is the context you're working with:\n{context}"));
            }
            let out = agent.run(&prompt, &self.coworkers.inputs, None).await.map_err(ToolError::failed)?;
            self.coworkers.usage.lock().unwrap_or_else(PoisonError::into_inner).add(&out.usage);
            Ok(out.raw)
        })
    }
}
