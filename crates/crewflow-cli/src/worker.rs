//! `crewflow run --queue` records a run for a worker; `crewflow worker` runs queued (and
//! orphaned) runs of its flows until Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use crewflow_core::{Canceller, Kickoff, Worker, WorkerReport};
use crewflow_server::WorkerWebhooks;
use serde_json::json;

use crate::commands::Ctx;
use crate::drive::named_store;
use crate::target::Target;
use crate::{CliError, Exit, WorkerArgs};

/// Records a queued run and prints its id.
pub(crate) async fn enqueue(ctx: &Ctx, flow: &Target, kickoff: Kickoff) -> Result<Exit, CliError> {
    let id = flow.flow.enqueue(kickoff).await.map_err(|e| match e {
        crewflow_core::Error::Durable(crewflow_core::DurableError::NoStore { .. }) => CliError::new(
            Exit::Usage,
            format!("flow `{}` has no store to queue the run in; name one with --store or $CREWFLOW_DB", flow.name()),
        ),
        e => CliError::new(Exit::Store, format!("could not queue a run of flow `{}`: {e}", flow.name())),
    })?;
    if ctx.json {
        outln!("{}", json!({"type": "result", "run_id": id.to_string(), "status": "queued"}));
    } else {
        eprintln!("queued run {id} of flow `{}`; `crewflow worker` runs it", flow.name());
        outln!("{id}");
    }
    Ok(Exit::Ok)
}

/// Runs the worker until Ctrl-C (or SIGTERM), reporting each run it took over as it ends.
pub(crate) async fn worker(ctx: &Ctx, args: WorkerArgs) -> Result<Exit, CliError> {
    let url = ctx.store_url();
    let Some(store) = named_store(ctx)? else {
        return Err(CliError::new(
            Exit::Usage,
            "a worker needs the store its runs are queued in: give --store URL (or set $CREWFLOW_DB)",
        ));
    };
    let mut flows: Vec<Arc<dyn crate::target::AnyFlow>> = ctx.all_mounted();
    for file in &args.flows {
        flows.push(Target::resolve(ctx, file, Some(store.clone()))?.flow);
    }
    if flows.is_empty() {
        return Err(CliError::new(Exit::Usage, "no flows to run: give their definitions with --flows FILE…"));
    }
    let hooks = match &args.webhook {
        Some(url) => Some(WorkerWebhooks::start(crate::serve::webhook(url)?, store.clone())),
        None => None,
    };
    let mut worker = Worker::new(store).poll_interval(Duration::from_millis(args.poll_ms));
    let names: Vec<&str> = flows.iter().map(|f| f.name()).collect();
    if !ctx.json {
        eprintln!("worker on {url} for flows {}; Ctrl-C stops it", names.join(", "));
    }
    for flow in &flows {
        worker = flow.mount(worker);
    }
    let shutdown = Canceller::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    let json = ctx.json;
    // Each reported run's webhook event is recorded in the store (then sent) in the
    // background; all are recorded before the worker stops.
    let mut queued = tokio::task::JoinSet::new();
    let ran = worker
        .run(shutdown, |report| {
            say(json, &report);
            while let Some(done) = queued.try_join_next() {
                unrecorded(done);
            }
            if let Some(hooks) = hooks.clone() {
                queued.spawn(async move { hooks.run_ended(report.run_id).await.map_err(|e| (report.run_id, e)) });
            }
        })
        .await;
    while let Some(done) = queued.join_next().await {
        unrecorded(done);
    }
    if let Some(hooks) = &hooks {
        hooks.flush(Duration::from_secs(10)).await; // the rest waits in the store for the next sender
    }
    ran.map_err(|e| CliError::new(Exit::Store, format!("the worker stopped: {e}")))?;
    if !json {
        eprintln!("worker stopped");
    }
    Ok(Exit::Ok)
}

/// Says when a run's webhook event could not be recorded (the store did not answer): it is
/// not sent.
fn unrecorded(done: Result<Result<bool, (crewflow_core::RunId, crewflow_core::Error)>, tokio::task::JoinError>) {
    match done {
        Ok(Err((run_id, e))) => {
            eprintln!("warning: the webhook of run {run_id} was not recorded, and is not sent: {e}")
        }
        Err(e) => eprintln!("warning: a webhook was not recorded: {e}"),
        Ok(Ok(_)) => {}
    }
}

fn say(json: bool, report: &WorkerReport) {
    let (status, error) = match &report.result {
        Ok(()) => ("ended", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    if json {
        outln!(
            "{}",
            json!({"run_id": report.run_id.to_string(), "flow": report.flow, "status": status, "error": error})
        );
    } else {
        match error {
            None => eprintln!("run {} of flow `{}` ended", report.run_id, report.flow),
            Some(e) => eprintln!("run {} of flow `{}` failed: {e}", report.run_id, report.flow),
        }
    }
}

/// Ctrl-C, or SIGTERM (what `kill` and service managers send).
pub(crate) async fn wait_for_signal() {
    on_signal().await
}

/// [`wait_for_signal`] with SIGTERM's handler installed now, before the future is first polled:
/// a SIGTERM that comes in between is not lost (nor kills the process).
pub(crate) fn on_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
