//! Ollama (`/api/chat`, newline-delimited JSON when streaming; `/api/embed`).

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::openai::finish_reason;
use super::{BoxFuture, Provider};
use crate::embed::EmbedFuture;
use crate::error::LlmError;
use crate::http::{Http, parse};
use crate::stream::{Delta, DeltaStream, lines};
use crate::types::{ChatRequest, ChatResponse, FinishReason, Image, Part, ResponseFormat, Role, TokenUsage, ToolCall};

const NAME: &str = "ollama";

/// The Ollama provider.
#[derive(Clone, Debug)]
pub struct Ollama {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) model: String,
}

impl Ollama {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }

    pub(crate) fn body(&self, req: &ChatRequest, stream: bool) -> Result<Value, LlmError> {
        let mut messages = Vec::new();
        for m in &req.messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut out = json!({ "role": role, "content": m.text_content() });
            let images: Vec<&str> = m
                .content
                .iter()
                .filter_map(|p| match p {
                    Part::Image(Image::Base64 { data, .. }) => Some(Ok(data.as_str())),
                    Part::Image(Image::Url(_)) => Some(Err(())),
                    Part::Text(_) => None,
                })
                .collect::<Result<_, _>>()
                .map_err(|()| LlmError::Unsupported {
                    provider: NAME,
                    what: "images by URL (send them as base64)".into(),
                })?;
            if !images.is_empty() {
                out["images"] = json!(images);
            }
            if !m.tool_calls.is_empty() {
                out["tool_calls"] = json!(m
                    .tool_calls
                    .iter()
                    .map(|c| json!({ "function": { "name": c.name, "arguments": c.args::<Value>().unwrap_or_else(|_| json!({})) } }))
                    .collect::<Vec<_>>());
            }
            if let Some(name) = &m.tool_name {
                out["tool_name"] = json!(name);
            }
            messages.push(out);
        }
        let mut o = Map::new();
        o.insert("model".into(), json!(self.model));
        o.insert("messages".into(), json!(messages));
        o.insert("stream".into(), json!(stream));
        if !req.tools.is_empty() {
            let tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| json!({ "type": "function", "function": { "name": t.name, "description": t.description, "parameters": t.parameters } }))
                .collect();
            o.insert("tools".into(), json!(tools));
        }
        match &req.response_format {
            Some(ResponseFormat::Json) => {
                o.insert("format".into(), json!("json"));
            }
            Some(ResponseFormat::JsonSchema { schema, .. }) => {
                o.insert("format".into(), schema.clone());
            }
            _ => {}
        }
        let mut options = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                options.insert(k.into(), v);
            }
        };
        put("temperature", json!(req.temperature));
        put("top_p", json!(req.top_p));
        put("num_predict", json!(req.max_tokens));
        put("seed", json!(req.seed));
        if !req.stop.is_empty() {
            put("stop", json!(req.stop));
        }
        if !options.is_empty() {
            o.insert("options".into(), Value::Object(options));
        }
        Ok(Value::Object(o))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Reply {
    model: Option<String>,
    message: Option<ReplyMessage>,
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: u64,
    eval_count: u64,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyMessage {
    content: String,
    #[serde(deserialize_with = "crate::http::null_default")]
    tool_calls: Vec<ReplyCall>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyCall {
    function: ReplyFunction,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplyFunction {
    name: String,
    arguments: Value,
}

fn calls(message: &ReplyMessage, offset: usize) -> Vec<ToolCall> {
    message
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: format!("call_{}", offset + i),
            name: c.function.name.clone(),
            arguments: if c.function.arguments.is_null() { "{}".into() } else { c.function.arguments.to_string() },
            signature: None,
        })
        .collect()
}

impl Provider for Ollama {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let body = self.body(req, false)?;
            let url = self.url("/api/chat");
            let reply: Reply = self.http.json(NAME, &url, || self.http.client.post(&url).json(&body)).await?;
            let message = reply.message.unwrap_or_default();
            let tool_calls = calls(&message, 0);
            let finish = match (reply.done_reason.as_deref(), tool_calls.is_empty()) {
                (_, false) => Some(FinishReason::ToolCalls),
                (Some(r), true) => Some(finish_reason(r)),
                (None, true) => None,
            };
            Ok(ChatResponse {
                text: message.content,
                tool_calls,
                finish_reason: finish,
                usage: TokenUsage {
                    prompt_tokens: reply.prompt_eval_count,
                    completion_tokens: reply.eval_count,
                    cached_tokens: 0,
                },
                id: None,
                model: reply.model.unwrap_or_else(|| self.model.clone()),
            })
        })
    }

    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            let body = self.body(req, true)?;
            let url = self.url("/api/chat");
            let response = self.http.send(NAME, &url, || self.http.client.post(&url).json(&body), true).await?;
            let mut calls_so_far = 0usize;
            let deltas = lines(response.bytes_stream()).flat_map(move |line| {
                let out: Vec<Result<Delta, LlmError>> = match line {
                    Err(e) => vec![Err(LlmError::Network { provider: NAME, url: url.clone(), message: e.to_string() })],
                    Ok(line) => match parse::<Reply>(NAME, &line) {
                        Err(e) => vec![Err(e)],
                        Ok(chunk) => chunk_deltas(chunk, &mut calls_so_far),
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
            struct Embeddings {
                embeddings: Vec<Vec<f32>>,
            }
            let body = json!({ "model": self.model, "input": texts });
            let url = self.url("/api/embed");
            let reply: Embeddings = self.http.json(NAME, &url, || self.http.client.post(&url).json(&body)).await?;
            Ok(reply.embeddings)
        })
    }
}

fn chunk_deltas(chunk: Reply, calls_so_far: &mut usize) -> Vec<Result<Delta, LlmError>> {
    if let Some(error) = chunk.error {
        return vec![Err(LlmError::Server { provider: NAME, status: 200, message: error })];
    }
    let mut out = Vec::new();
    if let Some(model) = chunk.model {
        out.push(Ok(Delta::Model(model)));
    }
    if let Some(message) = &chunk.message {
        if !message.content.is_empty() {
            out.push(Ok(Delta::Text(message.content.clone())));
        }
        for call in calls(message, *calls_so_far) {
            let index = *calls_so_far;
            *calls_so_far += 1;
            out.push(Ok(Delta::ToolStart { index, id: Some(call.id), name: Some(call.name) }));
            out.push(Ok(Delta::ToolArgs { index, args: call.arguments }));
        }
    }
    if chunk.done {
        out.push(Ok(Delta::Usage(TokenUsage {
            prompt_tokens: chunk.prompt_eval_count,
            completion_tokens: chunk.eval_count,
            cached_tokens: 0,
        })));
        let reason = if *calls_so_far > 0 {
            FinishReason::ToolCalls
        } else {
            finish_reason(chunk.done_reason.as_deref().unwrap_or("stop"))
        };
        out.push(Ok(Delta::Finish(reason)));
    }
    out
}
