//! HTTP for the providers: sending with retries, and turning error replies into [`LlmError`]s.

use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{LlmError, excerpt};

/// When and how often a failed call is tried again: on 429, 5xx (and 529) and connection
/// failures, with exponential backoff and full jitter, honouring `Retry-After`; never on
/// other 4xx.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// The first backoff's upper bound; it doubles each attempt.
    pub base_delay: Duration,
    /// The largest backoff, and the longest `Retry-After` waited for: a server asking for
    /// a longer pause gets no retry, and the caller gets the error with its `retry_after`
    /// (retrying sooner than asked would only fail again).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_retries: 3, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy { max_retries: 0, ..RetryPolicy::default() }
    }

    /// The wait before retry number `attempt` (from 0), or `None` when the server asked
    /// for a longer pause than this policy waits.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if let Some(after) = retry_after {
            return (after <= self.max_delay).then_some(after);
        }
        let cap = self.base_delay.saturating_mul(1u32 << attempt.min(16)).min(self.max_delay);
        Some(Duration::from_micros(fastrand::u64(0..=u64::try_from(cap.as_micros()).unwrap_or(u64::MAX))))
    }
}

/// The HTTP client a provider uses.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub client: reqwest::Client,
    pub retry: RetryPolicy,
    /// The limit for a whole reply (for a stream: until its headers arrive).
    pub timeout: Duration,
}

impl Http {
    pub fn new(timeout: Duration) -> Self {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Http { client, retry: RetryPolicy::default(), timeout }
    }

    /// Sends a request built by `build` (called again for each attempt) and returns the
    /// response once it is a success, retrying transient failures.
    pub async fn send(
        &self,
        provider: &'static str,
        url: &str,
        build: impl Fn() -> RequestBuilder,
        streaming: bool,
    ) -> Result<Response, LlmError> {
        let mut attempt = 0;
        loop {
            let request = build();
            let request = if streaming { request } else { request.timeout(self.timeout) };
            let sent = tokio::time::timeout(self.timeout, request.send()).await;
            let (error, retry_after) = match sent {
                Err(_) => (LlmError::Timeout { provider, timeout: self.timeout }, None),
                Ok(Err(e)) if e.is_timeout() => (LlmError::Timeout { provider, timeout: self.timeout }, None),
                Ok(Err(e)) => (LlmError::Network { provider, url: url.to_string(), message: error_chain(&e) }, None),
                Ok(Ok(response)) if response.status().is_success() => return Ok(response),
                Ok(Ok(response)) => {
                    let retry_after = retry_after(&response);
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    (classify(provider, status, &body, retry_after), retry_after)
                }
            };
            if !error.is_transient() || attempt >= self.retry.max_retries {
                return Err(error);
            }
            let Some(delay) = self.retry.delay(attempt, retry_after) else { return Err(error) };
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Sends and parses a JSON reply.
    pub async fn json<T: DeserializeOwned>(
        &self,
        provider: &'static str,
        url: &str,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, LlmError> {
        let response = self.send(provider, url, build, false).await?;
        let body = response.text().await.map_err(|e| {
            if e.is_timeout() {
                LlmError::Timeout { provider, timeout: self.timeout }
            } else {
                LlmError::Network { provider, url: url.to_string(), message: error_chain(&e) }
            }
        })?;
        parse(provider, &body)
    }
}

/// Parses a provider's JSON, keeping the raw text in the error.
pub(crate) fn parse<T: DeserializeOwned>(provider: &'static str, body: &str) -> Result<T, LlmError> {
    serde_json::from_str(body).map_err(|e| LlmError::Protocol { provider, message: e.to_string(), raw: excerpt(body) })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `retry-after-ms` (OpenAI), or `retry-after` in seconds or as an HTTP date.
fn retry_after(response: &Response) -> Option<Duration> {
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.max(0.0)));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// Turns an error reply into the matching [`LlmError`].
pub(crate) fn classify(
    provider: &'static str,
    status: StatusCode,
    body: &str,
    retry_after: Option<Duration>,
) -> LlmError {
    let message = provider_message(body);
    let code = status.as_u16();
    match code {
        401 | 403 => LlmError::Auth { provider, status: code, message },
        429 => LlmError::RateLimited { provider, retry_after, message },
        408 => LlmError::Server { provider, status: code, message },
        400..=499 if too_long(&message, body) => LlmError::ContextTooLong { provider, message },
        400..=499 => LlmError::BadRequest { provider, status: code, message },
        _ => LlmError::Server { provider, status: code, message },
    }
}

/// The message in an error body, whichever provider's shape it has.
fn provider_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return excerpt(body.trim()) };
    let v = match &v {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        _ => v,
    };
    let found = v
        .pointer("/error/message")
        .or_else(|| v.get("error").filter(|e| e.is_string()))
        .or_else(|| v.get("message"))
        .or_else(|| v.get("detail"))
        .and_then(Value::as_str);
    match found {
        Some(m) => m.to_string(),
        None => excerpt(body.trim()),
    }
}

fn too_long(message: &str, body: &str) -> bool {
    let m = message.to_lowercase();
    body.contains("context_length_exceeded")
        || [
            "context length",
            "context window",
            "prompt is too long",
            "too many tokens",
            "maximum number of tokens",
            "exceeds the maximum",
        ]
        .iter()
        .any(|needle| m.contains(needle))
}

/// Reads `null` as the default (servers send `"tool_calls": null` where the field is a list).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_built_on_the_ring_provider() {
        // reqwest is built without a provider: without the install, building panics.
        let _http = Http::new(Duration::from_secs(1));
        let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        assert!(!provider.cipher_suites.is_empty());
    }

    #[test]
    fn errors_are_classified_with_the_providers_message() {
        let body = r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","code":"context_length_exceeded"}}"#;
        assert!(matches!(classify("openai", StatusCode::BAD_REQUEST, body, None), LlmError::ContextTooLong { .. }));
        let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        match classify("anthropic", StatusCode::from_u16(529).unwrap(), body, None) {
            LlmError::Server { status: 529, message, .. } => assert_eq!(message, "Overloaded"),
            other => panic!("{other:?}"),
        }
        let body = r#"[{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT"}}]"#;
        assert!(
            matches!(classify("gemini", StatusCode::BAD_REQUEST, body, None), LlmError::BadRequest { ref message, .. } if message == "API key not valid.")
        );
        assert!(
            matches!(classify("ollama", StatusCode::NOT_FOUND, r#"{"error":"model 'x' not found"}"#, None), LlmError::BadRequest { ref message, .. } if message == "model 'x' not found")
        );
        assert!(matches!(classify("openai", StatusCode::UNAUTHORIZED, "nope", None), LlmError::Auth { .. }));
    }

    #[test]
    fn backoff_grows_jitters_and_honours_retry_after() {
        let p =
            RetryPolicy { max_retries: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for attempt in 0..6 {
            let cap = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(1));
            assert!(p.delay(attempt, None).unwrap() <= cap);
        }
        assert_eq!(p.delay(0, Some(Duration::from_millis(250))), Some(Duration::from_millis(250)));
        assert_eq!(p.delay(0, Some(Duration::from_secs(90))), None, "longer than the policy waits: give up");
    }
}
