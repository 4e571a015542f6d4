//! Webhooks for runs that end outside a server: the runs a [`Worker`](crewflow_core::Worker)
//! takes over (`crewflow worker`: scheduled runs a server left queued with
//! `Server::run_scheduled(false)`, runs queued with `crewflow run --queue`, orphans whose
//! process died).

use std::sync::Arc;
use std::time::Duration;

use crewflow_core::persist::{RunStatus, RunStore, StoredRun};
use crewflow_core::{Error, RunId};
use serde_json::{Value, json};

use crate::webhooks::{Notifier, Webhook};

/// Sends the same webhooks a [`Server`](crate::Server) sends — `run.finished`, `run.failed`,
/// `run.paused`, `run.cancelled`, signed and retried by the [`Webhook`]'s rules — for runs that
/// end under a worker. Give it each run a worker reports ([`Worker::run`]'s `on_run`):
///
/// ```rust,ignore
/// let hooks = WorkerWebhooks::start(Webhook::new(url, secret)?, store.clone());
/// worker.run(shutdown, |report| {
///     let hooks = hooks.clone();
///     tokio::spawn(async move { hooks.run_ended(report.run_id).await });
/// }).await?;
/// hooks.flush(Duration::from_secs(10)).await; // what is still due, before the process ends
/// ```
///
/// The event is read from the store (the run as it ended: output, error or pending feedback)
/// and kept there until delivered, like a server's: this value's delivery loop sends it, and
/// so does any server (or worker) with a webhook on the same store and tenant if this process
/// stops first. The worker reports each run once across workers, so each run's end is one
/// event.
///
/// [`Worker::run`]: crewflow_core::Worker::run
#[derive(Clone)]
pub struct WorkerWebhooks {
    notifier: Arc<Notifier>,
    store: Arc<dyn RunStore>,
}

impl std::fmt::Debug for WorkerWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerWebhooks").field("store", &self.store.describe()).finish_non_exhaustive()
    }
}

impl WorkerWebhooks {
    /// Webhooks to `hook` for the runs of `store` (no tenant: `""`, as `crewflow serve`'s),
    /// and their delivery loop on the current tokio runtime.
    pub fn start(hook: Webhook, store: Arc<dyn RunStore>) -> Self {
        WorkerWebhooks::for_tenant(hook, store, "")
    }

    /// [`start`](WorkerWebhooks::start) for a tenant's runs: the events are kept under its
    /// name, so only its servers (and its workers) deliver them.
    pub fn for_tenant(hook: Webhook, store: Arc<dyn RunStore>, tenant: &str) -> Self {
        WorkerWebhooks { notifier: Notifier::start(hook, store.clone(), tenant.to_string()), store }
    }

    /// Records the event of the run's end — read from the store — for delivery, and wakes the
    /// delivery loop; `Ok(false)` (nothing sent) for a run that has not ended (queued or
    /// running) or that the store does not have. An error when the store does not answer.
    pub async fn run_ended(&self, run_id: RunId) -> Result<bool, Error> {
        let stored =
            self.store.load_run(run_id).await.map_err(|e| Error::from_store(self.store.as_ref(), "load the run", e))?;
        let Some((kind, data)) = stored.as_ref().and_then(event_of) else { return Ok(false) };
        self.notifier.queue(kind, data).await;
        Ok(true)
    }

    /// Delivers the events that are due now, waiting at most `within` (those not delivered
    /// stay in the store for the next sender).
    pub async fn flush(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.notifier.deliver_due()).await;
    }
}

/// The webhook type and `data` of a stored run that ended: the run as `?wait=true` answers it.
fn event_of(stored: &StoredRun) -> Option<(&'static str, Value)> {
    let parse = |text: &str| serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
    let base = |status: &str| json!({"run_id": stored.run_id.to_string(), "flow": stored.flow, "status": status});
    let output = || {
        stored
            .final_activation
            .and_then(|a| stored.steps.iter().find(|s| s.activation == a))
            .map_or(Value::Null, |s| parse(&s.output))
    };
    let (kind, mut data) = match stored.status {
        RunStatus::Finished => ("run.finished", base("finished")),
        RunStatus::Paused => ("run.paused", base("paused")),
        RunStatus::Failed => ("run.failed", base("failed")),
        RunStatus::Cancelled => ("run.cancelled", base("cancelled")),
        _ => return None,
    };
    match stored.status {
        RunStatus::Finished | RunStatus::Paused => {
            data["steps"] = json!(stored.steps.len());
            data["output"] = if stored.status == RunStatus::Finished { output() } else { Value::Null };
        }
        _ => data["error"] = json!(stored.error),
    }
    if stored.status == RunStatus::Paused {
        // The first pending request, as a server's `run.paused` carries it.
        let record: Value = stored.feedback.as_deref().map(parse).unwrap_or(Value::Null);
        data["feedback"] = record["pending"].get(0).map_or(Value::Null, |p| p["request"].clone());
    }
    Some((kind, data))
}
