//! The PostgreSQL store: for several processes or machines sharing runs.
//!
//! Kept as one file on purpose: it is the `RunStore` impl of one backend (the runs' lifecycle:
//! create, checkpoint, end, claim, heartbeat, list), whose statements must agree with each
//! other on every column and status; the rest of the backend lives beside it in `postgres_*.rs`
//! (schema, checkpoint statements, state chain, journal, compaction, memories, sessions, reports).
//!
//! Leases use the server's clock (`now()`), so machines whose clocks disagree still agree on
//! who owns a run. A checkpoint is one statement (a data-modifying CTE), one round trip.
//! Workers claim runs with `FOR UPDATE SKIP LOCKED`, so concurrent workers never block on or
//! claim the same run.
//!

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use crewflow_core::RunId;
use crewflow_core::persist::{
    Checkpoint, Claim, CompactReport, JournalEntry, LeaseLost, LoadRun, NewRun, NewSchedule, NewWebhook, QueuedWebhook,
    Retention, RunEnd, RunFilter, RunOwned, RunStatus, RunStore, RunSummary, ScheduleFire, StepOutputs, StepRow,
    StoreFuture, StoredApiKey, StoredRun, StoredSchedule,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::NoTls;

use crate::StoreError;
use crate::heartbeat::Heartbeat;
use crate::postgres_chain::{CHAIN_COLUMNS, ChainWrite, chain_ctes};
use crate::postgres_checkpoint::{CheckpointWrite, INSERT_STEPS, steps_json};
use crate::postgres_pool::{PoolOptions, close_idle};
use crate::postgres_schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::util::{
    apply_state_chain, fingerprint, may_claim, parent, parse_fingerprint, parse_run_id, parse_status,
    refuse_nul_in_run, refuse_nul_json, refuse_nul_text,
};

impl Inner {
    fn pools(&self) -> [&Pool; 2] {
        [&self.pool, &self.locks]
    }
}

struct Inner {
    /// `postgres://user@host:port/db`, without a password.
    target: String,
    pool: Pool,
    /// Connections holding session locks, apart from `pool`: a turn holds one for its whole
    /// length while its queries take connections from `pool`.
    locks: Pool,
    /// Connections unused this long are closed ([`PoolOptions::idle_timeout`]).
    idle_timeout: Option<Duration>,
    /// Whether the task closing idle connections was started.
    closing_idle: std::sync::Once,
    migrated: OnceCell<()>,
    heartbeat: Heartbeat,
    /// The session locks this process holds (their connections are in `locks`).
    #[cfg(feature = "chat")]
    held: crate::postgres_sessions::HeldLocks,
}

/// A store in a PostgreSQL database, shared by any number of processes.
///
/// The pool connects lazily: nothing is opened until the first run is recorded or read. The
/// tables are created on first use (`crewflow_schema`, `crewflow_runs`, `crewflow_steps`) and
/// may share a database with other applications.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl PostgresStore {
    /// A store for the database at `url` (`postgres://user[:password]@host[:port]/db`),
    /// connecting on first use. Its connections follow [`PoolOptions::default`], or the
    /// options of the URL's query: `?pool_size=4&lock_pool_size=8&idle_timeout=60s` (the
    /// others go to the driver: `application_name`, `options`, `sslmode`, ...).
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        let (url, pool) = PoolOptions::from_url(url, &redact(url))?;
        Self::connect_lazy_with(&url, pool)
    }

    /// [`connect_lazy`](PostgresStore::connect_lazy), with the connections of `pool`.
    pub fn connect_lazy_with(url: &str, pool: PoolOptions) -> Result<Self, StoreError> {
        pool.check(&redact(url))?;
        let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::PostgresUnavailable { target: redact(url), message: format!("invalid URL: {e}") }
        })?;
        let pool_of = |size: usize| {
            let manager =
                Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(Duration::from_secs(5)))
                .wait_timeout(Some(Duration::from_secs(30)))
                .build()
                .map_err(|e| StoreError::PostgresUnavailable { target: redact(url), message: e.to_string() })
        };
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                target: redact(url),
                pool: pool_of(pool.queries_max())?,
                locks: pool_of(pool.locks_max())?,
                idle_timeout: pool.idle(),
                closing_idle: std::sync::Once::new(),
                migrated: OnceCell::new(),
                heartbeat: Heartbeat::default(),
                #[cfg(feature = "chat")]
                held: Default::default(),
            }),
        })
    }

    /// Connects now, creating or checking the tables.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(url)?;
        drop(store.client().await?);
        Ok(store)
    }

    /// The session locks this process holds.
    #[cfg(feature = "chat")]
    pub(crate) fn held_locks(&self) -> &crate::postgres_sessions::HeldLocks {
        &self.inner.held
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.close_idle_connections();
        let mut client = self.inner.pool.get().await.map_err(|e| self.unavailable(e))?;
        self.inner.migrated.get_or_try_init(|| migrate(&mut client, &self.inner.target)).await?;
        Ok(client)
    }

    /// A connection for holding a session lock (and reading the session under it); `None`
    /// when none frees up within `wait` (every lock connection holds a session).
    #[cfg_attr(not(feature = "chat"), allow(dead_code))]
    pub(crate) async fn lock_client(&self, wait: Duration) -> Result<Option<deadpool_postgres::Object>, StoreError> {
        let timeouts = deadpool_postgres::Timeouts {
            wait: Some(wait),
            create: Some(Duration::from_secs(5)),
            recycle: Some(Duration::from_secs(5)),
        };
        self.close_idle_connections();
        match self.inner.locks.timeout_get(&timeouts).await {
            Ok(mut client) => {
                self.inner.migrated.get_or_try_init(|| migrate(&mut client, &self.inner.target)).await?;
                Ok(Some(client))
            }
            Err(deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait)) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// From the first connection on, idle ones are closed after the idle timeout.
    fn close_idle_connections(&self) {
        if let Some(idle) = self.inner.idle_timeout {
            self.inner.closing_idle.call_once(|| {
                close_idle(Arc::downgrade(&self.inner), Inner::pools, idle);
            });
        }
    }

    fn unavailable(&self, e: deadpool_postgres::PoolError) -> StoreError {
        StoreError::PostgresUnavailable { target: self.inner.target.clone(), message: explain_pool(&e) }
    }

    fn keep_leases_alive(&self, owner: &str, lease: Duration) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        self.inner.heartbeat.ensure(owner, lease, move |owner, lease| {
            let weak = weak.clone();
            async move {
                let inner = weak.upgrade()?;
                Some(PostgresStore { inner }.renew(&owner, &crewflow_core::persist::driven_runs(), lease).await)
            }
        });
    }

    /// Renews `owner`'s leases on `runs` (the runs it drives; see `RunStore::heartbeat`).
    async fn renew(&self, owner: &str, runs: &[RunId], lease: Duration) -> Result<u64, StoreError> {
        if runs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = runs.iter().map(RunId::to_string).collect();
        let client = self.client().await?;
        Ok(client
            .execute(
                "UPDATE crewflow_runs SET lease_until = now() + $2 * interval '1 millisecond'
                 WHERE owner = $1 AND status = 'running' AND id = ANY($3)",
                &[&owner, &lease_ms(lease), &ids],
            )
            .await?)
    }

    pub(crate) async fn fenced(&self, client: &tokio_postgres::Client, run_id: RunId, held: u64) -> StoreError {
        match client.query_opt("SELECT fencing FROM crewflow_runs WHERE id = $1", &[&run_id.to_string()]).await {
            Ok(Some(row)) => StoreError::Lost(LeaseLost { run_id, held, current: row.get::<_, i64>(0) as u64 }),
            Ok(None) => StoreError::NoSuchRun(run_id.to_string()),
            Err(e) => e.into(),
        }
    }
}

