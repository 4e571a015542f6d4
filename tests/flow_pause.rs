//! Pausing for feedback and resuming (reference cases H: C79–C85) and the pause weaknesses of
//! the reference (§0 items 12, 13, 14). Every run here is kept in a real SQLite file; pauses
//! across processes and on PostgreSQL are in `store_pause.rs`.
//!
//! Adaptations (docs/human_feedback.md): kickoff returns the run with [`Run::paused`] set
//! instead of an exception object; a flow whose provider pauses must have a store (a build
//! error otherwise, rather than a database file created behind the user's back); C87
//! (declarative flows) waits for the YAML issue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use crewflow::FeedbackError;
use std::sync::Arc;
use std::time::Duration;

use common::Log;
use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStatus, RunStore, SqliteStore};
use crewflow::{DeferredFeedback, Error, FeedbackResult, HumanFeedback, RunId};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default, Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Counter {
    counter: u32,
    notes: Vec<String>,
}

fn sqlite() -> (tempfile::TempDir, Arc<dyn RunStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn RunStore> = Arc::new(SqliteStore::open(dir.path().join("runs.db")));
    (dir, store)
}

/// `generate` (sets the counter to 42) asks for feedback through a pausing provider; with
/// `downstream`, a listener formats what it receives.
fn generate_flow(store: Arc<dyn RunStore>, downstream: bool) -> Flow<Counter> {
    let mut b = FlowBuilder::<Counter>::new("pausing")
        .start("generate", |cx: Cx<Counter>, (): ()| async move {
            cx.update(|c| c.counter = 42);
            Ok("generated content")
        })
        .human_feedback(HumanFeedback::new("Looks right?").metadata(json!({"ticket": 7})).provider(DeferredFeedback));
    if downstream {
        b = b.listen("downstream", step("generate"), |_cx, review: FeedbackResult| async move {
            Ok(format!("downstream:{}", review.output_as::<String>()?))
        });
    }
    b.store(store).build().unwrap()
}

/// C79: the pausing provider makes kickoff return a paused run (not an error): its request
/// names the run and the step, and the store lists the run as paused.
#[tokio::test]
async fn c79_a_pausing_provider_pauses_the_run() {
    let (_dir, store) = sqlite();
    let flow = generate_flow(store.clone(), false);
    let run = flow.kickoff(()).await.unwrap();
    let paused = run.paused().expect("paused");
    assert_eq!(paused.run_id, run.id);
    assert_eq!(paused.request.step, "generate");
    assert_eq!(paused.request.output, json!("generated content"));
    assert_eq!(paused.request.metadata, Some(json!({"ticket": 7})));
    assert!(!run.is_finished());
    let err = run.output::<String>().unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::Paused { .. }))
            && err.to_string().contains("resume_with_feedback"),
        "{err}"
    );

    let listed = store.list_runs(&RunFilter { status: Some(RunStatus::Paused), ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.run_id).collect::<Vec<_>>(), [run.id]);
    assert_eq!(flow.pending_feedback(run.id).await.unwrap().unwrap().request, paused.request);
}

/// C81 + C83: resuming restores the state (counter 42); without `emit` the result is the
/// feedback result; the pending request is gone and the run is finished.
#[tokio::test]
async fn c81_c83_resume_restores_state_and_returns_the_feedback_result() {
    let (_dir, store) = sqlite();
    let flow = generate_flow(store.clone(), false);
    let id = flow.kickoff(()).await.unwrap().id;

    // Another flow value, as another process would build it.
    let again = generate_flow(store.clone(), false);
    let run = again.resume_with_feedback(id, "looks good!").await.unwrap();
    assert_eq!(run.state.counter, 42);
    let result = run.output::<FeedbackResult>().unwrap();
    assert_eq!(
        (result.output.clone(), result.feedback.as_str(), result.outcome.clone()),
        (json!("generated content"), "looks good!", None)
    );
    assert_eq!(result.metadata, Some(json!({"ticket": 7})));
    assert_eq!(run.step_names(), ["generate"]);
    assert_eq!(run.feedback_history(), [result]);
    assert!(again.pending_feedback(id).await.unwrap().is_none());
    assert_eq!(store.load_run(id).await.unwrap().unwrap().status, RunStatus::Finished);
}

