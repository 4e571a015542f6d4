//! Webhooks: when a run this server drives finishes, fails, pauses for feedback or is cancelled,
//! a JSON payload is POSTed to the configured URL, signed with HMAC-SHA256 and retried with
//! exponential backoff ([`Webhook`]); a receiver checks the signature with [`verify_signature`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use crewflow_core::RunId;
use crewflow_core::persist::{NewWebhook, RunStore};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::error::ServerError;
use crate::live::Ended;

/// The header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "crewflow-signature";

/// How far a signature's timestamp may be from the receiver's clock, by default, in
/// [`verify_signature`]: 5 minutes (a captured request replayed later is refused).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Where to send webhooks, the secret they are signed with, and how hard to try
/// ([`Server::webhook`](crate::Server::webhook)).
///
/// Each event is one `POST` of a JSON body
/// `{"id", "type", "created_at", "data"}`: `type` is `run.finished`, `run.failed`, `run.paused` or
/// `run.cancelled`; `data` is the run as `POST /flows/{flow}/runs?wait=true` answers it
/// (`run_id`, `flow`, `status`, and `output`, `error` or `feedback`). Headers:
/// `crewflow-signature: t=<unix seconds>,v1=<hex>` where `<hex>` is HMAC-SHA256 of
/// `"<t>.<body>"` under the secret; `crewflow-event: <type>`; `crewflow-delivery: <id>` (the same
/// on every attempt, so a receiver can drop a repeat).
///
/// A connection error, a timeout or a non-2xx answer is tried again after `first_retry`, then
/// twice as long each time (at most 10 minutes), up to `attempts` tries in all; each attempt is
/// signed anew (a fresh timestamp). Events are kept in the run store until delivered (or given
/// up), so a restart loses none and servers sharing the store send each once (at least once:
/// receivers drop repeats by `crewflow-delivery`).
///
/// ```
/// use std::time::Duration;
/// use crewflow_server::Webhook;
/// let hook = Webhook::new("https://hooks.example.com/crewflow", "whsec_5f1c9a0e7b2d4c83")?
///     .attempts(6)                                  // 1 + 5 retries (the default)
///     .first_retry(Duration::from_secs(2))          // then 4 s, 8 s, 16 s, 32 s
///     .timeout(Duration::from_secs(10));            // per attempt
/// # Ok::<(), crewflow_server::ServerError>(())
/// ```
#[derive(Clone)]
pub struct Webhook {
    url: String,
    secret: Arc<[u8]>,
    attempts: u32,
    first_retry: Duration,
    timeout: Duration,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<hidden>")
            .field("attempts", &self.attempts)
            .field("first_retry", &self.first_retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Webhook {
    /// Posts to `url` (`http://` or `https://`), signing with `secret` (at least 16 bytes: the
    /// receiver keeps the same secret to check signatures).
    pub fn new(url: &str, secret: impl AsRef<[u8]>) -> Result<Self, ServerError> {
        let url = url.trim();
        let scheme_ok =
            url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).is_some_and(|r| !r.is_empty());
        if !scheme_ok {
            return Err(ServerError::BadWebhook {
                problem: format!("`{url}` is not an http:// or https:// URL; give the receiver's full URL"),
            });
        }
        let secret = secret.as_ref();
        if secret.len() < 16 {
            return Err(ServerError::BadWebhook {
                problem: format!(
                    "the secret is {} bytes; give at least 16 random bytes (say `openssl rand -hex 32`)",
                    secret.len()
                ),
            });
        }
        Ok(Webhook {
            url: url.to_string(),
            secret: Arc::from(secret),
            attempts: 6,
            first_retry: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        })
    }

    /// How many tries in all, the first included (default 6; at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait before the first retry (default 2 s); each later wait doubles, up to 10 minutes.
    pub fn first_retry(mut self, delay: Duration) -> Self {
        self.first_retry = delay;
        self
    }

    /// How long one attempt may take before it counts as failed (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The value of the [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" under secret>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex(&mac(secret, timestamp, body).finalize().into_bytes()))
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this never fails.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Why [`verify_signature`] refused a webhook.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("the crewflow-signature header is not `t=<unix seconds>,v1=<hex>`: {0}")]
    Malformed(String),
    /// No `v1` signature matches the body under the secret: the body was changed, or signed
    /// with another secret.
    #[error("no v1 signature matches the body under this secret: the body was changed or signed with another secret")]
    Mismatch,
    /// The timestamp is further from now than the tolerance: possibly a replay.
    #[error(
        "the signature's timestamp is {age_seconds} s from now, over the tolerance of {tolerance_seconds} s: a replayed or very late delivery (check the clocks if every delivery is refused)"
    )]
    Stale {
        /// How far the timestamp is from now.
        age_seconds: u64,
        /// The tolerance.
        tolerance_seconds: u64,
    },
}

