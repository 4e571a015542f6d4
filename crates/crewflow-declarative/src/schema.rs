//! The document: what a YAML or JSON flow definition may say, as serde types.
//!
//! Unknown fields are rejected everywhere (a misspelt key is an error, not a silent default).
//! Conditions and actions are read as JSON values first and checked when the flow is built, so
//! their errors can name the method and say what was expected.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The only `schema` value accepted (optional in a document).
pub const SCHEMA_V1: &str = "crewflow.flow/v1";

/// A flow definition, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// `crewflow.flow/v1` when given.
    #[serde(default)]
    pub schema: Option<String>,
    /// The flow's name (in events, stores and errors).
    pub name: String,
    /// What the flow is for.
    #[serde(default)]
    pub description: Option<String>,
    /// The initial state and its schema.
    #[serde(default)]
    pub state: StateDoc,
    /// Flow-wide settings.
    #[serde(default)]
    pub config: ConfigDoc,
    /// Where runs are kept: `true` (the registry's store, else the default store) or
    /// `{store: URL}`.
    #[serde(default)]
    pub persist: Option<PersistDoc>,
    /// The steps, in declaration order (which is the order ties are broken in).
    pub methods: IndexMap<String, MethodDoc>,
}

/// `state:` — the initial state of every run and, optionally, a JSON Schema its inputs must
/// satisfy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDoc {
    /// Values every run starts with (kickoff inputs overlay them).
    #[serde(default)]
    pub default: Map<String, Value>,
    /// A JSON Schema for the state after the inputs are applied; its property `default`s fill
    /// in missing values.
    #[serde(default)]
    pub json_schema: Option<Value>,
}

/// `config:` — flow-wide settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    /// The per-run step budget (the loop guard).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// The registry name of the feedback provider for `human_feedback` blocks without their
    /// own `provider` (else the registry's default provider, else the console).
    #[serde(default)]
    pub feedback_provider: Option<String>,
    /// The registry name of the provider answering `ask` calls of code actions.
    #[serde(default)]
    pub input_provider: Option<String>,
}

/// `persist:` — `true`, `false`, or `{store: URL}`.
#[derive(Clone, Debug)]
pub enum PersistDoc {
    /// `persist: true` keeps runs in the registry's store, else the default store; `false` keeps
    /// nothing.
    Enabled(bool),
    /// `persist: {store: "sqlite://runs.db"}`; `${VAR}` in the URL reads the environment.
    Store(StoreDoc),
}

// By hand rather than `#[serde(untagged)]`, whose error ("did not match any variant of
// untagged enum PersistDoc") names a Rust type instead of what to write.
impl<'de> Deserialize<'de> for PersistDoc {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match &value {
            Value::Bool(enabled) => return Ok(PersistDoc::Enabled(*enabled)),
            Value::Object(map) if map.len() == 1 => {
                if let Some(Value::String(store)) = map.get("store") {
                    return Ok(PersistDoc::Store(StoreDoc { store: store.clone() }));
                }
            }
            _ => {}
        }
        Err(serde::de::Error::custom(format!(
            "`persist:` must be `true`, `false` or `{{store: URL}}` (such as `{{store: \"sqlite://runs.db\"}}`), not {value}"
        )))
    }
}

/// `persist: {store: ...}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDoc {
    /// A store URL: `sqlite://PATH`, a bare path, `sqlite::memory:` or `postgres://…`.
    pub store: String,
}

/// One entry of `methods:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodDoc {
    /// What the step does.
    #[serde(default)]
    pub description: Option<String>,
    /// `true` (runs at kickoff) or a condition (a conditional start).
    #[serde(default)]
    pub start: Option<Value>,
    /// The condition that runs this step: a name, `{or: [...]}`, `{and: [...]}`,
    /// `{step: name}` or `{label: name}`.
    #[serde(default)]
    pub listen: Option<Value>,
    /// The step is a router: its output is a route label, one of `emit`.
    #[serde(default)]
    pub router: bool,
    /// The labels a router returns.
    #[serde(default)]
    pub emit: Vec<String>,
    /// Ask a person about the step's output.
    #[serde(default)]
    pub human_feedback: Option<FeedbackDoc>,
    /// Checkpoint after this step (when any step says so, only those steps do).
    #[serde(default)]
    pub persist: bool,
    /// What the step does: an action (`call: code | expression | llm | each`; see docs/declarative.md).
    #[serde(rename = "do")]
    pub action: Value,
}

/// `human_feedback:` on a method.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackDoc {
    /// What the reviewer is asked.
    pub message: String,
    /// Outcomes the answer maps to, each dispatched as a route label.
    #[serde(default)]
    pub emit: Vec<String>,
    /// The outcome of an empty or unmatched answer.
    #[serde(default)]
    pub default_outcome: Option<String>,
    /// A model string (`local`, `openai/gpt-4o-mini`, ...) that maps free text to an outcome.
    #[serde(default)]
    pub llm: Option<String>,
    /// Data passed to the provider and kept in the result.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// The registry name of the provider collecting this step's feedback.
    #[serde(default)]
    pub provider: Option<String>,
    /// The registry name of a learner (e.g. `crewflow::memory::Lessons`): earlier reviews
    /// improve the output before it is shown, and each answer teaches it.
    #[serde(default)]
    pub learn: Option<String>,
    /// The source lessons are stored under (default `hitl`).
    #[serde(default)]
    pub learn_source: Option<String>,
    /// Fail the step when the improvement before review fails (default: show the raw output).
    #[serde(default)]
    pub learn_strict: bool,
}
