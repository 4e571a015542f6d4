//! Errors, split by what a caller does about them.
//!
//! Kept as one file on purpose: every error the engine reports, with its message, read side by
//! side (so the messages stay consistent in wording and in the fix they name).
//!
//! [`Error`] is what every engine call returns. Its variants group the causes:
//!
//! | variant | what the caller does |
//! |---|---|
//! | [`Error::Build`] ([`BuildError`]) | fix the flow's definition (code or YAML); nothing ran |
//! | [`Error::Input`] ([`InputError`]) | fix the inputs passed to kickoff; nothing ran |
//! | [`Error::Durable`] ([`DurableError`]) | a stored run: pick another id, resume elsewhere, retry the store, migrate the state |
//! | [`Error::Feedback`] ([`FeedbackError`]) | answer the pending request differently, or later |
//! | the other variants | the run itself: a step failed, a budget ran out, it was cancelled |
//!
//! Every enum is `#[non_exhaustive]`, and each message names the thing at fault and the fix.
//! [`StepError`] is what a step returns.

use std::fmt;

use crewflow_rules::GraphRule;

/// A boxed error that can cross threads: the cause carried by a failed step.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with the engine's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can report, split by what a caller does about it:
///
/// | variant | what the caller does |
/// |---|---|
/// | [`Error::Build`] ([`BuildError`]) | fix the flow's definition (code or YAML); nothing ran |
/// | [`Error::Input`] ([`InputError`]) | fix the inputs passed to kickoff; nothing ran |
/// | [`Error::Durable`] ([`DurableError`]) | a stored run: pick another id, resume elsewhere, retry the store, migrate the state |
/// | [`Error::Feedback`] ([`FeedbackError`]) | answer the pending request differently, or later |
/// | the other variants | the run itself: a step failed, a budget ran out, it was cancelled |
///
/// Every part is `#[non_exhaustive]`; each message names the thing at fault and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The flow's definition is wrong; nothing ran.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The kickoff inputs do not fit the state; nothing ran.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A durable run or its store.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// Human feedback: a pause, an answer, a provider.
    #[error(transparent)]
    Feedback(#[from] FeedbackError),

    /// The flow's state could not be converted to or from JSON.
    #[error("state `{state_type}` could not be {action} JSON: {message}")]
    StateSerialization {
        /// The state type.
        state_type: &'static str,
        /// `converted to` or `read from`.
        action: &'static str,
        /// What serde said.
        message: String,
    },
    /// A step's input could not be built from the payload it was given.
    #[error("step `{step}` expects an input of type `{expected}`, but {problem}")]
    BadPayload {
        /// The step.
        step: String,
        /// The declared input type.
        expected: &'static str,
        /// What went wrong.
        problem: String,
    },
    /// A step returned an error (or panicked). The run stopped; in-flight siblings were cancelled.
    /// A durable run can be resumed from its last checkpoint after the fix:
    /// `flow.resume(run_id)`.
    #[error("step `{step}` failed in run {run_id}: {source}")]
    StepFailed {
        /// The failing step.
        step: String,
        /// The run it failed (what `flow.resume` takes, for a durable run).
        run_id: crate::RunId,
        /// What the step reported.
        #[source]
        source: BoxError,
    },
    /// The run exceeded its step budget (a loop that does not end, or a budget set too low).
    #[error(
        "step budget exceeded: running `{step}` would be step {} of this run, over the budget of {budget}; if the loop is meant to run that long, raise the budget with max_steps",
        .budget + 1
    )]
    StepBudgetExceeded {
        /// The step that would have run.
        step: String,
        /// The budget (steps per run).
        budget: u64,
    },
    /// A router returned a label it did not declare.
    #[error("router `{router}` returned `{label}`, which is not one of its declared routes ({})", .declared.join(", "))]
    UndeclaredRoute {
        /// The router.
        router: String,
        /// The label returned.
        label: String,
        /// The labels it declared.
        declared: Vec<String>,
    },
    /// The input provider failed.
    #[error("the input provider failed to answer step `{step}`: {source}")]
    InputProvider {
        /// The step that asked.
        step: String,
        /// What the provider reported.
        #[source]
        source: BoxError,
    },
    /// The run was cancelled through its [`RunHandle`](crate::RunHandle).
    #[error("run {run_id} was cancelled")]
    Cancelled {
        /// The cancelled run.
        run_id: String,
    },
    /// A blocking call was made from inside an async runtime, where it would deadlock.
    #[error("{call} was called inside an async runtime, where blocking would stall it; use `{instead}` instead")]
    BlockingInsideRuntime {
        /// The blocking call.
        call: &'static str,
        /// The async alternative.
        instead: &'static str,
    },
    /// An async entry point was called outside a Tokio runtime.
    #[error("{call} needs a Tokio runtime; call it from within #[tokio::main] or use `{instead}`")]
    NoRuntime {
        /// The call.
        call: &'static str,
        /// The blocking alternative.
        instead: &'static str,
    },
    /// The runtime could not be created for a blocking call.
    #[error("could not start a Tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// An output was asked for with a type it does not have.
    #[error("the output of step `{step}` is `{actual}`, not `{requested}`: {message}")]
    OutputType {
        /// The step that produced the output.
        step: String,
        /// The type it was produced as.
        actual: &'static str,
        /// The type asked for.
        requested: &'static str,
        /// What serde said when converting.
        message: String,
    },
    /// A run finished without producing any output (every start was disabled).
    #[error("run {run_id} produced no output: no step ran")]
    NoOutput {
        /// The run.
        run_id: String,
    },
    /// The frontier was asked about an activation it does not know (a driver bug or a corrupt checkpoint).
    #[error("internal: {0}")]
    Internal(String),
}

