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
        Ok(DeclarativeFlow { flow, name: definition.name().to_string(), defaults, schema })
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

impl Deref for DeclarativeFlow {
    type Target = Flow<DeclarativeState>;

    fn deref(&self) -> &Self::Target {
        &self.flow
    }
}
