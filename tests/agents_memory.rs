//! Agent memory on a real SQLite file: recall before the work, remember after it, in a scope
//! of the agent's own; a task remembers only the answer its guardrail accepted; a retried
//! step does not remember twice; a broken store fails the kickoff before the model is called;
//! recalls, rememberings and failures are events of the step.
//!
//! With `CREWFLOW_TEST_LOCAL_MODELS=1` (after `scripts/fetch-models`) the memories are
//! embedded by the local embedding model, `AgentMemory::local`, the default — and the test
//! checks that nothing but the chat model was asked over the network. Without it they use
//! the hash embedder of the memory tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::http::{Recorded, TestServer, openai_completion, openai_llm};
use crewflow::agents::{Agent, AgentError, AgentMemory, Crew, Inputs, Task};
use crewflow::llm::HashEmbedder;
use crewflow::memory::Memory;
use crewflow::prelude::*;
use crewflow::store::SqliteStore;
use crewflow::{FlowBuilder, Retry};

/// The agents' memory in the SQLite file `db`: the default (local) embedder when the local
/// models are installed, else the hash embedder.
fn memory_in(db: &Path) -> AgentMemory {
    if cfg!(crewflow_local_model_tests) {
        AgentMemory::local(SqliteStore::open(db))
    } else {
        AgentMemory::new(Memory::new(SqliteStore::open(db), HashEmbedder::default()))
    }
}

/// The memories kept in `db` under `scope`, newest first, read with a memory of its own (as
/// another process would).
async fn kept(db: &Path, scope: &str) -> Vec<crewflow::memory::MemoryRecord> {
    Memory::new(SqliteStore::open(db), HashEmbedder::default()).list(scope, 100, 0).await.unwrap()
}

fn user_prompt(r: &Recorded) -> String {
    r.json()["messages"][1]["content"].as_str().unwrap().to_string()
}

/// Only the chat model was asked: memory made no call over the network.
fn only_chat_calls(server: &TestServer) {
    for r in server.requests() {
        assert_eq!(r.path, "/v1/chat/completions", "memory must not call out: {} {}", r.method, r.path);
    }
}

#[tokio::test]
async fn an_agent_remembers_its_answers_and_recalls_them_in_its_own_scope() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let server = TestServer::start(vec![
        openai_completion("Lighthouses focus their light with Fresnel lenses."),
        openai_completion("With Fresnel lenses, as I found before."),
        openai_completion("A poem."),
    ])
    .await;
    let llm = openai_llm(&server);
    let researcher =
        || Agent::new(llm.clone()).role("{topic} Researcher").goal("Find facts on {topic}.").memory(memory_in(&db));
    let inputs = Inputs::from([("topic", "lighthouses")]);

    let first = researcher().kickoff_with("How do {topic} focus their light?", &inputs).await.unwrap();
    assert_eq!(first.raw, "Lighthouses focus their light with Fresnel lenses.");
    assert!(!user_prompt(&server.requests()[0]).contains("What you remember"), "nothing to recall yet");

    let memories = kept(&db, "agent/topic-researcher").await;
    assert_eq!(memories.len(), 1, "{memories:?}");
    let m = &memories[0];
    assert_eq!(m.scope, "/agent/topic-researcher", "scoped by the role as written");
    assert!(m.content.contains("How do lighthouses focus their light?"), "{}", m.content);
    assert!(m.content.contains("Fresnel lenses"), "{}", m.content);
    assert_eq!(m.source.as_deref(), Some("agent"));
    assert_eq!(m.metadata["agent"], "lighthouses Researcher");
    if cfg!(crewflow_local_model_tests) {
        assert!(m.model.starts_with("local/"), "the default embedder is the local model: {}", m.model);
    }

    // A new agent over the same file (another process, later) recalls it with its prompt.
    let second = researcher().kickoff_with("What lens do {topic} use?", &inputs).await.unwrap();
    assert_eq!(second.raw, "With Fresnel lenses, as I found before.");
    let prompt = user_prompt(&server.requests()[1]);
    assert!(prompt.starts_with("What lens do lighthouses use?"), "{prompt}");
    assert!(prompt.contains("What you remember from earlier work") && prompt.contains("Fresnel lenses"), "{prompt}");
    assert_eq!(kept(&db, "agent/topic-researcher").await.len(), 2);

    // Another agent on the same store reads none of the researcher's memories.
    let poet = Agent::new(llm.clone()).role("Poet").memory(memory_in(&db));
    poet.kickoff("Write a poem about lenses.").await.unwrap();
    let prompt = user_prompt(&server.requests()[2]);
    assert!(!prompt.contains("What you remember"), "{prompt}");
    assert_eq!(kept(&db, "agent/poet").await.len(), 1);
    only_chat_calls(&server);
}

