//! `crewflow serve`: the run server (`crewflow-server`) over the given YAML flows, the flows
//! compiled into the binary and its conversational flows, until Ctrl-C or SIGTERM; then it
//! drains: no new runs, and those in flight get `--grace` to finish.

use std::sync::Arc;

use crewflow_core::persist::{RunFilter, RunStore};
use crewflow_server::{RateLimit, Server, ServerConfig, ServerError, Tenants, Webhook, router, tenant_router};

use crate::commands::{Ctx, store_failed};
use crate::target::Target;
use crate::worker::on_signal;
use crate::{CliError, Exit, ServeArgs};

/// Serves until a signal: the first stdout line is `listening on http://ADDR`, the address
/// actually bound (so `--addr 127.0.0.1:0` can be read back).
pub(crate) async fn serve(ctx: &Ctx, args: ServeArgs) -> Result<Exit, CliError> {
    let (store, url) = server_store(ctx)?;
    // A store that does not answer (a dead PostgreSQL) is said now, not on the first request.
    let probe = RunFilter { flow: None, status: None, limit: 1, ..Default::default() };
    store.list_runs(&probe).await.map_err(|e| store_failed(&url, "list runs", e))?;
    let mut server = Server::new(store.clone()).max_lateness(args.max_lateness.0);
    for flow in ctx.all_mounted() {
        server = flow.serve(server).map_err(refused)?;
    }
    for file in &args.flows {
        server = Target::resolve(ctx, file, Some(store.clone()))?.flow.serve(server).map_err(refused)?;
    }
    for chat in ctx.chats() {
        server = chat.serve(server).map_err(refused)?;
    }
    if let Some(url) = &args.webhook {
        server = server.webhook(webhook(url)?);
    }
    let names: Vec<String> = server.flow_names().map(String::from).collect();
    if names.is_empty() {
        return Err(CliError::new(Exit::Usage, "no flows to serve: give their definitions with --flows FILE…"));
    }
    let listener = tokio::net::TcpListener::bind(&args.addr).await.map_err(|e| {
        CliError::new(
            Exit::Usage,
            format!(
                "cannot listen on {}: {e}; pick a free address with --addr HOST:PORT (port 0: any free port)",
                args.addr
            ),
        )
    })?;
    let addr = listener.local_addr().map_err(|e| CliError::new(Exit::Usage, format!("cannot listen: {e}")))?;
    let drain = server.drain();
    let signal = on_signal(); // installed before anyone can know the address
    let (signalled, stopping) = tokio::sync::oneshot::channel::<()>();
    let stop = drain.clone();
    let shutdown = async move {
        signal.await;
        stop.begin();
        let _ = signalled.send(());
    };
    // No new connections after the signal; requests that would start a run or a turn answer
    // 503 on the open ones; the rest are answered.
    let config = server_config(&args)?;
    let app =
        if args.api_keys { keyed(&store, &url, &args, server, config).await? } else { router(server.config(config)) };
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown).into_future();
    let mut serving = std::pin::pin!(serving);
    outln!("listening on http://{addr}");
    if !ctx.json {
        eprintln!("serving flows {} with runs in {url}; Ctrl-C stops it", names.join(", "));
        if args.api_keys {
            eprintln!("every request needs an API key of tenant `{}` (crewflow keys create/list/revoke)", args.tenant);
        }
    }
    let stopped = |e: std::io::Error| CliError::new(Exit::RunFailed, format!("the server stopped: {e}"));
    // The server ends on its own only on an error; with no connection open it may end in the
    // very poll that sees the signal, so whether to drain is told by the drain, not the branch.
    let server_done = tokio::select! {
        served = &mut serving => {
            served.map_err(stopped)?;
            true
        }
        _ = stopping => false,
    };
    if drain.is_draining() {
        let going = drain.in_flight();
        if !going.is_empty() && !ctx.json {
            eprintln!(
                "stopping: no new runs; waiting up to {} for {} in flight",
                humantime::format_duration(args.grace),
                count(going.len())
            );
        }
        // Runs in flight get the grace period to finish; open requests (a `?wait=true`
        // answer, an event stream) end with them.
        let drained = async {
            let served = if server_done { Ok(()) } else { (&mut serving).await };
            drain.idle().await;
            served
        };
        match tokio::time::timeout(args.grace, drained).await {
            Ok(served) => served.map_err(stopped)?,
            Err(_) => left_running(ctx, &drain.in_flight()),
        }
    }
    if !ctx.json {
        eprintln!("server stopped");
    }
    Ok(Exit::Ok)
}

