//! Streamed replies: deltas as they arrive, put back together into a [`ChatResponse`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use crewflow_core::EventKind;
use crewflow_core::scope::StepScope;
use futures::{Stream, StreamExt};

use crate::error::LlmError;
use crate::types::{ChatResponse, FinishReason, TokenUsage, ToolCall};

/// What a provider's stream yields, before reassembly.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Delta {
    Text(String),
    /// A tool call begins (`id` and `name` may arrive in pieces for some providers).
    ToolStart {
        index: usize,
        id: Option<String>,
        name: Option<String>,
    },
    /// A piece of a tool call's arguments.
    ToolArgs {
        index: usize,
        args: String,
    },
    /// What the provider needs back with a tool call ([`ToolCall::signature`]).
    ToolSignature {
        index: usize,
        signature: String,
    },
    /// Usage so far; later values replace earlier non-zero fields.
    Usage(TokenUsage),
    Finish(FinishReason),
    Id(String),
    Model(String),
}

pub(crate) type DeltaStream = Pin<Box<dyn Stream<Item = Result<Delta, LlmError>> + Send>>;

/// What a [`ChatStream`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// Text added to the reply.
    Text(String),
    /// A piece of a tool call: its id and name when it starts, then pieces of its arguments.
    ToolCall {
        /// Which tool call of the reply.
        index: usize,
        /// Its id, when it starts.
        id: Option<String>,
        /// Its name, when it starts.
        name: Option<String>,
        /// A piece of its arguments (JSON text).
        arguments: String,
    },
    /// The whole reply, put back together, with the usage: always the last event.
    Done(ChatResponse),
}

/// A tool call being put together: id, name, arguments, signature.
type PartialCall = (String, String, String, Option<String>);

/// Puts deltas back together.
#[derive(Default)]
pub(crate) struct Assembler {
    text: String,
    calls: Vec<PartialCall>,
    usage: TokenUsage,
    finish: Option<FinishReason>,
    id: Option<String>,
    model: String,
}

impl Assembler {
    pub fn new(model: &str) -> Self {
        Assembler { model: model.to_string(), ..Assembler::default() }
    }

    pub fn add(&mut self, delta: Delta) -> Option<StreamEvent> {
        match delta {
            Delta::Text(t) if t.is_empty() => None,
            Delta::Text(t) => {
                self.text.push_str(&t);
                Some(StreamEvent::Text(t))
            }
            Delta::ToolStart { index, id, name } => {
                let call = self.call(index);
                if let Some(id) = &id {
                    call.0.push_str(id);
                }
                if let Some(name) = &name {
                    call.1.push_str(name);
                }
                Some(StreamEvent::ToolCall { index, id, name, arguments: String::new() })
            }
            Delta::ToolArgs { index, args } => {
                self.call(index).2.push_str(&args);
                Some(StreamEvent::ToolCall { index, id: None, name: None, arguments: args })
            }
            Delta::ToolSignature { index, signature } => {
                self.call(index).3 = Some(signature);
                None
            }
            Delta::Usage(u) => {
                let merge = |old: &mut u64, new: u64| {
                    if new > 0 {
                        *old = new;
                    }
                };
                merge(&mut self.usage.prompt_tokens, u.prompt_tokens);
                merge(&mut self.usage.completion_tokens, u.completion_tokens);
                merge(&mut self.usage.cached_tokens, u.cached_tokens);
                None
            }
            Delta::Finish(f) => {
                self.finish = Some(f);
                None
            }
            Delta::Id(id) => {
                self.id = Some(id);
                None
            }
            Delta::Model(m) => {
                self.model = m;
                None
            }
        }
    }

    fn call(&mut self, index: usize) -> &mut PartialCall {
        while self.calls.len() <= index {
            self.calls.push(Default::default());
        }
        &mut self.calls[index]
    }

    pub fn finish(&mut self) -> ChatResponse {
        let tool_calls: Vec<ToolCall> = std::mem::take(&mut self.calls)
            .into_iter()
            .enumerate()
            .filter(|(_, (_, name, _, _))| !name.is_empty())
            .map(|(i, (id, name, arguments, signature))| ToolCall {
                id: if id.is_empty() { format!("call_{i}") } else { id },
                name,
                arguments,
                signature,
            })
            .collect();
        let finish_reason = match (&self.finish, tool_calls.is_empty()) {
            (Some(f), _) => Some(f.clone()),
            (None, false) => Some(FinishReason::ToolCalls),
            (None, true) => None,
        };
        ChatResponse {
            text: std::mem::take(&mut self.text),
            tool_calls,
            finish_reason,
            usage: self.usage,
            id: self.id.take(),
            model: std::mem::take(&mut self.model),
        }
    }
}