#[tokio::test]
async fn a_task_remembers_only_the_answer_its_guardrail_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let server = TestServer::start(vec![
        openai_completion("Tides."),
        openai_completion("Tides rise and fall twice a day, pulled by the moon."),
    ])
    .await;
    let agent = Agent::new(openai_llm(&server)).role("Researcher").memory(memory_in(&db).limit(3));
    let task = Task::new("tides", "Explain {topic}.")
        .agent(agent.clone())
        .guardrail(|o: &crewflow::agents::TaskOutput| if o.raw.len() > 20 { Ok(()) } else { Err("say more".into()) });
    let out = Crew::new([agent], [task]).kickoff(&Inputs::from([("topic", "tides")])).await.unwrap();
    assert_eq!(out.tasks[0].attempts, 2);
    let memories = kept(&db, "agent/researcher").await;
    assert_eq!(memories.len(), 1, "the rejected answer is not remembered: {memories:?}");
    assert!(memories[0].content.starts_with("Task: Explain tides."), "{}", memories[0].content);
    assert!(memories[0].content.contains("twice a day"), "{}", memories[0].content);
    assert_eq!(memories[0].metadata["task"], "tides");
    only_chat_calls(&server);
}

/// In a durable run, the recall and the remembering are journaled: a retried step replays
/// them (and the model call) and the answer is remembered once; the retry's memory events say
/// they are replays.
#[tokio::test]
async fn a_retried_step_remembers_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let server = TestServer::start(vec![openai_completion("Kelp grows half a metre a day.")]).await;
    let llm = openai_llm(&server);
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tries, memory_db) = (attempts.clone(), db.clone());
    let (events, observer) = observed();
    let flow = FlowBuilder::<()>::new("remembering")
        .start("research", move |_cx: Cx<()>, (): ()| {
            let (llm, tries, memory_db) = (llm.clone(), tries.clone(), memory_db.clone());
            async move {
                let agent = Agent::new(llm).role("Researcher").memory(memory_in(&memory_db));
                let out = agent.kickoff("How fast does kelp grow?").await?;
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StepError::msg("a failure after the agent"));
                }
                Ok::<_, StepError>(out.raw)
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        // The run store and the memory share the file.
        .store(SqliteStore::open(&db))
        .observe(observer)
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "Kelp grows half a metre a day.");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests().len(), 1, "the retry made no model call");
    assert_eq!(kept(&db, "agent/researcher").await.len(), 1, "remembered once over both attempts");
    let replays: Vec<(&str, bool)> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MemoryRecalled { replayed, .. } => Some(("recalled", *replayed)),
            EventKind::MemorySaved { replayed, .. } => Some(("saved", *replayed)),
            _ => None,
        })
        .collect();
    assert_eq!(replays, [("recalled", false), ("saved", false), ("recalled", true), ("saved", true)]);
}

#[tokio::test]
async fn a_memory_that_cannot_open_its_store_fails_the_kickoff_before_the_model_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![openai_completion("never sent")]).await;
    // A directory is not a SQLite file.
    let memory = AgentMemory::new(Memory::new(SqliteStore::open(dir.path()), HashEmbedder::default()));
    let err = Agent::new(openai_llm(&server)).role("Researcher").memory(memory).kickoff("Go.").await.unwrap_err();
    assert!(matches!(err, AgentError::Memory { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("agent \"Researcher\": its memory failed") && text.contains("memory store"), "{text}");
    assert!(server.requests().is_empty(), "the model was not called");
}

/// The events of a flow's runs, kept by an observer.
fn observed() -> (Arc<std::sync::Mutex<Vec<Event>>>, impl Fn(&Event) + Send + Sync + 'static) {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    (events, move |e: &Event| seen.lock().unwrap().push(e.clone()))
}

/// A flow whose one step kicks off `agent` with each of `prompts`, in turn.
fn asking(
    agent: Agent,
    prompts: &'static [&'static str],
    observer: impl Fn(&Event) + Send + Sync + 'static,
) -> Flow<()> {
    FlowBuilder::<()>::new("remembering")
        .start("research", move |_cx: Cx<()>, (): ()| {
            let agent = agent.clone();
            async move {
                for prompt in prompts {
                    agent.kickoff(*prompt).await?;
                }
                Ok::<_, StepError>(())
            }
        })
        .observe(observer)
        .build()
        .unwrap()
}

