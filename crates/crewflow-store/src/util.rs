//! Helpers shared by the backends.

/// A graph fingerprint as stored: 16 hex digits (SQL integers are signed 64-bit).
pub(crate) fn fingerprint(f: u64) -> String {
    format!("{f:016x}")
}

/// Reads a stored fingerprint back (0, which matches no graph, if it is malformed).
pub(crate) fn parse_fingerprint(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

use crewflow_core::RunId;
use crewflow_core::persist::{ParentStep, RunStatus};

use crate::StoreError;

/// A stored run id.
pub(crate) fn parse_run_id(id: &str) -> Result<RunId, StoreError> {
    id.parse().map_err(|_| StoreError::Corrupt(format!("run id `{id}`")))
}

/// A nested run's parent step as stored (two columns). A parent id that does not parse is
/// read as none: the link is for drawing traces, and a run stays loadable without it.
pub(crate) fn parent(run_id: Option<String>, activation: Option<i64>) -> Option<ParentStep> {
    Some(ParentStep { run_id: run_id?.parse().ok()?, activation: activation? as u64 })
}

/// A stored run status.
pub(crate) fn parse_status(status: &str) -> Result<RunStatus, StoreError> {
    RunStatus::parse(status).ok_or_else(|| StoreError::Corrupt(format!("run status `{status}`")))
}

/// The state a run's row and chain rows (`(kind, body)` in order of seq) hold: the chain's
/// whole state with its deltas applied, the row's state with them (a chain of deltas over a
/// whole state kept in the row), or the row's state when there is no chain.
pub(crate) fn apply_state_chain(
    run_id: RunId,
    row_state: String,
    rows: &[(String, String)],
) -> Result<String, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("the state of run {run_id}: {e}"));
    let Some(((kind, first), deltas)) = rows.split_first() else { return Ok(row_state) };
    if kind == "whole" {
        crewflow_core::delta::apply_chain(first, deltas.iter().map(|(_, d)| d.as_str())).map_err(corrupt)
    } else {
        crewflow_core::delta::apply_chain(&row_state, rows.iter().map(|(_, d)| d.as_str())).map_err(corrupt)
    }
}

/// A stored message role (`user`, `assistant`, `system`, `tool`).
#[cfg(feature = "chat")]
pub(crate) fn parse_role(role: &str) -> Result<crewflow_chat::Role, StoreError> {
    use crewflow_chat::Role;
    [Role::User, Role::Assistant, Role::System, Role::Tool]
        .into_iter()
        .find(|r| r.as_str() == role)
        .ok_or_else(|| StoreError::Corrupt(format!("message role `{role}`")))
}

/// The span a new trace opens with: the session's, open until the trace is finalized.
#[cfg(feature = "chat")]
pub(crate) fn session_span(save: &crewflow_chat::TurnSave) -> crewflow_chat::SpanRecord {
    crewflow_chat::SpanRecord {
        span_id: "session".into(),
        parent_id: None,
        kind: "session".into(),
        name: save.session_id.clone(),
        started_at: save.turn.started_at,
        ended_at: None,
        attributes: serde_json::json!({ "flow": save.flow }),
    }
}

/// The refusal of a save whose messages start past the end of the stored transcript.
#[cfg(feature = "chat")]
pub(crate) fn message_gap(save: &crewflow_chat::TurnSave, count: u64) -> StoreError {
    StoreError::MessageGap { session: save.session_id.clone(), from: save.messages_from, count }
}

/// Whether `me` may claim a run held by `holder` whose lease is `live`: it may, unless another
/// owner's lease still holds and that owner is not the dead one being `replacing`.
pub(crate) fn may_claim(holder: Option<&str>, live: bool, me: &str, replacing: Option<&str>) -> bool {
    match holder {
        Some(h) if live => h == me || replacing == Some(h),
        _ => true,
    }
}

