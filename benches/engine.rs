//! Engine benchmarks: `scripts/bench` (or `cargo bench --bench engine -- [--only a,b]`).
//!
//! Prints one JSON line per figure:
//! `{"bench": NAME, "metric": NAME, "median": X, "min": X, "max": X, "unit": U, "n": N}`.
//! Each benchmark runs in its own process (the harness re-executes itself), so memory figures
//! are not polluted by the benchmarks before it. The shapes match the Python baselines in the
//! engine issue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crewflow::prelude::*;
use crewflow::store::{
    Checkpoint, Claim, LoadRun, NewRun, RunEnd, RunFilter, RunStore, RunSummary, SqliteStore, StoreFuture, StoredRun,
    Synchronous,
};
use crewflow::{DEFAULT_MAX_STEPS, FlowBuilder};
use crewflow_store::PostgresStore;
use serde::{Deserialize, Serialize};

/// Counts live heap bytes, for the per-run memory figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BENCHES: [&str; 12] = [
    "chain100",
    "fanout_join",
    "router_loop",
    "concurrent",
    "concurrent_100k",
    "persist_chain20",
    "persist_chain20_full",
    "persist_chain20_pg",
    "persist_chain20_100kb",
    "resume_1000",
    "journal_op",
    "load_run",
];

mod harness;

use harness::{peak_rss_bytes, report, rss_bytes};

fn main() {
    match harness::child_name() {
        Some(name) => run_child(&name),
        None => harness::run_children(&BENCHES),
    }
}

fn run_child(name: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        match name {
            "chain100" => chain100().await,
            "fanout_join" => fanout_join().await,
            "router_loop" => router_loop().await,
            "concurrent" => concurrent().await,
            "concurrent_100k" => concurrent_100k().await,
            "persist_chain20" => persist_chain20().await,
            "persist_chain20_full" => persist_chain20_full().await,
            "persist_chain20_pg" => persist_chain20_pg().await,
            "persist_chain20_100kb" => persist_chain20_100kb().await,
            "resume_1000" => resume_1000().await,
            "journal_op" => journal_op().await,
            "load_run" => load_run().await,
            other => eprintln!("unknown benchmark {other}"),
        }
    });
}

#[derive(Default, Debug, Serialize, Deserialize)]
struct Counter {
    n: u64,
}

/// Times `batch` kickoffs per sample.
async fn sample<S: crewflow::FlowState>(flow: &Flow<S>, samples: usize, batch: usize) -> Vec<Duration> {
    for _ in 0..batch {
        flow.kickoff(()).await.expect("warm-up run");
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..batch {
            flow.kickoff(()).await.expect("benchmark run");
        }
        out.push(t.elapsed() / batch as u32);
    }
    out
}

/// 1 start + 99 chained listeners, each incrementing a counter in typed state.
async fn chain100() {
    let mut b = FlowBuilder::<Counter>::new("chain100").start("s0", |cx: Cx<Counter>, (): ()| async move {
        cx.update(|c| c.n += 1);
        Ok(())
    });
    for i in 1..100 {
        b = b.listen(&format!("s{i}"), step(format!("s{}", i - 1)), |cx: Cx<Counter>, (): ()| async move {
            cx.update(|c| c.n += 1);
            Ok(())
        });
    }
    let flow = b.build().expect("chain100 builds");
    assert_eq!(flow.kickoff(()).await.expect("run").state.n, 100);
    let per_step = sample(&flow, 30, 20).await.into_iter().map(|d| d.as_nanos() as f64 / 100.0).collect();
    report("chain100", "per_step_ns", "ns", per_step);
}

/// 1 start, 50 parallel listeners, one `and` join over all 50.
async fn fanout_join() {
    let mut b = FlowBuilder::<Counter>::new("fanout_join").start("start", |_cx, (): ()| async move { Ok(()) });
    for i in 0..50 {
        b = b.listen(&format!("w{i}"), "start", |cx: Cx<Counter>, (): ()| async move {
            cx.update(|c| c.n += 1);
            Ok(())
        });
    }
    let flow = b
        .listen("join", and((0..50).map(|i| step(format!("w{i}")))), |_cx, (): ()| async move { Ok(()) })
        .build()
        .expect("fanout_join builds");
    assert_eq!(flow.kickoff(()).await.expect("run").state.n, 50);
    let per_flow = sample(&flow, 30, 20).await.into_iter().map(|d| d.as_nanos() as f64 / 1000.0).collect();
    report("fanout_join", "per_flow_us", "us", per_flow);
}

