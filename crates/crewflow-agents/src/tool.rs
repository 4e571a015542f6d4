//! Tools: what an agent can do besides answering.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crewflow_core::EventKind;
use crewflow_llm::ToolCall;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ToolError;
use crate::journal;

/// What [`Tool::call`] returns: the text the model is given back, or why the call failed.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = Result<String, ToolError>> + Send + 'a>>;

/// A tool an agent can call: a name, a description the model reads, the JSON Schema of its
/// arguments, and the call itself.
///
/// Write one with [`#[tool]`](crate::tool) on an async fn, with [`ToolFn`] around a closure
/// (to capture state), or implement this trait. The arguments given to [`call`](Tool::call)
/// were already checked against [`parameters`](Tool::parameters).
pub trait Tool: Send + Sync + 'static {
    /// The name the model calls it by (letters, digits, `_`, `-`).
    fn name(&self) -> &str;
    /// What it does and when to use it (the model reads this).
    fn description(&self) -> &str;
    /// The JSON Schema of its arguments (an object).
    fn parameters(&self) -> Value;
    /// Runs it. The `Ok` text goes back to the model; so does an error's message.
    fn call(&self, args: Value) -> ToolFuture<'_>;
}

/// What a tool fn may return: `Result<T, E>` (`T: Serialize`, `E: Display`), `String`,
/// `&'static str` or a JSON value. Strings go to the model as they are, other values as JSON.
#[diagnostic::on_unimplemented(
    message = "a tool must return `Result<T, E>` (`T: Serialize`, `E: Display`), `String`, `&'static str` or `serde_json::Value`, not `{Self}`",
    label = "the model reads a tool's result as text or JSON"
)]
pub trait IntoToolResult {
    /// The text for the model, or the error.
    fn into_tool_result(self) -> Result<String, ToolError>;
}

fn value_text<T: Serialize>(value: &T) -> Result<String, ToolError> {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => Ok(s),
        Ok(v) => Ok(v.to_string()),
        Err(e) => Err(ToolError::Failed(format!("the tool's result does not convert to JSON: {e}"))),
    }
}

impl<T: Serialize, E: Display> IntoToolResult for Result<T, E> {
    fn into_tool_result(self) -> Result<String, ToolError> {
        match self {
            Ok(v) => value_text(&v),
            Err(e) => Err(ToolError::Failed(e.to_string())),
        }
    }
}

impl IntoToolResult for String {
    fn into_tool_result(self) -> Result<String, ToolError> {
        Ok(self)
    }
}

impl IntoToolResult for &'static str {
    fn into_tool_result(self) -> Result<String, ToolError> {
        Ok(self.to_string())
    }
}

impl IntoToolResult for Value {
    fn into_tool_result(self) -> Result<String, ToolError> {
        value_text(&self)
    }
}

/// A tool made of a closure over typed arguments `A` (their schema is `A`'s).
///
/// ```
/// use crewflow_agents::{ToolFn, ToolSet};
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Add { a: i64, b: i64 }
/// let offset = 10;
/// let add = ToolFn::new("add", "Adds two integers (plus the offset).", move |x: Add| async move {
///     Ok::<_, std::convert::Infallible>(x.a + x.b + offset)
/// });
/// let tools = ToolSet::new().with(add);
/// assert_eq!(tools.names(), vec!["add"]);
/// ```
pub struct ToolFn<A, F> {
    name: String,
    description: String,
    f: F,
    args: PhantomData<fn(A)>,
}

impl<A, F> ToolFn<A, F> {
    /// A tool named `name`, described by `description`, running `f`.
    pub fn new(name: impl Into<String>, description: impl Into<String>, f: F) -> Self {
        ToolFn { name: name.into(), description: description.into(), f, args: PhantomData }
    }
}

impl<A, F, Fut, R> Tool for ToolFn<A, F>
where
    A: DeserializeOwned + JsonSchema + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoToolResult,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> Value {
        crewflow_llm::schema_of::<A>()
    }
    fn call(&self, args: Value) -> ToolFuture<'_> {
        Box::pin(async move {
            let args: A = parse_args(args)?;
            (self.f)(args).await.into_tool_result()
        })
    }
}

/// Arguments as a tool's type (the `#[tool]` macro's code calls it).
#[doc(hidden)]
pub fn parse_args<A: DeserializeOwned>(args: Value) -> Result<A, ToolError> {
    let args = if args.is_null() { Value::Object(Default::default()) } else { args };
    serde_json::from_value(args).map_err(|e| ToolError::InvalidArguments(e.to_string()))
}

