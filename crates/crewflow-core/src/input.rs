//! Asking a person (or any other source) for free-form input from inside a step: [`Cx::ask`].
//!
//! The flow's [`InputProvider`] answers. Waiting never blocks the async runtime, a timeout is a
//! typed [`Answer::TimedOut`] (not a silent `None`), and every question and answer is an
//! event and an entry of the run's input history.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StepError;
use crate::id::RunId;

/// A question a step asks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputRequest {
    /// The run asking.
    pub run_id: RunId,
    /// The step asking.
    pub step: Arc<str>,
    /// The question.
    pub message: String,
    /// Anything the provider should know (a channel, a user id, ...).
    pub metadata: Option<Value>,
}

/// An answer from a provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputResponse {
    /// The answer's text (`""` when the person just pressed Enter).
    pub text: String,
    /// Anything the provider reports along with it.
    pub metadata: Option<Value>,
}

impl From<&str> for InputResponse {
    fn from(text: &str) -> Self {
        InputResponse { text: text.to_string(), metadata: None }
    }
}

impl From<String> for InputResponse {
    fn from(text: String) -> Self {
        InputResponse { text, metadata: None }
    }
}

/// What [`Cx::ask`](crate::Cx::ask) returns.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The provider answered.
    Given(InputResponse),
    /// The provider has no more input (end of input, a closed channel).
    Closed,
    /// Nobody answered within the timeout.
    TimedOut,
}

impl Answer {
    /// The answer's text, if there is one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Answer::Given(r) => Some(&r.text),
            Answer::Closed | Answer::TimedOut => None,
        }
    }
}

/// One question and its answer, kept in the run's input history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputRecord {
    /// The step that asked.
    pub step: Arc<str>,
    /// The question.
    pub message: String,
    /// The answer's text (`None` when it timed out or the input was closed).
    pub response: Option<String>,
    /// The metadata sent with the question.
    pub metadata: Option<Value>,
    /// The metadata the provider returned.
    pub response_metadata: Option<Value>,
    /// When the answer (or the timeout) came.
    pub at: DateTime<Utc>,
}

/// The future an [`InputProvider`] returns.
pub type InputFuture = Pin<Box<dyn Future<Output = Result<Option<InputResponse>, StepError>> + Send>>;

/// Answers questions asked with [`Cx::ask`](crate::Cx::ask). `Ok(None)` means no more input.
///
/// Closures `Fn(&InputRequest) -> Fut` are providers.
pub trait InputProvider: Send + Sync + 'static {
    /// Answers one question.
    fn request(&self, request: &InputRequest) -> InputFuture;
}

impl<F, Fut> InputProvider for F
where
    F: Fn(&InputRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<InputResponse>, StepError>> + Send + 'static,
{
    fn request(&self, request: &InputRequest) -> InputFuture {
        Box::pin(self(request))
    }
}

/// Asks on the terminal: prints the question and takes the next line of standard input (read by
/// one thread per process, so the runtime keeps running and a timed-out question leaves no
/// reader behind); end of input is [`Answer::Closed`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleInput;

impl InputProvider for ConsoleInput {
    fn request(&self, request: &InputRequest) -> InputFuture {
        let prompt = format!("{} ", request.message);
        Box::pin(async move {
            let line = crate::console::ask_line(&prompt)
                .await
                .map_err(|e| StepError::msg(format!("reading standard input failed: {e}")))?;
            Ok(line.map(InputResponse::from))
        })
    }
}

pub(crate) fn record(request: &InputRequest, answer: &Answer) -> InputRecord {
    let (response, response_metadata) = match answer {
        Answer::Given(r) => (Some(r.text.clone()), r.metadata.clone()),
        Answer::Closed | Answer::TimedOut => (None, None),
    };
    InputRecord {
        step: request.step.clone(),
        message: request.message.clone(),
        response,
        metadata: request.metadata.clone(),
        response_metadata,
        at: Utc::now(),
    }
}