async fn migrate(client: &mut tokio_postgres::Client, target: &str) -> Result<(), StoreError> {
    // A transaction object, not a `BEGIN` sent by hand: if the caller's future is dropped
    // mid-migration, the transaction is rolled back instead of staying open on a connection
    // that goes back to the pool (its next user would run inside it).
    let tx = client.transaction().await?;
    // One process migrates at a time: the advisory lock lasts until the transaction ends.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('crewflow_schema'));
         CREATE TABLE IF NOT EXISTS crewflow_schema (version INTEGER NOT NULL);",
    )
    .await?;
    let version: i64 = tx.query_one("SELECT coalesce(max(version), 0)::bigint FROM crewflow_schema", &[]).await?.get(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { store: target.to_string(), found: version, supported: SCHEMA_VERSION });
    }
    if version == 0 {
        let clash = tx
            .query_opt(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name IN ('crewflow_runs', 'crewflow_steps')",
                &[],
            )
            .await?;
        if let Some(row) = clash {
            return Err(StoreError::ForeignDatabase { store: target.to_string(), tables: row.get(0) });
        }
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO crewflow_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await?;
    }
    tx.commit().await.map_err(Into::into)
}

/// Refuses a checkpoint holding U+0000 anywhere PostgreSQL would reject it, naming the value:
/// a step's output first (the likeliest source), then the state, the frontier, the feedback.
fn refuse_nul_checkpoint(cp: &Checkpoint) -> Result<(), StoreError> {
    for step in &cp.steps {
        refuse_nul_text("a step's name", &step.step)?;
        refuse_nul_json(&format!("the output of step `{}`", step.step), &step.output)?;
    }
    // A chained state is kept as text, which holds U+0000; only `jsonb` cannot.
    if !cp.chained {
        refuse_nul_json("the run's state", &cp.state)?;
    }
    refuse_nul_json("the run's frontier (the inputs waiting for their steps)", &cp.frontier)?;
    if let Some(feedback) = &cp.feedback {
        refuse_nul_json("the run's feedback record", feedback)?;
    }
    Ok(())
}