/// How the agent's loop treats one tool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ToolOptions {
    /// The longest a call may take; a slower call's result is an error for the model.
    pub timeout: Option<Duration>,
    /// The most calls per agent run (per kickoff); further calls are refused, for the model.
    pub max_calls: Option<u32>,
    /// Keep results by arguments (for as long as the tool set lives, across runs) and answer
    /// an identical call from here without calling.
    pub cache: bool,
}

impl ToolOptions {
    /// No timeout, no budget, no cache.
    pub fn new() -> Self {
        ToolOptions::default()
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the call budget (per kickoff).
    pub fn max_calls(mut self, n: u32) -> Self {
        self.max_calls = Some(n);
        self
    }

    /// Turns the result cache on.
    pub fn cache(mut self, on: bool) -> Self {
        self.cache = on;
        self
    }
}

struct Entry {
    tool: Arc<dyn Tool>,
    spec: crewflow_llm::Tool,
    validator: Option<jsonschema::Validator>,
    options: ToolOptions,
    cache: Mutex<HashMap<String, String>>,
}

/// The tools of an agent. Cheap to clone (the tools and their caches are shared).
#[derive(Clone, Default)]
pub struct ToolSet {
    entries: Vec<Arc<Entry>>,
    /// Set-up errors (a duplicate name, a schema that is not valid), reported at kickoff.
    problems: Vec<String>,
}

impl std::fmt::Debug for ToolSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolSet").field("tools", &self.names()).finish()
    }
}

/// How a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolOutcome {
    /// The tool ran and answered.
    Ok,
    /// The tool ran and failed (its error went to the model).
    Error,
    /// The arguments were rejected before the call (not JSON, or not matching the schema).
    Invalid,
    /// No tool has that name.
    Unknown,
    /// The call took longer than the tool's timeout.
    Timeout,
    /// The tool's call budget was spent; it was not called.
    Budget,
    /// An identical earlier call's result was given again, with a note.
    Repeated,
    /// The result came from the tool's cache.
    Cached,
}

impl ToolOutcome {
    /// The outcome as text (`ok`, `error`, ...), as in `tool_call_finished` events.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolOutcome::Ok => "ok",
            ToolOutcome::Error => "error",
            ToolOutcome::Invalid => "invalid",
            ToolOutcome::Unknown => "unknown",
            ToolOutcome::Timeout => "timeout",
            ToolOutcome::Budget => "budget",
            ToolOutcome::Repeated => "repeated",
            ToolOutcome::Cached => "cached",
        }
    }
}

/// One tool call and what the model was given back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call's id.
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments, as the model wrote them.
    pub arguments: String,
    /// How it ended.
    pub outcome: ToolOutcome,
    /// The text the model was given.
    pub text: String,
}

impl ToolSet {
    /// No tools.
    pub fn new() -> Self {
        ToolSet::default()
    }

    /// Adds a tool with default [`ToolOptions`].
    pub fn with(self, tool: impl Tool) -> Self {
        self.with_options(tool, ToolOptions::default())
    }

    /// Adds a tool with options.
    pub fn with_options(self, tool: impl Tool, options: ToolOptions) -> Self {
        self.with_arc(Arc::new(tool), options)
    }

    /// Adds a shared tool with options.
    pub fn with_arc(mut self, tool: Arc<dyn Tool>, options: ToolOptions) -> Self {
        let name = tool.name().to_string();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            self.problems.push(format!(
                "the tool name `{name}` is not valid: use letters, digits, `_` and `-` (providers reject others)"
            ));
        }
        if self.entries.iter().any(|e| e.spec.name == name) {
            self.problems.push(format!("two tools are named `{name}`: give one another name"));
        }
        let parameters = tool.parameters();
        let validator = match jsonschema::validator_for(&parameters) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("the parameters of tool `{name}` are not a valid JSON Schema: {e}"));
                None
            }
        };
        let spec = crewflow_llm::Tool::new(name, tool.description(), parameters);
        self.entries.push(Arc::new(Entry { tool, spec, validator, options, cache: Mutex::default() }));
        self
    }

    /// Adds every tool of `other` (with their options and caches).
    pub fn merge(mut self, other: &ToolSet) -> Self {
        for e in &other.entries {
            if self.entries.iter().any(|x| x.spec.name == e.spec.name) {
                self.problems.push(format!("two tools are named `{}`: give one another name", e.spec.name));
            }
            self.entries.push(e.clone());
        }
        self.problems.extend(other.problems.iter().cloned());
        self
    }

    /// The tools' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.spec.name.as_str()).collect()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tools as the model is told of them.
    pub fn specs(&self) -> Vec<crewflow_llm::Tool> {
        self.entries.iter().map(|e| e.spec.clone()).collect()
    }

    /// The set-up problems (duplicate or invalid names, invalid schemas); agents refuse to
    /// start with any.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Calls tool `name` with `args` (checked against its schema first), outside any agent:
    /// no budget, no repeat detection, no journal; the timeout applies.
    pub async fn call(&self, name: &str, args: Value) -> Result<String, ToolError> {
        let Some(entry) = self.entries.iter().find(|e| e.spec.name == name) else {
            return Err(ToolError::Failed(unknown_text(name, self)));
        };
        validate(entry, &args).map_err(ToolError::InvalidArguments)?;
        let (outcome, text) = execute(entry, args).await;
        match outcome {
            ToolOutcome::Ok => Ok(text),
            _ => Err(ToolError::Failed(text)),
        }
    }

    /// A session: the per-run state of these tools in one agent's loop (budgets, earlier
    /// calls), whose calls are journaled under `path` inside a durable run.
    pub(crate) fn session(&self, path: String) -> ToolSession<'_> {
        ToolSession { tools: self, path, calls: HashMap::new(), earlier: HashMap::new() }
    }
}

