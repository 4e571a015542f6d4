//! API keys and tenants: each tenant is a [`Server`] of its own (its own stores), and a request
//! goes to the tenant its key belongs to. Isolation is by construction: another tenant's run
//! or session ids are simply not in the stores a request can reach, so they answer `404` like
//! ids that never existed, and lists and streams cannot show them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use crewflow_core::persist::RunStore;

use crate::config::{Bucket, RateLimit, ServerConfig};
use crate::error::{ApiError, ServerError};
use crate::keys::{DEFAULT_KEY_REFRESH, StoredKeys, sha256};
use crate::{Server, routes};

/// The tenants a server serves and the API keys that reach them, kept hashed (SHA-256): the
/// keys themselves are never stored, so a dump of the configuration or of memory does not give
/// them away. Serve it with [`tenant_router`].
///
/// ```
/// # fn demo(acme: crewflow_server::Server, globex: crewflow_server::Server) -> Result<(), crewflow_server::ServerError> {
/// use crewflow_server::{Tenants, tenant_router};
/// let tenants = Tenants::new()
///     .tenant("acme", acme)?
///     .tenant("globex", globex)?
///     .key("acme", "sk-acme-1")? // hashed here
///     .key_sha256("globex", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")?; // a hash from your config
/// let app = axum::Router::new().nest("/crewflow", tenant_router(tenants));
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Tenants {
    keys: HashMap<[u8; 32], String>,
    servers: HashMap<String, Server>,
    config: ServerConfig,
    rate_limit: Option<RateLimit>,
    /// `Tenants::page(false)`: `GET /` is no page (false by default: it is served).
    no_page: bool,
    /// Keys read from a store ([`Tenants::keys_from`]), besides those given here.
    key_store: Option<Arc<dyn RunStore>>,
    key_refresh: Option<std::time::Duration>,
}

impl fmt::Debug for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tenants: Vec<&String> = self.servers.keys().collect();
        tenants.sort();
        f.debug_struct("Tenants")
            .field("tenants", &tenants)
            .field("keys", &self.keys.len())
            .field("key_store", &self.key_store.as_ref().map(|s| s.describe()))
            .field("config", &self.config)
            .field("rate_limit", &self.rate_limit)
            .field("page", &!self.no_page)
            .finish()
    }
}

impl Tenants {
    /// No tenants yet.
    pub fn new() -> Self {
        Tenants::default()
    }

    /// Serves `server` (its flows, over its own stores) to the keys of tenant `name`. The
    /// limits of [`Tenants::config`] apply to it (its own [`Server::config`] is not used).
    pub fn tenant(mut self, name: &str, mut server: Server) -> Result<Self, ServerError> {
        if self.servers.contains_key(name) {
            return Err(ServerError::DuplicateTenant { tenant: name.to_string() });
        }
        // Its schedules are kept under its name, even in a store shared with other tenants.
        server.tenant = name.to_string();
        self.servers.insert(name.to_string(), server);
        Ok(self)
    }

    /// Body and request limits and CORS for every request ([`ServerConfig`]; its defaults
    /// otherwise). CORS and the request timeout apply before the key is checked; bodies are
    /// read only for requests with a known key, within the rate limit.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// How many requests each API key may send (each key its own allowance, whatever its
    /// tenant); none by default.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Whether `GET /` serves the web page (default true), without a key: the page holds no
    /// data and asks for the key. Off, `GET /` is a route like the others: `401` without a
    /// known key, `404 not_found` with one (each tenant's [`Server::page`] is turned off too).
    pub fn page(mut self, serve: bool) -> Self {
        self.no_page = !serve;
        self
    }

    /// Lets `api_key` reach tenant `tenant`; only its SHA-256 is kept.
    pub fn key(self, tenant: &str, api_key: &str) -> Result<Self, ServerError> {
        self.add(tenant, sha256(api_key))
    }

    /// Also lets in the keys kept in `store` ([`RunStore::list_api_keys`]; made with
    /// [`issue_api_key`](crate::issue_api_key) or `crewflow keys create`), each reaching its
    /// tenant — if that tenant is served here — until it is revoked. Every instance sharing
    /// the store sees a new key within a second and a revoked one within [`Tenants::key_refresh`]
    /// (docs/server.md, "Keys kept in the store"). While the store cannot be read, a key this
    /// instance has not checked recently answers `503 keys_unavailable`.
    pub fn keys_from(mut self, store: Arc<dyn RunStore>) -> Self {
        self.key_store = Some(store);
        self
    }

    /// How old this instance's copy of the stored keys ([`Tenants::keys_from`]) may get
    /// before a request reads them again: the longest a revoked key keeps working here.
    /// 5 s by default; `Duration::ZERO` reads the store on every request.
    pub fn key_refresh(mut self, every: std::time::Duration) -> Self {
        self.key_refresh = Some(every);
        self
    }

