//! Durable runs: what the engine writes to a store, and the interface a store implements.
//!
//! The engine knows nothing of SQL: a store (`crewflow-store` has SQLite and PostgreSQL) implements
//! [`RunStore`]. With a store, a run is recorded when it starts; after each completed step the
//! policy selects, a [`Checkpoint`] — the state, the whole frontier, and the outputs of the steps
//! completed since the last one — is written in one transaction; the run's end is recorded too.
//! [`Flow::resume`](crate::Flow::resume) continues a run exactly from its last checkpoint.
//!
//! **Ownership.** A run is owned by one process at a time, through a lease (`owner`,
//! `lease_until`) and a fencing token that increases every time the run changes hands. Every
//! write names the token it holds; a write with a stale token fails with [`LeaseLost`], so a
//! process that lost its lease (paused, partitioned) can never overwrite the new owner's work.
//!
//! A paused run's feedback record (its pending requests and the answers so far) is kept with
//! its checkpoint (the `pending` column). What else lives in a store, designed now and
//! implemented with their features: conversation sessions and their turns, traces, and
//! memories (see `docs/store.md`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::id::RunId;

mod keys;
mod load;
mod owner;
mod schedules;
mod tree;

pub use keys::StoredApiKey;
use keys::no_keys;
pub use load::{LoadRun, StepOutputs};
pub(crate) use owner::Driving;
pub use owner::{driven_runs, owner_is_dead, process_owner};
use schedules::no_schedules;
pub use schedules::{NewSchedule, NewWebhook, QueuedWebhook, ScheduleFire, StoredSchedule};
pub use tree::RunTree;

/// The future a store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker to claim it.
    Queued,
    /// Being run (or orphaned, if its owner's lease expired).
    Running,
    /// Waiting for human input.
    Paused,
    /// Finished; its output is recorded.
    Finished,
    /// A step failed; it can be resumed from its last checkpoint.
    Failed,
    /// Cancelled; it can be resumed from its last checkpoint.
    Cancelled,
}

impl RunStatus {
    /// The status as stored (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "paused" => RunStatus::Paused,
            "finished" => RunStatus::Finished,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A completed step execution, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    /// The execution's id within the run.
    pub activation: u64,
    /// The step.
    pub step: Arc<str>,
    /// Its output, as JSON text.
    pub output: String,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

/// The step execution a run was started from, when a flow is kicked off (or queued) inside
/// another run's step: a nested run. Recorded with the run so its trace can be drawn under
/// that step (`crewflow trace`, OpenTelemetry export) and found from the outer run
/// ([`RunFilter::parent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentStep {
    /// The outer run.
    pub run_id: RunId,
    /// The outer step's execution (its activation id).
    pub activation: u64,
}

/// A new run, recorded before its first step.
#[derive(Clone, Debug)]
pub struct NewRun {
    /// The run's id.
    pub run_id: RunId,
    /// The flow's name.
    pub flow: Arc<str>,
    /// The flow's graph fingerprint (a run is only resumed by the same definition).
    pub fingerprint: u64,
    /// `Running` (owned by `owner`) or `Queued` (for a worker).
    pub status: RunStatus,
    /// The kickoff inputs, as JSON text.
    pub inputs: Option<String>,
    /// The kickoff payload, as JSON text (start steps in flight at a crash get it again).
    pub payload: Option<String>,
    /// The initial state, as JSON text.
    pub state: String,
    /// The version of the state's type (see [`crate::versions`]).
    pub state_version: u32,
    /// The state is large and its checkpoints will be deltas: a store that keeps deltas
    /// ([`RunStore::state_deltas`]) keeps it as the start of the run's chain.
    pub chained: bool,
    /// The initial frontier, as JSON text.
    pub frontier: String,
    /// The owning process.
    pub owner: Arc<str>,
    /// How long the lease lasts without renewal.
    pub lease: Duration,
    /// The step execution it was started from, for a nested run.
    pub parent: Option<ParentStep>,
}