/// Checks a webhook as a receiver gets it: `header` is the `crewflow-signature` header, `body`
/// the raw body (the bytes as received, before any JSON parsing), `tolerance` how far the
/// signed timestamp may be from this machine's clock ([`DEFAULT_TOLERANCE`]). The comparison
/// takes constant time.
///
/// ```
/// use crewflow_server::{DEFAULT_TOLERANCE, sign, verify_signature};
/// let secret = b"whsec_0123456789abcdef";
/// let body = br#"{"type":"run.finished"}"#;
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
/// let header = sign(secret, now, body);
/// assert!(verify_signature(secret, &header, body, DEFAULT_TOLERANCE).is_ok());
/// assert!(verify_signature(secret, &header, br#"{"type":"run.failed"}"#, DEFAULT_TOLERANCE).is_err());
/// ```
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], tolerance: Duration) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<u64>().map_err(|_| SignatureError::Malformed(format!("t is `{t}`")))?);
            }
            Some(("v1", v)) => signatures.push(v),
            // Other schemes (a later v2) are skipped, as Stripe's receivers do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| SignatureError::Malformed("no t=".into()))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1=".into()));
    }
    let expected = mac(secret, timestamp, body);
    let matched = signatures.iter().filter_map(|s| unhex(s)).any(|bytes| expected.clone().verify_slice(&bytes).is_ok());
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let age = now.abs_diff(timestamp);
    if age > tolerance.as_secs() {
        return Err(SignatureError::Stale { age_seconds: age, tolerance_seconds: tolerance.as_secs() });
    }
    Ok(())
}

/// Sends the webhooks of one server (one tenant): each event is kept in the run store until
/// it is delivered or given up ([`RunStore::queue_webhook`]), so a restart loses none and
/// several servers on one store deliver each once; a store that keeps no webhooks has them
/// delivered from memory.
pub(crate) struct Notifier {
    hook: Webhook,
    client: reqwest::Client,
    store: Arc<dyn RunStore>,
    tenant: String,
    /// Wakes the delivery loop when an event is queued.
    wake: Arc<Notify>,
}

