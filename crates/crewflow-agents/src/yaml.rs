//! Crews from CrewAI's `agents.yaml` and `tasks.yaml`.
//!
//! The files are read node by node with their line numbers (serde-saphyr's `Spanned`), not
//! into fixed structs, so every error can say which file, which line, what is wrong and what
//! was probably meant (`crewflow_rules::closest`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crewflow_llm::Llm;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::agent::Agent;
use crate::crew::{Crew, Task, TaskOutput};
use crate::guardrail::Guardrail;
use crate::tool::{Tool, ToolOptions, ToolSet};

/// The keys of an agent in `agents.yaml`.
const AGENT_KEYS: &[&str] =
    &["role", "goal", "backstory", "llm", "tools", "max_iter", "max_execution_time", "allow_delegation", "verbose"];

/// The keys of a task in `tasks.yaml`.
const TASK_KEYS: &[&str] = &[
    "description",
    "expected_output",
    "agent",
    "context",
    "output_file",
    "create_directory",
    "guardrail",
    "guardrail_max_retries",
    "output_json",
    "output_pydantic",
    "human_input",
];

/// CrewAI keys crewflow does not read (yet): named as such rather than as typos.
const CREWAI_ONLY: &[&str] = &[
    "function_calling_llm",
    "max_rpm",
    "max_retry_limit",
    "cache",
    "memory",
    "system_template",
    "prompt_template",
    "response_template",
    "allow_code_execution",
    "code_execution_mode",
    "multimodal",
    "inject_date",
    "date_format",
    "reasoning",
    "planning",
    "knowledge_sources",
    "embedder",
    "respect_context_window",
    "use_system_prompt",
    "step_callback",
    "async_execution",
    "markdown",
    "callback",
    "callbacks",
    "converter_cls",
    "input_files",
    "guardrails",
    "name",
];

/// What the names in `agents.yaml` and `tasks.yaml` refer to: models (`llm:`), tools
/// (`tools:`), guardrails (`guardrail:`) and output types (`output_json:` / `output_pydantic:`).
#[derive(Clone, Default)]
pub struct CrewRegistry {
    llms: BTreeMap<String, Llm>,
    default_llm: Option<Llm>,
    tools: BTreeMap<String, ToolSet>,
    guardrails: BTreeMap<String, Guardrail>,
    outputs: BTreeMap<String, OutputType>,
}

type OutputType = Arc<dyn Fn(Task) -> Task + Send + Sync>;

impl fmt::Debug for CrewRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrewRegistry")
            .field("llms", &self.llms.keys().collect::<Vec<_>>())
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("guardrails", &self.guardrails.keys().collect::<Vec<_>>())
            .field("outputs", &self.outputs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CrewRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        CrewRegistry::default()
    }

    /// A model agents name with `llm: <name>`. An `llm:` that is not registered but looks like
    /// a model string (`openai/gpt-4o-mini`, `ollama/llama3.2`, `local`) is made with
    /// [`Llm::new`].
    pub fn llm(mut self, name: impl Into<String>, llm: Llm) -> Self {
        self.llms.insert(name.into(), llm);
        self
    }

    /// The model of agents without an `llm:`.
    pub fn default_llm(mut self, llm: Llm) -> Self {
        self.default_llm = Some(llm);
        self
    }

    /// A tool agents name in `tools:` by its own name.
    pub fn tool(self, tool: impl Tool) -> Self {
        self.tool_with(tool, ToolOptions::default())
    }

    /// A tool with options (timeout, call budget, cache), named by its own name.
    pub fn tool_with(mut self, tool: impl Tool, options: ToolOptions) -> Self {
        let name = tool.name().to_string();
        self.tools.insert(name, ToolSet::new().with_options(tool, options));
        self
    }

    /// A tool agents name in `tools:` as `name` (CrewAI names tools by the function that
    /// makes them, which may differ from the tool's own name).
    pub fn tool_as(mut self, name: impl Into<String>, tool: impl Tool) -> Self {
        self.tools.insert(name.into(), ToolSet::new().with(tool));
        self
    }

    /// A guardrail tasks name with `guardrail: <name>`.
    pub fn guardrail(
        mut self,
        name: impl Into<String>,
        check: impl Fn(&TaskOutput) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.guardrails.insert(name.into(), Guardrail::function(check));
        self
    }

    /// An output type tasks name with `output_json: <name>` or `output_pydantic: <name>`: the
    /// task's answer must be a `T` ([`Task::output_type`]).
    pub fn output_type<T: JsonSchema + DeserializeOwned + 'static>(mut self, name: impl Into<String>) -> Self {
        self.outputs.insert(name.into(), Arc::new(|task: Task| task.output_type::<T>()));
        self
    }
}