/// A checkpoint: written after a completed step, in one transaction.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The run.
    pub run_id: RunId,
    /// The fencing token the writer holds.
    pub fencing: u64,
    /// Increases with every checkpoint of the run.
    pub seq: u64,
    /// The state, as JSON text; empty when `delta` is set.
    pub state: String,
    /// The version of the state's type (see [`crate::versions`]).
    pub state_version: u32,
    /// The state as a delta (a [`StateDelta`](crate::delta::StateDelta) as JSON text) from the
    /// previous checkpoint's: the store appends it to the run's chain instead of replacing the
    /// state (a whole state replaces the chain). Only sent to stores whose
    /// [`RunStore::state_deltas`] is true.
    pub delta: Option<String>,
    /// A whole `state` that starts a chain (see [`NewRun::chained`]).
    pub chained: bool,
    /// The run may have a chain in the store (a delta or a chained state was written, or the
    /// run was resumed): a whole state written into the run's row replaces it.
    pub had_chain: bool,
    /// The frontier, as JSON text.
    pub frontier: String,
    /// The steps completed since the previous checkpoint (at least one).
    pub steps: Vec<StepRow>,
    /// The run's feedback record (pending requests and answers so far), as JSON text; `None`
    /// leaves the stored record as it is.
    pub feedback: Option<String>,
}

/// How a run ended, recorded with the same fencing guard.
#[derive(Clone, Debug)]
pub struct RunEnd {
    /// The run.
    pub run_id: RunId,
    /// The fencing token the writer holds.
    pub fencing: u64,
    /// `Finished`, `Failed`, `Cancelled` (or `Paused`).
    pub status: RunStatus,
    /// For a finished run: the final checkpoint (state, frontier, remaining step outputs).
    pub checkpoint: Option<Checkpoint>,
    /// The activation whose output is the run's output.
    pub final_activation: Option<u64>,
    /// For a failed run: the error, as text.
    pub error: Option<String>,
}

/// A run as stored: its latest checkpoint and its stored step outputs (every one from
/// [`RunStore::load_run`]; those asked for from [`RunStore::load_run_with`]).
#[derive(Clone, Debug)]
pub struct StoredRun {
    /// The run.
    pub run_id: RunId,
    /// The flow's name.
    pub flow: String,
    /// The definition's fingerprint.
    pub fingerprint: u64,
    /// Where it stands.
    pub status: RunStatus,
    /// The current fencing token.
    pub fencing: u64,
    /// The current owner, if any.
    pub owner: Option<String>,
    /// Until when the owner's lease holds.
    pub lease_until: Option<DateTime<Utc>>,
    /// The last checkpoint's sequence number (0: none yet).
    pub seq: u64,
    /// The kickoff inputs, as JSON text.
    pub inputs: Option<String>,
    /// The kickoff payload, as JSON text.
    pub payload: Option<String>,
    /// The state at the last checkpoint, as JSON text.
    pub state: String,
    /// The version of the state's type it was written at (0 for runs written before versions).
    pub state_version: u32,
    /// The frontier at the last checkpoint, as JSON text.
    pub frontier: String,
    /// Completed steps, by activation: all of them, or those a [`LoadRun`] asked for.
    pub steps: Vec<StepRow>,
    /// The activation whose output is the run's output (finished runs).
    pub final_activation: Option<u64>,
    /// The error of a failed run.
    pub error: Option<String>,
    /// The feedback record (pending requests and answers), as JSON text.
    pub feedback: Option<String>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The step execution it was started from, for a nested run.
    pub parent: Option<ParentStep>,
}

/// One line of a run listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run.
    pub run_id: RunId,
    /// The flow's name.
    pub flow: String,
    /// Where it stands.
    pub status: RunStatus,
    /// How many step executions are stored.
    pub steps_done: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// The error of a failed run.
    pub error: Option<String>,
    /// The step execution it was started from, for a nested run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentStep>,
}

/// Which runs to list.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    /// Only runs of this flow.
    pub flow: Option<String>,
    /// Only runs with this status.
    pub status: Option<RunStatus>,
    /// Only the runs started from a step of this run (its nested runs).
    pub parent: Option<RunId>,
    /// At most this many (newest first); 0 means 100.
    pub limit: usize,
}

