//! Workers: processes that take over runs nobody is running.
//!
//! A [`Worker`] repeatedly claims, from the store, runs of its flows that are queued
//! ([`Flow::enqueue`]) or whose owner stopped renewing its lease (a crashed or partitioned
//! process), and resumes them from their last checkpoint. Claims go through the store's lease
//! and fencing token (see [`crate::persist`]): two workers never claim the same run, and a
//! former owner that wakes up late cannot write over the new owner's work.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::Canceller;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::flow::Flow;
use crate::id::RunId;
use crate::persist::{Claim, DEFAULT_LEASE, RunStore, process_owner};
use crate::state::FlowState;

type Resume = Arc<dyn Fn(Claim) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send + Sync>;

/// What happened to a run a worker took over.
#[derive(Debug)]
pub struct WorkerReport {
    /// The run.
    pub run_id: RunId,
    /// Its flow.
    pub flow: String,
    /// How it ended.
    pub result: Result<(), Error>,
}

/// Claims and resumes orphaned or queued runs of its flows: runs whose owner stopped renewing
/// its lease first, then queued ones ([`Flow::enqueue`]), oldest first. Claims go through the
/// store's lease and fencing token, so two workers never run the same run (`docs/store.md`).
pub struct Worker {
    store: Arc<dyn RunStore>,
    flows: HashMap<String, Resume>,
    lease: Duration,
    poll: Duration,
    concurrency: usize,
}

impl Worker {
    /// A worker over `store` (the store its flows keep their runs in).
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        Worker { store, flows: HashMap::new(), lease: DEFAULT_LEASE, poll: Duration::from_secs(1), concurrency: 16 }
    }

    /// Takes over runs of `flow` (matched by the flow's name).
    pub fn flow<S: FlowState>(mut self, flow: &Flow<S>) -> Self {
        let name = flow.name().to_string();
        let flow = flow.clone();
        let resume: Resume = Arc::new(move |claim| {
            let flow = flow.clone();
            Box::pin(async move { flow.resume_claimed(claim).await.map(|_| ()) })
        });
        self.flows.insert(name, resume);
        self
    }

    /// How long a claimed run's lease lasts without renewal (renewed every third of it).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often to look for runs to claim.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// How many runs to run at once.
    pub fn concurrency(mut self, runs: usize) -> Self {
        self.concurrency = runs.max(1);
        self
    }

    /// Runs until `shutdown` is cancelled: claims runs, resumes them, renews their leases.
    /// Each finished run is reported to `on_run`.
    pub async fn run(self, shutdown: Canceller, mut on_run: impl FnMut(WorkerReport) + Send) -> Result<(), Error> {
        let owner = process_owner();
        let names: Vec<String> = self.flows.keys().cloned().collect();
        let mut running: JoinSet<WorkerReport> = JoinSet::new();
        let mut heartbeat = tokio::time::interval(self.lease / 3);
        loop {
            while let Some(done) = running.try_join_next() {
                if let Ok(report) = done {
                    on_run(report);
                }
            }
            let free = self.concurrency.saturating_sub(running.len());
            if free > 0 {
                let claims = self
                    .store
                    .claim_orphans(&names, &owner, self.lease, free)
                    .await
                    .map_err(|e| Error::from_store(self.store.as_ref(), "claim runs", e))?;
                for claim in claims {
                    let Some(resume) = self.flows.get(&claim.flow).cloned() else { continue };
                    running.spawn(async move {
                        let (run_id, flow) = (claim.run_id, claim.flow.clone());
                        WorkerReport { run_id, flow, result: resume(claim).await }
                    });
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = heartbeat.tick() => {
                    // Renew the leases of the runs this process holds; a failure here only
                    // risks losing a lease, which the fencing token makes safe.
                    let driven = crate::persist::driven_runs();
                    let _ = self.store.heartbeat(&owner, &driven, self.lease).await;
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(report) = done {
                        on_run(report);
                    }
                }
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        running.shutdown().await;
        Ok(())
    }
}
