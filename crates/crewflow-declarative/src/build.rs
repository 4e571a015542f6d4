//! From a document to a flow: every name resolved, every expression compiled, every condition
//! checked, then handed to [`FlowBuilder`], the same builder `#[flow]` uses.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use crewflow_core::trigger::{Trigger, and, label, or, step};
use crewflow_core::{Cx, FeedbackProvider, FlowBuilder, HumanFeedback, StepError};
use serde_json::Value;

use crate::action::{Action, resolve_model, unknown};
use crate::error::DeclarativeError;
use crate::expr::Uses;
use crate::flow::DeclarativeFlow;
use crate::registry::Registry;
use crate::schema::{Document, FeedbackDoc, MethodDoc, PersistDoc, SCHEMA_V1};
use crate::state::DeclarativeState;

/// A flow definition read from YAML or JSON, ready to build against a [`Registry`].
///
/// ```
/// use crewflow_declarative::{FlowDefinition, Registry};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let definition = FlowDefinition::from_yaml(r#"
/// name: greeting
/// state:
///   default: {name: world}
/// methods:
///   greet:
///     start: true
///     do: {call: expression, expr: '"hello, " + state.name'}
/// "#)?;
/// let flow = definition.build(&Registry::new())?;
/// let run = flow.kickoff(serde_json::json!({"name": "Ada"})).await?;
/// assert_eq!(run.output_json(), Some(serde_json::json!("hello, Ada")));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct FlowDefinition {
    document: Document,
    /// The file it was read from (`<yaml>` / `<json>` for text given inline).
    file: Arc<str>,
    /// Each method's place in the text: the line and column of its name under `methods:`.
    places: HashMap<String, (u32, u32)>,
}

impl FlowDefinition {
    /// Reads a definition written in YAML (JSON is YAML too).
    pub fn from_yaml(text: &str) -> Result<FlowDefinition, DeclarativeError> {
        FlowDefinition::parse(text, "the definition", None, Format::Yaml)
    }

    /// Reads a definition written in JSON.
    pub fn from_json(text: &str) -> Result<FlowDefinition, DeclarativeError> {
        FlowDefinition::parse(text, "the definition", None, Format::Json)
    }

