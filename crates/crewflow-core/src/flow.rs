//! A built flow and its runs.

use crate::error::{DurableError, FeedbackError};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use crate::cancel::Canceller;
pub use crate::kickoff::Kickoff;
use tokio::task::JoinHandle;

use crate::driver;
use crate::error::Error;
use crate::event::{EventStream, Observer, stream_channel};
use crate::graph::Graph;
use crate::handler::{Handler, Predicate};
use crate::id::RunId;
use crate::persist::{Driving, LoadRun, RunStatus, RunStore, StepOutputs, process_owner};
use crate::run::Run;
use crate::state::FlowState;

pub(crate) struct StepRuntime<S> {
    pub name: Arc<str>,
    pub handler: Handler<S>,
    pub when: Option<Predicate<S>>,
    /// Checkpoint after this step (when any step is marked, only marked steps checkpoint).
    pub persisted: bool,
    /// Asks for human feedback after its body.
    pub feedback: Option<Arc<crate::feedback::HumanFeedback>>,
    /// Runs again after a failure.
    pub retry: Option<crate::retry::Retry>,
}

pub(crate) struct FlowInner<S> {
    pub graph: Graph,
    pub steps: Vec<StepRuntime<S>>,
    pub max_steps: u64,
    pub cancel_grace: std::time::Duration,
    pub observers: Arc<[Arc<dyn Observer>]>,
    pub input: Option<Arc<dyn crate::input::InputProvider>>,
    pub feedback: Option<Arc<dyn crate::feedback::FeedbackProvider>>,
    pub store: Option<Arc<dyn RunStore>>,
    pub lease: std::time::Duration,
    /// Some step is marked `persisted`: only those checkpoint.
    pub selective: bool,
    /// The state type's version and migrations.
    pub versions: crate::versions::StateVersions,
    /// When checkpoints write state deltas (`None`: always whole).
    pub delta_policy: Option<crate::delta::DeltaPolicy>,
}

impl<S> FlowInner<S> {
    /// Whether a checkpoint is written after step `ix` completes.
    pub fn checkpoints_after(&self, ix: u32) -> bool {
        !self.selective || self.steps[ix as usize].persisted
    }
}

/// A flow, ready to run: an immutable definition shared by all its runs.
///
/// Cloning is cheap (an `Arc`); one flow serves any number of concurrent runs, each with its
/// own state.
pub struct Flow<S> {
    inner: Arc<FlowInner<S>>,
}

impl<S> Clone for Flow<S> {
    fn clone(&self) -> Self {
        Flow { inner: self.inner.clone() }
    }
}

impl<S: FlowState> Flow<S> {
    pub(crate) fn from_inner(inner: FlowInner<S>) -> Self {
        Flow { inner: Arc::new(inner) }
    }

    pub(crate) fn inner(&self) -> &Arc<FlowInner<S>> {
        &self.inner
    }

    #[cfg(test)]
    pub(crate) fn inner_for_test(&self) -> Arc<FlowInner<S>> {
        self.inner.clone()
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        self.inner.graph.name()
    }

    /// The validated graph (steps, triggers, routes).
    pub fn graph(&self) -> &Graph {
        &self.inner.graph
    }

