//! What a run gives back: [`Run`] (its id, final state, output, and each step's output) and
//! [`StepRecord`].

use crate::error::FeedbackError;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::id::RunId;
use crate::output::Output;

/// One step execution of a run and its output.
#[derive(Clone, Debug)]
pub struct StepRecord {
    /// The step.
    pub step: Arc<str>,
    /// The execution's id within the run.
    pub activation: u64,
    /// What it returned (for a router, the route).
    pub output: Output,
}

/// A finished run: its id, its final state, its output and what each step produced.
#[derive(Debug)]
pub struct Run<S> {
    /// The run's id.
    pub id: RunId,
    /// The state at the end of the run.
    pub state: S,
    pub(crate) output: Option<Output>,
    pub(crate) final_step: Option<Arc<str>>,
    pub(crate) records: Vec<StepRecord>,
    pub(crate) inputs: Vec<crate::input::InputRecord>,
    pub(crate) usage: crate::scope::TokenUsage,
    // Boxed: rare, and every run future holds a `Run`.
    pub(crate) paused: Option<Box<crate::feedback::Paused>>,
    pub(crate) feedback: Vec<crate::feedback::FeedbackResult>,
}

impl<S> Run<S> {
    /// The run's output as a `T`: the output of its final step (see
    /// [`Frontier::final_activation`](crate::frontier::Frontier::final_activation) for the rule).
    pub fn output<T: DeserializeOwned + Clone + 'static>(&self) -> Result<T, Error> {
        if let Some(p) = &self.paused {
            return Err(Error::Feedback(FeedbackError::Paused {
                run_id: self.id.to_string(),
                step: p.request.step.clone(),
                message: p.request.message.clone(),
            }));
        }
        let out = self.output.as_ref().ok_or_else(|| Error::NoOutput { run_id: self.id.to_string() })?;
        out.get::<T>().map_err(|e| Error::OutputType {
            step: self.final_step.as_deref().unwrap_or_default().to_string(),
            actual: out.type_name(),
            requested: std::any::type_name::<T>(),
            message: e.to_string(),
        })
    }

    /// The run's output, untyped.
    pub fn raw_output(&self) -> Option<&Output> {
        self.output.as_ref()
    }

    /// The run's output as JSON (`None` when no step ran).
    pub fn output_json(&self) -> Option<Value> {
        self.output.as_ref().and_then(|o| o.to_json().ok())
    }

    /// The step whose output is the run's output.
    pub fn final_step(&self) -> Option<&str> {
        self.final_step.as_deref()
    }

    /// Every step execution, in the order they finished (of a run read with
    /// [`Flow::inspect_with`](crate::Flow::inspect_with), those whose outputs were read).
    pub fn steps(&self) -> &[StepRecord] {
        &self.records
    }

    /// Every question the run's steps asked ([`Cx::ask`](crate::Cx::ask)), with its answer.
    pub fn inputs(&self) -> &[crate::input::InputRecord] {
        &self.inputs
    }

    /// Tokens the run's model calls used (in this process: a resumed run counts from the
    /// resume).
    pub fn usage(&self) -> crate::scope::TokenUsage {
        self.usage
    }

    /// Whether the run paused for feedback, and what it waits for: resume it with
    /// [`Flow::resume_with_feedback`](crate::Flow::resume_with_feedback). A paused run has no output yet.
    pub fn paused(&self) -> Option<&crate::feedback::Paused> {
        self.paused.as_deref()
    }

    /// Whether the run ran to its end (it did not pause).
    pub fn is_finished(&self) -> bool {
        self.paused.is_none()
    }

    /// Every feedback the run received, in order (across pauses).
    pub fn feedback_history(&self) -> &[crate::feedback::FeedbackResult] {
        &self.feedback
    }

    /// The latest feedback the run received.
    pub fn last_feedback(&self) -> Option<&crate::feedback::FeedbackResult> {
        self.feedback.last()
    }

    /// How many step executions ran.
    pub fn steps_run(&self) -> usize {
        self.records.len()
    }

    /// How many times `step` ran.
    pub fn count(&self, step: &str) -> usize {
        self.records.iter().filter(|r| &*r.step == step).count()
    }

    /// The names of the steps that ran, in the order they finished.
    pub fn step_names(&self) -> Vec<&str> {
        self.records.iter().map(|r| &*r.step).collect()
    }

    /// The output of the last execution of `step`, as a `T`.
    pub fn output_of<T: DeserializeOwned + Clone + 'static>(&self, step: &str) -> Option<Result<T, Error>> {
        let r = self.records.iter().rev().find(|r| &*r.step == step)?;
        Some(r.output.get::<T>().map_err(|e| Error::OutputType {
            step: step.to_string(),
            actual: r.output.type_name(),
            requested: std::any::type_name::<T>(),
            message: e.to_string(),
        }))
    }
}
