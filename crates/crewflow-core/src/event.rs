//! Events: one ordered stream per run.
//!
//! Every event carries the run's id, a sequence number (strictly increasing within the run), a
//! timestamp and the step that caused it. Events are delivered in sequence order to the flow's
//! [`Observer`]s (synchronously, by the run itself) and to a run's [`EventStream`] (through a
//! channel), so subscribers always see them in the order they happened. When nobody observes a
//! run, no event is even built.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::id::RunId;
use crate::output::Output;

/// Something that happened in a run.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Position in the run's stream, from 1, strictly increasing.
    pub seq: u64,
    /// The run.
    pub run_id: RunId,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The step that caused it, if any.
    pub step: Option<Arc<str>>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The run started (after its inputs were merged into the state).
    RunStarted {
        /// The flow's name.
        flow: Arc<str>,
        /// The kickoff inputs, if any.
        inputs: Option<Value>,
    },
    /// A stored run continued from its last checkpoint ([`Flow::resume`](crate::Flow::resume)).
    ///
    /// Observers of the resumed run see the events from here on: the steps completed before
    /// the checkpoint are not replayed as events (their outputs are in the store:
    /// `Run::steps`, `RunStore::load_run`). `steps_done` says how many there were.
    RunResumed {
        /// The flow's name.
        flow: Arc<str>,
        /// The checkpoint it continued from (0: the run's start).
        checkpoint: u64,
        /// How many step executions were already done.
        steps_done: u64,
    },
    /// A step execution started.
    StepStarted {
        /// The execution's id within the run.
        activation: u64,
        /// The `seq` of the event that triggered it (none for starts run at kickoff).
        triggered_by: Option<u64>,
        /// The input it was given.
        input: Option<Output>,
    },
    /// A step execution finished.
    StepFinished {
        /// The execution's id within the run.
        activation: u64,
        /// Its output.
        output: Output,
        /// How long it ran, in microseconds.
        elapsed_us: u64,
    },
    /// A step execution failed.
    StepFailed {
        /// The execution's id within the run.
        activation: u64,
        /// The error, as text.
        error: Arc<str>,
    },
    /// A step execution failed and runs again (its step has a [`Retry`](crate::Retry)).
    StepRetrying {
        /// The execution's id within the run (the next attempt keeps it).
        activation: u64,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// The error, as text.
        error: Arc<str>,
        /// The wait before the next attempt, in milliseconds.
        delay_ms: u64,
    },
    /// A router chose a route.
    RouteTaken {
        /// The router execution's id within the run.
        activation: u64,
        /// The label dispatched.
        label: Arc<str>,
    },
    /// The run finished.
    RunFinished {
        /// The run's output (see [`Frontier::final_activation`](crate::frontier::Frontier::final_activation)).
        output: Option<Output>,
        /// How many step executions ran.
        steps: u64,
    },
    /// The run failed.
    RunFailed {
        /// The error, as text.
        error: Arc<str>,
    },
    /// The run was cancelled.
    RunCancelled,
    /// A step asked for input ([`Cx::ask`](crate::Cx::ask)).
    InputRequested {
        /// The question.
        message: String,
        /// The metadata sent with it.
        metadata: Option<Value>,
    },
    /// The answer to a question came (or the wait ended).
    InputReceived {
        /// The question.
        message: String,
        /// The answer's text; `None` when it timed out or the input was closed.
        response: Option<String>,
        /// True when nobody answered in time.
        timed_out: bool,
    },
    /// A model call started.
    LlmCallStarted {
        /// The call's number within the run (pairs its events).
        call: u64,
        /// The provider (`openai`, `anthropic`, `local`, ...).
        provider: Arc<str>,
        /// The model.
        model: Arc<str>,
        /// The sampling parameters and request options (temperature, top_p, max_tokens, seed,
        /// stop, tools, response format), as JSON.
        params: Value,
        /// Whether the reply streams.
        stream: bool,
    },
    /// A piece of a streamed reply.
    LlmChunk {
        /// The call.
        call: u64,
        /// The text added.
        text: String,
    },
    /// A model call finished.
    LlmCallFinished {
        /// The call.
        call: u64,
        /// The provider.
        provider: Arc<str>,
        /// The model that answered (as the provider reports it).
        model: Arc<str>,
        /// Why the model stopped (`stop`, `length`, `tool_calls`, ...).
        finish_reason: Option<String>,
        /// Tokens used.
        usage: crate::scope::TokenUsage,
        /// The provider's id of the response.
        response_id: Option<String>,
        /// How long the call took, in milliseconds.
        latency_ms: f64,
    },
    /// A model call failed (after its retries).
    LlmCallFailed {
        /// The call.
        call: u64,
        /// The provider.
        provider: Arc<str>,
        /// The model.
        model: Arc<str>,
        /// The error, as text.
        error: Arc<str>,
    },
    /// A model asked for a tool to be called (one event per requested call, after the model
    /// call's `llm_call_finished`).
    ToolCallRequested {
        /// The model call that asked.
        call: u64,
        /// The tool call's id (pairs it with its result).
        id: String,
        /// The tool.
        name: String,
        /// The arguments, as JSON text.
        arguments: String,
    },
    /// An agent started working on a prompt (`crewflow-agents`). Its model calls, tool calls
    /// and results follow as events of the same step, then `agent_finished` or `agent_failed`.
    AgentStarted {
        /// The agent's role.
        agent: String,
        /// The tools it may call.
        tools: Vec<String>,
        /// Its iteration limit (one model call per iteration).
        max_iter: u32,
    },
    /// An agent's loop began an iteration: one model call, then the tool calls it asks for.
    AgentIteration {
        /// The agent's role.
        agent: String,
        /// The iteration, from 1.
        iteration: u32,
        /// True for the forced final answer after `max_iter` (no tools offered).
        forced: bool,
    },
    /// A tool call began (after its arguments were checked; see `tool_call_finished`).
    ToolCallStarted {
        /// The tool call's id (as in `tool_call_requested`).
        id: String,
        /// The tool.
        name: String,
        /// The arguments, as JSON text.
        arguments: String,
    },
    /// A tool call ended. `result` is what the model is given back, errors included.
    ToolCallFinished {
        /// The tool call's id.
        id: String,
        /// The tool.
        name: String,
        /// `ok`, `error` (the tool failed), `invalid` (arguments rejected before the call),
        /// `unknown` (no such tool), `timeout`, `budget` (the tool's call budget was spent),
        /// `repeated` (answered from an identical earlier call) or `cached` (from the result cache).
        outcome: String,
        /// The text given to the model.
        result: String,
        /// How long the call took, in microseconds (0 when answered without calling).
        elapsed_us: u64,
    },
    /// An agent gave its final answer.
    AgentFinished {
        /// The agent's role.
        agent: String,
        /// How many iterations it took.
        iterations: u32,
        /// Tokens used over the whole loop.
        usage: crate::scope::TokenUsage,
        /// True when the answer was forced after `max_iter`.
        forced: bool,
    },
    /// An agent failed (its model failed, its time ran out, its output stayed invalid).
    AgentFailed {
        /// The agent's role.
        agent: String,
        /// The error, as text.
        error: String,
    },
    /// An agent with memory recalled what it remembers about its prompt, before its first model
    /// call (`crewflow-agents`, `AgentMemory`). Inside a durable run a step that runs again
    /// replays the recall from the journal: the event comes again, `replayed`, with the
    /// replay's time.
    MemoryRecalled {
        /// The agent's role.
        agent: String,
        /// What was looked up: the prompt (its first 2,000 characters).
        query: String,
        /// How many memories were found (at most the memory's limit).
        count: usize,
        /// How long the recall took (embedding the query and searching), in microseconds.
        elapsed_us: u64,
        /// The recall was read back from the run's journal (the step runs again), not made now.
        #[serde(default)]
        replayed: bool,
    },
    /// An agent with memory remembered a prompt and its accepted answer (`crewflow-agents`).
    /// A step that runs again does not remember twice: its event is `replayed`.
    MemorySaved {
        /// The agent's role.
        agent: String,
        /// How long it took (embedding and storing), in microseconds.
        elapsed_us: u64,
        /// The memory was saved by an earlier run of the step (read back from the journal);
        /// nothing was stored now.
        #[serde(default)]
        replayed: bool,
    },
    /// An agent's memory failed (its store, its embedder, or a local embedding model that is
    /// not installed); the kickoff fails with `AgentError::Memory` (or the configuration error).
    MemoryFailed {
        /// The agent's role.
        agent: String,
        /// `recall` (before the model was called) or `remember` (after the answer).
        operation: String,
        /// The error, as text.
        error: String,
    },
    /// A step's output was put to a reviewer ([`HumanFeedback`](crate::HumanFeedback)).
    FeedbackRequested {
        /// The question.
        message: String,
        /// The output under review.
        output: Value,
        /// The outcomes the answer maps to.
        emit: Vec<String>,
    },
    /// The reviewer answered.
    FeedbackReceived {
        /// The reviewer's words.
        feedback: String,
        /// The outcome dispatched, if the step has outcomes.
        outcome: Option<String>,
    },
    /// The output under review was improved with lessons of earlier reviews
    /// ([`HumanFeedback::learn`](crate::HumanFeedback::learn)); the reviewer sees this one.
    FeedbackImproved {
        /// The improved output.
        output: Value,
    },
    /// Lessons were distilled from the reviewer's answer and kept.
    FeedbackLearned {
        /// The lessons kept (empty when there was nothing new to keep).
        lessons: Vec<String>,
    },
    /// Learning from a review failed; the run went on (a warning).
    FeedbackLearnFailed {
        /// `improve` (before review: the raw output was shown) or `learn` (after: nothing
        /// was kept).
        phase: String,
        /// What went wrong.
        error: String,
    },
    /// The run paused, waiting for feedback; it is checkpointed and can be resumed anywhere.
    RunPaused {
        /// The question waiting for an answer.
        message: String,
    },
    /// An event a step emitted with [`Cx::emit`](crate::Cx::emit).
    Custom {
        /// Its name.
        name: Arc<str>,
        /// Its data.
        data: Value,
    },
}

