//! The state of a declarative run: a JSON map, plus each method's latest output.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The key under which a run's state keeps method outputs (so `outputs.x` survives a pause, a
/// crash and a move to another process: it is checkpointed with the state).
pub const OUTPUTS_KEY: &str = "$outputs";

/// The state of a declarative run.
///
/// `values` is what the definition calls `state` (the `default` values, overlaid by the
/// kickoff inputs, changed by code actions); `outputs` holds the latest output of every
/// method that has run, for expressions (`outputs.draft`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeclarativeState {
    /// The state's values.
    #[serde(flatten)]
    pub values: Map<String, Value>,
    /// The latest output of each method, by name.
    #[serde(rename = "$outputs", default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
}

impl DeclarativeState {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Sets `key` to `value` (anything serializable; a value JSON cannot hold is stored as `null`).
    pub fn set(&mut self, key: impl Into<String>, value: impl Serialize) {
        self.values.insert(key.into(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    /// The latest output of `method`, if it has run.
    pub fn output(&self, method: &str) -> Option<&Value> {
        self.outputs.get(method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_flat_and_outputs_round_trip() {
        let mut state = DeclarativeState::default();
        state.set("topic", "rust");
        state.outputs.insert("draft".into(), json!("text"));
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json, json!({"topic": "rust", "$outputs": {"draft": "text"}}));
        let back: DeclarativeState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        let plain: DeclarativeState = serde_json::from_value(json!({"n": 1})).unwrap();
        assert_eq!(plain.get("n"), Some(&json!(1)));
        assert!(plain.outputs.is_empty());
    }
}
