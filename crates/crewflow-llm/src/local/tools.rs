//! Tool calls on a local model whose chat template declares them.
//!
//! Qwen2.5 (and the Hermes-style templates that copied it) take the tools as a `tools`
//! variable of the chat template, which lists their JSON schemas in the system prompt, and
//! the model answers a call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
//! Earlier calls go back as the assistant message's `tool_calls`, their results as `tool`
//! messages. This module builds that context and reads the calls out of the generated text as
//! it streams, so the text around them still streams and the calls come out as tool calls.
//!
//! Small models often write the call without its tags: a reply that is nothing but such an
//! object (or several, or a list of them), bare or in a Markdown code fence, and whose names
//! are all tools the request offered, is read as those calls too. Such a reply is held back
//! until it ends, since only then is it clear whether it was a call.
//!
//! A model cannot be constrained token by token here, so `ToolChoice::Required` and
//! `ToolChoice::Tool(name)` are kept by writing the start of the call into the prompt
//! (the reply then begins inside a `<tool_call>` block, and for a named tool, inside its
//! arguments' object). A block that is not a JSON object with a `name` and object `arguments` is left in
//! the text as the model wrote it: the caller sees what came back, not a guess.

use serde::Serialize;
use serde_json::{Value, json};

use crate::stream::Delta;
use crate::types::{ChatRequest, Part, Role, ToolCall, ToolChoice};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Whether a chat template takes tools in the `<tool_call>` format.
pub(super) fn template_takes_tools(template: &str) -> bool {
    template.contains("tools") && template.contains(OPEN)
}

/// Whether this request's reply is read for tool calls: it declares tools and does not
/// forbid calling them.
pub(super) fn offers_tools(request: &ChatRequest) -> bool {
    !request.tools.is_empty() && request.tool_choice != Some(ToolChoice::None)
}

/// OpenAI's wrapper of a tool and of a call, `{"type": "function", "function": ...}`, which
/// Hugging Face templates take (fields in this order, as the model was trained on).
#[derive(Serialize)]
struct Function<T> {
    r#type: &'static str,
    function: T,
}

impl<T> Function<T> {
    fn new(function: T) -> Self {
        Function { r#type: "function", function }
    }
}

/// A tool as the templates take it.
#[derive(Serialize)]
struct TemplateFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

/// A message as the templates take it; `tool_calls` only on an assistant's message that has
/// some (templates test for it).
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Function<TemplateCallFunction<'a>>>,
}

/// A call's arguments as an object (templates print them with `tojson`).
#[derive(Serialize)]
struct TemplateCallFunction<'a> {
    name: &'a str,
    arguments: Value,
}

/// A role as chat templates name it.
pub(super) fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// The chat template's `tools`.
pub(super) fn template_tools(request: &ChatRequest) -> Vec<minijinja::Value> {
    request
        .tools
        .iter()
        .map(|tool| {
            minijinja::Value::from_serialize(Function::new(TemplateFunction {
                name: &tool.name,
                description: &tool.description,
                parameters: &tool.parameters,
            }))
        })
        .collect()
}

/// A message for the chat template: role, text, and an assistant's tool calls.
pub(super) fn template_message(role: Role, content: String, calls: &[ToolCall]) -> minijinja::Value {
    let role = role_name(role);
    let tool_calls = calls
        .iter()
        .map(|call| {
            Function::new(TemplateCallFunction {
                name: &call.name,
                arguments: call.args::<Value>().unwrap_or_else(|_| Value::String(call.arguments.clone())),
            })
        })
        .collect();
    minijinja::Value::from_serialize(TemplateMessage { role, content, tool_calls })
}

/// The templates' `tojson` as Hugging Face renders it (Python's `json.dumps`: `", "` and
/// `": "` between items, keys in their order, no escaping of non-ASCII or of `<`): the model
/// was trained on that text, not on minijinja's HTML-safe compact form.
pub(super) fn python_tojson(value: &minijinja::Value) -> Result<minijinja::Value, minijinja::Error> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonJson);
    value
        .serialize(&mut serializer)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    let text = String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(minijinja::Value::from_safe_string(text))
}

struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Whether a message has image parts (which the local models cannot read).
pub(super) fn has_images(request: &ChatRequest) -> bool {
    request.messages.iter().flat_map(|m| &m.content).any(|p| matches!(p, Part::Image(_)))
}

/// What the prompt ends with so that the reply begins as the tool choice requires: inside a
/// call block for `Required`, after the tool's name for `Tool(name)`, nothing otherwise.
pub(super) fn forced_opening(request: &ChatRequest) -> String {
    if !offers_tools(request) {
        return String::new();
    }
    match &request.tool_choice {
        Some(ToolChoice::Required) => format!("{OPEN}\n"),
        // The arguments' brace too: an object is what the tool takes.
        Some(ToolChoice::Tool(name)) => format!("{OPEN}\n{{\"name\": {}, \"arguments\": {{", json!(name)),
        _ => String::new(),
    }
}

/// Splits generated text into text and tool calls, as it streams.
#[derive(Debug, Default)]
pub(super) struct CallScanner {
    /// Text not yet passed on: a possible start of `<tool_call>`, a call block's body, or a
    /// reply that may be a bare call.
    held: String,
    /// Inside a `<tool_call>` block.
    inside: bool,
    /// Nothing passed on yet: the reply may still turn out to be a bare call.
    at_start: bool,
    /// The tools the request offered (a bare call must name one).
    offered: Vec<String>,
    /// Calls read so far (they are numbered from 0 in the reply).
    calls: usize,
}

impl CallScanner {
    /// A scanner for a reply to `request`, which the prompt began with `opening`
    /// ([`forced_opening`]).
    pub fn new(request: &ChatRequest, opening: &str) -> Self {
        let offered = request.tools.iter().map(|t| t.name.clone()).collect();
        let mut scanner = CallScanner { at_start: true, offered, ..CallScanner::default() };
        if let Some(body) = opening.strip_prefix(OPEN) {
            scanner.inside = true;
            scanner.held = body.to_string();
        }
        scanner
    }

    /// How many calls were read.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Adds generated text; what can be passed on now.
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.held.push_str(text);
        let mut out = Vec::new();
        if self.at_start && !self.inside {
            if may_be_bare_call(&self.held) {
                return out;
            }
            self.at_start = false;
        }
        loop {
            if self.inside {
                let Some(end) = self.held.find(CLOSE) else { break };
                let body: String = self.held.drain(..end + CLOSE.len()).collect();
                self.inside = false;
                self.read_call(&body[..end], &mut out);
            } else if let Some(start) = self.held.find(OPEN) {
                let before: String = self.held.drain(..start + OPEN.len()).collect();
                push_text(&mut out, &before[..start]);
                self.inside = true;
            } else {
                // Keep back only what could still grow into `<tool_call>`.
                let keep = partial_suffix(&self.held, OPEN);
                let ready: String = self.held.drain(..self.held.len() - keep).collect();
                push_text(&mut out, &ready);
                break;
            }
        }
        out
    }

    /// The end of the reply: an unclosed block is read as a call if it is one (the model may
    /// stop at its end-of-turn token right after the JSON), else passed on as text.
    pub fn finish(&mut self) -> Vec<Delta> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        if self.inside {
            self.inside = false;
            self.read_call(&held, &mut out);
        } else if self.at_start && may_be_bare_call(&held) {
            match bare_calls(&held, &self.offered) {
                Some(calls) => {
                    for (name, arguments) in calls {
                        self.emit(name, arguments, &mut out);
                    }
                }
                None => {
                    // Not calls after all: the text as written (with any tags it holds).
                    self.at_start = false;
                    out = self.push(&held);
                    out.extend(self.finish());
                }
            }
        } else {
            push_text(&mut out, &held);
        }
        out
    }

    fn emit(&mut self, name: String, arguments: String, out: &mut Vec<Delta>) {
        let index = self.calls;
        self.calls += 1;
        out.push(Delta::ToolStart { index, id: Some(format!("call_{index}")), name: Some(name) });
        out.push(Delta::ToolArgs { index, args: arguments });
    }

    fn read_call(&mut self, body: &str, out: &mut Vec<Delta>) {
        match parse_call(body) {
            Some((name, arguments)) => self.emit(name, arguments, out),
            None => push_text(out, &format!("{OPEN}{body}{CLOSE}")),
        }
    }
}