    /// Reads a definition from a file: JSON for `.json`, YAML otherwise.
    pub fn from_path(path: impl AsRef<Path>) -> Result<FlowDefinition, DeclarativeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeclarativeError::Read { path: path.display().to_string(), source })?;
        let format = if path.extension().is_some_and(|e| e == "json") { Format::Json } else { Format::Yaml };
        let origin = path.display().to_string();
        FlowDefinition::parse(&text, &origin, Some(&origin), format)
    }

    fn parse(text: &str, origin: &str, file: Option<&str>, format: Format) -> Result<FlowDefinition, DeclarativeError> {
        let syntax = |message: String| DeclarativeError::Syntax { origin: origin.to_string(), message: plain(message) };
        if text.trim().is_empty() {
            return Err(syntax("it is empty; a definition needs at least `name:` and `methods:`".into()));
        }
        let document: Document = match format {
            // YAML 1.2 booleans only: a label called `yes`, `no`, `on` or `off` stays a string.
            Format::Yaml => serde_saphyr::from_str_with_options(text, serde_saphyr::options! { strict_booleans: true })
                .map_err(|e| syntax(e.to_string()))?,
            Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string()))?,
        };
        let file = match (file, format) {
            (Some(file), _) => file,
            (None, Format::Yaml) => "<yaml>",
            (None, Format::Json) => "<json>",
        };
        let definition = FlowDefinition { document, file: Arc::from(file), places: method_places(text) };
        if let Some(schema) = &definition.document.schema
            && schema != SCHEMA_V1
        {
            return Err(
                definition.invalid(format!("schema `{schema}` is not supported; use `{SCHEMA_V1}` or leave it out"))
            );
        }
        if definition.document.methods.is_empty() {
            return Err(definition.invalid("`methods:` is empty; a flow needs at least one method".into()));
        }
        definition.check_names()?;
        Ok(definition)
    }

    /// Names and settings the engine would take but a user cannot mean: an empty or
    /// multi-line name (it appears in stores, events and errors), an outcome listed twice, a
    /// step budget of zero.
    fn check_names(&self) -> Result<(), DeclarativeError> {
        let document = &self.document;
        if let Err(problem) = plain_name(&document.name) {
            return Err(DeclarativeError::Syntax {
                origin: "the definition".into(),
                message: format!("`name: {:?}` {problem}; give the flow a name such as `name: triage`", document.name),
            });
        }
        for (name, method) in &document.methods {
            if let Err(problem) = plain_name(name) {
                return Err(self.invalid(format!(
                    "the method name {name:?} under `methods:` {problem}; use a plain name such as `classify`"
                )));
            }
            let method_error = |message: String| self.method_error(name, message);
            check_labels("emit", &method.emit).map_err(method_error)?;
            if let Some(feedback) = &method.human_feedback {
                check_labels("human_feedback.emit", &feedback.emit).map_err(method_error)?;
            }
        }
        if document.config.max_steps == Some(0) {
            return Err(self.invalid(format!(
                "`config.max_steps: 0` leaves no step able to run; give a positive budget, or leave it out for the default ({})",
                crewflow_core::DEFAULT_MAX_STEPS
            )));
        }
        Ok(())
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.document.name
    }

    /// The document as read.
    pub fn document(&self) -> &Document {
        &self.document
    }

    /// Builds the flow, resolving every name against `registry`.
    pub fn build(&self, registry: &Registry) -> Result<DeclarativeFlow, DeclarativeError> {
        let flow = self
            .builder(registry)?
            .build()
            .map_err(|e| DeclarativeError::Flow { flow: self.document.name.clone(), source: Box::new(e) })?;
        DeclarativeFlow::new(flow, self)
    }

    /// The flow as a [`FlowBuilder`], to add what a file cannot say (observers, a store, more
    /// steps written in Rust) before building. Kickoffs of a flow built this way skip the
    /// state defaults and schema; prefer [`build`](FlowDefinition::build).
    pub fn builder(&self, registry: &Registry) -> Result<FlowBuilder<DeclarativeState>, DeclarativeError> {
        let names = Names::of(&self.document);
        let mut builder = FlowBuilder::<DeclarativeState>::new(self.document.name.clone());
        for (name, method) in &self.document.methods {
            builder = self
                .add_method(builder, name, method, &names, registry)
                .map_err(|message| self.method_error(name, message))?;
        }
        builder = self.configure(builder, registry)?;
        Ok(builder)
    }

    fn add_method(
        &self,
        builder: FlowBuilder<DeclarativeState>,
        name: &str,
        method: &MethodDoc,
        names: &Names,
        registry: &Registry,
    ) -> Result<FlowBuilder<DeclarativeState>, String> {
        let kind = StepKind::of(method, names)?;
        let action = Action::compile(&method.action, registry).map_err(|e| format!("do: {e}"))?;
        let action = Arc::new((action.uses(), action));
        let method_name: Arc<str> = name.into();
        let mut builder = if method.router {
            if method.emit.is_empty() {
                return Err("a router needs `emit: [...]`, the labels it can return".into());
            }
            let labels: Arc<[String]> = method.emit.clone().into();
            let handler = move |cx: Cx<DeclarativeState>, input: Value| {
                let (action, method, labels) = (action.clone(), method_name.clone(), labels.clone());
                async move {
                    let output = run_and_record(&action, &cx, &method, input).await?;
                    match output {
                        Value::String(l) if labels.contains(&l) => Ok(l),
                        other => Err(StepError::msg(format!(
                            "router `{method}` returned {other}, which is not one of its labels [{}]; return one of them or add it to `emit`",
                            labels.join(", ")
                        ))),
                    }
                }
            };
            let builder = match kind {
                StepKind::Start => builder.start_router(name, handler),
                StepKind::StartOn(t) => builder.start_router_on(name, t, handler),
                StepKind::Listen(t) => builder.router(name, t, handler),
            };
            builder.routes(method.emit.iter().map(String::as_str))
        } else {
            if !method.emit.is_empty() {
                return Err(
                    "`emit` is for routers: add `router: true`, or put outcomes under `human_feedback: {emit: [...]}`"
                        .into(),
                );
            }
            let handler = move |cx: Cx<DeclarativeState>, input: Value| {
                let (action, method) = (action.clone(), method_name.clone());
                async move { run_and_record(&action, &cx, &method, input).await }
            };
            match kind {
                StepKind::Start => builder.start(name, handler),
                StepKind::StartOn(t) => builder.start_on(name, t, handler),
                StepKind::Listen(t) => builder.listen(name, t, handler),
            }
        };
        if let Some(&(line, column)) = self.places.get(name) {
            builder = builder.defined_at(self.file.to_string(), line, column);
        }
        if let Some(feedback) = &method.human_feedback {
            builder = builder.human_feedback(
                human_feedback(feedback, method.router, registry).map_err(|e| format!("human_feedback: {e}"))?,
            );
        }
        if method.persist {
            builder = builder.persisted();
        }
        Ok(builder)
    }

    fn configure(
        &self,
        mut builder: FlowBuilder<DeclarativeState>,
        registry: &Registry,
    ) -> Result<FlowBuilder<DeclarativeState>, DeclarativeError> {
        let config = &self.document.config;
        if let Some(budget) = config.max_steps {
            builder = builder.max_steps(budget);
        }
        let feedback: Option<Arc<dyn FeedbackProvider>> = match &config.feedback_provider {
            Some(name) => Some(feedback_provider(registry, name).map_err(|e| self.invalid(format!("config: {e}")))?),
            None => registry.default_feedback.clone(),
        };
        if let Some(provider) = feedback {
            builder = builder.feedback_provider(provider);
        }
        if let Some(name) = &config.input_provider {
            let Some(provider) = registry.input_providers.get(name) else {
                let known: Vec<&str> = registry.input_providers.keys().map(String::as_str).collect();
                return Err(self.invalid(format!(
                    "config: {}",
                    unknown("input provider", name, &known, "Registry::input_provider")
                )));
            };
            builder = builder.input_provider(provider.clone());
        }
        if let Some(store) = &registry.store {
            return Ok(builder.store(store.clone()));
        }
        match &self.document.persist {
            None | Some(PersistDoc::Enabled(false)) => {}
            Some(PersistDoc::Enabled(true)) => builder = builder.default_store(crewflow_store::default_store),
            Some(PersistDoc::Store(doc)) => {
                let url = expand_env(&doc.store).map_err(|e| self.invalid(format!("persist: {e}")))?;
                let store = crewflow_store::open(&url).map_err(|e| self.invalid(format!("persist: {e}")))?;
                builder = builder.store(store);
            }
        }
        Ok(builder)
    }

    pub(crate) fn invalid(&self, message: String) -> DeclarativeError {
        DeclarativeError::Invalid { flow: self.document.name.clone(), message }
    }

    fn method_error(&self, method: &str, message: String) -> DeclarativeError {
        DeclarativeError::Method { flow: self.document.name.clone(), method: method.to_string(), message }
    }
}

