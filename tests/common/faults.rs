//! Flow shapes and fault injection for the `faults_*` tests.
//!
//! Four shapes over one state ([`Tally`]): a chain, a fan-out joined by an `and`, a router
//! loop, and a flow that pauses for human feedback. Every step records each execution in a
//! side file (`<pid> start|end <step> <activation>`), so a test can tell which executions ran,
//! in which process, and how often. A step changes the state in two updates with an `.await`
//! between them, so a fault can fall between the two and parallel siblings interleave there.
//!
//! Faults:
//! - at a step ([`StepFaults`]): *park* (stop forever, silently: the kill comes at a store
//!   write), *hang* (stop forever after writing the marker file: the kill comes now), *fail*
//!   (return an error once, after the first update, when the step's parallel siblings have
//!   ended);
//! - at a store write ([`HangingStore`]): stop forever just before the n-th write reaches the
//!   store, or just after it committed, after writing the marker file.
//!
//! A hang writes the marker file before it stops, so a test kills the process at a known
//! point rather than after a guessed time.
//!
//! A *large* run ([`Probe::large`]) also keeps notes in its state: an 8 KiB ballast and a
//! 1.5 KiB note per step, so its checkpoints are past the store's delta threshold (4 KiB) and
//! go through the state chain (a whole state, then deltas); [`Tally::check_notes`] says
//! whether the notes are exactly those of the state's steps.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crewflow::store::{
    Checkpoint, Claim, JournalEntry, NewRun, RunEnd, RunFilter, RunStatus, RunStore, RunSummary, SqliteStore,
    StoreFuture, StoredRun,
};
use crewflow::trigger::{and, label, or, step};
use crewflow::{Cx, DeferredFeedback, Flow, FlowBuilder, HumanFeedback, Kickoff, RunId, StepError};
use serde::{Deserialize, Serialize};

/// The state every shape works on.
#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Each step adds its weight (distinct powers of two: a step counted twice shows).
    pub sum: i64,
    /// Each step pushes its name.
    pub items: Vec<String>,
    /// Rounds of the loop.
    pub rounds: u32,
    /// A large run's notes: the ballast, and one per step (`work#n` for the loop's rounds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
}

/// A note's text: its key, repeated to 1.5 KiB (distinct per key, so a note swapped shows).
pub fn note(key: &str) -> String {
    key.chars().chain(std::iter::once(' ')).cycle().take(1536).collect()
}

/// The 8 KiB every large run's state carries.
pub fn ballast() -> String {
    (0..8192u32).map(|i| char::from(b'a' + ((i * 7 + i / 26) % 26) as u8)).collect()
}

impl Tally {
    /// The state a run holds after exactly these steps completed, in any order: what a
    /// checkpoint listing them must hold.
    pub fn after<'a>(steps: impl IntoIterator<Item = &'a str>) -> Tally {
        let mut t = Tally::default();
        for step in steps {
            t.sum += weight(step);
            if step != "again" {
                t.items.push(step.to_string());
            }
            if step == "work" {
                t.rounds += 1;
            }
        }
        t
    }

    /// What a run must end with whatever order parallel steps ran in: the sum, the items
    /// sorted, the rounds.
    pub fn canonical(&self) -> (i64, Vec<String>, u32) {
        let mut items = self.items.clone();
        items.sort();
        (self.sum, items, self.rounds)
    }

    /// Whether the notes are exactly those of the items (a large run) or absent (a small one).
    pub fn check_notes(&self, large: bool) -> Result<(), String> {
        let mut expected = BTreeMap::new();
        if large && !self.items.is_empty() {
            expected.insert("ballast".to_string(), ballast());
            let mut rounds = 0;
            for item in &self.items {
                let key = if item == "work" {
                    rounds += 1;
                    format!("work#{rounds}")
                } else {
                    item.clone()
                };
                expected.insert(key.clone(), note(&key));
            }
        }
        if self.notes == expected {
            return Ok(());
        }
        let keys = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
        let differ: Vec<&String> =
            expected.iter().filter(|(k, v)| self.notes.get(*k) != Some(v)).map(|(k, _)| k).collect();
        Err(format!(
            "the notes {:?} are not those of the items {:?} (expected {:?}; wrong or missing: {differ:?})",
            keys(&self.notes),
            self.items,
            keys(&expected)
        ))
    }
}

