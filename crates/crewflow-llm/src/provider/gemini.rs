//! Google Gemini (`generateContent`, `streamGenerateContent?alt=sse`, `batchEmbedContents`).

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{BoxFuture, Provider};
use crate::embed::EmbedFuture;
use crate::error::LlmError;
use crate::http::{Http, parse};
use crate::stream::{Delta, DeltaStream};
use crate::types::{
    ChatRequest, ChatResponse, FinishReason, Image, Part, ResponseFormat, Role, TokenUsage, ToolCall, ToolChoice,
};

const NAME: &str = "gemini";
/// The start of the ids made up for function calls that come without one (Gemini's
/// `generateContent` gives none): such ids are never sent back, a given one always is.
const MADE_UP_ID: &str = "gemini_call_";

/// The Gemini provider.
#[derive(Clone, Debug)]
pub struct Gemini {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) api_key: String,
    pub(crate) model: String,
}

impl Gemini {
    fn url(&self, method: &str) -> String {
        format!("{}/v1beta/models/{}:{method}", self.base_url.trim_end_matches('/'), self.model)
    }

    fn request(&self, url: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.client.post(url).header("x-goog-api-key", &self.api_key).json(body)
    }

    pub(crate) fn body(&self, req: &ChatRequest) -> Value {
        let mut o = Map::new();
        o.insert("contents".into(), json!(contents(req)));
        if let Some(system) = req.system_text() {
            o.insert("systemInstruction".into(), json!({ "parts": [{ "text": system }] }));
        }
        if !req.tools.is_empty() {
            let declarations: Vec<Value> = req
                .tools
                .iter()
                .map(|t| json!({ "name": t.name, "description": t.description, "parametersJsonSchema": t.parameters }))
                .collect();
            o.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        }
        if let Some(choice) = &req.tool_choice {
            let config = match choice {
                ToolChoice::Auto => json!({ "mode": "AUTO" }),
                ToolChoice::None => json!({ "mode": "NONE" }),
                ToolChoice::Required => json!({ "mode": "ANY" }),
                ToolChoice::Tool(name) => json!({ "mode": "ANY", "allowedFunctionNames": [name] }),
            };
            o.insert("toolConfig".into(), json!({ "functionCallingConfig": config }));
        }
        let mut g = Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                g.insert(k.into(), v);
            }
        };
        put("temperature", json!(req.temperature));
        put("topP", json!(req.top_p));
        put("maxOutputTokens", json!(req.max_tokens));
        put("seed", json!(req.seed));
        if !req.stop.is_empty() {
            put("stopSequences", json!(req.stop));
        }
        // Gemini before 3 refuses a JSON response format beside function declarations
        // ("Function calling with a response mime type: 'application/json' is unsupported"): with
        // tools, those models get the schema from the prompt only (crewflow's typed outputs put
        // it there), the tools stay declared.
        let format = match &req.response_format {
            Some(_) if !req.tools.is_empty() && !schema_beside_tools(&self.model) => None,
            format => format.as_ref(),
        };
        match format {
            Some(ResponseFormat::Json) => put("responseMimeType", json!("application/json")),
            Some(ResponseFormat::JsonSchema { schema, .. }) => {
                put("responseMimeType", json!("application/json"));
                put("responseJsonSchema", schema.clone());
            }
            _ => {}
        }
        if !g.is_empty() {
            o.insert("generationConfig".into(), Value::Object(g));
        }
        Value::Object(o)
    }
}

/// Whether `model` takes a JSON response format together with function declarations: Gemini 3
/// and later do, 1.x and 2.x do not (a name crewflow does not know is taken to be newer).
fn schema_beside_tools(model: &str) -> bool {
    let name = model.trim_start_matches("models/");
    !["gemini-1", "gemini-2"].iter().any(|old| name.starts_with(old))
}

fn contents(req: &ChatRequest) -> Vec<Value> {
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let (role, parts) = match m.role {
            Role::Tool => {
                let text = m.text_content();
                let result = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                let name = m.tool_name.clone().unwrap_or_default();
                let mut response = json!({ "name": name, "response": { "result": result } });
                if let Some(id) = m.tool_call_id.as_deref().filter(|id| !id.starts_with(MADE_UP_ID)) {
                    response["id"] = json!(id);
                }
                ("user", vec![json!({ "functionResponse": response })])
            }
            Role::Assistant => {
                let mut parts = parts(&m.content);
                parts.extend(m.tool_calls.iter().map(|c| {
                    let mut call = json!({ "name": c.name, "args": c.args::<Value>().unwrap_or_else(|_| json!({})) });
                    if !c.id.starts_with(MADE_UP_ID) {
                        call["id"] = json!(c.id);
                    }
                    let mut part = json!({ "functionCall": call });
                    // Sent back exactly where it came: Gemini 3 refuses a tool loop without it.
                    if let Some(signature) = &c.signature {
                        part["thoughtSignature"] = json!(signature);
                    }
                    part
                }));
                ("model", parts)
            }
            _ => ("user", parts(&m.content)),
        };
        // A turn without parts (an empty reply kept in the history) is refused by the API.
        if parts.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some((last, existing)) if last == role => existing.extend(parts),
            _ => out.push((role.to_string(), parts)),
        }
    }
    out.into_iter().map(|(role, parts)| json!({ "role": role, "parts": parts })).collect()
}