/// Where each method's name stands in the text (line and column, from 1), read by a second,
/// span-keeping pass of the YAML reader (JSON is YAML too). Text it cannot read that way gives
/// no places: the flow builds the same, its steps only lose their location in pictures.
fn method_places(text: &str) -> HashMap<String, (u32, u32)> {
    #[derive(serde::Deserialize)]
    struct Methods {
        #[serde(default)]
        methods: indexmap::IndexMap<serde_saphyr::Spanned<String>, serde::de::IgnoredAny>,
    }
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<Methods>(text, options) {
        Ok(doc) => doc
            .methods
            .into_keys()
            .filter_map(|k| {
                let line = u32::try_from(k.referenced.line()).ok().filter(|l| *l > 0)?;
                Some((k.value, (line, u32::try_from(k.referenced.column()).unwrap_or(0))))
            })
            .collect(),
        Err(_) => HashMap::new(),
    }
}

#[derive(Clone, Copy)]
enum Format {
    Yaml,
    Json,
}

/// Runs a method's action and records its output for `outputs.<method>`.
async fn run_and_record(
    (uses, action): &(Uses, Action),
    cx: &Cx<DeclarativeState>,
    method: &str,
    input: Value,
) -> Result<Value, StepError> {
    let output = action.run(cx, method, &input, *uses).await?;
    cx.update(|s| s.outputs.insert(method.to_string(), output.clone()));
    Ok(output)
}

/// When a method runs.
enum StepKind {
    Start,
    StartOn(Trigger),
    Listen(Trigger),
}

