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
//! at once.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
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
/// last read: a new key works at once, and a stream of guessed keys costs one read a second.
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

/// Makes a new random API key reaching `tenant`, and records its hash in `store`. `label`
/// says what the key is for (`"ci"`, `"alice's laptop"`; may be empty).
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn crewflow_core::persist::RunStore>) -> Result<(), crewflow_server::ServerError> {
/// let issued = crewflow_server::issue_api_key(&*store, "acme", "ci").await?;
/// println!("give this key to CI now, it is not kept: {}", issued.key);
/// println!("revoke it later by its id: {}", issued.stored.id);
/// # Ok(()) }
/// ```
pub async fn issue_api_key(store: &dyn RunStore, tenant: &str, label: &str) -> Result<IssuedApiKey, ServerError> {
    check_tenant_name(tenant)?;
    if label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(ServerError::BadKeyLabel { label: label.chars().take(40).collect() });
    }
    let mut secret = [0u8; 32];
    let mut id = [0u8; 9];
    for bytes in [&mut secret[..], &mut id[..]] {
        getrandom::fill(bytes).map_err(|e| ServerError::KeyStore { source: e.to_string().into() })?;
    }
    let key = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let stored = StoredApiKey {
        id: format!("key_{}", URL_SAFE_NO_PAD.encode(id)),
        tenant: tenant.to_string(),
        label: label.to_string(),
        sha256: sha256(&key),
        created_at: Utc::now(),
        revoked_at: None,
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
    /// Only keys of tenants this instance serves, and not revoked: hash → tenant.
    copy: RwLock<Arc<Copy>>,
    /// One read of the store at a time: the others wait for it, then use what it read.
    reading: tokio::sync::Mutex<()>,
}

struct Copy {
    keys: HashMap<[u8; 32], String>,
    read_at: Option<Instant>,
}

impl Copy {
    fn age(&self) -> Option<Duration> {
        self.read_at.map(|at| at.elapsed())
    }
}

impl StoredKeys {
    pub(crate) fn new(store: Arc<dyn RunStore>, refresh: Duration) -> Self {
        StoredKeys {
            store,
            refresh,
            copy: RwLock::new(Arc::new(Copy { keys: HashMap::new(), read_at: None })),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<Copy> {
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
        let known = copy.keys.get(hash);
        if !self.must_read(&copy, known.is_some()) {
            return Ok(known.cloned());
        }
        let _reading = self.reading.lock().await;
        let latest = self.current();
        // Someone read the store while this request waited: use their copy.
        if !Arc::ptr_eq(&latest, &copy) && !self.must_read(&latest, latest.keys.contains_key(hash)) {
            return Ok(latest.keys.get(hash).cloned());
        }
        let rows = self.store.list_api_keys(None).await?;
        let keys: HashMap<[u8; 32], String> = rows
            .into_iter()
            .filter(|k| k.revoked_at.is_none() && served(&k.tenant))
            .map(|k| (k.sha256, k.tenant))
            .collect();
        let tenant = keys.get(hash).cloned();
        *self.copy.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Copy { keys, read_at: Some(Instant::now()) });
        Ok(tenant)
    }

    fn must_read(&self, copy: &Copy, known: bool) -> bool {
        match copy.age() {
            None => true,
            Some(age) => age >= self.refresh || (!known && age >= UNKNOWN_KEY_RELOAD),
        }
    }
}
