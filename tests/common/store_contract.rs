//! The contract every store keeps: one suite, run on every backend by `tests/store_contract.rs`,
//! so a new backend passes or fails the same clauses as SQLite and PostgreSQL.
//!
//! Each clause is an `async fn(Database)`. The database is fresh and empty; it opens as many
//! handles on itself as a clause needs, each what one process holds ([`Database::open`]). A
//! [`Process`] runs a handle on a runtime of its own and can be stopped the way a killed
//! process stops: its lease heartbeat and its connections end with it. The clauses are the
//! promises of `RunStore` (`crates/crewflow-core/src/persist.rs`) and of `MemoryStore`, one
//! per behaviour, in sections: runs, checkpoints, ends, leases, fencing, pause claims, worker
//! claims, errors, schedules, memories.
//!
//! [`store_contract_clauses!`] lists every clause and turns each into a `#[tokio::test]` for a
//! backend; a clause added here runs on every backend.
//!
//! Sessions: the promises of `SessionStore` (`crates/crewflow-chat/src/store.rs`) about a
//! session's transcript, kept as one row per message: appended in order, read whole or by its
//! end, rewritten from a message on, never with a gap; a turn saved against a session that
//! moved on is refused whole; a deleted session takes its messages with it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use crewflow::chat::{ChatMessage, Role, SessionConflict, SessionStore, StoredSession, TurnRecord, TurnSave};
use crewflow::store::StoreError;
use crewflow::store::{
    Checkpoint, Claim, CompactReport, JournalEntry, LeaseLost, LoadRun, MemoryQuery, MemoryRow, MemoryStore,
    ModelCount, NewRun, ParentStep, Retention, RunEnd, RunFilter, RunOwned, RunStatus, RunStore, StepOutputs, StepRow,
    StoredRun,
};
use crewflow::store::{NewSchedule, NewWebhook, StoredSchedule};
use crewflow::{BoxError, RunId};
use serde_json::{Value, json};