impl StepKind {
    fn of(method: &MethodDoc, names: &Names) -> Result<StepKind, String> {
        let start = match &method.start {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(None),
            Some(condition) => Some(Some(names.condition(condition).map_err(|e| format!("start: {e}"))?)),
        };
        let listen =
            method.listen.as_ref().map(|c| names.condition(c).map_err(|e| format!("listen: {e}"))).transpose()?;
        match (start, listen) {
            (Some(_), Some(_)) => Err(
                "give either `start` or `listen`, not both (a start that also waits for something is `start: <condition>`)".into(),
            ),
            (Some(None), None) => Ok(StepKind::Start),
            (Some(Some(t)), None) => Ok(StepKind::StartOn(t)),
            (None, Some(t)) => Ok(StepKind::Listen(t)),
            (None, None) => Err("it never runs: give it `start: true` or `listen: <condition>`".into()),
        }
    }
}

/// The method names and route labels of a document, to tell which a condition means.
struct Names {
    methods: BTreeSet<String>,
    labels: BTreeSet<String>,
}

impl Names {
    fn of(document: &Document) -> Names {
        let mut labels = BTreeSet::new();
        for method in document.methods.values() {
            labels.extend(method.emit.iter().cloned());
            if let Some(feedback) = &method.human_feedback {
                labels.extend(feedback.emit.iter().cloned());
            }
        }
        Names { methods: document.methods.keys().cloned().collect(), labels }
    }

    /// A condition: a name, `{or: [...]}`, `{and: [...]}`, `{step: name}` or `{label: name}`.
    fn condition(&self, value: &Value) -> Result<Trigger, String> {
        match value {
            Value::String(name) => self.name(name),
            Value::Object(map) if map.len() == 1 => {
                let Some((key, inner)) = map.iter().next() else {
                    return Err(self.shape(value));
                };
                match (key.as_str(), inner) {
                    ("or" | "and", Value::Array(members)) if !members.is_empty() => {
                        let members = members.iter().map(|m| self.condition(m)).collect::<Result<Vec<_>, _>>()?;
                        Ok(if key == "or" { or(members) } else { and(members) })
                    }
                    ("or" | "and", _) => Err(format!("`{key}` needs a non-empty list of conditions, got {inner}")),
                    ("step", Value::String(name)) if self.methods.contains(name) => Ok(step(name.as_str())),
                    ("step", Value::String(name)) => Err(self.unknown_method(name)),
                    ("label", Value::String(name)) if self.labels.contains(name) => Ok(label(name.as_str())),
                    ("label", Value::String(name)) => Err(self.unknown_label(name)),
                    _ => Err(self.shape(value)),
                }
            }
            _ => Err(self.shape(value)),
        }
    }

    fn name(&self, name: &str) -> Result<Trigger, String> {
        match (self.methods.contains(name), self.labels.contains(name)) {
            (true, true) => Err(format!(
                "`{name}` is both a method and a route label; write `{{step: {name}}}` or `{{label: {name}}}`"
            )),
            (true, false) => Ok(step(name)),
            (false, true) => Ok(label(name)),
            (false, false) => {
                let all = self.methods.iter().chain(&self.labels).map(String::as_str);
                let hint =
                    crewflow_rules::closest(name, all).map(|c| format!(" — did you mean `{c}`?")).unwrap_or_default();
                Err(format!(
                    "`{name}` is neither a method nor a label any router emits{hint} (methods: {}; labels: {})",
                    list(&self.methods),
                    list(&self.labels)
                ))
            }
        }
    }

    fn unknown_method(&self, name: &str) -> String {
        let hint = crewflow_rules::closest(name, self.methods.iter().map(String::as_str))
            .map(|c| format!(" — did you mean `{c}`?"))
            .unwrap_or_default();
        format!("there is no method `{name}`{hint} (methods: {})", list(&self.methods))
    }

    fn unknown_label(&self, name: &str) -> String {
        let hint = crewflow_rules::closest(name, self.labels.iter().map(String::as_str))
            .map(|c| format!(" — did you mean `{c}`?"))
            .unwrap_or_default();
        format!(
            "no router emits the label `{name}`{hint} (labels: {}); add it to a router's `emit`",
            list(&self.labels)
        )
    }

    fn shape(&self, value: &Value) -> String {
        format!(
            "expected a method or label name, `{{or: [...]}}`, `{{and: [...]}}`, `{{step: name}}` or `{{label: name}}`, got {value}"
        )
    }
}

