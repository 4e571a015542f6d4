//! A built declarative flow: the engine's [`Flow`] plus the definition's state defaults and
//! schema, applied at kickoff.

use std::ops::Deref;
use std::sync::Arc;

use crewflow_core::{Flow, Kickoff, Run};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::build::FlowDefinition;
use crate::error::DeclarativeError;
use crate::state::{DeclarativeState, OUTPUTS_KEY};

/// A flow built from a definition.
///
/// [`kickoff`](DeclarativeFlow::kickoff) fills in the state's defaults and checks the inputs
/// against the state's JSON Schema before the run starts. Everything else — resuming,
/// feedback, streaming, conversations — is the engine's [`Flow`], reached through `Deref`:
/// `flow.resume_with_feedback(run_id, "approved")` works on a flow rebuilt from the same
/// definition in another process.
#[derive(Clone)]
pub struct DeclarativeFlow {
    flow: Flow<DeclarativeState>,
    name: String,
    defaults: Map<String, Value>,
    schema: Option<Arc<jsonschema::Validator>>,
    /// The state's keys when the definition declares them (`state.default`, the schema's
    /// `properties`), for refusing unknown inputs; `None` when it declares none or its schema
    /// allows more (`additionalProperties`, `patternProperties`).
    keys: Option<Vec<String>>,
}

impl std::fmt::Debug for DeclarativeFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclarativeFlow")
            .field("name", &self.name)
            .field("defaults", &self.defaults)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

impl DeclarativeFlow {
    pub(crate) fn new(
        flow: Flow<DeclarativeState>,
        definition: &FlowDefinition,
    ) -> Result<DeclarativeFlow, DeclarativeError> {
        let state = &definition.document().state;
        let mut defaults = state.default.clone();
        let schema = match &state.json_schema {
            Some(schema) => {
                let validator = jsonschema::validator_for(schema)
                    .map_err(|e| definition.invalid(format!("state.json_schema is not a valid JSON Schema: {e}")))?;
                // Property defaults fill in what `default:` leaves out.
                if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                    for (key, property) in properties {
                        if let Some(value) = property.get("default") {
                            defaults.entry(key.clone()).or_insert_with(|| value.clone());
                        }
                    }
                }
                Some(Arc::new(validator))
            }
            None => None,
        };
        if defaults.contains_key(OUTPUTS_KEY) {
            return Err(definition.invalid(format!("state.default may not use the reserved key `{OUTPUTS_KEY}`")));
        }
        let keys = declared_keys(&defaults, state.json_schema.as_ref());
        Ok(DeclarativeFlow { flow, name: definition.name().to_string(), defaults, schema, keys })
    }

    /// Starts a run with `inputs` (a JSON object, or `()` for none) over the state's defaults,
    /// and waits for it to finish or pause.
    pub async fn kickoff(&self, inputs: impl Serialize) -> Result<Run<DeclarativeState>, DeclarativeError> {
        let kickoff = self.prepare(inputs)?;
        self.flow
            .kickoff(kickoff)
            .await
            .map_err(|e| DeclarativeError::Flow { flow: self.name.clone(), source: Box::new(e) })
    }

    /// The kickoff for `inputs`: defaults applied, the schema checked. For the engine's other
    /// ways to start a run (`spawn`, `stream`, `enqueue`).
    pub fn prepare(&self, inputs: impl Serialize) -> Result<Kickoff, DeclarativeError> {
        let bad = |message: String| DeclarativeError::Input { flow: self.name.clone(), message };
        let inputs = match serde_json::to_value(inputs).map_err(|e| bad(e.to_string()))? {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => return Err(bad(format!("inputs must be a JSON object of state values, not {other}"))),
        };
        if inputs.contains_key(OUTPUTS_KEY) {
            return Err(bad(format!("`{OUTPUTS_KEY}` is reserved for method outputs")));
        }
        if let Some(keys) = &self.keys {
            let unknown: Vec<String> = inputs
                .keys()
                .filter(|k| !keys.contains(k))
                .map(|k| match crewflow_rules::closest(k, keys.iter().map(String::as_str)) {
                    Some(c) => format!("`{k}` (did you mean `{c}`?)"),
                    None => format!("`{k}`"),
                })
                .collect();
            if !unknown.is_empty() {
                let (noun, them) = if unknown.len() == 1 { ("input", "it") } else { ("inputs", "them") };
                return Err(bad(format!(
                    "unknown {noun} {}; the state's keys are: {}. Declare {them} under `state.default` or `state.json_schema.properties`",
                    unknown.join(", "),
                    keys.join(", ")
                )));
            }
        }
        let mut state = self.defaults.clone();
        state.extend(inputs);
        if let Some(schema) = &self.schema {
            let value = Value::Object(std::mem::take(&mut state));
            let problems: Vec<String> = schema
                .iter_errors(&value)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
                })
                .collect();
            if !problems.is_empty() {
                return Err(bad(problems.join("; ")));
            }
            if let Value::Object(map) = value {
                state = map;
            }
        }
        Ok(Kickoff::new().inputs(state))
    }

    /// The engine's flow.
    pub fn flow(&self) -> &Flow<DeclarativeState> {
        &self.flow
    }
}

/// The keys a definition declares: those of `state.default` and of its schema's `properties`.
/// `None` when it declares none (any input is taken) or its schema admits other keys.
fn declared_keys(defaults: &Map<String, Value>, schema: Option<&Value>) -> Option<Vec<String>> {
    let mut keys: Vec<String> = defaults.keys().cloned().collect();
    if let Some(schema) = schema {
        let open = schema.get("patternProperties").is_some()
            || schema.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false));
        if open {
            return None;
        }
        let properties = schema.get("properties").and_then(Value::as_object).into_iter().flat_map(|p| p.keys());
        let required = schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
        for key in properties.map(String::as_str).chain(required) {
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_string());
            }
        }
    }
    if keys.is_empty() { None } else { Some(keys) }
}

impl Deref for DeclarativeFlow {
    type Target = Flow<DeclarativeState>;

    fn deref(&self) -> &Self::Target {
        &self.flow
    }
}