/// What is wrong with an `agents.yaml` or a `tasks.yaml`: the file, the line and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
#[non_exhaustive]
pub struct YamlError {
    /// The file (`agents.yaml`, `tasks.yaml` or the path read).
    pub file: String,
    /// The line (1-based), when the problem has one.
    pub line: Option<u64>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Crew {
    /// A crew from the text of CrewAI's `agents.yaml` and `tasks.yaml`, names resolved in
    /// `registry`: agents in the order of `agents.yaml`, tasks in the order of `tasks.yaml`,
    /// sequential (set [`Crew::process`] for a hierarchical crew). Unknown keys and names that
    /// refer to nothing are errors with the line and, when one is close, the name meant.
    pub fn from_yaml(agents: &str, tasks: &str, registry: &CrewRegistry) -> Result<Crew, YamlError> {
        load(("agents.yaml", agents), ("tasks.yaml", tasks), registry)
    }

    /// [`Crew::from_yaml`] on files (errors name the paths).
    pub fn from_yaml_files(
        agents: impl AsRef<std::path::Path>,
        tasks: impl AsRef<std::path::Path>,
        registry: &CrewRegistry,
    ) -> Result<Crew, YamlError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| YamlError {
                file: p.display().to_string(),
                line: None,
                message: format!("cannot read it: {e}"),
            })
        };
        let (a, t) = (agents.as_ref(), tasks.as_ref());
        let (a_text, t_text) = (read(a)?, read(t)?);
        load((&a.display().to_string(), &a_text), (&t.display().to_string(), &t_text), registry)
    }
}

/// A YAML node with the line numbers of list items kept.
#[derive(Debug)]
enum Node {
    Scalar(Value),
    List(Vec<Spanned<Node>>),
    Map,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_string())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        while map.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
        Ok(Node::Map)
    }
}

type Fields = IndexMap<Spanned<String>, Spanned<Node>>;
type Entries = IndexMap<Spanned<String>, Spanned<Fields>>;

/// One file being read: its name, for errors.
struct File<'a> {
    name: &'a str,
}

impl File<'_> {
    fn error(&self, line: u64, message: impl Into<String>) -> YamlError {
        YamlError { file: self.name.to_string(), line: (line > 0).then_some(line), message: message.into() }
    }

    fn parse(&self, text: &str) -> Result<Entries, YamlError> {
        if text.trim().is_empty() {
            return Ok(Entries::new());
        }
        serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true }).map_err(|e| {
            YamlError {
                file: self.name.to_string(),
                line: None,
                message: format!("not a mapping of names to {}: {e}", self.what()),
            }
        })
    }

    fn what(&self) -> &'static str {
        if self.name.contains("task") { "tasks" } else { "agents" }
    }

    /// Refuses keys not in `known`, naming CrewAI-only keys as such and typos' likely meaning.
    fn check_keys(&self, kind: &str, name: &str, fields: &Fields, known: &[&str]) -> Result<(), YamlError> {
        for key in fields.keys() {
            let k = key.value.as_str();
            if known.contains(&k) {
                continue;
            }
            let line = key.referenced.line();
            if CREWAI_ONLY.contains(&k) {
                return Err(self.error(
                    line,
                    format!("{kind} `{name}`: `{k}` is a CrewAI key crewflow does not support; remove it"),
                ));
            }
            let hint = match crewflow_rules::closest(k, known.iter().copied()) {
                Some(c) => format!("did you mean `{c}`?"),
                None => format!("the keys are: {}", known.join(", ")),
            };
            return Err(self.error(line, format!("{kind} `{name}` has an unknown key `{k}`; {hint}")));
        }
        Ok(())
    }
}