#[derive(Route, Clone, Copy)]
enum Loop {
    Again,
    #[route(terminal)]
    Done,
}

/// A router looping back through one step 1,000 times.
async fn router_loop() {
    const ITERATIONS: u64 = 1000;
    let flow = FlowBuilder::<Counter>::new("router_loop")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .listen("work", or([step("begin"), route(Loop::Again)]), |cx: Cx<Counter>, (): ()| async move {
            cx.update(|c| c.n += 1);
            Ok(())
        })
        .router("check", "work", |cx: Cx<Counter>, (): ()| async move {
            Ok(if cx.state(|c| c.n) < ITERATIONS { Loop::Again } else { Loop::Done })
        })
        .max_steps(DEFAULT_MAX_STEPS.max(3 * ITERATIONS))
        .build()
        .expect("router_loop builds");
    assert_eq!(flow.kickoff(()).await.expect("run").state.n, ITERATIONS);
    let per_iteration =
        sample(&flow, 30, 3).await.into_iter().map(|d| d.as_nanos() as f64 / ITERATIONS as f64).collect();
    report("router_loop", "per_iteration_ns", "ns", per_iteration);
}

/// A 3-step chain counting its steps, with `middle` as its middle step.
fn chain_around<F, Fut>(name: &str, middle: F) -> Flow<Counter>
where
    F: Fn(Cx<Counter>, ()) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StepError>> + Send + 'static,
{
    let count = |cx: Cx<Counter>, (): ()| async move {
        cx.update(|c| c.n += 1);
        Ok(())
    };
    FlowBuilder::<Counter>::new(name)
        .start("a", count)
        .listen("b", "a", middle)
        .listen("c", "b", count)
        .build()
        .expect("the chain builds")
}

/// A 3-step chain whose middle step sleeps 10 ms.
fn sleepy_chain() -> Flow<Counter> {
    chain_around("sleepy", |cx: Cx<Counter>, (): ()| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        cx.update(|c| c.n += 1);
        Ok(())
    })
}

/// The sleepy chain with a gate instead of the sleep: every run started waits in its middle
/// step until the gate opens, so memory is sampled with all of them parked however loaded the
/// machine is (with the sleep, a busy machine sampled runs not started yet or already done).
fn gated_chain(parked: Arc<AtomicU32>, gate: Arc<tokio::sync::Semaphore>) -> Flow<Counter> {
    chain_around("gated", move |cx: Cx<Counter>, (): ()| {
        let (parked, gate) = (parked.clone(), gate.clone());
        async move {
            parked.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.expect("the gate stays open").forget();
            cx.update(|c| c.n += 1);
            Ok(())
        }
    })
}

/// Starts `runs` runs at once and waits for all of them. Returns the wall time.
async fn all_at_once(flow: &Flow<Counter>, runs: usize) -> Duration {
    let started = Instant::now();
    let handles: Vec<_> = (0..runs).map(|_| flow.spawn(()).expect("spawn")).collect();
    for h in handles {
        assert_eq!(h.await.expect("run").state.n, 3);
    }
    started.elapsed()
}

/// Starts `runs` runs of the gated chain, waits until all are parked in its middle step,
/// samples memory, opens the gate and waits for all of them. Returns (RSS delta, live heap
/// delta) with every run parked.
async fn parked_memory(runs: usize) -> (i64, i64) {
    let (parked, gate) = (Arc::new(AtomicU32::new(0)), Arc::new(tokio::sync::Semaphore::new(0)));
    let flow = gated_chain(parked.clone(), gate.clone());
    let rss_before = rss_bytes();
    let heap_before = LIVE.load(Ordering::Relaxed) as i64;
    let handles: Vec<_> = (0..runs).map(|_| flow.spawn(()).expect("spawn")).collect();
    while parked.load(Ordering::SeqCst) < runs as u32 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (rss, heap) = (rss_bytes() - rss_before, LIVE.load(Ordering::Relaxed) as i64 - heap_before);
    gate.add_permits(runs);
    for h in handles {
        assert_eq!(h.await.expect("run").state.n, 3);
    }
    (rss, heap)
}