/// A flow definition the engine refuses: found by `FlowBuilder::build`, the `#[flow]` macro and
/// declarative flows alike, before anything runs. Fix the definition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The graph breaks one of the rules every front end shares (a start exists, triggers name
    /// steps and labels that exist, no step triggers itself, every route is handled).
    #[error(transparent)]
    Graph(#[from] crewflow_rules::GraphRule),
    /// A step name is not a valid identifier.
    #[error(
        "invalid step name `{name}`: step names must match ^[A-Za-z_][A-Za-z0-9_]*$ (letters, digits, underscores; not starting with a digit)"
    )]
    InvalidStepName {
        /// The rejected name.
        name: String,
    },
    /// Two steps share a name.
    #[error("flow `{flow}` declares step `{name}` twice; step names must be unique")]
    DuplicateStep {
        /// The flow's name.
        flow: String,
        /// The repeated step name.
        name: String,
    },
    /// A router did not declare the labels it can return.
    #[error(
        "router `{router}` returns `{route_type}`, whose labels are not known in advance; declare them with routes = [\"..\"] (macro) or .routes([..]) (builder)"
    )]
    RoutesNotDeclared {
        /// The router.
        router: String,
        /// The router's return type.
        route_type: &'static str,
    },
    /// Two different route types use the same label in one flow.
    #[error(
        "label `{label}` is returned by router `{first}` (type `{first_type}`) and by router `{second}` (type `{second_type}`); labels must mean one thing per flow, so rename one variant with #[route(rename = \"..\")]"
    )]
    LabelConflict {
        /// The shared label.
        label: String,
        /// The first router declaring it.
        first: String,
        /// Its route type.
        first_type: &'static str,
        /// The second router declaring it.
        second: String,
        /// Its route type.
        second_type: &'static str,
    },
    /// A trigger with an empty `or(..)`/`and(..)`.
    #[error("step `{step}` has an empty {combinator}(..) trigger; give it at least one member")]
    EmptyTrigger {
        /// The step.
        step: String,
        /// `or` or `and`.
        combinator: &'static str,
    },
    /// A step's input type does not match the output type of a step that triggers it.
    #[error(
        "step `{listener}` takes an input of type `{input_type}`, but it is triggered by {trigger} `{source_step}`, whose output is `{output_type}`; make the types match, or take `serde_json::Value`"
    )]
    PayloadTypeMismatch {
        /// The step receiving the payload.
        listener: String,
        /// Its declared input type.
        input_type: &'static str,
        /// `step` or `route`.
        trigger: &'static str,
        /// The triggering step (or the route label).
        source_step: String,
        /// The output type of the triggering step.
        output_type: &'static str,
    },
    /// A step modifier such as `.retry(..)` was called before any step was added.
    #[error(".{modifier}(..) was called before any step was added; add the step first, then its modifiers")]
    ModifierWithoutStep {
        /// The modifier, e.g. `retry`.
        modifier: String,
    },
    /// A router modifier such as `.routes(..)` was called on a step that is not a router.
    #[error(".{modifier}(..) applies to routers, but the step added last (`{step}`) is not one")]
    ModifierOnNonRouter {
        /// The modifier, e.g. `routes`.
        modifier: String,
        /// The step it was applied to.
        step: String,
    },
    /// A step that is neither a start nor triggered by anything.
    #[error("step `{step}` has no trigger; give it one (listen/router) or make it a start")]
    NoTrigger {
        /// The step.
        step: String,
    },
    /// A step's human-feedback options break one of the rules every front end shares
    /// (`crewflow_rules::check_feedback`).
    #[error("human feedback on step `{step}`: {rule}")]
    Feedback {
        /// The reviewed step.
        step: String,
        /// The rule broken, with its fix.
        rule: crewflow_rules::FeedbackRule,
    },
    /// Two migrations registered from the same state version.
    #[error("two migrations of the state from version {from}: keep one `.migrate_state({from}, ..)`")]
    DuplicateMigration {
        /// The version both migrate from.
        from: u32,
    },
    /// A migration from a version the state has not reached.
    #[error("a migration from state version {from} is registered, but the state is at version {current}: set `.state_version({})` or remove the migration", .from + 1)]
    MigrationAhead {
        /// The version the migration starts from.
        from: u32,
        /// The state's declared version.
        current: u32,
    },
}

