//! What a store keeps for the run server's API keys: their SHA-256 hashes, never the keys
//! themselves (the [`RunStore`](super::RunStore) methods that take them default to a clear
//! refusal, so a store of one's own need not keep them).

use chrono::{DateTime, Utc};

use super::StoreFuture;

pub(super) fn no_keys<T>(store: String) -> StoreFuture<'static, T> {
    Box::pin(async move {
        Err(format!("the store {store} keeps no API keys; use a SQLite or PostgreSQL store from crewflow-store").into())
    })
}

/// An API key as stored ([`RunStore::create_api_key`](super::RunStore::create_api_key)): who
/// it lets in, and the SHA-256 of the key (the key itself is shown once, when it is made, and
/// kept nowhere).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredApiKey {
    /// The key's public id (`key_…`, unique in the store): what lists show and revoking takes.
    pub id: String,
    /// The tenant it reaches.
    pub tenant: String,
    /// What it is for, as its creator wrote it (may be empty).
    pub label: String,
    /// The SHA-256 of the key (unique in the store).
    pub sha256: [u8; 32],
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked; a revoked key reaches nothing.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it stops working by itself, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

impl StoredApiKey {
    /// Whether it still lets its tenant in at `now`: not revoked, not expired.
    pub fn usable_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

impl std::fmt::Debug for StoredApiKey {
    // The hash is not secret, but it is 64 digits nobody reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredApiKey")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("label", &self.label)
            .field("created_at", &self.created_at)
            .field("revoked_at", &self.revoked_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
