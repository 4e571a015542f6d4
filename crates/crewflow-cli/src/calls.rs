//! A run's journal read as the calls its steps made, for its trace: every model reply and
//! tool result a step records goes through the run's journal (docs/store.md, *The journal*),
//! so a stored run keeps them, with the time each was recorded.
//!
//! An entry is a model call when its value is a model reply (`model`, `usage` and `text`, as
//! `crewflow-llm` records a `ChatResponse`), a tool call when the last part of its key is
//! `tool:NAME:CALL_ID` (as agents record them), and another side effect otherwise.

use crewflow_core::persist::JournalEntry;
use serde_json::{Value, json};

/// What a journal entry records.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CallKind {
    /// A model's reply.
    Model {
        model: String,
        /// From a key `llm:PROVIDER/MODEL` (calls made through `Llm`), if the key says.
        provider: Option<String>,
        input_tokens: Option<u64>,
        output_tokens: Option<u64>,
        finish_reason: Option<String>,
        response_id: Option<String>,
    },
    /// A tool's result.
    Tool { name: String, call_id: String },
    /// Any other recorded result (`cx.once("charge", ..)`).
    Other,
}

/// The last part of a key (`agent:Writer/llm#2` → `llm`), without its repeat number.
fn last_part(key: &str) -> &str {
    let last = key.rsplit('/').next().unwrap_or(key);
    match last.rsplit_once('#') {
        Some((name, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => last,
    }
}

pub(crate) fn kind(entry: &JournalEntry) -> CallKind {
    let value: Value = serde_json::from_str(&entry.value).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().map(String::from);
    if let (Some(model), Some(usage), true) = (text(&value["model"]), value.get("usage"), value.get("text").is_some()) {
        let key_provider =
            entry.key.strip_prefix("llm:").and_then(|rest| rest.split_once('/')).map(|(p, _)| p.to_string());
        let finish_reason = match &value["finish_reason"] {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.values().next().and_then(text),
            _ => None,
        };
        return CallKind::Model {
            model,
            provider: key_provider,
            input_tokens: usage["prompt_tokens"].as_u64(),
            output_tokens: usage["completion_tokens"].as_u64(),
            finish_reason,
            response_id: text(&value["id"]),
        };
    }
    if let Some(rest) = last_part(&entry.key).strip_prefix("tool:") {
        let (name, call_id) = rest.split_once(':').unwrap_or((rest, ""));
        return CallKind::Tool { name: name.to_string(), call_id: call_id.to_string() };
    }
    CallKind::Other
}

/// A call's label in the printed tree: `chat MODEL`, `tool NAME`, `call KEY`; the key in
/// brackets when it says more (an agent's path); tokens and the finish reason of a model call.
pub(crate) fn label(entry: &JournalEntry) -> String {
    // An agent's calls are recorded under its path (`agent:Writer/llm`): shown, as it says who
    // called; a bare `llm:PROVIDER/MODEL` key says nothing more than the label.
    let path = if entry.key.starts_with("llm:") || !entry.key.contains('/') {
        String::new()
    } else {
        format!(" [{}]", entry.key)
    };
    match kind(entry) {
        CallKind::Model { model, input_tokens, output_tokens, finish_reason, .. } => {
            let mut notes = Vec::new();
            if let (Some(i), Some(o)) = (input_tokens, output_tokens) {
                notes.push(format!("tokens {i}+{o}"));
            }
            notes.extend(finish_reason);
            let notes = if notes.is_empty() { String::new() } else { format!(" · {}", notes.join(" · ")) };
            format!("chat {model}{path}{notes}")
        }
        CallKind::Tool { name, .. } => format!("tool {name}{path}"),
        CallKind::Other => format!("call {}", entry.key),
    }
}

/// A call as JSON for `trace --json`.
pub(crate) fn to_json(entry: &JournalEntry, recorded_ms: Option<f64>) -> Value {
    let mut out = json!({"activation": entry.activation, "key": entry.key, "recorded_ms": recorded_ms});
    match kind(entry) {
        CallKind::Model { model, provider, input_tokens, output_tokens, finish_reason, response_id } => {
            out["kind"] = json!("model");
            out["model"] = json!(model);
            out["provider"] = json!(provider);
            out["input_tokens"] = json!(input_tokens);
            out["output_tokens"] = json!(output_tokens);
            out["finish_reason"] = json!(finish_reason);
            out["response_id"] = json!(response_id);
        }
        CallKind::Tool { name, call_id } => {
            out["kind"] = json!("tool");
            out["tool"] = json!(name);
            out["call_id"] = json!(call_id);
        }
        CallKind::Other => out["kind"] = json!("other"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: Value) -> JournalEntry {
        JournalEntry { activation: 0, key: key.into(), value: value.to_string(), recorded_at: None }
    }

    #[test]
    fn entries_read_as_model_calls_tool_calls_or_other_effects() {
        let reply = json!({"text": "hi", "tool_calls": [], "finish_reason": "stop",
                           "usage": {"prompt_tokens": 12, "completion_tokens": 3}, "id": "chatcmpl-1", "model": "gpt-4o-mini"});
        let direct = entry("llm:openai/gpt-4o-mini#1", reply.clone());
        assert_eq!(
            kind(&direct),
            CallKind::Model {
                model: "gpt-4o-mini".into(),
                provider: Some("openai".into()),
                input_tokens: Some(12),
                output_tokens: Some(3),
                finish_reason: Some("stop".into()),
                response_id: Some("chatcmpl-1".into()),
            }
        );
        assert_eq!(label(&direct), "chat gpt-4o-mini · tokens 12+3 · stop");
        let mut paused = reply.clone();
        paused["finish_reason"] = json!({"other": "pause"});
        let agent = entry("agent:Writer/llm#2", paused);
        assert!(
            matches!(kind(&agent), CallKind::Model { provider: None, finish_reason: Some(ref f), .. } if f == "pause")
        );
        assert_eq!(label(&agent), "chat gpt-4o-mini [agent:Writer/llm#2] · tokens 12+3 · pause");

        let tool = entry("agent:Researcher/tool:search:call_7", json!({"hits": 3}));
        assert_eq!(kind(&tool), CallKind::Tool { name: "search".into(), call_id: "call_7".into() });
        assert_eq!(label(&tool), "tool search [agent:Researcher/tool:search:call_7]");
        assert_eq!(kind(&entry("charge#1", json!("receipt"))), CallKind::Other);
        assert_eq!(label(&entry("charge#1", json!("receipt"))), "call charge#1");
        // a value that only looks like a reply in part is not one
        assert_eq!(kind(&entry("fetch", json!({"model": "x"}))), CallKind::Other);
    }
}