fn push_text(out: &mut Vec<Delta>, text: &str) {
    if !text.is_empty() {
        out.push(Delta::Text(text.to_string()));
    }
}

/// Whether a reply so far may still be a bare call: it begins (after blanks) with `{`, `[`
/// or a code fence, or is only blanks or the start of a fence.
fn may_be_bare_call(text: &str) -> bool {
    let text = text.trim_start();
    text.is_empty() || text.starts_with(['{', '[']) || text.starts_with("```") || "```".starts_with(text)
}

/// A whole reply read as bare calls: JSON calls (objects, or lists of them) one after the
/// other, bare or in one code fence, each naming an offered tool.
fn bare_calls(text: &str, offered: &[String]) -> Option<Vec<(String, String)>> {
    let mut body = text.trim();
    if let Some(fenced) = body.strip_prefix("```") {
        let fenced = fenced.strip_suffix("```")?;
        // The fence's language tag (`json`), up to the line's end.
        body = fenced
            .split_once('\n')
            .map_or(fenced, |(tag, rest)| if tag.trim().is_empty() || tag.trim() == "json" { rest } else { fenced });
    }
    let mut calls = Vec::new();
    for value in serde_json::Deserializer::from_str(body).into_iter::<Value>() {
        let items = match value.ok()? {
            Value::Array(items) => items,
            object => vec![object],
        };
        for item in items {
            let (name, arguments) = call_of(&item)?;
            if !offered.contains(&name) {
                return None;
            }
            calls.push((name, arguments));
        }
    }
    (!calls.is_empty()).then_some(calls)
}

/// `{"name": "...", "arguments": {...}}` (arguments may also be JSON text of an object, as
/// some fine-tunes write them): the name and the arguments as JSON text.
fn parse_call(body: &str) -> Option<(String, String)> {
    call_of(&serde_json::from_str(body.trim()).ok()?)
}

fn call_of(value: &Value) -> Option<(String, String)> {
    let name = value.get("name")?.as_str()?.trim();
    if name.is_empty() {
        return None;
    }
    let arguments = match value.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text).ok().filter(Value::is_object)?,
        Some(object @ Value::Object(_)) => object.clone(),
        Some(_) => return None,
    };
    Some((name.to_string(), arguments.to_string()))
}

