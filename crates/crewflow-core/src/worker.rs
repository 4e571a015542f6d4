//! Workers: processes that take over runs nobody is running.
//!
//! A [`Worker`] repeatedly claims, from the store, runs of its flows that are queued
//! ([`Flow::enqueue`]) or whose owner stopped renewing its lease (a crashed or partitioned
//! process), and resumes them from their last checkpoint. Claims go through the store's lease
//! and fencing token (see [`crate::persist`]): two workers never claim the same run, and a
//! former owner that wakes up late cannot write over the new owner's work.

use crate::error::DurableError;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cancel::Canceller;
use tokio::task::JoinSet;

use crate::error::Error;
use crate::flow::Flow;
use crate::id::RunId;
use crate::persist::{Claim, DEFAULT_LEASE, Retention, RunStatus, RunStore, process_owner};
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
    /// Compaction on a schedule: the policy and how often.
    compaction: Option<(Retention, Duration)>,
}

impl Worker {
    /// A worker over `store` (the store its flows keep their runs in).
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        Worker {
            store,
            flows: HashMap::new(),
            lease: DEFAULT_LEASE,
            poll: Duration::from_secs(1),
            concurrency: 16,
            compaction: None,
        }
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

    /// Also compacts the store every `every` with `retention` ([`RunStore::compact`]): the
    /// automatic pruning of stored runs. Several workers may compact one store; compaction is
    /// idempotent. A compaction that fails is tried again at the next interval (it never stops
    /// the worker from resuming runs).
    pub fn compact_every(mut self, every: Duration, retention: Retention) -> Self {
        self.compaction = Some((retention, every));
        self
    }

    /// Runs until `shutdown` is cancelled: claims runs, resumes them, renews their leases.
    /// Each run it took over is reported to `on_run` once it ends, also when this worker (or
    /// another) stopped in between: reports are kept in the store until delivered, so a worker
    /// that restarts reports the runs that ended while no worker listened. A report is
    /// delivered once across workers, unless the store fails while marking it (then it may
    /// come twice rather than never).
    pub async fn run(self, shutdown: Canceller, mut on_run: impl FnMut(WorkerReport) + Send) -> Result<(), Error> {
        let owner = process_owner();
        let names: Vec<String> = self.flows.keys().cloned().collect();
        let mut running: JoinSet<WorkerReport> = JoinSet::new();
        let mut in_flight: HashSet<RunId> = HashSet::new();
        let mut heartbeat = tokio::time::interval(self.lease / 3);
        let mut compacted_at: Option<tokio::time::Instant> = None;
        loop {
            if let Some((retention, every)) = &self.compaction
                && compacted_at.is_none_or(|at| at.elapsed() >= *every)
            {
                compacted_at = Some(tokio::time::Instant::now());
                let _ = self.store.compact(retention).await; // tried again next interval
            }
            while let Some(done) = running.try_join_next() {
                if let Ok(report) = done {
                    in_flight.remove(&report.run_id);
                    self.deliver(report, &mut on_run).await;
                }
            }
            self.deliver_stored(&names, &in_flight, &mut on_run).await;
            let free = self.concurrency.saturating_sub(running.len());
            if free > 0 {
                let claims = self
                    .store
                    .claim_orphans(&names, &owner, self.lease, free)
                    .await
                    .map_err(|e| Error::from_store(self.store.as_ref(), "claim runs", e))?;
                for claim in claims {
                    let Some(resume) = self.flows.get(&claim.flow).cloned() else { continue };
                    in_flight.insert(claim.run_id);
                    running.spawn(async move {
                        let (run_id, flow) = (claim.run_id, claim.flow.clone());
                        WorkerReport { run_id, flow, result: resume(claim).await }
                    });
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = heartbeat.tick() => {
                    // Renew the leases of the runs this process drives; a failure here only
                    // risks losing a lease, which the fencing token makes safe.
                    let driven = crate::persist::driven_runs();
                    let _ = self.store.heartbeat(&owner, &driven, self.lease).await;
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(report) = done {
                        in_flight.remove(&report.run_id);
                        self.deliver(report, &mut on_run).await;
                    }
                }
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
        running.shutdown().await;
        Ok(())
    }

    /// Reports a run this worker drove to its end, unless another worker reported it already.
    async fn deliver(&self, report: WorkerReport, on_run: &mut (impl FnMut(WorkerReport) + Send)) {
        // A store error here delivers anyway: twice is better than never.
        if self.store.mark_reported(report.run_id).await.unwrap_or(true) {
            on_run(report);
        }
    }

    /// Reports the runs workers took over that ended while nobody listened (this worker's
    /// previous life, say), from the store.
    async fn deliver_stored(
        &self,
        flows: &[String],
        in_flight: &HashSet<RunId>,
        on_run: &mut (impl FnMut(WorkerReport) + Send),
    ) {
        let Ok(ended) = self.store.unreported_runs(flows, 64).await else { return };
        for run in ended.into_iter().filter(|r| !in_flight.contains(&r.run_id)) {
            if !self.store.mark_reported(run.run_id).await.unwrap_or(false) {
                continue;
            }
            let result = match run.status {
                RunStatus::Failed | RunStatus::Cancelled => Err(Error::Durable(DurableError::RecordedEnd {
                    run_id: run.run_id.to_string(),
                    status: run.status.to_string(),
                    message: run.error.unwrap_or_default(),
                })),
                _ => Ok(()),
            };
            on_run(WorkerReport { run_id: run.run_id, flow: run.flow, result });
        }
    }
}
