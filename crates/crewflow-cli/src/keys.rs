//! `crewflow keys`: the API keys `crewflow serve --api-keys` lets in, kept in the store the
//! server uses (crewflow-server's `issue_api_key`; the store keeps their SHA-256 only).

use std::sync::Arc;
use std::time::Duration;

use crewflow_core::persist::RunStore;
use crewflow_server::NewApiKey;
use serde_json::json;

use crate::commands::{Ctx, store_failed};
use crate::{CliError, Exit, KeysCommand};

pub(crate) async fn keys(ctx: &Ctx, command: KeysCommand) -> Result<Exit, CliError> {
    match command {
        KeysCommand::Create { tenant, label, expires_in } => create(ctx, &tenant, &label, expires_in).await,
        KeysCommand::List { tenant } => list(ctx, tenant.as_deref()).await,
        KeysCommand::Revoke { id } => revoke(ctx, &id).await,
    }
}

/// The store `crewflow serve` would use: a compiled flow's, else `--store`. Only `create`
/// makes a new SQLite file; listing or revoking in a missing one is an error.
fn store(ctx: &Ctx, create: bool) -> Result<(Arc<dyn RunStore>, String), CliError> {
    if create || ctx.all_mounted().iter().any(|f| f.store().is_some()) {
        return crate::serve::server_store(ctx);
    }
    Ok((ctx.runs()?, ctx.store_url()))
}

async fn create(ctx: &Ctx, tenant: &str, label: &str, expires_in: Option<Duration>) -> Result<Exit, CliError> {
    let mut new = NewApiKey::new(tenant).label(label);
    if let Some(after) = expires_in {
        new = new.expires_in(after);
    }
    let (store, url) = store(ctx, true)?;
    let issued = crewflow_server::issue_api_key(&*store, &new).await.map_err(|e| match e {
        crewflow_server::ServerError::KeyStore { source } => store_failed(&url, "record the API key", source),
        other => CliError::new(Exit::Usage, other.to_string()),
    })?;
    let k = &issued.stored;
    if ctx.json {
        outln!(
            "{}",
            json!({"id": k.id, "tenant": k.tenant, "label": k.label, "key": issued.key, "created_at": k.created_at.to_rfc3339(),
                   "expires_at": k.expires_at.map(|t| t.to_rfc3339())})
        );
    } else {
        // The key alone on stdout, for `KEY=$(crewflow keys create)`; the rest on stderr.
        outln!("{}", issued.key);
        eprintln!(
            "made API key {} for tenant `{}` in {url}; it is shown only now (the store keeps its hash): keep it",
            k.id, k.tenant
        );
    }
    Ok(Exit::Ok)
}

async fn list(ctx: &Ctx, tenant: Option<&str>) -> Result<Exit, CliError> {
    let (store, url) = store(ctx, false)?;
    let keys = store.list_api_keys(tenant).await.map_err(|e| store_failed(&url, "list API keys", e))?;
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    if ctx.json {
        for k in &keys {
            outln!(
                "{}",
                json!({"id": k.id, "tenant": k.tenant, "label": k.label, "created_at": k.created_at.to_rfc3339(),
                       "revoked_at": k.revoked_at.map(|t| t.to_rfc3339()), "expires_at": k.expires_at.map(|t| t.to_rfc3339())})
            );
        }
    } else if keys.is_empty() {
        eprintln!("no API keys in {url}; make one with `crewflow keys create`");
    } else {
        outln!(
            "{:<16}  {:<16}  {:<19}  {:<19}  {:<19}  LABEL",
            "ID",
            "TENANT",
            "CREATED (UTC)",
            "REVOKED (UTC)",
            "EXPIRES (UTC)"
        );
        for k in &keys {
            let or_dash = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(time).unwrap_or_else(|| "-".into());
            let (revoked, expires) = (or_dash(k.revoked_at), or_dash(k.expires_at));
            outln!(
                "{:<16}  {:<16}  {:<19}  {:<19}  {:<19}  {}",
                k.id,
                k.tenant,
                time(k.created_at),
                revoked,
                expires,
                k.label
            );
        }
    }
    Ok(Exit::Ok)
}

async fn revoke(ctx: &Ctx, id: &str) -> Result<Exit, CliError> {
    let (store, url) = store(ctx, false)?;
    let Some(at) = store.revoke_api_key(id).await.map_err(|e| store_failed(&url, "revoke the API key", e))? else {
        return Err(CliError::new(
            Exit::NotFound,
            format!("no API key `{id}` in the store `{url}`; `crewflow keys list` shows their ids"),
        ));
    };
    if ctx.json {
        outln!("{}", json!({"id": id, "revoked_at": at.to_rfc3339()}));
    } else {
        eprintln!(
            "revoked API key {id} (at {} UTC); servers on {url} refuse it within their --key-refresh",
            at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(Exit::Ok)
}