/// Kickoff inputs that do not fit the flow's state. Fix what is passed; nothing ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Kickoff inputs name fields the typed state does not have (all of them are reported).
    #[error("unknown input{} {} for state `{state_type}`; the state's fields are: {}", if .keys.len() == 1 { "" } else { "s" }, unknown_keys(.keys), .fields.join(", "))]
    UnknownInput {
        /// The unknown keys (a nested one as `field.key`), each with the closest field.
        keys: Vec<UnknownKey>,
        /// The state type.
        state_type: &'static str,
        /// The fields the state has (from its default value).
        fields: Vec<String>,
    },
    /// A kickoff input `id` holding a run id, on a state without an `id` field: CrewAI restores a
    /// run that way (`kickoff(inputs={"id": ..})`); crewflow restores explicitly.
    #[error(
        "the kickoff input `id` is a run id ({run_id}), but crewflow does not restore a run through its inputs: continue that run with flow.resume({run_id}), or start a new run from its state with flow.fork({run_id}, inputs); if `id` is data of your own, give it another name (or an `id` field in a typed state)"
    )]
    RestoreByInput {
        /// The run id given as the `id` input.
        run_id: String,
    },
    /// Kickoff inputs that do not fit the state's types.
    #[error("invalid inputs for state `{state_type}`: {message}")]
    InvalidInput {
        /// The state type.
        state_type: &'static str,
        /// What serde said.
        message: String,
    },
    /// Kickoff inputs that are not a JSON object.
    #[error("kickoff inputs must be a JSON object of state fields, got {got}")]
    InputsNotAnObject {
        /// What was given instead.
        got: &'static str,
    },
}

