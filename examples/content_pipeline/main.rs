//! The content pipeline: research → quality gate (loops back to research at most twice) →
//! write → edit, over a typed state.
//!
//! The steps do plain Rust work on a small built-in corpus, so the example runs offline and in
//! milliseconds; swap the bodies for model calls and the flow stays the same.
//!
//! ```text
//! cargo run --example content_pipeline -- "async runtimes"
//! ```

use crewflow::prelude::*;
use serde::{Deserialize, Serialize};

/// What the run knows; every step reads and updates it through `cx`.
#[derive(Default, Debug, Serialize, Deserialize)]
struct Content {
    topic: String,
    audience: String,
    keywords: Vec<String>,
    notes: Vec<String>,
    attempts: u32,
    draft: String,
    article: String,
}

/// What the quality gate decides.
#[derive(Route, Clone, Copy, Debug, PartialEq)]
enum Quality {
    /// Enough material: write.
    Enough,
    /// Too thin: research again, more broadly.
    Retry,
}

/// The flow's configuration: how many notes make enough, how often to retry.
struct ContentPipeline {
    min_notes: usize,
    max_retries: u32,
}

#[flow(state = Content)]
impl ContentPipeline {
    /// Turns the topic into search keywords.
    #[start]
    async fn plan(&self, cx: &Cx<Content>) -> Result<Vec<String>> {
        let keywords: Vec<String> = cx.state(|c| {
            c.topic
                .split_whitespace()
                .map(|w| w.trim_matches(|ch: char| !ch.is_alphanumeric()).to_lowercase())
                .collect()
        });
        cx.update(|c| {
            c.keywords = keywords.clone();
            if c.audience.is_empty() {
                c.audience = "engineers".into();
            }
        });
        Ok(keywords)
    }

    /// Collects notes from the corpus; each retry searches more broadly.
    #[listen(or(plan, Quality::Retry))]
    async fn research(&self, cx: &Cx<Content>) -> Result<usize> {
        let (keywords, attempt) = cx.update(|c| {
            c.attempts += 1;
            (c.keywords.clone(), c.attempts)
        });
        let notes: Vec<String> = CORPUS
            .iter()
            .filter(|sentence| {
                let s = sentence.to_lowercase();
                let hits = keywords.iter().filter(|k| s.contains(k.as_str())).count();
                match attempt {
                    1 => hits == keywords.len(), // every keyword
                    2 => hits > 0,               // any keyword
                    _ => hits > 0 || RELATED.iter().any(|r| s.contains(r)),
                }
            })
            .map(|s| s.to_string())
            .collect();
        let found = notes.len();
        cx.update(|c| c.notes = notes);
        Ok(found)
    }

    /// Enough notes, or out of retries: write. Otherwise research again.
    #[router(research)]
    async fn quality_gate(&self, cx: &Cx<Content>, found: usize) -> Result<Quality> {
        let attempts = cx.state(|c| c.attempts);
        Ok(if found >= self.min_notes || attempts > self.max_retries { Quality::Enough } else { Quality::Retry })
    }

    /// Drafts the article from the notes.
    #[listen(Quality::Enough)]
    async fn write(&self, cx: &Cx<Content>) -> Result<String> {
        let draft = cx.state(|c| {
            let mut draft = format!("# {}\n\nA short briefing for {}.\n\n", title_case(&c.topic), c.audience);
            if c.notes.is_empty() {
                draft.push_str("The sources had nothing on this topic yet.\n");
            }
            for note in &c.notes {
                draft.push_str(&format!("- {note}\n"));
            }
            draft
        });
        cx.update(|c| c.draft = draft.clone());
        Ok(draft)
    }

    /// Edits the draft: tidies whitespace and adds a reading-time line.
    #[listen(write)]
    async fn edit(&self, cx: &Cx<Content>, draft: String) -> Result<String> {
        let words = draft.split_whitespace().count();
        let body: Vec<&str> = draft.lines().map(str::trim_end).collect();
        let article =
            format!("{}\n\n_{} words, about {} min to read._\n", body.join("\n").trim_end(), words, words / 200 + 1);
        cx.update(|c| c.article = article.clone());
        Ok(article)
    }
}

fn title_case(s: &str) -> String {
    s.split_whitespace()
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Words that broaden the third search.
const RELATED: [&str; 3] = ["concurrency", "scheduler", "future"];

const CORPUS: [&str; 10] = [
    "An async runtime drives futures to completion by polling them when they can make progress.",
    "Tokio's scheduler uses work stealing so idle threads take tasks from busy ones.",
    "A future does nothing until it is polled; dropping it cancels the work at its next await.",
    "Blocking a runtime thread stalls every task scheduled on it; hand CPU-heavy work to spawn_blocking.",
    "Structured concurrency keeps child tasks inside the scope that started them.",
    "Async runtimes multiplex many tasks over a few OS threads.",
    "Cancellation in Rust async code is cooperative: tasks stop at await points.",
    "Event-driven workflows react to step completions instead of following a fixed script.",
    "Durable workflows checkpoint their state so a crash loses no finished work.",
    "Backpressure keeps a fast producer from overwhelming a slow consumer.",
];

#[tokio::main]
async fn main() -> Result<(), crewflow::Error> {
    let topic = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let topic = if topic.is_empty() { "async runtimes".to_string() } else { topic };

    let flow = ContentPipeline { min_notes: 3, max_retries: 2 }.into_flow()?;
    let (run, mut events) = flow.stream(serde_json::json!({ "topic": topic }))?;
    while let Some(event) = events.next().await {
        let step = event.step.as_deref().unwrap_or("");
        match &event.kind {
            EventKind::RunStarted { .. } => println!("run {} started", event.run_id),
            EventKind::StepStarted { .. } => println!("  -> {step}"),
            EventKind::StepFinished { output, elapsed_us, .. } => {
                let shown = match output.to_json() {
                    Ok(serde_json::Value::String(s)) if s.len() > 40 => format!("{} chars", s.len()),
                    Ok(v) => v.to_string(),
                    Err(_) => output.type_name().to_string(),
                };
                println!("  <- {step} ({elapsed_us} us): {shown}");
            }
            EventKind::RouteTaken { label, .. } => println!("     {step} chose {label}"),
            EventKind::StepFailed { error, .. } => println!("  !! {step}: {error}"),
            _ => {}
        }
    }
    let run = run.await?;
    println!("\n{}", run.state.article);
    println!("research attempts: {}, steps run: {}", run.state.attempts, run.steps_run());
    Ok(())
}
