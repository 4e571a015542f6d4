//! Crews from CrewAI's agents.yaml and tasks.yaml, `kickoff_for_each` and task output files,
//! against scripted replies in the OpenAI wire format over a real loopback server: a YAML
//! crew runs its tools, context and output file; every loading error names the file, the
//! line and the fix (each message pinned); `kickoff_for_each` keeps input order and never has
//! more model requests in flight than its limit (counted at the server); an output file is
//! written once even when a retried step replays its task from the journal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{Recorded, TestServer, openai_completion, openai_llm, openai_tool_calls};
use crewflow::agents::{AgentError, Crew, CrewRegistry, Inputs, Task, TaskOutput, ToolFn, YamlError};
use crewflow::prelude::*;
use crewflow::store::SqliteStore;
use crewflow::{FlowBuilder, Retry};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const AGENTS: &str = "\
researcher:
  role: >
    {topic} Researcher
  goal: Find facts about {topic}
  backstory: You read primary sources.
  llm: fast
  tools:
    - search
  max_iter: 3
  allow_delegation: false
  verbose: true
writer:
  role: Writer
  goal: Write clearly
  backstory: You write short pieces.
  llm: fast
";

const TASKS: &str = "\
research_task:
  description: >
    Research {topic}.
  expected_output: Three facts about {topic}
  agent: researcher
reporting_task:
  description: Write a report on {topic}.
  expected_output: A short report
  agent: writer
  context: [research_task]
  output_file: '{dir}/reports/{topic}.md'
";

#[derive(Deserialize, schemars::JsonSchema)]
struct Query {
    q: String,
}

fn registry(server: &TestServer) -> CrewRegistry {
    let search = ToolFn::new("search", "Searches the web.", |x: Query| async move {
        Ok::<_, String>(format!("results for {}", x.q))
    });
    CrewRegistry::new()
        .llm("fast", openai_llm(server))
        .tool(search)
        .guardrail("nonempty", |out: &TaskOutput| if out.raw.trim().is_empty() { Err("empty".into()) } else { Ok(()) })
}

fn messages(r: &Recorded) -> Vec<Value> {
    r.json()["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_yaml_crew_runs_its_tools_context_and_output_file() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[("c1", "search", json!({"q": "lighthouses"}))]),
        openai_completion("Fact one. Fact two. Fact three."),
        openai_completion("# Lighthouses\nA short report."),
    ])
    .await;
    let crew = Crew::from_yaml(AGENTS, TASKS, &registry(&server)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inputs = Inputs::from([("topic", "lighthouses"), ("dir", dir.path().to_str().unwrap())]);
    let out = crew.kickoff(&inputs).await.unwrap();
    assert_eq!(out.raw, "# Lighthouses\nA short report.");
    let names: Vec<&str> = out.tasks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["research_task", "reporting_task"]);
    assert_eq!(out.tasks[0].agent, "lighthouses Researcher", "the folded role, trimmed and interpolated");

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    let first = reqs[0].json();
    assert_eq!(first["tools"][0]["function"]["name"], "search");
    let system = messages(&reqs[0])[0]["content"].as_str().unwrap_or("").to_string();
    assert!(system.contains("Find facts about lighthouses"), "{system}");
    assert_eq!(messages(&reqs[1]).last().unwrap()["content"], "results for lighthouses");
    assert!(reqs[2].json().get("tools").is_none(), "the writer has no tools");
    let writer_prompt = messages(&reqs[2])[1]["content"].as_str().unwrap_or("").to_string();
    assert!(writer_prompt.contains("[research_task]\nFact one. Fact two. Fact three."), "{writer_prompt}");

    let file = dir.path().join("reports/lighthouses.md");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# Lighthouses\nA short report.");
}