impl Notifier {
    /// The notifier, and its delivery loop on the current runtime (none without one: events
    /// are then delivered from memory as they come); the loop stops with the notifier.
    pub fn start(hook: Webhook, store: Arc<dyn RunStore>, tenant: String) -> Arc<Self> {
        crewflow_llm::install_crypto_provider(); // reqwest is built without its own TLS provider
        let me = Arc::new(Notifier { hook, client: reqwest::Client::new(), store, tenant, wake: Arc::default() });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (weak, wake) = (Arc::downgrade(&me), me.wake.clone());
            let poll = me.hook.first_retry.clamp(Duration::from_millis(10), Duration::from_secs(1));
            runtime.spawn(async move {
                loop {
                    let Some(me) = weak.upgrade() else { return };
                    me.deliver_due().await;
                    drop(me);
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(poll) => {}
                    }
                }
            });
        }
        me
    }

    /// Sends the event of a run's end, in the background; nothing for an answer or a resume
    /// that was refused (the run did not move).
    pub fn ended(self: &Arc<Self>, run_id: RunId, flow: &str, ended: &Ended) {
        let kind = match ended {
            Ended::Ok(outcome) if outcome.paused.is_some() => "run.paused",
            Ended::Ok(_) => "run.finished",
            Ended::Err { refused: true, .. } => return,
            Ended::Err { cancelled: true, .. } => "run.cancelled",
            // The store refused to record the run at all: there is no run to tell about.
            Ended::Err { status: StatusCode::SERVICE_UNAVAILABLE, .. } => return,
            Ended::Err { .. } => "run.failed",
        };
        let (_, data) = crate::routes::outcome_json(run_id, flow, ended);
        let me = self.clone();
        tokio::spawn(async move { me.queue(kind, data).await });
    }

    /// Keeps the event `kind` with `data` in the store for the delivery loop (or, with a store
    /// that keeps no webhooks, delivers it from memory); returns once it is kept or delivered.
    pub async fn queue(&self, kind: &str, data: serde_json::Value) {
        let id = RunId::new().to_string();
        let payload = json!({
            "id": id,
            "type": kind,
            "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        });
        let event = NewWebhook { id, tenant: self.tenant.clone(), event: kind.to_string(), body: payload.to_string() };
        match self.store.queue_webhook(&event).await {
            Ok(()) => self.wake.notify_one(),
            // A store that keeps no webhooks (or does not answer now): from memory.
            Err(_) => self.deliver_from_memory(&event).await,
        }
    }

    /// Delivers the due events of this tenant kept in the store, a batch at a time, until none
    /// is due.
    pub async fn deliver_due(&self) {
        // Longer than an attempt can take: another server takes an event over only when the
        // one that claimed it stopped.
        let lease = self.hook.timeout + Duration::from_secs(5);
        loop {
            let Ok(batch) = self.store.claim_webhooks(&self.tenant, 16, lease).await else { return };
            if batch.is_empty() {
                return;
            }
            let posts = batch.into_iter().map(|w| async move {
                let delivered = self.post(&w.event, &w.id, &w.body, w.attempts).await;
                let retry_at = (!delivered && w.attempts < self.hook.attempts)
                    .then(|| chrono::Utc::now() + self.backoff(w.attempts));
                // Not settled (the store is down): the claim lapses and it is tried again.
                let _ = self.store.settle_webhook(&w.id, retry_at).await;
            });
            futures::future::join_all(posts).await;
        }
    }

    /// The wait after attempt `attempt` (1-based): `first_retry`, doubling, at most 10 minutes.
    fn backoff(&self, attempt: u32) -> chrono::TimeDelta {
        let wait = self.hook.first_retry.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(MAX_WAIT);
        chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::MAX)
    }

    /// Posts until a 2xx answer or the attempts run out, from memory.
    async fn deliver_from_memory(&self, event: &NewWebhook) {
        let mut wait = self.hook.first_retry;
        for attempt in 1..=self.hook.attempts {
            if self.post(&event.event, &event.id, &event.body, attempt).await {
                return;
            }
            if attempt < self.hook.attempts {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(MAX_WAIT);
            }
        }
    }

    /// One attempt, signed now: whether the receiver answered 2xx.
    async fn post(&self, kind: &str, delivery: &str, body: &str, attempt: u32) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let sent = self
            .client
            .post(&self.hook.url)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.hook.secret, now, body.as_bytes()))
            .header("crewflow-event", kind)
            .header("crewflow-delivery", delivery)
            .header("crewflow-attempt", attempt.to_string())
            .timeout(self.hook.timeout)
            .body(body.to_string())
            .send()
            .await;
        sent.is_ok_and(|r| r.status().is_success())
    }
}

/// The longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(600);
