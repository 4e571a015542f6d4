//! The SQLite store: a file (or memory), WAL mode, one writing connection per store.
//!
//! Kept as one file on purpose: it is the `RunStore` impl of one backend (the runs' lifecycle:
//! create, checkpoint, end, claim, heartbeat, list), whose statements must agree with each
//! other on every column and status; the rest of the backend lives beside it in `sqlite_*.rs`
//! (connections, schema, journal, compaction, memories, sessions, reports, the state chain).
//!
//! How calls run on the connections (inline, `block_in_place`, read-only connections) is
//! `sqlite_connection.rs`. `synchronous=NORMAL` in WAL mode by default: a killed process loses
//! nothing; a power cut may lose the last transactions.
//! [`Synchronous::Full`] survives power cuts too, at the cost of a disk flush per commit.
//!

use std::path::Path;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use crewflow_core::RunId;
use crewflow_core::persist::{
    Checkpoint, Claim, CompactReport, JournalEntry, LeaseLost, LoadRun, NewRun, NewSchedule, NewWebhook, QueuedWebhook,
    Retention, RunEnd, RunFilter, RunOwned, RunStatus, RunStore, RunSummary, ScheduleFire, StepOutputs, StepRow,
    StoreFuture, StoredApiKey, StoredRun, StoredSchedule,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::StoreError;
use crate::sqlite_chain::{chain_row, chained_state, row_state, write_chain};
use crate::sqlite_connection::{Inner, Location};
use crate::util::{fingerprint, may_claim, parent, parse_fingerprint, parse_run_id, parse_status};

/// How a SQLite store waits for the disk at each commit (SQLite's `PRAGMA synchronous`; the
/// store runs in WAL mode). See `docs/store.md` for what each survives and costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// `NORMAL`, the default: a commit is written to the log without waiting for the disk; the
    /// log is flushed to the disk at SQLite's own checkpoints. A process that crashes or is
    /// killed loses nothing; a power cut or an operating-system crash may lose the last
    /// commits (the database stays consistent).
    #[default]
    Normal,
    /// `FULL`: every commit waits until the log is on the disk (an `fsync` per checkpoint of a
    /// run), so a committed checkpoint also survives a power cut. What the Python peers use.
    Full,
}

impl Synchronous {
    /// The mode as SQLite and store URLs name it (`normal`, `full`).
    pub fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "normal",
            Synchronous::Full => "full",
        }
    }

    /// Reads a mode by name, in any case (`normal`, `FULL`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "normal" => Some(Synchronous::Normal),
            "full" => Some(Synchronous::Full),
            _ => None,
        }
    }
}

impl std::fmt::Display for Synchronous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store in a SQLite file (the default) or in memory.
///
/// Opening is lazy: nothing touches the disk until the first run is recorded or read.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use crewflow_store::SqliteStore;
/// let store = SqliteStore::open("runs.db"); // no file yet
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
}

impl SqliteStore {
    /// A store in the file at `path` (created on first use).
    pub fn open(path: impl AsRef<Path>) -> Self {
        Self::with(Location::File(path.as_ref().to_path_buf()))
    }

    /// A store in memory, gone when the last handle is dropped.
    pub fn in_memory() -> Self {
        Self::with(Location::Memory)
    }