fn count(n: usize) -> String {
    if n == 1 { "1 run or turn".into() } else { format!("{n} runs or turns") }
}

/// Says what the grace period did not see end: runs keep their checkpoints in the store (they
/// are continued by `crewflow runs resume`, a worker, or another instance), turns are lost.
fn left_running(ctx: &Ctx, going: &[String]) {
    if going.is_empty() {
        return;
    }
    let runs: Vec<&str> = going.iter().filter_map(|g| g.strip_prefix("run ")).collect();
    let turns: Vec<&str> = going.iter().filter_map(|g| g.strip_prefix("turn ")).collect();
    if ctx.json {
        outln!("{}", serde_json::json!({"left_running": runs, "turns_dropped": turns}));
        return;
    }
    if !runs.is_empty() {
        eprintln!(
            "grace period over: left running, checkpointed in the store: {}; `crewflow runs resume ID` (or a worker, or another instance) continues them",
            runs.join(", ")
        );
    }
    if !turns.is_empty() {
        eprintln!("grace period over: turns dropped unsaved (their clients may send them again): {}", turns.join(", "));
    }
}

/// `--api-keys`: the server as the one tenant `--tenant`, letting in that tenant's keys from
/// the store. Refused when the tenant has no usable key: such a server would let no one in.
async fn keyed(
    store: &Arc<dyn RunStore>,
    url: &str,
    args: &ServeArgs,
    server: Server,
    config: ServerConfig,
) -> Result<axum::Router, CliError> {
    let keys = store.list_api_keys(Some(&args.tenant)).await.map_err(|e| store_failed(url, "list API keys", e))?;
    let now = chrono::Utc::now();
    if !keys.iter().any(|k| k.usable_at(now)) {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "--api-keys: tenant `{}` has no API key in {url}, so no request could come in; make one with `crewflow keys create --tenant {}`",
                args.tenant, args.tenant
            ),
        ));
    }
    let mut tenants = Tenants::new().tenant(&args.tenant, server).map_err(refused)?.config(config);
    if let Some((requests, per)) = args.rate_limit {
        tenants = tenants.rate_limit(RateLimit::new(requests, per).map_err(refused)?);
    }
    Ok(tenant_router(tenants.keys_from(store.clone()).key_refresh(args.key_refresh)))
}

/// `--max-body-bytes`, `--request-timeout`, `--cors-origin`.
fn server_config(args: &ServeArgs) -> Result<ServerConfig, CliError> {
    let config = ServerConfig::new().max_body_bytes(args.max_body_bytes).request_timeout(args.request_timeout);
    if args.cors_origins.is_empty() {
        return Ok(config);
    }
    config.cors_origins(&args.cors_origins).map_err(refused)
}

/// The server's run store: the one the compiled flows keep their runs in (the server needs
/// every flow in one store), else the named store (`--store`, `$CREWFLOW_DB`, `crewflow.db`).
pub(crate) fn server_store(ctx: &Ctx) -> Result<(Arc<dyn RunStore>, String), CliError> {
    if let Some(store) = ctx.all_mounted().iter().find_map(|f| f.store()) {
        let url = store.describe();
        return Ok((store, url));
    }
    let url = ctx.store_url();
    let store = crewflow_store::open(&url)
        .map_err(|e| CliError::new(Exit::Store, format!("cannot open the store `{url}`: {e}")))?;
    Ok((store, url))
}

/// The variable holding the webhook's signing secret (kept out of the command line, which
/// other users of the machine can read).
const WEBHOOK_SECRET_VAR: &str = "CREWFLOW_WEBHOOK_SECRET";

/// `--webhook URL` (of `serve` and `worker`), signed with the secret of
/// `$CREWFLOW_WEBHOOK_SECRET`.
pub(crate) fn webhook(url: &str) -> Result<Webhook, CliError> {
    let secret = std::env::var(WEBHOOK_SECRET_VAR).unwrap_or_default();
    if secret.is_empty() {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "--webhook needs the secret its events are signed with: set ${WEBHOOK_SECRET_VAR} (at least 16 random bytes, say `openssl rand -hex 32`); the receiver checks signatures with the same secret"
            ),
        ));
    }
    Webhook::new(url, secret).map_err(|e| CliError::new(Exit::Usage, format!("--webhook: {e}")))
}

fn refused(e: ServerError) -> CliError {
    CliError::new(Exit::Usage, format!("cannot serve: {e}"))
}