/// C83: a downstream listener receives the feedback result, recorded as generate's output
/// first.
#[tokio::test]
async fn c83_downstream_listeners_receive_the_feedback_result() {
    let (_dir, store) = sqlite();
    let flow = generate_flow(store, true);
    let id = flow.kickoff(()).await.unwrap().id;
    let run = flow.resume_with_feedback(id, "fine").await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "downstream:generated content");
    assert_eq!(run.step_names(), ["generate", "downstream"]);
    let first: FeedbackResult = run.output_of("generate").unwrap().unwrap();
    assert_eq!(first.feedback, "fine");
}

/// C85: a resume is one lifecycle: one resumed event and one finished event.
#[tokio::test]
async fn c85_a_resume_emits_one_matched_lifecycle_pair() {
    let (_dir, store) = sqlite();
    let log = Log::default();
    let observer = {
        let log = log.clone();
        move |e: &Event| log.push(e.kind.name())
    };
    let flow = FlowBuilder::<Counter>::new("pausing")
        .start("generate", |_cx, (): ()| async move { Ok("generated content") })
        .human_feedback(HumanFeedback::new("Looks right?").provider(DeferredFeedback))
        .store(store)
        .observe(observer)
        .build()
        .unwrap();
    let id = flow.kickoff(()).await.unwrap().id;
    assert_eq!(log.count("run_paused"), 1);
    assert_eq!(log.count("run_finished"), 0, "a pause is not an end");
    flow.resume_with_feedback(id, "ok").await.unwrap();
    assert_eq!((log.count("run_resumed"), log.count("run_finished")), (1, 1), "{:?}", log.entries());
    assert_eq!(log.count("feedback_requested"), 1);
    assert_eq!(log.count("feedback_received"), 1);
}

/// Weakness 12: the same flow value that paused a run resumes it (no special constructor).
#[tokio::test]
async fn weakness_12_the_same_flow_resumes_its_paused_run() {
    let (_dir, store) = sqlite();
    let flow = generate_flow(store, true);
    let paused = flow.kickoff(()).await.unwrap();
    let run = flow.resume_with_feedback(paused.id, "same instance").await.unwrap();
    assert!(run.is_finished());
    assert_eq!(run.last_feedback().unwrap().feedback, "same instance");
}

/// Weakness 13: a pause keeps everything: a sibling branch in flight completes before the run
/// pauses (once), its state and the and-join's progress are kept, so the join fires after the
/// resume; the feedback history survives too.
#[tokio::test]
async fn weakness_13_a_pause_keeps_siblings_joins_and_history() {
    let (_dir, store) = sqlite();
    let log = Log::default();
    let build = |log: Log| {
        let (l1, l2, l3) = (log.clone(), log.clone(), log);
        FlowBuilder::<Counter>::new("join")
            .start("split", move |_cx, (): ()| {
                let log = l1.clone();
                async move {
                    log.push("split");
                    Ok(())
                }
            })
            .listen("review", step("split"), |_cx, (): ()| async move { Ok("needs a look") })
            .human_feedback(HumanFeedback::new("ok?").provider(DeferredFeedback))
            .listen("slow", step("split"), move |cx: Cx<Counter>, (): ()| {
                let log = l2.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    cx.update(|c| c.notes.push("slow done".into()));
                    log.push("slow");
                    Ok(())
                }
            })
            .listen("join", and([step("review"), step("slow")]), move |cx: Cx<Counter>, (): ()| {
                let log = l3.clone();
                async move {
                    log.push("join");
                    Ok(cx.state(|c| c.notes.clone()))
                }
            })
            .store(store.clone())
            .build()
            .unwrap()
    };
    let flow = build(log.clone());
    let paused = flow.kickoff(()).await.unwrap();
    assert!(paused.paused().is_some());
    assert_eq!(log.entries(), ["split", "slow"], "the sibling finished before the pause");
    assert_eq!(paused.state.notes, ["slow done"]);

    let flow = build(log.clone());
    let run = flow.resume_with_feedback(paused.id, "fine").await.unwrap();
    assert_eq!(run.output::<Vec<String>>().unwrap(), ["slow done"]);
    assert_eq!(log.entries(), ["split", "slow", "join"], "nothing ran twice; the join fired");
    assert_eq!(run.feedback_history().len(), 1);
}