pub(crate) fn boxed<T>(r: Result<T, StoreError>) -> Result<T, crewflow_core::BoxError> {
    r.map_err(StoreError::into_boxed)
}

impl RunStore for PostgresStore {
    fn describe(&self) -> String {
        self.inner.target.clone()
    }

    fn state_deltas(&self) -> bool {
        true
    }

    fn create_run<'a>(&'a self, run: &'a NewRun) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    refuse_nul_in_run(run)?;
                    let client = self.client().await?;
                    let queued = run.status == RunStatus::Queued;
                    let owner: Option<&str> = (!queued).then_some(&*run.owner);
                    // A chained state starts the run's chain (as text), and the row holds `null`.
                    let (row_state, chain) =
                        if run.chained { ("null", Some(run.state.as_str())) } else { (run.state.as_str(), None) };
                    let stmt = client
                        .prepare_cached(
                            "WITH run AS (
                                 INSERT INTO crewflow_runs (id, flow, fingerprint, status, owner, lease_until, fencing, seq,
                                     inputs, payload, state, frontier, created_at, updated_at, state_version,
                                     parent_run_id, parent_activation)
                                 VALUES ($1, $2, $3, $4, $5,
                                     CASE WHEN $5::text IS NULL THEN NULL ELSE now() + $6 * interval '1 millisecond' END,
                                     $7, 0, $8::text::jsonb, $9::text::jsonb, $10::text::jsonb, $11::text::jsonb, now(), now(), $12,
                                     $14, $15)
                                 ON CONFLICT (id) DO NOTHING RETURNING id),
                             chained AS (
                                 INSERT INTO crewflow_state_chain (run_id, seq, kind, body)
                                 SELECT id, 0, 'whole', $13::text FROM run WHERE $13::text IS NOT NULL)
                             SELECT count(*) FROM run",
                        )
                        .await?;
                    let inserted: i64 = client
                        .query_one(
                            &stmt,
                            &[
                                &run.run_id.to_string(),
                                &&*run.flow,
                                &fingerprint(run.fingerprint),
                                &run.status.as_str(),
                                &owner,
                                &lease_ms(run.lease),
                                &if queued { 0i64 } else { 1 },
                                &run.inputs,
                                &run.payload,
                                &row_state,
                                &run.frontier,
                                &i64::from(run.state_version),
                                &chain,
                                &run.parent.map(|p| p.run_id.to_string()),
                                &run.parent.map(|p| p.activation as i64),
                            ],
                        )
                        .await?
                        .get(0);
                    if inserted == 0 {
                        return Err(StoreError::RunExists(run.run_id.to_string()));
                    }
                    if !queued {
                        self.keep_leases_alive(&run.owner, run.lease);
                    }
                    Ok(())
                }
                .await,
            )
        })
    }

    fn save_checkpoint<'a>(&'a self, cp: &'a Checkpoint) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    refuse_nul_checkpoint(cp)?;
                    let client = self.client().await?;
                    let write = CheckpointWrite::of(cp);
                    let stmt = client.prepare_cached(&write.sql).await?;
                    let row = client.query_one(&stmt, &write.params()).await?;
                    if row.get::<_, i64>(0) == 0 {
                        return Err(self.fenced(&client, cp.run_id, cp.fencing).await);
                    }
                    Ok(())
                }
                .await,
            )
        })
    }

    fn end_run<'a>(&'a self, end: &'a RunEnd) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            boxed(
                async {
                    if let Some(cp) = &end.checkpoint {
                        refuse_nul_checkpoint(cp)?;
                    }
                    // The error text is kept whatever it holds: refusing it would leave the
                    // run `running` until its lease ran out.
                    let error = end.error.as_deref().map(|e| e.replace('\0', "\\u0000"));
                    let client = self.client().await?;
                    let (chain, frontier, seq, steps, feedback, state_version) = match &end.checkpoint {
                        Some(cp) => (
                            ChainWrite::of(cp),
                            Some(&cp.frontier),
                            Some(cp.seq as i64),
                            steps_json(&cp.steps),
                            cp.feedback.as_ref(),
                            Some(i64::from(cp.state_version)),
                        ),
                        None => (ChainWrite::none(), None, None, "[]".to_string(), None, None),
                    };
                    let sql = format!(
                        "WITH run AS (
                             UPDATE crewflow_runs SET status = $2, error = $3, final_activation = $4, owner = NULL,
                                 lease_until = NULL, updated_at = now(),
                                 state = coalesce($5::text::jsonb, state), frontier = coalesce($6::text::jsonb, frontier),
                                 seq = coalesce($7, seq), pending = coalesce($10::text::jsonb, pending),
                                 state_version = coalesce($11, state_version)
                             WHERE id = $1 AND fencing = $8 RETURNING id),
                         steps AS ({}),
                         {}
                         SELECT count(*) FROM run",
                        INSERT_STEPS.replace("$STEPS", "$9"),
                        chain_ctes(12, 13, 14, 7)
                    );
                    // Prepared once per connection, as checkpoints are: one round trip, no planning.
                    let stmt = client.prepare_cached(&sql).await?;
                    let row = client
                        .query_one(
                            &stmt,
                            &[
                                &end.run_id.to_string(),
                                &end.status.as_str(),
                                &error,
                                &end.final_activation.map(|a| a as i64),
                                &chain.row_state,
                                &frontier,
                                &seq,
                                &(end.fencing as i64),
                                &steps,
                                &feedback,
                                &state_version,
                                &chain.drop,
                                &chain.kind,
                                &chain.body,
                            ],
                        )
                        .await?;
                    if row.get::<_, i64>(0) == 0 {
                        return Err(self.fenced(&client, end.run_id, end.fencing).await);
                    }
                    Ok(())
                }
                .await,
            )
        })
    }

    fn load_run(&self, run_id: RunId) -> StoreFuture<'_, Option<StoredRun>> {
        self.load_run_with(run_id, LoadRun::everything())
    }

    fn load_steps(&self, run_id: RunId) -> StoreFuture<'_, Vec<StepRow>> {
        Box::pin(async move {
            boxed(
                async {
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "SELECT activation, step, output::text, finished_at FROM crewflow_steps
                             WHERE run_id = $1 ORDER BY activation",
                            &[&run_id.to_string()],
                        )
                        .await?;
                    Ok(rows.iter().map(step_row).collect())
                }
                .await,
            )
        })
    }

    fn load_run_with(&self, run_id: RunId, what: LoadRun) -> StoreFuture<'_, Option<StoredRun>> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    // One snapshot for the run and its steps: a checkpoint committing between
                    // the two reads must not give the state of one and the steps of the next.
                    let tx = client
                        .build_transaction()
                        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await?;
                    let id = run_id.to_string();
                    let sql = format!(
                        "SELECT flow, fingerprint, status, fencing, owner, lease_until, seq, inputs::text,
                             payload::text, state::text, frontier::text, final_activation, error, created_at, updated_at,
                             pending::text, state_version, parent_run_id, parent_activation, {CHAIN_COLUMNS}
                         FROM crewflow_runs WHERE id = $1"
                    );
                    let Some(r) = tx
                        .query_opt(&sql, &[&id])
                        .await?
                    else {
                        return Ok(None);
                    };
                    let status: String = r.get(2);
                    let final_activation = r.get::<_, Option<i64>>(11);
                    let steps = match (what.outputs, final_activation) {
                        (StepOutputs::All, _) => tx
                            .query(
                                "SELECT activation, step, output::text, finished_at FROM crewflow_steps
                                 WHERE run_id = $1 ORDER BY activation",
                                &[&id],
                            )
                            .await?
                            .iter()
                            .map(step_row)
                            .collect(),
                        (StepOutputs::Final, Some(last)) => tx
                            .query(
                                "SELECT activation, step, output::text, finished_at FROM crewflow_steps
                                 WHERE run_id = $1 AND activation = $2",
                                &[&id, &last],
                            )
                            .await?
                            .iter()
                            .map(step_row)
                            .collect(),
                        _ => Vec::new(),
                    };
                    tx.commit().await?;
                    Ok(Some(StoredRun {
                        run_id,
                        flow: r.get(0),
                        fingerprint: parse_fingerprint(&r.get::<_, String>(1)),
                        status: parse_status(&status)?,
                        fencing: r.get::<_, i64>(3) as u64,
                        owner: r.get(4),
                        lease_until: r.get(5),
                        seq: r.get::<_, i64>(6) as u64,
                        inputs: r.get(7),
                        payload: r.get(8),
                        state: apply_state_chain(run_id, r.get(9), &chain_rows(&r, 19))?,
                        frontier: r.get(10),
                        final_activation: final_activation.map(|a| a as u64),
                        error: r.get(12),
                        created_at: r.get(13),
                        updated_at: r.get(14),
                        feedback: r.get(15),
                        state_version: u32::try_from(r.get::<_, i64>(16)).unwrap_or(u32::MAX),
                        steps,
                        parent: parent(r.get(17), r.get(18)),
                    }))
                }
                .await,
            )
        })
    }

    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        owner: &'a str,
        lease: Duration,
        replacing: Option<&'a str>,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            boxed(
                async {
                    let mut client = self.client().await?;
                    let tx = client.transaction().await?;
                    let id = run_id.to_string();
                    let current = tx
                        .query_opt(
                            "SELECT flow, owner, lease_until, lease_until > now() FROM crewflow_runs
                             WHERE id = $1 FOR UPDATE",
                            &[&id],
                        )
                        .await?
                        .ok_or_else(|| StoreError::NoSuchRun(id.clone()))?;
                    let flow: String = current.get(0);
                    let holder: Option<String> = current.get(1);
                    let until: Option<DateTime<Utc>> = current.get(2);
                    let live: Option<bool> = current.get(3);
                    if !may_claim(holder.as_deref(), live == Some(true), owner, replacing) {
                        let (owner, until) = (holder.unwrap_or_default(), until.unwrap_or_else(Utc::now));
                        return Err(StoreError::Owned(RunOwned { run_id, owner, until }));
                    }
                    let fencing: i64 = tx
                        .query_one(
                            "UPDATE crewflow_runs SET owner = $2, lease_until = now() + $3 * interval '1 millisecond',
                                 fencing = fencing + 1, status = 'running', error = NULL, updated_at = now()
                             WHERE id = $1 RETURNING fencing",
                            &[&id, &owner, &lease_ms(lease)],
                        )
                        .await?
                        .get(0);
                    tx.commit().await?;
                    self.keep_leases_alive(owner, lease);
                    Ok(Claim { run_id, flow, fencing: fencing as u64 })
                }
                .await,
            )
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
            boxed(
                async {
                    let client = self.client().await?;
                    let row = client
                        .query_opt(
                            "UPDATE crewflow_runs SET owner = $2, lease_until = now() + $3 * interval '1 millisecond',
                                 fencing = fencing + 1, status = 'running', error = NULL, updated_at = now()
                             WHERE id = $1 AND status = 'paused' AND seq = $4 RETURNING flow, fencing",
                            &[&run_id.to_string(), &owner, &lease_ms(lease), &(seq as i64)],
                        )
                        .await?;
                    let Some(row) = row else { return Ok(None) };
                    self.keep_leases_alive(owner, lease);
                    Ok(Some(Claim { run_id, flow: row.get(0), fencing: row.get::<_, i64>(1) as u64 }))
                }
                .await,
            )
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
            boxed(
                async {
                    if flows.is_empty() || limit == 0 {
                        return Ok(Vec::new());
                    }
                    let client = self.client().await?;
                    let rows = client
                        .query(
                            "UPDATE crewflow_runs SET owner = $1, lease_until = now() + $2 * interval '1 millisecond',
                                 fencing = fencing + 1, status = 'running', updated_at = now(), report = 'pending'
                             WHERE id IN (
                                 SELECT id FROM crewflow_runs
                                 WHERE flow = ANY($3)
                                   AND (status = 'queued'
                                        OR (status = 'running' AND (lease_until IS NULL OR lease_until < now())))
                                 ORDER BY status = 'queued', updated_at LIMIT $4
                                 FOR UPDATE SKIP LOCKED)
                             RETURNING id, flow, fencing",
                            &[&owner, &lease_ms(lease), &flows, &(limit as i64)],
                        )
                        .await?;
                    let claims = rows
                        .into_iter()
                        .map(|r| {
                            let id: String = r.get(0);
                            Ok(Claim { run_id: parse_run_id(&id)?, flow: r.get(1), fencing: r.get::<_, i64>(2) as u64 })
                        })
                        .collect::<Result<Vec<_>, StoreError>>()?;
                    if !claims.is_empty() {
                        self.keep_leases_alive(owner, lease);
                    }
                    Ok(claims)
                }
                .await,
            )
        })
    }

    fn heartbeat<'a>(&'a self, owner: &'a str, runs: &'a [RunId], lease: Duration) -> StoreFuture<'a, u64> {
        Box::pin(async move { boxed(self.renew(owner, runs, lease).await) })
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
            boxed(
                async {
                    let client = self.client().await?;
                    let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
                    let rows = client
                        .query(
                            &format!(
                                "SELECT {SUMMARY} FROM crewflow_runs r
                                 WHERE ($1::text IS NULL OR r.flow = $1) AND ($2::text IS NULL OR r.status = $2)
                                   AND ($4::text IS NULL OR r.parent_run_id = $4)
                                 ORDER BY r.created_at DESC, r.id DESC LIMIT $3"
                            ),
                            &[
                                &filter.flow,
                                &filter.status.map(RunStatus::as_str),
                                &limit,
                                &filter.parent.map(|p| p.to_string()),
                            ],
                        )
                        .await?;
                    rows.iter().map(summary).collect()
                }
                .await,
            )
        })
    }
}