/// What a step adds to the sum (distinct powers of two within a shape, so a step counted
/// twice or missing shows; the loop's `work` adds 10 a round, its router nothing).
pub fn weight(step: &str) -> i64 {
    match step {
        "s1" | "src" | "begin" | "extract" => 1,
        "s2" | "b1" | "approve" => 2,
        "s3" | "b2" | "check" => 4,
        "s4" | "b3" | "book" => 8,
        "s5" | "b4" | "refuse" => 16,
        "join" => 32,
        "done" => 64,
        "work" => 10,
        "finish" => 1000,
        _ => 0,
    }
}

/// The shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `s1 → s2 → s3 → s4 → s5`.
    Chain,
    /// `src → b1 ‖ b2 ‖ b3 ‖ b4 → join (and of the four) → done`.
    FanOut,
    /// `begin → again (router) ⇄ work`, [`LOOP_ROUNDS`] rounds, then `finish`.
    Loop,
    /// `extract → approve (asks for feedback, pauses) ‖ check → book (and of "approved" and
    /// check)`; `refuse` on "rejected".
    Pause,
}

/// Rounds of [`Shape::Loop`].
pub const LOOP_ROUNDS: u32 = 3;

/// The answer a paused run of [`Shape::Pause`] is given.
pub const ANSWER: &str = "approved";

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::FanOut => "fan_out",
            Shape::Loop => "loop",
            Shape::Pause => "pause",
        }
    }

    pub fn parse(name: &str) -> Option<Shape> {
        [Shape::Chain, Shape::FanOut, Shape::Loop, Shape::Pause].into_iter().find(|s| s.name() == name)
    }

    /// The parallel siblings of `step` (those a failing step waits for before failing).
    fn siblings(self, of: &str) -> Vec<&'static str> {
        let group: &[&'static str] = match self {
            Shape::FanOut => &["b1", "b2", "b3", "b4"],
            Shape::Pause => &["approve", "check"],
            _ => &[],
        };
        if group.contains(&of) { group.iter().copied().filter(|s| *s != of).collect() } else { Vec::new() }
    }
}

/// Where in a step's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before its first update.
    Start,
    /// Between its two updates.
    Mid,
    /// After its second update, before it returns.
    End,
}

/// A point in a step: its `nth` execution in this process (from 1), at `phase`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPoint {
    pub step: String,
    pub nth: u32,
    pub phase: Phase,
}

impl StepPoint {
    pub fn new(step: &str, nth: u32, phase: Phase) -> Self {
        StepPoint { step: step.to_string(), nth, phase }
    }

    /// `step:nth:phase`, for an environment variable.
    pub fn encode(&self) -> String {
        let phase = match self.phase {
            Phase::Start => "start",
            Phase::Mid => "mid",
            Phase::End => "end",
        };
        format!("{}:{}:{phase}", self.step, self.nth)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let (step, nth, phase) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?);
        let phase = match phase {
            "start" => Phase::Start,
            "mid" => Phase::Mid,
            "end" => Phase::End,
            _ => return None,
        };
        Some(StepPoint::new(step, nth, phase))
    }
}

/// What the steps of one process do wrong.
#[derive(Clone, Debug, Default)]
pub struct StepFaults {
    /// Where a step stops forever without telling (the kill comes at a store write).
    pub park: Option<StepPoint>,
    /// Where a step stops forever after writing the marker file (the kill comes now).
    pub hang: Option<StepPoint>,
    /// A step whose first execution in this process fails after its first update, once its
    /// parallel siblings have ended.
    pub fail: Option<String>,
}

/// A step execution as the side file recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Execution {
    pub pid: u32,
    /// `start` or `end`.
    pub what: String,
    pub step: String,
    pub activation: u64,
}