    /// Lets the key whose SHA-256 is `hex` (64 hexadecimal digits) reach tenant `tenant`: for
    /// configurations that keep only the hashes.
    pub fn key_sha256(self, tenant: &str, hex: &str) -> Result<Self, ServerError> {
        let bad = || ServerError::BadKeyHash { tenant: tenant.to_string() };
        if hex.len() != 64 {
            return Err(bad());
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        self.add(tenant, hash)
    }

    fn add(mut self, tenant: &str, hash: [u8; 32]) -> Result<Self, ServerError> {
        if !self.servers.contains_key(tenant) {
            return Err(ServerError::UnknownTenant { tenant: tenant.to_string() });
        }
        self.keys.insert(hash, tenant.to_string());
        Ok(self)
    }
}

/// The tenants as served: each tenant's routes, and each key's bucket.
struct Served {
    keys: HashMap<[u8; 32], String>,
    stored_keys: Option<StoredKeys>,
    routers: HashMap<String, Router>,
    rate_limit: Option<RateLimit>,
    /// One bucket per known key (unknown keys are refused before): bounded by the keys.
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

/// Why a request is not let in.
enum Refusal {
    /// No key, or no known key.
    Unknown,
    /// Over the key's rate, for this long.
    Over(std::time::Duration),
    /// The stored keys could not be read.
    KeysUnavailable,
}

impl Served {
    /// The router of the request's key's tenant, once the key's allowance has a request left.
    async fn admit(&self, headers: &HeaderMap) -> Result<Router, Refusal> {
        let key = bearer(headers).ok_or(Refusal::Unknown)?;
        let hash = sha256(key);
        let tenant = match (self.keys.get(&hash), &self.stored_keys) {
            (Some(tenant), _) => tenant.clone(),
            (None, Some(stored)) => {
                let served = |tenant: &str| self.routers.contains_key(tenant);
                stored.tenant_of(&hash, &served).await.map_err(|_| Refusal::KeysUnavailable)?.ok_or(Refusal::Unknown)?
            }
            (None, None) => return Err(Refusal::Unknown),
        };
        if let Some(limit) = &self.rate_limit {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            let bucket = buckets.entry(hash).or_insert_with(|| Bucket::full(limit));
            bucket.take(limit).map_err(Refusal::Over)?;
        }
        self.routers.get(&tenant).cloned().ok_or(Refusal::Unknown)
    }
}

/// The key a request carries: `Authorization: Bearer <key>`, or `X-Api-Key: <key>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::trim);
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The routes of [`router`](crate::router), each request served by the [`Server`] of the tenant its API key
/// belongs to. A request without a known key answers `401 unauthorized` (with
/// `WWW-Authenticate: Bearer`), whatever its path, so the routes tell nothing to a stranger —
/// but `GET /`, the web page, which holds no data and asks for the key.
///
/// The limits of [`Tenants::config`] and [`Tenants::rate_limit`] apply: a key over its rate
/// answers `429 rate_limited` with `Retry-After`, before its body is read.
pub fn tenant_router(tenants: Tenants) -> Router {
    let Tenants { keys, servers, config, rate_limit, no_page, key_store, key_refresh } = tenants;
    let stored_keys = key_store.map(|store| StoredKeys::new(store, key_refresh.unwrap_or(DEFAULT_KEY_REFRESH)));
    let routers = servers
        .into_iter()
        .map(|(name, server)| (name, config.bodies(routes::router(server.page(!no_page)))))
        .collect();
    let served = Arc::new(Served { keys, stored_keys, routers, rate_limit, buckets: Mutex::default() });
    let app = Router::new().fallback(move |request: Request<Body>| {
        let served = served.clone();
        async move {
            // The page holds no data: it is served without a key, and asks for one.
            if !no_page && crate::page::is_page(request.method(), request.uri()) {
                return crate::page::response();
            }
            let router = match (served.admit(request.headers()).await, &served.rate_limit) {
                (Ok(router), _) => router,
                (Err(Refusal::Over(wait)), Some(limit)) => return rate_limited(limit, wait),
                (Err(Refusal::KeysUnavailable), _) => return keys_unavailable(),
                (Err(_), _) => return unauthorized(),
            };
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    });
    config.outer(app)
}

fn rate_limited(limit: &RateLimit, wait: std::time::Duration) -> Response {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this API key is over its rate limit ({}); retry after {seconds} s (the Retry-After header)",
            limit.describe()
        ),
    );
    let mut response = e.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    response
}

fn keys_unavailable() -> Response {
    // The store's error is not told: the caller has not shown a key yet.
    let e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "keys_unavailable",
        "this server cannot check API keys right now (its key store does not answer); retry in a few seconds",
    );
    let mut response = e.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(5u64));
    response
}

fn unauthorized() -> Response {
    let e = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this server needs an API key: send it as `Authorization: Bearer <key>` (or `X-Api-Key: <key>`)",
    );
    let mut response = e.into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}