/// Recalling and remembering are events of the step, among the agent's own: the recall (its
/// query, how many memories it found, how long it took) after `agent_started`, the
/// remembering after `agent_finished`.
#[tokio::test]
async fn recalls_and_rememberings_are_events_of_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("memory.db");
    let server = TestServer::start(vec![openai_completion("Fresnel lenses."), openai_completion("Fresnel.")]).await;
    let agent = Agent::new(openai_llm(&server)).role("Researcher").memory(memory_in(&db));
    let (events, observer) = observed();
    let prompts = &["How do lighthouses focus light?", "What lens do lighthouses use?"];
    asking(agent, prompts, observer).kickoff(()).await.unwrap();

    let events = events.lock().unwrap();
    let agents: Vec<&Event> =
        events.iter().filter(|e| e.kind.name().starts_with("agent_") || e.kind.name().starts_with("memory_")).collect();
    let names: Vec<&str> =
        agents.iter().filter(|e| e.kind.name() != "agent_iteration").map(|e| e.kind.name()).collect();
    let once = ["agent_started", "memory_recalled", "agent_finished", "memory_saved"];
    assert_eq!(names, [once, once].concat());
    assert!(agents.iter().all(|e| e.step.as_deref() == Some("research")), "nested under the step");
    let recalls: Vec<(&str, &str, usize, u64)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MemoryRecalled { agent, query, count, elapsed_us, replayed: false } => {
                Some((agent.as_str(), query.as_str(), *count, *elapsed_us))
            }
            _ => None,
        })
        .collect();
    assert_eq!(recalls.len(), 2);
    assert_eq!(recalls[0].0, "Researcher");
    assert_eq!((recalls[0].1, recalls[0].2), (prompts[0], 0), "nothing to recall yet");
    assert_eq!((recalls[1].1, recalls[1].2), (prompts[1], 1), "the first answer is recalled");
    assert!(recalls[1].3 > 0, "a recall that embedded and searched took time");
    let saved: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MemorySaved { agent, elapsed_us, replayed: false } if agent == "Researcher" => Some(*elapsed_us),
            _ => None,
        })
        .collect();
    assert!(saved.len() == 2 && saved.iter().all(|us| *us > 0), "{saved:?}");
    let json = serde_json::to_value(agents[1]).unwrap();
    assert_eq!(json["type"], "memory_recalled");
    assert_eq!(json["count"], 0);
}

/// A memory that fails is a `memory_failed` event of the step, naming the operation, before
/// the step fails; the model is not called.
#[tokio::test]
async fn a_failing_memory_is_an_event_of_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(vec![openai_completion("never sent")]).await;
    // A directory is not a SQLite file.
    let memory = AgentMemory::new(Memory::new(SqliteStore::open(dir.path()), HashEmbedder::default()));
    let agent = Agent::new(openai_llm(&server)).role("Researcher").memory(memory);
    let (events, observer) = observed();
    let err = asking(agent, &["Go."], observer).kickoff(()).await.unwrap_err();
    assert!(err.to_string().contains("its memory failed"), "{err}");
    let events = events.lock().unwrap();
    let failed: Vec<(&str, &str, &str)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::MemoryFailed { agent, operation, error } if e.step.as_deref() == Some("research") => {
                Some((agent.as_str(), operation.as_str(), error.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!((failed[0].0, failed[0].1), ("Researcher", "recall"));
    assert!(failed[0].2.contains("memory store"), "{}", failed[0].2);
    assert!(events.iter().all(|e| !matches!(e.kind, EventKind::MemoryRecalled { .. })));
    assert!(server.requests().is_empty(), "the model was not called");
}