/// A durable run or its store: the run is elsewhere, unknown, of another flow, stored by another
/// definition, or the store itself failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The flow has no store, and the call needs one.
    #[error(
        "{call} needs a store; give the flow one with FlowBuilder::store(..) (or #[flow(persist)] for the default SQLite file)"
    )]
    NoStore {
        /// The call.
        call: &'static str,
    },
    /// The store failed.
    #[error("could not {action} in {store}: {source}")]
    Store {
        /// The store, e.g. `sqlite:runs.db`.
        store: String,
        /// What the engine was doing.
        action: String,
        /// What the store reported.
        #[source]
        source: BoxError,
    },
    /// Another process took the run over; this one stopped without writing.
    #[error(transparent)]
    LeaseLost(crate::persist::LeaseLost),
    /// The run is being run by a live process.
    #[error(transparent)]
    RunOwned(crate::persist::RunOwned),
    /// A run a worker took over ended without success, as the store recorded it (reported by
    /// a worker after a restart: the process that ran it is gone, and with it the error value).
    #[error("run {run_id} ended {status}: {message}")]
    RecordedEnd {
        /// The run.
        run_id: String,
        /// `failed` or `cancelled`.
        status: String,
        /// The error the store kept.
        message: String,
    },
    /// This process is running the run already (a second resume of it, a retried request).
    #[error(
        "run {run_id} is already running in this process; wait for that run to end (await its RunHandle) instead of resuming it again"
    )]
    AlreadyDriven {
        /// The run.
        run_id: String,
    },
    /// No run with this id in the store.
    #[error("no run {run_id} in {store}; list the stored runs to find it (a new run is never started in its place)")]
    UnknownRun {
        /// The id asked for.
        run_id: String,
        /// The store.
        store: String,
    },
    /// The run belongs to another flow.
    #[error("run {run_id} belongs to flow `{actual}`, not `{expected}`; resume it with that flow")]
    RunOfAnotherFlow {
        /// The run.
        run_id: String,
        /// Its flow.
        actual: String,
        /// The flow asked to resume it.
        expected: String,
    },
    /// The flow's definition changed since the run was checkpointed.
    #[error(
        "flow `{flow}` changed since run {run_id} was checkpointed (its steps, triggers or routes differ), so its checkpoint cannot be continued exactly; resume it with the version that started it, or fork it to start over from its state"
    )]
    DefinitionChanged {
        /// The run.
        run_id: String,
        /// The flow.
        flow: String,
    },
    /// A stored checkpoint could not be read back.
    #[error("the checkpoint of run {run_id} cannot be read: {message}")]
    CorruptCheckpoint {
        /// The run.
        run_id: String,
        /// What is wrong.
        message: String,
    },
    /// A stored run's state cannot be read by this definition of the flow: written at a newer
    /// state version, at an older one without a migration, or with fields the state type no
    /// longer has (see [`crate::versions`]). The run is left as it was.
    #[error("run {run_id} cannot be read by this definition of flow `{flow}`: {source}")]
    StoredState {
        /// The run.
        run_id: String,
        /// The flow.
        flow: String,
        /// Why, and the fix.
        source: crate::versions::StateError,
    },
    /// A value that has to be stored does not convert to JSON.
    #[error("{what} cannot be stored as JSON: {message}")]
    Unpersistable {
        /// What could not be stored.
        what: String,
        /// What serde said.
        message: String,
    },
}