/// The executions recorded in `side`.
pub fn executions(side: &Path) -> Vec<Execution> {
    std::fs::read_to_string(side)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut p = line.split(' ');
            Some(Execution {
                pid: p.next()?.parse().ok()?,
                what: p.next()?.to_string(),
                step: p.next()?.to_string(),
                activation: p.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Appends one line with one `write` (whole lines even from parallel steps), flushed to the
/// disk: the process may be killed right after.
fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
    f.sync_data().unwrap();
}

/// Writes the marker file (the test kills the process once it exists), then never returns.
pub async fn hang_here(marker: &Path, what: &str) {
    append(marker, what);
    std::future::pending::<()>().await;
}

/// The steps' link to the test: the side file, the marker, the faults, and what ran in this
/// process.
pub struct Probe {
    shape: Shape,
    side: PathBuf,
    marker: PathBuf,
    faults: StepFaults,
    large: bool,
    started: Mutex<HashMap<String, u32>>,
    ended: Mutex<HashMap<String, u32>>,
}

impl Probe {
    pub fn new(shape: Shape, side: &Path, marker: &Path, faults: StepFaults) -> Arc<Self> {
        Self::sized(shape, side, marker, faults, false)
    }

    /// A probe whose steps also write notes into the state when `large` (see the module docs).
    pub fn sized(shape: Shape, side: &Path, marker: &Path, faults: StepFaults, large: bool) -> Arc<Self> {
        Arc::new(Probe {
            shape,
            side: side.to_path_buf(),
            marker: marker.to_path_buf(),
            faults,
            large,
            started: Mutex::default(),
            ended: Mutex::default(),
        })
    }

    fn record(&self, what: &str, step: &str, activation: u64) {
        append(&self.side, &format!("{} {what} {step} {activation}", std::process::id()));
    }

    /// Counts an execution of `step` starting; returns its number in this process.
    fn start(&self, step: &str, activation: u64) -> u32 {
        self.record("start", step, activation);
        let mut started = self.started.lock().unwrap();
        let n = started.entry(step.to_string()).or_default();
        *n += 1;
        *n
    }

    fn end(&self, step: &str, activation: u64) {
        self.record("end", step, activation);
        *self.ended.lock().unwrap().entry(step.to_string()).or_default() += 1;
    }

    /// Parks or hangs here if a fault says so.
    async fn at(&self, step: &str, nth: u32, phase: Phase) {
        let here = StepPoint::new(step, nth, phase);
        if self.faults.hang.as_ref() == Some(&here) {
            hang_here(&self.marker, &format!("step {}", here.encode())).await;
        }
        if self.faults.park.as_ref() == Some(&here) {
            std::future::pending::<()>().await;
        }
    }

    /// Whether this execution is to fail; if so, first waits until its siblings have ended
    /// (so their checkpoints come while its update is in the live state).
    async fn fails(&self, step: &str, nth: u32) -> bool {
        if nth != 1 || self.faults.fail.as_deref() != Some(step) {
            return false;
        }
        let siblings = self.shape.siblings(step);
        loop {
            let done = {
                let ended = self.ended.lock().unwrap();
                siblings.iter().all(|s| ended.get(*s).copied().unwrap_or(0) > 0)
            };
            if done {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A step body: records its start, adds `weight`, (faults), pushes its name, records its end.
async fn body(probe: Arc<Probe>, cx: Cx<Tally>, step: &'static str, weight: i64) -> Result<i64, StepError> {
    let activation = cx.activation();
    let nth = probe.start(step, activation);
    probe.at(step, nth, Phase::Start).await;
    cx.update(|t| t.sum += weight);
    // Parallel siblings run (and may be checkpointed) between the two updates.
    tokio::task::yield_now().await;
    probe.at(step, nth, Phase::Mid).await;
    if probe.fails(step, nth).await {
        return Err(StepError::msg(format!("{step} failed (injected)")));
    }
    cx.update(|t| {
        t.items.push(step.to_string());
        if step == "work" {
            t.rounds += 1;
        }
        if probe.large {
            t.notes.entry("ballast".to_string()).or_insert_with(ballast);
            let key = if step == "work" { format!("work#{}", t.rounds) } else { step.to_string() };
            t.notes.insert(key.clone(), note(&key));
        }
    });
    probe.at(step, nth, Phase::End).await;
    probe.end(step, activation);
    Ok(weight)
}

/// A router body: like [`body`] but changes nothing; routes on the rounds done.
async fn route_body(probe: Arc<Probe>, cx: Cx<Tally>, step: &'static str) -> Result<String, StepError> {
    let activation = cx.activation();
    let nth = probe.start(step, activation);
    probe.at(step, nth, Phase::Start).await;
    tokio::task::yield_now().await;
    probe.at(step, nth, Phase::Mid).await;
    let label = if cx.state(|t| t.rounds) < LOOP_ROUNDS { "more" } else { "done" };
    probe.at(step, nth, Phase::End).await;
    probe.end(step, activation);
    Ok(label.to_string())
}

type StepFuture = std::pin::Pin<Box<dyn Future<Output = Result<i64, StepError>> + Send>>;

/// A handler running [`body`] for `step`.
fn weighted(probe: &Arc<Probe>, step: &'static str) -> impl Fn(Cx<Tally>, ()) -> StepFuture + Send + Sync + use<> {
    let probe = probe.clone();
    move |cx: Cx<Tally>, (): ()| Box::pin(body(probe.clone(), cx, step, weight(step)))
}

/// The flow of `shape` over `store`, its steps reporting to `probe`.
pub fn build(shape: Shape, store: Arc<dyn RunStore>, probe: &Arc<Probe>) -> Flow<Tally> {
    builder(shape, probe).store(store).build().unwrap()
}

/// The flow of `shape` to be given a store (and options), its steps reporting to `probe`.
pub fn builder(shape: Shape, probe: &Arc<Probe>) -> FlowBuilder<Tally> {
    let b = FlowBuilder::<Tally>::new(format!("faults_{}", shape.name()));
    match shape {
        Shape::Chain => b
            .start("s1", weighted(probe, "s1"))
            .listen("s2", "s1", weighted(probe, "s2"))
            .listen("s3", "s2", weighted(probe, "s3"))
            .listen("s4", "s3", weighted(probe, "s4"))
            .listen("s5", "s4", weighted(probe, "s5")),
        Shape::FanOut => b
            .start("src", weighted(probe, "src"))
            .listen("b1", "src", weighted(probe, "b1"))
            .listen("b2", "src", weighted(probe, "b2"))
            .listen("b3", "src", weighted(probe, "b3"))
            .listen("b4", "src", weighted(probe, "b4"))
            .listen("join", and([step("b1"), step("b2"), step("b3"), step("b4")]), weighted(probe, "join"))
            .listen("done", "join", weighted(probe, "done")),
        Shape::Loop => {
            let p = probe.clone();
            b.start("begin", weighted(probe, "begin"))
                .router("again", or([step("begin"), step("work")]), move |cx: Cx<Tally>, (): ()| {
                    route_body(p.clone(), cx, "again")
                })
                .routes(["more", "done"])
                .listen("work", label("more"), weighted(probe, "work"))
                .listen("finish", label("done"), weighted(probe, "finish"))
        }
        Shape::Pause => b
            .start("extract", weighted(probe, "extract"))
            .listen("approve", "extract", weighted(probe, "approve"))
            .human_feedback(
                HumanFeedback::new("Pay this invoice?").emit([ANSWER, "rejected"]).provider(DeferredFeedback),
            )
            .listen("check", "extract", weighted(probe, "check"))
            .listen("book", and([label(ANSWER), step("check")]), weighted(probe, "book"))
            .listen("refuse", label("rejected"), weighted(probe, "refuse")),
    }
}

/// How a process's drive of a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished(Tally),
    /// Paused, with no answer to give in this process.
    Paused,
    Failed(String),
}

impl Outcome {
    /// One line for a child's standard output.
    pub fn line(&self) -> String {
        match self {
            Outcome::Finished(t) => format!("OUTCOME finished {}", serde_json::to_string(t).unwrap()),
            Outcome::Paused => "OUTCOME paused".to_string(),
            Outcome::Failed(e) => format!("OUTCOME failed {}", e.replace('\n', " ")),
        }
    }

    /// Reads [`Outcome::line`] back from a child's standard output.
    pub fn from_stdout(stdout: &str) -> Option<Outcome> {
        let rest = stdout.lines().find_map(|l| l.find("OUTCOME ").map(|at| &l[at + 8..]))?;
        Some(if let Some(json) = rest.strip_prefix("finished ") {
            Outcome::Finished(serde_json::from_str(json).ok()?)
        } else if rest.starts_with("paused") {
            Outcome::Paused
        } else {
            Outcome::Failed(rest.strip_prefix("failed ").unwrap_or(rest).to_string())
        })
    }
}

/// Drives run `id` as a process that finds it in the store would: starts it if it is not
/// there, resumes it if it stopped, answers it if it is paused (when `answer`), until it is
/// finished, paused with no answer to give, or fails.
pub async fn drive(flow: &Flow<Tally>, id: RunId, answer: bool) -> Outcome {
    let store = flow.store().unwrap().clone();
    for _ in 0..4 {
        let status = match store.load_run(id).await {
            Ok(stored) => stored.map(|s| s.status),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let result = match status {
            None => flow.kickoff(Kickoff::new().run_id(id)).await,
            Some(RunStatus::Paused) if answer => flow.resume_with_feedback(id, ANSWER).await,
            Some(RunStatus::Paused) => return Outcome::Paused,
            Some(_) => flow.resume(id).await,
        };
        match result {
            Ok(run) if run.is_finished() => return Outcome::Finished(run.state),
            Ok(_) => {} // paused: look again
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    }
    Outcome::Failed("the run neither finished nor paused after four drives".into())
}

/// A store for a URL: PostgreSQL or a SQLite file.
pub fn open_store(url: &str) -> Arc<dyn RunStore> {
    if url.starts_with("postgres") {
        Arc::new(crewflow_store::PostgresStore::connect_lazy(url).unwrap())
    } else {
        Arc::new(SqliteStore::open(url))
    }
}

/// The executions a stored run holds as done, `(activation, step)`: completed steps, and
/// paused executions (a saved pause: their bodies ran, their changes are kept, and they do not
/// run again).
pub fn durable_steps(stored: &StoredRun) -> Vec<(u64, String)> {
    let mut done: Vec<(u64, String)> = stored.steps.iter().map(|s| (s.activation, s.step.to_string())).collect();
    if let Some(feedback) = &stored.feedback {
        let record: serde_json::Value = serde_json::from_str(feedback).unwrap();
        for p in record["pending"].as_array().into_iter().flatten() {
            done.push((p["activation"].as_u64().unwrap(), p["request"]["step"].as_str().unwrap().to_string()));
        }
    }
    done
}

/// Checks that a stored run's state is exactly that of its durable executions: no change of a
/// step in flight or failed, none lost.
pub fn assert_exact_checkpoint(stored: &StoredRun, context: &str) {
    let state: Tally = serde_json::from_str(&stored.state).unwrap();
    let done = durable_steps(stored);
    let expected = Tally::after(done.iter().map(|(_, step)| step.as_str()));
    assert_eq!(
        state.canonical(),
        expected.canonical(),
        "{context}: the stored state is not that of the stored steps {done:?} (status {}, checkpoint {})",
        stored.status,
        stored.seq
    );
    // A large run's notes follow its items; a small run has none.
    let large = !state.notes.is_empty();
    if let Err(e) = state.check_notes(large) {
        panic!("{context}: {e} (checkpoint {})", stored.seq);
    }
}

// ---------------------------------------------------------------------------------------------
// A store that hangs at a chosen write.

/// Where a [`HangingStore`] stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteHang {
    /// Just before the n-th write (from 1) reaches the store.
    Before(u32),
    /// Just after the n-th write committed.
    After(u32),
}

impl WriteHang {
    pub fn encode(self) -> String {
        match self {
            WriteHang::Before(n) => format!("before:{n}"),
            WriteHang::After(n) => format!("after:{n}"),
        }
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (when, n) = text.split_once(':')?;
        let n = n.parse().ok()?;
        match when {
            "before" => Some(WriteHang::Before(n)),
            "after" => Some(WriteHang::After(n)),
            _ => None,
        }
    }
}

/// Wraps a store; counts its writes (recording a run, checkpoints, ends, claims) and, at the
/// chosen one, writes the marker file and stops forever, as a process killed there would; or
/// runs a hook just before the chosen write (to fill the disk, say).
pub struct HangingStore {
    inner: Arc<dyn RunStore>,
    hang: Option<WriteHang>,
    marker: PathBuf,
    writes: AtomicU32,
    hook: Option<(u32, Box<dyn Fn() + Send + Sync>)>,
    /// The write (from 1) that fails without reaching the store, if any.
    fail: Option<u32>,
    /// The length of each state delta written (checkpoints and ends), in order.
    deltas: Mutex<Vec<usize>>,
}

impl HangingStore {
    pub fn new(inner: Arc<dyn RunStore>, hang: Option<WriteHang>, marker: &Path) -> Arc<Self> {
        Arc::new(HangingStore {
            inner,
            hang,
            marker: marker.to_path_buf(),
            writes: AtomicU32::new(0),
            hook: None,
            fail: None,
            deltas: Mutex::default(),
        })
    }

    /// A store that runs `hook` just before its `n`-th write (from 1), once.
    pub fn before_write(inner: Arc<dyn RunStore>, n: u32, hook: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(HangingStore {
            inner,
            hang: None,
            marker: PathBuf::new(),
            writes: AtomicU32::new(0),
            hook: Some((n, Box::new(hook))),
            fail: None,
            deltas: Mutex::default(),
        })
    }

    /// A store whose `n`-th write (from 1) fails without reaching the store ("the disk is full").
    pub fn failing_write(inner: Arc<dyn RunStore>, n: u32) -> Arc<Self> {
        Arc::new(HangingStore {
            inner,
            hang: None,
            marker: PathBuf::new(),
            writes: AtomicU32::new(0),
            hook: None,
            fail: Some(n),
            deltas: Mutex::default(),
        })
    }

    /// The writes so far.
    pub fn writes(&self) -> u32 {
        self.writes.load(Ordering::SeqCst)
    }

    /// The lengths of the state deltas written so far, in order.
    pub fn deltas(&self) -> Vec<usize> {
        self.deltas.lock().unwrap().clone()
    }

    fn note_delta(&self, checkpoint: Option<&Checkpoint>) {
        if let Some(delta) = checkpoint.and_then(|c| c.delta.as_ref()) {
            self.deltas.lock().unwrap().push(delta.len());
        }
    }

    fn write<'a, T: Send + 'a>(&'a self, what: &'static str, write: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((_, hook)) = self.hook.as_ref().filter(|(at, _)| *at == n) {
            hook();
        }
        let hang = self.hang;
        if self.fail == Some(n) {
            return Box::pin(async { Err("the disk is full".into()) });
        }
        Box::pin(async move {
            if hang == Some(WriteHang::Before(n)) {
                hang_here(&self.marker, &format!("before write {n} ({what})")).await;
            }
            let result = write.await;
            if hang == Some(WriteHang::After(n)) && result.is_ok() {
                hang_here(&self.marker, &format!("after write {n} ({what})")).await;
            }
            result
        })
    }
}

impl RunStore for HangingStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn state_deltas(&self) -> bool {
        self.inner.state_deltas()
    }
    fn create_run<'a>(&'a self, run: &'a NewRun) -> StoreFuture<'a, ()> {
        self.write("create_run", self.inner.create_run(run))
    }
    fn save_checkpoint<'a>(&'a self, checkpoint: &'a Checkpoint) -> StoreFuture<'a, ()> {
        self.note_delta(Some(checkpoint));
        self.write("save_checkpoint", self.inner.save_checkpoint(checkpoint))
    }
    fn end_run<'a>(&'a self, end: &'a RunEnd) -> StoreFuture<'a, ()> {
        self.note_delta(end.checkpoint.as_ref());
        self.write("end_run", self.inner.end_run(end))
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
        self.write("claim_run", self.inner.claim_run(run_id, owner, lease, replacing))
    }
    fn claim_paused<'a>(
        &'a self,
        run_id: RunId,
        seq: u64,
        owner: &'a str,
        lease: Duration,
    ) -> StoreFuture<'a, Option<Claim>> {
        self.write("claim_paused", self.inner.claim_paused(run_id, seq, owner, lease))
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
    fn record_journal<'a>(&'a self, run_id: RunId, fencing: u64, entry: &'a JournalEntry) -> StoreFuture<'a, ()> {
        self.inner.record_journal(run_id, fencing, entry)
    }
    fn load_journal<'a>(&'a self, run_id: RunId, executions: &'a [u64]) -> StoreFuture<'a, Vec<JournalEntry>> {
        self.inner.load_journal(run_id, executions)
    }
}