/// The YAML reader's messages in the words of the file rather than of its implementation.
fn plain(message: String) -> String {
    const REWORDED: [(&str, &str); 5] = [
        (
            ", set DuplicateKeyPolicy in Options if acceptable",
            " (a key may appear once in a mapping: remove or rename one)",
        ),
        ("invalid u64", "expected a whole number, 0 or more"),
        ("expected mapping start", "expected a mapping (`key: value` lines, or `{key: value}`)"),
        ("expected sequence start", "expected a list (`[a, b]`, or `- a` lines)"),
        ("expected string scalar", "expected a string"),
    ];
    REWORDED.iter().fold(message, |text, (from, to)| if text.contains(from) { text.replace(from, to) } else { text })
}

/// Why `name` cannot name a flow, a method or an outcome: empty, or holding a line break or
/// another control character.
fn plain_name(name: &str) -> Result<(), &'static str> {
    if name.trim().is_empty() {
        Err("is empty")
    } else if name.chars().any(|c| c == '\n' || c == '\r') {
        Err("holds a line break")
    } else if name.chars().any(char::is_control) {
        Err("holds a control character")
    } else {
        Ok(())
    }
}

/// Refuses an outcome list (`emit`) with an unusable or repeated label.
fn check_labels(key: &str, labels: &[String]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for label in labels {
        if let Err(problem) = plain_name(label) {
            return Err(format!("`{key}`: the label {label:?} {problem}; use a plain word such as `approved`"));
        }
        if !seen.insert(label.as_str()) {
            return Err(format!("`{key}` lists `{label}` twice; list each outcome once"));
        }
    }
    Ok(())
}

fn list(names: &BTreeSet<String>) -> String {
    if names.is_empty() { "none".into() } else { names.iter().cloned().collect::<Vec<_>>().join(", ") }
}

fn human_feedback(doc: &FeedbackDoc, is_router: bool, registry: &Registry) -> Result<HumanFeedback, String> {
    // The same rules as the builder's and the macro's (crewflow_rules), checked here so that
    // the error names the method.
    let options = crewflow_rules::FeedbackOptions {
        is_router,
        emit: doc.emit.iter().map(String::as_str).collect(),
        default_outcome: doc.default_outcome.as_deref(),
        classifier: doc.llm.is_some(),
        learner: doc.learn.is_some(),
        learn_strict: doc.learn_strict,
        learn_source: doc.learn_source.is_some(),
    };
    crewflow_rules::check_feedback(&options).map_err(|rule| rule.to_string())?;
    let mut feedback = HumanFeedback::new(doc.message.clone()).emit(doc.emit.iter().map(String::as_str));
    if let Some(outcome) = &doc.default_outcome {
        feedback = feedback.default_outcome(outcome.as_str());
    }
    if let Some(metadata) = &doc.metadata {
        feedback = feedback.metadata(metadata);
    }
    if let Some(model) = &doc.llm {
        feedback = feedback.classifier(resolve_model(registry, Some(model))?);
    }
    if let Some(name) = &doc.provider {
        feedback = feedback.provider(feedback_provider(registry, name)?);
    }
    if let Some(name) = &doc.learn {
        let Some(learner) = registry.learners.get(name) else {
            let known: Vec<&str> = registry.learners.keys().map(String::as_str).collect();
            return Err(unknown("learner", name, &known, "Registry::learner"));
        };
        feedback = feedback.learn(learner.clone()).learn_strict(doc.learn_strict);
        if let Some(source) = &doc.learn_source {
            feedback = feedback.learn_source(source.as_str());
        }
    }
    Ok(feedback)
}

fn feedback_provider(registry: &Registry, name: &str) -> Result<Arc<dyn FeedbackProvider>, String> {
    registry.feedback_providers.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = registry.feedback_providers.keys().map(String::as_str).collect();
        unknown("feedback provider", name, &known, "Registry::feedback_provider")
    })
}

/// `${VAR}` in a store URL reads the environment; an unset variable is an error naming it.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let body = &rest[at + 2..];
        let end = body.find('}').ok_or_else(|| format!("`{text}` opens `${{` without a closing `}}`"))?;
        let var = &body[..end];
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => out.push_str(&value),
            _ => return Err(format!("`{text}` reads the environment variable `{var}`, which is not set")),
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