/// Turns every clause of the contract into a test for one backend, in the module where it is
/// invoked: `store_contract_clauses!(database_fn, #[attributes of every test]...)`, where
/// `database_fn()` is an `async fn` returning a fresh [`Database`]. The suite must be mounted
/// at the crate root as `contract`.
macro_rules! store_contract_clauses {
    ($database:path $(, #[$attr:meta])* $(,)?) => {
        store_contract_clauses!(@each $database, [$(#[$attr])*],
            // runs
            runs_are_created_and_loaded,
            a_duplicate_run_id_is_refused,
            runs_are_listed_newest_first_and_filtered,
            nested_runs_keep_their_parent_and_are_listed_by_it,
            // checkpoints
            checkpoints_round_trip_and_keep_every_output,
            json_values_round_trip,
            // ends
            a_finished_run_keeps_its_final_checkpoint,
            a_run_loads_with_the_outputs_asked_for_and_the_rest_on_demand,
            a_failed_run_keeps_its_error_and_its_last_checkpoint,
            a_paused_run_keeps_its_feedback_and_releases_its_lease,
            // leases
            a_live_lease_refuses_other_owners,
            an_expired_lease_is_taken_over_by_another_owner,
            a_store_renews_only_the_runs_its_process_drives,
            heartbeat_extends_the_leases_of_its_owners_running_runs,
            // fencing
            a_stale_fencing_token_is_refused_and_changes_nothing,
            // pause claims
            exactly_one_of_two_concurrent_pause_claims_wins,
            a_pause_claim_against_a_moved_checkpoint_is_refused,
            // worker claims
            worker_claims_take_abandoned_runs_first_then_queued_oldest_first,
            concurrent_worker_claims_never_share_a_run,
            // errors
            unknown_run_ids_are_errors_that_name_the_run,
            // worker reports
            ended_worker_runs_are_listed_until_marked_reported_once,
            // the journal of side effects
            journal_entries_round_trip_per_execution,
            a_journal_key_keeps_its_first_result,
            a_stale_fencing_token_records_nothing_in_the_journal,
            // compaction
            compaction_deletes_only_ended_runs_past_their_time,
            compaction_drops_finished_journals_and_keeps_failed_ones,
            // schedules
            schedules_are_kept_per_tenant,
            each_schedule_tick_fires_once_across_concurrent_callers,
            webhook_events_are_claimed_once_retried_and_settled,
            // memories
            memories_round_trip,
            memory_queries_filter_by_scope_source_model_ids_and_age,
            memory_models_are_counted_by_model_and_dimensions,
            memories_are_deleted_and_touched,
            a_memory_batch_is_stored_whole_or_not_at_all,
            // sessions
            session_messages_are_appended_in_order_and_read_by_their_end,
            a_save_rewrites_the_transcript_from_a_loaded_message_and_never_leaves_a_gap,
            of_two_concurrent_turns_of_a_session_one_is_saved_and_the_other_refused_whole,
            deleting_a_session_deletes_its_messages,
        );
    };
    (@each $database:path, $attrs:tt, $($clause:ident),* $(,)?) => {
        $(store_contract_clauses!(@one $database, $attrs, $clause);)*
    };
    (@one $database:path, [$(#[$attr:meta])*], $clause:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $clause() {
            crate::contract::$clause($database().await).await;
        }
    };
}

// ----------------------------------------------------------------------------------------------
// The backend's side: a database, handles on it, processes.

/// One process's handle on a database: its run store, its memory store and its session store
/// (the same object in both backends).
#[derive(Clone)]
pub struct Handle {
    pub runs: Arc<dyn RunStore>,
    pub memories: Arc<dyn MemoryStore>,
    pub sessions: Arc<dyn SessionStore>,
}

/// A fresh, empty database for one clause, and how to open handles on it.
pub struct Database {
    open: Box<dyn Fn() -> Handle + Send + Sync>,
    _keep: Box<dyn Any + Send + Sync>,
}

impl Database {
    /// `open` opens a new handle (as a new process would: its own connections, its own lease
    /// heartbeat); `keep` lives as long as the database (a temporary directory, say).
    pub fn new(open: impl Fn() -> Handle + Send + Sync + 'static, keep: impl Any + Send + Sync) -> Self {
        Database { open: Box::new(open), _keep: Box::new(keep) }
    }

    /// A new handle on the database.
    pub fn open(&self) -> Handle {
        (self.open)()
    }
}

/// A handle on its own runtime, standing for another process. Dropping it stops the process
/// as a kill would: the runtime ends, so the store's lease heartbeat and connections end too.
pub struct Process {
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

impl Process {
    pub fn start(db: &Database) -> Process {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Process { runtime: Some(runtime), handle: db.open() }
    }

    /// Runs `f` with this process's handle, on its runtime.
    pub async fn run<T, Fut>(&self, f: impl FnOnce(Handle) -> Fut) -> T
    where
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("a running process");
        runtime.spawn(f(self.handle.clone())).await.unwrap()
    }

    /// Stops the process.
    pub fn stop(self) {}
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Helpers.

const FLOW: &str = "contract";
/// A lease that does not run out during a clause.
const LONG: Duration = Duration::from_secs(60);
/// A lease that runs out soon after its owner stops renewing it.
const SHORT: Duration = Duration::from_millis(200);

fn new_run(owner: &str, status: RunStatus) -> NewRun {
    NewRun {
        run_id: RunId::new(),
        flow: Arc::from(FLOW),
        fingerprint: 0x0123_4567_89ab_cdef,
        status,
        inputs: Some(r#"{"topic": "invoices", "limit": 3}"#.into()),
        payload: Some(r#"{"kickoff": true}"#.into()),
        state: r#"{"n": 0}"#.into(),
        state_version: 0,
        chained: false,
        frontier: r#"{"in_flight": [[0, "first"]]}"#.into(),
        owner: Arc::from(owner),
        lease: LONG,
        parent: None,
    }
}

fn of_flow(flow: &str, owner: &str, status: RunStatus) -> NewRun {
    NewRun { flow: Arc::from(flow), ..new_run(owner, status) }
}

/// A time with whole milliseconds (SQLite keeps milliseconds, PostgreSQL microseconds).
fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_767_225_600_000 + ms).unwrap()
}

fn row(activation: u64, step: &str, output: Value) -> StepRow {
    StepRow { activation, step: Arc::from(step), output: output.to_string(), finished_at: at(activation as i64 * 10) }
}

fn checkpoint(run_id: RunId, fencing: u64, seq: u64, state: Value, steps: Vec<StepRow>) -> Checkpoint {
    Checkpoint {
        run_id,
        fencing,
        seq,
        state: state.to_string(),
        state_version: 0,
        delta: None,
        chained: false,
        had_chain: false,
        frontier: json!({"seq": seq}).to_string(),
        steps,
        feedback: None,
    }
}

fn end(run_id: RunId, fencing: u64, status: RunStatus) -> RunEnd {
    RunEnd { run_id, fencing, status, checkpoint: None, final_activation: None, error: None }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("stored JSON does not parse ({e}): {text}"))
}

fn parsed(text: Option<&str>) -> Option<Value> {
    text.map(parse)
}

async fn load(store: &dyn RunStore, run_id: RunId) -> StoredRun {
    store.load_run(run_id).await.unwrap().unwrap_or_else(|| panic!("run {run_id} is not in the store"))
}

/// The steps as (activation, step, output).
fn steps(run: &StoredRun) -> Vec<(u64, String, Value)> {
    run.steps.iter().map(|s| (s.activation, s.step.to_string(), parse(&s.output))).collect()
}

/// Everything a write can change, to compare a run before and after a refused write.
fn everything(run: &StoredRun) -> String {
    format!(
        "status {:?} fencing {} owner {:?} lease {:?} seq {} state {} frontier {} steps {:?} final {:?} error {:?} \
         feedback {:?} updated {}",
        run.status,
        run.fencing,
        run.owner,
        run.lease_until,
        run.seq,
        parse(&run.state),
        parse(&run.frontier),
        steps(run),
        run.final_activation,
        run.error,
        parsed(run.feedback.as_deref()),
        run.updated_at
    )
}

fn lease_lost(err: &BoxError) -> &LeaseLost {
    err.downcast_ref::<LeaseLost>().unwrap_or_else(|| panic!("expected LeaseLost, got: {err}"))
}

fn run_owned(err: &BoxError) -> &RunOwned {
    err.downcast_ref::<RunOwned>().unwrap_or_else(|| panic!("expected RunOwned, got: {err}"))
}

fn ids(summaries: &[crewflow::store::RunSummary]) -> Vec<RunId> {
    summaries.iter().map(|s| s.run_id).collect()
}

/// Creates a queued run, claims it in a process with a short lease and stops that process:
/// the run is `running` with a lapsed lease, its owner gone. Returns the stopped owner's claim.
async fn abandoned(db: &Database, run: &NewRun, owner: &'static str) -> Claim {
    db.open().runs.create_run(&NewRun { status: RunStatus::Queued, ..run.clone() }).await.unwrap();
    let process = Process::start(db);
    let id = run.run_id;
    let claim = process.run(move |h| async move { h.runs.claim_run(id, owner, SHORT, None).await.unwrap() }).await;
    process.stop();
    claim
}

/// Waits until leases of length [`SHORT`] taken before the call have run out.
async fn short_leases_lapse() {
    tokio::time::sleep(SHORT * 2).await;
}

/// Creates a run and pauses it at checkpoint `seq`, with a feedback record.
async fn paused_run(store: &dyn RunStore, seq: u64) -> NewRun {
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let mut cp = checkpoint(run.run_id, 1, seq, json!({"n": seq}), vec![row(0, "review", json!("draft"))]);
    cp.feedback = Some(json!({"requests": [{"step": "review", "activation": 0}], "answers": []}).to_string());
    store.end_run(&RunEnd { checkpoint: Some(cp), ..end(run.run_id, 1, RunStatus::Paused) }).await.unwrap();
    run
}

// ----------------------------------------------------------------------------------------------
// Runs.

/// `create_run` records a running run (owned, fencing token 1, a lease) or a queued one (no
/// owner, no lease, token 0); `load_run` returns every field as written, from any handle; an
/// unknown id loads as `None`.
pub async fn runs_are_created_and_loaded(db: Database) {
    let store = db.open().runs;
    let before = Utc::now() - chrono::Duration::seconds(5);
    let running = NewRun { fingerprint: u64::MAX, ..new_run("owner-a", RunStatus::Running) };
    store.create_run(&running).await.unwrap();
    let got = load(&*db.open().runs, running.run_id).await;
    assert_eq!(got.run_id, running.run_id);
    assert_eq!(got.flow, FLOW);
    assert_eq!(got.fingerprint, u64::MAX, "a fingerprint keeps all 64 bits");
    assert_eq!(got.status, RunStatus::Running);
    assert_eq!(got.fencing, 1, "a recorded run starts at fencing token 1");
    assert_eq!(got.owner.as_deref(), Some("owner-a"));
    let until = got.lease_until.expect("a running run has a lease");
    assert!(until > before + chrono::Duration::seconds(40), "a 60 s lease: {until}");
    assert_eq!(got.seq, 0, "no checkpoint yet");
    assert_eq!(parsed(got.inputs.as_deref()), parsed(running.inputs.as_deref()));
    assert_eq!(parsed(got.payload.as_deref()), parsed(running.payload.as_deref()));
    assert_eq!(parse(&got.state), json!({"n": 0}));
    assert_eq!(parse(&got.frontier), json!({"in_flight": [[0, "first"]]}));
    assert!(got.steps.is_empty());
    assert_eq!((got.final_activation, got.error.as_deref(), got.feedback.as_deref()), (None, None, None));
    assert!(got.created_at >= before && got.created_at <= got.updated_at, "{got:?}");

    let queued = NewRun { fingerprint: 1 << 63, inputs: None, payload: None, ..new_run("owner-a", RunStatus::Queued) };
    store.create_run(&queued).await.unwrap();
    let got = load(&*store, queued.run_id).await;
    assert_eq!(got.status, RunStatus::Queued);
    assert_eq!(got.fingerprint, 1 << 63);
    assert_eq!((got.fencing, got.owner, got.lease_until), (0, None, None), "a queued run has no owner yet");
    assert_eq!((got.inputs, got.payload), (None, None));

    assert!(store.load_run(RunId::new()).await.unwrap().is_none(), "an unknown id is None");
}

/// A second `create_run` with an existing id fails, names the id, and changes nothing.
pub async fn a_duplicate_run_id_is_refused(db: Database) {
    let store = db.open().runs;
    let first = new_run("owner-a", RunStatus::Running);
    store.create_run(&first).await.unwrap();
    let before = everything(&load(&*store, first.run_id).await);
    for status in [RunStatus::Running, RunStatus::Queued] {
        let again = NewRun {
            run_id: first.run_id,
            state: r#"{"n": 99}"#.into(),
            state_version: 0,
            chained: false,
            owner: Arc::from("intruder"),
            ..of_flow("other", "intruder", status)
        };
        let err = db.open().runs.create_run(&again).await.expect_err("a duplicate id is refused");
        let msg = err.to_string();
        assert!(msg.contains(&first.run_id.to_string()) && msg.contains("already exists"), "{msg}");
    }
    let after = load(&*store, first.run_id).await;
    assert_eq!(everything(&after), before, "the first run is untouched");
    assert_eq!(after.flow, FLOW);
    assert_eq!(store.list_runs(&RunFilter::default()).await.unwrap().len(), 1);
}

/// `list_runs` lists newest first, filters by flow and by status (and both), honours the limit
/// (0 meaning 100), and summarises each run: its steps and a failed run's error.
pub async fn runs_are_listed_newest_first_and_filtered(db: Database) {
    let store = db.open().runs;
    let mut created = Vec::new();
    for (flow, status) in [
        ("alpha", RunStatus::Running),
        ("beta", RunStatus::Queued),
        ("alpha", RunStatus::Queued),
        ("alpha", RunStatus::Running),
    ] {
        let run = of_flow(flow, "owner-a", status);
        store.create_run(&run).await.unwrap();
        created.push(run.run_id);
        tokio::time::sleep(Duration::from_millis(3)).await; // distinct creation times
    }
    let [a1, b1, a2, a3] = created[..] else { unreachable!() };
    let cp = checkpoint(a3, 1, 1, json!({"n": 2}), vec![row(0, "first", json!(1)), row(1, "second", json!(2))]);
    store.save_checkpoint(&cp).await.unwrap();
    let failed = RunEnd { error: Some("step `second` failed: boom".into()), ..end(a3, 1, RunStatus::Failed) };
    store.end_run(&failed).await.unwrap();

    let list = |flow: Option<&str>, status: Option<RunStatus>, limit: usize| {
        let filter = RunFilter { flow: flow.map(str::to_string), status, limit, ..Default::default() };
        let store = store.clone();
        async move { store.list_runs(&filter).await.unwrap() }
    };
    let all = list(None, None, 0).await;
    assert_eq!(ids(&all), [a3, a2, b1, a1], "newest first");
    assert_eq!(ids(&list(Some("alpha"), None, 0).await), [a3, a2, a1]);
    assert_eq!(ids(&list(None, Some(RunStatus::Queued), 0).await), [a2, b1]);
    assert_eq!(ids(&list(Some("alpha"), Some(RunStatus::Queued), 0).await), [a2]);
    assert_eq!(ids(&list(Some("alpha"), Some(RunStatus::Running), 0).await), [a1]);
    assert_eq!(ids(&list(None, None, 2).await), [a3, a2]);
    assert!(list(Some("gamma"), None, 0).await.is_empty());
    assert!(list(None, Some(RunStatus::Paused), 0).await.is_empty());

    let summary = &all[0];
    assert_eq!((summary.flow.as_str(), summary.status, summary.steps_done), ("alpha", RunStatus::Failed, 2));
    assert_eq!(summary.error.as_deref(), Some("step `second` failed: boom"));
    assert!(summary.created_at <= summary.updated_at);
    let queued = &all[1];
    assert_eq!((queued.status, queued.steps_done, queued.error.as_deref()), (RunStatus::Queued, 0, None));

    for _ in 0..101 {
        store.create_run(&of_flow("many", "owner-a", RunStatus::Queued)).await.unwrap();
    }
    assert_eq!(list(Some("many"), None, 0).await.len(), 100, "a limit of 0 means 100");
    assert_eq!(list(Some("many"), None, 101).await.len(), 101);
}

/// A run started from another run's step keeps that step (run and activation) through its
/// load and its listing; `RunFilter::parent` lists exactly the runs started from that run,
/// queued ones too, and none of another run's.
pub async fn nested_runs_keep_their_parent_and_are_listed_by_it(db: Database) {
    let store = db.open().runs;
    let outer = new_run("owner-a", RunStatus::Running);
    store.create_run(&outer).await.unwrap();
    let other = new_run("owner-a", RunStatus::Running);
    store.create_run(&other).await.unwrap();
    let under = |run: &NewRun, activation, status| NewRun {
        parent: Some(ParentStep { run_id: run.run_id, activation }),
        ..new_run("owner-a", status)
    };
    let first = under(&outer, 2, RunStatus::Running);
    let second = under(&outer, 5, RunStatus::Queued);
    let elsewhere = under(&other, 2, RunStatus::Running);
    for run in [&first, &second, &elsewhere] {
        store.create_run(run).await.unwrap();
    }

    let loaded = load(&*store, first.run_id).await;
    assert_eq!(loaded.parent, Some(ParentStep { run_id: outer.run_id, activation: 2 }));
    assert_eq!(load(&*store, outer.run_id).await.parent, None, "a top-level run has no parent");

    let children = |parent: RunId| {
        let filter = RunFilter { parent: Some(parent), ..RunFilter::default() };
        let store = store.clone();
        async move { store.list_runs(&filter).await.unwrap() }
    };
    let listed = children(outer.run_id).await;
    let mut found: Vec<(RunId, Option<ParentStep>)> = listed.iter().map(|s| (s.run_id, s.parent)).collect();
    found.sort_by_key(|(_, p)| p.map(|p| p.activation));
    assert_eq!(found, [(first.run_id, first.parent), (second.run_id, second.parent)]);
    assert_eq!(ids(&children(other.run_id).await), [elsewhere.run_id]);
    assert!(children(first.run_id).await.is_empty(), "a run without nested runs lists none");
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(all.len(), 5, "without the filter every run is listed, nested or not");
}

// ----------------------------------------------------------------------------------------------
// Checkpoints.

/// A checkpoint writes the state, frontier, sequence number and feedback record, and adds its
/// step outputs to every earlier one; `load_run` returns them by activation, from any handle.
/// A step stored again under its activation (run again after a resume) replaces the old
/// output; a checkpoint without a feedback record keeps the stored one.
pub async fn checkpoints_round_trip_and_keep_every_output(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let id = run.run_id;

    store.save_checkpoint(&checkpoint(id, 1, 1, json!({"n": 1}), vec![row(0, "first", json!(1))])).await.unwrap();
    let got = load(&*store, id).await;
    assert_eq!((got.seq, parse(&got.state), parse(&got.frontier)), (1, json!({"n": 1}), json!({"seq": 1})));
    assert_eq!(steps(&got), [(0, "first".to_string(), json!(1))]);
    assert_eq!(got.steps[0].finished_at, at(0), "the finish time is kept");
    assert_eq!(got.feedback, None);

    // Two steps at once, out of order, with a feedback record.
    let feedback = json!({"requests": [{"step": "second", "activation": 1}], "answers": []});
    let mut cp2 = checkpoint(
        id,
        1,
        2,
        json!({"n": 3}),
        vec![row(2, "third", json!({"items": [1, 2], "ok": true})), row(1, "second", json!("two"))],
    );
    cp2.feedback = Some(feedback.to_string());
    store.save_checkpoint(&cp2).await.unwrap();
    let got = load(&*db.open().runs, id).await;
    assert_eq!(got.seq, 2);
    assert_eq!(parse(&got.state), json!({"n": 3}));
    assert_eq!(
        steps(&got),
        [
            (0, "first".to_string(), json!(1)),
            (1, "second".to_string(), json!("two")),
            (2, "third".to_string(), json!({"items": [1, 2], "ok": true}))
        ],
        "every output so far, by activation"
    );
    assert_eq!(got.steps.iter().map(|s| s.finished_at).collect::<Vec<_>>(), [at(0), at(10), at(20)]);
    assert_eq!(parsed(got.feedback.as_deref()), Some(feedback.clone()));
    assert!(got.updated_at >= got.created_at);

    // Activation 1 stored again; no feedback record: the stored one stays.
    store
        .save_checkpoint(&checkpoint(id, 1, 3, json!({"n": 4}), vec![row(1, "second", json!("again"))]))
        .await
        .unwrap();
    let got = load(&*store, id).await;
    assert_eq!(got.seq, 3);
    assert_eq!(steps(&got)[1], (1, "second".to_string(), json!("again")), "the newer output replaces the older");
    assert_eq!(got.steps.len(), 3);
    assert_eq!(parsed(got.feedback.as_deref()), Some(feedback), "None keeps the feedback record");

    // A new record replaces it.
    let answered = json!({"requests": [], "answers": [{"activation": 1, "feedback": "fine"}]});
    let mut cp4 = checkpoint(id, 1, 4, json!({"n": 5}), vec![row(3, "fourth", json!(null))]);
    cp4.feedback = Some(answered.to_string());
    store.save_checkpoint(&cp4).await.unwrap();
    let got = load(&*store, id).await;
    assert_eq!(parsed(got.feedback.as_deref()), Some(answered));
    assert_eq!(steps(&got)[3], (3, "fourth".to_string(), json!(null)), "a null output is an output");
    let summary = &store.list_runs(&RunFilter::default()).await.unwrap()[0];
    assert_eq!(summary.steps_done, 4);
    assert_eq!(got.status, RunStatus::Running, "a checkpoint does not change the status");
}

/// State, outputs, inputs and payloads are JSON text: whatever a backend stores them as, they
/// read back as the same JSON (PostgreSQL's JSONB reorders keys and respaces, so the text may
/// differ, the values may not): escapes, Unicode, the extremes of integers, floats, nesting.
pub async fn json_values_round_trip(db: Database) {
    let store = db.open().runs;
    let tricky = json!({
        "text": "naïve café ☕ 𝄞 \"quoted\" back\\slash / new\nline\ttab \u{1} \u{7f} \u{2028}",
        "empty": "",
        "keys": {"": 1, "with space": 2, "ü": 3, "9": 4},
        "max": u64::MAX,
        "min": i64::MIN,
        "float": 0.1,
        "huge": 1.5e300,
        "tiny": -2.5e-300,
        "nested": {"a": [{"b": [[], {}, [[[null]]]]}]},
        "flags": [true, false, null],
    });
    let mut run = new_run("owner-a", RunStatus::Running);
    run.state = tricky.to_string();
    run.inputs = Some(tricky.to_string());
    run.payload = Some(json!("just a string").to_string());
    store.create_run(&run).await.unwrap();
    let got = load(&*store, run.run_id).await;
    assert_eq!(parse(&got.state), tricky);
    assert_eq!(parsed(got.inputs.as_deref()), Some(tricky.clone()));
    assert_eq!(parsed(got.payload.as_deref()), Some(json!("just a string")));

    let outputs = [tricky.clone(), json!("text"), json!(-7), json!(2.5), json!(null), json!([]), json!(true)];
    let rows = outputs.iter().enumerate().map(|(i, o)| row(i as u64, &format!("step_{i}"), o.clone())).collect();
    let mut cp = checkpoint(run.run_id, 1, 1, tricky.clone(), rows);
    cp.frontier = tricky.to_string();
    cp.feedback = Some(tricky.to_string());
    store.save_checkpoint(&cp).await.unwrap();
    let got = load(&*store, run.run_id).await;
    assert_eq!(steps(&got).into_iter().map(|(_, _, o)| o).collect::<Vec<_>>(), outputs);
    assert_eq!(parse(&got.frontier), tricky);
    assert_eq!(parsed(got.feedback.as_deref()), Some(tricky.clone()));
    assert_eq!(parse(&got.state), tricky);
}

// ----------------------------------------------------------------------------------------------
// Ends.

/// A finished run keeps its final checkpoint (state, frontier, the last outputs) and the
/// activation of its output; its lease is released.
pub async fn a_finished_run_keeps_its_final_checkpoint(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let id = run.run_id;
    store.save_checkpoint(&checkpoint(id, 1, 1, json!({"n": 1}), vec![row(0, "first", json!(1))])).await.unwrap();
    let last = checkpoint(id, 1, 2, json!({"n": 2, "done": true}), vec![row(1, "last", json!("the output"))]);
    let finished = RunEnd { checkpoint: Some(last), final_activation: Some(1), ..end(id, 1, RunStatus::Finished) };
    store.end_run(&finished).await.unwrap();

    let got = load(&*db.open().runs, id).await;
    assert_eq!(got.status, RunStatus::Finished);
    assert_eq!((got.seq, parse(&got.state)), (2, json!({"n": 2, "done": true})));
    assert_eq!(parse(&got.frontier), json!({"seq": 2}));
    assert_eq!(steps(&got), [(0, "first".to_string(), json!(1)), (1, "last".to_string(), json!("the output"))]);
    assert_eq!(got.final_activation, Some(1));
    assert_eq!(got.error, None);
    assert_eq!((got.owner, got.lease_until), (None, None), "the lease is released");
    assert_eq!(store.heartbeat("owner-a", &[id], LONG).await.unwrap(), 0, "an ended run is no longer renewed");
    let finished_runs = RunFilter { status: Some(RunStatus::Finished), ..RunFilter::default() };
    assert_eq!(ids(&store.list_runs(&finished_runs).await.unwrap()), [id]);
}

/// `load_run_with` reads the record and the state as `load_run` does, and of the step outputs
/// only those asked for: none, the run's output (its final activation's; none before the run
/// finished), or all. `load_steps` reads every output on demand (none for an unknown run).
pub async fn a_run_loads_with_the_outputs_asked_for_and_the_rest_on_demand(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let id = run.run_id;
    let first = vec![row(0, "first", json!(1)), row(1, "second", json!({"k": [2]}))];
    store.save_checkpoint(&checkpoint(id, 1, 1, json!({"n": 1}), first)).await.unwrap();
    let running = store.load_run_with(id, LoadRun::new()).await.unwrap().unwrap();
    assert!(running.steps.is_empty(), "a running run has no output yet: {:?}", running.steps);
    assert_eq!(parse(&running.state), json!({"n": 1}));

    let last = checkpoint(id, 1, 2, json!({"n": 2}), vec![row(2, "last", json!("the output"))]);
    let finished = RunEnd { checkpoint: Some(last), final_activation: Some(2), ..end(id, 1, RunStatus::Finished) };
    store.end_run(&finished).await.unwrap();

    let reader = db.open().runs;
    let whole = load(&*reader, id).await;
    let default = reader.load_run_with(id, LoadRun::new()).await.unwrap().unwrap();
    assert_eq!(steps(&default), [(2, "last".to_string(), json!("the output"))]);
    let mut trimmed = whole.clone();
    trimmed.steps = default.steps.clone();
    assert_eq!(everything(&default), everything(&trimmed), "the record is read whole whatever the outputs");
    let none = reader.load_run_with(id, LoadRun::new().outputs(StepOutputs::None)).await.unwrap().unwrap();
    assert!(none.steps.is_empty());
    assert_eq!(
        (none.status, none.final_activation, parse(&none.state)),
        (RunStatus::Finished, Some(2), json!({"n": 2}))
    );
    let all = reader.load_run_with(id, LoadRun::everything()).await.unwrap().unwrap();
    assert_eq!(everything(&all), everything(&whole));
    assert_eq!(reader.load_steps(id).await.unwrap(), whole.steps, "the outputs on demand are the stored ones");
    assert_eq!(steps(&whole).len(), 3);

    let unknown = RunId::new();
    assert!(reader.load_run_with(unknown, LoadRun::new()).await.unwrap().is_none());
    assert!(reader.load_steps(unknown).await.unwrap().is_empty());
}

/// A failed (or cancelled) run keeps its error, and its state stays at the last checkpoint;
/// its lease is released. Claiming it to resume clears the error.
pub async fn a_failed_run_keeps_its_error_and_its_last_checkpoint(db: Database) {
    let store = db.open().runs;
    for (status, error) in
        [(RunStatus::Failed, "step `charge` failed: card declined"), (RunStatus::Cancelled, "cancelled by the user")]
    {
        let run = new_run("owner-a", RunStatus::Running);
        store.create_run(&run).await.unwrap();
        let id = run.run_id;
        store.save_checkpoint(&checkpoint(id, 1, 1, json!({"n": 1}), vec![row(0, "first", json!(1))])).await.unwrap();
        store.end_run(&RunEnd { error: Some(error.into()), ..end(id, 1, status) }).await.unwrap();

        let got = load(&*db.open().runs, id).await;
        assert_eq!((got.status, got.error.as_deref()), (status, Some(error)));
        assert_eq!((got.seq, parse(&got.state)), (1, json!({"n": 1})), "the state of the last checkpoint");
        assert_eq!(steps(&got), [(0, "first".to_string(), json!(1))]);
        assert_eq!((got.owner, got.lease_until, got.final_activation), (None, None, None));
        let listed = store.list_runs(&RunFilter { status: Some(status), ..RunFilter::default() }).await.unwrap();
        assert_eq!(listed[0].error.as_deref(), Some(error));

        let claim = db.open().runs.claim_run(id, "owner-b", LONG, None).await.unwrap();
        assert_eq!((claim.run_id, claim.flow.as_str(), claim.fencing), (id, FLOW, 2));
        let resumed = load(&*store, id).await;
        assert_eq!((resumed.status, resumed.error), (RunStatus::Running, None), "a resumed run has no error");
        assert_eq!(resumed.owner.as_deref(), Some("owner-b"));
        assert_eq!(parse(&resumed.state), json!({"n": 1}), "the state is untouched");
    }
}

/// A paused run (an end with status `paused`) keeps its checkpoint and feedback record and
/// releases its lease: nobody renews it, no worker takes it.
pub async fn a_paused_run_keeps_its_feedback_and_releases_its_lease(db: Database) {
    let store = db.open().runs;
    let run = paused_run(&*store, 1).await;
    let got = load(&*store, run.run_id).await;
    assert_eq!(got.status, RunStatus::Paused);
    let id = run.run_id;
    assert_eq!((got.seq, parse(&got.state)), (1, json!({"n": 1})));
    assert_eq!(
        parsed(got.feedback.as_deref()),
        Some(json!({"requests": [{"step": "review", "activation": 0}], "answers": []}))
    );
    assert_eq!(steps(&got), [(0, "review".to_string(), json!("draft"))]);
    assert_eq!((got.owner, got.lease_until, got.fencing), (None, None, 1));
    assert_eq!(store.heartbeat("owner-a", &[id], LONG).await.unwrap(), 0);
    assert!(store.claim_orphans(&[FLOW.to_string()], "worker", LONG, 10).await.unwrap().is_empty());
}

// ----------------------------------------------------------------------------------------------
// Leases.

/// While its lease holds, a run is refused to other owners (`RunOwned`, naming the owner and
/// when the lease ends) and unchanged; its own owner may claim it again, and so may an owner
/// replacing exactly the holder (known dead); replacing someone else does not help.
pub async fn a_live_lease_refuses_other_owners(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let id = run.run_id;
    let before = load(&*store, id).await;
    let other = db.open().runs;

    for replacing in [None, Some("owner-z")] {
        let err = other.claim_run(id, "owner-b", LONG, replacing).await.expect_err("the lease holds");
        let owned = run_owned(&err);
        assert_eq!((owned.run_id, owned.owner.as_str()), (id, "owner-a"));
        assert_eq!(Some(owned.until), before.lease_until, "names when the lease ends");
        assert!(err.to_string().contains("owner-a"), "{err}");
    }
    assert_eq!(everything(&load(&*store, id).await), everything(&before), "a refused claim changes nothing");

    let again = other.claim_run(id, "owner-a", LONG, None).await.unwrap();
    assert_eq!((again.run_id, again.flow.as_str(), again.fencing), (id, FLOW, 2), "its own owner may claim it");

    let taken = other.claim_run(id, "owner-b", LONG, Some("owner-a")).await.unwrap();
    assert_eq!(taken.fencing, 3, "replacing the dead holder takes the run at once");
    let got = load(&*store, id).await;
    assert_eq!((got.owner.as_deref(), got.fencing, got.status), (Some("owner-b"), 3, RunStatus::Running));
}

/// An owner that stops renewing loses its run when the lease runs out: another owner's claim
/// then succeeds with the next fencing token, and the old owner's writes are refused.
pub async fn an_expired_lease_is_taken_over_by_another_owner(db: Database) {
    let run = new_run("owner-a", RunStatus::Running);
    let a = abandoned(&db, &run, "owner-a").await;
    assert_eq!(a.fencing, 1, "claiming a queued run (token 0) gives token 1");
    short_leases_lapse().await;

    let store = db.open().runs;
    let b = store.claim_run(run.run_id, "owner-b", LONG, None).await.unwrap();
    assert_eq!(b.fencing, a.fencing + 1);
    let got = load(&*store, run.run_id).await;
    assert_eq!((got.owner.as_deref(), got.fencing, got.status), (Some("owner-b"), b.fencing, RunStatus::Running));
    assert!(got.lease_until.unwrap() > Utc::now() + chrono::Duration::seconds(30), "the new owner's lease");

    let late = checkpoint(run.run_id, a.fencing, 1, json!({"n": "late"}), vec![row(0, "first", json!("late"))]);
    let err = store.save_checkpoint(&late).await.expect_err("the old owner's write is refused");
    assert_eq!((lease_lost(&err).held, lease_lost(&err).current), (a.fencing, b.fencing));
}

/// A store's own heartbeat renews only the runs its process drives
/// (`crewflow::store::driven_runs`): a run claimed through the store alone, with no driver
/// running it, lapses like a stopped process's run, so nothing stays leased by a driver that
/// is gone. (Runs driven by a flow keep their leases: tests/faults_stuck.rs.)
pub async fn a_store_renews_only_the_runs_its_process_drives(db: Database) {
    let lease = Duration::from_millis(1200);
    let run = new_run("owner-a", RunStatus::Queued);
    let store = db.open().runs;
    store.create_run(&run).await.unwrap();
    let id = run.run_id;
    let a = Process::start(&db);
    let claim = a.run(move |h| async move { h.runs.claim_run(id, "owner-a", lease, None).await.unwrap() }).await;
    assert!(!crewflow::store::driven_runs().contains(&id));

    tokio::time::sleep(lease * 5 / 2).await;
    let b = store.claim_run(id, "owner-b", LONG, None).await.expect("nobody drives it: its lease lapsed");
    assert_eq!(b.fencing, claim.fencing + 1);
    a.stop();
}

/// `heartbeat(owner, runs, lease)` extends the lease of each of `runs` that is running and held
/// by the owner (even one whose lease ran out, as long as nobody took it), and returns how
/// many: not runs left out of `runs`, not other owners' runs, not ended ones.
pub async fn heartbeat_extends_the_leases_of_its_owners_running_runs(db: Database) {
    let runs: Vec<NewRun> = (0..4).map(|_| new_run("owner-a", RunStatus::Queued)).collect();
    let store = db.open().runs;
    for run in &runs {
        store.create_run(run).await.unwrap();
    }
    let ids: Vec<RunId> = runs.iter().map(|r| r.run_id).collect();
    let process = Process::start(&db);
    let (r1, r2, r3, r4) = (ids[0], ids[1], ids[2], ids[3]);
    process
        .run(move |h| async move {
            for id in [r1, r2, r4] {
                h.runs.claim_run(id, "owner-a", SHORT, None).await.unwrap();
            }
            h.runs.claim_run(r3, "owner-b", SHORT, None).await.unwrap();
            h.runs.end_run(&end(r4, 1, RunStatus::Finished)).await.unwrap();
        })
        .await;
    process.stop();
    short_leases_lapse().await;

    assert_eq!(store.heartbeat("owner-a", &[], LONG).await.unwrap(), 0, "no runs, nothing renewed");
    assert_eq!(store.heartbeat("owner-a", &ids, LONG).await.unwrap(), 2, "r1 and r2; r3 is owner-b's, r4 has ended");
    for id in [r1, r2] {
        let until = load(&*store, id).await.lease_until.unwrap();
        assert!(until > Utc::now() + chrono::Duration::seconds(30), "renewed for 60 s: {until}");
    }
    let err = store.claim_run(r1, "owner-c", LONG, None).await.expect_err("renewed");
    assert_eq!(run_owned(&err).owner, "owner-a");
    store.claim_run(r3, "owner-c", LONG, None).await.expect("owner-b's lease was not renewed");
    assert_eq!(store.heartbeat("nobody", &ids, LONG).await.unwrap(), 0);
}

// ----------------------------------------------------------------------------------------------
// Worker reports.

/// A run a worker claimed is listed as unreported once it has ended (not while it runs, not a
/// run nobody claimed through `claim_orphans`), until one caller marks it reported: the first
/// mark wins, a second is refused.
pub async fn ended_worker_runs_are_listed_until_marked_reported_once(db: Database) {
    let store = db.open().runs;
    let (taken, untaken) = (new_run("nobody", RunStatus::Queued), new_run("owner-a", RunStatus::Running));
    store.create_run(&taken).await.unwrap();
    store.create_run(&untaken).await.unwrap();
    let flows = [FLOW.to_string()];
    let claim = store.claim_orphans(&flows, "worker", LONG, 10).await.unwrap();
    assert_eq!(ids_of(&claim), [taken.run_id]);
    assert!(store.unreported_runs(&flows, 10).await.unwrap().is_empty(), "still running");
    let failed =
        RunEnd { error: Some("card declined".into()), ..end(taken.run_id, claim[0].fencing, RunStatus::Failed) };
    store.end_run(&failed).await.unwrap();
    store.end_run(&end(untaken.run_id, 1, RunStatus::Finished)).await.unwrap();
    let listed = db.open().runs.unreported_runs(&flows, 10).await.unwrap();
    assert_eq!(ids(&listed), [taken.run_id], "only the run a worker took over");
    assert_eq!((listed[0].status, listed[0].error.as_deref()), (RunStatus::Failed, Some("card declined")));
    assert!(store.unreported_runs(&["other".to_string()], 10).await.unwrap().is_empty());
    assert!(store.mark_reported(taken.run_id).await.unwrap());
    assert!(!db.open().runs.mark_reported(taken.run_id).await.unwrap(), "reported once");
    assert!(store.unreported_runs(&flows, 10).await.unwrap().is_empty());
}

// ----------------------------------------------------------------------------------------------
// Compaction.

/// A run of `flow` ended with `status` (`Paused` pauses it), one step output and one journal
/// entry recorded while it ran.
async fn ended_run(store: &dyn RunStore, flow: &str, status: RunStatus) -> RunId {
    let run = of_flow(flow, "owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    store.record_journal(run.run_id, 1, &entry(0, "charge", json!("receipt"))).await.unwrap();
    let mut cp = checkpoint(run.run_id, 1, 1, json!({"n": 1}), vec![row(0, "charge", json!("ok"))]);
    if status == RunStatus::Paused {
        cp.feedback = Some(json!({"requests": [{"step": "charge", "activation": 0}], "answers": []}).to_string());
    }
    store.end_run(&RunEnd { checkpoint: Some(cp), ..end(run.run_id, 1, status) }).await.unwrap();
    run.run_id
}

/// Ended runs (finished, failed, cancelled) older than the policy's age are deleted with their
/// step outputs and journal; a flow's own time to live wins over the default; running, queued
/// and paused runs are never touched, however old; a policy keeping everything removes nothing.
pub async fn compaction_deletes_only_ended_runs_past_their_time(db: Database) {
    let store = db.open().runs;
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    for status in [RunStatus::Finished, RunStatus::Failed, RunStatus::Cancelled] {
        gone.push(ended_run(&*store, FLOW, status).await);
    }
    kept.push(ended_run(&*store, FLOW, RunStatus::Paused).await);
    kept.push(ended_run(&*store, "long-lived", RunStatus::Finished).await);
    let running = new_run("owner-a", RunStatus::Running);
    store.create_run(&running).await.unwrap();
    let queued = new_run("nobody", RunStatus::Queued);
    store.create_run(&queued).await.unwrap();
    kept.extend([running.run_id, queued.run_id]);

    let nothing = store.compact(&Retention::new()).await.unwrap();
    assert_eq!(nothing, CompactReport::default(), "a policy keeping everything removes nothing");
    tokio::time::sleep(Duration::from_millis(20)).await; // every run is now older than 10 ms
    let policy = Retention::new()
        .delete_ended_after(Duration::from_millis(10))
        .flow_ttl("long-lived", Duration::from_secs(3600));
    let report = db.open().runs.compact(&policy).await.unwrap();
    assert_eq!(report, CompactReport { runs: 3, steps: 3, journal: 3, traces: 0 });
    for id in gone {
        assert!(store.load_run(id).await.unwrap().is_none(), "run {id} was deleted");
        assert!(store.load_journal(id, &[0]).await.unwrap().is_empty(), "with its journal");
    }
    for id in kept {
        let run = load(&*store, id).await;
        assert!(run.status != RunStatus::Finished || run.flow == "long-lived", "{id}: {:?}", run.status);
    }
    let paused = load(&*store, kept_paused(&*store).await).await;
    assert_eq!(steps(&paused), [(0, "charge".to_string(), json!("ok"))], "a paused run keeps its outputs");
    assert_eq!(store.compact(&policy).await.unwrap(), CompactReport::default(), "compaction is idempotent");
}

/// The paused run of the clause above (the only one).
async fn kept_paused(store: &dyn RunStore) -> RunId {
    let paused = store.list_runs(&RunFilter { status: Some(RunStatus::Paused), ..RunFilter::default() }).await.unwrap();
    assert_eq!(paused.len(), 1, "one paused run");
    paused[0].run_id
}

/// Dropping journals keeps the runs: finished and cancelled runs lose their journal (they never
/// run a step again), failed runs keep it (a resume after the fix replays it), and so do paused
/// and running ones.
pub async fn compaction_drops_finished_journals_and_keeps_failed_ones(db: Database) {
    let store = db.open().runs;
    let finished = ended_run(&*store, FLOW, RunStatus::Finished).await;
    let cancelled = ended_run(&*store, FLOW, RunStatus::Cancelled).await;
    let failed = ended_run(&*store, FLOW, RunStatus::Failed).await;
    let paused = ended_run(&*store, FLOW, RunStatus::Paused).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let report = store.compact(&Retention::new().drop_journal_after(Duration::from_millis(10))).await.unwrap();
    assert_eq!(report, CompactReport { runs: 0, steps: 0, journal: 2, traces: 0 });
    for id in [finished, cancelled] {
        assert!(store.load_journal(id, &[0]).await.unwrap().is_empty());
        assert_eq!(steps(&load(&*store, id).await).len(), 1, "the run and its outputs stay");
    }
    for id in [failed, paused] {
        assert_eq!(store.load_journal(id, &[0]).await.unwrap().len(), 1, "run {id} keeps its journal");
    }
}

// ----------------------------------------------------------------------------------------------
// The journal of side effects.

fn entry(activation: u64, key: &str, value: Value) -> JournalEntry {
    JournalEntry { activation, key: key.to_string(), value: value.to_string(), recorded_at: None }
}

fn sorted_entries(mut entries: Vec<JournalEntry>) -> Vec<(u64, String, Value)> {
    entries.sort_by(|a, b| (a.activation, &a.key).cmp(&(b.activation, &b.key)));
    entries.into_iter().map(|e| (e.activation, e.key, parse(&e.value))).collect()
}

/// Recorded entries come back for the executions asked for (another handle, as after a
/// restart), and only for those; values of any JSON shape round-trip.
pub async fn journal_entries_round_trip_per_execution(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let id = run.run_id;
    let tricky = json!({"text": "é ✓ \"quoted\" \n", "n": 1.5, "list": [1, null, {"a": []}]});
    for e in [
        entry(3, "charge", json!("receipt-1")),
        entry(3, "charge#1", tricky.clone()),
        entry(7, "llm:local/x", json!(42)),
    ] {
        store.record_journal(id, 1, &e).await.unwrap();
    }
    let other = db.open().runs;
    assert_eq!(
        sorted_entries(other.load_journal(id, &[3]).await.unwrap()),
        [(3, "charge".to_string(), json!("receipt-1")), (3, "charge#1".to_string(), tricky)]
    );
    assert_eq!(
        sorted_entries(other.load_journal(id, &[7, 9]).await.unwrap()),
        [(7, "llm:local/x".to_string(), json!(42))]
    );
    assert!(other.load_journal(id, &[]).await.unwrap().is_empty());
    assert!(other.load_journal(RunId::new(), &[3]).await.unwrap().is_empty(), "another run's entries are its own");

    // The whole journal, for a run's trace: every execution's, by execution and in the order
    // recorded, each with the time the store recorded it.
    let before = Utc::now() - chrono::Duration::seconds(5);
    let whole = other.load_whole_journal(id).await.unwrap();
    let keys: Vec<(u64, &str)> = whole.iter().map(|e| (e.activation, e.key.as_str())).collect();
    assert_eq!(keys, [(3, "charge"), (3, "charge#1"), (7, "llm:local/x")]);
    for e in &whole {
        let at = e.recorded_at.expect("a read entry has its time");
        assert!(before <= at && at <= Utc::now() + chrono::Duration::seconds(5), "{at}");
    }
    assert!(other.load_whole_journal(RunId::new()).await.unwrap().is_empty());
}

/// Recording a key twice (a result recorded, then the same call recorded again by a re-run
/// that raced it) keeps the first result.
pub async fn a_journal_key_keeps_its_first_result(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    store.record_journal(run.run_id, 1, &entry(0, "mail", json!("first"))).await.unwrap();
    store.record_journal(run.run_id, 1, &entry(0, "mail", json!("second"))).await.unwrap();
    assert_eq!(
        sorted_entries(store.load_journal(run.run_id, &[0]).await.unwrap()),
        [(0, "mail".to_string(), json!("first"))]
    );
}

/// A process that lost the run records nothing: `LeaseLost` naming both tokens.
pub async fn a_stale_fencing_token_records_nothing_in_the_journal(db: Database) {
    let run = new_run("owner-a", RunStatus::Running);
    let a = abandoned(&db, &run, "owner-a").await;
    short_leases_lapse().await;
    let store = db.open().runs;
    let b = store.claim_run(run.run_id, "owner-b", LONG, None).await.unwrap();
    let err = store.record_journal(run.run_id, a.fencing, &entry(0, "charge", json!(1))).await.expect_err("stale");
    assert_eq!((lease_lost(&err).held, lease_lost(&err).current), (a.fencing, b.fencing));
    assert!(store.load_journal(run.run_id, &[0]).await.unwrap().is_empty());
    store.record_journal(run.run_id, b.fencing, &entry(0, "charge", json!(2))).await.unwrap();
    assert_eq!(store.load_journal(run.run_id, &[0]).await.unwrap().len(), 1);
}

// ----------------------------------------------------------------------------------------------
// Fencing.

/// Once a run changed hands, a write with the old token (a checkpoint, any end) is refused
/// with `LeaseLost` naming both tokens, and changes nothing at all: not the state, not the
/// steps, not the status. A token from the future is refused too. The holder's writes succeed.
pub async fn a_stale_fencing_token_is_refused_and_changes_nothing(db: Database) {
    let store = db.open().runs;
    let run = new_run("owner-a", RunStatus::Running);
    store.create_run(&run).await.unwrap();
    let id = run.run_id;
    let mut first = checkpoint(id, 1, 1, json!({"n": 1}), vec![row(0, "first", json!(1))]);
    first.feedback = Some(json!({"answers": ["kept"]}).to_string());
    store.save_checkpoint(&first).await.unwrap();
    let taken = db.open().runs.claim_run(id, "owner-b", LONG, Some("owner-a")).await.unwrap();
    assert_eq!(taken.fencing, 2);
    let before = everything(&load(&*store, id).await);

    let mut stale =
        checkpoint(id, 1, 2, json!({"n": 666}), vec![row(0, "first", json!("overwritten")), row(1, "x", json!(0))]);
    stale.feedback = Some(json!({"answers": ["stale"]}).to_string());
    let refused = [
        store.save_checkpoint(&stale).await,
        store
            .end_run(&RunEnd {
                checkpoint: Some(stale.clone()),
                final_activation: Some(1),
                ..end(id, 1, RunStatus::Finished)
            })
            .await,
        store.end_run(&RunEnd { error: Some("stale failure".into()), ..end(id, 1, RunStatus::Failed) }).await,
        store.end_run(&end(id, 1, RunStatus::Cancelled)).await,
        store.end_run(&RunEnd { checkpoint: Some(stale.clone()), ..end(id, 1, RunStatus::Paused) }).await,
    ];
    for result in refused {
        let err = result.expect_err("a stale token is refused");
        let lost = lease_lost(&err);
        assert_eq!((lost.run_id, lost.held, lost.current), (id, 1, 2));
    }
    let future = checkpoint(id, 3, 2, json!({"n": 777}), vec![row(1, "x", json!(0))]);
    let err = store.save_checkpoint(&future).await.expect_err("a token from the future is refused");
    assert_eq!((lease_lost(&err).held, lease_lost(&err).current), (3, 2));
    assert_eq!(everything(&load(&*store, id).await), before, "refused writes change nothing");

    let holder = checkpoint(id, 2, 2, json!({"n": 2}), vec![row(1, "second", json!(2))]);
    store.save_checkpoint(&holder).await.expect("the holder writes");
    assert_eq!(parse(&load(&*store, id).await.state), json!({"n": 2}));
}

// ----------------------------------------------------------------------------------------------
// Pause claims.

/// Two answers to one pause race (`claim_paused` from two processes at once): exactly one
/// wins, with the next fencing token; the other gets `None`; the run belongs to the winner. A
/// third, late answer gets `None` too.
pub async fn exactly_one_of_two_concurrent_pause_claims_wins(db: Database) {
    let store = db.open().runs;
    let mut paused = Vec::new();
    for _ in 0..12 {
        paused.push(paused_run(&*store, 1).await.run_id);
    }
    let (first, second) = (db.open().runs, db.open().runs);
    for id in paused {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let race = |store: Arc<dyn RunStore>, owner: &'static str| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                (owner, store.claim_paused(id, 1, owner, LONG).await.unwrap())
            })
        };
        let (x, y) = (race(first.clone(), "answer-x"), race(second.clone(), "answer-y"));
        let results = [x.await.unwrap(), y.await.unwrap()];
        let winners: Vec<(&str, Claim)> = results.into_iter().filter_map(|(o, c)| c.map(|c| (o, c))).collect();
        assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
        let (owner, claim) = &winners[0];
        assert_eq!((claim.run_id, claim.flow.as_str(), claim.fencing), (id, FLOW, 2));
        let got = load(&*store, id).await;
        assert_eq!((got.status, got.owner.as_deref(), got.fencing), (RunStatus::Running, Some(*owner), 2));
        assert!(store.claim_paused(id, 1, "answer-z", LONG).await.unwrap().is_none(), "the pause was answered");
    }
}

/// A pause claim names the checkpoint its answer was read against: a different `seq`, a run
/// that is not paused (running, finished) or an unknown run gets `None` and changes nothing.
pub async fn a_pause_claim_against_a_moved_checkpoint_is_refused(db: Database) {
    let store = db.open().runs;
    let run = paused_run(&*store, 2).await;
    let id = run.run_id;
    let before = everything(&load(&*store, id).await);
    for seq in [0, 1, 3] {
        assert!(store.claim_paused(id, seq, "answer", LONG).await.unwrap().is_none(), "seq {seq}");
    }
    assert_eq!(everything(&load(&*store, id).await), before);

    let running = new_run("owner-a", RunStatus::Running);
    store.create_run(&running).await.unwrap();
    let running_before = everything(&load(&*store, running.run_id).await);
    assert!(store.claim_paused(running.run_id, 0, "answer", LONG).await.unwrap().is_none(), "not paused");
    assert_eq!(everything(&load(&*store, running.run_id).await), running_before);

    let finished = new_run("owner-a", RunStatus::Running);
    store.create_run(&finished).await.unwrap();
    store.end_run(&end(finished.run_id, 1, RunStatus::Finished)).await.unwrap();
    assert!(store.claim_paused(finished.run_id, 0, "answer", LONG).await.unwrap().is_none(), "finished");
    assert_eq!(load(&*store, finished.run_id).await.status, RunStatus::Finished);

    assert!(store.claim_paused(RunId::new(), 0, "answer", LONG).await.unwrap().is_none(), "unknown");

    let claim = store.claim_paused(id, 2, "answer", LONG).await.unwrap().expect("the right checkpoint");
    assert_eq!(claim.fencing, 2);
}

// ----------------------------------------------------------------------------------------------
// Worker claims.

/// `claim_orphans` takes runs of the given flows that are queued, or running with a lapsed
/// lease, oldest first, up to the limit, each with the next fencing token; never a run whose
/// lease holds, a paused, finished, failed or cancelled run, or another flow's run.
pub async fn worker_claims_take_abandoned_runs_first_then_queued_oldest_first(db: Database) {
    let store = db.open().runs;
    let pause = || tokio::time::sleep(Duration::from_millis(5));
    let oldest = new_run("nobody", RunStatus::Queued);
    store.create_run(&oldest).await.unwrap();
    pause().await;
    let orphan = new_run("owner-a", RunStatus::Running);
    let dead = abandoned(&db, &orphan, "owner-a").await;
    pause().await;
    let newest = new_run("nobody", RunStatus::Queued);
    store.create_run(&newest).await.unwrap();

    // Not to be taken.
    let live = new_run("owner-live", RunStatus::Running);
    store.create_run(&live).await.unwrap();
    let paused = paused_run(&*store, 1).await;
    let mut ended = Vec::new();
    for status in [RunStatus::Finished, RunStatus::Failed, RunStatus::Cancelled] {
        let run = new_run("owner-a", RunStatus::Running);
        store.create_run(&run).await.unwrap();
        store.end_run(&end(run.run_id, 1, status)).await.unwrap();
        ended.push(run.run_id);
    }
    let elsewhere = of_flow("other", "nobody", RunStatus::Queued);
    store.create_run(&elsewhere).await.unwrap();
    short_leases_lapse().await;

    let flows = [FLOW.to_string()];
    assert!(store.claim_orphans(&[], "worker", LONG, 10).await.unwrap().is_empty(), "no flows, no runs");
    assert!(store.claim_orphans(&flows, "worker", LONG, 0).await.unwrap().is_empty(), "a limit of 0");
    let worker = db.open().runs;
    let mut taken = Vec::new();
    for _ in 0..3 {
        let claims = worker.claim_orphans(&flows, "worker", LONG, 1).await.unwrap();
        assert_eq!(claims.len(), 1, "one at a time: {claims:?}");
        taken.push(claims[0].clone());
    }
    assert_eq!(
        taken.iter().map(|c| (c.run_id, c.fencing)).collect::<Vec<_>>(),
        [(orphan.run_id, dead.fencing + 1), (oldest.run_id, 1), (newest.run_id, 1)],
        "the abandoned run first (a takeover should not wait behind the queue), then oldest first, each with the next token"
    );
    assert!(taken.iter().all(|c| c.flow == FLOW));
    assert!(worker.claim_orphans(&flows, "worker", LONG, 10).await.unwrap().is_empty(), "nothing else is takeable");
    for claim in &taken {
        let got = load(&*store, claim.run_id).await;
        assert_eq!(
            (got.status, got.owner.as_deref(), got.fencing),
            (RunStatus::Running, Some("worker"), claim.fencing)
        );
        assert!(got.lease_until.unwrap() > Utc::now() + chrono::Duration::seconds(30));
    }
    assert_eq!(load(&*store, live.run_id).await.owner.as_deref(), Some("owner-live"));
    assert_eq!(load(&*store, paused.run_id).await.status, RunStatus::Paused);
    for id in ended {
        assert_eq!(load(&*store, id).await.owner, None);
    }

    let both = ["other".to_string(), FLOW.to_string()];
    let claims = worker.claim_orphans(&both, "worker", LONG, 10).await.unwrap();
    assert_eq!(ids_of(&claims), [elsewhere.run_id], "the other flow's run, once asked for");
    assert_eq!(claims[0].flow, "other");
}

fn ids_of(claims: &[Claim]) -> Vec<RunId> {
    claims.iter().map(|c| c.run_id).collect()
}

/// Workers claiming at the same time, each through its own handle, never get the same run,
/// and between them take every queued run (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
pub async fn concurrent_worker_claims_never_share_a_run(db: Database) {
    let store = db.open().runs;
    let mut queued = BTreeSet::new();
    for _ in 0..24 {
        let run = new_run("nobody", RunStatus::Queued);
        store.create_run(&run).await.unwrap();
        queued.insert(run.run_id);
    }
    let workers = ["worker-1", "worker-2", "worker-3", "worker-4"];
    let barrier = Arc::new(tokio::sync::Barrier::new(workers.len()));
    let tasks: Vec<_> = workers
        .iter()
        .map(|&owner| {
            let (handle, barrier) = (db.open().runs, barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut mine = Vec::new();
                loop {
                    let claims = handle.claim_orphans(&[FLOW.to_string()], owner, LONG, 3).await.unwrap();
                    if claims.is_empty() {
                        return mine;
                    }
                    mine.extend(claims.into_iter().map(|c| (owner, c)));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut taken: BTreeMap<RunId, Vec<(&str, u64)>> = BTreeMap::new();
    for task in tasks {
        for (owner, claim) in task.await.unwrap() {
            taken.entry(claim.run_id).or_default().push((owner, claim.fencing));
        }
    }
    let shared: Vec<_> = taken.iter().filter(|(_, claims)| claims.len() > 1).collect();
    assert!(shared.is_empty(), "runs claimed twice (claimer, token): {shared:?}");
    assert_eq!(taken.keys().copied().collect::<BTreeSet<_>>(), queued, "every queued run was taken");
    for (id, claims) in &taken {
        let (owner, fencing) = claims[0];
        assert_eq!(fencing, 1, "a queued run's first claim");
        assert_eq!(load(&*store, *id).await.owner.as_deref(), Some(owner), "the run belongs to its claimer");
    }
}

// ----------------------------------------------------------------------------------------------
// Errors.

/// A run the store does not have: loading gives `None`; claiming, checkpointing and ending are
/// errors naming the run (not `LeaseLost` or `RunOwned`, which would send the engine the wrong
/// way); a pause claim is `None`; nothing is created by any of them.
pub async fn unknown_run_ids_are_errors_that_name_the_run(db: Database) {
    let store = db.open().runs;
    let id = RunId::new();
    let named = |err: BoxError| {
        assert!(err.downcast_ref::<LeaseLost>().is_none() && err.downcast_ref::<RunOwned>().is_none(), "{err}");
        assert!(err.to_string().contains(&id.to_string()), "the error names the run: {err}");
    };
    assert!(store.load_run(id).await.unwrap().is_none());
    named(store.claim_run(id, "owner-a", LONG, None).await.expect_err("claiming an unknown run"));
    named(store.claim_run(id, "owner-a", LONG, Some("owner-z")).await.expect_err("claiming an unknown run"));
    let cp = checkpoint(id, 1, 1, json!({}), vec![row(0, "first", json!(1))]);
    named(store.save_checkpoint(&cp).await.expect_err("checkpointing an unknown run"));
    named(store.end_run(&end(id, 1, RunStatus::Failed)).await.expect_err("ending an unknown run"));
    let finished = RunEnd { checkpoint: Some(cp), final_activation: Some(0), ..end(id, 1, RunStatus::Finished) };
    named(store.end_run(&finished).await.expect_err("ending an unknown run"));
    assert!(store.claim_paused(id, 0, "owner-a", LONG).await.unwrap().is_none());
    assert_eq!(store.heartbeat("owner-a", &[id], LONG).await.unwrap(), 0);
    assert!(store.list_runs(&RunFilter::default()).await.unwrap().is_empty(), "nothing was created");
    assert!(store.load_run(id).await.unwrap().is_none());
}

// ----------------------------------------------------------------------------------------------
// Schedules.

fn schedule(tenant: &str, flow: &str) -> NewSchedule {
    NewSchedule {
        id: RunId::new().to_string(),
        tenant: tenant.into(),
        flow: flow.into(),
        cron: "*/5 * * * *".into(),
        timezone: "UTC".into(),
        max_lateness: None,
        inputs: r#"{"topic": "invoices"}"#.into(),
    }
}

async fn schedule_of(store: &dyn RunStore, tenant: &str, id: &str) -> Option<StoredSchedule> {
    store.load_schedule(tenant, id, 10).await.unwrap().map(|(s, _)| s)
}

/// A schedule is read, listed and deleted only by its tenant: to another tenant its id is
/// unknown (`None`, not listed, `false` on delete, which leaves it there). Lists are oldest
/// first and filter by flow; a taken id is refused.
pub async fn schedules_are_kept_per_tenant(db: Database) {
    let store = db.open().runs;
    let a1 = schedule("acme", "report");
    let a2 = schedule("acme", "digest");
    let g1 = schedule("globex", "report");
    for s in [&a1, &a2, &g1] {
        store.create_schedule(s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(store.create_schedule(&NewSchedule { tenant: "globex".into(), ..a1.clone() }).await.is_err());

    let other = db.open().runs;
    let got = schedule_of(other.as_ref(), "acme", &a1.id).await.expect("the schedule, from another handle");
    assert_eq!((got.tenant.as_str(), got.flow.as_str(), got.cron.as_str()), ("acme", "report", "*/5 * * * *"));
    assert_eq!(parse(&got.inputs), json!({"topic": "invoices"}));
    assert_eq!((got.last_tick, got.last_run), (None, None));
    assert!((Utc::now() - got.created_at).num_seconds().abs() < 60, "{:?}", got.created_at);
    assert_eq!((got.timezone.as_str(), got.max_lateness), ("UTC", None));
    // A schedule's own time zone and maximum lateness are kept as given.
    let zoned = NewSchedule {
        timezone: "America/New_York".into(),
        max_lateness: Some(Duration::from_millis(90_500)),
        ..schedule("acme", "zoned")
    };
    store.create_schedule(&zoned).await.unwrap();
    let got = schedule_of(other.as_ref(), "acme", &zoned.id).await.expect("the zoned schedule");
    assert_eq!((got.timezone.as_str(), got.max_lateness), ("America/New_York", Some(Duration::from_millis(90_500))));
    assert!(store.delete_schedule("acme", &zoned.id).await.unwrap());

    let listed = |tenant: &'static str, flow: Option<&'static str>| {
        let other = other.clone();
        async move { other.list_schedules(tenant, flow).await.unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>() }
    };
    assert_eq!(listed("acme", None).await, [a1.id.as_str(), a2.id.as_str()]);
    assert_eq!(listed("acme", Some("digest")).await, [a2.id.as_str()]);
    assert_eq!(listed("globex", None).await, [g1.id.as_str()]);
    assert!(listed("initech", None).await.is_empty());

    assert_eq!(schedule_of(other.as_ref(), "globex", &a1.id).await, None);
    assert!(!other.delete_schedule("globex", &a1.id).await.unwrap());
    assert!(schedule_of(other.as_ref(), "acme", &a1.id).await.is_some(), "another tenant's delete removed it");
    assert!(other.delete_schedule("acme", &a1.id).await.unwrap());
    assert_eq!(schedule_of(store.as_ref(), "acme", &a1.id).await, None);
    assert!(!store.delete_schedule("acme", &a1.id).await.unwrap());
    assert_eq!(listed("acme", None).await, [a2.id.as_str()]);
}

/// `fire_schedule` fires a tick for one caller only: of concurrent callers from several
/// handles, one gets `true` and its queued run is recorded; the others get `false` and record
/// nothing. A tick no later than the last fired one never fires; a later one does; a deleted
/// schedule fires nothing and its fires go with it.
pub async fn each_schedule_tick_fires_once_across_concurrent_callers(db: Database) {
    let store = db.open().runs;
    let s = schedule("acme", FLOW);
    store.create_schedule(&s).await.unwrap();
    let tick = at(60_000);

    let handles: Vec<Arc<dyn RunStore>> = (0..4).map(|_| db.open().runs).collect();
    let mut tasks = Vec::new();
    for (i, handle) in handles.iter().enumerate() {
        let (handle, id, run) = (handle.clone(), s.id.clone(), new_run("", RunStatus::Queued));
        tasks.push(tokio::spawn(async move {
            let fired = handle.fire_schedule(&id, tick, &run).await.unwrap();
            (i, fired, run.run_id)
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let winners: Vec<_> = results.iter().filter(|(_, fired, _)| *fired).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let won = winners[0].2;
    for (_, fired, run_id) in &results {
        let stored = store.load_run(*run_id).await.unwrap();
        match fired {
            true => {
                let stored = stored.expect("the winner's run is recorded");
                assert_eq!((stored.status, stored.fencing, stored.owner.as_deref()), (RunStatus::Queued, 0, None));
                assert_eq!(parsed(stored.inputs.as_deref()), Some(json!({"topic": "invoices", "limit": 3})));
            }
            false => assert!(stored.is_none(), "a losing caller recorded its run {run_id}"),
        }
    }
    let (got, fires) = store.load_schedule("acme", &s.id, 10).await.unwrap().unwrap();
    assert_eq!((got.last_tick, got.last_run), (Some(tick), Some(won)));
    assert_eq!(fires.iter().map(|f| (f.tick, f.run_id)).collect::<Vec<_>>(), [(tick, Some(won))]);

    // The same tick again, or an earlier one: nothing.
    for again in [tick, at(0)] {
        let run = new_run("", RunStatus::Queued);
        assert!(!store.fire_schedule(&s.id, again, &run).await.unwrap(), "{again}");
        assert!(store.load_run(run.run_id).await.unwrap().is_none());
    }
    // A later tick fires; the fires list newest first.
    let later = new_run("", RunStatus::Queued);
    assert!(handles[1].fire_schedule(&s.id, at(120_000), &later).await.unwrap());
    let (got, fires) = store.load_schedule("acme", &s.id, 10).await.unwrap().unwrap();
    assert_eq!((got.last_tick, got.last_run), (Some(at(120_000)), Some(later.run_id)));
    assert_eq!(fires.iter().map(|f| f.tick).collect::<Vec<_>>(), [at(120_000), tick]);
    assert!(fires.iter().all(|f| (Utc::now() - f.fired_at).num_seconds().abs() < 60), "{fires:?}");
    let (_, one) = store.load_schedule("acme", &s.id, 1).await.unwrap().unwrap();
    assert_eq!(one.len(), 1);

    // A tick skipped (too late to fire): once, no run; the last run stays; it then never fires.
    let skips: Vec<_> = handles.iter().map(|h| h.skip_schedule_tick(&s.id, at(150_000))).collect();
    let skipped: Vec<bool> = futures::future::join_all(skips).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(skipped.iter().filter(|s| **s).count(), 1, "{skipped:?}");
    assert!(!store.skip_schedule_tick(&s.id, at(90_000)).await.unwrap(), "an earlier tick was skipped");
    let run = new_run("", RunStatus::Queued);
    assert!(!store.fire_schedule(&s.id, at(150_000), &run).await.unwrap(), "a skipped tick fired");
    let (got, fires) = store.load_schedule("acme", &s.id, 10).await.unwrap().unwrap();
    assert_eq!((got.last_tick, got.last_run), (Some(at(150_000)), Some(later.run_id)));
    let listed: Vec<_> = fires.iter().map(|f| (f.tick, f.run_id)).collect();
    assert_eq!(listed, [(at(150_000), None), (at(120_000), Some(later.run_id)), (tick, Some(won))]);

    // Only queued runs fire; a deleted schedule fires nothing, its fires gone, its runs kept.
    assert!(store.fire_schedule(&s.id, at(180_000), &new_run("x", RunStatus::Running)).await.is_err());
    assert!(store.delete_schedule("acme", &s.id).await.unwrap());
    let run = new_run("", RunStatus::Queued);
    assert!(!store.fire_schedule(&s.id, at(240_000), &run).await.unwrap());
    assert!(store.load_run(run.run_id).await.unwrap().is_none());
    assert!(store.load_run(later.run_id).await.unwrap().is_some());
    let again = NewSchedule { id: s.id.clone(), ..schedule("acme", FLOW) };
    store.create_schedule(&again).await.unwrap();
    let (_, fires) = store.load_schedule("acme", &s.id, 10).await.unwrap().unwrap();
    assert!(fires.is_empty(), "a deleted schedule's fires outlived it: {fires:?}");
}

/// Webhook events: queued due at once; concurrent claims from several handles never share an
/// event; a claimed event is not claimed again until settled or its lease lapses (then with the
/// next attempt number); settled with a time it waits until then; settled with none it is gone.
/// Each tenant claims only its own.
pub async fn webhook_events_are_claimed_once_retried_and_settled(db: Database) {
    let store = db.open().runs;
    let event = |n: u32, tenant: &str| NewWebhook {
        id: format!("evt-{n}"),
        tenant: tenant.into(),
        event: "run.finished".into(),
        body: json!({"n": n}).to_string(),
    };
    for n in 0..5 {
        store.queue_webhook(&event(n, "acme")).await.unwrap();
    }
    store.queue_webhook(&event(9, "globex")).await.unwrap();
    store.queue_webhook(&event(0, "acme")).await.unwrap(); // queued twice: kept once

    let (a, b) = (db.open().runs, db.open().runs);
    let (got_a, got_b) = tokio::join!(a.claim_webhooks("acme", 3, LONG), b.claim_webhooks("acme", 3, LONG));
    let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
    let mut ids: Vec<&str> = got_a.iter().chain(&got_b).map(|w| w.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["evt-0", "evt-1", "evt-2", "evt-3", "evt-4"], "{got_a:?} {got_b:?}");
    assert!(got_a.iter().chain(&got_b).all(|w| w.attempts == 1 && w.event == "run.finished"));
    let evt1 = got_a.iter().chain(&got_b).find(|w| w.id == "evt-1").unwrap();
    assert_eq!(parse(&evt1.body), json!({"n": 1}));
    assert!(store.claim_webhooks("acme", 10, LONG).await.unwrap().is_empty(), "claimed twice");

    // Settled: gone; to retry later: not due before then; to retry now: claimed, attempt 2.
    store.settle_webhook("evt-0", None).await.unwrap();
    store.settle_webhook("evt-1", Some(Utc::now() + chrono::TimeDelta::seconds(3600))).await.unwrap();
    store.settle_webhook("evt-2", Some(Utc::now() - chrono::TimeDelta::seconds(1))).await.unwrap();
    let again = store.claim_webhooks("acme", 10, SHORT).await.unwrap();
    assert_eq!(again.iter().map(|w| (w.id.as_str(), w.attempts)).collect::<Vec<_>>(), [("evt-2", 2)]);
    // A lapsed claim (its claimer stopped) is claimed again.
    short_leases_lapse().await;
    let lapsed = store.claim_webhooks("acme", 10, LONG).await.unwrap();
    assert_eq!(lapsed.iter().map(|w| (w.id.as_str(), w.attempts)).collect::<Vec<_>>(), [("evt-2", 3)]);

    let theirs = store.claim_webhooks("globex", 10, LONG).await.unwrap();
    assert_eq!(theirs.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), ["evt-9"]);
    assert!(store.claim_webhooks("initech", 10, LONG).await.unwrap().is_empty());
}

// ----------------------------------------------------------------------------------------------
// Memories.

fn memory(id: &str, scope: &str, created_ms: i64) -> MemoryRow {
    MemoryRow {
        id: id.to_string(),
        content: format!("remembered {id}"),
        scope: scope.to_string(),
        categories: vec!["billing".into()],
        metadata: json!({"id": id}),
        importance: 0.5,
        created_at: at(created_ms),
        last_accessed: at(created_ms),
        source: None,
        model: "model-3".into(),
        embedding: vec![0.25, -1.5, 3.0],
    }
}

fn memory_ids(rows: &[MemoryRow]) -> Vec<&str> {
    rows.iter().map(|m| m.id.as_str()).collect()
}

fn sorted(mut ids: Vec<&str>) -> Vec<&str> {
    ids.sort_unstable();
    ids
}

/// Every field of a memory reads back as written, from any handle: text, scope, categories,
/// metadata, importance, times, source, model and the exact embedding (left empty when the
/// query does not ask for it); newest first.
pub async fn memories_round_trip(db: Database) {
    let memories = db.open().memories;
    let full = MemoryRow {
        content: "The vendor «ACME» bills net-30; ☕ \"quotes\" and\nnew lines".into(),
        categories: vec!["billing".into(), "vendors and terms".into(), "".into()],
        metadata: json!({"nested": {"x": [1, 2.5, null]}, "é": "ü", "n": u64::MAX}),
        importance: 0.875,
        last_accessed: at(5_000),
        source: Some("hitl".into()),
        model: "embed-v1".into(),
        embedding: vec![0.1, -2.5, f32::MIN_POSITIVE, 1.0e30, -0.0, f32::MAX],
        ..memory("m-full", "/flow/invoice/lessons", 2_000)
    };
    let plain = MemoryRow { categories: vec![], metadata: json!({}), importance: 0.0, ..memory("m-plain", "/", 1_000) };
    memories.insert_memories(&[plain.clone(), full.clone()]).await.unwrap();

    let all = MemoryQuery { with_embeddings: true, ..MemoryQuery::default() };
    let got = db.open().memories.query_memories(&all).await.unwrap();
    assert_eq!(got, [full.clone(), plain.clone()], "every field, newest first");
    assert_eq!(got[0].embedding[4].to_bits(), (-0.0f32).to_bits(), "bit-exact embeddings");

    let without = memories.query_memories(&MemoryQuery::default()).await.unwrap();
    assert_eq!(without, [MemoryRow { embedding: vec![], ..full }, MemoryRow { embedding: vec![], ..plain }]);
}

/// Queries filter by scope (the scope and everything under it, never a sibling that shares
/// its first letters), source, model, ids and age; every condition must hold; rows come
/// newest first (ties by id, descending), with limit and offset; `unordered` returns the same rows.
pub async fn memory_queries_filter_by_scope_source_model_ids_and_age(db: Database) {
    let memories = db.open().memories;
    let rows = [
        MemoryRow { source: Some("hitl".into()), ..memory("m1", "/a", 1_000) },
        memory("m2", "/a/b", 2_000),
        MemoryRow { model: "model-9".into(), ..memory("m3", "/a/b/c", 3_000) },
        MemoryRow { source: Some("hitl".into()), ..memory("m4", "/ab", 4_000) },
        memory("m5", "/a0", 5_000),
        MemoryRow { source: Some("hitl".into()), ..memory("m6", "/b", 6_000) },
        memory("m7", "/a/b", 6_000),
    ];
    memories.insert_memories(&rows).await.unwrap();
    let query = |q: MemoryQuery| {
        let memories = memories.clone();
        async move { memories.query_memories(&q).await.unwrap() }
    };
    let scoped = |scope: &str| MemoryQuery { scope_prefix: Some(scope.into()), ..MemoryQuery::default() };

    assert_eq!(memory_ids(&query(MemoryQuery::default()).await), ["m7", "m6", "m5", "m4", "m3", "m2", "m1"]);
    assert_eq!(memory_ids(&query(scoped("/")).await).len(), 7, "`/` is every scope");
    assert_eq!(memory_ids(&query(scoped("/a")).await), ["m7", "m3", "m2", "m1"], "not /ab, not /a0");
    assert_eq!(memory_ids(&query(scoped("/a/")).await), ["m7", "m3", "m2", "m1"]);
    assert_eq!(memory_ids(&query(scoped("/a/b")).await), ["m7", "m3", "m2"]);
    assert!(query(scoped("/a/b/c/d")).await.is_empty());
    assert!(query(scoped("/nowhere")).await.is_empty());

    let hitl = MemoryQuery { source: Some("hitl".into()), ..MemoryQuery::default() };
    assert_eq!(memory_ids(&query(hitl.clone()).await), ["m6", "m4", "m1"]);
    assert_eq!(memory_ids(&query(MemoryQuery { scope_prefix: Some("/a".into()), ..hitl }).await), ["m1"]);
    let model = MemoryQuery { model: Some("model-9".into()), ..MemoryQuery::default() };
    assert_eq!(memory_ids(&query(model).await), ["m3"]);
    let by_id = MemoryQuery { ids: vec!["m2".into(), "m5".into(), "m-none".into()], ..MemoryQuery::default() };
    assert_eq!(memory_ids(&query(by_id).await), ["m5", "m2"]);
    let old = MemoryQuery { older_than: Some(at(3_000)), ..MemoryQuery::default() };
    assert_eq!(memory_ids(&query(old).await), ["m2", "m1"], "strictly older");

    let page = MemoryQuery { limit: Some(2), offset: 1, ..MemoryQuery::default() };
    assert_eq!(memory_ids(&query(page).await), ["m6", "m5"]);
    let past_the_end = MemoryQuery { limit: Some(5), offset: 6, ..MemoryQuery::default() };
    assert_eq!(memory_ids(&query(past_the_end).await), ["m1"]);
    let unordered = MemoryQuery { unordered: true, ..scoped("/a") };
    assert_eq!(sorted(memory_ids(&query(unordered).await)), ["m1", "m2", "m3", "m7"]);
}

/// `memory_models` counts the matching memories per model and vector length, most first,
/// ignoring limit and offset.
pub async fn memory_models_are_counted_by_model_and_dimensions(db: Database) {
    let memories = db.open().memories;
    let two_dims = |m: MemoryRow| MemoryRow { model: "small".into(), embedding: vec![1.0, 2.0], ..m };
    memories
        .insert_memories(&[
            memory("m1", "/a", 1),
            memory("m2", "/a/x", 2),
            memory("m3", "/a", 3),
            two_dims(memory("m4", "/a", 4)),
            memory("m5", "/b", 5),
        ])
        .await
        .unwrap();
    let expected = [
        ModelCount { model: "model-3".into(), dimensions: 3, count: 3 },
        ModelCount { model: "small".into(), dimensions: 2, count: 1 },
    ];
    let scope_a = MemoryQuery { scope_prefix: Some("/a".into()), limit: Some(1), offset: 3, ..MemoryQuery::default() };
    assert_eq!(memories.memory_models(&scope_a).await.unwrap(), expected);
    let everything = memories.memory_models(&MemoryQuery::default()).await.unwrap();
    assert_eq!(everything[0], ModelCount { model: "model-3".into(), dimensions: 3, count: 4 });
    let nowhere = MemoryQuery { scope_prefix: Some("/c".into()), ..MemoryQuery::default() };
    assert!(memories.memory_models(&nowhere).await.unwrap().is_empty());
}

/// `delete_memories` removes exactly what the query matches (ignoring limit and offset) and
/// says how many; `touch_memories` sets the last access time of the given ids only.
pub async fn memories_are_deleted_and_touched(db: Database) {
    let memories = db.open().memories;
    let rows: Vec<MemoryRow> =
        [("m1", "/a"), ("m2", "/a/b"), ("m3", "/a/b/c"), ("m4", "/ab"), ("m5", "/c"), ("m6", "/c")]
            .iter()
            .enumerate()
            .map(|(i, (id, scope))| memory(id, scope, i as i64 * 1_000))
            .collect();
    memories.insert_memories(&rows).await.unwrap();
    let remaining = || {
        let memories = memories.clone();
        async move {
            let mut ids: Vec<String> =
                memories.query_memories(&MemoryQuery::default()).await.unwrap().into_iter().map(|m| m.id).collect();
            ids.sort();
            ids
        }
    };

    let touched_at = at(99_000);
    memories.touch_memories(&["m1".into(), "m5".into(), "m-none".into()], touched_at).await.unwrap();
    let after_touch = memories.query_memories(&MemoryQuery::default()).await.unwrap();
    for m in &after_touch {
        let expected = if m.id == "m1" || m.id == "m5" { touched_at } else { m.created_at };
        assert_eq!(m.last_accessed, expected, "{}", m.id);
    }

    let under_ab =
        MemoryQuery { scope_prefix: Some("/a/b".into()), limit: Some(1), offset: 5, ..MemoryQuery::default() };
    assert_eq!(memories.delete_memories(&under_ab).await.unwrap(), 2, "limit and offset do not apply");
    assert_eq!(remaining().await, ["m1", "m4", "m5", "m6"]);
    let by_id = MemoryQuery { ids: vec!["m5".into(), "m-none".into()], ..MemoryQuery::default() };
    assert_eq!(memories.delete_memories(&by_id).await.unwrap(), 1);
    let nothing = MemoryQuery { scope_prefix: Some("/zzz".into()), ..MemoryQuery::default() };
    assert_eq!(memories.delete_memories(&nothing).await.unwrap(), 0);
    assert_eq!(remaining().await, ["m1", "m4", "m6"]);
    assert_eq!(memories.delete_memories(&MemoryQuery::default()).await.unwrap(), 3, "an empty query is everything");
    assert!(remaining().await.is_empty());
}

/// A batch of memories is one transaction: one bad row (an id already stored) stores none of
/// the batch.
pub async fn a_memory_batch_is_stored_whole_or_not_at_all(db: Database) {
    let memories = db.open().memories;
    memories.insert_memories(&[memory("m1", "/a", 1)]).await.unwrap();
    let batch =
        [memory("m2", "/a", 2), memory("m3", "/a", 3), MemoryRow { content: "dup".into(), ..memory("m1", "/b", 4) }];
    memories.insert_memories(&batch).await.expect_err("an id already stored");
    let rows = memories.query_memories(&MemoryQuery::default()).await.unwrap();
    assert_eq!(memory_ids(&rows), ["m1"], "none of the batch was stored");
    assert_eq!(rows[0].content, "remembered m1");
}

// ----------------------------------------------------------------------------------------------
// Sessions.

/// The messages of turn `turn`: the user's and the reply.
fn exchange(turn: u64) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::User, format!("question {turn}"), turn),
        ChatMessage::new(Role::Assistant, format!("answer {turn}"), turn),
    ]
}

/// The save of turn `turn` (the session then has `turn` turns), its messages at `from`.
fn turn_save(session: &str, turn: u64, from: u64, messages: Vec<ChatMessage>) -> TurnSave {
    let now = Utc::now();
    TurnSave {
        session_id: session.into(),
        flow: FLOW.into(),
        state: json!({"messages": [], "turns": turn + 1, "note": format!("after turn {turn}")}).to_string(),
        state_version: 0,
        expected_turns: turn,
        messages_from: from,
        messages,
        turn: TurnRecord {
            session_id: session.into(),
            index: turn,
            run_id: RunId::new(),
            user_message: format!("question {turn}"),
            reply: format!("answer {turn}"),
            intent: None,
            usage: Default::default(),
            started_at: now,
            finished_at: now,
        },
        trace: None,
    }
}

/// Saves `turns` turns of `session`, each appending its exchange.
async fn converse(sessions: &dyn SessionStore, session: &str, turns: u64) {
    for t in 0..turns {
        sessions.save_turn(&turn_save(session, t, 2 * t, exchange(t))).await.unwrap();
    }
}

fn texts(messages: &[ChatMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.content.as_str()).collect()
}

async fn whole(sessions: &dyn SessionStore, session: &str) -> StoredSession {
    sessions.load_session(FLOW, session).await.unwrap().expect("the session")
}

fn conflict(err: &BoxError) -> &SessionConflict {
    err.downcast_ref::<SessionConflict>().unwrap_or_else(|| panic!("a SessionConflict, not {err:?}"))
}

/// Each turn's messages are appended after the ones before, in order, with their role and
/// turn; the session is read whole or by its last messages, which say where they start.
pub async fn session_messages_are_appended_in_order_and_read_by_their_end(db: Database) {
    let sessions = db.open().sessions;
    converse(&*sessions, "s", 3).await;
    let stored = whole(&*sessions, "s").await;
    assert_eq!(stored.messages, [exchange(0), exchange(1), exchange(2)].concat());
    assert_eq!((stored.messages_from, stored.message_count, stored.turns), (0, 6, 3));
    assert_eq!(parse(&stored.state)["note"], "after turn 2", "the state is the last turn's");

    let tail = sessions.load_session_tail(FLOW, "s", 3).await.unwrap().unwrap();
    assert_eq!(texts(&tail.messages), ["answer 1", "question 2", "answer 2"]);
    assert_eq!((tail.messages_from, tail.message_count, tail.turns), (3, 6, 3));
    assert_eq!(tail.state, stored.state);
    let longer = sessions.load_session_tail(FLOW, "s", 100).await.unwrap().unwrap();
    assert_eq!((longer.messages, longer.messages_from), (stored.messages.clone(), 0), "all there are");
    let none = sessions.load_session_tail(FLOW, "s", 0).await.unwrap().unwrap();
    assert_eq!((none.messages.len(), none.messages_from, none.message_count), (0, 6, 6));
    assert!(sessions.load_session_tail(FLOW, "unknown", 3).await.unwrap().is_none());

    // Another session's transcript is its own.
    converse(&*sessions, "t", 1).await;
    assert_eq!(whole(&*sessions, "t").await.messages, exchange(0));
    assert_eq!(whole(&*sessions, "s").await.message_count, 6);
}

/// A save may replace the transcript from a message on (a turn that changed messages it had
/// loaded): what follows is replaced, what comes before stays. A save whose messages would
/// start past the end of the transcript is refused, naming the gap, and changes nothing.
pub async fn a_save_rewrites_the_transcript_from_a_loaded_message_and_never_leaves_a_gap(db: Database) {
    let sessions = db.open().sessions;
    converse(&*sessions, "s", 3).await;
    let edited = vec![ChatMessage::new(Role::Assistant, "answer 1, corrected", 1)];
    sessions.save_turn(&turn_save("s", 3, 3, edited)).await.unwrap();
    let stored = whole(&*sessions, "s").await;
    assert_eq!(texts(&stored.messages), ["question 0", "answer 0", "question 1", "answer 1, corrected"]);
    assert_eq!((stored.message_count, stored.turns), (4, 4));

    let err = sessions.save_turn(&turn_save("s", 4, 9, exchange(4))).await.unwrap_err();
    let gap = err.downcast_ref::<StoreError>().unwrap_or_else(|| panic!("a StoreError, not {err:?}"));
    assert!(matches!(gap, StoreError::MessageGap { from: 9, count: 4, .. }), "{gap:?}");
    assert!(gap.to_string().contains("start at index 9") && gap.to_string().contains("holds 4"), "{gap}");
    assert_eq!(whole(&*sessions, "s").await.messages, stored.messages, "the refused save changed nothing");
    assert_eq!(whole(&*sessions, "s").await.turns, 4);
    let err = sessions.save_turn(&turn_save("new", 0, 2, exchange(0))).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<StoreError>(), Some(StoreError::MessageGap { from: 2, count: 0, .. })));
    assert!(sessions.load_session(FLOW, "new").await.unwrap().is_none(), "no session was created");
}

/// Two processes save the same turn of a session at once (no session lock between them):
/// one is saved, the other refused with a conflict, and none of its messages is in the
/// transcript. The same for the first turn of a new session.
pub async fn of_two_concurrent_turns_of_a_session_one_is_saved_and_the_other_refused_whole(db: Database) {
    let sessions = db.open().sessions;
    converse(&*sessions, "s", 2).await;
    for (session, turn) in [("s", 2), ("fresh", 0)] {
        let (a, b) = (Process::start(&db), Process::start(&db));
        let save = |tag: &str| {
            let mut save = turn_save(session, turn, 2 * turn, exchange(turn));
            save.messages[1].content = format!("answer from {tag}");
            save
        };
        let (save_a, save_b) = (save("a"), save("b"));
        let (first, second) = tokio::join!(
            a.run(move |h| async move { h.sessions.save_turn(&save_a).await.map_err(|e| e.to_string()) }),
            b.run(move |h| async move { h.sessions.save_turn(&save_b).await.map_err(|e| e.to_string()) }),
        );
        let winner = match (&first, &second) {
            (Ok(()), Err(e)) | (Err(e), Ok(())) => {
                assert!(e.contains("changed while this turn ran") || e.contains("was deleted"), "{e}");
                if first.is_ok() { "answer from a" } else { "answer from b" }
            }
            other => panic!("exactly one save wins: {other:?}"),
        };
        let stored = whole(&*sessions, session).await;
        assert_eq!(stored.turns, turn + 1);
        assert_eq!(stored.message_count, 2 * turn + 2);
        assert_eq!(stored.messages.last().map(|m| m.content.as_str()), Some(winner));
        let answers = stored.messages.iter().filter(|m| m.content.starts_with("answer from")).count();
        assert_eq!(answers, 1, "the refused turn appended nothing: {:?}", texts(&stored.messages));
    }
}

/// Deleting a session deletes its messages: a save continuing it is refused, and a new session
/// under the same id starts from an empty transcript.
pub async fn deleting_a_session_deletes_its_messages(db: Database) {
    let sessions = db.open().sessions;
    converse(&*sessions, "s", 3).await;
    assert!(sessions.delete_session(FLOW, "s").await.unwrap());
    assert!(sessions.load_session(FLOW, "s").await.unwrap().is_none());
    let err = sessions.save_turn(&turn_save("s", 3, 6, exchange(3))).await.unwrap_err();
    assert_eq!((conflict(&err).expected, conflict(&err).found), (3, 0));
    assert!(err.to_string().contains("was deleted"), "{err}");

    sessions.save_turn(&turn_save("s", 0, 0, exchange(7))).await.unwrap();
    let stored = whole(&*sessions, "s").await;
    assert_eq!(stored.messages, exchange(7), "nothing of the deleted transcript is left");
    assert_eq!((stored.message_count, stored.turns), (2, 1));
    assert_eq!(sessions.load_session_tail(FLOW, "s", 10).await.unwrap().unwrap().messages, exchange(7));
    assert!(!sessions.delete_session(FLOW, "never").await.unwrap());
}
