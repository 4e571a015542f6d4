//! API keys in SQLite (schema migration 11): one row per key, holding its SHA-256, never the
//! key.

use chrono::{DateTime, Utc};
use crewflow_core::persist::{StoreFuture, StoredApiKey};
use rusqlite::{OptionalExtension, params};

use crate::StoreError;
use crate::sqlite::{SqliteStore, boxed, from_ms, ms, now};

/// Migration 11: the run server's API keys (`crewflow keys`), each reaching one tenant.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    label      TEXT NOT NULL,
    sha256     BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    expires_at INTEGER
);
"#;

fn key(r: &rusqlite::Row<'_>) -> rusqlite::Result<(StoredApiKey, Vec<u8>)> {
    Ok((
        StoredApiKey {
            id: r.get(0)?,
            tenant: r.get(1)?,
            label: r.get(2)?,
            sha256: [0; 32],
            created_at: from_ms(r.get(4)?),
            revoked_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
            expires_at: r.get::<_, Option<i64>>(6)?.map(from_ms),
        },
        r.get(3)?,
    ))
}

/// A key with its hash read back, or a clear error when the stored hash is not 32 bytes.
fn with_hash(mut key: StoredApiKey, hash: &[u8]) -> Result<StoredApiKey, StoreError> {
    key.sha256 = hash.try_into().map_err(|_| {
        StoreError::Corrupt(format!("API key {}'s hash has {} bytes, not 32 (SHA-256)", key.id, hash.len()))
    })?;
    Ok(key)
}

impl SqliteStore {
    pub(crate) fn create_api_key_row<'a>(&'a self, key: &'a StoredApiKey) -> StoreFuture<'a, ()> {
        let key = key.clone();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let inserted = c.execute(
                        "INSERT INTO crewflow_api_keys (id, tenant, label, sha256, created_at, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                        params![
                            key.id,
                            key.tenant,
                            key.label,
                            key.sha256.as_slice(),
                            ms(key.created_at),
                            key.expires_at.map(ms)
                        ],
                    )?;
                    if inserted == 0 {
                        return Err(StoreError::ApiKeyExists(key.id));
                    }
                    Ok(())
                })
                .await,
            )
        })
    }

    pub(crate) fn list_api_key_rows<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<StoredApiKey>> {
        let tenant = tenant.map(str::to_string);
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT id, tenant, label, sha256, created_at, revoked_at, expires_at FROM crewflow_api_keys
                         WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at, id",
                    )?;
                    let rows = stmt.query_map(params![tenant], key)?;
                    rows.map(|r| {
                        let (k, hash) = r?;
                        with_hash(k, &hash)
                    })
                    .collect()
                })
                .await,
            )
        })
    }

    pub(crate) fn revoke_api_key_row<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DateTime<Utc>>> {
        let id = id.to_string();
        Box::pin(async move {
            boxed(
                self.call(move |c| {
                    let at: Option<i64> = c
                        .query_row(
                            "UPDATE crewflow_api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1
                             RETURNING revoked_at",
                            params![id, ms(now())],
                            |r| r.get(0),
                        )
                        .optional()?;
                    Ok(at.map(from_ms))
                })
                .await,
            )
        })
    }
}
