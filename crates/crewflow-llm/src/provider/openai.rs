//! OpenAI Chat Completions, and every server that speaks it (vLLM, llama.cpp server, LM Studio,
//! Groq, DeepSeek, OpenRouter, Azure OpenAI's v1 API, ...).
//!
//! Reply types are lenient: unknown fields are ignored and unknown enum values kept as text,
//! because compatible servers differ in the details.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BoxFuture, Provider};
use crate::embed::EmbedFuture;
use crate::error::LlmError;
use crate::http::{Http, parse};
use crate::stream::{Delta, DeltaStream};
use crate::types::{
    ChatRequest, ChatResponse, FinishReason, Image, Part, ResponseFormat, Role, TokenUsage, ToolCall, ToolChoice,
};

const NAME: &str = "openai";

/// The OpenAI-compatible provider.
#[derive(Clone, Debug)]
pub struct OpenAi {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) api_key: Option<String>,
    pub(crate) model: String,
    /// Azure OpenAI: the key goes in its `api-key` header.
    pub(crate) azure: bool,
}

impl OpenAi {
    fn request(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        let mut r = self.http.client.post(url).json(body);
        if let Some(key) = &self.api_key {
            // Azure OpenAI takes the key in its own header.
            r = if self.azure || self.base_url.contains(".openai.azure.com") {
                r.header("api-key", key)
            } else {
                r.bearer_auth(key)
            };
        }
        r
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }

    pub(crate) fn body(&self, req: &ChatRequest, stream: bool) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("model".into(), json!(self.model));
        o.insert("messages".into(), json!(req.messages.iter().map(message).collect::<Vec<_>>()));
        if !req.tools.is_empty() {
            let tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| json!({ "type": "function", "function": { "name": t.name, "description": t.description, "parameters": t.parameters } }))
                .collect();
            o.insert("tools".into(), json!(tools));
        }
        if let Some(choice) = &req.tool_choice {
            o.insert(
                "tool_choice".into(),
                match choice {
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::None => json!("none"),
                    ToolChoice::Required => json!("required"),
                    ToolChoice::Tool(name) => json!({ "type": "function", "function": { "name": name } }),
                },
            );
        }
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                o.insert(k.into(), v);
            }
        };
        put("temperature", json!(req.temperature));
        put("top_p", json!(req.top_p));
        put("max_tokens", json!(req.max_tokens));
        put("seed", json!(req.seed));
        if !req.stop.is_empty() {
            put("stop", json!(req.stop));
        }
        match &req.response_format {
            Some(ResponseFormat::Json) => put("response_format", json!({ "type": "json_object" })),
            Some(ResponseFormat::JsonSchema { name, schema, strict }) => put(
                "response_format",
                json!({ "type": "json_schema", "json_schema": { "name": name, "schema": if *strict { crate::structured::strict_schema(schema) } else { schema.clone() }, "strict": strict } }),
            ),
            Some(ResponseFormat::Text) | None => {}
        }
        if stream {
            put("stream", json!(true));
            put("stream_options", json!({ "include_usage": true }));
        }
        Value::Object(o)
    }
}

