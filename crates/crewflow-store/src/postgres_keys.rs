//! API keys in PostgreSQL (schema migration 12): one row per key, holding its SHA-256, never
//! the key.

use chrono::{DateTime, Utc};
use crewflow_core::persist::{StoreFuture, StoredApiKey};

use crate::StoreError;
use crate::postgres::{PostgresStore, boxed};
use crate::util::refuse_nul_text;

/// Migration 12: the run server's API keys (`crewflow keys`), each reaching one tenant.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE crewflow_api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    label      TEXT NOT NULL,
    sha256     BYTEA NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ
);
"#;

fn key(r: &tokio_postgres::Row) -> Result<StoredApiKey, StoreError> {
    let hash: Vec<u8> = r.try_get(3)?;
    let id: String = r.try_get(0)?;
    let sha256 = hash
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("API key {id}'s hash has {} bytes, not 32 (SHA-256)", hash.len())))?;
    Ok(StoredApiKey {
        id,
        tenant: r.try_get(1)?,
        label: r.try_get(2)?,
        sha256,
        created_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
        expires_at: r.try_get(6)?,
    })
}

impl PostgresStore {
    pub(crate) fn create_api_key_row<'a>(&'a self, key: &'a StoredApiKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    refuse_nul_text("the API key's tenant", &key.tenant)?;
                    refuse_nul_text("the API key's label", &key.label)?;
                    refuse_nul_text("the API key's id", &key.id)?;
                    let client = self.client().await?;
                    let inserted = client
                        .execute(
                            "INSERT INTO crewflow_api_keys (id, tenant, label, sha256, created_at, expires_at)
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                            &[
                                &key.id,
                                &key.tenant,
                                &key.label,
                                &key.sha256.as_slice(),
                                &key.created_at,
                                &key.expires_at,
                            ],
                        )
                        .await?;
                    if inserted == 0 {
                        return Err(StoreError::ApiKeyExists(key.id.clone()));
                    }
                    Ok(())
                }
                .await,
            )
        })
    }

    pub(crate) fn list_api_key_rows<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<StoredApiKey>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "SELECT id, tenant, label, sha256, created_at, revoked_at, expires_at FROM crewflow_api_keys
                             WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at, id",
                            &[&tenant],
                        )
                        .await?;
                    rows.iter().map(key).collect()
                }
                .await,
            )
        })
    }

    pub(crate) fn revoke_api_key_row<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DateTime<Utc>>> {
        Box::pin(async move {
            boxed(
                async {
                    if id.contains('\0') {
                        return Ok(None); // no stored id holds U+0000
                    }
                    let client = self.client().await?;
                    let row = client
                        .query_opt(
                            "UPDATE crewflow_api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
                             RETURNING revoked_at",
                            &[&id],
                        )
                        .await?;
                    Ok(row.map(|r| r.try_get(0)).transpose()?.flatten())
                }
                .await,
            )
        })
    }
}
