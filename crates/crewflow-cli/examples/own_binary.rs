//! A binary of your own with the `crewflow` command line built in, for its compiled flows:
//!
//! ```text
//! cargo run -p crewflow-cli --example own_binary -- run greet --input name=Ada
//! cargo run -p crewflow-cli --example own_binary -- plot greet --format mermaid
//! CREWFLOW_DB=sqlite://greet.db cargo run -p crewflow-cli --example own_binary -- runs list
//! CREWFLOW_DB=sqlite://greet.db cargo run -p crewflow-cli --example own_binary -- chat echo --session ada
//! CREWFLOW_DB=sqlite://greet.db cargo run -p crewflow-cli --example own_binary -- serve
//! ```
//!
//! With `$CREWFLOW_DB` set, the flow keeps its runs in that store (so `runs list`, `trace`,
//! `runs fork` and `worker` see them) and the conversational flow `echo` its sessions; without
//! it, runs and sessions live in memory.

use std::process::ExitCode;

use crewflow_chat::{ChatCx, ChatFlow, ChatState};
use crewflow_core::trigger::label;
use crewflow_core::{Cx, EventKind, Flow, FlowBuilder};
use serde_json::{Map, Value};

type State = Map<String, Value>;

/// `greet`: `hello` greets `name`, `check` routes long names apart, then `done` or `long`.
fn greet() -> Result<Flow<State>, crewflow_core::Error> {
    let mut builder = FlowBuilder::<State>::new("greet")
        .start("hello", |cx: Cx<State>, (): ()| async move {
            let name = cx.state(|s| s.get("name").and_then(Value::as_str).unwrap_or("world").to_string());
            Ok(format!("hello, {name}"))
        })
        .router("check", "hello", |_cx: Cx<State>, greeting: String| async move {
            Ok(if greeting.len() > 20 { "long" } else { "short" }.to_string())
        })
        .routes(["short", "long"])
        .listen("done", label("short"), |_cx: Cx<State>, (): ()| async { Ok("greeted".to_string()) })
        .listen("long", label("long"), |_cx: Cx<State>, (): ()| async { Ok("greeted at length".to_string()) });
    if let Some(url) = std::env::var("CREWFLOW_DB").ok().filter(|u| !u.is_empty()) {
        let store = crewflow_store::open(&url).map_err(|e| crewflow_core::Error::Internal(e.to_string()))?;
        builder = builder.store(store);
    }
    builder.build()
}

/// `echo`: a conversational flow that answers each message with the turn's number and the
/// message, streamed word by word (offline: no model).
fn echo() -> Result<ChatFlow<ChatState>, crewflow_core::Error> {
    let flow = FlowBuilder::<ChatState>::new("echo")
        .start("answer", |cx: Cx<ChatState>, message: String| async move {
            let turn = cx.state(|s| s.turns);
            let reply = format!("turn {turn}: you said {message}");
            // Streamed in pieces, as a model's reply is (`llm_chunk` events), so `chat` prints
            // it as it arrives; a model step gets this from `crewflow_llm` by itself.
            if let Some(scope) = crewflow_core::scope::current() {
                let call = scope.next_call();
                for piece in reply.split_inclusive(' ') {
                    scope.emit(|| EventKind::LlmChunk { call, text: piece.to_string() });
                }
            }
            cx.reply(reply);
            Ok(())
        })
        .build()?;
    Ok(match std::env::var("CREWFLOW_DB").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let sessions =
                crewflow_store::open_sessions(&url).map_err(|e| crewflow_core::Error::Internal(e.to_string()))?;
            ChatFlow::with_shared_store(flow, sessions)
        }
        None => ChatFlow::new(flow, crewflow_store::SqliteStore::in_memory()),
    })
}

/// Mounts `greet` and `echo` into the crewflow command line and runs this process's arguments.
pub fn main() -> ExitCode {
    match greet().and_then(|flow| Ok((flow, echo()?))) {
        Ok((flow, chat)) => crewflow_cli::App::new().flow(&flow).chat(&chat).run(),
        Err(e) => {
            eprintln!("error: the example's flows do not build: {e}");
            ExitCode::from(2)
        }
    }
}