/// The value of `key`, with its line.
fn field<'a>(fields: &'a Fields, key: &str) -> Option<&'a Spanned<Node>> {
    fields.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
}

/// A text field (absent or empty: `None`).
fn text(file: &File<'_>, owner: &str, fields: &Fields, key: &str) -> Result<Option<String>, YamlError> {
    match field(fields, key) {
        None => Ok(None),
        Some(v) => match &v.value {
            Node::Scalar(Value::Null) => Ok(None),
            // Folded and literal blocks (`>`, `|`) end in a line break; a role or a name must not.
            Node::Scalar(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Node::Scalar(other) => Ok(Some(other.to_string())),
            _ => Err(file.error(v.referenced.line(), format!("{owner}: `{key}` must be text"))),
        },
    }
}

/// A list of names (`[a, b]`, a block list, or one name), each with its line.
fn names(file: &File<'_>, owner: &str, fields: &Fields, key: &str) -> Result<Vec<(String, u64)>, YamlError> {
    let Some(v) = field(fields, key) else { return Ok(Vec::new()) };
    let one = |n: &Spanned<Node>| match &n.value {
        Node::Scalar(Value::String(s)) => Ok((s.clone(), n.referenced.line())),
        _ => Err(file.error(n.referenced.line(), format!("{owner}: each entry of `{key}` must be a name"))),
    };
    match &v.value {
        Node::Scalar(Value::Null) => Ok(Vec::new()),
        Node::List(items) => items.iter().map(one).collect(),
        _ => Ok(vec![one(v)?]),
    }
}

fn number(file: &File<'_>, owner: &str, fields: &Fields, key: &str) -> Result<Option<f64>, YamlError> {
    match field(fields, key) {
        None => Ok(None),
        Some(v) => match &v.value {
            Node::Scalar(Value::Number(n)) if n.as_f64().is_some_and(|x| x >= 0.0) => Ok(n.as_f64()),
            _ => Err(file.error(v.referenced.line(), format!("{owner}: `{key}` must be a number, 0 or more"))),
        },
    }
}

fn flag(file: &File<'_>, owner: &str, fields: &Fields, key: &str) -> Result<Option<(bool, u64)>, YamlError> {
    match field(fields, key) {
        None => Ok(None),
        Some(v) => match &v.value {
            Node::Scalar(Value::Bool(b)) => Ok(Some((*b, v.referenced.line()))),
            _ => Err(file.error(v.referenced.line(), format!("{owner}: `{key}` must be true or false"))),
        },
    }
}

/// `name` among `known` (registered names, agents, tasks), or an error naming the likely one.
fn resolve<'a, T>(
    file: &File<'_>,
    line: u64,
    what: &str,
    name: &str,
    known: &'a BTreeMap<String, T>,
    fix: &str,
) -> Result<&'a T, YamlError> {
    if let Some(found) = known.get(name) {
        return Ok(found);
    }
    let hint = match crewflow_rules::closest(name, known.keys().map(String::as_str)) {
        Some(c) => format!("did you mean `{c}`?"),
        None if known.is_empty() => format!("there are none; {fix}"),
        None => format!("the {what}s are: {}; {fix}", known.keys().cloned().collect::<Vec<_>>().join(", ")),
    };
    Err(file.error(line, format!("unknown {what} `{name}`; {hint}")))
}

fn load(agents: (&str, &str), tasks: (&str, &str), registry: &CrewRegistry) -> Result<Crew, YamlError> {
    let a_file = File { name: agents.0 };
    let built = build_agents(&a_file, a_file.parse(agents.1)?, registry)?;
    if built.is_empty() {
        return Err(
            a_file.error(0, "it defines no agents; add one (`researcher: {role: ..., goal: ..., backstory: ...}`)")
        );
    }
    let t_file = File { name: tasks.0 };
    let tasks = build_tasks(&t_file, t_file.parse(tasks.1)?, &built, registry)?;
    if tasks.is_empty() {
        return Err(t_file.error(0, "it defines no tasks; add one (`research: {description: ..., agent: ...}`)"));
    }
    let agents: Vec<Agent> = built.into_values().map(|(_, a)| a).collect();
    Ok(Crew::new(agents, tasks))
}

