//! Anthropic Messages.
//!
//! Structured output has no response-format switch here, so a JSON-schema request becomes a
//! forced call of a tool whose input schema is the schema; the tool's input is the reply.

use std::collections::BTreeSet;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::openai::finish_reason;
use super::{BoxFuture, Provider};
use crate::error::LlmError;
use crate::http::{Http, parse};
use crate::stream::{Delta, DeltaStream};
use crate::types::{ChatRequest, ChatResponse, Image, Part, ResponseFormat, Role, TokenUsage, ToolCall, ToolChoice};

const NAME: &str = "anthropic";
const VERSION: &str = "2023-06-01";
/// The tool standing for a JSON-schema reply.
const RESPOND: &str = "respond_with_json";

/// The Anthropic provider.
#[derive(Clone, Debug)]
pub struct Anthropic {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) api_key: String,
    pub(crate) model: String,
}

impl Anthropic {
    fn url(&self) -> String {
        format!("{}/v1/messages", self.base_url.trim_end_matches('/'))
    }

    fn request(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .client
            .post(self.url())
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", VERSION)
            .json(body)
    }

    pub(crate) fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        let mut o = Map::new();
        o.insert("model".into(), json!(self.model));
        o.insert("max_tokens".into(), json!(req.max_tokens.unwrap_or(4096)));
        let mut system = req.system_text();
        if matches!(req.response_format, Some(ResponseFormat::Json)) {
            let note = "Reply with a single JSON object and nothing else.";
            system = Some(system.map(|s| format!("{s}\n\n{note}")).unwrap_or_else(|| note.to_string()));
        }
        if let Some(s) = system {
            o.insert("system".into(), json!(s));
        }
        o.insert("messages".into(), json!(messages(req)));
        let mut tools: Vec<Value> = req
            .tools
            .iter()
            .map(|t| json!({ "name": t.name, "description": t.description, "input_schema": t.parameters }))
            .collect();
        let mut choice = req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => json!({ "type": "auto" }),
            ToolChoice::None => json!({ "type": "none" }),
            ToolChoice::Required => json!({ "type": "any" }),
            ToolChoice::Tool(name) => json!({ "type": "tool", "name": name }),
        });
        if let Some(ResponseFormat::JsonSchema { schema, .. }) = &req.response_format {
            tools.push(json!({ "name": RESPOND, "description": "Give the reply as JSON matching the schema.", "input_schema": schema }));
            choice = Some(json!({ "type": "tool", "name": RESPOND }));
        }
        if !tools.is_empty() {
            o.insert("tools".into(), json!(tools));
        }
        if let Some(c) = choice {
            o.insert("tool_choice".into(), c);
        }
        if let Some(t) = req.temperature {
            o.insert("temperature".into(), json!(t));
        }
        if let Some(p) = req.top_p {
            o.insert("top_p".into(), json!(p));
        }
        if !req.stop.is_empty() {
            o.insert("stop_sequences".into(), json!(req.stop));
        }
        if stream {
            o.insert("stream".into(), json!(true));
        }
        Value::Object(o)
    }
}

/// The conversation without system messages, with roles alternating: consecutive messages of
/// one role (several tool results, say) become one message.
fn messages(req: &ChatRequest) -> Vec<Value> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match m.role {
            Role::Tool => (
                "user",
                vec![
                    json!({ "type": "tool_result", "tool_use_id": m.tool_call_id.clone().unwrap_or_default(), "content": m.text_content() }),
                ],
            ),
            Role::Assistant => {
                let mut blocks: Vec<Value> = text_and_images(&m.content);
                blocks.extend(m.tool_calls.iter().map(|c| {
                    json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.args::<Value>().unwrap_or_else(|_| json!({})) })
                }));
                ("assistant", blocks)
            }
            _ => ("user", text_and_images(&m.content)),
        };
        // A message without content (an empty reply kept in the history) is refused by the API.
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => out.push((role.to_string(), blocks)),
        }
    }
    out.into_iter().map(|(role, content)| json!({ "role": role, "content": content })).collect()
}

fn text_and_images(parts: &[Part]) -> Vec<Value> {
    parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| match p {
            Part::Text(t) => json!({ "type": "text", "text": t }),
            Part::Image(Image::Url(url)) => json!({ "type": "image", "source": { "type": "url", "url": url } }),
            Part::Image(Image::Base64 { media_type, data }) => {
                json!({ "type": "image", "source": { "type": "base64", "media_type": media_type, "data": data } })
            }
        })
        .collect()
}

