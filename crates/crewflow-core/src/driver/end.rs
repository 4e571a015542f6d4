//! How a run ends: finished (a last checkpoint), paused (the pending requests saved, reviewers
//! told), or failed / cancelled (siblings stopped, the end recorded); and the `Run` it returns.

use crate::error::{DurableError, FeedbackError};
use std::sync::{Arc, PoisonError};

use futures::StreamExt;

use super::Driver;
use crate::error::Error;
use crate::event::EventKind;
use crate::feedback::{FeedbackProvider, FeedbackRequest, Paused};
use crate::flow::FlowInner;
use crate::id::RunId;
use crate::output::Output;
use crate::persist::{RunEnd, RunStatus};
use crate::run::{Run, StepRecord};
use crate::state::FlowState;

/// Tells each provider that its request's pause is saved (see [`FeedbackProvider::paused`]).
/// Every provider is told even when one fails; the error names every step whose reviewer was
/// not told, with the first failure as its cause.
pub(crate) async fn notify_reviewers(
    run_id: RunId,
    reviewers: Vec<(Arc<dyn FeedbackProvider>, FeedbackRequest)>,
) -> Result<(), Error> {
    let mut failed: Vec<String> = Vec::new();
    let mut first = None;
    for (provider, request) in reviewers {
        if let Err(e) = provider.paused(&request).await {
            failed.push(format!("`{}`", request.step));
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(Error::Feedback(FeedbackError::FeedbackNotification {
            run_id: run_id.to_string(),
            step: failed.join(", ").trim_matches('`').to_string(),
            source: e.into_boxed(),
        })),
    }
}

/// The provider that answers a step's feedback: its own, else the flow's.
pub(crate) fn provider_of<S>(flow: &FlowInner<S>, step: &str) -> Option<Arc<dyn FeedbackProvider>> {
    let own = flow.graph.step_index(step).and_then(|ix| flow.steps[ix as usize].feedback.as_ref()?.provider.clone());
    own.or_else(|| flow.feedback.clone())
}

impl<S: FlowState> Driver<S> {
    pub(super) async fn finish(mut self: Box<Self>) -> Result<Run<S>, Error> {
        let final_act = self.frontier.final_activation();
        if let Some(store) = self.store() {
            let checkpoint = self.checkpoint()?;
            // The end also saves the last step (see `settle`): an error names it.
            let action = match checkpoint.steps.last() {
                Some(last) => format!("record the end of the run after step `{}`", last.step),
                None => "record the end of the run".to_string(),
            };
            let end = RunEnd {
                run_id: self.shared.id,
                fencing: checkpoint.fencing,
                status: RunStatus::Finished,
                checkpoint: Some(checkpoint),
                final_activation: final_act,
                error: None,
            };
            store.end_run(&end).await.map_err(|e| Error::from_store(store.as_ref(), &action, e))?;
        }
        let output = final_act.and_then(|a| self.acts[a as usize].output.clone());
        let final_step = final_act.map(|a| self.flow.steps[self.acts[a as usize].step as usize].name.clone());
        let steps = self.frontier.steps_run();
        let out = output.clone();
        self.emit(None, || EventKind::RunFinished { output: out, steps });
        Ok(self.take_run(output, final_step, None))
    }

    /// Ends the run paused: one checkpoint holding the frontier (the paused executions in
    /// flight) and the pending requests, then the `Paused` status. On failure the driver comes
    /// back with the error, to abort.
    pub(super) async fn pause_end(mut self: Box<Self>) -> Result<Run<S>, (Option<Box<Self>>, Error)> {
        let Some(store) = self.store() else {
            let step = self.paused[0].request.step.clone();
            let e = Error::Feedback(FeedbackError::PauseWithoutStore { flow: self.shared.flow.to_string(), step });
            return Err((Some(self), e));
        };
        let checkpoint = match self.checkpoint() {
            Ok(c) => c,
            Err(e) => return Err((Some(self), e)),
        };
        let end = RunEnd {
            run_id: self.shared.id,
            fencing: checkpoint.fencing,
            status: RunStatus::Paused,
            checkpoint: Some(checkpoint),
            final_activation: None,
            error: None,
        };
        if let Err(e) = store.end_run(&end).await {
            let e = Error::from_store(store.as_ref(), "record the paused run", e);
            return Err((Some(self), e));
        }
        let first = self.paused[0].request.clone();
        let (message, step) = (first.message.clone(), Arc::from(first.step.as_str()));
        self.emit(Some(&step), || EventKind::RunPaused { message });
        if let Err(e) = notify_reviewers(self.shared.id, self.reviewers_to_notify()).await {
            return Err((None, e));
        }
        let paused = Paused { run_id: self.shared.id, request: first };
        Ok(self.take_run(None, None, Some(Box::new(paused))))
    }

    /// The providers of the requests asked in this drive, to tell once the pause is saved.
    pub(super) fn reviewers_to_notify(&self) -> Vec<(Arc<dyn FeedbackProvider>, FeedbackRequest)> {
        self.paused
            .iter()
            .filter(|p| p.fresh)
            .filter_map(|p| Some((provider_of(&self.flow, &p.request.step)?, p.request.clone())))
            .collect()
    }

    pub(super) fn take_run(
        &mut self,
        output: Option<Output>,
        final_step: Option<Arc<str>>,
        paused: Option<Box<Paused>>,
    ) -> Run<S> {
        let state = std::mem::take(&mut *self.shared.state.lock().unwrap_or_else(PoisonError::into_inner));
        let records = self
            .completed
            .iter()
            .filter_map(|a| {
                let r = &self.acts[*a as usize];
                Some(StepRecord {
                    step: self.flow.steps[r.step as usize].name.clone(),
                    activation: *a,
                    output: r.output.clone()?,
                })
            })
            .collect();
        let inputs = self.shared.with_input_history(std::mem::take);
        let feedback = self.shared.with_feedback_history(std::mem::take);
        Run {
            id: self.shared.id,
            state,
            output,
            final_step,
            records,
            inputs,
            usage: self.shared.telemetry.usage(),
            paused,
            feedback,
        }
    }

    /// Stops everything still running and reports the run's end: the cancellation token
    /// fires, steps get the grace period to finish on their own, the rest are dropped. With a
    /// store, the run is marked failed or cancelled; its last checkpoint stays, so it can be
    /// resumed after a fix.
    pub(super) async fn abort(mut self: Box<Self>, error: Error) -> Error {
        self.shared.cancel.cancel();
        let deadline = tokio::time::Instant::now() + self.flow.cancel_grace;
        let mut running = self.running.take().unwrap_or_default();
        if let Some(inline) = self.inline.take() {
            running.push(inline);
        }
        let _ = tokio::time::timeout_at(deadline, async { while running.next().await.is_some() {} }).await;
        drop(running);
        if let (Some(store), Some(fencing)) = (self.store(), self.durable.as_ref().map(|d| d.fencing))
            && !matches!(
                error,
                Error::Durable(DurableError::LeaseLost { .. }) | Error::Durable(DurableError::Store { .. })
            )
        {
            let end = RunEnd {
                run_id: self.shared.id,
                fencing,
                status: if matches!(error, Error::Cancelled { .. }) { RunStatus::Cancelled } else { RunStatus::Failed },
                checkpoint: None,
                final_activation: None,
                error: Some(error.to_string()),
            };
            // Best effort: if the store cannot record the failure, the run stays `running` and
            // its lease expires, after which it can be resumed all the same.
            let _ = store.end_run(&end).await;
        }
        match &error {
            Error::Cancelled { .. } => {
                self.emit(None, || EventKind::RunCancelled);
            }
            e => {
                let text: Arc<str> = Arc::from(e.to_string());
                self.emit(None, || EventKind::RunFailed { error: text });
            }
        }
        error
    }
}