impl EventKind {
    /// A short name for the kind, e.g. `step_finished`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::RunStarted { .. } => "run_started",
            EventKind::RunResumed { .. } => "run_resumed",
            EventKind::StepStarted { .. } => "step_started",
            EventKind::StepFinished { .. } => "step_finished",
            EventKind::StepFailed { .. } => "step_failed",
            EventKind::StepRetrying { .. } => "step_retrying",
            EventKind::RouteTaken { .. } => "route_taken",
            EventKind::RunFinished { .. } => "run_finished",
            EventKind::RunFailed { .. } => "run_failed",
            EventKind::RunCancelled => "run_cancelled",
            EventKind::LlmCallStarted { .. } => "llm_call_started",
            EventKind::LlmChunk { .. } => "llm_chunk",
            EventKind::LlmCallFinished { .. } => "llm_call_finished",
            EventKind::LlmCallFailed { .. } => "llm_call_failed",
            EventKind::InputRequested { .. } => "input_requested",
            EventKind::InputReceived { .. } => "input_received",
            EventKind::ToolCallRequested { .. } => "tool_call_requested",
            EventKind::AgentStarted { .. } => "agent_started",
            EventKind::AgentIteration { .. } => "agent_iteration",
            EventKind::ToolCallStarted { .. } => "tool_call_started",
            EventKind::ToolCallFinished { .. } => "tool_call_finished",
            EventKind::AgentFinished { .. } => "agent_finished",
            EventKind::AgentFailed { .. } => "agent_failed",
            EventKind::MemoryRecalled { .. } => "memory_recalled",
            EventKind::MemorySaved { .. } => "memory_saved",
            EventKind::MemoryFailed { .. } => "memory_failed",
            EventKind::FeedbackRequested { .. } => "feedback_requested",
            EventKind::FeedbackReceived { .. } => "feedback_received",
            EventKind::FeedbackImproved { .. } => "feedback_improved",
            EventKind::FeedbackLearned { .. } => "feedback_learned",
            EventKind::FeedbackLearnFailed { .. } => "feedback_learn_failed",
            EventKind::RunPaused { .. } => "run_paused",
            EventKind::Custom { .. } => "custom",
        }
    }
}