/// The columns [`summary`] reads, for `SELECT {SUMMARY} FROM crewflow_runs r ...`.
pub(crate) const SUMMARY: &str = "r.id, r.flow, r.status, r.created_at, r.updated_at, r.error,
    (SELECT count(*) FROM crewflow_steps s WHERE s.run_id = r.id), r.parent_run_id, r.parent_activation";

/// The chain rows (`(kind, body)` in order) a run's load read in columns `at` and `at + 1`.
fn chain_rows(r: &tokio_postgres::Row, at: usize) -> Vec<(String, String)> {
    let (kinds, bodies): (Vec<String>, Vec<String>) = (r.get(at), r.get(at + 1));
    kinds.into_iter().zip(bodies).collect()
}

/// A `crewflow_steps` row read as `activation, step, output::text, finished_at`.
fn step_row(s: &tokio_postgres::Row) -> StepRow {
    StepRow {
        activation: s.get::<_, i64>(0) as u64,
        step: Arc::from(s.get::<_, &str>(1)),
        output: s.get(2),
        finished_at: s.get(3),
    }
}

/// A row selecting [`SUMMARY`], as a run summary.
pub(crate) fn summary(r: &tokio_postgres::Row) -> Result<RunSummary, StoreError> {
    let id: String = r.get(0);
    let status: String = r.get(2);
    Ok(RunSummary {
        run_id: parse_run_id(&id)?,
        flow: r.get(1),
        status: parse_status(&status)?,
        created_at: r.get(3),
        updated_at: r.get(4),
        error: r.get(5),
        steps_done: r.get::<_, i64>(6) as u64,
        parent: parent(r.get(7), r.get(8)),
    })
}