/// Reports a call to the run it is made from (if any).
pub(crate) struct CallReport {
    pub scope: Option<StepScope>,
    pub call: u64,
    pub provider: Arc<str>,
    pub model: Arc<str>,
    pub started: Instant,
    pub done: bool,
}

impl CallReport {
    pub fn start(provider: &'static str, model: &str, params: serde_json::Value, stream: bool) -> Self {
        let scope = crewflow_core::scope::current();
        let (provider, model): (Arc<str>, Arc<str>) = (Arc::from(provider), Arc::from(model));
        let call = scope.as_ref().map(|s| s.next_call()).unwrap_or(0);
        if let Some(s) = &scope {
            let (p, m) = (provider.clone(), model.clone());
            s.emit(|| EventKind::LlmCallStarted { call, provider: p, model: m, params, stream });
        }
        CallReport { scope, call, provider, model, started: Instant::now(), done: false }
    }

    pub fn chunk(&self, text: &str) {
        if let Some(s) = &self.scope
            && s.observed()
        {
            let call = self.call;
            s.emit(|| EventKind::LlmChunk { call, text: text.to_string() });
        }
    }

    pub fn finished(&mut self, response: &ChatResponse) {
        self.done = true;
        let Some(s) = &self.scope else { return };
        s.add_usage(&response.usage);
        let (call, provider) = (self.call, self.provider.clone());
        let model: Arc<str> =
            if response.model.is_empty() { self.model.clone() } else { Arc::from(response.model.as_str()) };
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        s.emit(|| EventKind::LlmCallFinished {
            call,
            provider,
            model,
            finish_reason: response.finish_reason.as_ref().map(|f| f.as_str().to_string()),
            usage: response.usage,
            response_id: response.id.clone(),
            latency_ms,
        });
        for tool in &response.tool_calls {
            s.emit(|| EventKind::ToolCallRequested {
                call,
                id: tool.id.clone(),
                name: tool.name.clone(),
                arguments: tool.arguments.clone(),
            });
        }
    }

    pub fn failed(&mut self, error: &str) {
        self.done = true;
        let Some(s) = &self.scope else { return };
        let (call, provider, model) = (self.call, self.provider.clone(), self.model.clone());
        let error: Arc<str> = Arc::from(error);
        s.emit(|| EventKind::LlmCallFailed { call, provider, model, error });
    }
}

impl Drop for CallReport {
    fn drop(&mut self) {
        if !self.done {
            self.failed("cancelled: the reply was dropped before it finished");
        }
    }
}

/// A streamed reply. Iterate it for [`StreamEvent`]s (the last is [`StreamEvent::Done`]), or
/// call [`ChatStream::response`] to wait for the whole reply. Dropping it cancels the
/// request.
pub struct ChatStream {
    inner: DeltaStream,
    assembler: Assembler,
    report: CallReport,
    ended: bool,
}

impl ChatStream {
    pub(crate) fn new(inner: DeltaStream, model: &str, report: CallReport) -> Self {
        ChatStream { inner, assembler: Assembler::new(model), report, ended: false }
    }

    /// Waits for the rest of the reply and returns it whole.
    pub async fn response(mut self) -> Result<ChatResponse, LlmError> {
        while let Some(event) = self.next().await {
            if let StreamEvent::Done(response) = event? {
                return Ok(response);
            }
        }
        Err(LlmError::Protocol {
            provider: "stream",
            message: "the stream ended without a reply".into(),
            raw: String::new(),
        })
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, LlmError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(delta))) => {
                    if let Some(event) = this.assembler.add(delta) {
                        if let StreamEvent::Text(t) = &event {
                            this.report.chunk(t);
                        }
                        return Poll::Ready(Some(Ok(event)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.report.failed(&e.to_string());
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    let response = this.assembler.finish();
                    this.report.finished(&response);
                    return Poll::Ready(Some(Ok(StreamEvent::Done(response))));
                }
            }
        }
    }
}

/// Splits a byte stream into lines (for newline-delimited JSON), whatever the chunk
/// boundaries.
pub(crate) fn lines<S>(bytes: S) -> impl Stream<Item = Result<String, reqwest::Error>> + Send
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    futures::stream::unfold((Box::pin(bytes), Vec::<u8>::new(), false), |(mut bytes, mut buf, mut eof)| async move {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                return Some((Ok(text), (bytes, buf, eof)));
            }
            if eof {
                if buf.is_empty() {
                    return None;
                }
                let text = String::from_utf8_lossy(&std::mem::take(&mut buf)).trim().to_string();
                return (!text.is_empty()).then_some((Ok(text), (bytes, buf, eof)));
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some((Err(e), (bytes, buf, true))),
                None => eof = true,
            }
        }
    })
}