    /// The store a URL names, after `sqlite:` or `sqlite://`: `PATH` or `:memory:`, with
    /// options as a query (`runs.db?synchronous=full&background_checkpoints=false`).
    pub(crate) fn from_url(url: &str, rest: &str) -> Result<Self, StoreError> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut store = if path == ":memory:" { Self::in_memory() } else { Self::open(path) };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let invalid = |problem: String| StoreError::InvalidOption { url: url.to_string(), problem };
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("synchronous", value) => {
                    let mode = Synchronous::parse(value).ok_or_else(|| {
                        invalid(format!(
                            "`synchronous={value}` is not a mode; use `synchronous=normal` (the default) or `synchronous=full`"
                        ))
                    })?;
                    store = store.synchronous(mode);
                }
                ("background_checkpoints", value) => {
                    let on = match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(invalid(format!(
                                "`background_checkpoints={value}` is not a switch; use `background_checkpoints=true` (the default) or `background_checkpoints=false`"
                            )));
                        }
                    };
                    store = store.background_checkpoints(on);
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option `{pair}`; a SQLite store takes `synchronous=normal|full` and `background_checkpoints=true|false`"
                    )));
                }
            }
        }
        Ok(store)
    }

    fn with(location: Location) -> Self {
        SqliteStore { inner: Arc::new(Inner::new(location)) }
    }

    /// Sets how commits wait for the disk: [`Synchronous::Normal`] (the default) or
    /// [`Synchronous::Full`] (survives power cuts; a disk flush per checkpoint). Also
    /// `sqlite://PATH?synchronous=full` in a store URL. The mode holds for this store and its
    /// clones; set on a store already in use, it applies from its next call.
    ///
    /// ```no_run
    /// use crewflow_store::{SqliteStore, Synchronous};
    /// let store = SqliteStore::open("runs.db").synchronous(Synchronous::Full);
    /// ```
    pub fn synchronous(self, mode: Synchronous) -> Self {
        self.inner.conn.lock().unwrap_or_else(PoisonError::into_inner).synchronous = mode;
        self
    }

    /// Whether the file's write-ahead log is checkpointed on a thread of the store's own (every
    /// 64 writes; the default) or inside the commit that takes the log past 1,000 pages, as
    /// SQLite does on its own (`false`), which then waits for two disk flushes: milliseconds on a
    /// busy disk, for which every other call of the store waits too. In the background, served
    /// conversation turns (`serve_turns`) run 10–20 % faster and 64 sessions at once
    /// (`sessions_10k`) a fifth faster; a tight loop of tiny writes (`persist_chain20`, a
    /// checkpoint every 20 µs) runs a third slower. Durability is the same either way. Also
    /// `sqlite://PATH?background_checkpoints=false` in a store URL. For a file store, set before
    /// its first use (it applies when the file is opened). See `docs/store.md`.
    ///
    /// ```no_run
    /// use crewflow_store::SqliteStore;
    /// let runs = SqliteStore::open("runs.db").background_checkpoints(false);
    /// ```
    pub fn background_checkpoints(self, on: bool) -> Self {
        self.inner.conn.lock().unwrap_or_else(PoisonError::into_inner).background = on;
        self
    }

    /// Whether the log is checkpointed in the background (see
    /// [`background_checkpoints`](SqliteStore::background_checkpoints)).
    pub fn checkpoints_in_background(&self) -> bool {
        self.inner.conn.lock().unwrap_or_else(PoisonError::into_inner).background
    }

    /// The mode set by [`synchronous`](SqliteStore::synchronous).
    pub fn synchronous_mode(&self) -> Synchronous {
        self.inner.conn.lock().unwrap_or_else(PoisonError::into_inner).synchronous
    }

    /// The file, for a file store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path()
    }

    /// Opens the database now (it is otherwise opened on first use): creates the file and its
    /// tables, or checks an existing one.
    pub async fn connect(&self) -> Result<(), StoreError> {
        self.call(|_| Ok(())).await
    }

    fn keep_leases_alive(&self, owner: &str, lease: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        self.inner.heartbeat.ensure(owner, lease, move |owner, lease| {
            let weak = weak.clone();
            async move {
                let inner = weak.upgrade()?;
                let store = SqliteStore { inner };
                Some(store.renew(owner, crewflow_core::persist::driven_runs(), lease).await)
            }
        });
    }

    /// Renews `owner`'s leases on `runs` (the runs it drives; see `RunStore::heartbeat`).
    async fn renew(&self, owner: Arc<str>, runs: Vec<RunId>, lease: Duration) -> Result<u64, StoreError> {
        if runs.is_empty() {
            return Ok(0);
        }
        let ids = serde_json::Value::from(runs.iter().map(RunId::to_string).collect::<Vec<_>>()).to_string();
        self.call(move |c| {
            let n = c.execute(
                "UPDATE crewflow_runs SET lease_until = ?1
                 WHERE owner = ?2 AND status = 'running' AND id IN (SELECT value FROM json_each(?3))",
                params![ms(now()) + lease_ms(lease), &*owner, ids],
            )?;
            Ok(n as u64)
        })
        .await
    }
}