impl Serialize for Output {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.to_json().map_err(serde::ser::Error::custom)?.serialize(serializer)
    }
}

/// Receives every event of every run of a flow, in order, synchronously.
///
/// Observers run on the run's own task, so they should be quick (hand heavy work to a channel).
/// Closures `Fn(&Event)` are observers.
pub trait Observer: Send + Sync + 'static {
    /// Called once per event, in sequence order.
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync + 'static> Observer for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

/// The events of one run, as a stream (see [`Flow::stream`](crate::Flow::stream)). It ends
/// after the run's last event.
pub struct EventStream(UnboundedReceiver<Event>);

impl EventStream {
    /// The next event, or `None` once the run is over and every event was delivered.
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }
}

impl futures::Stream for EventStream {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.0.poll_recv(cx)
    }
}

/// One run's event emitter: assigns sequence numbers and delivers in order.
pub(crate) struct EventHub {
    observers: Arc<[Arc<dyn Observer>]>,
    inner: Mutex<HubInner>,
    active: bool,
}

struct HubInner {
    seq: u64,
    stream: Option<UnboundedSender<Event>>,
}

impl EventHub {
    pub fn new(observers: Arc<[Arc<dyn Observer>]>, stream: Option<UnboundedSender<Event>>) -> Self {
        let active = !observers.is_empty() || stream.is_some();
        EventHub { observers, inner: Mutex::new(HubInner { seq: 0, stream }), active }
    }

    /// Whether anyone listens; when not, events are not built at all.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Emits an event and returns its sequence number (0 when nobody listens).
    pub fn emit(&self, run_id: RunId, step: Option<&Arc<str>>, kind: impl FnOnce() -> EventKind) -> u64 {
        if !self.active {
            return 0;
        }
        let kind = kind();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.seq += 1;
        let event = Event { seq: inner.seq, run_id, at: Utc::now(), step: step.cloned(), kind };
        for o in self.observers.iter() {
            o.on_event(&event);
        }
        let seq = event.seq;
        if let Some(tx) = &inner.stream
            && tx.send(event).is_err()
        {
            inner.stream = None; // the receiver is gone: stop sending
        }
        seq
    }
}

/// Creates the channel behind an [`EventStream`].
pub(crate) fn stream_channel() -> (UnboundedSender<Event>, EventStream) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, EventStream(rx))
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