/// 1,000 runs of the sleepy chain at once; memory with 1,000 runs parked in a step.
async fn concurrent() {
    let runs = 1000;
    // First: later rounds reuse the pages earlier ones freed.
    let (rss, heap) = parked_memory(runs).await;
    let flow = sleepy_chain();
    let mut walls = Vec::new();
    for _ in 0..10 {
        walls.push(all_at_once(&flow, runs).await.as_secs_f64() * 1000.0);
    }
    let state = std::mem::size_of::<Counter>() as f64;
    report("concurrent", "wall_ms", "ms", walls);
    report("concurrent", "rss_per_run_bytes", "bytes", vec![rss as f64 / runs as f64 - state]);
    report("concurrent", "heap_per_run_bytes", "bytes", vec![heap as f64 / runs as f64 - state]);
}

/// 100,000 runs of the sleepy chain at once.
async fn concurrent_100k() {
    let flow = sleepy_chain();
    let wall = all_at_once(&flow, 100_000).await;
    report("concurrent_100k", "wall_ms", "ms", vec![wall.as_secs_f64() * 1000.0]);
    report("concurrent_100k", "peak_rss_mb", "MB", vec![peak_rss_bytes() as f64 / (1024.0 * 1024.0)]);
}

/// A 20-step chain over `store`, each step updating typed state.
fn chain20(store: Arc<dyn RunStore>) -> Flow<Counter> {
    let mut b = FlowBuilder::<Counter>::new("persist_chain20").start("s0", |cx: Cx<Counter>, (): ()| async move {
        cx.update(|c| c.n += 1);
        Ok(())
    });
    for i in 1..20 {
        b = b.listen(&format!("s{i}"), step(format!("s{}", i - 1)), |cx: Cx<Counter>, (): ()| async move {
            cx.update(|c| c.n += 1);
            Ok(())
        });
    }
    b.store(store).build().expect("chain20 builds")
}

async fn persisted_chain(bench: &str, store: Arc<dyn RunStore>) {
    let flow = chain20(store);
    assert_eq!(flow.kickoff(()).await.expect("run").state.n, 20);
    let per_step = sample(&flow, 30, 5).await.into_iter().map(|d| d.as_nanos() as f64 / 20.0 / 1000.0).collect();
    report(bench, "per_step_us", "us", per_step);
}

/// A 20-step chain checkpointed after every step, in a SQLite file.
async fn persist_chain20() {
    let dir = tempfile::tempdir().expect("a temp dir");
    persisted_chain("persist_chain20", Arc::new(SqliteStore::open(dir.path().join("bench.db")))).await;
}

/// The same with `synchronous=FULL`: every checkpoint waits for the disk (an fsync each), as
/// the Python peers' SQLite does.
async fn persist_chain20_full() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SqliteStore::open(dir.path().join("bench.db")).synchronous(Synchronous::Full);
    persisted_chain("persist_chain20_full", Arc::new(store)).await;
}

/// The same on PostgreSQL (`CREWFLOW_TEST_POSTGRES`), in a schema of its own.
async fn persist_chain20_pg() {
    let Ok(url) = std::env::var("CREWFLOW_TEST_POSTGRES") else {
        eprintln!("persist_chain20_pg skipped: set CREWFLOW_TEST_POSTGRES=postgres://...");
        return;
    };
    let client = pg_client(&url).await;
    let (schema, scoped) = pg_schema(&client, &url).await;
    persisted_chain("persist_chain20_pg", Arc::new(PostgresStore::connect_lazy(&scoped).expect("a store"))).await;
    report("persist_chain20_pg", "commit_floor_us", "us", commit_floor(&client, &schema).await);
    let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// A connection to the PostgreSQL server at `url`.
async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("PostgreSQL");
    tokio::spawn(conn);
    client
}

/// A new schema for one benchmark (drop it after), and the URL that works in it.
async fn pg_schema(client: &tokio_postgres::Client, url: &str) -> (String, String) {
    let schema = format!("crewflow_bench_{}", uuid::Uuid::new_v4().simple());
    client.batch_execute(&format!("CREATE SCHEMA {schema}")).await.expect("a schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-csearch_path%3D{schema}");
    (schema, scoped)
}