fn outcome_flow(
    store: Arc<dyn RunStore>,
    provider: Option<Arc<dyn crewflow::FeedbackProvider>>,
    log: Log,
) -> Flow<Counter> {
    let mut review = HumanFeedback::new("Approve?").emit(["approved", "rejected"]);
    if let Some(p) = provider {
        review = review.provider(p);
    } else {
        review = review.provider(DeferredFeedback);
    }
    let (l1, l2, l3) = (log.clone(), log.clone(), log);
    FlowBuilder::<Counter>::new("outcomes")
        .start("draft", |_cx, (): ()| async move { Ok("text") })
        .human_feedback(review)
        .listen("on_name", step("draft"), move |_cx, r: FeedbackResult| {
            let log = l1.clone();
            async move {
                log.push(format!("on_name:{}", r.outcome.unwrap_or_default()));
                Ok(())
            }
        })
        .listen("on_approved", label("approved"), move |_cx, r: FeedbackResult| {
            let log = l2.clone();
            async move {
                log.push(format!("on_approved:{}", r.feedback));
                Ok(())
            }
        })
        .start_on("gated", label("approved"), move |_cx, (): ()| {
            let log = l3.clone();
            async move {
                log.push("gated");
                Ok(())
            }
        })
        .store(store)
        .build()
        .unwrap()
}

/// Weakness 14: resuming dispatches exactly like a live answer: listeners of the step's name
/// and of the outcome both run, with the same payload, and conditional starts gated on the
/// outcome fire.
#[tokio::test]
async fn weakness_14_resume_dispatches_like_a_live_answer() {
    let (_dir, store) = sqlite();
    let live_log = Log::default();
    let answer: Arc<dyn crewflow::FeedbackProvider> =
        Arc::new(|_: &crewflow::FeedbackRequest| async { Ok(crewflow::FeedbackReply::Answer("Approved".into())) });
    outcome_flow(store.clone(), Some(answer), live_log.clone()).kickoff(()).await.unwrap();

    let resumed_log = Log::default();
    let flow = outcome_flow(store, None, resumed_log.clone());
    let id = flow.kickoff(()).await.unwrap().id;
    flow.resume_with_feedback(id, "Approved").await.unwrap();

    let mut live = live_log.entries();
    let mut resumed = resumed_log.entries();
    live.sort();
    resumed.sort();
    assert_eq!(live, ["gated", "on_approved:Approved", "on_name:approved"]);
    assert_eq!(resumed, live);
}

/// An answer matching no outcome is refused and the run stays paused; a good answer then
/// continues it. Feedback for a run that is not paused is refused; a plain resume of a paused
/// run changes nothing.
#[tokio::test]
async fn bad_answers_and_wrong_runs_lose_nothing() {
    let (_dir, store) = sqlite();
    let flow = outcome_flow(store.clone(), None, Log::default());
    let id = flow.kickoff(()).await.unwrap().id;

    let err = flow.resume_with_feedback(id, "no idea").await.unwrap_err();
    assert!(matches!(err, Error::Feedback(FeedbackError::UnmatchedFeedback { .. })), "{err}");
    assert!(err.to_string().contains("\"approved\", \"rejected\""), "{err}");
    assert_eq!(store.load_run(id).await.unwrap().unwrap().status, RunStatus::Paused);

    let still = flow.resume(id).await.unwrap();
    assert!(still.paused().is_some(), "a resume without an answer leaves it waiting");

    let run = flow.resume_with_feedback(id, "rejected").await.unwrap();
    assert!(run.is_finished());
    let err = flow.resume_with_feedback(id, "approved").await.unwrap_err();
    assert!(
        matches!(err, Error::Feedback(FeedbackError::NotPaused { .. })) && err.to_string().contains("finished"),
        "{err}"
    );
}

