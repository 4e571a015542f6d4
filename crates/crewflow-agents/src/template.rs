//! Inputs and `{placeholder}` interpolation.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::AgentError;

/// Named values for `{placeholder}`s in roles, goals, backstories, prompts and task texts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs(BTreeMap<String, String>);

impl Inputs {
    /// No inputs.
    pub fn new() -> Self {
        Inputs::default()
    }

    /// Adds (or replaces) an input.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.insert(name.into(), value.into());
        self
    }

    /// Sets an input.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    /// An input's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The inputs' names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// The fields of a JSON object (strings as they are, other values as JSON text). Anything
    /// but an object is an error saying so.
    pub fn from_json(value: &Value) -> Result<Self, AgentError> {
        let Value::Object(o) = value else {
            return Err(AgentError::Config(format!(
                "inputs must be a JSON object of named values, not {}",
                crate::error::excerpt(&value.to_string(), 80)
            )));
        };
        Ok(Inputs(
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        },
                    )
                })
                .collect(),
        ))
    }

    /// `text` with every `{name}` replaced by its input. Braces around anything but a name
    /// (`{"a": 1}`, `{ }`) are left as they are. A name with no input is an error naming it,
    /// `field` and the inputs present.
    pub fn interpolate(&self, text: &str, field: &str) -> Result<String, AgentError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after.find('}').filter(|&end| is_name(&after[..end]));
            match name_len {
                Some(end) => {
                    let name = &after[..end];
                    match self.0.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            return Err(AgentError::MissingInput {
                                field: field.to_string(),
                                placeholder: name.to_string(),
                                present: self.names(),
                            });
                        }
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Inputs {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Inputs {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Inputs(iter.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_and_other_braces_kept() {
        let inputs = Inputs::from([("topic", "Rust"), ("year", "2026")]);
        let out = inputs.interpolate("{topic} in {year}: {\"json\": 1} {} {not a name}", "goal").unwrap();
        assert_eq!(out, "Rust in 2026: {\"json\": 1} {} {not a name}");
    }

    #[test]
    fn a_missing_placeholder_names_itself_and_the_inputs_present() {
        let inputs = Inputs::from([("topic", "Rust")]);
        let err = inputs.interpolate("About {topic} for {audience}", "goal of agent \"Writer\"").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`{audience}`"), "{text}");
        assert!(text.contains("goal of agent \"Writer\""), "{text}");
        assert!(text.contains("inputs present: topic"), "{text}");
        let none = Inputs::new().interpolate("{x}", "role").unwrap_err().to_string();
        assert!(none.contains("inputs present: none"), "{none}");
    }

    #[test]
    fn json_objects_become_inputs() {
        let inputs = Inputs::from_json(&serde_json::json!({"a": "x", "n": 3})).unwrap();
        assert_eq!((inputs.get("a"), inputs.get("n")), (Some("x"), Some("3")));
        assert!(Inputs::from_json(&serde_json::json!([1])).is_err());
    }
}