fn parts(content: &[Part]) -> Vec<Value> {
    content
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| match p {
            Part::Text(t) => json!({ "text": t }),
            Part::Image(Image::Base64 { media_type, data }) => {
                json!({ "inlineData": { "mimeType": media_type, "data": data } })
            }
            Part::Image(Image::Url(url)) => json!({ "fileData": { "fileUri": url } }),
        })
        .collect()
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Reply {
    #[serde(deserialize_with = "crate::http::null_default")]
    candidates: Vec<Candidate>,
    usage_metadata: Option<Usage>,
    model_version: Option<String>,
    response_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Content {
    #[serde(deserialize_with = "crate::http::null_default")]
    parts: Vec<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Usage {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
    cached_content_token_count: u64,
}

impl From<&Usage> for TokenUsage {
    fn from(u: &Usage) -> Self {
        TokenUsage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_tokens: u.cached_content_token_count,
        }
    }
}

fn finish(s: &str) -> FinishReason {
    match s {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_lowercase()),
    }
}

/// Text and function calls of a candidate.
fn read_parts(parts: &[Value], call_offset: usize) -> (String, Vec<ToolCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in parts {
        if part.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            let index = call_offset + calls.len();
            calls.push(ToolCall {
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{MADE_UP_ID}{index}")),
                name: call.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
                arguments: call.get("args").cloned().unwrap_or(json!({})).to_string(),
                signature: part.get("thoughtSignature").and_then(Value::as_str).map(str::to_string),
            });
        }
    }
    (text, calls)
}

impl Provider for Gemini {
    fn name(&self) -> &'static str {
        NAME
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let body = self.body(req);
            let url = self.url("generateContent");
            let reply: Reply = self.http.json(NAME, &url, || self.request(&url, &body)).await?;
            let candidate = reply.candidates.into_iter().next().unwrap_or_default();
            let (text, tool_calls) = read_parts(&candidate.content.unwrap_or_default().parts, 0);
            let finish_reason = match (candidate.finish_reason.as_deref(), tool_calls.is_empty()) {
                (Some("STOP") | None, false) => Some(FinishReason::ToolCalls),
                (Some(f), _) => Some(finish(f)),
                (None, true) => None,
            };
            Ok(ChatResponse {
                text,
                tool_calls,
                finish_reason,
                usage: reply.usage_metadata.as_ref().map(TokenUsage::from).unwrap_or_default(),
                id: reply.response_id,
                model: reply.model_version.unwrap_or_else(|| self.model.clone()),
            })
        })
    }

    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            let body = self.body(req);
            let url = format!("{}?alt=sse", self.url("streamGenerateContent"));
            let response = self.http.send(NAME, &url, || self.request(&url, &body), true).await?;
            let mut calls_so_far = 0usize;
            let deltas = response.bytes_stream().eventsource().flat_map(move |event| {
                let out: Vec<Result<Delta, LlmError>> = match event {
                    Err(e) => vec![Err(LlmError::Network { provider: NAME, url: url.clone(), message: e.to_string() })],
                    Ok(event) => match parse::<Value>(NAME, &event.data) {
                        Err(e) => vec![Err(e)],
                        Ok(v) if v.get("error").is_some() => vec![Err(LlmError::Server {
                            provider: NAME,
                            status: 200,
                            message: v
                                .pointer("/error/message")
                                .and_then(Value::as_str)
                                .unwrap_or("stream error")
                                .to_string(),
                        })],
                        Ok(v) => match serde_json::from_value::<Reply>(v) {
                            Err(e) => vec![Err(LlmError::Protocol {
                                provider: NAME,
                                message: e.to_string(),
                                raw: event.data,
                            })],
                            Ok(chunk) => chunk_deltas(chunk, &mut calls_so_far),
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
            let model = format!("models/{}", self.model);
            let requests: Vec<Value> =
                texts.iter().map(|t| json!({ "model": model, "content": { "parts": [{ "text": t }] } })).collect();
            let body = json!({ "requests": requests });
            let url = self.url("batchEmbedContents");
            let reply: Value = self.http.json(NAME, &url, || self.request(&url, &body)).await?;
            let vectors = reply
                .get("embeddings")
                .and_then(Value::as_array)
                .map(|es| {
                    es.iter()
                        .map(|e| {
                            e.get("values")
                                .and_then(Value::as_array)
                                .map(|v| v.iter().filter_map(Value::as_f64).map(|x| x as f32).collect())
                                .unwrap_or_default()
                        })
                        .collect()
                })
                .ok_or_else(|| LlmError::Protocol {
                    provider: NAME,
                    message: "no embeddings".into(),
                    raw: reply.to_string(),
                })?;
            Ok(vectors)
        })
    }
}

fn chunk_deltas(chunk: Reply, calls_so_far: &mut usize) -> Vec<Result<Delta, LlmError>> {
    let mut out = Vec::new();
    if let Some(id) = chunk.response_id {
        out.push(Ok(Delta::Id(id)));
    }
    if let Some(model) = chunk.model_version {
        out.push(Ok(Delta::Model(model)));
    }
    let mut saw_calls = false;
    if let Some(candidate) = chunk.candidates.into_iter().next() {
        let (text, calls) = read_parts(&candidate.content.unwrap_or_default().parts, *calls_so_far);
        if !text.is_empty() {
            out.push(Ok(Delta::Text(text)));
        }
        for call in calls {
            saw_calls = true;
            let index = *calls_so_far;
            *calls_so_far += 1;
            out.push(Ok(Delta::ToolStart { index, id: Some(call.id), name: Some(call.name) }));
            out.push(Ok(Delta::ToolArgs { index, args: call.arguments }));
            if let Some(signature) = call.signature {
                out.push(Ok(Delta::ToolSignature { index, signature }));
            }
        }
        if let Some(f) = candidate.finish_reason {
            let reason =
                if f == "STOP" && (saw_calls || *calls_so_far > 0) { FinishReason::ToolCalls } else { finish(&f) };
            out.push(Ok(Delta::Finish(reason)));
        }
    }
    if let Some(u) = &chunk.usage_metadata {
        out.push(Ok(Delta::Usage(u.into())));
    }
    out
}
