//! Flow state: the typed value every step of a run shares, and how kickoff inputs merge into it.

use crate::error::InputError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Error, UnknownKey, closest};

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

/// Merges `inputs` over the top-level fields of `state`. Every unknown key is reported at once;
/// a value of the wrong type is reported with its path (`inputs.items[2].qty: expected u32, got
/// string "x"`), every such input at once.
pub(crate) fn merge_inputs<S: FlowState>(state: S, inputs: &Map<String, Value>) -> Result<S, Error> {
    let state_type = std::any::type_name::<S>();
    let base = serde_json::to_value(&state).map_err(|e| Error::StateSerialization {
        state_type,
        action: "converted to",
        message: e.to_string(),
    })?;
    if let Some(Value::String(id)) = inputs.get("id")
        && !matches!(&base, Value::Object(fields) if fields.contains_key("id"))
        && id.parse::<crate::RunId>().is_ok()
    {
        // CrewAI's way to restore a run; here it would start a fresh run holding a stray key.
        return Err(Error::Input(InputError::RestoreByInput { run_id: id.clone() }));
    }
    let Value::Object(defaults) = base else {
        // A state without fields (`()`): every input is unknown.
        let keys = inputs.keys().map(|key| UnknownKey { key: key.clone(), suggestion: None }).collect();
        return Err(Error::Input(InputError::UnknownInput { keys, state_type, fields: Vec::new() }));
    };
    let fields: Vec<String> = defaults.keys().cloned().collect();
    let mut merged = defaults.clone();
    for (k, v) in inputs {
        merged.insert(k.clone(), v.clone());
    }
    let mut problems = Vec::new();
    loop {
        let mut unknown = Vec::new();
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(Value::Object(merged.clone()), &mut track);
        let result: Result<S, _> = serde_ignored::deserialize(tracked, |path| unknown.push(path.to_string()));
        if !unknown.is_empty() {
            let keys = unknown
                .into_iter()
                .map(|key| {
                    let suggestion = closest(&key, fields.iter().map(String::as_str));
                    UnknownKey { key, suggestion }
                })
                .collect();
            return Err(Error::Input(InputError::UnknownInput { keys, state_type, fields }));
        }
        let error = match result {
            Ok(merged) if problems.is_empty() => return Ok(merged),
            Ok(_) => break,
            Err(e) => e,
        };
        let path = track.path().to_string();
        problems.push(format!("inputs.{path}: {}", reworded(&error.to_string())));
        // Put the field's default back and look for the next bad input; a failure the inputs
        // did not cause (or one found again) ends the search.
        let field = path.split(['.', '[']).next().unwrap_or_default();
        match (inputs.contains_key(field), defaults.get(field)) {
            (true, Some(default)) if merged.get(field) != Some(default) => {
                merged.insert(field.to_string(), default.clone());
            }
            _ => break,
        }
    }
    Err(Error::Input(InputError::InvalidInput { state_type, message: problems.join("; ") }))
}

/// serde's "invalid type: string \"x\", expected u32" as "expected u32, got string \"x\"".
fn reworded(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((got, expected)) = message.strip_prefix(prefix).and_then(|rest| rest.rsplit_once(", expected ")) {
            return format!("expected {expected}, got {got}");
        }
    }
    message.to_string()
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
    fn a_run_id_as_the_id_input_says_how_crewflow_restores() {
        let run = crate::RunId::new().to_string();
        let inputs = obj(json!({ "id": run, "topic": "rust" }));
        for err in [
            initial_state::<Article>(Some(&inputs)).unwrap_err(),
            initial_state::<Map<String, Value>>(Some(&inputs)).unwrap_err(),
            initial_state::<()>(Some(&inputs)).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(msg.contains(&format!("flow.resume({run})")), "{msg}");
            assert!(msg.contains(&format!("flow.fork({run}, inputs)")), "{msg}");
        }
        // An `id` that is not a run id, or a state with an `id` field of its own, is data.
        let plain: Map<String, Value> = initial_state(Some(&obj(json!({ "id": "ticket-7" })))).unwrap();
        assert_eq!(plain["id"], "ticket-7");
        #[derive(Default, Serialize, Deserialize, Debug)]
        struct Keyed {
            id: String,
        }
        let keyed: Keyed = initial_state(Some(&obj(json!({ "id": run })))).unwrap();
        assert_eq!(keyed.id, run);
    }

    #[test]
    fn wrongly_typed_input_is_an_error() {
        let err = initial_state::<Article>(Some(&obj(json!({"words": "many"})))).unwrap_err();
        assert!(matches!(err, Error::Input(InputError::InvalidInput { .. })), "{err}");
    }

    #[test]
    fn every_unknown_input_is_reported_at_once() {
        let err = initial_state::<Article>(Some(&obj(json!({"topc": "rust", "wrds": 3, "zzz": 1})))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(
                "unknown inputs `topc` (did you mean `topic`?), `wrds` (did you mean `words`?), `zzz` for state"
            ),
            "{msg}"
        );
        let err = initial_state::<()>(Some(&obj(json!({"a": 1, "b": 2})))).unwrap_err();
        assert!(err.to_string().starts_with("unknown inputs `a`, `b` for state `()`"), "{err}");
    }

    #[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
    struct Order {
        id: String,
        count: u32,
        lines: Vec<Line>,
    }

    #[derive(Default, Serialize, Deserialize, Debug, PartialEq)]
    struct Line {
        qty: u32,
    }

    #[test]
    fn a_wrongly_typed_input_names_its_path_and_every_bad_field_is_reported() {
        let msg = initial_state::<Order>(Some(&obj(json!({"count": "x"})))).unwrap_err().to_string();
        assert!(msg.ends_with(r#"inputs.count: expected u32, got string "x""#), "{msg}");
        let inputs = json!({"id": 7, "count": -1, "lines": [{"qty": 1}, {"qty": "two"}]});
        let msg = initial_state::<Order>(Some(&obj(inputs))).unwrap_err().to_string();
        assert!(msg.contains("inputs.count: expected u32, got integer `-1`"), "{msg}");
        assert!(msg.contains(r#"inputs.id: expected a string, got integer `7`"#), "{msg}");
        assert!(msg.contains(r#"inputs.lines[1].qty: expected u32, got string "two""#), "{msg}");
        let ok: Order = initial_state(Some(&obj(json!({"lines": [{"qty": 2}]})))).unwrap();
        assert_eq!(ok.lines, vec![Line { qty: 2 }]);
    }

    #[test]
    fn map_state_takes_any_key_and_unit_state_takes_none() {
        let m: Map<String, Value> = initial_state(Some(&obj(json!({"x": 1})))).unwrap();
        assert_eq!(m.get("x"), Some(&json!(1)));
        assert!(initial_state::<()>(Some(&obj(json!({"x": 1})))).is_err());
    }
}