/// Refuses a new run whose texts PostgreSQL cannot keep (U+0000 in its flow name, inputs,
/// payload, state or frontier), before anything is written.
#[cfg(feature = "postgres")]
pub(crate) fn refuse_nul_in_run(run: &crewflow_core::persist::NewRun) -> Result<(), StoreError> {
    refuse_nul_text("the flow's name", &run.flow)?;
    if let Some(inputs) = &run.inputs {
        refuse_nul_json("the kickoff inputs", inputs)?;
    }
    if let Some(payload) = &run.payload {
        refuse_nul_json("the kickoff payload", payload)?;
    }
    // A chained state is kept as text, which holds U+0000; only `jsonb` cannot.
    if !run.chained {
        refuse_nul_json("the initial state", &run.state)?;
    }
    refuse_nul_json("the run's frontier (the inputs waiting for their steps)", &run.frontier)
}

/// Refuses JSON text holding U+0000 (PostgreSQL's `jsonb` cannot), naming `what` and the path
/// inside it. Cheap when there is none: one substring search.
#[cfg(feature = "postgres")]
pub(crate) fn refuse_nul_json(what: &str, json: &str) -> Result<(), StoreError> {
    // JSON writers escape U+0000 as `\u0000`; only then is the value parsed, to say where.
    if !json.contains("\\u0000") && !json.contains('\0') {
        return Ok(());
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else { return Ok(()) };
    match nul_path(&value, String::new()) {
        Some(path) if path.is_empty() => Err(StoreError::NulCharacter { place: what.to_string() }),
        Some(path) => Err(StoreError::NulCharacter { place: format!("{what} at `{path}`") }),
        // An escaped backslash before `u0000`: no NUL after all.
        None => Ok(()),
    }
}

/// Refuses text holding U+0000, naming `what`.
#[cfg(feature = "postgres")]
pub(crate) fn refuse_nul_text(what: &str, text: &str) -> Result<(), StoreError> {
    if text.contains('\0') { Err(StoreError::NulCharacter { place: what.to_string() }) } else { Ok(()) }
}

/// The path of the first string or key holding U+0000 (`notes[1]`, `user.name`, `` for the
/// value itself).
#[cfg(feature = "postgres")]
fn nul_path(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0').then_some(at),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_path(v, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let key = if !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_') {
                if at.is_empty() { k.clone() } else { format!("{at}.{k}") }
            } else {
                format!("{at}[\"{}\"]", k.escape_debug())
            };
            if k.contains('\0') { Some(format!("{key} (the key)")) } else { nul_path(v, key) }
        }),
        _ => None,
    }
}

/// A schedule's maximum lateness as stored: whole milliseconds (saturating).
pub(crate) fn lateness_ms(limit: Option<std::time::Duration>) -> Option<i64> {
    limit.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::may_claim;

    #[cfg(feature = "postgres")]
    #[test]
    fn nul_characters_are_found_with_their_path() {
        use super::{refuse_nul_json, refuse_nul_text};
        let place = |json: &str| match refuse_nul_json("the state", json) {
            Err(crate::StoreError::NulCharacter { place }) => Some(place),
            _ => None,
        };
        assert_eq!(place(r#"{"a": "x\u0000y"}"#).as_deref(), Some("the state at `a`"));
        assert_eq!(place(r#"{"a": {"b": [1, "ok", "\u0000"]}}"#).as_deref(), Some("the state at `a.b[2]`"));
        assert_eq!(place(r#"{"my key": "\u0000"}"#).as_deref(), Some("the state at `[\"my key\"]`"));
        assert_eq!(place(r#"{"k\u0000": 1}"#).as_deref(), Some("the state at `[\"k\\0\"] (the key)`"));
        assert_eq!(place(r#""\u0000""#).as_deref(), Some("the state"));
        assert_eq!(place(r#"{"a": "a backslash then u0000: \\u0000"}"#), None, "an escaped backslash");
        assert_eq!(place(r#"{"a": "\u0001"}"#), None);
        assert!(refuse_nul_text("the reply", "a\0b").is_err());
        assert!(refuse_nul_text("the reply", "ab").is_ok());
    }

    #[test]
    fn claims_respect_live_leases_and_dead_owner_replacement() {
        assert!(may_claim(None, true, "me", None));
        assert!(may_claim(Some("other"), false, "me", None), "an expired lease");
        assert!(!may_claim(Some("other"), true, "me", None), "a live lease");
        assert!(may_claim(Some("me"), true, "me", None), "my own lease");
        assert!(may_claim(Some("dead"), true, "me", Some("dead")), "replacing a dead owner");
        assert!(!may_claim(Some("other"), true, "me", Some("dead")), "replacing only that owner");
    }
}
