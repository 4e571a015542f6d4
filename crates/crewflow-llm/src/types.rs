//! Messages, requests and responses, the same for every provider.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crewflow_core::TokenUsage;

/// Who wrote a message (of a model request, and of a conversation's transcript in
/// `crewflow-chat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// The role as stored and sent to models: `system`, `user`, `assistant`, `tool`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// An image in a message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Image {
    /// An image at a URL (or a `data:` URL).
    Url(String),
    /// An image's bytes, base64-encoded.
    Base64 {
        /// `image/png`, `image/jpeg`, ...
        media_type: String,
        /// The base64 data.
        data: String,
    },
}

/// A part of a message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text(String),
    /// An image.
    Image(Image),
}

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (synthesised for providers that have none), to pair it with its result.
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
    /// What the provider attached to the call and needs back with it when the conversation is
    /// sent again (Gemini's `thoughtSignature`: Gemini 3 refuses a tool loop that drops it).
    /// Opaque; `None` for most providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl ToolCall {
    /// A call of tool `name` with `arguments` (JSON text), without a signature.
    pub fn new(id: impl Into<String>, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        ToolCall { id: id.into(), name: name.into(), arguments: arguments.into(), signature: None }
    }

    /// The arguments, parsed.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(if self.arguments.trim().is_empty() { "{}" } else { &self.arguments })
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its content.
    pub content: Vec<Part>,
    /// For assistant messages: the tool calls the model asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For tool results: the call answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For tool results: the tool's name (Gemini and Ollama need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl Message {
    fn text(role: Role, text: impl Into<String>) -> Self {
        Message {
            role,
            content: vec![Part::Text(text.into())],
            tool_calls: vec![],
            tool_call_id: None,
            tool_name: None,
        }
    }

    /// Instructions.
    pub fn system(text: impl Into<String>) -> Self {
        Self::text(Role::System, text)
    }

    /// A user message.
    pub fn user(text: impl Into<String>) -> Self {
        Self::text(Role::User, text)
    }

    /// A model message.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text(Role::Assistant, text)
    }

    /// A model message that asked for tool calls.
    pub fn assistant_tool_calls(text: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        let text: String = text.into();
        let content = if text.is_empty() { vec![] } else { vec![Part::Text(text)] };
        Message { role: Role::Assistant, content, tool_calls: calls, tool_call_id: None, tool_name: None }
    }

    /// The result of a tool call.
    pub fn tool_result(call: &ToolCall, result: impl Into<String>) -> Self {
        Message {
            role: Role::Tool,
            content: vec![Part::Text(result.into())],
            tool_calls: vec![],
            tool_call_id: Some(call.id.clone()),
            tool_name: Some(call.name.clone()),
        }
    }

    /// Adds an image.
    pub fn with_image(mut self, image: Image) -> Self {
        self.content.push(Part::Image(image));
        self
    }

    /// The text parts, joined.
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Image(_) => None,
            })
            .collect::<Vec<_>>()
            .join("")
    }
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does (the model reads this).
    pub description: String,
    /// Its arguments, as a JSON Schema.
    pub parameters: Value,
}

impl Tool {
    /// A tool with a hand-written schema.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Tool { name: name.into(), description: description.into(), parameters }
    }

    /// A tool whose arguments are the Rust type `T`.
    pub fn of<T: schemars::JsonSchema>(name: impl Into<String>, description: impl Into<String>) -> Self {
        Tool::new(name, description, crate::structured::schema_of::<T>())
    }
}

/// Whether (and which) tools the model must call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool.
    None,
    /// Some tool.
    Required,
    /// This tool.
    Tool(String),
}

/// The shape of the model's reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object.
    Json,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// The schema.
        schema: Value,
        /// Ask the provider to enforce it exactly, where it can.
        strict: bool,
    },
}

/// A request to a chat model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// Whether it must call one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sequences that end the reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A seed, for providers that make sampling repeatable with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The shape of the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
}

impl ChatRequest {
    /// A request with these messages.
    pub fn new(messages: impl IntoIterator<Item = Message>) -> Self {
        ChatRequest { messages: messages.into_iter().collect(), ..ChatRequest::default() }
    }

    /// Adds a message.
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Sets whether a tool must be called.
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }

    /// Sets the temperature.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Sets top_p.
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }

    /// Sets the most tokens to generate.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Adds a stop sequence.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the reply's shape.
    pub fn response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// The system instructions, joined (for providers that take them apart from the messages).
    pub(crate) fn system_text(&self) -> Option<String> {
        let parts: Vec<String> =
            self.messages.iter().filter(|m| m.role == Role::System).map(Message::text_content).collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    /// The sampling parameters and options, for events.
    pub(crate) fn params(&self) -> Value {
        let mut p = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                p.insert(k.to_string(), v);
            }
        };
        put("temperature", serde_json::json!(self.temperature));
        put("top_p", serde_json::json!(self.top_p));
        put("max_tokens", serde_json::json!(self.max_tokens));
        put("seed", serde_json::json!(self.seed));
        if !self.stop.is_empty() {
            put("stop", serde_json::json!(self.stop));
        }
        if !self.tools.is_empty() {
            put("tools", serde_json::json!(self.tools.iter().map(|t| &t.name).collect::<Vec<_>>()));
        }
        if let Some(choice) = &self.tool_choice {
            put("tool_choice", serde_json::json!(choice));
        }
        match &self.response_format {
            Some(ResponseFormat::Json) => put("response_format", serde_json::json!("json")),
            Some(ResponseFormat::JsonSchema { name, .. }) => put("response_format", serde_json::json!(name)),
            _ => {}
        }
        put("messages", serde_json::json!(self.messages.len()));
        Value::Object(p)
    }
}

impl From<&str> for ChatRequest {
    fn from(prompt: &str) -> Self {
        ChatRequest::new([Message::user(prompt)])
    }
}

impl From<String> for ChatRequest {
    fn from(prompt: String) -> Self {
        ChatRequest::new([Message::user(prompt)])
    }
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It finished (or hit a stop sequence).
    Stop,
    /// It hit the token limit.
    Length,
    /// It asked for tool calls.
    ToolCalls,
    /// The provider's filter stopped it.
    ContentFilter,
    /// Anything else, as the provider named it.
    Other(String),
}

impl FinishReason {
    /// The reason as text (`stop`, `length`, ...).
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => s,
        }
    }
}

/// A model's reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The text.
    pub text: String,
    /// Tool calls the model asked for.
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
    /// Tokens used.
    pub usage: TokenUsage,
    /// The provider's id of the response.
    pub id: Option<String>,
    /// The model that answered.
    pub model: String,
}

impl ChatResponse {
    /// The reply as an assistant message (to continue the conversation).
    pub fn message(&self) -> Message {
        Message::assistant_tool_calls(self.text.clone(), self.tool_calls.clone())
    }
}
