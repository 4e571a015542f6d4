//! How the server guards itself against hostile or careless clients: body size and read time,
//! request time, CORS ([`ServerConfig`]); and per-key request rates ([`RateLimit`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use futures::StreamExt;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::{ApiError, ServerError};

/// Limits and CORS for a [`Server`](crate::Server) ([`Server::config`](crate::Server::config))
/// or for all tenants ([`Tenants::config`](crate::Tenants::config)).
///
/// ```
/// use std::time::Duration;
/// use crewflow_server::ServerConfig;
/// let config = ServerConfig::new()
///     .max_body_bytes(256 * 1024)
///     .body_timeout(Duration::from_secs(5))
///     .request_timeout(Duration::from_secs(60))
///     .cors_origins(["https://app.example.com"])?;
/// # Ok::<(), crewflow_server::ServerError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// Empty: CORS is off (no CORS headers; browsers refuse cross-origin calls).
    cors_origins: Vec<HeaderValue>,
    cors_any: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 2 << 20,
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            cors_origins: Vec::new(),
            cors_any: false,
        }
    }
}

impl ServerConfig {
    /// The defaults: bodies up to 2 MiB read within 30 s, requests answered within 300 s, no
    /// CORS.
    pub fn new() -> Self {
        ServerConfig::default()
    }

    /// The largest request body (and WebSocket message) taken, in bytes (default 2 MiB). A
    /// larger one is refused with `413 body_too_large` before it is read whole: a declared
    /// `Content-Length` over the limit is refused at once, a chunked body once it passes it.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How long a client may take to send its whole body (default 30 s), so slow senders
    /// (slowloris-style) are cut off with `408 body_timeout` instead of holding a connection
    /// and a buffer. Counted from when the request's head has arrived.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// How long a request may take until its answer starts (default 300 s): past it the client
    /// gets `504 request_timeout`. What the request started goes on (a run, a turn); streams
    /// (SSE, WebSocket) are not cut, since their answer starts at once. Keep it above the
    /// longest `?wait=true` run or REST turn you expect, or have clients not wait.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Lets pages from these origins (`https://app.example.com`, scheme, host and port, no
    /// path) call the server from a browser; `"*"` lets any origin. Off by default: no CORS
    /// headers are sent, so browsers refuse cross-origin calls. Preflight requests
    /// (`OPTIONS`) are answered before the API key is checked, as browsers send them without
    /// one; the key is still needed for the call itself.
    pub fn cors_origins<I, O>(mut self, origins: I) -> Result<Self, ServerError>
    where
        I: IntoIterator<Item = O>,
        O: AsRef<str>,
    {
        for origin in origins {
            let origin = origin.as_ref().trim();
            if origin == "*" {
                self.cors_any = true;
                continue;
            }
            let bad = || ServerError::BadCorsOrigin { origin: origin.to_string() };
            let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
            if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
                return Err(bad());
            }
            self.cors_origins.push(HeaderValue::from_str(origin).map_err(|_| bad())?);
        }
        Ok(self)
    }

    /// CORS and the request timeout, around everything else (the API key check included).
    pub(crate) fn outer(&self, router: Router) -> Router {
        let timeout = self.request_timeout;
        let router = router.layer(axum::middleware::from_fn(move |req: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(response) => response,
                Err(_) => ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request took longer than this server's limit of {} s (ServerConfig::request_timeout); what it started goes on: GET /runs or GET /sessions/{{id}} shows it, and a long run is better started without ?wait=true",
                        timeout.as_secs_f64()
                    ),
                )
                .into_response(),
            }
        }));
        match self.cors() {
            Some(cors) => router.layer(cors),
            None => router,
        }
    }

    fn cors(&self) -> Option<CorsLayer> {
        let origin = if self.cors_any {
            AllowOrigin::any()
        } else if self.cors_origins.is_empty() {
            return None;
        } else {
            AllowOrigin::list(self.cors_origins.clone())
        };
        Some(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([Method::GET, Method::POST, Method::DELETE])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-api-key"),
                    HeaderName::from_static("last-event-id"),
                    HeaderName::from_static("idempotency-key"),
                ])
                .expose_headers([header::RETRY_AFTER])
                .max_age(Duration::from_secs(600)),
        )
    }

    /// Reads the body whole, within the size and time limits, before the handlers see it.
    pub(crate) fn bodies(&self, router: Router) -> Router {
        let limits = Arc::new(self.clone());
        router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let limits = limits.clone();
            async move {
                match limits.read_body(req).await {
                    Ok(req) => next.run(req).await,
                    Err(e) => {
                        let mut response = e.into_response();
                        // The rest of the body is not read: the connection cannot be reused.
                        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                        response
                    }
                }
            }
        }))
    }

    async fn read_body(&self, req: Request) -> Result<Request, ApiError> {
        let (parts, body) = req.into_parts();
        let max = self.max_body_bytes;
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut stream = body.into_data_stream();
        if declared.is_some_and(|len| len > max as u64) {
            linger(&mut stream).await;
            return Err(self.too_large());
        }
        let read = async {
            let mut buf = Vec::with_capacity(declared.map_or(0, |len| len as usize));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
                if buf.len() + chunk.len() > max {
                    drop(buf);
                    linger(&mut stream).await;
                    return Err(self.too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf)
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(buf)) => Ok(Request::from_parts(parts, Body::from(buf))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s, this server's limit (ServerConfig::body_timeout); send it at once",
                    self.body_timeout.as_secs_f64()
                ),
            )),
        }
    }

    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is over this server's limit of {} bytes; send less, or raise the limit with ServerConfig::max_body_bytes",
                self.max_body_bytes
            ),
        )
    }
}

