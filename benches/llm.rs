//! Model benchmarks: `scripts/bench` (or `cargo bench --bench llm -- [--only a,b]`).
//!
//! Prints one JSON line per figure, like the engine benchmarks:
//! - `local_generate`: `tokens_per_s` of a 64-token reply from the local model (load excluded,
//!   prompt processing included); needs `scripts/fetch-models`.
//! - `local_embed`: `ms_per_text` embedding batches of 32 texts with the local embedder.
//! - `llm_overhead`: `per_call_us`, one non-streaming call through [`Llm::chat`] inside a
//!   flow step (client, request building, parsing, events) against a loopback server that
//!   answers at once; `raw_http_us` is the same request sent with a bare HTTP client, for
//!   comparison.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crewflow::FlowBuilder;
use crewflow::llm::local::{LocalEmbedder, LocalModel};
use crewflow::llm::{ChatRequest, Embedder, Llm, LlmOptions, Message};
use crewflow::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const BENCHES: [&str; 4] = ["local_generate", "local_prompt", "local_embed", "llm_overhead"];

mod harness;

use harness::report;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    for name in harness::selected(&BENCHES) {
        rt.block_on(async {
            match name {
                "local_generate" => local_generate().await,
                "local_prompt" => local_prompt().await,
                "local_embed" => local_embed().await,
                _ => llm_overhead().await,
            }
        });
    }
}

async fn local_generate() {
    let llm = Llm::from(LocalModel::load_default().expect("the local model (run scripts/fetch-models)"));
    let request =
        ChatRequest::new([Message::user("Tell me a long story about a lighthouse keeper and the sea.")]).max_tokens(64);
    llm.chat(request.clone()).await.expect("warm-up");
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let reply = llm.chat(request.clone()).await.expect("a reply");
        samples.push(reply.usage.completion_tokens as f64 / t.elapsed().as_secs_f64());
    }
    report("local_generate", "tokens_per_s", "tokens/s", samples);
}

/// The local model reading a long prompt (a ~400-token system prompt and a short question; one
/// token of reply): `prefill_ms` from an empty cache (an unrelated prompt ran before), and
/// `prefill_ms_shared` when the previous request had the same system prompt (its whole pieces
/// come from the cache).
async fn local_prompt() {
    let llm = Llm::from(LocalModel::load_default().expect("the local model (run scripts/fetch-models)"));
    let rules: Vec<String> = (1..=24)
        .map(|i| format!("Rule {i}: when a customer writes about topic number {i}, answer briefly and name the team that owns it."))
        .collect();
    let system = format!("You are the support desk of a bank.\n{}", rules.join("\n"));
    let ask = |question: &str| {
        ChatRequest::new([Message::system(system.clone()), Message::user(question)]).max_tokens(1).temperature(0.0)
    };
    let unrelated = ChatRequest::new([Message::user("Name a colour.")]).max_tokens(1);
    let (mut fresh, mut shared) = (Vec::new(), Vec::new());
    for i in 0..5 {
        llm.chat(unrelated.clone()).await.expect("a reply");
        let t = Instant::now();
        llm.chat(ask(&format!("Question {i}: my card was stolen."))).await.expect("a reply");
        fresh.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        llm.chat(ask(&format!("Question {i}: how do I open an account?"))).await.expect("a reply");
        shared.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("local_prompt", "prefill_ms", "ms", fresh);
    report("local_prompt", "prefill_ms_shared", "ms", shared);
}

async fn local_embed() {
    let embedder = LocalEmbedder::load_default().expect("the local embedder (run scripts/fetch-models)");
    let texts: Vec<String> = (0..32)
        .map(|i| {
            format!(
                "Ticket {i}: the {} page shows an error when I try to {} my {}.",
                ["billing", "login", "settings", "export"][i % 4],
                ["update", "delete", "download", "share"][i % 3],
                ["invoice", "password", "report", "profile", "team"][i % 5]
            )
        })
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    embedder.embed(&texts).await.expect("warm-up");
    let mut samples = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let vectors = embedder.embed(&texts).await.expect("vectors");
        assert_eq!(vectors.len(), 32);
        samples.push(t.elapsed().as_secs_f64() * 1000.0 / 32.0);
    }
    report("local_embed", "ms_per_text", "ms", samples);
}

/// A chat completion as OpenAI returns it.
const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"The sky is blue because air scatters blue light more than red."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":14,"total_tokens":26,"prompt_tokens_details":{"cached_tokens":0}}}"#;

/// A keep-alive HTTP/1.1 server on loopback answering every request with [`COMPLETION`].
async fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{COMPLETION}",
                    COMPLETION.len()
                );
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
                    if read.read_exact(&mut body).await.is_err() || write.write_all(response.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1")
}

async fn llm_overhead() {
    const CALLS: usize = 2_000;
    let base = serve().await;
    let llm = Llm::with_options("openai/gpt-4o-mini", LlmOptions::default().base_url(&base).api_key("k")).unwrap();
    let request =
        ChatRequest::new([Message::system("Be brief."), Message::user("Why is the sky blue?")]).temperature(0.2);
    let events = Arc::new(AtomicUsize::new(0));
    let seen = events.clone();
    let flow = FlowBuilder::<()>::new("overhead")
        .start("calls", move |_cx, (): ()| {
            let (llm, request) = (llm.clone(), request.clone());
            async move {
                let mut per_call = Vec::new();
                for round in 0..=5 {
                    let t = Instant::now();
                    for _ in 0..CALLS / 5 {
                        llm.chat(request.clone()).await?;
                    }
                    // Round 0 warms up the connection pool.
                    if round > 0 {
                        per_call.push(t.elapsed().as_secs_f64() * 1e6 / (CALLS / 5) as f64);
                    }
                }
                Ok(per_call)
            }
        })
        .observe(move |_e: &Event| {
            seen.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    let per_call: Vec<f64> = run.output_of("calls").unwrap().unwrap();
    assert!(events.load(Ordering::Relaxed) >= 2 * CALLS, "every call reported its events");
    report("llm_overhead", "per_call_us", "us", per_call);

    let client = reqwest::Client::new();
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}], "temperature": 0.2}).to_string();
    let mut raw = Vec::new();
    for round in 0..=5 {
        let t = Instant::now();
        for _ in 0..CALLS / 5 {
            let response = client
                .post(format!("{base}/chat/completions"))
                .bearer_auth("k")
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            response.bytes().await.unwrap();
        }
        if round > 0 {
            raw.push(t.elapsed().as_secs_f64() * 1e6 / (CALLS / 5) as f64);
        }
    }
    report("llm_overhead", "raw_http_us", "us", raw);
}