/// A run's record, state and the step outputs `what` asks for, in one snapshot (another
/// process's checkpoint may commit between the reads).
fn read_run(c: &mut rusqlite::Connection, run_id: RunId, what: LoadRun) -> Result<Option<StoredRun>, StoreError> {
    let tx = c.transaction()?;
    let id = run_id.to_string();
    let run = tx
        .prepare_cached(
            "SELECT flow, fingerprint, status, fencing, owner, lease_until, seq, inputs, payload, state,
                 frontier, final_activation, error, created_at, updated_at, pending, state_version,
                 parent_run_id, parent_activation
             FROM crewflow_runs WHERE id = ?1",
        )?
        .query_row([&id], |r| {
            Ok(StoredRun {
                run_id,
                flow: r.get(0)?,
                fingerprint: parse_fingerprint(&r.get::<_, String>(1)?),
                status: RunStatus::parse(&r.get::<_, String>(2)?).unwrap_or(RunStatus::Failed),
                fencing: r.get::<_, i64>(3)? as u64,
                owner: r.get(4)?,
                lease_until: r.get::<_, Option<i64>>(5)?.map(from_ms),
                seq: r.get::<_, i64>(6)? as u64,
                inputs: r.get(7)?,
                payload: r.get(8)?,
                state: r.get(9)?,
                frontier: r.get(10)?,
                final_activation: r.get::<_, Option<i64>>(11)?.map(|a| a as u64),
                error: r.get(12)?,
                created_at: from_ms(r.get(13)?),
                updated_at: from_ms(r.get(14)?),
                feedback: r.get(15)?,
                state_version: r.get(16)?,
                steps: Vec::new(),
                parent: parent(r.get(17)?, r.get(18)?),
            })
        })
        .optional()?;
    let Some(mut run) = run else { return Ok(None) };
    run.steps = match what.outputs {
        StepOutputs::All => read_steps(&tx, &id, None)?,
        StepOutputs::Final => match run.final_activation {
            Some(last) => read_steps(&tx, &id, Some(last))?,
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    run.state = chained_state(&tx, run_id, std::mem::take(&mut run.state))?;
    tx.commit()?;
    Ok(Some(run))
}

/// A run's stored step outputs by activation: all of them, or the one of `activation`.
fn read_steps(c: &rusqlite::Connection, id: &str, activation: Option<u64>) -> Result<Vec<StepRow>, StoreError> {
    let row = |r: &rusqlite::Row<'_>| {
        Ok(StepRow {
            activation: r.get::<_, i64>(0)? as u64,
            step: Arc::from(r.get_ref(1)?.as_str()?),
            output: r.get(2)?,
            finished_at: from_ms(r.get(3)?),
        })
    };
    let steps = match activation {
        None => c
            .prepare_cached(
                "SELECT activation, step, output, finished_at FROM crewflow_steps
                 WHERE run_id = ?1 ORDER BY activation",
            )?
            .query_map([id], row)?
            .collect::<Result<_, _>>()?,
        Some(a) => c
            .prepare_cached(
                "SELECT activation, step, output, finished_at FROM crewflow_steps WHERE run_id = ?1 AND activation = ?2",
            )?
            .query_map(params![id, a as i64], row)?
            .collect::<Result<_, _>>()?,
    };
    Ok(steps)
}

pub(crate) fn boxed<T>(r: Result<T, StoreError>) -> Result<T, crewflow_core::BoxError> {
    r.map_err(StoreError::into_boxed)
}

impl RunStore for SqliteStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn state_deltas(&self) -> bool {
        true
    }

    fn create_run<'a>(&'a self, run: &'a NewRun) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let row = run.clone();
            let running = run.status == RunStatus::Running;
            boxed(
                self.call_short(move |c| {
                    let t = ms(now());
                    let (owner, lease_until, fencing) = if row.status == RunStatus::Queued {
                        (None, None, 0)
                    } else {
                        (Some(row.owner.to_string()), Some(t + lease_ms(row.lease)), 1)
                    };
                    let tx = c.transaction()?;
                    let in_row = if row.chained { "" } else { &row.state };
                    let inserted = tx.execute(
                        "INSERT INTO crewflow_runs (id, flow, fingerprint, status, owner, lease_until, fencing, seq,
                             inputs, payload, state, frontier, created_at, updated_at, state_version,
                             parent_run_id, parent_activation)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14, ?15)",
                        params![
                            row.run_id.to_string(),
                            &*row.flow,
                            fingerprint(row.fingerprint),
                            row.status.as_str(),
                            owner,
                            lease_until,
                            fencing,
                            row.inputs,
                            row.payload,
                            in_row,
                            row.frontier,
                            t,
                            row.state_version,
                            row.parent.map(|p| p.run_id.to_string()),
                            row.parent.map(|p| p.activation as i64)
                        ],
                    );
                    match inserted {
                        Ok(_) => {
                            if row.chained {
                                chain_row(&tx, &row.run_id.to_string(), 0, "whole", &row.state)?;
                            }
                            tx.commit()?;
                            Ok(())
                        }
                        Err(rusqlite::Error::SqliteFailure(e, _))
                            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                        {
                            Err(StoreError::RunExists(row.run_id.to_string()))
                        }
                        Err(e) => Err(e.into()),
                    }
                })
                .await,
            )?;
            if running {
                self.keep_leases_alive(&run.owner, run.lease);
            }
            Ok(())
        })
    }

    fn save_checkpoint<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let cp = checkpoint.clone();
            boxed(
                self.call_short(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let t = ms(now());
                    // The row's state: kept for a delta, '' when the state lives in the chain.
                    let sql = "UPDATE crewflow_runs SET state = coalesce(?1, state), frontier = ?2, seq = ?3,
                                   updated_at = ?4, pending = coalesce(?7, pending), state_version = ?8
                               WHERE id = ?5 AND fencing = ?6";
                    let updated = tx.prepare_cached(sql)?.execute(params![
                        row_state(&cp),
                        cp.frontier,
                        cp.seq as i64,
                        t,
                        cp.run_id.to_string(),
                        cp.fencing as i64,
                        cp.feedback,
                        cp.state_version,
                    ])?;
                    if updated == 0 {
                        return Err(fenced(&tx, cp.run_id, cp.fencing));
                    }
                    write_chain(&tx, &cp)?;
                    insert_steps(&tx, cp.run_id, &cp.steps)?;
                    tx.commit()?;
                    Ok(())
                })
                .await,
            )
        })
    }

    fn end_run<'a>(&'a self, end: &'a RunEnd) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let end = end.clone();
            boxed(
                self.call_short(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let t = ms(now());
                    let id = end.run_id.to_string();
                    let updated = match &end.checkpoint {
                        Some(cp) => tx.execute(
                            "UPDATE crewflow_runs SET status = ?1, error = ?2, final_activation = ?3, owner = NULL,
                                 lease_until = NULL, updated_at = ?4, state = coalesce(?5, state), frontier = ?6, seq = ?7,
                                 pending = coalesce(?10, pending), state_version = ?11
                             WHERE id = ?8 AND fencing = ?9",
                            params![
                                end.status.as_str(),
                                end.error,
                                end.final_activation.map(|a| a as i64),
                                t,
                                row_state(cp),
                                cp.frontier,
                                cp.seq as i64,
                                id,
                                end.fencing as i64,
                                cp.feedback,
                                cp.state_version,
                            ],
                        )?,
                        None => tx.execute(
                            "UPDATE crewflow_runs SET status = ?1, error = ?2, final_activation = ?3, owner = NULL,
                                 lease_until = NULL, updated_at = ?4 WHERE id = ?5 AND fencing = ?6",
                            params![
                                end.status.as_str(),
                                end.error,
                                end.final_activation.map(|a| a as i64),
                                t,
                                id,
                                end.fencing as i64
                            ],
                        )?,
                    };
                    if updated == 0 {
                        return Err(fenced(&tx, end.run_id, end.fencing));
                    }
                    if let Some(cp) = &end.checkpoint {
                        write_chain(&tx, cp)?;
                        insert_steps(&tx, end.run_id, &cp.steps)?;
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await,
            )
        })
    }

    fn load_run(&self, run_id: RunId) -> StoreFuture<'_, Option<StoredRun>> {
        self.load_run_with(run_id, LoadRun::everything())
    }

    fn load_run_with(&self, run_id: RunId, what: LoadRun) -> StoreFuture<'_, Option<StoredRun>> {
        Box::pin(async move { boxed(self.call_read(move |c| read_run(c, run_id, what)).await) })
    }

    fn load_steps(&self, run_id: RunId) -> StoreFuture<'_, Vec<StepRow>> {
        Box::pin(async move { boxed(self.call_read(move |c| read_steps(c, &run_id.to_string(), None)).await) })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        owner: &'a str,
        lease: Duration,
        replacing: Option<&'a str>,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let me = owner.to_string();
            let replacing = replacing.map(str::to_string);
            let claim = boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let id = run_id.to_string();
                    let t = ms(now());
                    let current: Option<(String, Option<String>, Option<i64>)> = tx
                        .query_row("SELECT flow, owner, lease_until FROM crewflow_runs WHERE id = ?1", [&id], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        })
                        .optional()?;
                    let Some((flow, holder, until)) = current else {
                        return Err(StoreError::NoSuchRun(id));
                    };
                    let live = until.is_some_and(|u| u > t);
                    if !may_claim(holder.as_deref(), live, &me, replacing.as_deref()) {
                        let (owner, until) = (holder.unwrap_or_default(), from_ms(until.unwrap_or(t)));
                        return Err(StoreError::Owned(RunOwned { run_id, owner, until }));
                    }
                    let fencing: i64 = tx.query_row(
                        "UPDATE crewflow_runs SET owner = ?1, lease_until = ?2, fencing = fencing + 1,
                             status = 'running', error = NULL, updated_at = ?3
                         WHERE id = ?4 RETURNING fencing",
                        params![me, t + lease_ms(lease), t, id],
                        |r| r.get(0),
                    )?;
                    tx.commit()?;
                    Ok(Claim { run_id, flow, fencing: fencing as u64 })
                })
                .await,
            )?;
            self.keep_leases_alive(owner, lease);
            Ok(claim)
        })
    }

    fn claim_paused<'a>(
        &'a self,
        run_id: RunId,
        seq: u64,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Claim>> {
        Box::pin(async move {
            let me = owner.to_string();
            let claim = boxed(
                self.call(move |c| {
                    let t = ms(now());
                    let claimed: Option<(String, i64)> = c
                        .prepare_cached(
                            "UPDATE crewflow_runs SET owner = ?1, lease_until = ?2, fencing = fencing + 1,
                                 status = 'running', error = NULL, updated_at = ?3
                             WHERE id = ?4 AND status = 'paused' AND seq = ?5 RETURNING flow, fencing",
                        )?
                        .query_row(params![me, t + lease_ms(lease), t, run_id.to_string(), seq as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()?;
                    Ok(claimed.map(|(flow, fencing)| Claim { run_id, flow, fencing: fencing as u64 }))
                })
                .await,
            )?;
            if claim.is_some() {
                self.keep_leases_alive(owner, lease);
            }
            Ok(claim)
        })
    }

    fn claim_orphans<'a>(
        &'a self,
        flows: &'a [String],
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Claim>> {
        Box::pin(async move {
            if flows.is_empty() || limit == 0 {
                return Ok(Vec::new());
            }
            let (flows, me) = (flows.to_vec(), owner.to_string());
            let claims = boxed(
                self.call(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let t = ms(now());
                    let placeholders = (0..flows.len()).map(|i| format!("?{}", i + 5)).collect::<Vec<_>>().join(", ");
                    let sql = format!(
                        "UPDATE crewflow_runs SET owner = ?1, lease_until = ?2, fencing = fencing + 1,
                             status = 'running', updated_at = ?3, report = 'pending'
                         WHERE id IN (
                             SELECT id FROM crewflow_runs
                             WHERE flow IN ({placeholders})
                               AND (status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < ?3)))
                             ORDER BY status = 'queued', updated_at LIMIT ?4)
                         RETURNING id, flow, fencing"
                    );
                    let mut values: Vec<rusqlite::types::Value> = vec![
                        me.clone().into(),
                        (t + lease_ms(lease)).into(),
                        t.into(),
                        (limit as i64).into(),
                    ];
                    values.extend(flows.iter().map(|f| rusqlite::types::Value::from(f.clone())));
                    let claims = {
                        let mut stmt = tx.prepare(&sql)?;
                        let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                        })?;
                        rows.map(|row| {
                            let (id, flow, fencing) = row?;
                            let run_id = parse_run_id(&id)?;
                            Ok(Claim { run_id, flow, fencing: fencing as u64 })
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?
                    };
                    tx.commit()?;
                    Ok(claims)
                })
                .await,
            )?;
            if !claims.is_empty() {
                self.keep_leases_alive(owner, lease);
            }
            Ok(claims)
        })
    }

    fn heartbeat<'a>(&'a self, owner: &'a str, runs: &'a [RunId], lease: Duration) -> StoreFuture<'a, u64> {
        Box::pin(async move { boxed(self.renew(Arc::from(owner), runs.to_vec(), lease).await) })
    }

    fn unreported_runs<'a>(&'a self, flows: &'a [String], limit: usize) -> StoreFuture<'a, Vec<RunSummary>> {
        self.unreported_runs_of(flows, limit)
    }

    fn mark_reported(&self, run_id: RunId) -> StoreFuture<'_, bool> {
        self.mark_run_reported(run_id)
    }

    fn record_journal<'a>(&'a self, run_id: RunId, fencing: u64, entry: &'a JournalEntry) -> StoreFuture<'a, ()> {
        self.record_journal_entry(run_id, fencing, entry)
    }

    fn compact<'a>(&'a self, retention: &'a Retention) -> StoreFuture<'a, CompactReport> {
        self.compact_runs(retention)
    }

    fn load_journal<'a>(&'a self, run_id: RunId, executions: &'a [u64]) -> StoreFuture<'a, Vec<JournalEntry>> {
        self.load_journal_entries(run_id, Some(executions))
    }

    fn load_whole_journal(&self, run_id: RunId) -> StoreFuture<'_, Vec<JournalEntry>> {
        self.load_journal_entries(run_id, None)
    }

    fn create_schedule<'a>(&'a self, schedule: &'a NewSchedule) -> StoreFuture<'a, ()> {
        self.create_schedule_row(schedule)
    }

    fn list_schedules<'a>(&'a self, tenant: &'a str, flow: Option<&'a str>) -> StoreFuture<'a, Vec<StoredSchedule>> {
        self.list_schedule_rows(tenant, flow)
    }

    fn load_schedule<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
        fires: usize,
    ) -> StoreFuture<'a, Option<(StoredSchedule, Vec<ScheduleFire>)>> {
        self.load_schedule_row(tenant, id, fires)
    }

    fn delete_schedule<'a>(&'a self, tenant: &'a str, id: &'a str) -> StoreFuture<'a, bool> {
        self.delete_schedule_row(tenant, id)
    }

    fn create_api_key<'a>(&'a self, key: &'a StoredApiKey) -> StoreFuture<'a, ()> {
        self.create_api_key_row(key)
    }

    fn list_api_keys<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<StoredApiKey>> {
        self.list_api_key_rows(tenant)
    }

    fn revoke_api_key<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<DateTime<Utc>>> {
        self.revoke_api_key_row(id)
    }

    fn fire_schedule<'a>(&'a self, id: &'a str, tick: DateTime<Utc>, run: &'a NewRun) -> StoreFuture<'a, bool> {
        self.fire_schedule_tick(id, tick, run)
    }

    fn skip_schedule_tick<'a>(&'a self, id: &'a str, tick: DateTime<Utc>) -> StoreFuture<'a, bool> {
        self.skip_schedule_tick_row(id, tick)
    }

    fn queue_webhook<'a>(&'a self, webhook: &'a NewWebhook) -> StoreFuture<'a, ()> {
        self.queue_webhook_row(webhook)
    }

    fn claim_webhooks<'a>(
        &'a self,
        tenant: &'a str,
        limit: usize,
        lease: Duration,
    ) -> StoreFuture<'a, Vec<QueuedWebhook>> {
        self.claim_webhook_rows(tenant, limit, lease)
    }

    fn settle_webhook<'a>(&'a self, id: &'a str, retry_at: Option<DateTime<Utc>>) -> StoreFuture<'a, ()> {
        self.settle_webhook_row(id, retry_at)
    }

    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        Box::pin(async move {
            let filter = filter.clone();
            boxed(
                self.call(move |c| {
                    let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {SUMMARY} FROM crewflow_runs r
                         WHERE (?1 IS NULL OR r.flow = ?1) AND (?2 IS NULL OR r.status = ?2)
                           AND (?4 IS NULL OR r.parent_run_id = ?4)
                         ORDER BY r.created_at DESC, r.id DESC LIMIT ?3"
                    ))?;
                    let parent = filter.parent.map(|p| p.to_string());
                    summaries(&mut stmt, params![filter.flow, filter.status.map(RunStatus::as_str), limit, parent])
                })
                .await,
            )
        })
    }
}

