//! Errors: [`ServerError`] when a [`Server`](crate::Server) is set up wrongly, and the JSON
//! error every refused request answers with.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crewflow_core::Error;
use crewflow_core::{DurableError, FeedbackError, InputError};
use serde_json::json;

/// A server set up wrongly ([`Server::flow`](crate::Server::flow)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Two flows of the same name: requests name flows, so names must be unique.
    #[error("flow `{flow}` is registered twice; give one of them another name (FlowBuilder::rename)")]
    DuplicateFlow {
        /// The repeated name.
        flow: String,
    },
    /// The flow keeps its runs in no store: the server could not list, show or resume them.
    #[error(
        "flow `{flow}` keeps its runs in no store; build it with the server's store (FlowBuilder::store(store.clone()))"
    )]
    FlowWithoutStore {
        /// The flow.
        flow: String,
    },
    /// Two tenants of the same name ([`Tenants::tenant`](crate::Tenants::tenant)).
    #[error("tenant `{tenant}` is added twice; give each tenant one Server")]
    DuplicateTenant {
        /// The repeated name.
        tenant: String,
    },
    /// A key for a tenant that was not added ([`Tenants::key`](crate::Tenants::key)).
    #[error(
        "a key is given for tenant `{tenant}`, which has no Server; add it first with Tenants::tenant(\"{tenant}\", server)"
    )]
    UnknownTenant {
        /// The tenant.
        tenant: String,
    },
    /// A key hash that is not 64 hexadecimal digits ([`Tenants::key_sha256`](crate::Tenants::key_sha256)).
    #[error(
        "the key hash for tenant `{tenant}` is not a SHA-256 in hexadecimal (64 digits 0-9a-f); hash the key with `sha256sum`, or pass the key itself to Tenants::key"
    )]
    BadKeyHash {
        /// The tenant.
        tenant: String,
    },
    /// A tenant name an API key cannot be filed under ([`issue_api_key`](crate::issue_api_key)).
    #[error("`{tenant}` is not a tenant name for API keys: use 1 to 64 letters, digits, `-`, `_` or `.` (e.g. `acme`)")]
    BadTenantName {
        /// What was given (its first characters).
        tenant: String,
    },
    /// An API key's label with control characters or over 200 characters.
    #[error(
        "the API key's label `{label}` is too long or holds control characters; give at most 200 printable characters"
    )]
    BadKeyLabel {
        /// What was given (its first characters).
        label: String,
    },
    /// An API key's expiry that is zero, or too far to be a time.
    #[error("an API key must expire after a positive time a calendar can hold; give e.g. 90 days, or no expiry")]
    BadKeyExpiry,
    /// The store did not record the new API key ([`issue_api_key`](crate::issue_api_key)).
    #[error("the API key was not made: {source}")]
    KeyStore {
        /// The store's error.
        source: crewflow_core::BoxError,
    },
    /// A CORS origin that is not `scheme://host[:port]` ([`ServerConfig::cors_origins`](crate::ServerConfig::cors_origins)).
    #[error(
        "`{origin}` is not an origin; give it as a browser sends it: `https://app.example.com` or `http://localhost:3000` (scheme, host, port; no path), or `*` for any"
    )]
    BadCorsOrigin {
        /// What was given.
        origin: String,
    },
    /// A rate limit of no requests, or over no time ([`RateLimit::new`](crate::RateLimit::new)).
    #[error(
        "a rate limit of {requests} requests per {per:?} lets nothing through; give at least 1 request per a non-zero time"
    )]
    BadRateLimit {
        /// The requests given.
        requests: u32,
        /// The time given.
        per: std::time::Duration,
    },
    /// A webhook without a usable URL or secret ([`Webhook::new`](crate::Webhook::new)).
    #[error("the webhook cannot be used: {problem}")]
    BadWebhook {
        /// What is wrong, and what to give instead.
        problem: String,
    },
    /// The flow keeps its runs in another store than the server's.
    #[error(
        "flow `{flow}` keeps its runs in {flow_store}, not in the server's store ({server_store}); build it with FlowBuilder::store(<the server's store>.clone())"
    )]
    OtherStore {
        /// The flow.
        flow: String,
        /// The flow's store.
        flow_store: String,
        /// The server's store.
        server_store: String,
    },
}

/// A refused request: its status and the `{"error": {"code", "message"}}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// More fields of the error object (`running_turn_id`, ...).
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), detail: None }
    }

    /// The error object: `{"code", "message"}` and the detail's fields.
    pub fn body(&self) -> serde_json::Value {
        let mut body = json!({"code": self.code, "message": self.message});
        if let (Some(serde_json::Value::Object(extra)), serde_json::Value::Object(map)) = (&self.detail, &mut body) {
            map.extend(extra.clone());
        }
        body
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn store(e: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the run store did not answer: {e}; check that the database is up"),
        )
    }

    pub fn unknown_flow(flow: &str, known: &[String]) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_flow",
            format!("no flow `{flow}` is served here; GET /flows lists them ({})", known.join(", ")),
        )
    }

    pub fn unknown_run(run_id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no run `{run_id}` in the store; GET /runs lists them"),
        )
    }

    pub fn unknown_schedule(id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_schedule",
            format!("no schedule `{id}` here; GET /schedules lists them"),
        )
    }

    /// An engine error, with the status it deserves.
    pub fn engine(e: Error) -> Self {
        let (status, code) = match &e {
            Error::Input(InputError::UnknownInput { .. })
            | Error::Input(InputError::InvalidInput { .. })
            | Error::Input(InputError::InputsNotAnObject { .. }) => (StatusCode::BAD_REQUEST, "bad_inputs"),
            Error::Feedback(FeedbackError::UnmatchedFeedback { .. })
            | Error::Feedback(FeedbackError::FeedbackRequestNeeded { .. }) => (StatusCode::BAD_REQUEST, "bad_feedback"),
            Error::Durable(DurableError::UnknownRun { .. }) => (StatusCode::NOT_FOUND, "unknown_run"),
            Error::Feedback(FeedbackError::NotPaused { .. }) => (StatusCode::CONFLICT, "not_paused"),
            Error::Durable(DurableError::RunOwned(_))
            | Error::Durable(DurableError::AlreadyDriven { .. })
            | Error::Durable(DurableError::LeaseLost(_)) => (StatusCode::CONFLICT, "run_busy"),
            Error::Durable(DurableError::DefinitionChanged { .. })
            | Error::Durable(DurableError::RunOfAnotherFlow { .. }) => (StatusCode::CONFLICT, "other_definition"),
            Error::Durable(DurableError::Store { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Error::Cancelled { .. } => (StatusCode::OK, "cancelled"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "run_failed"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.body()}))).into_response()
    }
}
