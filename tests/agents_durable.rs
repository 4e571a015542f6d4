//! Agents are durable to the tool call: inside a persisted run, each model reply and each
//! tool result is recorded in the run's journal as it happens, so a step that runs again does
//! not repeat a recorded model call or tool call.
//!
//! The crash test kills a real process (SIGKILL) between two tool calls of an agent's loop
//! and resumes the run in another process: the first tool ran exactly once, the model was
//! asked exactly as often as an uninterrupted run asks it (the scripted server, in this
//! process, counts). The processes are this test binary, re-executed in the role given by
//! `AGENT_ROLE`; the model is the loopback server of the parent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::http::{TestServer, openai_completion, openai_llm, openai_tool_calls};
use crewflow::agents::{Agent, Crew, Inputs, Process, Task, ToolFn};
use crewflow::prelude::*;
use crewflow::store::{RunStore, SqliteStore};
use crewflow::{FlowBuilder, Retry, RunId};
use serde::Deserialize;
use serde_json::json;

fn effect(side: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(side).unwrap();
    writeln!(f, "{line}").unwrap();
    f.sync_data().unwrap();
}

fn side_lines(side: &Path) -> Vec<String> {
    std::fs::read_to_string(side).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Order {
    order: String,
}

/// One step: an agent with a `charge` and a `mail` tool, each leaving a line in the side file.
/// `mail` first waits `pause` (the kill comes there, after `charge`'s result was recorded).
fn checkout(store: Arc<dyn RunStore>, model_url: String, side: PathBuf, pause: Duration) -> Flow<()> {
    FlowBuilder::<()>::new("agent_checkout")
        .start("pay", move |_cx: Cx<()>, (): ()| {
            let (side, model_url) = (side.clone(), model_url.clone());
            async move {
                let s1 = side.clone();
                let charge = ToolFn::new("charge", "Charges an order.", move |o: Order| {
                    let s = s1.clone();
                    async move {
                        effect(&s, &format!("charge {}", o.order));
                        Ok::<_, String>(format!("receipt for {}", o.order))
                    }
                });
                let s2 = side.clone();
                let mail = ToolFn::new("mail", "Mails the receipt.", move |o: Order| {
                    let s = s2.clone();
                    async move {
                        tokio::time::sleep(pause).await;
                        effect(&s, &format!("mail {}", o.order));
                        Ok::<_, String>("mailed".to_string())
                    }
                });
                let llm = crewflow::llm::Llm::with_options(
                    "openai/gpt-4o-mini",
                    crewflow::llm::LlmOptions::default()
                        .base_url(model_url)
                        .api_key("sk-test")
                        .retry(crewflow::llm::RetryPolicy::none()),
                )?;
                let agent = Agent::new(llm).role("Cashier").tool(charge).tool(mail);
                let out = agent.kickoff("Charge order 7, then mail the receipt.").await?;
                let calls: Vec<String> = out.tool_calls.iter().map(|t| format!("{}={}", t.name, t.text)).collect();
                Ok::<_, StepError>(format!("{} [{}]", out.raw, calls.join(", ")))
            }
        })
        .store(store)
        .build()
        .unwrap()
}

fn open_store(url: &str) -> Arc<dyn RunStore> {
    if url.starts_with("postgres") { crewflow::store::open(url).unwrap() } else { Arc::new(SqliteStore::open(url)) }
}

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the agent crash tests in this file, started by them with AGENT_ROLE set"]
fn agent_child() {
    let (Ok(role), Ok(url), Ok(side), Ok(run), Ok(model)) = (
        std::env::var("AGENT_ROLE"),
        std::env::var("AGENT_DB"),
        std::env::var("AGENT_SIDE"),
        std::env::var("AGENT_RUN"),
        std::env::var("AGENT_MODEL_URL"),
    ) else {
        panic!("agent_child runs only as a child of the agent crash tests");
    };
    let run_id: RunId = run.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pause = if role == "run" { Duration::from_secs(60) } else { Duration::ZERO };
        let flow = checkout(open_store(&url), model, side.into(), pause);
        let run = match role.as_str() {
            "run" => flow.kickoff(Kickoff::new().run_id(run_id)).await,
            _ => flow.resume(run_id).await,
        }
        .unwrap();
        println!("OUTPUT {}", run.output::<String>().unwrap());
    });
}