/// The server's floor for one durable write: a bare one-row insert committed on one connection
/// (what a checkpoint cannot go below), timed like the chain: batches of 20, per commit.
async fn commit_floor(client: &tokio_postgres::Client, schema: &str) -> Vec<f64> {
    client.batch_execute(&format!("CREATE TABLE {schema}.floor (n BIGINT)")).await.expect("a table");
    let insert = client.prepare(&format!("INSERT INTO {schema}.floor VALUES ($1)")).await.expect("a statement");
    let mut samples = Vec::new();
    for round in 0..35i64 {
        let t = Instant::now();
        for n in 0..20i64 {
            client.execute(&insert, &[&(round * 20 + n)]).await.expect("an insert");
        }
        if round >= 5 {
            samples.push(t.elapsed().as_nanos() as f64 / 20.0 / 1000.0);
        }
    }
    samples
}

/// A state of 100 items of ~1 KB and a step counter.
#[derive(Clone, Serialize, Deserialize)]
struct Large {
    items: Vec<String>,
    n: u64,
}

impl Default for Large {
    fn default() -> Self {
        Large { items: (0..100).map(|i| format!("{i:03}{}", "x".repeat(1000))).collect(), n: 0 }
    }
}

/// The 20-step persisted chain over a 100 KB state of which each step changes ~1 % (one
/// item, and the counter): the time per step; the bytes the engine hands the store per step
/// (`bytes_per_step`: states or their deltas, frontiers, step outputs, the run's first whole
/// state included); and the bytes the process writes to the store's files per step
/// (`file_bytes_per_step`, `wchar` of /proc/self/io: SQLite writes whole 4 KiB pages, several
/// per commit, and its log frames). With `CREWFLOW_TEST_POSTGRES` set, the time per step on
/// PostgreSQL too (`per_step_us_pg`, `per_step_us_pg_whole`).
async fn persist_chain20_100kb() {
    for (deltas, suffix) in [(true, ""), (false, "_whole")] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(Metered::new(SqliteStore::open(dir.path().join("bench.db"))));
        let flow = large_chain(store.clone(), deltas);
        let per_step = sample(&flow, 20, 3).await.into_iter().map(|d| d.as_nanos() as f64 / 20.0 / 1000.0).collect();
        report("persist_chain20_100kb", &format!("per_step_us{suffix}"), "us", per_step);
        let (mut payload, mut file) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let (before, handed) = (written_bytes(), store.bytes());
            flow.kickoff(()).await.expect("run");
            file.push((written_bytes() - before) as f64 / 20.0);
            payload.push((store.bytes() - handed) as f64 / 20.0);
        }
        report("persist_chain20_100kb", &format!("bytes_per_step{suffix}"), "bytes", payload);
        report("persist_chain20_100kb", &format!("file_bytes_per_step{suffix}"), "bytes", file);
    }
    // Deltas, with the log checkpointed inside the commits, as SQLite does on its own
    // (`background_checkpoints(false)`).
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = Arc::new(SqliteStore::open(dir.path().join("bench.db")).background_checkpoints(false));
    let flow = large_chain(store, true);
    let per_step = sample(&flow, 20, 3).await.into_iter().map(|d| d.as_nanos() as f64 / 20.0 / 1000.0).collect();
    report("persist_chain20_100kb", "per_step_us_commit_checkpoints", "us", per_step);
    // The same on PostgreSQL (when `CREWFLOW_TEST_POSTGRES` is set): deltas, then whole states.
    let Ok(url) = std::env::var("CREWFLOW_TEST_POSTGRES") else { return };
    let client = pg_client(&url).await;
    for (deltas, suffix) in [(true, "_pg"), (false, "_pg_whole")] {
        let (schema, scoped) = pg_schema(&client, &url).await;
        let flow = large_chain(Arc::new(PostgresStore::connect_lazy(&scoped).expect("a store")), deltas);
        let per_step = sample(&flow, 20, 3).await.into_iter().map(|d| d.as_nanos() as f64 / 20.0 / 1000.0).collect();
        report("persist_chain20_100kb", &format!("per_step_us{suffix}"), "us", per_step);
        let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await;
    }
}