/// A review loop pauses at every round; two reviews in parallel pause the run once, and the
/// answers are taken oldest first.
#[tokio::test]
async fn loops_and_parallel_reviews_pause_again_until_done() {
    let (_dir, store) = sqlite();
    let flow = FlowBuilder::<Counter>::new("loop")
        .start("write", |_cx, (): ()| async move { Ok("v1") })
        .listen("review", or([step("write"), label("revise")]), |cx: Cx<Counter>, (): ()| async move {
            Ok(format!(
                "draft {}",
                cx.update(|c| {
                    c.counter += 1;
                    c.counter
                })
            ))
        })
        .human_feedback(HumanFeedback::new("Publish?").emit(["revise", "approved"]).provider(DeferredFeedback))
        .listen("publish", label("approved"), |_cx, r: FeedbackResult| async move { Ok(r.output) })
        .store(store.clone())
        .build()
        .unwrap();
    let mut run = flow.kickoff(()).await.unwrap();
    for round in 1..=3 {
        let paused = run.paused().expect("paused for review");
        assert_eq!(paused.request.output, json!(format!("draft {round}")));
        run = flow.resume_with_feedback(run.id, if round < 3 { "revise" } else { "approved" }).await.unwrap();
    }
    assert_eq!(run.output::<serde_json::Value>().unwrap(), json!("draft 3"));
    assert_eq!(run.feedback_history().len(), 3);

    let parallel = FlowBuilder::<Counter>::new("two")
        .start("a", |_cx, (): ()| async move { Ok("A") })
        .human_feedback(HumanFeedback::new("A?").provider(DeferredFeedback))
        .start("b", |_cx, (): ()| async move { Ok("B") })
        .human_feedback(HumanFeedback::new("B?").provider(DeferredFeedback))
        .listen("both", and([step("a"), step("b")]), |cx: Cx<Counter>, (): ()| async move {
            Ok(cx.feedback_history().into_iter().map(|f| format!("{}={}", f.step, f.feedback)).collect::<Vec<_>>())
        })
        .store(store)
        .build()
        .unwrap();
    let first = parallel.kickoff(()).await.unwrap();
    assert_eq!(first.paused().unwrap().request.step, "a");
    // With two requests pending, an answer that does not say which is refused, not guessed.
    let err = parallel.resume_with_feedback(first.id, "yes").await.unwrap_err();
    assert!(matches!(err, Error::Feedback(FeedbackError::FeedbackRequestNeeded { .. })), "{err}");
    assert!(err.to_string().contains("resume_with_feedback_for"), "{err}");
    let a = first.paused().unwrap().request.id;
    let second = parallel.resume_with_feedback_for(first.id, a, "yes A").await.unwrap();
    assert_eq!(second.paused().unwrap().request.step, "b");
    // One request left: an unnamed answer is unambiguous.
    let done = parallel.resume_with_feedback(first.id, "yes B").await.unwrap();
    assert_eq!(done.output::<Vec<String>>().unwrap(), ["a=yes A", "b=yes B"]);

    // Answers may come in any order when they name their request.
    let run = parallel.kickoff(()).await.unwrap();
    let pending = parallel.pending_requests(run.id).await.unwrap();
    assert_eq!(pending.iter().map(|r| r.step.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let err = parallel.resume_with_feedback_for(run.id, 999, "?").await.unwrap_err().to_string();
    assert!(err.contains("999") && err.contains("(step `a`)") && err.contains("(step `b`)"), "{err}");
    let after_b = parallel.resume_with_feedback_for(run.id, pending[1].id, "B first").await.unwrap();
    assert_eq!(after_b.paused().unwrap().request.step, "a");
    let done = parallel.resume_with_feedback_for(run.id, pending[0].id, "then A").await.unwrap();
    assert_eq!(done.output::<Vec<String>>().unwrap(), ["b=B first", "a=then A"]);
}

/// A store whose claims of paused runs take a while, so that two answers racing for one pause
/// both read it before either claims it.
struct SlowClaims(Arc<dyn RunStore>);

impl RunStore for SlowClaims {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn create_run<'a>(&'a self, run: &'a crewflow::store::NewRun) -> crewflow::store::StoreFuture<'a, ()> {
        self.0.create_run(run)
    }
    fn save_checkpoint<'a>(&'a self, c: &'a crewflow::store::Checkpoint) -> crewflow::store::StoreFuture<'a, ()> {
        self.0.save_checkpoint(c)
    }
    fn end_run<'a>(&'a self, end: &'a crewflow::store::RunEnd) -> crewflow::store::StoreFuture<'a, ()> {
        self.0.end_run(end)
    }
    fn load_run(&self, id: RunId) -> crewflow::store::StoreFuture<'_, Option<crewflow::store::StoredRun>> {
        self.0.load_run(id)
    }
    fn claim_run<'a>(
        &'a self,
        id: RunId,
        owner: &'a str,
        lease: Duration,
        replacing: Option<&'a str>,
    ) -> crewflow::store::StoreFuture<'a, crewflow::store::Claim> {
        self.0.claim_run(id, owner, lease, replacing)
    }
    fn claim_paused<'a>(
        &'a self,
        id: RunId,
        seq: u64,
        owner: &'a str,
        lease: Duration,
    ) -> crewflow::store::StoreFuture<'a, Option<crewflow::store::Claim>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            self.0.claim_paused(id, seq, owner, lease).await
        })
    }
    fn claim_orphans<'a>(
        &'a self,
        flows: &'a [String],
        owner: &'a str,
        lease: Duration,
        limit: usize,
    ) -> crewflow::store::StoreFuture<'a, Vec<crewflow::store::Claim>> {
        self.0.claim_orphans(flows, owner, lease, limit)
    }
    fn heartbeat<'a>(
        &'a self,
        owner: &'a str,
        runs: &'a [crewflow::RunId],
        lease: Duration,
    ) -> crewflow::store::StoreFuture<'a, u64> {
        self.0.heartbeat(owner, runs, lease)
    }
    fn list_runs<'a>(
        &'a self,
        filter: &'a RunFilter,
    ) -> crewflow::store::StoreFuture<'a, Vec<crewflow::store::RunSummary>> {
        self.0.list_runs(filter)
    }
}