fn child(role: &str, url: &str, side: &Path, run: RunId, model: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["agent_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("AGENT_ROLE", role)
        .env("AGENT_DB", url)
        .env("AGENT_SIDE", side)
        .env("AGENT_RUN", run.to_string())
        .env("AGENT_MODEL_URL", model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn killed_between_two_tool_calls(url: &str) {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("call_1", "charge", json!({"order": "7"}))]),
        openai_tool_calls(&[("call_2", "mail", json!({"order": "7"}))]),
        openai_completion("Charged and mailed."),
    ])
    .await;
    let model = format!("{}/v1", server.url);
    let dir = tempfile::tempdir().unwrap();
    let side = dir.path().join("effects.log");
    let run = RunId::new();
    let mut victim = child("run", url, &side, run, &model).spawn().unwrap();
    let started = Instant::now();
    while server.requests().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the child never asked for the second tool");
        assert!(victim.try_wait().unwrap().is_none(), "the child ended before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second reply (asking for `mail`) is recorded before `mail` runs; give it that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(side_lines(&side), ["charge 7"], "killed between the two tool calls");
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let out = tokio::task::spawn_blocking({
        let (url, side, model) = (url.to_string(), side.clone(), model.clone());
        move || child("resume", &url, &side, run, &model).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(common::line_after(&stdout, "OUTPUT "), "Charged and mailed. [charge=receipt for 7, mail=mailed]");
    assert_eq!(side_lines(&side), ["charge 7", "mail 7"], "each tool ran exactly once");
    assert_eq!(server.requests().len(), 3, "no recorded model call was made again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_killed_agent_does_not_repeat_its_recorded_tool_call() {
    let dir = tempfile::tempdir().unwrap();
    killed_between_two_tool_calls(dir.path().join("runs.db").to_str().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn postgres_a_killed_agent_does_not_repeat_its_recorded_tool_call() {
    killed_between_two_tool_calls(&common::postgres::fresh_schema().await).await;
}

/// A hierarchical crew in a step that fails after the crew and is retried: the retry gets
/// every model reply and tool result back from the journal. The coworker's model call, made
/// inside the manager's delegation tool, is recorded under the tool's own key, so replaying
/// the tool (without running the coworker) does not shift the manager's later calls.
#[tokio::test]
async fn a_retried_step_replays_a_delegating_crew_from_the_journal() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[(
            "d1",
            "delegate_work",
            json!({"coworker": "Writer", "task": "Write a haiku about rust.", "context": "for engineers"}),
        )]),
        openai_completion("Iron sleeps in rain"),
        openai_completion("Final: Iron sleeps in rain"),
    ])
    .await;
    let llm = openai_llm(&server);
    let attempts = Arc::new(AtomicUsize::new(0));
    let tries = attempts.clone();
    let dir = tempfile::tempdir().unwrap();
    let flow = FlowBuilder::<()>::new("crew_retry")
        .start("write", move |_cx: Cx<()>, (): ()| {
            let (llm, tries) = (llm.clone(), tries.clone());
            async move {
                let writer = Agent::new(llm.clone()).role("Writer").goal("Write well.");
                let crew =
                    Crew::new([writer], [Task::new("haiku", "A haiku about {topic}.").expected_output("a haiku")])
                        .process(Process::Hierarchical)
                        .manager_llm(llm);
                let out = crew.kickoff(&Inputs::from([("topic", "rust")])).await?;
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StepError::msg("a failure after the crew"));
                }
                Ok::<_, StepError>(out.raw)
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        .store(SqliteStore::open(dir.path().join("runs.db").to_str().unwrap()))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.output::<String>().unwrap(), "Final: Iron sleeps in rain");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests().len(), 3, "the retry made no model call");
}

/// Parallel tool calls are recorded by their call ids: a retried step gets both results back
/// (each tool ran once) and the model is not asked again.
#[tokio::test]
async fn a_retried_step_replays_parallel_tool_calls() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("p1", "charge", json!({"order": "1"})), ("p2", "charge", json!({"order": "2"}))]),
        openai_completion("Both charged."),
    ])
    .await;
    let llm = openai_llm(&server);
    let charged = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (c, tries) = (charged.clone(), attempts.clone());
    let flow = FlowBuilder::<()>::new("parallel_retry")
        .start("pay", move |_cx: Cx<()>, (): ()| {
            let (llm, c, tries) = (llm.clone(), c.clone(), tries.clone());
            async move {
                let charge = ToolFn::new("charge", "Charges an order.", move |o: Order| {
                    let c = c.clone();
                    async move {
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(format!("receipt {} #{n}", o.order))
                    }
                });
                let out = Agent::new(llm).role("Cashier").tool(charge).kickoff("Charge 1 and 2.").await?;
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(StepError::msg("a failure after the agent"));
                }
                let texts: Vec<String> = out.tool_calls.iter().map(|t| t.text.clone()).collect();
                Ok::<_, StepError>(texts.join(", "))
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    let out = run.output::<String>().unwrap();
    assert!(out == "receipt 1 #0, receipt 2 #1" || out == "receipt 1 #1, receipt 2 #0", "{out}");
    assert_eq!(charged.load(Ordering::SeqCst), 2, "each call ran once over both attempts");
    assert_eq!(server.requests().len(), 2);
}
