//! Building flows at run time. The `#[flow]` macro generates calls to this same builder, so
//! everything the macro can express, the builder can too (YAML flows build on it as well).

use crate::error::{BuildError, FeedbackError};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cx::Cx;
use crate::delta::DeltaPolicy;
use crate::error::{BoxError, Error, StepError};
use crate::event::Observer;
use crate::feedback::{FeedbackProvider, FeedbackResult, HumanFeedback};
use crate::flow::{Flow, FlowInner, StepRuntime};
use crate::graph::{GraphSpec, RouterSpec, SourceLocation, StartKind, StepSpec};
use crate::handler::{BoxFuture, Completion, Handler, Predicate, StepOutcome};
use crate::input::InputProvider;
use crate::output::{Output, TypeInfo, extract_input};
use crate::persist::{DEFAULT_LEASE, RunStore};
use crate::retry::Retry;
use crate::route::Route;
use crate::shared::IntoShared;
use crate::state::FlowState;
use crate::trigger::Trigger;
use crate::versions::StateVersions;

/// The step budget of a run unless the flow or the kickoff sets another.
pub const DEFAULT_MAX_STEPS: u64 = 10_000;

/// How long steps still running get to finish on their own once a run fails or is cancelled.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_millis(100);

struct StepDef<S> {
    spec: StepSpec,
    handler: Handler<S>,
    when: Option<Predicate<S>>,
    persisted: bool,
    feedback: Option<Arc<HumanFeedback>>,
    retry: Option<Retry>,
    blocking: bool,
}

/// Assembles a [`Flow`] step by step.
///
/// Each handler is a closure `|cx: Cx<S>, input: I| async move { ... }` returning
/// `Result<O, StepError>`. `I` is the output of the step (or the route) that triggered it; use
/// `()` to ignore it. Modifiers such as [`routes`](FlowBuilder::routes) apply to the step added
/// last.
///
/// ```
/// use crewflow_core::{FlowBuilder, trigger::{label, step}};
///
/// # async fn demo() -> Result<(), crewflow_core::Error> {
/// let flow = FlowBuilder::<serde_json::Map<String, serde_json::Value>>::new("greeting")
///     .start("name", |_cx, (): ()| async move { Ok("Ada".to_string()) })
///     .router("check", step("name"), |_cx, name: String| async move {
///         Ok(if name.is_empty() { "anonymous" } else { "known" }.to_string())
///     })
///     .routes(["known", "anonymous"])
///     .listen("greet", label("known"), |_cx, _route: String| async move { Ok("hello, Ada") })
///     .listen("shrug", label("anonymous"), |_cx, (): ()| async move { Ok("hello?") })
///     .build()?;
/// let run = flow.kickoff(()).await?;
/// assert_eq!(run.output::<String>()?, "hello, Ada");
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub struct FlowBuilder<S> {
    name: String,
    steps: Vec<StepDef<S>>,
    max_steps: u64,
    cancel_grace: Duration,
    observers: Vec<Arc<dyn Observer>>,
    input: Option<Arc<dyn InputProvider>>,
    feedback: Option<Arc<dyn FeedbackProvider>>,
    store: Option<Arc<dyn RunStore>>,
    default_store: Option<fn() -> Arc<dyn RunStore>>,
    lease: Duration,
    versions: StateVersions,
    delta_policy: Option<DeltaPolicy>,
    error: Option<Error>,
}

impl<S: FlowState> FlowBuilder<S> {
    /// A builder for a flow called `name` (used in events and errors).
    pub fn new(name: impl Into<String>) -> Self {
        FlowBuilder {
            name: name.into(),
            steps: Vec::new(),
            max_steps: DEFAULT_MAX_STEPS,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            observers: Vec::new(),
            input: None,
            feedback: None,
            store: None,
            default_store: None,
            lease: DEFAULT_LEASE,
            versions: StateVersions::default(),
            delta_policy: Some(DeltaPolicy::default()),
            error: None,
        }
    }

