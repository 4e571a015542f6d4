//! Process-wide providers: what a flow uses when neither the step nor the flow names one.
//!
//! One policy for human feedback and for `cx.ask`: the step's provider, else the flow's, else
//! the process's default (set here, like CrewAI's `flow_config`), else the terminal
//! ([`ConsoleFeedback`], [`ConsoleInput`]). A server sets a process default once (a deferred
//! or web provider) so that no flow of it ever reads a terminal.

use std::sync::{Arc, RwLock};

use crate::feedback::{ConsoleFeedback, FeedbackProvider};
use crate::input::{ConsoleInput, InputProvider};

static FEEDBACK: RwLock<Option<Arc<dyn FeedbackProvider>>> = RwLock::new(None);
static INPUT: RwLock<Option<Arc<dyn InputProvider>>> = RwLock::new(None);

/// Sets the feedback provider of every flow and step of this process that names none
/// (replacing an earlier default). Flows built before the call use it too.
pub fn set_default_feedback_provider(provider: impl FeedbackProvider) {
    *FEEDBACK.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(provider));
}

/// Sets the input provider `cx.ask` uses in every flow of this process that names none
/// (replacing an earlier default). Flows built before the call use it too.
pub fn set_default_input_provider(provider: impl InputProvider) {
    *INPUT.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(provider));
}

/// The feedback provider of code outside any flow: the process default
/// ([`set_default_feedback_provider`]), else the terminal ([`ConsoleFeedback`]). Inside a step,
/// [`StepScope::feedback_provider`](crate::scope::StepScope::feedback_provider) puts the flow's
/// provider first.
pub fn default_feedback_provider() -> Arc<dyn FeedbackProvider> {
    feedback_provider()
}

/// The process default, else the terminal.
pub(crate) fn feedback_provider() -> Arc<dyn FeedbackProvider> {
    FEEDBACK.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| Arc::new(ConsoleFeedback))
}

/// The process default, else the terminal.
pub(crate) fn input_provider() -> Arc<dyn InputProvider> {
    INPUT.read().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| Arc::new(ConsoleInput))
}
