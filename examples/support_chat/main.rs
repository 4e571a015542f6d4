//! A support assistant in the terminal: each message is routed by intent (billing, bug report,
//! security, small talk, or unknown) with the local MiniLM embedder, answered by a language
//! model with the recent history, and the session is kept in SQLite, so it continues across
//! restarts.
//!
//! ```text
//! scripts/fetch-models                                        # once: the local models
//! cargo run --release --example support_chat                  # a new session (its id is printed)
//! cargo run --release --example support_chat -- --session ID  # continue that session
//! printf 'my invoice is wrong\n/exit\n' | cargo run --release --example support_chat
//! CREWFLOW_MODEL=openai/gpt-4o-mini cargo run --release --example support_chat
//! ```
//!
//! Type `/exit` or `/quit` (or end the input) to leave; `/history` shows the transcript. The
//! store is `$CREWFLOW_DB`, else `crewflow.db` in the working directory.

use std::io::IsTerminal;

use crewflow::chat::{ChatError, ChatFlow, ChatOptions, ChatState, SessionId, TurnEvent};
use crewflow::llm::local::LocalEmbedder;
use crewflow::llm::{ChatRequest, Embedder, FinishReason, Intents, Llm, Message};
use crewflow::prelude::*;

/// What each intent's answer should do.
const INTENTS: [(&str, &[&str], &str); 4] = [
    (
        "billing",
        &[
            "I was charged twice this month.",
            "My invoice shows the wrong amount.",
            "How do I get a refund for my subscription?",
            "Can I change the credit card you bill?",
        ],
        "a billing question. Be precise and say a billing specialist will confirm any refund",
    ),
    (
        "bug_report",
        &[
            "The app crashes when I click save.",
            "The export button does nothing.",
            "I get an error 500 when uploading a file.",
            "The page is blank after I log in.",
        ],
        "a bug report. Thank them, ask for the steps to reproduce and say engineering will look at it",
    ),
    (
        "security",
        &[
            "Someone logged into my account from another country.",
            "I think my password was stolen.",
            "Our API key leaked on GitHub.",
            "I found a vulnerability in your login form.",
        ],
        "a security concern. Tell them to change their password now and say the security team is investigating",
    ),
    (
        "small_talk",
        &["Hello!", "How are you today?", "Thanks a lot, have a nice day.", "Who are you?"],
        "small talk. Answer warmly in one sentence",
    ),
];

const UNKNOWN: &str = "a request we have no category for. Answer briefly and helpfully";

fn instruction(intent: &str) -> &'static str {
    INTENTS.iter().find(|(label, _, _)| *label == intent).map_or(UNKNOWN, |(_, _, how)| how)
}

/// The support flow; its sessions live in `$CREWFLOW_DB`, else `crewflow.db`.
fn support_flow(
    writer: Llm,
    intents: Intents,
) -> Result<ChatFlow<ChatState>, Box<dyn std::error::Error + Send + Sync>> {
    let labels = intents.labels();
    let answer_on = or(labels.iter().map(|l| label(l.as_str())));
    // The router's label is the turn's intent, and the input of the step it triggers.
    let flow = FlowBuilder::<ChatState>::new("support_chat")
        .start_router("route", move |cx: Cx<ChatState>, message: String| {
            let intents = intents.clone();
            async move { Ok(intents.route(&cx, &message).await?) }
        })
        .routes(labels)
        .listen("answer", answer_on, move |cx: Cx<ChatState>, intent: String| {
            let writer = writer.clone();
            async move { answer(&writer, &cx, &intent).await }
        })
        .build()?;
    let sessions = crewflow::store::default_session_store()?;
    Ok(ChatFlow::with_shared_store(flow, sessions).with_options(ChatOptions::default().window(6))?)
}