/// `allow_delegation: true` in a sequential crew: the agent gets `delegate_work` and
/// `ask_coworker` over the other agents (not itself), and a delegation reaches the named one.
#[tokio::test]
async fn an_agent_allowed_to_delegate_reaches_its_coworker() {
    let server = TestServer::start(vec![
        openai_tool_calls(&[(
            "d1",
            "delegate_work",
            json!({"coworker": "Writer", "task": "Write one line on tides."}),
        )]),
        openai_completion("Tides follow the moon."),
        openai_completion("Final: Tides follow the moon."),
    ])
    .await;
    let agents = "lead:\n  role: Lead\n  llm: fast\n  allow_delegation: true\nwriter:\n  role: Writer\n  llm: fast\n";
    let tasks = "piece:\n  description: A line on {topic}.\n  agent: lead\n";
    let crew = Crew::from_yaml(agents, tasks, &registry(&server)).unwrap();
    let out = crew.kickoff(&Inputs::from([("topic", "tides")])).await.unwrap();
    assert_eq!(out.raw, "Final: Tides follow the moon.");
    assert_eq!(out.usage.total(), 40 + 25 + 25, "the coworker's tokens count in the task's usage");
    let reqs = server.requests();
    let first = reqs[0].json();
    let tools: Vec<&str> =
        first["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(tools, ["delegate_work", "ask_coworker"]);
    assert_eq!(first["tools"][0]["function"]["parameters"]["properties"]["coworker"]["enum"], json!(["Writer"]));
    let coworker = messages(&reqs[1]);
    assert!(coworker[0]["content"].as_str().unwrap().starts_with("You are Writer"), "{coworker:?}");
    assert_eq!(coworker[1]["content"], "Write one line on tides.");
}

/// Each loading error, pinned: the file, the line, what is wrong and the fix.
#[tokio::test]
async fn yaml_errors_name_the_file_the_line_and_the_fix() {
    let server = TestServer::start(Vec::new()).await;
    let reg = registry(&server);
    let tasks_ok = "t:\n  description: Do it.\n  agent: a\n";
    let cases: &[(&str, &str, &str)] = &[
        ("a:\n  rol: R\n", tasks_ok, "agents.yaml, line 2: agent `a` has an unknown key `rol`; did you mean `role`?"),
        (
            "a:\n  role: R\n  llm: fast\n  max_rpm: 10\n",
            tasks_ok,
            "agents.yaml, line 4: agent `a`: `max_rpm` is a CrewAI key crewflow does not support; remove it",
        ),
        (
            "a:\n  role: R\n  llm: fast\n  tools:\n    - search\n    - serch\n",
            tasks_ok,
            "agents.yaml, line 6: unknown tool `serch`; did you mean `search`?",
        ),
        ("a:\n  role: R\n  llm: fsat\n", tasks_ok, "agents.yaml, line 3: unknown llm `fsat`; did you mean `fast`?"),
        (
            "a:\n  role: R\n",
            tasks_ok,
            "agents.yaml, line 1: agent `a` has no `llm` and the registry has no default model; add `llm: <name>` or CrewRegistry::default_llm(..)",
        ),
        (
            "a:\n  goal: G\n  llm: fast\n",
            tasks_ok,
            "agents.yaml, line 1: agent `a` has no `role`; add `role: ...` (who the agent is)",
        ),
        (
            "a:\n  role: R\n  llm: fast\n  max_iter: many\n",
            tasks_ok,
            "agents.yaml, line 4: agent `a`: `max_iter` must be a number, 0 or more",
        ),
        (
            "a:\n  role: R\n  llm: fast\n  allow_delegation: yes\n",
            tasks_ok,
            "agents.yaml, line 4: agent `a`: `allow_delegation` must be true or false",
        ),
        (
            "",
            tasks_ok,
            "agents.yaml: it defines no agents; add one (`researcher: {role: ..., goal: ..., backstory: ...}`)",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "t:\n  description: Do it.\n  agent: writter\n",
            "tasks.yaml, line 3: unknown agent `writter`; did you mean `writer`?",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "t:\n  description: Do it.\n  expected_ouput: x\n",
            "tasks.yaml, line 3: task `t` has an unknown key `expected_ouput`; did you mean `expected_output`?",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "t:\n  expected_output: x\n",
            "tasks.yaml, line 1: task `t` has no `description`; add `description: ...` (what to do)",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "research:\n  description: R\nwrite:\n  description: W\n  context:\n    - reserch\n",
            "tasks.yaml, line 6: task `write`: unknown context task `reserch`; did you mean `research`?",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "write:\n  description: W\n  context: [research]\nresearch:\n  description: R\n",
            "tasks.yaml, line 3: task `write` takes context from `research`, which is not before it (it is at line 4); a task's context must come from tasks above it",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "t:\n  description: D\n  guardrail: nonempty\n  output_json: Report\n",
            "tasks.yaml, line 4: unknown output type `Report`; there are none; register it with CrewRegistry::output_type::<T>(name)",
        ),
        (
            "writer:\n  role: W\n  llm: fast\n",
            "t:\n  description: D\n  guardrail: non_empty\n",
            "tasks.yaml, line 3: unknown guardrail `non_empty`; did you mean `nonempty`?",
        ),
    ];
    for (agents, tasks, expected) in cases {
        let err = Crew::from_yaml(agents, tasks, &reg).unwrap_err();
        assert_eq!(&err.to_string(), expected, "agents:\n{agents}\ntasks:\n{tasks}");
    }
    // Not YAML at all: the parser's own message, with its line.
    let err: YamlError = Crew::from_yaml("a: [unclosed\n", tasks_ok, &reg).unwrap_err();
    assert!(err.to_string().starts_with("agents.yaml: not a mapping of names to agents:"), "{err}");
    assert!(err.to_string().contains("line"), "{err}");
    // A file that is not there names its path.
    let err = Crew::from_yaml_files("/nonexistent/agents.yaml", "/nonexistent/tasks.yaml", &reg).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/agents.yaml: cannot read it:"), "{err}");
}

/// The state of the gate server: requests held, in flight and the most at once.
#[derive(Default)]
struct Gate {
    in_flight: usize,
    max: usize,
    seen: usize,
    held: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// A loopback server answering Chat Completions requests with `about <topic>` (the topic read
/// from the prompt). It holds each request until `limit` are in flight (or every expected
/// request arrived), lets the scheduler run the other tasks a while, and then releases them
/// together: a kickoff_for_each that respects its limit fills it exactly, and one that does
/// not has its extra requests arrive while the first ones are held.
async fn gate_server(limit: usize, total: usize) -> (String, Arc<Mutex<Gate>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let gate = Arc::new(Mutex::new(Gate::default()));
    let g = gate.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                while let Some(body) = read_request(&mut read).await {
                    let rx = {
                        let mut s = g.lock().unwrap();
                        s.in_flight += 1;
                        s.seen += 1;
                        s.max = s.max.max(s.in_flight);
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        s.held.push(tx);
                        (rx, s.in_flight == limit || s.seen == total)
                    };
                    let (rx, full) = rx;
                    if full {
                        // Let every request already on its way arrive first (a kickoff_for_each
                        // over its limit has sent them all): the scheduler runs the other
                        // tasks, no clock is read.
                        for _ in 0..200 {
                            tokio::task::yield_now().await;
                        }
                        for tx in g.lock().unwrap().held.drain(..) {
                            let _ = tx.send(());
                        }
                    }
                    let _ = rx.await;
                    // Out of flight before the reply is written: the client can only start its
                    // next request after reading this one.
                    g.lock().unwrap().in_flight -= 1;
                    let topic = body.split("Write about ").nth(1).and_then(|r| r.split('.').next()).unwrap_or("?");
                    let reply = openai_completion(&format!("about {topic}"));
                    let common::http::Body::Full(bytes) = reply.body else { return };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        bytes.len()
                    );
                    if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, gate)
}

async fn read_request(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<String> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        read.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    read.read_exact(&mut body).await.ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

// One thread on purpose: each yield of the gate then lets the reactor deliver every request
// already sent, so a kickoff_for_each over its limit is caught (checked: with the limit
// ignored, the server saw 7 in flight on every run).
#[tokio::test]
async fn kickoff_for_each_keeps_input_order_and_its_concurrency_limit() {
    let topics = ["apples", "bees", "clocks", "dunes", "eels", "ferns", "gears"];
    let (url, gate) = gate_server(3, topics.len()).await;
    let options = crewflow::llm::LlmOptions::default()
        .base_url(format!("{url}/v1"))
        .api_key("sk-test")
        .retry(crewflow::llm::RetryPolicy::none());
    let llm = crewflow::llm::Llm::with_options("openai/gpt-4o-mini", options).unwrap();
    let writer = crewflow::agents::Agent::new(llm).role("Writer");
    let crew = Crew::new([writer.clone()], [Task::new("w", "Write about {topic}.").agent(writer)]);
    let inputs: Vec<Inputs> = topics.iter().map(|t| Inputs::from([("topic", *t)])).collect();
    let outs = crew.kickoff_for_each(inputs, 3).await.unwrap();
    let raws: Vec<String> = outs.iter().map(|o| o.raw.clone()).collect();
    let expected: Vec<String> = topics.iter().map(|t| format!("about {t}")).collect();
    assert_eq!(raws, expected, "outputs in input order");
    let (seen, max) = {
        let g = gate.lock().unwrap();
        (g.seen, g.max)
    };
    assert_eq!(seen, topics.len());
    assert_eq!(max, 3, "never more than 3 model requests in flight, and the limit was used");

    let err = crew.kickoff_for_each(Vec::<Inputs>::new(), 0).await.unwrap_err();
    assert_eq!(err.to_string(), "kickoff_for_each needs a concurrency of at least 1 (how many kickoffs run at once)");
    // A failing kickoff is the error (a missing input, before any request).
    let err = crew.kickoff_for_each([Inputs::from([("subject", "x")])], 2).await.unwrap_err();
    assert!(matches!(err, AgentError::MissingInput { .. }), "{err}");
}

/// A step kicks off a crew whose task writes an output file, then fails; the retry replays
/// the task from the journal: no model call, and the file is not written again (the change a
/// person made to it in between stays).
#[tokio::test]
async fn an_output_file_is_written_once_when_a_retried_step_replays_its_task() {
    let server = TestServer::start(vec![openai_completion("The report.")]).await;
    let llm = openai_llm(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out/nested/report-rust.md");
    let attempts = Arc::new(AtomicUsize::new(0));
    let (tries, target, base) = (attempts.clone(), file.clone(), dir.path().to_str().unwrap().to_string());
    let flow = FlowBuilder::<()>::new("output_file_retry")
        .start("write", move |_cx: Cx<()>, (): ()| {
            let (llm, tries, target, base) = (llm.clone(), tries.clone(), target.clone(), base.clone());
            async move {
                let writer = crewflow::agents::Agent::new(llm).role("Writer");
                let task = Task::new("report", "Report on {topic}.")
                    .agent(writer.clone())
                    .output_file("{base}/out/nested/report-{topic}.md");
                let crew = Crew::new([writer], [task]);
                let out = crew.kickoff(&Inputs::from([("topic", "rust"), ("base", base.as_str())])).await?;
                if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                    assert_eq!(std::fs::read_to_string(&target).unwrap(), "The report.");
                    std::fs::write(&target, "edited by a person").unwrap();
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
    assert_eq!(run.output::<String>().unwrap(), "The report.");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(server.requests().len(), 1, "the retry made no model call");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "edited by a person", "the file was written once");
}

/// Outside a flow the file is written every kickoff; a missing placeholder in its path names it.
#[tokio::test]
async fn an_output_file_path_needs_its_placeholders() {
    let server = TestServer::start(vec![openai_completion("Done.")]).await;
    let writer = crewflow::agents::Agent::new(openai_llm(&server)).role("Writer");
    let task = Task::new("t", "Do it.").agent(writer).output_file("out/{missing}.md");
    let err = task.execute(&Inputs::new(), &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the output_file of task \"t\" names `{missing}` but the inputs have no `missing` (inputs present: none); add it to the inputs or remove the placeholder"
    );
}

/// `kickoff_for_each` inside a retried step: each kickoff's calls are journaled under its own
/// index, so the retry gets every reply back for the same input, with no model call.
#[tokio::test]
async fn kickoff_for_each_in_a_retried_step_replays_each_kickoff() {
    // One kickoff (whichever asks first) calls a tool before answering, so its calls and the
    // other's interleave differently when replayed (replies come back at once).
    let server = TestServer::start(vec![
        openai_tool_calls(&[("n1", "search", json!({"q": "x"}))]),
        openai_completion("first reply"),
        openai_completion("second reply"),
    ])
    .await;
    let llm = openai_llm(&server);
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let record = seen.clone();
    let flow = FlowBuilder::<()>::new("each_retry")
        .start("write", move |_cx: Cx<()>, (): ()| {
            let (llm, record) = (llm.clone(), record.clone());
            async move {
                let search = ToolFn::new("search", "Searches.", |x: Query| async move { Ok::<_, String>(x.q) });
                let writer = crewflow::agents::Agent::new(llm).role("Writer").tool(search);
                let crew = Crew::new([writer.clone()], [Task::new("w", "Write about {topic}.").agent(writer)]);
                let inputs = ["tides", "kelp"].map(|t| Inputs::from([("topic", t)]));
                let outs = crew.kickoff_for_each(inputs, 2).await?;
                let raws: Vec<String> = outs.into_iter().map(|o| o.raw).collect();
                let attempt = {
                    let mut r = record.lock().unwrap();
                    r.push(raws.clone());
                    r.len()
                };
                if attempt == 1 {
                    return Err(StepError::msg("a failure after the kickoffs"));
                }
                Ok::<_, StepError>(raws.join(", "))
            }
        })
        .retry(Retry::attempts(2).backoff(Duration::from_millis(1)))
        .store(SqliteStore::in_memory())
        .build()
        .unwrap();
    flow.kickoff(()).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1], "the retry got each input's own reply back");
    let mut sorted = seen[0].clone();
    sorted.sort();
    assert_eq!(sorted, ["first reply", "second reply"]);
    assert_eq!(server.requests().len(), 3, "the retry made no model call");
}
