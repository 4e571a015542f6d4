//! API keys kept in a store: made with [`issue_api_key`] (or `crewflow keys create`), listed
//! and revoked through the store ([`RunStore::list_api_keys`], [`RunStore::revoke_api_key`]),
//! and checked by [`tenant_router`](crate::tenant_router) when its [`Tenants`] read keys from
//! the store ([`Tenants::keys_from`]).
//!
//! A store keeps a key's SHA-256, never the key: the key is shown once, when it is made. Each
//! instance keeps the store's keys in memory and reads them again when its copy is older than
//! the refresh interval ([`Tenants::key_refresh`], 5 s by default) — so a key revoked on one
//! instance stops working on every instance within that interval — and when an unknown key
//! arrives (at most once a second, so guessed keys cannot load the store), so a new key works
//! within a second.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use crewflow_core::BoxError;
use crewflow_core::persist::{RunStore, StoredApiKey};
use sha2::{Digest, Sha256};

#[cfg(doc)]
use crate::Tenants;
use crate::error::ServerError;

/// What every key starts with: a key found in a log or a repository is recognisable.
pub const API_KEY_PREFIX: &str = "cfk_";

/// How often stored keys are read again by default ([`Tenants::key_refresh`]).
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(5);

/// An unknown key makes an instance read the keys again, but not sooner than this after the
/// last read: a new key works within a second, and a stream of guessed keys costs one read a
/// second.
const UNKNOWN_KEY_RELOAD: Duration = Duration::from_secs(1);

/// A key just made ([`issue_api_key`]): the key itself, to hand to its user now (the store
/// keeps only its hash), and what the store keeps.
#[derive(Debug)]
pub struct IssuedApiKey {
    /// The key: `cfk_` and 43 characters (32 random bytes, base64url).
    pub key: String,
    /// The record stored for it.
    pub stored: StoredApiKey,
}

/// What [`issue_api_key`] makes: a key reaching `tenant`, with a label and, if it is given one,
/// an expiry.
#[derive(Clone, Debug)]
pub struct NewApiKey {
    tenant: String,
    label: String,
    expires_in: Option<Duration>,
}

impl NewApiKey {
    /// A key reaching `tenant` (1 to 64 letters, digits, `-`, `_`, `.`), with no label and no
    /// expiry.
    pub fn new(tenant: &str) -> Self {
        NewApiKey { tenant: tenant.to_string(), label: String::new(), expires_in: None }
    }

    /// What it is for (`"ci"`, `"alice's laptop"`): at most 200 printable characters.
    pub fn label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    /// It stops working this long after it is made (it is refused like a revoked key).
    pub fn expires_in(mut self, after: Duration) -> Self {
        self.expires_in = Some(after);
        self
    }
}

/// Makes a new random API key and records its hash in `store`.
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn crewflow_core::persist::RunStore>) -> Result<(), crewflow_server::ServerError> {
/// use crewflow_server::{NewApiKey, issue_api_key};
/// let ninety_days = std::time::Duration::from_secs(90 * 24 * 3600);
/// let issued = issue_api_key(&*store, &NewApiKey::new("acme").label("ci").expires_in(ninety_days)).await?;
/// println!("give this key to CI now, it is not kept: {}", issued.key);
/// println!("revoke it later by its id: {}", issued.stored.id);
/// # Ok(()) }
/// ```
pub async fn issue_api_key(store: &dyn RunStore, new: &NewApiKey) -> Result<IssuedApiKey, ServerError> {
    check_tenant_name(&new.tenant)?;
    let label = &new.label;
    if label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(ServerError::BadKeyLabel { label: label.chars().take(40).collect() });
    }
    let created_at = Utc::now();
    let expires_at = match new.expires_in {
        None => None,
        Some(after) => {
            let after = chrono::Duration::from_std(after).ok().filter(|d| *d > chrono::Duration::zero());
            Some(after.and_then(|d| created_at.checked_add_signed(d)).ok_or(ServerError::BadKeyExpiry)?)
        }
    };
    let mut secret = [0u8; 32];
    let mut id = [0u8; 9];
    for bytes in [&mut secret[..], &mut id[..]] {
        getrandom::fill(bytes).map_err(|e| ServerError::KeyStore { source: e.to_string().into() })?;
    }
    let key = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let stored = StoredApiKey {
        id: format!("key_{}", URL_SAFE_NO_PAD.encode(id)),
        tenant: new.tenant.clone(),
        label: label.clone(),
        sha256: sha256(&key),
        created_at,
        revoked_at: None,
        expires_at,
    };
    store.create_api_key(&stored).await.map_err(|source| ServerError::KeyStore { source })?;
    Ok(IssuedApiKey { key, stored })
}

