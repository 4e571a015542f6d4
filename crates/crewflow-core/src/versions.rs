//! State versions: a stored state is read back by the definition it was written for, or brought
//! up to date by the flow's migrations, never decoded into a type that silently drops what it
//! does not know.
//!
//! A flow's state type has a version (0 unless the flow declares one with
//! [`FlowBuilder::state_version`](crate::FlowBuilder::state_version)). Every stored run and every
//! conversation session records the version its state was written with. Reading it back:
//!
//! - same version: the state is decoded, and every field of the stored JSON must survive the
//!   decoding. A field the type no longer has (renamed, removed) is refused with
//!   [`StateError::Dropped`], naming it, instead of being lost at the next checkpoint;
//! - an older version: the migrations registered with
//!   [`FlowBuilder::migrate_state`](crate::FlowBuilder::migrate_state) run in order (from `v` to
//!   `v + 1`, then on), each on the state's JSON, and the result is decoded as above. A missing
//!   step of the chain is refused with [`StateError::NoMigration`], naming both versions;
//! - a newer version (a run written by a newer build, read by an older one): refused with
//!   [`StateError::Newer`]; nothing is changed.
//!
//! A refused state changes nothing in the store: the run keeps its status, its state and its
//! error. After a migration, the next checkpoint writes the state at the current version.
//!
//! ```
//! use crewflow_core::FlowBuilder;
//! use serde::{Deserialize, Serialize};
//! use serde_json::{Value, json};
//!
//! // Version 1 of this state called the field `mail`; version 2 calls it `email`.
//! #[derive(Default, Serialize, Deserialize)]
//! struct Contact { email: String }
//!
//! let flow = FlowBuilder::<Contact>::new("contacts")
//!     .start("greet", |cx: crewflow_core::Cx<Contact>, _: ()| async move {
//!         Ok(cx.state(|c| format!("hello {}", c.email)))
//!     })
//!     .state_version(2)
//!     .migrate_state(1, |mut state: Value| {
//!         if let Some(mail) = state.as_object_mut().and_then(|o| o.remove("mail")) {
//!             state["email"] = mail;
//!         }
//!         Ok(state)
//!     })
//!     .build()?;
//!
//! let old = json!({ "mail": "ada@example.com" }).to_string();
//! let contact = flow.decode_state(1, &old)?;
//! assert_eq!(contact.email, "ada@example.com");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::BoxError;

/// A migration: a state's JSON at version `v`, brought to version `v + 1`.
pub(crate) type Migration = Arc<dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync>;

/// The version of a flow's state type and the migrations from older versions.
#[derive(Clone, Default)]
pub(crate) struct StateVersions {
    pub current: u32,
    pub migrations: BTreeMap<u32, Migration>,
}

/// Why a stored state cannot be read back by this flow. Each names the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state was written by a newer definition of the flow.
    #[error(
        "its state was written at state version {stored}, newer than this flow's ({current}): \
         read it with the build that wrote it, or one that knows version {stored}"
    )]
    Newer {
        /// The stored state's version.
        stored: u32,
        /// The flow's state version.
        current: u32,
    },
    /// No migration brings the stored version forward.
    #[error(
        "its state is at version {stored} and the flow's at version {current}, and no migration \
         from version {missing} is registered: add `.migrate_state({missing}, |state| ..)` to the \
         flow's builder"
    )]
    NoMigration {
        /// The stored state's version.
        stored: u32,
        /// The flow's state version.
        current: u32,
        /// The version no migration starts from.
        missing: u32,
    },
    /// A registered migration failed.
    #[error("the migration of its state from version {from} to {} failed: {source}", from + 1)]
    MigrationFailed {
        /// The version the failing migration starts from.
        from: u32,
        /// What the migration said.
        source: BoxError,
    },
    /// The state (after any migrations) does not decode as the flow's state type.
    #[error(
        "its state does not decode as `{state_type}` (state version {version}): {message}. If the type \
         changed, give new fields `#[serde(default)]`, or raise the flow's state version and migrate"
    )]
    Decode {
        /// The state type.
        state_type: &'static str,
        /// The version it was read at.
        version: u32,
        /// What serde said.
        message: String,
    },
    /// Decoding would lose fields the state type does not have.
    #[error(
        "its state has {} the type `{state_type}` does not have ({}): decoding it would lose {}. \
         If the type changed, raise the flow's state version (`.state_version({})`) and move \
         them in a migration (`.migrate_state({version}, |state| ..)`)",
        plural(fields.len(), "a field", "fields"), fields.join(", "),
        plural(fields.len(), "it", "them"), version + 1
    )]
    Dropped {
        /// The state type.
        state_type: &'static str,
        /// The version it was read at.
        version: u32,
        /// The paths of the fields that would be lost (`customer.email`).
        fields: Vec<String>,
    },
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