/// A store that counts the bytes of what the engine writes through it (the text of states,
/// deltas, frontiers, inputs and step outputs), and passes every call on.
struct Metered<S> {
    inner: S,
    bytes: AtomicUsize,
}

impl<S: RunStore> Metered<S> {
    fn new(inner: S) -> Self {
        Metered { inner, bytes: AtomicUsize::new(0) }
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn count(&self, checkpoint: &Checkpoint) {
        let steps: usize = checkpoint.steps.iter().map(|s| s.step.len() + s.output.len()).sum();
        let text = checkpoint.state.len() + checkpoint.delta.as_ref().map_or(0, String::len);
        let feedback = checkpoint.feedback.as_ref().map_or(0, String::len);
        self.bytes.fetch_add(text + checkpoint.frontier.len() + steps + feedback, Ordering::Relaxed);
    }
}

impl<S: RunStore> RunStore for Metered<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn state_deltas(&self) -> bool {
        self.inner.state_deltas()
    }
    fn create_run<'a>(&'a self, run: &'a NewRun) -> StoreFuture<'a, ()> {
        let inputs = run.inputs.as_ref().map_or(0, String::len) + run.payload.as_ref().map_or(0, String::len);
        self.bytes.fetch_add(run.state.len() + run.frontier.len() + inputs, Ordering::Relaxed);
        self.inner.create_run(run)
    }
    fn save_checkpoint<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()> {
        self.count(checkpoint);
        self.inner.save_checkpoint(checkpoint)
    }
    fn end_run<'a>(&'a self, end: &'a RunEnd) -> StoreFuture<'a, ()> {
        if let Some(checkpoint) = &end.checkpoint {
            self.count(checkpoint);
        }
        self.inner.end_run(end)
    }
    fn load_run(&self, run_id: RunId) -> StoreFuture<'_, Option<StoredRun>> {
        self.inner.load_run(run_id)
    }
    fn claim_run<'a>(
        &'a self,
        run_id: RunId,
        owner: &'a str,
        lease: Duration,
        replacing: Option<&'a str>,
    ) -> StoreFuture<'a, Claim> {
        self.inner.claim_run(run_id, owner, lease, replacing)
    }
    fn claim_orphans<'a>(
        &'a self,
        flows: &'a [String],
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Claim>> {
        self.inner.claim_orphans(flows, owner, lease, limit)
    }
    fn heartbeat<'a>(&'a self, owner: &'a str, runs: &'a [RunId], lease: Duration) -> StoreFuture<'a, u64> {
        self.inner.heartbeat(owner, runs, lease)
    }
    fn list_runs<'a>(&'a self, filter: &'a RunFilter) -> StoreFuture<'a, Vec<RunSummary>> {
        self.inner.list_runs(filter)
    }
}

/// The chain of `persist_chain20_100kb`; `deltas: false` checkpoints whole states.
fn large_chain(store: Arc<dyn RunStore>, deltas: bool) -> Flow<Large> {
    let mut b = FlowBuilder::<Large>::new("persist_chain20_100kb");
    for i in 0..20u64 {
        let handler = move |cx: Cx<Large>, (): ()| async move {
            cx.update(|s| {
                let item = ((s.n * 7 + i) % 100) as usize;
                s.items[item] = format!("{item:03}{}", "y".repeat(1000));
                s.n += 1;
            });
            Ok(())
        };
        b = match i {
            0 => b.start("s0", handler),
            _ => b.listen(&format!("s{i}"), step(format!("s{}", i - 1)), handler),
        };
    }
    let b = if deltas { b } else { b.state_deltas(None) };
    b.store(store).build().expect("chain20_100kb builds")
}

/// Bytes this process has passed to `write` so far (`wchar` in /proc/self/io).
fn written_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| io.lines().find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

