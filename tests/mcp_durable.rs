//! An agent's MCP tools are durable to the tool call, as its native tools are
//! (tests/agents_durable.rs): inside a persisted run, each MCP tool result is recorded in the
//! run's journal as it happens, so a run killed between two MCP tool calls resumes without
//! calling the first tool again.
//!
//! The crash test kills a real process (SIGKILL) while its agent waits for the second MCP
//! tool call and resumes the run in another process. The tools are those of
//! tests/mcp/effects.mjs, an MCP server on the official TypeScript SDK started by the agent's
//! process over stdio: each call appends a line to a file, so the evidence outlives the killed
//! process (and its server, which exits when its client dies). The processes are this test
//! binary, re-executed in the role given by `MCP_AGENT_ROLE`; the model is the loopback server
//! of the parent. On SQLite, and on PostgreSQL when `CREWFLOW_TEST_POSTGRES` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{TestServer, openai_completion, openai_tool_calls};
use crewflow::agents::{Agent, McpServer};
use crewflow::prelude::*;
use crewflow::store::RunStore;
use crewflow::{FlowBuilder, RunId};
use serde_json::json;

fn side_lines(side: &Path) -> Vec<String> {
    std::fs::read_to_string(side).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// The effects server: `charge` and `mail` append to `side`; `mail` first waits `mail_delay`.
fn effects(side: &Path, mail_delay: Duration) -> McpServer {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(common::mcp::effects_script())
        .env("EFFECTS_FILE", side)
        .env("MAIL_DELAY_MS", mail_delay.as_millis().to_string());
    McpServer::stdio(command).name("effects")
}

/// One step: an agent with the effects server's `charge` and `mail` tools (the server is
/// started by the step, in whichever process runs it).
fn checkout(store: Arc<dyn RunStore>, model_url: String, side: PathBuf, mail_delay: Duration) -> Flow<()> {
    FlowBuilder::<()>::new("mcp_checkout")
        .start("pay", move |_cx: Cx<()>, (): ()| {
            let (side, model_url) = (side.clone(), model_url.clone());
            async move {
                let tools = effects(&side, mail_delay).tools().await?;
                let llm = crewflow::llm::Llm::with_options(
                    "openai/gpt-4o-mini",
                    crewflow::llm::LlmOptions::default()
                        .base_url(model_url)
                        .api_key("sk-test")
                        .retry(crewflow::llm::RetryPolicy::none()),
                )?;
                let agent = Agent::new(llm).role("Cashier").tools(&tools);
                let out = agent.kickoff("Charge order 7, then mail the receipt.").await?;
                let calls: Vec<String> = out.tool_calls.iter().map(|t| format!("{}={}", t.name, t.text)).collect();
                Ok::<_, StepError>(format!("{} [{}]", out.raw, calls.join(", ")))
            }
        })
        .store(store)
        .build()
        .unwrap()
}

/// The model's replies: `charge`, then `mail`, then the answer.
async fn model() -> TestServer {
    TestServer::start(vec![
        openai_tool_calls(&[("call_1", "charge", json!({"order": "7"}))]),
        openai_tool_calls(&[("call_2", "mail", json!({"order": "7"}))]),
        openai_completion("Charged and mailed."),
    ])
    .await
}

/// The child processes' entry point; see the module docs.
#[test]
#[ignore = "a child process of the MCP crash test in this file, started by it with MCP_AGENT_ROLE set"]
fn mcp_agent_child() {
    let (Ok(role), Ok(store), Ok(side), Ok(run), Ok(model)) = (
        std::env::var("MCP_AGENT_ROLE"),
        std::env::var("MCP_AGENT_STORE"),
        std::env::var("MCP_AGENT_SIDE"),
        std::env::var("MCP_AGENT_RUN"),
        std::env::var("MCP_AGENT_MODEL_URL"),
    ) else {
        panic!("mcp_agent_child runs only as a child of the MCP crash test");
    };
    let run_id: RunId = run.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The first process waits in `mail` until it is killed.
        let mail_delay = if role == "run" { Duration::from_secs(60) } else { Duration::ZERO };
        let flow = checkout(crewflow::store::open(&store).unwrap(), model, side.into(), mail_delay);
        let run = match role.as_str() {
            "run" => flow.kickoff(Kickoff::new().run_id(run_id)).await,
            _ => flow.resume(run_id).await,
        }
        .unwrap();
        println!("OUTPUT {}", run.output::<String>().unwrap());
    });
}

/// A child process in `role`, on the store at `store` (a path or a URL).
fn child(role: &str, store: &str, side: &Path, run: RunId, model: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["mcp_agent_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("MCP_AGENT_ROLE", role)
        .env("MCP_AGENT_STORE", store)
        .env("MCP_AGENT_SIDE", side)
        .env("MCP_AGENT_RUN", run.to_string())
        .env("MCP_AGENT_MODEL_URL", model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_between_two_mcp_tool_calls_does_not_repeat_the_first_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db").to_str().unwrap().to_string();
    killed_between_two_mcp_tool_calls(&store, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(crewflow_postgres_tests), ignore = "set CREWFLOW_TEST_POSTGRES=postgres://... to run PostgreSQL tests")]
async fn a_run_killed_between_two_mcp_tool_calls_does_not_repeat_the_first_postgres() {
    let dir = tempfile::tempdir().unwrap();
    killed_between_two_mcp_tool_calls(&common::postgres::fresh_schema().await, dir.path()).await;
}

/// Kills the run (in a child process) between its two MCP tool calls, on the store at `store`,
/// and resumes it in another; `dir` holds the side files.
async fn killed_between_two_mcp_tool_calls(store: &str, dir: &Path) {
    // An uninterrupted run, for the result to compare with.
    let whole = model().await;
    let whole_side = dir.join("whole.log");
    let whole_store: Arc<dyn RunStore> = crewflow::store::open(store).unwrap();
    let uninterrupted = checkout(whole_store, format!("{}/v1", whole.url), whole_side.clone(), Duration::ZERO)
        .kickoff(())
        .await
        .unwrap()
        .output::<String>()
        .unwrap();
    assert_eq!(uninterrupted, "Charged and mailed. [charge=receipt for 7, mail=mailed]");
    assert_eq!(side_lines(&whole_side), ["charge 7", "mail 7"]);

    let server = model().await;
    let model = format!("{}/v1", server.url);
    let (side, run) = (dir.join("effects.log"), RunId::new());
    let mut victim = child("run", store, &side, run, &model).spawn().unwrap();
    let started = Instant::now();
    while server.requests().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the child never asked for the second tool");
        assert!(victim.try_wait().unwrap().is_none(), "the child ended before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The second reply (asking for `mail`) is recorded before `mail` is called; give it that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(side_lines(&side), ["charge 7"], "killed between the two tool calls");
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();

    let out = tokio::task::spawn_blocking({
        let (store, side, model) = (store.to_string(), side.clone(), model.clone());
        move || child("resume", &store, &side, run, &model).output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(common::line_after(&stdout, "OUTPUT "), uninterrupted, "the same result as an uninterrupted run");
    assert_eq!(side_lines(&side), ["charge 7", "mail 7"], "charge ran once; mail once, after the resume");
    assert_eq!(server.requests().len(), 3, "no recorded model call was made again");
}