/// Human feedback: a run paused for review, an answer that does not fit, a provider that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedbackError {
    /// Feedback matched none of a step's outcomes and the step has no default.
    #[error(
        "the feedback \"{feedback}\" on step `{step}` matches none of its outcomes {outcomes} ({classifier}); answer with one of them, or give the step a default outcome"
    )]
    UnmatchedFeedback {
        /// The reviewed step.
        step: String,
        /// What the reviewer said.
        feedback: String,
        /// The step's outcomes.
        outcomes: String,
        /// What the classifier did.
        classifier: String,
    },
    /// The feedback provider failed.
    #[error("the feedback provider failed to answer step `{step}`: {source}")]
    FeedbackProvider {
        /// The reviewed step.
        step: String,
        /// What the provider reported.
        #[source]
        source: BoxError,
    },
    /// Learning from reviews failed on a step with `learn_strict`.
    #[error(
        "the feedback learner failed to {phase} the output of step `{step}`: {source}; fix the learner's model or memory, or drop `learn_strict` to show the raw output with a warning"
    )]
    FeedbackLearn {
        /// The reviewed step.
        step: String,
        /// What the learner was doing (`improve`).
        phase: &'static str,
        /// What it reported.
        #[source]
        source: BoxError,
    },
    /// A run paused for feedback, but the flow keeps no store to hold it.
    #[error(
        "step `{step}` paused for feedback, but flow `{flow}` has no store to keep the paused run; give it one (FlowBuilder::store, or #[flow(persist)] for the default SQLite file)"
    )]
    PauseWithoutStore {
        /// The flow.
        flow: String,
        /// The step that paused.
        step: String,
    },
    /// An answer did not name its request, and the run waits for several.
    #[error(
        "run {run_id} waits for several feedback requests: {pending}; name the one you answer with resume_with_feedback_for(run_id, id, ..)"
    )]
    FeedbackRequestNeeded {
        /// The run.
        run_id: String,
        /// The requests it waits for (id and step).
        pending: String,
    },
    /// Another answer to the run is being applied; this request is still pending.
    #[error("run {run_id} is applying another answer right now; request {request} is still pending: retry in a moment")]
    FeedbackBusy {
        /// The run.
        run_id: String,
        /// The request still pending.
        request: u64,
    },
    /// Feedback named a request the run does not wait for.
    #[error("run {run_id} has no pending feedback request {request}; it waits for: {pending}")]
    UnknownFeedbackRequest {
        /// The run.
        run_id: String,
        /// The request named.
        request: u64,
        /// The requests it waits for (id and step).
        pending: String,
    },
    /// Feedback was given to a run that is not waiting for any.
    #[error("run {run_id} is not waiting for feedback (it is {status}); only a paused run takes feedback")]
    NotPaused {
        /// The run.
        run_id: String,
        /// Its status.
        status: String,
    },
    /// A run paused (and was saved), but telling the reviewer failed.
    #[error(
        "run {run_id} is paused and saved, but telling the reviewer about step `{step}` failed: {source}; the run waits all the same: re-send with flow.notify_pending({run_id}), or answer it with resume_with_feedback (pending_requests shows the requests)"
    )]
    FeedbackNotification {
        /// The paused run.
        run_id: String,
        /// The step waiting.
        step: String,
        /// What the provider reported.
        #[source]
        source: BoxError,
    },
    /// The run is paused for feedback, so it has no output yet.
    #[error(
        "run {run_id} is paused: step `{step}` waits for feedback (\"{message}\"); answer with flow.resume_with_feedback({run_id}, ..)"
    )]
    Paused {
        /// The run.
        run_id: String,
        /// The step waiting.
        step: String,
        /// The question.
        message: String,
    },
}

impl Error {
    /// Wraps an error reported by a store, recognising lost leases and owned runs.
    pub fn from_store(store: &dyn crate::persist::RunStore, action: &str, source: BoxError) -> Self {
        let source = match source.downcast::<crate::persist::LeaseLost>() {
            Ok(lost) => return DurableError::LeaseLost(*lost).into(),
            Err(other) => other,
        };
        match source.downcast::<crate::persist::RunOwned>() {
            Ok(owned) => DurableError::RunOwned(*owned).into(),
            Err(source) => DurableError::Store { store: store.describe(), action: action.to_string(), source }.into(),
        }
    }

    /// True for errors found while building a flow (before anything ran).
    pub fn is_build_error(&self) -> bool {
        matches!(self, Error::Build(_))
    }

    /// The step this error is about, when there is one.
    pub fn step(&self) -> Option<&str> {
        match self {
            Error::StepFailed { step, .. }
            | Error::StepBudgetExceeded { step, .. }
            | Error::BadPayload { step, .. } => Some(step),
            Error::UndeclaredRoute { router, .. } => Some(router),
            Error::Build(build) => build.step(),
            _ => None,
        }
    }
}

