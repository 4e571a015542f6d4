//! Agent benchmarks: `scripts/bench` (or `cargo bench --bench agents -- [--only a,b]`).
//!
//! Prints one JSON line per figure, like the other benchmarks:
//! - `agent_loop`: a 10-iteration tool loop (10 model replies asking for a tool, then the final
//!   answer) inside a flow step with an observer, against a loopback server that answers at
//!   once. `per_iteration_us` is crewflow's own share per iteration: the loop's time minus
//!   the time of the same number of bare `Llm::chat` calls to the same server (so the HTTP
//!   round trip and the provider's parsing are excluded, as in `llm_overhead`), divided by
//!   the iterations; `per_iteration_total_us` is the whole, for comparison.
//! - `crew_overhead`: a 3-task sequential crew with instant replies; `per_task_us` is
//!   crewflow's share per task (the crew's time minus 3 bare calls, over 3).

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crewflow::FlowBuilder;
use crewflow::agents::{Agent, Crew, Inputs, Task, ToolFn};
use crewflow::llm::{ChatRequest, Llm, LlmOptions, Message, RetryPolicy};
use crewflow::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BENCHES: [&str; 2] = ["agent_loop", "crew_overhead"];

mod harness;

use harness::report;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    for name in harness::selected(&BENCHES) {
        rt.block_on(async {
            match name {
                "agent_loop" => agent_loop().await,
                _ => crew_overhead().await,
            }
        });
    }
}

const ITERATIONS: usize = 10;

fn completion(text: &str) -> String {
    format!(
        r#"{{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26}}}}"#
    )
}

fn tool_call(n: usize) -> String {
    format!(
        r#"{{"id":"c","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_{n}","type":"function","function":{{"name":"lookup","arguments":"{{\"q\":\"item {n}\"}}"}}}}]}},"finish_reason":"tool_calls"}}],"usage":{{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}}}"#
    )
}

/// A keep-alive HTTP/1.1 loopback server. With `tools`, it asks for a tool call until the
/// request holds `ITERATIONS` tool results, then answers; without, it always answers.
async fn serve(tools: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let results = if tools { count(&body, b"\"role\":\"tool\"") } else { ITERATIONS };
                    let reply = if results >= ITERATIONS { completion("done") } else { tool_call(results) };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                        reply.len()
                    );
                    if write.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

fn llm(base: &str) -> Llm {
    Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(base).api_key("k").retry(RetryPolicy::none()),
    )
    .unwrap()
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Q {
    q: String,
}

/// The median time of a bare `Llm::chat` call to `base`, in microseconds.
async fn bare_call_us(llm: &Llm) -> f64 {
    let request = ChatRequest::new([Message::system("You are a bench."), Message::user("Go.")]);
    let mut samples = Vec::new();
    for round in 0..=5 {
        let t = Instant::now();
        for _ in 0..200 {
            llm.chat(request.clone()).await.unwrap();
        }
        if round > 0 {
            samples.push(t.elapsed().as_secs_f64() * 1e6 / 200.0);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

async fn agent_loop() {
    const LOOPS: usize = 100;
    let base = serve(true).await;
    let llm = llm(&base);
    let bare = bare_call_us(&llm).await;
    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let flow = FlowBuilder::<()>::new("agent_loop")
        .start("loop", move |_cx: Cx<()>, (): ()| {
            let llm = llm.clone();
            async move {
                let lookup = ToolFn::new("lookup", "Looks an item up.", |q: Q| async move {
                    Ok::<_, std::convert::Infallible>(format!("found {}", q.q))
                });
                let agent = Agent::new(llm).role("Bencher").goal("Look things up.").tool(lookup).max_iter(20);
                let mut per_iteration = Vec::new();
                for round in 0..=5 {
                    let t = Instant::now();
                    for _ in 0..LOOPS / 5 {
                        let out = agent.kickoff("Look up ten items.").await?;
                        assert_eq!(out.iterations as usize, ITERATIONS + 1);
                    }
                    if round > 0 {
                        // 11 model calls per loop (10 with tool calls, then the answer).
                        per_iteration.push(t.elapsed().as_secs_f64() * 1e6 / (LOOPS / 5) as f64 / ITERATIONS as f64);
                    }
                }
                Ok::<_, StepError>(per_iteration)
            }
        })
        .observe(move |_e: &Event| {
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    let total: Vec<f64> = run.output_of("loop").unwrap().unwrap();
    assert!(events.load(Ordering::Relaxed) >= LOOPS * ITERATIONS * 5, "every iteration reported its events");
    let calls_per_iteration = (ITERATIONS + 1) as f64 / ITERATIONS as f64;
    let own: Vec<f64> = total.iter().map(|t| (t - bare * calls_per_iteration).max(0.0)).collect();
    report("agent_loop", "per_iteration_us", "us", own);
    report("agent_loop", "per_iteration_total_us", "us", total);
}

async fn crew_overhead() {
    const CREWS: usize = 200;
    let base = serve(false).await;
    let llm = llm(&base);
    let bare = bare_call_us(&llm).await;
    let a = Agent::new(llm.clone()).role("Researcher").goal("Research {topic}.");
    let b = Agent::new(llm.clone()).role("Writer").goal("Write about {topic}.");
    let c = Agent::new(llm).role("Editor").goal("Edit.");
    let crew = Crew::new(
        [a.clone(), b.clone(), c.clone()],
        [
            Task::new("research", "Research {topic}.").expected_output("notes").agent(a),
            Task::new("write", "Write about {topic}.").expected_output("a draft").agent(b),
            Task::new("edit", "Edit the draft.").expected_output("the final text").agent(c),
        ],
    );
    let inputs = Inputs::from([("topic", "lighthouses")]);
    let mut samples = Vec::new();
    for round in 0..=5 {
        let t = Instant::now();
        for _ in 0..CREWS / 5 {
            let out = crew.kickoff(&inputs).await.unwrap();
            assert_eq!(out.tasks.len(), 3);
        }
        if round > 0 {
            let per_task = t.elapsed().as_secs_f64() * 1e6 / (CREWS / 5) as f64 / 3.0;
            samples.push((per_task - bare).max(0.0));
        }
    }
    report("crew_overhead", "per_task_us", "us", samples);
}