/// Two answers to one pause at once (a double click, a webhook delivered twice): exactly one
/// continues the run; the other is told the run was already resumed; nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_answers_to_one_pause_continue_it_once() {
    let (_dir, store) = sqlite();
    let log = Log::default();
    let flow = outcome_flow(Arc::new(SlowClaims(store)), None, log.clone());
    for _ in 0..3 {
        let id = flow.kickoff(()).await.unwrap().id;
        let (f1, f2) = (flow.clone(), flow.clone());
        let a = tokio::spawn(async move { f1.resume_with_feedback(id, "approved").await });
        let b = tokio::spawn(async move { f2.resume_with_feedback(id, "approved").await });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let oks = [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count();
        assert_eq!(oks, 1, "{a:?} / {b:?}");
        let err = a.err().or(b.err()).unwrap();
        assert!(err.to_string().contains("already resumed by another answer"), "{err}");
    }
    assert_eq!(log.count("on_approved:approved"), 3);
}

/// `inspect` reads a run as it stands and never runs or claims it: a paused run stays paused
/// (same fencing token), a failed one is not run again.
#[tokio::test]
async fn inspect_reads_without_running_or_claiming() {
    let (_dir, store) = sqlite();
    let flow = generate_flow(store.clone(), true);
    let paused = flow.kickoff(()).await.unwrap();
    let before = store.load_run(paused.id).await.unwrap().unwrap();
    let seen = flow.inspect(paused.id).await.unwrap();
    assert_eq!(seen.paused().unwrap().request.step, "generate");
    assert_eq!(seen.state.counter, 42);
    let after = store.load_run(paused.id).await.unwrap().unwrap();
    assert_eq!((after.status, after.fencing), (RunStatus::Paused, before.fencing));

    let log = Log::default();
    let l = log.clone();
    let failing = FlowBuilder::<Counter>::new("failing")
        .start("boom", move |cx: Cx<Counter>, (): ()| {
            let log = l.clone();
            async move {
                log.push("boom");
                cx.update(|c| c.counter = 7);
                Err::<(), _>(StepError::msg("broken"))
            }
        })
        .store(store.clone())
        .build()
        .unwrap();
    failing.kickoff(()).await.unwrap_err();
    let id =
        store.list_runs(&RunFilter { flow: Some("failing".into()), ..Default::default() }).await.unwrap()[0].run_id;
    let seen = failing.inspect(id).await.unwrap();
    assert!(seen.raw_output().is_none());
    assert_eq!(log.count("boom"), 1, "inspecting ran nothing");
    assert_eq!(store.load_run(id).await.unwrap().unwrap().status, RunStatus::Failed);
}

