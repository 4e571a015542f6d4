//! How a run starts: its inputs, payload, id and step budget.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, InputError};
use crate::id::RunId;
use crate::output::Output;
use crate::state::json_kind;

/// How to start a run: inputs merged into the state, a payload for the start steps, a run id,
/// a step budget.
///
/// Plain inputs convert into a `Kickoff`: `flow.kickoff(json!({"topic": "rust"}))`,
/// `flow.kickoff(())`.
#[derive(Default)]
pub struct Kickoff {
    pub(crate) inputs: Option<Map<String, Value>>,
    pub(crate) payload: Option<Output>,
    pub(crate) run_id: Option<RunId>,
    pub(crate) max_steps: Option<u64>,
    pub(crate) error: Option<Error>,
}

impl Kickoff {
    /// No inputs, no payload.
    pub fn new() -> Self {
        Kickoff::default()
    }

    /// Inputs to merge into the state: anything that serializes to a JSON object.
    pub fn inputs(mut self, inputs: impl Serialize) -> Self {
        match serde_json::to_value(inputs) {
            Ok(Value::Object(map)) => self.inputs = Some(map),
            Ok(Value::Null) => self.inputs = None,
            Ok(other) => self.error = Some(Error::Input(InputError::InputsNotAnObject { got: json_kind(&other) })),
            Err(e) => {
                self.error =
                    Some(Error::Input(InputError::InvalidInput { state_type: "inputs", message: e.to_string() }))
            }
        }
        self
    }

    /// One input.
    pub fn input(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.inputs.get_or_insert_with(Map::new).insert(key.into(), v);
            }
            Err(e) => {
                self.error =
                    Some(Error::Input(InputError::InvalidInput { state_type: "inputs", message: e.to_string() }))
            }
        }
        self
    }

    /// A payload for the start steps that take an input (for instance the webhook body that
    /// triggered the run).
    pub fn payload<T: Serialize + Send + Sync + 'static>(mut self, payload: T) -> Self {
        self.payload = Some(Output::new(payload));
        self
    }

    /// Runs under this id instead of a fresh one.
    pub fn run_id(mut self, id: RunId) -> Self {
        self.run_id = Some(id);
        self
    }

    /// The step budget of this run (overrides the flow's).
    pub fn max_steps(mut self, budget: u64) -> Self {
        self.max_steps = Some(budget);
        self
    }
}

impl From<()> for Kickoff {
    fn from(_: ()) -> Self {
        Kickoff::new()
    }
}

impl From<Value> for Kickoff {
    fn from(inputs: Value) -> Self {
        Kickoff::new().inputs(inputs)
    }
}

impl From<Map<String, Value>> for Kickoff {
    fn from(inputs: Map<String, Value>) -> Self {
        Kickoff { inputs: Some(inputs), ..Kickoff::default() }
    }
}
