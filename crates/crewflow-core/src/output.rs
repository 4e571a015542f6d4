//! Step outputs, kept typed in memory and turned into JSON only when someone asks (an event
//! subscriber, a checkpoint, a caller reading a run's output as another type).

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;

/// The output of one step execution: a typed value behind an `Arc`, cheap to clone.
///
/// A listener that takes the output as a parameter receives a clone of the value; it is
/// converted through JSON only when the types differ (for instance a `serde_json::Value`
/// parameter, or an output restored from a checkpoint).
#[derive(Clone)]
pub struct Output(Arc<dyn ErasedValue>);

trait ErasedValue: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    fn to_json(&self) -> Result<Value, serde_json::Error>;
    fn to_json_string(&self) -> Result<String, serde_json::Error>;
    fn type_name(&self) -> &'static str;
}

struct Typed<T>(T);

impl<T: Serialize + Send + Sync + 'static> ErasedValue for Typed<T> {
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
    fn to_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(&self.0)
    }
    fn to_json_string(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(&self.0)
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

impl Output {
    /// Wraps a value.
    pub fn new<T: Serialize + Send + Sync + 'static>(value: T) -> Self {
        // Steps that return nothing are common (a chain's links): they share one value
        // rather than each allocating one that every run in flight keeps.
        if TypeId::of::<T>() == TypeId::of::<()>() {
            static UNIT: std::sync::LazyLock<Output> = std::sync::LazyLock::new(|| Output(Arc::new(Typed(()))));
            return UNIT.clone();
        }
        Output(Arc::new(Typed(value)))
    }

    /// An output known only as JSON (for instance, restored from a checkpoint).
    pub fn from_json(value: Value) -> Self {
        Output::new(value)
    }

    /// The value as JSON.
    pub fn to_json(&self) -> Result<Value, serde_json::Error> {
        self.0.to_json()
    }

    /// The value as JSON text.
    pub fn to_json_string(&self) -> Result<String, serde_json::Error> {
        self.0.to_json_string()
    }

    /// The name of the value's Rust type.
    pub fn type_name(&self) -> &'static str {
        self.0.type_name()
    }

    /// A reference to the value, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }

    /// The value as a `T`: a clone when it is one, otherwise converted through JSON.
    pub fn get<T: DeserializeOwned + Clone + 'static>(&self) -> Result<T, serde_json::Error> {
        if let Some(v) = self.downcast_ref::<T>() {
            return Ok(v.clone());
        }
        serde_json::from_value(self.to_json()?)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_json() {
            Ok(json) => write!(f, "Output<{}>({json})", self.type_name()),
            Err(_) => write!(f, "Output<{}>", self.type_name()),
        }
    }
}

/// The identity and name of a Rust type, recorded for build-time type checks.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    pub(crate) id: TypeId,
    /// The type's name.
    pub name: &'static str,
}

impl TypeInfo {
    /// The info of `T`.
    pub fn of<T: 'static>() -> Self {
        TypeInfo { id: TypeId::of::<T>(), name: std::any::type_name::<T>() }
    }

    /// Accepts any payload: `serde_json::Value` (converted) or `()` (ignored).
    pub(crate) fn accepts_anything(&self) -> bool {
        self.id == TypeId::of::<Value>() || self.id == TypeId::of::<()>()
    }

    pub(crate) fn is_unit(&self) -> bool {
        self.id == TypeId::of::<()>()
    }

    /// Whether an input of this type accepts an output of type `output`: the same type, or a
    /// `String` input fed by a `&'static str` output.
    pub(crate) fn accepts(&self, output: &TypeInfo) -> bool {
        self.id == output.id || (self.id == TypeId::of::<String>() && output.id == TypeId::of::<&'static str>())
    }
}

/// Builds a step's input parameter from the payload that triggered it.
///
/// `()` ignores the payload; `Option<T>` is `None` when there is none (a start run without a
/// kickoff payload); any other type must match (or deserialize from) the payload.
pub(crate) fn extract_input<T: DeserializeOwned + Clone + 'static>(
    payload: Option<&Output>,
    step: &str,
) -> Result<T, Error> {
    let bad =
        |problem: String| Error::BadPayload { step: step.to_string(), expected: std::any::type_name::<T>(), problem };
    if TypeId::of::<T>() == TypeId::of::<()>() {
        return serde_json::from_value(Value::Null).map_err(|e| bad(e.to_string()));
    }
    match payload {
        Some(p) => p
            .get::<T>()
            .map_err(|e| bad(format!("it was given a `{}` that does not convert: {e}", p.type_name()))),
        None => serde_json::from_value(Value::Null).map_err(|_| {
            bad("it was started without one; a start step receives an input only when the kickoff passes a payload (Kickoff::payload)".to_string())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_outputs_clone_without_json_and_convert_when_asked() {
        let out = Output::new(vec![1u32, 2, 3]);
        assert_eq!(out.get::<Vec<u32>>().ok(), Some(vec![1, 2, 3]));
        assert_eq!(out.get::<Value>().ok(), Some(serde_json::json!([1, 2, 3])));
        assert!(out.get::<String>().is_err());
        assert!(out.type_name().contains("Vec<u32>"));
    }

    #[test]
    fn inputs_accept_unit_and_option_without_payload() {
        assert!(extract_input::<()>(None, "s").is_ok());
        assert_eq!(extract_input::<Option<String>>(None, "s").ok(), Some(None));
        let err = extract_input::<String>(None, "s").unwrap_err();
        assert!(err.to_string().contains("Kickoff::payload"), "{err}");
        let from_json = Output::from_json(serde_json::json!("x"));
        assert_eq!(extract_input::<String>(Some(&from_json), "s").ok(), Some("x".to_string()));
    }
}