/// One journaled operation (`cx.once`) with a small result, recorded in a SQLite file: the
/// time of 100 calls inside one step, per call.
async fn journal_op() {
    const OPS: u32 = 100;
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = times.clone();
    let dir = tempfile::tempdir().expect("a temp dir");
    let flow = FlowBuilder::<Counter>::new("journal_op")
        .start("work", move |cx: Cx<Counter>, (): ()| {
            let t = t.clone();
            async move {
                let started = Instant::now();
                for i in 0..OPS {
                    let _: u32 = cx.once("op", |_| async move { Ok::<_, std::io::Error>(i) }).await?;
                }
                t.lock().expect("the samples").push(started.elapsed().as_nanos() as f64 / f64::from(OPS) / 1000.0);
                Ok::<_, StepError>(())
            }
        })
        .store(SqliteStore::open(dir.path().join("journal.db")))
        .build()
        .expect("journal_op builds");
    for _ in 0..31 {
        flow.kickoff(()).await.expect("run");
    }
    let mut samples = std::mem::take(&mut *times.lock().expect("the samples"));
    samples.remove(0); // warm-up
    report("journal_op", "per_op_us", "us", samples);
}

/// Loads and resumes a run with 1,000 completed steps (500 loop iterations of two steps)
/// whose last step failed; the time covers loading, claiming, restoring and finishing it.
async fn resume_1000() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("resume.db")));
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = broken.clone();
    let flow = FlowBuilder::<Counter>::new("resume_1000")
        .start("begin", |_cx, (): ()| async move { Ok(()) })
        .listen("work", or([step("begin"), route(Loop::Again)]), |cx: Cx<Counter>, (): ()| async move {
            cx.update(|c| c.n += 1);
            Ok(())
        })
        .router("check", "work", |cx: Cx<Counter>, (): ()| async move {
            Ok(if cx.state(|c| c.n) < 500 { Loop::Again } else { Loop::Done })
        })
        .listen("finish", route(Loop::Done), move |_cx, (): ()| {
            let b = b.clone();
            async move {
                if b.load(Ordering::SeqCst) {
                    return Err(StepError::msg("not yet"));
                }
                Ok(())
            }
        })
        .store(store.clone())
        .build()
        .expect("resume_1000 builds");
    let mut samples = Vec::new();
    for _ in 0..20 {
        broken.store(true, Ordering::SeqCst);
        let failed = flow.kickoff(()).await.expect_err("the last step fails");
        assert!(failed.step() == Some("finish"), "{failed}");
        let id = store.list_runs(&crewflow::store::RunFilter::default()).await.expect("list")[0].run_id;
        broken.store(false, Ordering::SeqCst);
        let t = Instant::now();
        let run = flow.resume(id).await.expect("resume");
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(run.steps_run(), 1002);
    }
    report("resume_1000", "resume_ms", "ms", samples);
}

/// Times `op` (after 100 warm-up calls): `samples` batches of `batch` calls, in µs per call.
async fn per_call_us<F, Fut>(samples: usize, batch: usize, mut op: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..100 {
        op().await;
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..batch {
            op().await;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / batch as f64);
    }
    out
}

/// Loads a finished 20-step run by id from a SQLite file: `us` reads what a caller asking
/// for a run gets by default ([`LoadRun::new`](crewflow::store::LoadRun::new): the record,
/// its state and its output), `us_all_outputs` the whole record with every step's output
/// (`RunStore::load_run`), `us_inspect` a typed [`Run`](crewflow::Run) through
/// `Flow::inspect` (every step's output, decoded), `us_inspect_light` the same through
/// `Flow::inspect_with(id, LoadRun::new())` (the state and the output).
async fn load_run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("load.db")));
    let flow = chain20(store.clone());
    let id = flow.kickoff(()).await.expect("run").id;
    let light = per_call_us(30, 200, || async {
        let run = store.load_run_with(id, LoadRun::new()).await.expect("load").expect("the run");
        assert_eq!(run.steps.len(), 1);
    })
    .await;
    let all = per_call_us(30, 200, || async {
        let run = store.load_run(id).await.expect("load").expect("the run");
        assert_eq!(run.steps.len(), 20);
    })
    .await;
    let inspect = per_call_us(30, 200, || async {
        assert_eq!(flow.inspect(id).await.expect("inspect").steps_run(), 20);
    })
    .await;
    let inspect_light = per_call_us(30, 200, || async {
        let run = flow.inspect_with(id, LoadRun::new()).await.expect("inspect");
        assert_eq!(run.state.n, 20);
    })
    .await;
    report("load_run", "us", "us", light);
    report("load_run", "us_all_outputs", "us", all);
    report("load_run", "us_inspect", "us", inspect);
    report("load_run", "us_inspect_light", "us", inspect_light);
}