/// What [`RunStore::compact`] removes. Nothing a running, queued or paused run needs is ever
/// removed, whatever the policy; failed runs keep their journal until they are deleted (they can
/// be resumed after a fix, and a resumed step replays its journal).
///
/// ```
/// use std::time::Duration;
/// use crewflow_core::persist::Retention;
///
/// let day = Duration::from_secs(24 * 3600);
/// let policy = Retention::new()
///     .delete_ended_after(30 * day)          // finished, failed and cancelled runs
///     .flow_ttl("nightly-report", 7 * day)   // a shorter life for one flow's runs
///     .drop_journal_after(day);              // finished runs replay nothing
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Runs that ended (finished, failed or cancelled) longer ago than this are deleted, with
    /// their step outputs and journal. `None` keeps them.
    pub delete_ended_after: Option<Duration>,
    /// Per-flow overrides of `delete_ended_after` (a time to live per flow).
    pub flow_ttl: std::collections::BTreeMap<String, Duration>,
    /// The journal of a finished or cancelled run is dropped this long after its end: such a
    /// run never runs a step again, so nothing replays it. `None` keeps it.
    pub drop_journal_after: Option<Duration>,
    /// Conversation traces finalized longer ago than this are deleted with their spans (the
    /// sessions and their turns stay). `None` keeps them.
    pub drop_traces_after: Option<Duration>,
    /// Give the freed space back to the file system (SQLite: `VACUUM`, which rewrites the file
    /// and blocks writers while it runs; PostgreSQL reclaims space itself).
    pub vacuum: bool,
}

impl Retention {
    /// Keeps everything (a starting point for the setters).
    pub fn new() -> Self {
        Retention::default()
    }

    /// Deletes ended runs older than `age` (see [`Retention::delete_ended_after`]).
    pub fn delete_ended_after(mut self, age: Duration) -> Self {
        self.delete_ended_after = Some(age);
        self
    }

    /// Deletes the ended runs of `flow` older than `age`, whatever `delete_ended_after` says.
    pub fn flow_ttl(mut self, flow: impl Into<String>, age: Duration) -> Self {
        self.flow_ttl.insert(flow.into(), age);
        self
    }

    /// Drops the journal of finished and cancelled runs older than `age`.
    pub fn drop_journal_after(mut self, age: Duration) -> Self {
        self.drop_journal_after = Some(age);
        self
    }

    /// Deletes conversation traces finalized longer ago than `age` (see
    /// [`Retention::drop_traces_after`]).
    pub fn drop_traces_after(mut self, age: Duration) -> Self {
        self.drop_traces_after = Some(age);
        self
    }

    /// Gives freed space back to the file system (see [`Retention::vacuum`]).
    pub fn vacuum(mut self, vacuum: bool) -> Self {
        self.vacuum = vacuum;
        self
    }
}

/// What a [`RunStore::compact`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Runs deleted.
    pub runs: u64,
    /// Step outputs deleted (with their runs).
    pub steps: u64,
    /// Journal entries deleted (of deleted runs, and dropped journals).
    pub journal: u64,
    /// Conversation traces deleted (with their spans).
    pub traces: u64,
}

/// A run taken over by a process, with the fencing token to write with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The run.
    pub run_id: RunId,
    /// The flow it belongs to.
    pub flow: String,
    /// The new fencing token.
    pub fencing: u64,
}

/// The write was refused: another process owns the run now (its fencing token is newer).
#[derive(Debug, thiserror::Error)]
#[error(
    "run {run_id} is owned by another process now (fencing token {current}, this process held {held}); it stopped without writing"
)]
pub struct LeaseLost {
    /// The run.
    pub run_id: RunId,
    /// The token this process held.
    pub held: u64,
    /// The token in the store.
    pub current: u64,
}

/// A claim was refused: the run is owned by a live process.
#[derive(Debug, thiserror::Error)]
#[error("run {run_id} is being run by {owner} (lease until {until}); wait for it, or for its lease to expire")]
pub struct RunOwned {
    /// The run.
    pub run_id: RunId,
    /// Its owner.
    pub owner: String,
    /// Until when the owner's lease holds.
    pub until: DateTime<Utc>,
}