/// The agents by name, in file order (the index keeps the order).
fn build_agents(
    file: &File<'_>,
    entries: Entries,
    registry: &CrewRegistry,
) -> Result<BTreeMap<String, (usize, Agent)>, YamlError> {
    let mut out = BTreeMap::new();
    for (i, (name, fields)) in entries.iter().enumerate() {
        let agent = build_agent(file, &name.value, name.referenced.line(), &fields.value, registry)?;
        out.insert(name.value.clone(), (i, agent));
    }
    Ok(out)
}

fn build_agent(
    file: &File<'_>,
    name: &str,
    line: u64,
    fields: &Fields,
    registry: &CrewRegistry,
) -> Result<Agent, YamlError> {
    file.check_keys("agent", name, fields, AGENT_KEYS)?;
    let owner = format!("agent `{name}`");
    let Some(role) = text(file, &owner, fields, "role")? else {
        return Err(file.error(line, format!("{owner} has no `role`; add `role: ...` (who the agent is)")));
    };
    let llm = agent_llm(file, &owner, line, fields, registry)?;
    let mut agent = Agent::new(llm)
        .role(role)
        .goal(text(file, &owner, fields, "goal")?.unwrap_or_default())
        .backstory(text(file, &owner, fields, "backstory")?.unwrap_or_default());
    for (tool, at) in names(file, &owner, fields, "tools")? {
        let fix = "register it with CrewRegistry::tool(..)";
        agent = agent.tools(resolve(file, at, "tool", &tool, &registry.tools, fix)?);
    }
    if let Some(n) = number(file, &owner, fields, "max_iter")? {
        // Whole iterations: a fraction is cut, a huge number capped.
        agent = agent.max_iter(n.min(f64::from(u32::MAX)) as u32);
    }
    if let Some(secs) = number(file, &owner, fields, "max_execution_time")? {
        agent = agent.max_execution_time(Duration::from_secs_f64(secs.min(1e9)));
    }
    if let Some((allow, _)) = flag(file, &owner, fields, "allow_delegation")? {
        agent = agent.allow_delegation(allow);
    }
    // `verbose` is accepted and has no effect: every iteration and call is an event anyway.
    flag(file, &owner, fields, "verbose")?;
    Ok(agent)
}

fn agent_llm(
    file: &File<'_>,
    owner: &str,
    line: u64,
    fields: &Fields,
    registry: &CrewRegistry,
) -> Result<Llm, YamlError> {
    let Some(name) = text(file, owner, fields, "llm")? else {
        return registry.default_llm.clone().ok_or_else(|| {
            file.error(line, format!("{owner} has no `llm` and the registry has no default model; add `llm: <name>` or CrewRegistry::default_llm(..)"))
        });
    };
    let at = field(fields, "llm").map_or(line, |v| v.referenced.line());
    if let Some(llm) = registry.llms.get(&name) {
        return Ok(llm.clone());
    }
    if name.contains('/') || name == "local" {
        return Llm::new(&name).map_err(|e| file.error(at, format!("{owner}: the model `{name}`: {e}")));
    }
    let fix = "register it with CrewRegistry::llm(name, llm) or write a model string such as `openai/gpt-4o-mini`";
    resolve(file, at, "llm", &name, &registry.llms, fix).cloned()
}

