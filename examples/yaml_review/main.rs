//! A flow written in YAML (`review.yaml`, next to this file): a model drafts a release note for
//! a change, a person reviews it — publish, drop, or advice for a rewrite — and the flow loops
//! until the note is published or dropped. The Rust side registers the two functions the file
//! names; everything else (routing, the review, the loop, the store) is in the file.
//!
//! ```text
//! scripts/fetch-models                                        # once: the local model
//! cargo run --example yaml_review -- "Dark mode in the settings page"
//! cargo run --example yaml_review -- --defer "Faster search"  # pause; answer later:
//! cargo run --example yaml_review -- --answer <run-id> publish
//! ```
//!
//! Reviews are asked on the terminal, or with `--defer` kept in the store (`crewflow.db`, or
//! `$CREWFLOW_DB`) until `--answer` resumes the run, from any process. The model is
//! `$CREWFLOW_MODEL` (e.g. `openai/gpt-4o-mini`), else the local one.

use crewflow::declarative::{Call, DeclarativeFlow, FlowDefinition, Registry};
use crewflow::{ConsoleFeedback, DeferredFeedback, Run, RunId, StepError};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEFINITION: &str = include_str!("review.yaml");

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--answer", run_id, answer @ ..] if !answer.is_empty() => {
            // A deferred run goes on deferring: a rewrite pauses for the next review.
            let flow = build(true)?;
            let run = flow.resume_with_feedback(run_id.parse::<RunId>()?, answer.join(" ")).await?;
            report(&run)
        }
        ["--defer", change @ ..] if !change.is_empty() => {
            let run = build(true)?.kickoff(json!({ "change": change.join(" ") })).await?;
            report(&run)
        }
        [flag, ..] if flag.starts_with("--") => Err(usage()),
        [] => Err(usage()),
        change => {
            let run = build(false)?.kickoff(json!({ "change": change.join(" ") })).await?;
            report(&run)
        }
    }
}

fn usage() -> Error {
    "usage: yaml_review CHANGE... | --defer CHANGE... | --answer RUN_ID ANSWER...".into()
}

/// The flow from the file, with the functions it names and who reviews.
fn build(defer: bool) -> Result<DeclarativeFlow, Error> {
    let registry = Registry::new().function("first_sentence", first_sentence).function("publish", publish);
    let registry = if defer {
        registry.default_feedback_provider(DeferredFeedback)
    } else {
        registry.default_feedback_provider(ConsoleFeedback)
    };
    Ok(FlowDefinition::from_yaml(DEFINITION)?.build(&registry)?)
}

/// Keeps the model's first sentence: small models tend to go on.
async fn first_sentence(
    _cx: crewflow::Cx<crewflow::declarative::DeclarativeState>,
    call: Call,
) -> Result<String, StepError> {
    let text = call.input.as_str().unwrap_or_default().trim();
    let text = text.trim_start_matches(|c: char| c == '"' || c == '-' || c == '*' || c.is_whitespace());
    let end = text.find(['.', '!', '\n']).map(|at| at + 1).unwrap_or(text.len());
    let sentence = text[..end].trim().trim_end_matches('\n');
    if sentence.is_empty() {
        return Err(StepError::msg("the model returned no text; try again or set CREWFLOW_MODEL"));
    }
    Ok(sentence.to_string())
}

/// "Publishes" the note: here, prints it as a changelog line.
async fn publish(_cx: crewflow::Cx<crewflow::declarative::DeclarativeState>, call: Call) -> Result<Value, StepError> {
    let args = call.args.unwrap_or_default();
    let line =
        format!("- {} ({})", args["note"].as_str().unwrap_or_default(), args["change"].as_str().unwrap_or_default());
    println!("published:\n{line}");
    Ok(json!(line))
}

fn report(run: &Run<crewflow::declarative::DeclarativeState>) -> Result<(), Error> {
    if let Some(paused) = run.paused() {
        println!("draft: {}", paused.request.output.as_str().unwrap_or_default());
        println!(
            "waiting for a review: cargo run --example yaml_review -- --answer {} <publish|drop|advice>",
            paused.run_id
        );
        return Ok(());
    }
    match run.final_step() {
        Some("release") => println!("done after {} review(s)", run.feedback_history().len()),
        _ => println!("dropped after {} review(s)", run.feedback_history().len()),
    }
    Ok(())
}