/// Where runs are kept. Implemented by `crewflow-store` for SQLite and PostgreSQL.
pub trait RunStore: Send + Sync + 'static {
    /// A short description for error messages (`sqlite:/path/runs.db`, `postgres://host/db`).
    fn describe(&self) -> String;

    /// Records a new run with fencing token 1. Fails if a run with this id exists.
    fn create_run<'a>(&'a self, run: &'a NewRun) -> StoreFuture<'a, ()>;

    /// Writes a checkpoint in one transaction; fails with [`LeaseLost`] if the run's fencing
    /// token is not `checkpoint.fencing`. (Leases are renewed by the store's heartbeat, not by
    /// checkpoints, so a checkpoint touches no indexed column.)
    fn save_checkpoint<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()>;

    /// Whether the store keeps state deltas ([`Checkpoint::delta`]): a chain per run, applied
    /// by [`load_run`](RunStore::load_run) (see [`crate::delta`]). A store that does not is
    /// sent whole states only.
    fn state_deltas(&self) -> bool {
        false
    }

    /// Records how the run ended (and its final checkpoint, if any), releasing the lease; fails
    /// with [`LeaseLost`] on a stale token.
    fn end_run<'a>(&'a self, end: &'a RunEnd) -> StoreFuture<'a, ()>;

    /// The run with every stored step output, or `None` if the store has no run with this id
    /// (to read less, see [`load_run_with`](RunStore::load_run_with)).
    fn load_run(&self, run_id: RunId) -> StoreFuture<'_, Option<StoredRun>>;

    /// The run, or `None` if the store has no run with this id: its record, state and frontier
    /// always, and the step outputs `what` asks for ([`LoadRun`]; by default only the run's
    /// output), read in one snapshot. Cheaper than [`load_run`](RunStore::load_run) when a run
    /// has many steps or large outputs; the default implementation reads everything and
    /// drops what was not asked for.
    fn load_run_with(&self, run_id: RunId, what: LoadRun) -> StoreFuture<'_, Option<StoredRun>> {
        Box::pin(async move {
            let mut run = self.load_run(run_id).await?;
            if let Some(run) = &mut run {
                what.trim(run);
            }
            Ok(run)
        })
    }

    /// Every stored step output of a run, by activation (empty for an unknown run): the
    /// outputs [`load_run_with`](RunStore::load_run_with) left out, on demand. The default
    /// reads the whole run.
    fn load_steps(&self, run_id: RunId) -> StoreFuture<'_, Vec<StepRow>> {
        Box::pin(async move { Ok(self.load_run(run_id).await?.map(|r| r.steps).unwrap_or_default()) })
    }

    /// Takes over a run to resume it: increments its fencing token and makes `owner` the owner.
    /// Fails with [`RunOwned`] if another owner's lease has not expired, unless that owner is
    /// `replacing` (an owner known to be dead, see [`owner_is_dead`]).
    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        owner: &'a str,
        lease: Duration,
        replacing: Option<&'a str>,
    ) -> StoreFuture<'a, Claim>;

    /// Takes over a *paused* run to answer it: like [`claim_run`](RunStore::claim_run), but only
    /// while the run is still paused at checkpoint `seq` (the one the answer was read against),
    /// checked and changed atomically, so two answers to one pause (a double-clicked button, a
    /// webhook delivered twice) never both continue it. `None` when the run is not paused at
    /// that checkpoint (any more). The default falls back to `claim_run` (without that
    /// guarantee) for stores that do not implement it.
    fn claim_paused<'a>(
        &'a self,
        run_id: RunId,
        seq: u64,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Claim>> {
        let _ = seq;
        Box::pin(async move { self.claim_run(run_id, owner, lease, None).await.map(Some) })
    }

    /// Claims up to `limit` runs of the given flows that are queued, or running with an expired
    /// lease (their owner stopped), oldest first. Concurrent claimers never get the same run.
    fn claim_orphans<'a>(
        &'a self,
        flows: &'a [String],
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Claim>>;

    /// Extends the leases `owner` holds on `runs` (those still running); returns how many.
    /// Callers pass the runs this process is driving ([`driven_runs`]): a run whose driver
    /// stopped without recording its end is not renewed, so its lease lapses and any process
    /// can take it over.
    fn heartbeat<'a>(&'a self, owner: &'a str, runs: &'a [RunId], lease: Duration) -> StoreFuture<'a, u64>;

    /// Lists runs, newest first.
    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>>;

    /// Runs of `flows` that a worker took over ([`claim_orphans`](RunStore::claim_orphans)) and
    /// that have ended (finished, failed, cancelled or paused) without their end being reported
    /// yet ([`mark_reported`](RunStore::mark_reported)), oldest first: what a worker reports after
    /// a restart. The default lists none.
    fn unreported_runs<'a>(&'a self, flows: &'a [String], limit: usize) -> StoreFuture<'a, Vec<RunSummary>> {
        let _ = (flows, limit);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Marks the end of a run a worker took over as reported; true for the one caller that
    /// marked it (so two workers never report one run twice). The default reports nothing twice
    /// by reporting nothing from the store.
    fn mark_reported(&self, run_id: RunId) -> StoreFuture<'_, bool> {
        let _ = run_id;
        Box::pin(async { Ok(true) })
    }

    /// Records one result in the run's journal of side effects (see [`crate::journal`]),
    /// committed before it returns; fails with [`LeaseLost`] if the run's fencing token is not
    /// `fencing`. Recording a key twice keeps the first result. The default refuses: a store
    /// without a journal cannot promise that side effects happen once.
    fn record_journal<'a>(&'a self, run_id: RunId, fencing: u64, entry: &'a JournalEntry) -> StoreFuture<'a, ()> {
        let _ = (run_id, fencing, entry);
        let store = self.describe();
        Box::pin(async move { Err(format!("the store {store} keeps no journal of side effects").into()) })
    }

    /// Removes what `retention` allows, in one transaction: ended runs past their time (with
    /// their step outputs and journal) and the journals of finished runs. Never touches a
    /// running, queued or paused run. The default refuses.
    fn compact<'a>(&'a self, retention: &'a Retention) -> StoreFuture<'a, CompactReport> {
        let _ = retention;
        let store = self.describe();
        Box::pin(async move { Err(format!("the store {store} cannot compact").into()) })
    }

    /// The journal entries of the given executions of a run (those a resumed run re-launches).
    fn load_journal<'a>(&'a self, run_id: RunId, executions: &'a [u64]) -> StoreFuture<'a, Vec<JournalEntry>> {
        let _ = (run_id, executions);
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Every journal entry of a run, each with the time it was recorded, by execution and in
    /// the order recorded: what a run's trace draws under its steps (model calls, tool calls;
    /// see [`RunTree`]). The default reads nothing (a store without a journal).
    fn load_whole_journal(&self, run_id: RunId) -> StoreFuture<'_, Vec<JournalEntry>> {
        let _ = run_id;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Records a cron schedule ([`NewSchedule`]). The default refuses: the store keeps no
    /// schedules (see `docs/server.md`, schedules).
    fn create_schedule<'a>(&'a self, schedule: &'a NewSchedule) -> StoreFuture<'a, ()> {
        let _ = schedule;
        no_schedules(self.describe())
    }

    /// The schedules of `tenant` (of `flow` only, when given), oldest first.
    fn list_schedules<'a>(&'a self, tenant: &'a str, flow: Option<&'a str>) -> StoreFuture<'a, Vec<StoredSchedule>> {
        let _ = (tenant, flow);
        no_schedules(self.describe())
    }

    /// One schedule of `tenant`, with its latest fires (newest first, at most `fires`); `None`
    /// when `tenant` has no schedule with this id (another tenant's ids included).
    fn load_schedule<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
        fires: usize,
    ) -> StoreFuture<'a, Option<(StoredSchedule, Vec<ScheduleFire>)>> {
        let _ = (tenant, id, fires);
        no_schedules(self.describe())
    }

    /// Deletes a schedule of `tenant` and the record of its fires (not the runs it started);
    /// false when `tenant` has no schedule with this id.
    fn delete_schedule<'a>(&'a self, tenant: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        let _ = (tenant, id);
        no_schedules(self.describe())
    }

    /// Keeps a webhook event until it is delivered ([`claim_webhooks`](RunStore::claim_webhooks),
    /// [`settle_webhook`](RunStore::settle_webhook)); due at once. The default refuses (the
    /// server then delivers from memory).
    fn queue_webhook<'a>(&'a self, webhook: &'a NewWebhook) -> StoreFuture<'a, ()> {
        let _ = webhook;
        no_schedules(self.describe())
    }

    /// Claims up to `limit` due webhook events of `tenant` for `lease` (no other claimer gets
    /// them until the lease runs out or they are settled), oldest due first, counting the
    /// attempt.
    fn claim_webhooks<'a>(
        &'a self,
        tenant: &'a str,
        limit: usize,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<QueuedWebhook>> {
        let _ = (tenant, limit, lease);
        no_schedules(self.describe())
    }

    /// Settles a claimed webhook event: `None` removes it (delivered, or given up), `Some(at)`
    /// makes it due again at `at`.
    fn settle_webhook<'a>(&'a self, id: &'a str, retry_at: Option<DateTime<Utc>>) -> StoreFuture<'a, ()> {
        let _ = (id, retry_at);
        no_schedules(self.describe())
    }

    /// Records an API key ([`StoredApiKey`]: its hash, never the key). Fails when its id or
    /// its hash is in the store already. The default refuses: the store keeps no keys.
    fn create_api_key<'a>(&'a self, key: &'a StoredApiKey) -> StoreFuture<'a, ()> {
        let _ = key;
        no_keys(self.describe())
    }

    /// The API keys (of `tenant` only, when given), revoked ones included, oldest first.
    fn list_api_keys<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<StoredApiKey>> {
        let _ = tenant;
        no_keys(self.describe())
    }

    /// Revokes the API key with this id, from now on: it reaches nothing any more. Returns
    /// when it was revoked (then, or earlier if it was already), `None` when the store has no
    /// key with this id.
    fn revoke_api_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DateTime<Utc>>> {
        let _ = id;
        no_keys(self.describe())
    }

    /// Fires one tick of a schedule, once across every process sharing the store: in one
    /// transaction, records the tick as a unique row (schedule, tick), moves the schedule's
    /// last tick to `tick` and records `run` (a queued run, [`RunStatus::Queued`]). True for
    /// the one caller that fired it; false (and nothing written) when the tick was fired
    /// already, a later tick was, or the schedule is gone.
    fn fire_schedule<'a>(&'a self, id: &'a str, tick: DateTime<Utc>, run: &'a NewRun) -> StoreFuture<'a, bool> {
        let _ = (id, tick, run);
        no_schedules(self.describe())
    }

    /// Skips one tick of a schedule (it is too late to fire), once across every process
    /// sharing the store: like [`fire_schedule`](RunStore::fire_schedule), moves the schedule's
    /// last tick to `tick` and records the tick, with no run ([`ScheduleFire::run_id`] `None`).
    /// True for the one caller that skipped it; false when the tick was fired or skipped
    /// already, a later tick was, or the schedule is gone.
    fn skip_schedule_tick<'a>(&'a self, id: &'a str, tick: DateTime<Utc>) -> StoreFuture<'a, bool> {
        let _ = (id, tick);
        no_schedules(self.describe())
    }
}

/// One recorded result of a run's journal of side effects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// The step execution that made the call.
    pub activation: u64,
    /// The call's key within the execution (`name`, `name#1`, ...).
    pub key: String,
    /// The result, as JSON.
    pub value: String,
    /// When the store recorded it: set on entries read back from a store; a store stamps its
    /// own time when recording (what is given here is not written).
    pub recorded_at: Option<DateTime<Utc>>,
}

/// How long a lease lasts without renewal, unless the flow sets another.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
