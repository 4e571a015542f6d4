//! Typed output: JSON Schemas from Rust types, replies checked against them.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The JSON Schema of `T`, without the `$schema` marker providers reject.
pub fn schema_of<T: JsonSchema>() -> Value {
    let mut schema: Value = schemars::schema_for!(T).into();
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    schema
}

/// A schema adjusted for strict modes (OpenAI's): every object closed and every property
/// required (optional fields are already nullable), unsupported `format`s dropped.
pub(crate) fn strict_schema(schema: &Value) -> Value {
    let mut out = schema.clone();
    tighten(&mut out);
    out
}

fn tighten(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Object(props)) = o.get("properties") {
                let keys: Vec<Value> = props.keys().map(|k| Value::String(k.clone())).collect();
                o.insert("required".into(), Value::Array(keys));
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            if let Some(Value::String(f)) = o.get("format")
                && !["date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"]
                    .contains(&f.as_str())
            {
                o.remove("format");
            }
            for child in o.values_mut() {
                tighten(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tighten),
        _ => {}
    }
}

/// The JSON in a model's reply: the whole reply, or the part inside a fenced block, or
/// between the first `{` and the last `}`.
pub(crate) fn json_in(reply: &str) -> &str {
    let t = reply.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_alphanumeric());
        if let Some(end) = rest.rfind("```") {
            return rest[..end].trim();
        }
    }
    if t.starts_with('{') || t.starts_with('[') {
        return t;
    }
    match (t.find('{'), t.rfind('}')) {
        (Some(a), Some(b)) if b > a => &t[a..=b],
        _ => t,
    }
}

/// Parses and validates a reply; the error says what is wrong, for the repair prompt.
pub(crate) fn check<T: DeserializeOwned>(reply: &str, validator: &jsonschema::Validator) -> Result<T, String> {
    let value: Value = serde_json::from_str(json_in(reply)).map_err(|e| format!("it is not JSON ({e})"))?;
    let problems: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") }
        })
        .collect();
    if !problems.is_empty() {
        return Err(format!("it does not match the schema: {}", problems.join("; ")));
    }
    serde_json::from_value(value).map_err(|e| format!("it does not fit the type ({e})"))
}

/// A schema for "one of these labels".
pub(crate) fn label_schema(labels: &[&str]) -> Value {
    let mut props = Map::new();
    props.insert("label".into(), serde_json::json!({ "type": "string", "enum": labels }));
    serde_json::json!({ "type": "object", "properties": props, "required": ["label"], "additionalProperties": false })
}

/// The label a reply names: exactly, then ignoring case, then the longest label it contains.
pub(crate) fn pick_label<'a>(reply: &str, labels: &[&'a str]) -> Option<&'a str> {
    let said = serde_json::from_str::<Value>(json_in(reply))
        .ok()
        .and_then(|v| v.get("label").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| reply.trim().trim_matches(|c: char| c == '"' || c == '.').to_string());
    labels
        .iter()
        .find(|l| **l == said)
        .or_else(|| labels.iter().find(|l| l.eq_ignore_ascii_case(&said)))
        .or_else(|| {
            let lower = said.to_lowercase();
            labels.iter().filter(|l| lower.contains(&l.to_lowercase())).max_by_key(|l| l.len())
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema, Debug, PartialEq)]
    struct Invoice {
        number: String,
        total_cents: u32,
        note: Option<String>,
    }

    #[test]
    fn replies_are_found_checked_and_explained() {
        let schema = schema_of::<Invoice>();
        let v = jsonschema::validator_for(&schema).unwrap();
        let ok: Invoice =
            check("```json\n{\"number\": \"A-1\", \"total_cents\": 1200, \"note\": null}\n```", &v).unwrap();
        assert_eq!(ok.total_cents, 1200);
        let ok: Invoice = check("Sure! {\"number\": \"A-2\", \"total_cents\": 5} Hope that helps.", &v).unwrap();
        assert_eq!(ok.number, "A-2");
        let err = check::<Invoice>("{\"number\": 7}", &v).unwrap_err();
        assert!(err.contains("does not match the schema"), "{err}");
        assert!(check::<Invoice>("no idea", &v).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn strict_schemas_close_objects_and_require_everything() {
        let strict = strict_schema(&schema_of::<Invoice>());
        assert_eq!(strict["additionalProperties"], Value::Bool(false));
        assert_eq!(strict["required"].as_array().map(Vec::len), Some(3));
        assert!(strict["properties"]["total_cents"].get("format").is_none());
    }

    #[test]
    fn labels_are_matched_leniently() {
        let labels = ["security", "priority", "standard"];
        assert_eq!(pick_label(r#"{"label": "priority"}"#, &labels), Some("priority"));
        assert_eq!(pick_label("Security.", &labels), Some("security"));
        assert_eq!(pick_label("This is a standard request", &labels), Some("standard"));
        assert_eq!(pick_label("no idea", &labels), None);
    }
}