/// The reply, streamed by the model from the recent history.
async fn answer(writer: &Llm, cx: &Cx<ChatState>, intent: &str) -> Result<String> {
    let instructions = Message::system(format!(
        "You are a friendly support agent for a software company. The customer's last message is {}. Reply in two or three short sentences. Do not invent details.",
        instruction(intent)
    ));
    // The summary of older turns (if any) and the recent messages, as model messages.
    let history = cx.recent_messages();
    let request = ChatRequest::new(std::iter::once(instructions).chain(history)).max_tokens(80);
    let reply = writer.stream(request).await?.response().await?;
    Ok(whole_sentences(&reply.text, reply.finish_reason == Some(FinishReason::Length)))
}

/// The reply without a sentence the token limit cut off.
fn whole_sentences(text: &str, cut_off: bool) -> String {
    let text = text.trim();
    match text.rfind(['.', '!', '?']) {
        Some(end) if cut_off => text[..=end].to_string(),
        _ => text.to_string(),
    }
}

/// `--session ID`, if given.
fn session_arg() -> Result<Option<SessionId>, ChatError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter().position(|a| a == "--session").and_then(|i| args.get(i + 1)).map(|id| id.parse()).transpose()
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let writer = Llm::from_env()?;
    let embedder = LocalEmbedder::load_default()?;
    let mut intents = Intents::new(embedder.clone()).threshold(0.45);
    for (label, examples, _) in INTENTS {
        intents = intents.intent(label, examples.iter().copied());
    }
    let flow = support_flow(writer.clone(), intents)?;
    let session = session_arg()?.unwrap_or_else(SessionId::generate);
    let interactive = std::io::stdin().is_terminal();
    match flow.session(&session).await? {
        Some(s) => println!("session {session} (continuing: {} turns so far)", s.turns.len()),
        None => println!("session {session} (new)"),
    }
    println!(
        "model: {}/{} (set CREWFLOW_MODEL to change), intents: {}; /exit to leave",
        writer.provider(),
        writer.model(),
        embedder.model_id()
    );
    chat_loop(&flow, &session, interactive).await?;
    flow.finalize_session(&session).await?;
    println!("bye; continue with --session {session}");
    Ok(())
}

/// Reads lines until `/exit`, `/quit` or the end of the input, one turn per line.
async fn chat_loop(flow: &ChatFlow<ChatState>, session: &SessionId, interactive: bool) -> Result<(), ChatError> {
    let mut lines = stdin_lines();
    loop {
        if interactive {
            print!("you> ");
            flush();
        }
        let Some(line) = lines.recv().await else { break };
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/history" => print_history(flow, session).await?,
            message => {
                if !interactive {
                    println!("you> {message}");
                }
                // A failed turn saved nothing; say so and keep the conversation going.
                if let Err(e) = turn(flow, session, message).await {
                    eprintln!("\n(that turn failed and was not saved: {e})");
                }
            }
        }
    }
    Ok(())
}

/// The input's lines, read on a thread of their own (reading a terminal blocks).
fn stdin_lines() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// One turn: the reply as the model writes it, then the intent.
async fn turn(flow: &ChatFlow<ChatState>, session: &SessionId, message: &str) -> Result<(), ChatError> {
    let mut stream = flow.stream_turn(session, message);
    print!("bot> ");
    flush();
    while let Some(event) = stream.next().await {
        match event? {
            TurnEvent::Token(text) => {
                print!("{}", text.replace('\n', " "));
                flush();
            }
            TurnEvent::Finished(turn) => {
                let intent = turn.intent.unwrap_or_default();
                println!("\n     [{intent}, turn {}, {} tokens]", turn.index, turn.usage.total());
            }
            _ => {}
        }
    }
    Ok(())
}

async fn print_history(flow: &ChatFlow<ChatState>, session: &SessionId) -> Result<(), ChatError> {
    if let Some(s) = flow.session(session).await? {
        for m in &s.state.messages {
            println!("  {}: {}", m.role.as_str(), m.content);
        }
    }
    Ok(())
}

fn flush() {
    let _ = std::io::Write::flush(&mut std::io::stdout());
}