/// The columns [`summaries`] reads, for `SELECT {SUMMARY} FROM crewflow_runs r ...`.
pub(crate) const SUMMARY: &str = "r.id, r.flow, r.status, r.created_at, r.updated_at, r.error,
    (SELECT count(*) FROM crewflow_steps s WHERE s.run_id = r.id), r.parent_run_id, r.parent_activation";

/// Runs a query selecting [`SUMMARY`] and reads its rows as run summaries.
pub(crate) fn summaries(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<RunSummary>, StoreError> {
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, i64>(6)?,
            parent(r.get(7)?, r.get(8)?),
        ))
    })?;
    rows.map(|row| {
        let (id, flow, status, created, updated, error, steps, parent) = row?;
        Ok(RunSummary {
            run_id: parse_run_id(&id)?,
            flow,
            status: parse_status(&status)?,
            steps_done: steps as u64,
            created_at: from_ms(created),
            updated_at: from_ms(updated),
            error,
            parent,
        })
    })
    .collect()
}

fn insert_steps(tx: &rusqlite::Transaction<'_>, run_id: RunId, steps: &[StepRow]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO crewflow_steps (run_id, activation, step, output, finished_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let id = run_id.to_string();
    for s in steps {
        stmt.execute(params![id, s.activation as i64, &*s.step, s.output, ms(s.finished_at)])?;
    }
    Ok(())
}