fn build_tasks(
    file: &File<'_>,
    entries: Entries,
    agents: &BTreeMap<String, (usize, Agent)>,
    registry: &CrewRegistry,
) -> Result<Vec<Task>, YamlError> {
    let lines: BTreeMap<String, u64> = entries.keys().map(|k| (k.value.clone(), k.referenced.line())).collect();
    let mut earlier: BTreeMap<String, ()> = BTreeMap::new();
    let mut tasks = Vec::with_capacity(entries.len());
    for (name, fields) in &entries {
        let (name, line, fields) = (&name.value, name.referenced.line(), &fields.value);
        file.check_keys("task", name, fields, TASK_KEYS)?;
        let owner = format!("task `{name}`");
        let Some(description) = text(file, &owner, fields, "description")? else {
            return Err(file.error(line, format!("{owner} has no `description`; add `description: ...` (what to do)")));
        };
        let mut task = Task::new(name.clone(), description)
            .expected_output(text(file, &owner, fields, "expected_output")?.unwrap_or_default());
        if let Some(agent) = text(file, &owner, fields, "agent")? {
            let at = field(fields, "agent").map_or(line, |v| v.referenced.line());
            let fix = "name an agent of agents.yaml";
            task = task.agent(resolve(file, at, "agent", &agent, agents, fix)?.1.clone());
        }
        if field(fields, "context").is_some() {
            let context = names(file, &owner, fields, "context")?;
            for (c, at) in &context {
                if !earlier.contains_key(c) {
                    return Err(context_error(file, &owner, c, *at, &earlier, &lines));
                }
            }
            task = task.context(context.into_iter().map(|(c, _)| c));
        }
        task = task_options(file, &owner, fields, task, registry)?;
        earlier.insert(name.clone(), ());
        tasks.push(task);
    }
    Ok(tasks)
}

/// A context naming a later task, itself, or no task.
fn context_error(
    file: &File<'_>,
    owner: &str,
    name: &str,
    at: u64,
    earlier: &BTreeMap<String, ()>,
    lines: &BTreeMap<String, u64>,
) -> YamlError {
    if let Some(defined) = lines.get(name) {
        return file.error(
            at,
            format!(
                "{owner} takes context from `{name}`, which is not before it (it is at line {defined}); a task's context must come from tasks above it"
            ),
        );
    }
    let fix = "name a task above it";
    match resolve(file, at, "context task", name, earlier, fix) {
        Err(e) => YamlError { message: format!("{owner}: {}", e.message), ..e },
        Ok(_) => file.error(at, format!("{owner}: context `{name}`")),
    }
}

/// `output_file`, `create_directory`, `guardrail`, `guardrail_max_retries`, `output_json`,
/// `output_pydantic`, `human_input`.
fn task_options(
    file: &File<'_>,
    owner: &str,
    fields: &Fields,
    mut task: Task,
    registry: &CrewRegistry,
) -> Result<Task, YamlError> {
    if let Some(path) = text(file, owner, fields, "output_file")? {
        task = task.output_file(path);
    }
    if let Some((true, _)) = flag(file, owner, fields, "human_input")? {
        let name = task.name().to_string();
        task = task.human_review(crate::review::HumanReview::new(format!("Review the output of task `{name}`.")));
    }
    if let Some((false, at)) = flag(file, owner, fields, "create_directory")? {
        return Err(file.error(
            at,
            format!("{owner}: `create_directory: false` is not supported: crewflow always creates the output file's directory; remove it"),
        ));
    }
    if let Some(name) = text(file, owner, fields, "guardrail")? {
        let at = field(fields, "guardrail").map_or(0, |v| v.referenced.line());
        let check = resolve(
            file,
            at,
            "guardrail",
            &name,
            &registry.guardrails,
            "register it with CrewRegistry::guardrail(..)",
        )?
        .clone();
        task = task.with_guardrail(check);
    }
    if let Some(n) = number(file, owner, fields, "guardrail_max_retries")? {
        task = task.guardrail_max_retries(n.min(f64::from(u32::MAX)) as u32);
    }
    for key in ["output_json", "output_pydantic"] {
        if let Some(name) = text(file, owner, fields, key)? {
            let at = field(fields, key).map_or(0, |v| v.referenced.line());
            let fix = "register it with CrewRegistry::output_type::<T>(name)";
            task = resolve(file, at, "output type", &name, &registry.outputs, fix)?(task);
        }
    }
    Ok(task)
}