/// How much of a refused body is read and thrown away before the refusal is sent, and for how
/// long. A client that is still writing when the server answers and closes gets a broken pipe
/// instead of the `413` (what reqwest and curl report), so the server reads on, discarding, as
/// nginx's lingering close does; a body past these bounds is cut off.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and discards what is left of a refused body, within [`LINGER_BYTES`] and [`LINGER_TIME`].
async fn linger(stream: &mut axum::body::BodyDataStream) {
    let drain = async {
        let mut read = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > LINGER_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// How many requests each API key may send ([`Tenants::rate_limit`](crate::Tenants::rate_limit)):
/// `requests` per `per`, as a token bucket holding up to `burst` (`requests` unless set), so a
/// key may spend its allowance in a burst and then goes at the steady rate. Past it a request
/// answers `429 rate_limited` with `Retry-After` (seconds), and does nothing.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Tokens added per second.
    pub(crate) per_second: f64,
    pub(crate) burst: f64,
    requests: u32,
    per: Duration,
}

impl RateLimit {
    /// `requests` per `per` (say 600 per minute); both must be above zero.
    pub fn new(requests: u32, per: Duration) -> Result<Self, ServerError> {
        if requests == 0 || per.is_zero() {
            return Err(ServerError::BadRateLimit { requests, per });
        }
        let per_second = f64::from(requests) / per.as_secs_f64();
        Ok(RateLimit { per_second, burst: f64::from(requests), requests, per })
    }

    /// How many requests a key may send at once after a quiet spell (at least 1).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = f64::from(burst.max(1));
        self
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} requests per {} s", self.requests, self.per.as_secs_f64())
    }
}

/// One key's bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl Bucket {
    pub(crate) fn full(limit: &RateLimit) -> Self {
        Bucket { tokens: limit.burst, at: std::time::Instant::now() }
    }

    /// Takes a token; or says how long until one is there.
    pub(crate) fn take(&mut self, limit: &RateLimit) -> Result<(), Duration> {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + refill).min(limit.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / limit.per_second))
        }
    }
}