/// What a run asked with `cx.ask` before it paused is kept with it, like its feedback.
#[tokio::test]
async fn questions_asked_before_a_pause_are_kept_with_the_run() {
    let (_dir, store) = sqlite();
    let answers = |_req: &crewflow::InputRequest| async { Ok(Some(crewflow::InputResponse::from("Berlin"))) };
    let flow = FlowBuilder::<Counter>::new("asking")
        .start("where", |cx: Cx<Counter>, (): ()| async move {
            Ok(cx.ask("Which office?", None).await?.text().map(str::to_string))
        })
        .listen("confirm", step("where"), |_cx, office: Option<String>| async move { Ok(office) })
        .human_feedback(HumanFeedback::new("Book it?").provider(DeferredFeedback))
        .input_provider(answers)
        .store(store)
        .build()
        .unwrap();
    let paused = flow.kickoff(()).await.unwrap();
    let run = flow.resume_with_feedback(paused.id, "yes").await.unwrap();
    let asked: Vec<(&str, Option<&str>)> =
        run.inputs().iter().map(|r| (r.message.as_str(), r.response.as_deref())).collect();
    assert_eq!(asked, [("Which office?", Some("Berlin"))]);
}

/// Two reviewers answer two parallel requests at the same moment: both answers land (one may be
/// told to retry while the other is applied, and then lands), none is lost or misapplied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_answers_to_parallel_requests_both_land() {
    let (_dir, store) = sqlite();
    let flow = FlowBuilder::<Counter>::new("two_reviewers")
        .start("a", |_cx, (): ()| async move { Ok("A") })
        .human_feedback(HumanFeedback::new("A?").provider(DeferredFeedback))
        .start("b", |_cx, (): ()| async move { Ok("B") })
        .human_feedback(HumanFeedback::new("B?").provider(DeferredFeedback))
        .listen("both", and([step("a"), step("b")]), |cx: Cx<Counter>, (): ()| async move {
            let mut got: Vec<String> =
                cx.feedback_history().into_iter().map(|f| format!("{}={}", f.step, f.feedback)).collect();
            got.sort();
            Ok(got)
        })
        .store(SlowClaims(store))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    let pending = flow.pending_requests(run.id).await.unwrap();
    let answer = |id: u64, text: &'static str| {
        let flow = flow.clone();
        let run_id = run.id;
        tokio::spawn(async move {
            loop {
                match flow.resume_with_feedback_for(run_id, id, text).await {
                    Err(Error::Feedback(FeedbackError::FeedbackBusy { .. })) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    other => return other,
                }
            }
        })
    };
    let (x, y) = (answer(pending[0].id, "ok A"), answer(pending[1].id, "ok B"));
    let (x, y) = (x.await.unwrap().unwrap(), y.await.unwrap().unwrap());
    let finished = if x.is_finished() { x } else { y };
    assert_eq!(finished.output::<Vec<String>>().unwrap(), ["a=ok A", "b=ok B"]);
}