fn usage(u: &Value) -> TokenUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    TokenUsage {
        prompt_tokens: n("input_tokens") + cached + n("cache_creation_input_tokens"),
        completion_tokens: n("output_tokens"),
        cached_tokens: cached,
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let body = self.body(req, false);
            let reply: Value = self.http.json(NAME, &self.url(), || self.request(&body)).await?;
            let mut text = String::new();
            let mut tool_calls = Vec::new();
            for block in reply.get("content").and_then(Value::as_array).into_iter().flatten() {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("tool_use") => {
                        let name = block.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                        let input = block.get("input").cloned().unwrap_or(json!({}));
                        if name == RESPOND {
                            text = input.to_string();
                        } else {
                            tool_calls.push(ToolCall {
                                id: block.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                                name,
                                arguments: input.to_string(),
                                signature: None,
                            });
                        }
                    }
                    _ => {}
                }
            }
            let stop = reply.get("stop_reason").and_then(Value::as_str).unwrap_or("");
            Ok(ChatResponse {
                finish_reason: (!stop.is_empty()).then(|| {
                    if tool_calls.is_empty() && stop == "tool_use" {
                        finish_reason("stop")
                    } else {
                        finish_reason(stop)
                    }
                }),
                text,
                tool_calls,
                usage: reply.get("usage").map(usage).unwrap_or_default(),
                id: reply.get("id").and_then(Value::as_str).map(str::to_string),
                model: reply.get("model").and_then(Value::as_str).unwrap_or(&self.model).to_string(),
            })
        })
    }

    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            let body = self.body(req, true);
            let url = self.url();
            let response = self.http.send(NAME, &url, || self.request(&body), true).await?;
            // Blocks of the synthetic JSON tool: their input is the reply's text.
            let mut respond_blocks = BTreeSet::new();
            let deltas = response.bytes_stream().eventsource().flat_map(move |event| {
                let out: Vec<Result<Delta, LlmError>> = match event {
                    Err(e) => vec![Err(LlmError::Network { provider: NAME, url: url.clone(), message: e.to_string() })],
                    Ok(event) => match parse::<Value>(NAME, &event.data) {
                        Err(e) => vec![Err(e)],
                        Ok(v) => stream_deltas(&v, &mut respond_blocks),
                    },
                };
                futures::stream::iter(out)
            });
            Ok(Box::pin(deltas) as DeltaStream)
        })
    }
}

fn stream_deltas(v: &Value, respond_blocks: &mut BTreeSet<u64>) -> Vec<Result<Delta, LlmError>> {
    let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
    match v.get("type").and_then(Value::as_str) {
        Some("message_start") => {
            let m = v.get("message").cloned().unwrap_or(Value::Null);
            let mut out = Vec::new();
            if let Some(id) = m.get("id").and_then(Value::as_str) {
                out.push(Ok(Delta::Id(id.to_string())));
            }
            if let Some(model) = m.get("model").and_then(Value::as_str) {
                out.push(Ok(Delta::Model(model.to_string())));
            }
            if let Some(u) = m.get("usage") {
                out.push(Ok(Delta::Usage(usage(u))));
            }
            out
        }
        Some("content_block_start") => {
            let block = v.get("content_block").cloned().unwrap_or(Value::Null);
            match block.get("type").and_then(Value::as_str) {
                Some("tool_use") if block.get("name").and_then(Value::as_str) == Some(RESPOND) => {
                    respond_blocks.insert(index);
                    vec![]
                }
                Some("tool_use") => vec![Ok(Delta::ToolStart {
                    index: index as usize,
                    id: block.get("id").and_then(Value::as_str).map(str::to_string),
                    name: block.get("name").and_then(Value::as_str).map(str::to_string),
                })],
                Some("text") => {
                    let t = block.get("text").and_then(Value::as_str).unwrap_or("");
                    if t.is_empty() { vec![] } else { vec![Ok(Delta::Text(t.to_string()))] }
                }
                _ => vec![],
            }
        }
        Some("content_block_delta") => {
            let d = v.get("delta").cloned().unwrap_or(Value::Null);
            match d.get("type").and_then(Value::as_str) {
                Some("text_delta") => {
                    vec![Ok(Delta::Text(d.get("text").and_then(Value::as_str).unwrap_or("").to_string()))]
                }
                Some("input_json_delta") => {
                    let part = d.get("partial_json").and_then(Value::as_str).unwrap_or("").to_string();
                    if respond_blocks.contains(&index) {
                        vec![Ok(Delta::Text(part))]
                    } else {
                        vec![Ok(Delta::ToolArgs { index: index as usize, args: part })]
                    }
                }
                _ => vec![],
            }
        }
        Some("message_delta") => {
            let mut out = Vec::new();
            if let Some(stop) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                let stop = if stop == "tool_use" && !respond_blocks.is_empty() { "end_turn" } else { stop };
                out.push(Ok(Delta::Finish(finish_reason(stop))));
            }
            if let Some(u) = v.get("usage") {
                out.push(Ok(Delta::Usage(usage(u))));
            }
            out
        }
        Some("error") => vec![Err(LlmError::Server {
            provider: NAME,
            status: 200,
            message: v.pointer("/error/message").and_then(Value::as_str).unwrap_or("stream error").to_string(),
        })],
        _ => vec![],
    }
}