/// What PostgreSQL said: for a server error its message, detail, hint and SQLSTATE code, with
/// the fix for the usual ones; for others the driver's words and their cause (tokio-postgres
/// prints only "db error" for every server error).
pub(crate) fn explain(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
    };
    let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        out.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; hint: {hint}"));
    }
    if let Some(fix) = fix_for(db.code()) {
        out.push_str("; ");
        out.push_str(fix);
    }
    out
}

/// What to do about the server errors a user of the store meets.
fn fix_for(code: &tokio_postgres::error::SqlState) -> Option<&'static str> {
    use tokio_postgres::error::SqlState;
    Some(match code {
        c if *c == SqlState::INVALID_CATALOG_NAME => {
            "create the database (`createdb <name>`, or CREATE DATABASE) or fix its name in the URL"
        }
        c if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            "check the user and password in the URL (postgres://USER:PASSWORD@HOST/DB)"
        }
        c if *c == SqlState::INVALID_SCHEMA_NAME => {
            "the search path names no schema that exists: create the schema, or choose one with `?options=-csearch_path%3DSCHEMA` in the URL"
        }
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            "grant the user the rights crewflow needs (GRANT CREATE, USAGE ON SCHEMA ... TO ...), or connect as another user"
        }
        c if *c == SqlState::TOO_MANY_CONNECTIONS => {
            "the server has no free connection: raise max_connections or run fewer processes"
        }
        c if *c == SqlState::UNTRANSLATABLE_CHARACTER || *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE => {
            "PostgreSQL cannot store the character U+0000 (NUL) in text or JSON; remove it from the value"
        }
        _ => return None,
    })
}

/// Why no connection could be had from the pool.
fn explain_pool(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::{PoolError, TimeoutType};
    match e {
        PoolError::Backend(e) => explain(e),
        PoolError::Timeout(TimeoutType::Create) => {
            "the server did not answer within 5 s; check the host and port in the URL and that the server runs".into()
        }
        PoolError::Timeout(TimeoutType::Wait) => {
            "every connection of the pool stayed busy for 30 s; the server or the database may be overloaded".into()
        }
        other => other.to_string(),
    }
}

fn lease_ms(lease: Duration) -> f64 {
    lease.as_millis() as f64
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}