fn unknown_text(name: &str, tools: &ToolSet) -> String {
    let names = tools.names();
    if names.is_empty() {
        format!("there is no tool named `{name}`: no tools are available here; answer without tools")
    } else {
        format!("there is no tool named `{name}`; the tools are: {}", names.join(", "))
    }
}

/// Problems of `args` against the tool's schema, for the model.
fn validate(entry: &Entry, args: &Value) -> Result<(), String> {
    let Some(validator) = &entry.validator else { return Ok(()) };
    let problems: Vec<String> = validator
        .iter_errors(args)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
        })
        .collect();
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Runs the tool (its cache and timeout applied): the outcome and the text for the model.
async fn execute(entry: &Entry, args: Value) -> (ToolOutcome, String) {
    let cache_key = entry.options.cache.then(|| canonical(&args));
    if let Some(key) = &cache_key
        && let Some(hit) = entry.cache.lock().unwrap_or_else(PoisonError::into_inner).get(key)
    {
        return (ToolOutcome::Cached, hit.clone());
    }
    let call = entry.tool.call(args);
    let result = match entry.options.timeout {
        Some(limit) => match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => {
                return (
                    ToolOutcome::Timeout,
                    format!(
                        "Error: the tool `{}` did not answer within its timeout of {limit:?}; try other arguments or go on without it",
                        entry.spec.name
                    ),
                );
            }
        },
        None => call.await,
    };
    match result {
        Ok(text) => {
            if let Some(key) = cache_key {
                entry.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key, text.clone());
            }
            (ToolOutcome::Ok, text)
        }
        Err(ToolError::InvalidArguments(m)) => (
            ToolOutcome::Invalid,
            format!("Error: the arguments do not fit the tool's parameters: {m}; fix them and call again"),
        ),
        Err(e) => (ToolOutcome::Error, format!("Error: the tool `{}` failed: {e}", entry.spec.name)),
    }
}

/// JSON with object keys sorted, so equal arguments compare equal whatever their order.
fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&o[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

/// What to do with one call of a batch.
enum Plan {
    /// Answered without calling.
    Done(ToolOutcome, String),
    /// Call it.
    Run(Arc<Entry>, Value),
    /// The same as call `i` of this batch (answered once it is done).
    SameAs(usize),
}

/// The per-run state of an agent's tools.
pub(crate) struct ToolSession<'a> {
    tools: &'a ToolSet,
    path: String,
    /// Calls made per tool (for budgets).
    calls: HashMap<String, u32>,
    /// Successful results by tool and canonical arguments (for repeat detection).
    earlier: HashMap<(String, String), String>,
}

fn repeated_text(name: &str, earlier: &str) -> String {
    format!(
        "{earlier}\n\n(Note from crewflow: you already called `{name}` with these same arguments; this is that call's result again. Do not repeat the call: use this result, call with other arguments, or give your final answer.)"
    )
}