fn message(m: &crate::types::Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let has_images = m.content.iter().any(|p| matches!(p, Part::Image(_)));
    let content = if has_images {
        json!(m
            .content
            .iter()
            .map(|p| match p {
                Part::Text(t) => json!({ "type": "text", "text": t }),
                Part::Image(Image::Url(url)) => json!({ "type": "image_url", "image_url": { "url": url } }),
                Part::Image(Image::Base64 { media_type, data }) => {
                    json!({ "type": "image_url", "image_url": { "url": format!("data:{media_type};base64,{data}") } })
                }
            })
            .collect::<Vec<_>>())
    } else if m.content.is_empty() && !m.tool_calls.is_empty() {
        Value::Null
    } else {
        json!(m.text_content())
    };
    let mut out = json!({ "role": role, "content": content });
    if !m.tool_calls.is_empty() {
        out["tool_calls"] = json!(m
            .tool_calls
            .iter()
            .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
            .collect::<Vec<_>>());
    }
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = json!(id);
    }
    out
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Reply {
    id: Option<String>,
    model: Option<String>,
    #[serde(deserialize_with = "crate::http::null_default")]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Choice {
    message: Option<ReplyMessage>,
    delta: Option<ReplyMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyMessage {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(deserialize_with = "crate::http::null_default")]
    tool_calls: Vec<ReplyToolCall>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyToolCall {
    index: Option<usize>,
    id: Option<String>,
    function: ReplyFunction,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyFunction {
    name: Option<String>,
    arguments: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
    prompt_tokens_details: Option<CachedTokens>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CachedTokens {
    cached_tokens: u64,
}

impl From<&Usage> for TokenUsage {
    fn from(u: &Usage) -> Self {
        TokenUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.as_ref().map(|d| d.cached_tokens).unwrap_or(0),
        }
    }
}

pub(crate) fn finish_reason(s: &str) -> FinishReason {
    match s {
        "stop" | "end_turn" | "stop_sequence" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Arguments arrive as JSON text (or, from some servers, as an object).
fn arguments(v: &Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let body = self.body(req, false);
            let reply: Reply = self
                .http
                .json(NAME, &self.url("/chat/completions"), || self.request("/chat/completions", &body))
                .await?;
            let choice = reply.choices.into_iter().next().unwrap_or_default();
            let message = choice.message.unwrap_or_default();
            let tool_calls = message
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, c)| ToolCall {
                    id: c.id.clone().unwrap_or_else(|| format!("call_{i}")),
                    name: c.function.name.clone().unwrap_or_default(),
                    arguments: arguments(&c.function.arguments),
                    signature: None,
                })
                .collect();
            Ok(ChatResponse {
                text: message.content.or(message.refusal).unwrap_or_default(),
                tool_calls,
                finish_reason: choice.finish_reason.as_deref().map(finish_reason),
                usage: reply.usage.as_ref().map(TokenUsage::from).unwrap_or_default(),
                id: reply.id,
                model: reply.model.unwrap_or_else(|| self.model.clone()),
            })
        })
    }

    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            let body = self.body(req, true);
            let url = self.url("/chat/completions");
            let response = self.http.send(NAME, &url, || self.request("/chat/completions", &body), true).await?;
            let events = response.bytes_stream().eventsource();
            let deltas = events.flat_map(move |event| {
                let out: Vec<Result<Delta, LlmError>> = match event {
                    Err(e) => vec![Err(LlmError::Network { provider: NAME, url: url.clone(), message: e.to_string() })],
                    Ok(event) if event.data.trim() == "[DONE]" => vec![],
                    Ok(event) => match parse::<Value>(NAME, &event.data) {
                        Err(e) => vec![Err(e)],
                        Ok(v) if v.get("error").is_some() => vec![Err(LlmError::Server {
                            provider: NAME,
                            status: 200,
                            message: v.pointer("/error/message").and_then(Value::as_str).unwrap_or("error").to_string(),
                        })],
                        Ok(v) => match serde_json::from_value::<Reply>(v) {
                            Err(e) => vec![Err(LlmError::Protocol {
                                provider: NAME,
                                message: e.to_string(),
                                raw: event.data,
                            })],
                            Ok(chunk) => chunk_deltas(chunk),
                        },
                    },
                };
                futures::stream::iter(out)
            });
            Ok(Box::pin(deltas) as DeltaStream)
        })
    }

    fn embed<'a>(&'a self, texts: &'a [&'a str]) -> EmbedFuture<'a> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Data {
                embedding: Vec<f32>,
                #[serde(default)]
                index: usize,
            }
            #[derive(Deserialize)]
            struct Embeddings {
                data: Vec<Data>,
            }
            let body = json!({ "model": self.model, "input": texts });
            let mut reply: Embeddings =
                self.http.json(NAME, &self.url("/embeddings"), || self.request("/embeddings", &body)).await?;
            reply.data.sort_by_key(|d| d.index);
            Ok(reply.data.into_iter().map(|d| d.embedding).collect())
        })
    }
}

fn chunk_deltas(chunk: Reply) -> Vec<Result<Delta, LlmError>> {
    let mut out = Vec::new();
    if let Some(id) = chunk.id {
        out.push(Ok(Delta::Id(id)));
    }
    if let Some(model) = chunk.model {
        out.push(Ok(Delta::Model(model)));
    }
    for choice in chunk.choices {
        if let Some(delta) = choice.delta {
            if let Some(text) = delta.content.or(delta.refusal) {
                out.push(Ok(Delta::Text(text)));
            }
            for (i, call) in delta.tool_calls.into_iter().enumerate() {
                let index = call.index.unwrap_or(i);
                if call.id.is_some() || call.function.name.is_some() {
                    out.push(Ok(Delta::ToolStart { index, id: call.id, name: call.function.name }));
                }
                let args = arguments(&call.function.arguments);
                if !args.is_empty() {
                    out.push(Ok(Delta::ToolArgs { index, args }));
                }
            }
        }
        if let Some(reason) = choice.finish_reason {
            out.push(Ok(Delta::Finish(finish_reason(&reason))));
        }
    }
    if let Some(usage) = &chunk.usage {
        out.push(Ok(Delta::Usage(usage.into())));
    }
    out
}