/// A tenant's name: what keys and schedules are filed under.
pub(crate) fn check_tenant_name(tenant: &str) -> Result<(), ServerError> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if tenant.is_empty() || tenant.len() > 64 || !tenant.chars().all(fine) {
        return Err(ServerError::BadTenantName { tenant: tenant.chars().take(70).collect() });
    }
    Ok(())
}

pub(crate) fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The keys a store holds, as one instance last read them.
pub(crate) struct StoredKeys {
    store: Arc<dyn RunStore>,
    refresh: Duration,
    /// Only keys of tenants this instance serves, neither revoked nor expired when read.
    copy: RwLock<Arc<KeyCopy>>,
    /// One read of the store at a time: the others wait for it, then use what it read.
    reading: tokio::sync::Mutex<()>,
}

struct KeyCopy {
    keys: HashMap<[u8; 32], Usable>,
    read_at: Option<Instant>,
}

/// A key as an instance keeps it: the tenant it reaches, until when.
struct Usable {
    tenant: String,
    expires_at: Option<DateTime<Utc>>,
}

impl KeyCopy {
    /// The tenant `hash` reaches now, if it is here and not expired.
    fn tenant(&self, hash: &[u8; 32]) -> Option<String> {
        let key = self.keys.get(hash)?;
        key.expires_at.is_none_or(|at| at > Utc::now()).then(|| key.tenant.clone())
    }

    fn age(&self) -> Option<Duration> {
        self.read_at.map(|at| at.elapsed())
    }
}

impl StoredKeys {
    pub(crate) fn new(store: Arc<dyn RunStore>, refresh: Duration) -> Self {
        StoredKeys {
            store,
            refresh,
            copy: RwLock::new(Arc::new(KeyCopy { keys: HashMap::new(), read_at: None })),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<KeyCopy> {
        self.copy.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The tenant `hash`'s key reaches, if it is a stored key that is not revoked, of one of
    /// `served`; an error when the store must be read and cannot be.
    pub(crate) async fn tenant_of(
        &self,
        hash: &[u8; 32],
        served: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Option<String>, BoxError> {
        let copy = self.current();
        let known = copy.tenant(hash);
        if !self.must_read(&copy, known.is_some()) {
            return Ok(known);
        }
        let _reading = self.reading.lock().await;
        let latest = self.current();
        // Someone read the store while this request waited: use their copy.
        if !Arc::ptr_eq(&latest, &copy) {
            let known = latest.tenant(hash);
            if !self.must_read(&latest, known.is_some()) {
                return Ok(known);
            }
        }
        let now = Utc::now();
        let rows = self.store.list_api_keys(None).await?;
        let keys: HashMap<[u8; 32], Usable> = rows
            .into_iter()
            .filter(|k| k.usable_at(now) && served(&k.tenant))
            .map(|k| (k.sha256, Usable { tenant: k.tenant, expires_at: k.expires_at }))
            .collect();
        let copy = KeyCopy { keys, read_at: Some(Instant::now()) };
        let tenant = copy.tenant(hash);
        *self.copy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(copy);
        Ok(tenant)
    }

    fn must_read(&self, copy: &KeyCopy, known: bool) -> bool {
        match copy.age() {
            None => true,
            Some(age) => age >= self.refresh || (!known && age >= UNKNOWN_KEY_RELOAD),
        }
    }
}
