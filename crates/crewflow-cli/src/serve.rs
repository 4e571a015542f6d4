//! `crewflow serve`: the run server (`crewflow-server`) over the given YAML flows, the flows
//! compiled into the binary and its conversational flows, until Ctrl-C or SIGTERM.

use std::sync::Arc;

use crewflow_core::persist::{RunFilter, RunStore};
use crewflow_server::{Server, ServerError, Webhook, router};

use crate::commands::{Ctx, store_failed};
use crate::target::Target;
use crate::worker::wait_for_signal;
use crate::{CliError, Exit, ServeArgs};

/// Serves until a signal: the first stdout line is `listening on http://ADDR`, the address
/// actually bound (so `--addr 127.0.0.1:0` can be read back).
pub(crate) async fn serve(ctx: &Ctx, args: ServeArgs) -> Result<Exit, CliError> {
    let (store, url) = server_store(ctx)?;
    // A store that does not answer (a dead PostgreSQL) is said now, not on the first request.
    let probe = RunFilter { flow: None, status: None, limit: 1 };
    store.list_runs(&probe).await.map_err(|e| store_failed(&url, "list runs", e))?;
    let mut server = Server::new(store.clone());
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
    outln!("listening on http://{addr}");
    if !ctx.json {
        eprintln!("serving flows {} with runs in {url}; Ctrl-C stops it", names.join(", "));
    }
    // Graceful: no new connections after the signal, open requests are answered. Runs still
    // going in the background are not waited for: their checkpoints are in the store, and
    // `crewflow runs resume` (or a worker, once their lease lapses) continues them.
    axum::serve(listener, router(server))
        .with_graceful_shutdown(wait_for_signal())
        .await
        .map_err(|e| CliError::new(Exit::RunFailed, format!("the server stopped: {e}")))?;
    if !ctx.json {
        eprintln!("server stopped");
    }
    Ok(Exit::Ok)
}

/// The server's run store: the one the compiled flows keep their runs in (the server needs
/// every flow in one store), else the named store (`--store`, `$CREWFLOW_DB`, `crewflow.db`).
fn server_store(ctx: &Ctx) -> Result<(Arc<dyn RunStore>, String), CliError> {
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

/// `--webhook URL`, signed with the secret of `$CREWFLOW_WEBHOOK_SECRET`.
fn webhook(url: &str) -> Result<Webhook, CliError> {
    let secret = std::env::var(WEBHOOK_SECRET_VAR).unwrap_or_default();
    if secret.is_empty() {
        return Err(CliError::new(
            Exit::Usage,
            format!(
                "--webhook needs the secret its events are signed with: set ${WEBHOOK_SECRET_VAR} (at least 16 random bytes, say `openssl rand -hex 32`); the receiver checks signatures with the same secret"
            ),
        ));
    }
    Webhook::new(url, secret).map_err(refused)
}

fn refused(e: ServerError) -> CliError {
    CliError::new(Exit::Usage, format!("cannot serve: {e}"))
}