impl StateVersions {
    /// Reads a stored state written at `stored`, migrating it to the current version.
    pub fn decode<S: Serialize + DeserializeOwned>(&self, stored: u32, text: &str) -> Result<S, StateError> {
        let state_type = std::any::type_name::<S>();
        let decode_error =
            |version: u32, e: serde_json::Error| StateError::Decode { state_type, version, message: e.to_string() };
        if stored == self.current {
            // The common case: no migration, one parse (the drop check needs the JSON tree).
            let value: Value = serde_json::from_str(text).map_err(|e| decode_error(stored, e))?;
            return self.decode_value(value, stored);
        }
        if stored > self.current {
            return Err(StateError::Newer { stored, current: self.current });
        }
        let mut value: Value = serde_json::from_str(text).map_err(|e| decode_error(stored, e))?;
        for from in stored..self.current {
            let Some(migrate) = self.migrations.get(&from) else {
                return Err(StateError::NoMigration { stored, current: self.current, missing: from });
            };
            value = migrate(value).map_err(|source| StateError::MigrationFailed { from, source })?;
        }
        self.decode_value(value, self.current)
    }

    fn decode_value<S: Serialize + DeserializeOwned>(&self, value: Value, version: u32) -> Result<S, StateError> {
        let state_type = std::any::type_name::<S>();
        let state: S =
            S::deserialize(&value).map_err(|e| StateError::Decode { state_type, version, message: e.to_string() })?;
        let again = serde_json::to_value(&state).map_err(|e| StateError::Decode {
            state_type,
            version,
            message: format!("it decodes but does not encode again: {e}"),
        })?;
        let mut fields = Vec::new();
        lost_fields(&value, &again, &mut String::new(), &mut fields);
        if fields.is_empty() { Ok(state) } else { Err(StateError::Dropped { state_type, version, fields }) }
    }
}

/// The paths of the object fields in `stored` that `decoded` (the same state read and written
/// again) does not have. A `null` stored field counts as kept: `Option` fields skipped when
/// `None` come back absent.
fn lost_fields(stored: &Value, decoded: &Value, path: &mut String, out: &mut Vec<String>) {
    match (stored, decoded) {
        (Value::Object(s), Value::Object(d)) => {
            for (key, value) in s {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match d.get(key) {
                    Some(again) => lost_fields(value, again, path, out),
                    None if !value.is_null() => out.push(path.clone()),
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(s), Value::Array(d)) if s.len() == d.len() => {
            for (i, (value, again)) in s.iter().zip(d).enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                lost_fields(value, again, path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Contact {
        email: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phone: Option<String>,
        #[serde(default)]
        tags: Vec<Tag>,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Tag {
        name: String,
    }

    fn versions(current: u32) -> StateVersions {
        StateVersions { current, migrations: BTreeMap::new() }
    }

    #[test]
    fn the_same_version_decodes_and_keeps_absent_options() {
        let c: Contact = versions(0).decode(0, r#"{"email":"a@b","phone":null}"#).unwrap();
        assert_eq!(c.email, "a@b");
    }

    #[test]
    fn a_field_the_type_lost_is_named_not_dropped() {
        let stored = json!({"email": "a@b", "mail": "old", "tags": [{"name": "x", "colour": "red"}]}).to_string();
        let err = versions(3).decode::<Contact>(3, &stored).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, StateError::Dropped { fields, .. } if fields == &["mail", "tags[0].colour"]),
            "{message}"
        );
        assert!(message.contains("`.state_version(4)`") && message.contains("`.migrate_state(3, "), "{message}");
    }

    #[test]
    fn migrations_run_in_order_and_a_gap_names_the_missing_version() {
        let mut v = versions(3);
        v.migrations.insert(
            1,
            Arc::new(|mut s: Value| {
                let mail = s.as_object_mut().and_then(|o| o.remove("mail")).unwrap_or(Value::Null);
                s["email"] = mail;
                Ok(s)
            }),
        );
        v.migrations.insert(
            2,
            Arc::new(|mut s: Value| {
                s["tags"] = json!([{"name": "migrated"}]);
                Ok(s)
            }),
        );
        let c: Contact = v.decode(1, r#"{"mail":"a@b"}"#).unwrap();
        assert_eq!(c, Contact { email: "a@b".into(), phone: None, tags: vec![Tag { name: "migrated".into() }] });

        let err = v.decode::<Contact>(0, r#"{"mail":"a@b"}"#).unwrap_err();
        assert!(matches!(err, StateError::NoMigration { stored: 0, current: 3, missing: 0 }), "{err}");
        assert!(err.to_string().contains("`.migrate_state(0, |state| ..)`"), "{err}");
    }

    #[test]
    fn a_newer_state_and_a_failing_migration_are_refused() {
        let err = versions(1).decode::<Contact>(2, r#"{"email":""}"#).unwrap_err();
        assert!(matches!(err, StateError::Newer { stored: 2, current: 1 }), "{err}");

        let mut v = versions(1);
        v.migrations.insert(0, Arc::new(|_| Err("no email to move".into())));
        let err = v.decode::<Contact>(0, "{}").unwrap_err();
        assert_eq!(err.to_string(), "the migration of its state from version 0 to 1 failed: no email to move");
    }

    #[test]
    fn dict_states_keep_every_key() {
        let stored = json!({"a": 1, "nested": {"b": [1, 2]}}).to_string();
        let state: serde_json::Map<String, Value> = versions(0).decode(0, &stored).unwrap();
        assert_eq!(state.len(), 2);
    }
}