impl BuildError {
    /// The step this error is about, when there is one.
    pub fn step(&self) -> Option<&str> {
        match self {
            BuildError::Graph(GraphRule::SelfTrigger { step })
            | BuildError::EmptyTrigger { step, .. }
            | BuildError::NoTrigger { step }
            | BuildError::Feedback { step, .. }
            | BuildError::ModifierOnNonRouter { step, .. } => Some(step),
            BuildError::Graph(GraphRule::UnhandledRoute { router, .. }) => Some(router),
            BuildError::Graph(GraphRule::UnknownStep { listener, .. } | GraphRule::UnknownLabel { listener, .. })
            | BuildError::PayloadTypeMismatch { listener, .. } => Some(listener),
            _ => None,
        }
    }
}

// A lost lease and an owned run reach callers through `?` from store code.
impl From<crate::persist::LeaseLost> for Error {
    fn from(lost: crate::persist::LeaseLost) -> Self {
        DurableError::LeaseLost(lost).into()
    }
}

impl From<crate::persist::RunOwned> for Error {
    fn from(owned: crate::persist::RunOwned) -> Self {
        DurableError::RunOwned(owned).into()
    }
}

/// A kickoff input the state has no field for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// The key (`field.key` when it is inside a field).
    pub key: String,
    /// The closest field name, if any is close.
    pub suggestion: Option<String>,
}

/// What a caught panic said: its message when it was a string, or a placeholder. Kept here,
/// beside the errors it becomes, so the builder (step panics) and the driver (start-predicate
/// panics) share it without importing each other.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

fn unknown_keys(keys: &[UnknownKey]) -> String {
    keys.iter().map(|k| format!("`{}`{}", k.key, did_you_mean(&k.suggestion))).collect::<Vec<_>>().join(", ")
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// The error a step returns: any error type converts into it with `?`, and
/// [`StepError::msg`] makes one from text.
///
/// Like `anyhow::Error`, it deliberately does not implement `std::error::Error` itself, so that
/// every error type can convert into it.
pub struct StepError(BoxError);

impl StepError {
    /// An error with just a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        StepError(message.to_string().into())
    }

    /// Wraps an already boxed error.
    pub fn from_boxed(error: BoxError) -> Self {
        StepError(error)
    }

    /// The underlying error.
    pub fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The underlying error, if it is of type `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }

    /// Gives the boxed error back.
    pub fn into_boxed(self) -> BoxError {
        self.0
    }
}

/// Any error converts with `?`, and so do messages: `Err("out of stock".into())`,
/// `Err(format!("no row {id}").into())`. (This is why `StepError` itself is not a
/// `std::error::Error`: [`StepError::into_boxed`] gives the boxed error back.)
impl<E: Into<BoxError>> From<E> for StepError {
    fn from(error: E) -> Self {
        StepError(error.into())
    }
}

impl fmt::Debug for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The closest candidate to `name` by edit distance, if it is close enough to be a likely typo
/// (for "did you mean" hints in error messages). The rule is `crewflow_rules::closest`, shared
/// with the macro and declarative flows.
pub(crate) fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    crewflow_rules::closest(name, candidates).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_typos_only() {
        assert_eq!(closest("reserch", ["research", "write"]), Some("research".into()));
        assert_eq!(closest("zzz", ["research", "write"]), None);
        assert_eq!(closest("rigth", ["left", "right"]), Some("right".into()));
    }

    #[test]
    fn step_errors_keep_the_type_of_their_cause() {
        let io = std::io::Error::other("disk full");
        let e: StepError = io.into();
        let boxed: BoxError = e.into_boxed();
        assert!(boxed.downcast_ref::<std::io::Error>().is_some());
        let back = StepError::from_boxed(boxed);
        assert_eq!(back.to_string(), "disk full");
        assert!(back.downcast_ref::<std::io::Error>().is_some());
    }
}