impl ToolSession<'_> {
    /// Runs one model reply's tool calls, concurrently; results in the calls' order.
    pub(crate) async fn run(
        &mut self,
        calls: &[ToolCall],
    ) -> Result<Vec<ToolResult>, crewflow_core::journal::OnceError> {
        let scope = crewflow_core::scope::current();
        let mut plans = Vec::with_capacity(calls.len());
        let mut batch_keys: Vec<Option<(String, String)>> = Vec::with_capacity(calls.len());
        for call in calls {
            let (plan, key) = self.plan(call, &batch_keys);
            plans.push(plan);
            batch_keys.push(key);
        }
        if let Some(s) = &scope {
            for call in calls {
                s.emit(|| EventKind::ToolCallStarted {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                });
            }
        }
        let runs = plans.iter().zip(calls).map(|(plan, call)| {
            let scope = scope.clone();
            let path = &self.path;
            async move {
                let Plan::Run(entry, args) = plan else { return None };
                let started = Instant::now();
                let child = format!("{path}/tool:{}:{}", call.name, call.id);
                let work = journal::with_path(child.clone(), execute(entry, args.clone()));
                let recorded = match &scope {
                    Some(s) => s.once(&child, |_| async move { Ok::<_, std::convert::Infallible>(work.await) }).await,
                    None => Ok(work.await),
                };
                Some(recorded.map(|(outcome, text)| (outcome, text, started.elapsed())))
            }
        });
        let mut ran = Vec::with_capacity(calls.len());
        for r in futures::future::join_all(runs).await {
            match r {
                Some(Err(e)) => return Err(e),
                Some(Ok(done)) => ran.push(Some(done)),
                None => ran.push(None),
            }
        }
        let mut results: Vec<ToolResult> = Vec::with_capacity(calls.len());
        for (i, (plan, call)) in plans.into_iter().zip(calls).enumerate() {
            let (outcome, text, elapsed) = match (plan, &ran[i]) {
                (Plan::Run(..), Some((o, t, e))) => (*o, t.clone(), *e),
                (Plan::Run(..), None) => unreachable_text(),
                (Plan::Done(o, t), _) => (o, t, Duration::ZERO),
                (Plan::SameAs(j), _) => {
                    let first = &results[j];
                    if first.outcome == ToolOutcome::Ok || first.outcome == ToolOutcome::Cached {
                        (ToolOutcome::Repeated, repeated_text(&call.name, &first.text), Duration::ZERO)
                    } else {
                        (first.outcome, first.text.clone(), Duration::ZERO)
                    }
                }
            };
            if matches!(outcome, ToolOutcome::Ok | ToolOutcome::Cached)
                && let Some(key) = &batch_keys[i]
            {
                self.earlier.entry(key.clone()).or_insert_with(|| text.clone());
            }
            if let Some(s) = &scope {
                s.emit(|| EventKind::ToolCallFinished {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    outcome: outcome.as_str().to_string(),
                    result: text.clone(),
                    elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                });
            }
            results.push(ToolResult {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                outcome,
                text,
            });
        }
        Ok(results)
    }

    /// What to do with `call`, and its repeat-detection key.
    fn plan(&mut self, call: &ToolCall, batch: &[Option<(String, String)>]) -> (Plan, Option<(String, String)>) {
        let Some(entry) = self.tools.entries.iter().find(|e| e.spec.name == call.name) else {
            return (
                Plan::Done(ToolOutcome::Unknown, format!("Error: {}", unknown_text(&call.name, self.tools))),
                None,
            );
        };
        let raw = if call.arguments.trim().is_empty() { "{}" } else { call.arguments.as_str() };
        let args: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                return (
                    Plan::Done(
                        ToolOutcome::Invalid,
                        format!(
                            "Error: the arguments are not valid JSON ({e}); call `{}` again with a JSON object",
                            call.name
                        ),
                    ),
                    None,
                );
            }
        };
        if let Err(problems) = validate(entry, &args) {
            return (
                Plan::Done(
                    ToolOutcome::Invalid,
                    format!(
                        "Error: the arguments do not fit the parameters of `{}`: {problems}; fix them and call again",
                        call.name
                    ),
                ),
                None,
            );
        }
        let key = (call.name.clone(), canonical(&args));
        if let Some(text) = self.earlier.get(&key) {
            return (Plan::Done(ToolOutcome::Repeated, repeated_text(&call.name, text)), Some(key));
        }
        if let Some(j) = batch.iter().position(|k| k.as_ref() == Some(&key)) {
            return (Plan::SameAs(j), Some(key));
        }
        let used = self.calls.entry(call.name.clone()).or_insert(0);
        if let Some(max) = entry.options.max_calls
            && *used >= max
        {
            return (
                Plan::Done(
                    ToolOutcome::Budget,
                    format!(
                        "Error: `{}` may be called at most {max} times in this task and that budget is spent; go on without it",
                        call.name
                    ),
                ),
                Some(key),
            );
        }
        *used += 1;
        (Plan::Run(entry.clone(), args), Some(key))
    }
}

fn unreachable_text() -> (ToolOutcome, String, Duration) {
    (ToolOutcome::Error, "Error: the tool call did not complete".to_string(), Duration::ZERO)
}