/// The length of the longest end of `text` that is a proper start of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offering(names: &[&str]) -> ChatRequest {
        names.iter().fold(ChatRequest::from("hi"), |request, name| {
            request.tool(crate::types::Tool::new(*name, "a tool", json!({"type": "object"})))
        })
    }

    fn scan(pieces: &[&str], opening: &str) -> (String, Vec<(String, String)>) {
        let mut scanner = CallScanner::new(&offering(&["lookup", "weather", "f"]), opening);
        let mut deltas: Vec<Delta> = pieces.iter().flat_map(|p| scanner.push(p)).collect();
        deltas.extend(scanner.finish());
        let mut text = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for delta in deltas {
            match delta {
                Delta::Text(t) => text.push_str(&t),
                Delta::ToolStart { index, id, name } => {
                    assert_eq!(id, Some(format!("call_{index}")));
                    assert_eq!(index, calls.len());
                    calls.push((name.unwrap_or_default(), String::new()));
                }
                Delta::ToolArgs { index, args } => calls[index].1 = args,
                other => panic!("unexpected {other:?}"),
            }
        }
        (text, calls)
    }

    #[test]
    fn calls_split_across_pieces_come_out_as_calls_and_the_text_around_them_as_text() {
        let reply = "Let me look.\n<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"order\": 42}}\n</tool_call>\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {}}\n</tool_call>";
        // Every way of cutting the reply in two gives the same result.
        for cut in (0..=reply.len()).filter(|&i| reply.is_char_boundary(i)) {
            let (text, calls) = scan(&[&reply[..cut], &reply[cut..]], "");
            assert_eq!(text, "Let me look.\n\n", "cut at {cut}");
            assert_eq!(
                calls,
                vec![("lookup".into(), r#"{"order":42}"#.into()), ("weather".into(), "{}".into())],
                "cut at {cut}"
            );
        }
        let one_char_at_a_time: Vec<String> = reply.chars().map(String::from).collect();
        let pieces: Vec<&str> = one_char_at_a_time.iter().map(String::as_str).collect();
        assert_eq!(scan(&pieces, "").1.len(), 2);
    }

    #[test]
    fn text_that_only_looks_like_the_start_of_a_call_is_passed_on() {
        let (text, calls) = scan(&["a < b and <tool", "s> are fine"], "");
        assert_eq!((text.as_str(), calls.len()), ("a < b and <tools> are fine", 0));
        assert_eq!(scan(&["ends with <tool_"], "").0, "ends with <tool_");
    }

    #[test]
    fn a_block_that_is_not_a_call_stays_text_as_written() {
        for body in [
            "not json",
            r#"{"arguments": {}}"#,
            r#"{"name": "", "arguments": {}}"#,
            r#"{"name": "x", "arguments": [1]}"#,
        ] {
            let reply = format!("<tool_call>{body}</tool_call>");
            let (text, calls) = scan(&[&reply], "");
            assert_eq!((text, calls.len()), (reply.clone(), 0));
        }
    }

    #[test]
    fn arguments_written_as_json_text_and_an_unclosed_last_block_are_read() {
        let (_, calls) = scan(&["<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>"], "");
        assert_eq!(calls, vec![("f".into(), r#"{"a":1}"#.into())]);
        let (text, calls) = scan(&["<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 2}}\n"], "");
        assert_eq!((text.as_str(), calls), ("", vec![("f".into(), r#"{"a":2}"#.into())]));
    }

    #[test]
    fn a_reply_that_is_only_calls_without_their_tags_is_read_as_calls() {
        let bare = [
            r#"{"name": "lookup", "arguments": {"order": 42}}"#,
            "  ```json\n{\n  \"name\": \"lookup\",\n  \"arguments\": {\"order\": 42}\n}\n```\n",
            "```\n{\"name\": \"lookup\", \"arguments\": {\"order\": 42}}\n```",
        ];
        for reply in bare {
            for cut in (0..=reply.len()).filter(|&i| reply.is_char_boundary(i)) {
                let (text, calls) = scan(&[&reply[..cut], &reply[cut..]], "");
                assert_eq!(
                    (text.as_str(), calls),
                    ("", vec![("lookup".into(), r#"{"order":42}"#.into())]),
                    "{reply:?} cut at {cut}"
                );
            }
        }
        let two = "{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Rome\"}}";
        assert_eq!(scan(&[two], "").1.len(), 2);
        let list = r#"[{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "lookup", "arguments": {}}]"#;
        assert_eq!(
            scan(&[list], "").1,
            vec![("weather".into(), r#"{"city":"Oslo"}"#.into()), ("lookup".into(), "{}".into())]
        );
    }

    #[test]
    fn json_that_is_not_only_calls_of_offered_tools_is_text() {
        for reply in [
            r#"{"name": "delete_everything", "arguments": {}}"#,
            r#"{"name": "lookup", "arguments": {}} and then some words"#,
            r#"{"answer": 4}"#,
            "```python\nprint(1)\n```",
            "[1, 2, 3]",
            "   ",
        ] {
            assert_eq!(scan(&[reply], ""), (reply.to_string(), vec![]), "{reply:?}");
        }
        // Plain text streams at once; only a reply that may be a call is held back.
        let mut scanner = CallScanner::new(&offering(&["lookup"]), "");
        assert_eq!(scanner.push("Hello"), vec![Delta::Text("Hello".into())]);
        let mut scanner = CallScanner::new(&offering(&["lookup"]), "");
        assert_eq!(scanner.push(" {\"name\""), vec![]);
        // A tagged call after a held start is still a call.
        let (text, calls) = scan(&["[see] <tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>"], "");
        assert_eq!((text.as_str(), calls.len()), ("[see] ", 1));
    }

    /// A reply made of text, calls and malformed blocks, as the model might write it.
    fn reply() -> impl proptest::strategy::Strategy<Value = (String, usize)> {
        use proptest::prelude::*;
        let text = "[a-z <>/_{}\"é\n]{0,12}".prop_map(|t| (t, 0));
        let call = ("(lookup|weather|f)", 0u32..100).prop_map(|(name, n)| {
            (format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {{\"n\": {n}}}}}\n</tool_call>"), 1)
        });
        let broken = "[a-z{}]{0,6}".prop_map(|t| (format!("<tool_call>{t}</tool_call>"), 0));
        prop::collection::vec(prop_oneof![3 => text, 2 => call, 1 => broken], 0..6).prop_map(|parts| {
            let calls = parts.iter().map(|(_, n)| n).sum();
            (parts.into_iter().map(|(t, _)| t).collect::<String>(), calls)
        })
    }

    proptest::proptest! {
        /// However the reply is cut into streamed pieces, what comes out is what one piece
        /// gives: the same text and the same calls, and no text is lost or made up.
        #[test]
        fn the_pieces_a_reply_streams_in_do_not_change_what_is_read(
            (reply, _) in reply(),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let whole = scan(&[&reply], "");
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c * reply.len() / 64).collect();
            bounds.push(reply.len());
            bounds.sort_unstable();
            let (mut pieces, mut start) = (Vec::new(), 0);
            for end in bounds {
                let end = (end..=reply.len()).find(|&i| reply.is_char_boundary(i)).unwrap_or(reply.len());
                if end > start {
                    pieces.push(&reply[start..end]);
                    start = end;
                }
            }
            proptest::prop_assert_eq!(scan(&pieces, ""), whole);
        }

        /// Every well-formed tagged call is read, once, unless the whole reply is read as
        /// bare calls (then there are at least as many).
        #[test]
        fn every_tagged_call_is_read_once((reply, calls) in reply()) {
            let (_, read) = scan(&[&reply], "");
            proptest::prop_assert!(read.len() >= calls, "{} < {}: {:?}", read.len(), calls, reply);
            if !reply.trim_start().starts_with(['{', '[', '`']) {
                proptest::prop_assert_eq!(read.len(), calls, "{:?}", reply);
            }
        }
    }

    #[test]
    fn a_forced_opening_makes_the_reply_begin_inside_the_call() {
        let named = ChatRequest::from("hi")
            .tool(crate::types::Tool::new("lookup", "Look up", json!({"type": "object"})))
            .tool_choice(ToolChoice::Tool("lookup".into()));
        let opening = forced_opening(&named);
        assert_eq!(opening, "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {");
        let (text, calls) = scan(&["\"id\": 7}}\n</tool_call>"], &opening);
        assert_eq!((text.as_str(), calls), ("", vec![("lookup".into(), r#"{"id":7}"#.into())]));

        let required = named.clone().tool_choice(ToolChoice::Required);
        assert_eq!(forced_opening(&required), "<tool_call>\n");
        let none = named.tool_choice(ToolChoice::None);
        assert_eq!(forced_opening(&none), "");
        assert!(!offers_tools(&none));
    }
}
