//! API keys and tenants: each tenant is a [`Server`] of its own (its own stores), and a request
//! goes to the tenant its key belongs to. Isolation is by construction: another tenant's run
//! or session ids are simply not in the stores a request can reach, so they answer `404` like
//! ids that never existed, and lists and streams cannot show them.

use std::collections::HashMap;
use std::fmt;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::error::{ApiError, ServerError};
use crate::{Server, router};

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
    routers: HashMap<String, Router>,
}

impl fmt::Debug for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut tenants: Vec<&String> = self.routers.keys().collect();
        tenants.sort();
        f.debug_struct("Tenants").field("tenants", &tenants).field("keys", &self.keys.len()).finish()
    }
}

impl Tenants {
    /// No tenants yet.
    pub fn new() -> Self {
        Tenants::default()
    }

    /// Serves `server` (its flows, over its own stores) to the keys of tenant `name`.
    pub fn tenant(mut self, name: &str, server: Server) -> Result<Self, ServerError> {
        if self.routers.contains_key(name) {
            return Err(ServerError::DuplicateTenant { tenant: name.to_string() });
        }
        self.routers.insert(name.to_string(), router(server));
        Ok(self)
    }

    /// Lets `api_key` reach tenant `tenant`; only its SHA-256 is kept.
    pub fn key(self, tenant: &str, api_key: &str) -> Result<Self, ServerError> {
        let hash: [u8; 32] = Sha256::digest(api_key.as_bytes()).into();
        self.add(tenant, hash)
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
        if !self.routers.contains_key(tenant) {
            return Err(ServerError::UnknownTenant { tenant: tenant.to_string() });
        }
        self.keys.insert(hash, tenant.to_string());
        Ok(self)
    }

    fn router_for(&self, headers: &HeaderMap) -> Option<Router> {
        let key = bearer(headers)?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let tenant = self.keys.get(&hash)?;
        self.routers.get(tenant).cloned()
    }
}

/// The key a request carries: `Authorization: Bearer <key>`, or `X-Api-Key: <key>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::trim);
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The routes of [`router`], each request served by the [`Server`] of the tenant its API key
/// belongs to. A request without a known key answers `401 unauthorized` (with
/// `WWW-Authenticate: Bearer`), whatever its path, so the routes tell nothing to a stranger.
pub fn tenant_router(tenants: Tenants) -> Router {
    let tenants = std::sync::Arc::new(tenants);
    Router::new().fallback(move |request: Request<Body>| {
        let tenants = tenants.clone();
        async move {
            let Some(router) = tenants.router_for(request.headers()) else {
                return unauthorized();
            };
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    })
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