    /// The flow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the flow.
    pub fn rename(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a start step: it runs at kickoff. A start that takes an input receives the
    /// kickoff's payload ([`Kickoff::payload`](crate::Kickoff::payload)).
    #[track_caller]
    pub fn start<I, O, F, Fut>(self, name: &str, handler: F) -> Self
    where
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        O: Serialize + Send + Sync + 'static,
    {
        self.add::<I, O>(name, StartKind::Always, None, None, plain(name, handler))
    }

    /// Adds a start step that runs at kickoff only when `predicate` holds for the state (after
    /// the inputs were merged into it).
    #[track_caller]
    pub fn start_when<I, O, P, F, Fut>(mut self, name: &str, predicate: P, handler: F) -> Self
    where
        P: Fn(&S) -> bool + Send + Sync + 'static,
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        O: Serialize + Send + Sync + 'static,
    {
        self = self.add::<I, O>(name, StartKind::When, None, None, plain(name, handler));
        if let Some(last) = self.steps.last_mut() {
            last.when = Some(Arc::new(predicate));
        }
        self
    }

    /// Adds a conditional start: it runs whenever `trigger` is satisfied (and at kickoff when
    /// the flow has no unconditional start).
    #[track_caller]
    pub fn start_on<I, O, F, Fut>(self, name: &str, trigger: impl Into<Trigger>, handler: F) -> Self
    where
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        O: Serialize + Send + Sync + 'static,
    {
        self.add::<I, O>(name, StartKind::Conditional, Some(trigger.into()), None, plain(name, handler))
    }

    /// Adds a listener: it runs each time `trigger` is satisfied, with the triggering output as
    /// its input.
    #[track_caller]
    pub fn listen<I, O, F, Fut>(self, name: &str, trigger: impl Into<Trigger>, handler: F) -> Self
    where
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        O: Serialize + Send + Sync + 'static,
    {
        self.add::<I, O>(name, StartKind::Listener, Some(trigger.into()), None, plain(name, handler))
    }

    /// Adds a router: a listener whose output is a [`Route`] whose label is dispatched.
    /// A `String` router must declare its labels with [`routes`](FlowBuilder::routes).
    #[track_caller]
    pub fn router<I, R, F, Fut>(self, name: &str, trigger: impl Into<Trigger>, handler: F) -> Self
    where
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        R: Route,
    {
        let router = router_spec::<R>();
        self.add::<I, R>(name, StartKind::Listener, Some(trigger.into()), Some(router), routing(name, handler))
    }

    /// Adds a router that is also a start (it runs at kickoff).
    #[track_caller]
    pub fn start_router<I, R, F, Fut>(self, name: &str, handler: F) -> Self
    where
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        R: Route,
    {
        let router = router_spec::<R>();
        self.add::<I, R>(name, StartKind::Always, None, Some(router), routing(name, handler))
    }

    /// Adds a router that is a conditional start.
    #[track_caller]
    pub fn start_router_on<I, R, F, Fut>(self, name: &str, trigger: impl Into<Trigger>, handler: F) -> Self
    where
        F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, StepError>> + Send + 'static,
        I: DeserializeOwned + Clone + Send + 'static,
        R: Route,
    {
        let router = router_spec::<R>();
        self.add::<I, R>(name, StartKind::Conditional, Some(trigger.into()), Some(router), routing(name, handler))
    }

    /// Declares the labels the last added router can return (required for `String` routers;
    /// for typed routes, replaces the labels of the type).
    pub fn routes<L: Into<Arc<str>>>(mut self, labels: impl IntoIterator<Item = L>) -> Self {
        let labels: Vec<Arc<str>> = labels.into_iter().map(Into::into).collect();
        self.with_last_router("routes", |r| r.labels = labels);
        self
    }

    /// Declares labels of the last added router that may go unhandled (returning one ends
    /// that branch of the run).
    pub fn terminal<L: Into<Arc<str>>>(mut self, labels: impl IntoIterator<Item = L>) -> Self {
        let labels: Vec<Arc<str>> = labels.into_iter().map(Into::into).collect();
        self.with_last_router("terminal", |r| r.terminal.extend(labels));
        self
    }

    /// Retries the step added last when it fails (see [`Retry`]): it runs again on the state
    /// without its failed attempt's changes, and what it completed through
    /// [`Cx::once`](crate::Cx::once) (model calls included) is not done again.
    pub fn retry(mut self, retry: Retry) -> Self {
        match self.steps.last_mut() {
            Some(step) => step.retry = Some(retry),
            None => {
                self.error.get_or_insert(BuildError::ModifierWithoutStep { modifier: "retry".into() }.into());
            }
        }
        self
    }

    /// Says where the step added last is defined, for pictures (the panel shown when a step is
    /// clicked) and `GET /flows/{flow}`. The builder records the place of the call that added
    /// the step by itself (`start`, `listen`, ... track their caller); `#[flow]` sets the
    /// method's place with this, and declarative flows the document's file and line. A column
    /// of 0 means unknown.
    pub fn defined_at(mut self, file: impl Into<std::borrow::Cow<'static, str>>, line: u32, column: u32) -> Self {
        match self.steps.last_mut() {
            Some(step) => step.spec.source = Some(SourceLocation::new(file, line, column)),
            None => {
                self.error.get_or_insert(BuildError::ModifierWithoutStep { modifier: "defined_at".into() }.into());
            }
        }
        self
    }

    /// Runs the step added last on tokio's blocking pool, so that a body calling blocking code
    /// (a synchronous SDK, heavy CPU work) neither stalls the runtime nor serializes with its
    /// siblings: two blocking starts run side by side. The body still is `async` and may
    /// `.await` (timers, I/O, `cx.ask`); it is driven on a pool thread. Like any blocking task,
    /// it cannot be stopped mid-call: a cancelled run stops waiting for it, and it finishes in
    /// the background.
    pub fn blocking(mut self) -> Self {
        match self.steps.last_mut() {
            Some(step) => step.blocking = true,
            None => {
                self.error.get_or_insert(BuildError::ModifierWithoutStep { modifier: "blocking".into() }.into());
            }
        }
        self
    }

    /// Sets the per-run step budget (default [`DEFAULT_MAX_STEPS`]): a run that would execute
    /// more steps fails with [`Error::StepBudgetExceeded`].
    pub fn max_steps(mut self, budget: u64) -> Self {
        self.max_steps = budget;
        self
    }

    /// How long steps still running get to finish on their own (after [`Cx::cancelled`]
    /// resolves) once the run fails or is cancelled, before they are dropped. Default
    /// [`DEFAULT_CANCEL_GRACE`].
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Sets who answers [`Cx::ask`] (default: the process default set with
    /// [`set_default_input_provider`](crate::set_default_input_provider), else
    /// [`ConsoleInput`](crate::ConsoleInput)).
    /// Takes a provider, or a shared `Arc<dyn InputProvider>` ([`IntoShared`]).
    pub fn input_provider(mut self, provider: impl IntoShared<dyn InputProvider>) -> Self {
        self.input = Some(provider.into_shared());
        self
    }

    /// Sets who collects human feedback for steps that do not name their own provider
    /// (default: the process default set with
    /// [`set_default_feedback_provider`](crate::set_default_feedback_provider), else
    /// [`ConsoleFeedback`](crate::ConsoleFeedback)).
    /// Takes a provider, or a shared `Arc<dyn FeedbackProvider>` ([`IntoShared`]).
    pub fn feedback_provider(mut self, provider: impl IntoShared<dyn FeedbackProvider>) -> Self {
        self.feedback = Some(provider.into_shared());
        self
    }

    /// Asks for human feedback on the output of the step added last, after its body runs (see
    /// [`crate::feedback`]). With [`emit`](HumanFeedback::emit) the step becomes a router whose
    /// labels are the outcomes (each may go unhandled); its listeners, like those of a step
    /// without outcomes, receive a [`FeedbackResult`](crate::FeedbackResult).
    pub fn human_feedback(mut self, feedback: HumanFeedback) -> Self {
        match self.steps.last_mut() {
            Some(last) => last.feedback = Some(Arc::new(feedback)),
            None => {
                self.error.get_or_insert(BuildError::ModifierWithoutStep { modifier: "human_feedback".into() }.into());
            }
        }
        self
    }

    /// Keeps this flow's runs in `store`: each run is recorded when it starts, checkpointed
    /// after every step (or only after the steps marked [`persisted`](FlowBuilder::persisted),
    /// if any are) and can be resumed with [`Flow::resume`].
    /// Takes a store, or an `Arc<dyn RunStore>` shared with other flows ([`IntoShared`]).
    pub fn store(mut self, store: impl IntoShared<dyn RunStore>) -> Self {
        self.store = Some(store.into_shared());
        self
    }

    /// The store to use when none is given with [`store`](FlowBuilder::store): called at build
    /// time, and expected to open nothing until first used (`#[flow(persist)]` passes the
    /// default SQLite file).
    pub fn default_store(mut self, make: fn() -> Arc<dyn RunStore>) -> Self {
        self.default_store = Some(make);
        self
    }

    /// Checkpoints after the step added last. When any step is marked, only marked steps
    /// checkpoint; otherwise every step does.
    pub fn persisted(mut self) -> Self {
        match self.steps.last_mut() {
            Some(last) => last.persisted = true,
            None => {
                self.error.get_or_insert(BuildError::ModifierWithoutStep { modifier: "persisted".into() }.into());
            }
        }
        self
    }

    /// How long a run's lease lasts without renewal (default [`DEFAULT_LEASE`]): after that,
    /// a worker may take over a run whose process stopped.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The version of the state type (default 0). Raise it when the type changes in a way
    /// stored runs and sessions cannot be decoded by, and register a migration from the old
    /// version with [`migrate_state`](FlowBuilder::migrate_state). Every stored run and session
    /// records the version its state was written at; see [`crate::versions`].
    pub fn state_version(mut self, version: u32) -> Self {
        self.versions.current = version;
        self
    }

    /// Registers how a stored state at version `from` becomes version `from + 1`: a function
    /// over the state's JSON. Reading a state several versions old runs each migration in turn.
    pub fn migrate_state<F>(mut self, from: u32, migration: F) -> Self
    where
        F: Fn(serde_json::Value) -> Result<serde_json::Value, BoxError> + Send + Sync + 'static,
    {
        if self.versions.migrations.insert(from, Arc::new(migration)).is_some() {
            self.error.get_or_insert(BuildError::DuplicateMigration { from }.into());
        }
        self
    }

    /// When a checkpoint writes the state as a delta from the previous one (default
    /// [`DeltaPolicy::default`]: states from 4 KiB, up to 32 deltas between whole ones), on
    /// stores that keep deltas (SQLite and PostgreSQL). `None` writes every checkpoint whole: the store's
    /// `state` column then always holds the latest state, for SQL readers. See [`crate::delta`].
    pub fn state_deltas(mut self, policy: Option<DeltaPolicy>) -> Self {
        self.delta_policy = policy;
        self
    }

    /// Adds an observer that receives every event of every run, in order.
    pub fn observe(mut self, observer: impl Observer) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Adds every step of `other` (same state type) to this flow: the way to reuse a set of
    /// steps in several flows, or to extend a flow defined with `#[flow]`.
    pub fn include(mut self, other: FlowBuilder<S>) -> Self {
        if self.error.is_none() {
            self.error = other.error;
        }
        self.steps.extend(other.steps);
        self.observers.extend(other.observers);
        self.input = self.input.or(other.input);
        self.feedback = self.feedback.or(other.feedback);
        self.store = self.store.or(other.store);
        self.default_store = self.default_store.or(other.default_store);
        if self.versions.current == 0 && self.versions.migrations.is_empty() {
            self.versions = other.versions;
        }
        self
    }

    /// The definition as it stands, without handlers.
    pub fn spec(&self) -> GraphSpec {
        GraphSpec { name: self.name.clone(), steps: self.steps.iter().map(StepDef::effective_spec).collect() }
    }

    /// Validates the definition and builds the flow.
    pub fn build(self) -> Result<Flow<S>, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let graph = self.spec().compile()?;
        if let Some(from) = self.versions.migrations.keys().find(|&&from| from >= self.versions.current) {
            return Err(BuildError::MigrationAhead { from: *from, current: self.versions.current }.into());
        }
        self.check_feedback(self.store.is_some() || self.default_store.is_some())?;
        let store = self.store.or_else(|| self.default_store.map(|make| make()));
        let selective = self.steps.iter().any(|d| d.persisted);
        let steps = self
            .steps
            .into_iter()
            .map(|d| {
                let handler = if d.blocking { on_blocking_pool(d.handler) } else { d.handler };
                let handler = match &d.feedback {
                    Some(config) => with_feedback(handler, config.clone(), d.spec.router.is_some()),
                    None => handler,
                };
                StepRuntime {
                    name: d.spec.name,
                    handler,
                    when: d.when,
                    persisted: d.persisted,
                    feedback: d.feedback,
                    retry: d.retry,
                }
            })
            .collect();
        Ok(Flow::from_inner(FlowInner {
            graph,
            steps,
            max_steps: self.max_steps,
            cancel_grace: self.cancel_grace,
            observers: self.observers.into(),
            input: self.input,
            feedback: self.feedback,
            store,
            lease: self.lease,
            selective,
            versions: self.versions,
            delta_policy: self.delta_policy,
        }))
    }

    #[track_caller]
    fn add<I: 'static, O: 'static>(
        mut self,
        name: &str,
        start: StartKind,
        trigger: Option<Trigger>,
        router: Option<RouterSpec>,
        handler: Handler<S>,
    ) -> Self {
        let input = TypeInfo::of::<I>();
        let spec = StepSpec {
            name: Arc::from(name),
            start,
            trigger,
            router,
            input: (!input.is_unit()).then_some(input),
            output: Some(TypeInfo::of::<O>()),
            // The user's call of `start`, `listen`, ... (every method down to here tracks its caller).
            source: Some(SourceLocation::from(std::panic::Location::caller())),
        };
        self.steps.push(StepDef {
            spec,
            handler,
            when: None,
            persisted: false,
            feedback: None,
            retry: None,
            blocking: false,
        });
        self
    }

    /// Feedback configurations are sound, and a flow whose feedback may pause keeps a store.
    fn check_feedback(&self, has_store: bool) -> Result<(), Error> {
        for d in &self.steps {
            let Some(config) = &d.feedback else { continue };
            config.check(&d.spec.name, d.spec.router.is_some())?;
            let pauses = config.provider.as_ref().or(self.feedback.as_ref()).is_some_and(|p| p.pauses());
            if pauses && !has_store {
                return Err(Error::Feedback(FeedbackError::PauseWithoutStore {
                    flow: self.name.clone(),
                    step: d.spec.name.to_string(),
                }));
            }
        }
        Ok(())
    }

    fn with_last_router(&mut self, modifier: &str, f: impl FnOnce(&mut RouterSpec)) {
        match self.steps.last_mut().map(|s| (s.spec.name.clone(), s.spec.router.as_mut())) {
            Some((_, Some(r))) => f(r),
            Some((name, None)) => {
                self.error.get_or_insert(
                    BuildError::ModifierOnNonRouter { modifier: modifier.into(), step: name.to_string() }.into(),
                );
            }
            None => {
                self.error.get_or_insert(BuildError::ModifierWithoutStep { modifier: modifier.into() }.into());
            }
        }
    }
}

impl<S> StepDef<S> {
    /// The step as the graph sees it: a step with feedback outcomes routes by them, and a
    /// reviewed plain step outputs a [`FeedbackResult`].
    fn effective_spec(&self) -> StepSpec {
        let mut spec = self.spec.clone();
        let Some(config) = &self.feedback else { return spec };
        if spec.router.is_some() {
            return spec;
        }
        spec.output = Some(TypeInfo::of::<FeedbackResult>());
        if !config.emit.is_empty() {
            spec.router = Some(RouterSpec {
                labels: config.emit.clone(),
                terminal: config.emit.clone(),
                route_type: <String as Route>::TYPE_NAME,
            });
        }
        spec
    }
}

/// Runs the feedback phase after the step's body (see [`crate::feedback`]).
fn with_feedback<S: FlowState>(handler: Handler<S>, config: Arc<HumanFeedback>, is_router: bool) -> Handler<S> {
    Arc::new(move |cx: Cx<S>, payload: Option<Output>| -> BoxFuture<Completion> {
        let body = handler(cx.clone(), payload);
        let config = config.clone();
        Box::pin(async move {
            let mut completion = body.await;
            if let Ok(outcome) = completion.result {
                completion.result = crate::review::after_step(&cx, &config, outcome, is_router).await;
            }
            completion
        })
    })
}

fn router_spec<R: Route>() -> RouterSpec {
    RouterSpec {
        labels: R::LABELS.unwrap_or_default().iter().map(|l| Arc::from(*l)).collect(),
        terminal: R::TERMINAL.iter().map(|l| Arc::from(*l)).collect(),
        route_type: R::TYPE_NAME,
    }
}

/// Drives a step's future on the blocking pool (see [`FlowBuilder::blocking`]).
fn on_blocking_pool<S: FlowState>(handler: Handler<S>) -> Handler<S> {
    Arc::new(move |cx: Cx<S>, payload: Option<Output>| -> BoxFuture<Completion> {
        let (activation, run_id, step) = (cx.activation(), cx.run_id(), cx.step().to_string());
        let body = handler(cx, payload);
        Box::pin(async move {
            let started = Instant::now();
            let runtime = tokio::runtime::Handle::current();
            // Panics are caught inside `body` already; a join error is the runtime shutting down.
            tokio::task::spawn_blocking(move || runtime.block_on(body)).await.unwrap_or_else(|e| Completion {
                activation,
                result: Err(Error::StepFailed { step, run_id, source: e.to_string().into() }),
                elapsed: started.elapsed(),
            })
        })
    })
}

/// Wraps a typed handler into the engine's erased form.
fn erase<S, I, O, F, Fut>(name: &str, handler: F, finish: fn(O) -> StepOutcome) -> Handler<S>
where
    S: FlowState,
    F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    I: DeserializeOwned + Clone + Send + 'static,
    O: Send + 'static,
{
    let name: Arc<str> = Arc::from(name);
    Arc::new(move |cx: Cx<S>, payload: Option<Output>| -> BoxFuture<Completion> {
        let activation = cx.activation();
        let run_id = cx.run_id();
        let scope = cx.scope();
        let failed = move |name: &Arc<str>, source: crate::error::BoxError| Error::StepFailed {
            step: name.to_string(),
            run_id,
            source,
        };
        // The closure's synchronous part runs here: a panic in it is the step's failure too.
        let body = extract_input::<I>(payload.as_ref(), &name).and_then(|input| {
            std::panic::catch_unwind(AssertUnwindSafe(|| handler(cx, input)))
                .map_err(|panic| failed(&name, panic_message(panic).into()))
        });
        let name = name.clone();
        match body {
            Err(e) => {
                Box::pin(futures::future::ready(Completion { activation, result: Err(e), elapsed: Duration::ZERO }))
            }
            // Combinators rather than an `async` block: a block would keep the body both as its
            // capture and inside the future it awaits, and every step in flight holds this.
            // The clock starts at the first poll (a retried step's backoff is not its time).
            Ok(body) => {
                let entered = AssertUnwindSafe(scope.enter(body)).catch_unwind();
                Box::pin(futures::future::lazy(|_| Instant::now()).then(move |started| {
                    entered.map(move |caught| {
                        let result = match caught {
                            Ok(Ok(out)) => Ok(finish(out)),
                            Ok(Err(e)) => Err(failed(&name, e.into_boxed())),
                            Err(panic) => Err(failed(&name, panic_message(panic).into())),
                        };
                        Completion { activation, result, elapsed: started.elapsed() }
                    })
                }))
            }
        }
    })
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    format!("the step panicked: {}", crate::error::panic_text(&*panic))
}

fn plain<S, I, O, F, Fut>(name: &str, handler: F) -> Handler<S>
where
    S: FlowState,
    F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    I: DeserializeOwned + Clone + Send + 'static,
    O: Serialize + Send + Sync + 'static,
{
    erase(name, handler, |out| StepOutcome { output: Output::new(out), label: None, pause: None })
}

fn routing<S, I, R, F, Fut>(name: &str, handler: F) -> Handler<S>
where
    S: FlowState,
    F: Fn(Cx<S>, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, StepError>> + Send + 'static,
    I: DeserializeOwned + Clone + Send + 'static,
    R: Route,
{
    erase(name, handler, |route: R| {
        let label = Arc::from(route.label().as_ref());
        StepOutcome { output: Output::new(route), label: Some(label), pause: None }
    })
}