/// The error for a write whose fencing token is stale.
pub(crate) fn fenced(tx: &rusqlite::Transaction<'_>, run_id: RunId, held: u64) -> StoreError {
    match tx
        .query_row("SELECT fencing FROM crewflow_runs WHERE id = ?1", [run_id.to_string()], |r| r.get::<_, i64>(0))
        .optional()
    {
        Ok(Some(current)) => StoreError::Lost(LeaseLost { run_id, held, current: current as u64 }),
        Ok(None) => StoreError::NoSuchRun(run_id.to_string()),
        Err(e) => e.into(),
    }
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now()
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests may panic

    use super::*;

    /// `PRAGMA synchronous` as the store's own connection reports it (the pragma is per
    /// connection, so another connection to the file would not tell): 1 is NORMAL, 2 FULL.
    async fn synchronous_in_effect(store: &SqliteStore) -> i64 {
        store.call(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)).await.unwrap()
    }

    fn url_store(url: &str) -> SqliteStore {
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap();
        SqliteStore::from_url(url, rest).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_synchronous_option_sets_the_pragma() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();

        let default = SqliteStore::open(file("default.db"));
        assert_eq!(default.synchronous_mode(), Synchronous::Normal);
        assert_eq!(synchronous_in_effect(&default).await, 1, "NORMAL by default");

        let full = SqliteStore::open(file("full.db")).synchronous(Synchronous::Full);
        assert_eq!(synchronous_in_effect(&full).await, 2, "FULL through the builder");

        for (url, expected) in [
            (format!("sqlite://{}?synchronous=full", file("a.db")), 2),
            (format!("sqlite:{}?synchronous=FULL", file("b.db")), 2),
            (format!("sqlite://{}?synchronous=normal", file("c.db")), 1),
            ("sqlite::memory:?synchronous=full".to_string(), 2),
            ("sqlite::memory:".to_string(), 1),
        ] {
            let store = url_store(&url);
            assert_eq!(synchronous_in_effect(&store).await, expected, "{url}");
        }
        // Through the public entry point, the query is an option, not part of the file name.
        let store = crate::open(&format!("sqlite://{}?synchronous=full", file("d.db"))).unwrap();
        assert!(store.load_run(RunId::new()).await.unwrap().is_none());
        assert!(dir.path().join("d.db").exists() && !dir.path().join("d.db?synchronous=full").exists());

        // Set on a store already in use (through a clone), the mode applies from the next call,
        // to every handle.
        let in_use = SqliteStore::open(file("in_use.db"));
        assert_eq!(synchronous_in_effect(&in_use).await, 1);
        let _clone = in_use.clone().synchronous(Synchronous::Full);
        assert_eq!(synchronous_in_effect(&in_use).await, 2);
        assert_eq!(in_use.synchronous_mode(), Synchronous::Full);
    }

    #[test]
    fn background_checkpoints_are_the_default_and_a_url_turns_them_off() {
        assert!(SqliteStore::open("runs.db").checkpoints_in_background());
        assert!(!SqliteStore::open("runs.db").background_checkpoints(false).checkpoints_in_background());
        let off = SqliteStore::from_url(
            "sqlite:runs.db?background_checkpoints=false",
            "runs.db?background_checkpoints=false",
        );
        assert!(!off.map(|s| s.checkpoints_in_background()).unwrap_or(true));
        let on =
            SqliteStore::from_url("sqlite:runs.db?background_checkpoints=true", "runs.db?background_checkpoints=true");
        assert!(on.map(|s| s.checkpoints_in_background()).unwrap_or(false));
    }

    #[test]
    fn bad_store_url_options_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db").display().to_string();
        let message = |url: String| match crate::open(&url) {
            Err(e @ StoreError::InvalidOption { .. }) => e.to_string(),
            Err(e) => panic!("{url}: another error: {e}"),
            Ok(_) => panic!("{url} was accepted"),
        };
        let bad_mode = message(format!("sqlite://{path}?synchronous=fast"));
        assert!(bad_mode.contains("`synchronous=fast` is not a mode"), "{bad_mode}");
        assert!(bad_mode.contains("synchronous=full"), "names the modes: {bad_mode}");
        let unknown = message(format!("sqlite://{path}?sync=full"));
        assert!(unknown.contains("unknown option `sync=full`"), "{unknown}");
        assert!(unknown.contains(&path), "names the URL: {unknown}");
        let no_value = message(format!("sqlite://{path}?synchronous"));
        assert!(no_value.contains("`synchronous=` is not a mode"), "{no_value}");
        let bad_switch = message(format!("sqlite://{path}?background_checkpoints=yes"));
        assert!(bad_switch.contains("`background_checkpoints=yes` is not a switch"), "{bad_switch}");
        assert!(bad_switch.contains("background_checkpoints=false"), "names the values: {bad_switch}");
        assert!(!dir.path().join("runs.db").exists(), "a refused URL creates nothing");
    }
}