    /// Runs the flow to the end and returns the finished run.
    ///
    /// `kickoff` takes inputs (`json!({..})`, a `Map`, `()` for none) or a [`Kickoff`] with
    /// more options. Inputs are merged into the default state; an input the state does not
    /// have is an error, before any step runs.
    pub async fn kickoff(&self, kickoff: impl Into<Kickoff>) -> Result<Run<S>, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime { call: "Flow::kickoff", instead: "Flow::kickoff_blocking" });
        }
        let prepared = driver::prepare(&self.inner, kickoff.into(), None, None)?;
        driver::drive(self.inner.clone(), prepared).await
    }

    /// The store runs of this flow are kept in, if any.
    pub fn store(&self) -> Option<&Arc<dyn RunStore>> {
        self.inner.store.as_ref()
    }

    fn require_store(&self, call: &'static str) -> Result<&Arc<dyn RunStore>, Error> {
        self.inner.store.as_ref().ok_or(Error::Durable(DurableError::NoStore { call }))
    }

    /// Continues a stored run exactly from its last checkpoint.
    ///
    /// Steps that completed do not run again; steps that were in flight when the run stopped
    /// run again (at-least-once); `and` progress, `or` rounds and step counts are restored. A
    /// finished run is not run again: its stored result is returned. An unknown id is an error
    /// (never a new run), and so is a run of another flow, or of a changed definition.
    pub async fn resume(&self, run_id: RunId) -> Result<Run<S>, Error> {
        self.resume_with(run_id, None, Canceller::new(), None).await
    }

    /// [`resume`](Flow::resume) in the background, with a handle to await or cancel it.
    pub fn spawn_resume(&self, run_id: RunId) -> Result<RunHandle<S>, Error> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::NoRuntime { call: "Flow::spawn_resume", instead: "Flow::resume in a runtime" })?;
        let cancel = Canceller::new();
        let flow = self.clone();
        let token = cancel.clone();
        let join = rt.spawn(async move { flow.resume_with(run_id, None, token, None).await });
        Ok(RunHandle { id: run_id, cancel, join })
    }

    /// [`spawn_resume`](Flow::spawn_resume) with the continuation's event stream (from its
    /// `run_resumed` to its end), attached before it starts. A refused resume (an unknown run,
    /// one driven elsewhere) is the handle's error, and the stream then ends empty.
    pub fn stream_resume(&self, run_id: RunId) -> Result<(RunHandle<S>, EventStream), Error> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::NoRuntime { call: "Flow::stream_resume", instead: "Flow::resume in a runtime" })?;
        let (tx, rx) = stream_channel();
        let cancel = Canceller::new();
        let flow = self.clone();
        let token = cancel.clone();
        let join = rt.spawn(async move { flow.resume_with(run_id, Some(tx), token, None).await });
        Ok((RunHandle { id: run_id, cancel, join }, rx))
    }

    async fn resume_with(
        &self,
        run_id: RunId,
        stream: Option<tokio::sync::mpsc::UnboundedSender<crate::Event>>,
        cancel: Canceller,
        answer: Option<(Option<u64>, String)>,
    ) -> Result<Run<S>, Error> {
        if let Some((request, text)) = answer {
            return self.answer_paused(run_id, request, text, stream, cancel).await;
        }
        let store = self.require_store("Flow::resume")?.clone();
        let stored = self.load_own(store.as_ref(), run_id).await?;
        match stored.status {
            RunStatus::Finished => return driver::finished_run(&self.inner, &stored),
            // Still waiting for its answer: nothing to run until it comes.
            RunStatus::Paused => return driver::paused_run(&self.inner, &stored),
            _ => {}
        }
        // Refused before the claim, so a refusal leaves the stored run as it was.
        let driving = Driving::start(run_id)
            .ok_or_else(|| Error::Durable(DurableError::AlreadyDriven { run_id: run_id.to_string() }))?;
        let restored = driver::Restored::decode(&self.inner, &stored)?;
        let me = process_owner();
        let claim = match store.claim_run(run_id, &me, self.inner.lease, None).await {
            Ok(claim) => claim,
            Err(e) => match Error::from_store(store.as_ref(), "claim the run", e) {
                // The owner died on this machine (a crash): take over without waiting for
                // its lease to run out. Only that exact owner is replaced.
                Error::Durable(DurableError::RunOwned(owned)) if crate::persist::owner_is_dead(&owned.owner) => store
                    .claim_run(run_id, &me, self.inner.lease, Some(&owned.owner))
                    .await
                    .map_err(|e| Error::from_store(store.as_ref(), "claim the run", e))?,
                other => return Err(other),
            },
        };
        // Read again under the claim: a late write of the previous owner may have committed
        // between the first read and the claim (after the claim its token refuses any). Its
        // checkpoint number says whether one did; only then is the whole run read again.
        let again = LoadRun::new().outputs(StepOutputs::None);
        let restored = match self.load_own_with(store.as_ref(), run_id, again).await {
            Ok(latest) if latest.seq != restored.seq() => {
                driver::Restored::decode(&self.inner, &self.load_own(store.as_ref(), run_id).await?)?
            }
            _ => restored,
        };
        driver::drive_resumed(self.inner.clone(), restored, claim, driving, stream, cancel, None).await
    }

    /// Answers a pending request of a paused run and continues it. The claim is atomic on the
    /// run being paused at the checkpoint the answer was read against; when another answer
    /// moved the run on in between, the request is looked up again.
    async fn answer_paused(
        &self,
        run_id: RunId,
        request: Option<u64>,
        text: String,
        stream: Option<tokio::sync::mpsc::UnboundedSender<crate::Event>>,
        cancel: Canceller,
    ) -> Result<Run<S>, Error> {
        let store = self.require_store("Flow::resume_with_feedback")?.clone();
        let me = process_owner();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let stored = self.load_own(store.as_ref(), run_id).await?;
            let record = driver::feedback_record(&stored)?;
            let still_pending = request.is_some_and(|id| record.pending.iter().any(|p| p.request.id == id));
            match stored.status {
                RunStatus::Paused => {}
                // Another answer is being applied; this request waits on (named requests only:
                // an unnamed answer cannot tell whether it was meant for the one being applied).
                RunStatus::Running if still_pending => {
                    return Err(Error::Feedback(FeedbackError::FeedbackBusy {
                        run_id: run_id.to_string(),
                        request: request.unwrap_or_default(),
                    }));
                }
                other => {
                    return Err(Error::Feedback(FeedbackError::NotPaused {
                        run_id: run_id.to_string(),
                        status: other.to_string(),
                    }));
                }
            }
            let answer = self.map_answer(&stored, request, text.clone()).await?;
            let restored = driver::Restored::decode(&self.inner, &stored)?;
            // Another answer is being applied in this process: as when it is applied elsewhere,
            // a named request waits its turn; an unnamed answer was meant for that pause.
            let Some(driving) = Driving::start(run_id) else {
                return Err(match request {
                    Some(request) => {
                        Error::Feedback(FeedbackError::FeedbackBusy { run_id: run_id.to_string(), request })
                    }
                    None => Error::Feedback(FeedbackError::NotPaused {
                        run_id: run_id.to_string(),
                        status: "already resumed by another answer".to_string(),
                    }),
                });
            };
            let claim = store
                .claim_paused(run_id, stored.seq, &me, self.inner.lease)
                .await
                .map_err(|e| Error::from_store(store.as_ref(), "claim the paused run", e))?;
            match claim {
                Some(claim) => {
                    let answer = Some(answer);
                    return driver::drive_resumed(self.inner.clone(), restored, claim, driving, stream, cancel, answer)
                        .await;
                }
                // Moved on since we read it: look again (a named request may still be pending).
                None if request.is_some() && attempts < 3 => continue,
                None => {
                    let status = "already resumed by another answer".to_string();
                    return Err(Error::Feedback(FeedbackError::NotPaused { run_id: run_id.to_string(), status }));
                }
            }
        }
    }

    /// Maps feedback for a paused run to its step's outcome, before the run is touched: an
    /// answer that matches nothing leaves the run paused.
    async fn map_answer(
        &self,
        stored: &crate::persist::StoredRun,
        request: Option<u64>,
        text: String,
    ) -> Result<driver::Answered, Error> {
        let record = driver::feedback_record(stored)?;
        let corrupt = |message: String| {
            Error::Durable(DurableError::CorruptCheckpoint { run_id: stored.run_id.to_string(), message })
        };
        let waits = || {
            record.pending.iter().map(|p| format!("{} (step `{}`)", p.request.id, p.request.step)).collect::<Vec<_>>()
        };
        let pending = match request {
            None if record.pending.len() > 1 => {
                return Err(Error::Feedback(FeedbackError::FeedbackRequestNeeded {
                    run_id: stored.run_id.to_string(),
                    pending: waits().join(", "),
                }));
            }
            None => record.pending.first().ok_or_else(|| corrupt("it is paused but has no pending request".into()))?,
            Some(id) => record.pending.iter().find(|p| p.request.id == id).ok_or_else(|| {
                Error::Feedback(FeedbackError::UnknownFeedbackRequest {
                    run_id: stored.run_id.to_string(),
                    request: id,
                    pending: waits().join(", "),
                })
            })?,
        };
        let config = self
            .inner
            .graph
            .step_index(&pending.request.step)
            .and_then(|ix| self.inner.steps[ix as usize].feedback.clone())
            .ok_or_else(|| {
                corrupt(format!("step `{}` of its pending request asks for no feedback", pending.request.step))
            })?;
        let outcome = crate::review::resolve_outcome(&config, &pending.request.step, &text).await?;
        Ok(driver::Answered { request: pending.request.id, text, outcome })
    }

    /// Answers the feedback a paused run waits for and continues it exactly where it paused: in
    /// this process, a new one, or (with PostgreSQL) another machine. When the run waits for
    /// several requests (parallel reviews), name the one answered with
    /// [`resume_with_feedback_for`](Flow::resume_with_feedback_for); an unnamed answer is then
    /// refused ([`FeedbackError::FeedbackRequestNeeded`]) rather than guessed. With outcomes, the answer
    /// is mapped first (exact, case-insensitive, the classifier, the default); an answer that
    /// matches none is an error and the run stays paused. If the run asks again (a review
    /// loop, or another pending step), the returned run is paused again.
    pub async fn resume_with_feedback(&self, run_id: RunId, feedback: impl Into<String>) -> Result<Run<S>, Error> {
        self.resume_with(run_id, None, Canceller::new(), Some((None, feedback.into()))).await
    }

    /// [`resume_with_feedback`](Flow::resume_with_feedback) in the background: a handle to await
    /// or cancel the continuation, and its event stream (from its `run_resumed` to its end, or
    /// to its next pause), attached before it starts. A refused answer (a run not paused, an
    /// answer no outcome matches) is the handle's error, and the stream then ends empty.
    pub fn stream_resume_with_feedback(
        &self,
        run_id: RunId,
        feedback: impl Into<String>,
    ) -> Result<(RunHandle<S>, EventStream), Error> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            call: "Flow::stream_resume_with_feedback",
            instead: "Flow::resume_with_feedback in a runtime",
        })?;
        let (tx, rx) = stream_channel();
        let cancel = Canceller::new();
        let flow = self.clone();
        let token = cancel.clone();
        let answer = Some((None, feedback.into()));
        let join = rt.spawn(async move { flow.resume_with(run_id, Some(tx), token, answer).await });
        Ok((RunHandle { id: run_id, cancel, join }, rx))
    }

    /// [`resume_with_feedback`](Flow::resume_with_feedback) for one named request of a run
    /// waiting for several (parallel reviews): `request` is the
    /// [`FeedbackRequest::id`](crate::FeedbackRequest::id) the provider was given. An id the run
    /// does not wait for is an error listing the ones it does.
    pub async fn resume_with_feedback_for(
        &self,
        run_id: RunId,
        request: u64,
        feedback: impl Into<String>,
    ) -> Result<Run<S>, Error> {
        self.resume_with(run_id, None, Canceller::new(), Some((Some(request), feedback.into()))).await
    }

    /// Tells the reviewers of a paused run's pending requests again
    /// ([`FeedbackProvider::paused`](crate::FeedbackProvider::paused)): after a failed
    /// notification ([`FeedbackError::FeedbackNotification`]), or a crash between the pause and the
    /// notification. Returns how many requests were re-sent; every provider is tried.
    pub async fn notify_pending(&self, run_id: RunId) -> Result<usize, Error> {
        let requests = self.pending_requests(run_id).await?;
        let reviewers: Vec<_> =
            requests.into_iter().filter_map(|r| Some((driver::provider_of(&self.inner, &r.step)?, r))).collect();
        let n = reviewers.len();
        driver::notify_reviewers(run_id, reviewers).await?;
        Ok(n)
    }

    /// Every request a paused run waits for, oldest first (empty if it is not paused).
    pub async fn pending_requests(&self, run_id: RunId) -> Result<Vec<crate::feedback::FeedbackRequest>, Error> {
        let store = self.require_store("Flow::pending_requests")?.clone();
        let stored = self.load_own_with(store.as_ref(), run_id, LoadRun::new().outputs(StepOutputs::None)).await?;
        if stored.status != RunStatus::Paused {
            return Ok(Vec::new());
        }
        Ok(driver::feedback_record(&stored)?.pending.into_iter().map(|p| p.request).collect())
    }

    /// A stored run as it stands, read only: nothing runs and nothing is claimed, whatever its
    /// status (its state at the last checkpoint, the outputs stored so far, the feedback it
    /// received, what it waits for if it is paused). Unlike [`resume`](Flow::resume), this
    /// also reads runs of an earlier definition of the flow: for reports and dashboards.
    ///
    /// It reads every step's output (for [`Run::steps`]); to read less, see
    /// [`inspect_with`](Flow::inspect_with).
    pub async fn inspect(&self, run_id: RunId) -> Result<Run<S>, Error> {
        self.inspect_with(run_id, LoadRun::everything()).await
    }

    /// [`inspect`](Flow::inspect), reading only the step outputs `what` asks for: with
    /// [`LoadRun::new`] the run's state and output (its final step's), and in
    /// [`Run::steps`] only that step; with [`StepOutputs::None`] no output at all. Read the
    /// other outputs later, if needed, with [`RunStore::load_steps`]. What a dashboard asking
    /// "where does this run stand" needs, at a fraction of the cost for runs of many steps.
    ///
    /// ```no_run
    /// # async fn demo(flow: crewflow_core::Flow<()>, id: crewflow_core::RunId) -> Result<(), crewflow_core::Error> {
    /// use crewflow_core::persist::LoadRun;
    /// let run = flow.inspect_with(id, LoadRun::new()).await?;
    /// let answer: String = run.output()?; // the final step's output is read
    /// # Ok(()) }
    /// ```
    pub async fn inspect_with(&self, run_id: RunId, what: LoadRun) -> Result<Run<S>, Error> {
        let store = self.require_store("Flow::inspect")?.clone();
        let stored = match self.load_own_with(store.as_ref(), run_id, what).await {
            Err(Error::Durable(DurableError::DefinitionChanged { .. })) => store
                .load_run_with(run_id, what)
                .await
                .map_err(|e| Error::from_store(store.as_ref(), "load the run", e))?
                .ok_or_else(|| {
                    Error::Durable(DurableError::UnknownRun { run_id: run_id.to_string(), store: store.describe() })
                })?,
            other => other?,
        };
        match stored.status {
            RunStatus::Finished => driver::finished_run(&self.inner, &stored),
            RunStatus::Paused => driver::paused_run(&self.inner, &stored),
            _ => {
                let mut run = driver::finished_run(&self.inner, &stored)?;
                run.output = None;
                run.final_step = None;
                Ok(run)
            }
        }
    }

    /// What a paused run waits for (`None` if it is not paused).
    pub async fn pending_feedback(&self, run_id: RunId) -> Result<Option<crate::feedback::Paused>, Error> {
        let store = self.require_store("Flow::pending_feedback")?.clone();
        let stored = self.load_own_with(store.as_ref(), run_id, LoadRun::new().outputs(StepOutputs::None)).await?;
        if stored.status != RunStatus::Paused {
            return Ok(None);
        }
        let record = driver::feedback_record(&stored)?;
        Ok(record.pending.first().map(|p| crate::feedback::Paused { run_id, request: p.request.clone() }))
    }

    /// Continues a run this process has already claimed (used by [`Worker`](crate::Worker)).
    pub(crate) async fn resume_claimed(&self, claim: crate::persist::Claim) -> Result<Run<S>, Error> {
        let store = self.require_store("Worker")?.clone();
        let stored = self.load_own(store.as_ref(), claim.run_id).await?;
        if stored.status == RunStatus::Finished {
            return driver::finished_run(&self.inner, &stored);
        }
        let driving = Driving::start(claim.run_id)
            .ok_or_else(|| Error::Durable(DurableError::AlreadyDriven { run_id: claim.run_id.to_string() }))?;
        let restored = match driver::Restored::decode(&self.inner, &stored) {
            Ok(restored) => restored,
            Err(e) => {
                // Claimed but not resumable: record why, so the run leaves the orphans (and
                // shows among the failed runs) instead of being claimed again and again.
                let end = crate::persist::RunEnd {
                    run_id: claim.run_id,
                    fencing: claim.fencing,
                    status: RunStatus::Failed,
                    checkpoint: None,
                    final_activation: None,
                    error: Some(e.to_string()),
                };
                let _ = store.end_run(&end).await;
                return Err(e);
            }
        };
        driver::drive_resumed(self.inner.clone(), restored, claim, driving, None, Canceller::new(), None).await
    }

    async fn load_own(&self, store: &dyn RunStore, run_id: RunId) -> Result<crate::persist::StoredRun, Error> {
        self.load_own_with(store, run_id, LoadRun::everything()).await
    }

    /// [`load_own`](Flow::load_own), reading the step outputs `what` asks for.
    async fn load_own_with(
        &self,
        store: &dyn RunStore,
        run_id: RunId,
        what: LoadRun,
    ) -> Result<crate::persist::StoredRun, Error> {
        let stored = store
            .load_run_with(run_id, what)
            .await
            .map_err(|e| Error::from_store(store, "load the run", e))?
            .ok_or_else(|| {
                Error::Durable(DurableError::UnknownRun { run_id: run_id.to_string(), store: store.describe() })
            })?;
        if stored.flow != self.name() {
            return Err(Error::Durable(DurableError::RunOfAnotherFlow {
                run_id: run_id.to_string(),
                actual: stored.flow,
                expected: self.name().to_string(),
            }));
        }
        if stored.fingerprint != self.inner.graph.fingerprint() {
            return Err(Error::Durable(DurableError::DefinitionChanged {
                run_id: run_id.to_string(),
                flow: stored.flow,
            }));
        }
        Ok(stored)
    }

    /// The version of the flow's state type (see [`crate::versions`]): what a host that keeps
    /// states of its own (a conversation's session) records beside each one.
    pub fn state_version(&self) -> u32 {
        self.inner.versions.current
    }

    /// Reads a state kept at `version` (a session's, a stored run's), migrating it to the
    /// flow's state version; refuses a newer version, a missing migration, or a state whose
    /// fields the state type would drop. See [`crate::versions`].
    pub fn decode_state(&self, version: u32, json: &str) -> Result<S, crate::versions::StateError> {
        self.inner.versions.decode(version, json)
    }

    /// Starts a new run from the state another run reached (its last checkpoint), with the
    /// kickoff's inputs merged over it. The new run starts from the flow's starts, under a new
    /// id (or the kickoff's); the source run is left untouched.
    pub async fn fork(&self, source: RunId, kickoff: impl Into<Kickoff>) -> Result<Run<S>, Error> {
        let store = self.require_store("Flow::fork")?.clone();
        // Unlike resume, a fork may follow a changed definition: it starts over from the state.
        let stored = match self.load_own(store.as_ref(), source).await {
            Ok(stored) => stored,
            Err(Error::Durable(DurableError::DefinitionChanged { .. })) => store
                .load_run(source)
                .await
                .map_err(|e| Error::from_store(store.as_ref(), "load the run", e))?
                .ok_or_else(|| {
                    Error::Durable(DurableError::UnknownRun { run_id: source.to_string(), store: store.describe() })
                })?,
            Err(e) => return Err(e),
        };
        let state = driver::stored_state(&self.inner, &stored)?;
        let prepared = driver::prepare(&self.inner, kickoff.into(), None, Some(state))?;
        driver::drive(self.inner.clone(), prepared).await
    }

    /// Records a run for a [`Worker`](crate::Worker) to pick up, and returns its id. The
    /// inputs are checked now.
    pub async fn enqueue(&self, kickoff: impl Into<Kickoff>) -> Result<RunId, Error> {
        let store = self.require_store("Flow::enqueue")?.clone();
        let kickoff = kickoff.into();
        let inputs = kickoff.inputs.clone().map(serde_json::Value::Object);
        let prepared = driver::prepare(&self.inner, kickoff, None, None)?;
        let new = driver::queued_run(&self.inner, &prepared, inputs)?;
        store.create_run(&new).await.map_err(|e| Error::from_store(store.as_ref(), "queue the run", e))?;
        Ok(new.run_id)
    }

    /// The record of a queued run, as [`enqueue`](Flow::enqueue) would store it, without
    /// storing it: for callers that record it together with something else in one
    /// transaction (a schedule's tick, [`RunStore::fire_schedule`]). The inputs are checked
    /// now; the run gets a new id (or the kickoff's).
    pub fn queued_run(&self, kickoff: impl Into<Kickoff>) -> Result<crate::persist::NewRun, Error> {
        let kickoff = kickoff.into();
        let inputs = kickoff.inputs.clone().map(serde_json::Value::Object);
        let prepared = driver::prepare(&self.inner, kickoff, None, None)?;
        driver::queued_run(&self.inner, &prepared, inputs)
    }

    /// Runs the flow to the end from synchronous code (it starts its own runtime). Called from
    /// inside an async runtime it returns an error instead of blocking it.
    pub fn kickoff_blocking(&self, kickoff: impl Into<Kickoff>) -> Result<Run<S>, Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInsideRuntime {
                call: "Flow::kickoff_blocking",
                instead: "flow.kickoff(..).await",
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Runtime)?;
        rt.block_on(self.kickoff(kickoff))
    }

    /// Starts a run in the background and returns a handle to await or cancel it.
    pub fn spawn(&self, kickoff: impl Into<Kickoff>) -> Result<RunHandle<S>, Error> {
        self.spawn_with(kickoff.into(), None)
    }

    /// Starts a run in the background and returns its handle and its event stream. The stream
    /// is attached before the run starts, so it sees every event.
    pub fn stream(&self, kickoff: impl Into<Kickoff>) -> Result<(RunHandle<S>, EventStream), Error> {
        let (tx, rx) = stream_channel();
        let handle = self.spawn_with(kickoff.into(), Some(tx))?;
        Ok((handle, rx))
    }

    fn spawn_with(
        &self,
        kickoff: Kickoff,
        stream: Option<tokio::sync::mpsc::UnboundedSender<crate::Event>>,
    ) -> Result<RunHandle<S>, Error> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::NoRuntime { call: "Flow::spawn", instead: "Flow::kickoff_blocking" })?;
        let prepared = driver::prepare(&self.inner, kickoff, stream, None)?;
        let id = prepared.run_id();
        let cancel = prepared.cancel_token();
        let join = rt.spawn(driver::drive(self.inner.clone(), prepared));
        Ok(RunHandle { id, cancel, join })
    }
}

/// A run in progress: await it for the result, or cancel it.
pub struct RunHandle<S> {
    id: RunId,
    cancel: Canceller,
    join: JoinHandle<Result<Run<S>, Error>>,
}

impl<S> RunHandle<S> {
    /// The run's id.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// Asks the run to stop: in-flight steps are cancelled and the run ends with
    /// [`Error::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A cancellation handle that can be moved elsewhere.
    pub fn canceller(&self) -> Canceller {
        self.cancel.clone()
    }
}

impl<S: Send + 'static> IntoFuture for RunHandle<S> {
    type Output = Result<Run<S>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.join.await {
                Ok(result) => result,
                Err(e) if e.is_cancelled() => Err(Error::Cancelled { run_id: self.id.to_string() }),
                Err(e) => Err(Error::Internal(format!("the run's task failed: {e}"))),
            }
        })
    }
}
