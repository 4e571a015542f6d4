//! Flow state: the typed value every step of a run shares, and how kickoff inputs merge into it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, closest};

/// What a flow's state must be: serializable (for checkpoints and events), defaultable (a run
/// starts from the default) and shareable across the run's concurrent steps.
///
/// Any type with these bounds qualifies; `serde_json::Map<String, Value>` is the state of
/// dynamic flows, and `()` the state of flows that keep none.
pub trait FlowState: Serialize + DeserializeOwned + Default + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> FlowState for T {}

/// The initial state of a run: the default, with the kickoff inputs merged over its top-level
/// fields. An input the state does not have is an error (never silently dropped).
pub(crate) fn initial_state<S: FlowState>(inputs: Option<&Map<String, Value>>) -> Result<S, Error> {
    match inputs {
        None => Ok(S::default()),
        Some(inputs) if inputs.is_empty() => Ok(S::default()),
        Some(inputs) => merge_inputs(S::default(), inputs),
    }
}

/// Merges `inputs` over the top-level fields of `state`.
pub(crate) fn merge_inputs<S: FlowState>(state: S, inputs: &Map<String, Value>) -> Result<S, Error> {
    let state_type = std::any::type_name::<S>();
    let mut base = serde_json::to_value(&state).map_err(|e| Error::StateSerialization {
        state_type,
        action: "converted to",
        message: e.to_string(),
    })?;
    let fields: Vec<String> = match &base {
        Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    let Value::Object(map) = &mut base else {
        let key = inputs.keys().next().cloned().unwrap_or_default();
        return Err(Error::UnknownInput { key, state_type, fields, suggestion: None });
    };
    for (k, v) in inputs {
        map.insert(k.clone(), v.clone());
    }
    let mut unknown = Vec::new();
    let merged: Result<S, _> = serde_ignored::deserialize(base, |path| unknown.push(path.to_string()));
    if let Some(key) = unknown.into_iter().next() {
        let suggestion = closest(&key, fields.iter().map(String::as_str));
        return Err(Error::UnknownInput { key, state_type, fields, suggestion });
    }
    merged.map_err(|e| Error::InvalidInput { state_type, message: e.to_string() })
}

/// JSON kinds, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
    struct Article {
        topic: String,
        words: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn inputs_merge_over_defaults() {
        let s: Article = initial_state(Some(&obj(json!({"topic": "rust", "note": "n"})))).unwrap();
        assert_eq!(s, Article { topic: "rust".into(), words: 0, note: Some("n".into()) });
    }

    #[test]
    fn unknown_input_is_an_error_with_a_suggestion() {
        let err = initial_state::<Article>(Some(&obj(json!({"topc": "rust"})))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown input `topc`"), "{msg}");
        assert!(msg.contains("did you mean `topic`"), "{msg}");
    }

    #[test]
    fn wrongly_typed_input_is_an_error() {
        let err = initial_state::<Article>(Some(&obj(json!({"words": "many"})))).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    }

    #[test]
    fn map_state_takes_any_key_and_unit_state_takes_none() {
        let m: Map<String, Value> = initial_state(Some(&obj(json!({"x": 1})))).unwrap();
        assert_eq!(m.get("x"), Some(&json!(1)));
        assert!(initial_state::<()>(Some(&obj(json!({"x": 1})))).is_err());
    }
}
