//! The flows the server's tests host: a greeting, a step held by a semaphore, a flaky step,
//! a pause for feedback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crewflow_core::persist::RunStore;
use crewflow_core::trigger::label;
use crewflow_core::{Cx, DeferredFeedback, Flow, FlowBuilder, HumanFeedback, StepError};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Greeting {
    pub name: String,
    pub times: u32,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Doc {}

/// `hello` greets the input's name, `shout` upper-cases it.
pub fn greet(store: &Arc<dyn RunStore>) -> Flow<Greeting> {
    FlowBuilder::<Greeting>::new("greet")
        .start(
            "hello",
            |cx: Cx<Greeting>, (): ()| async move { Ok(format!("hello, {}", cx.state(|g| g.name.clone()))) },
        )
        .listen("shout", "hello", |_cx: Cx<Greeting>, text: String| async move { Ok(text.to_uppercase()) })
        .store(store.clone())
        .build()
        .unwrap()
}

/// A flow whose second step waits for a permit of `gate` (one per run, used up), so a test
/// holds a run mid-way with no timing involved.
pub fn gated(store: &Arc<dyn RunStore>, gate: Arc<tokio::sync::Semaphore>) -> Flow<Doc> {
    FlowBuilder::<Doc>::new("gated")
        .start("first", |_cx: Cx<Doc>, (): ()| async move { Ok("first") })
        .listen("wait", "first", move |_cx: Cx<Doc>, _: String| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.map_err(StepError::msg)?.forget();
                Ok("released")
            }
        })
        .store(store.clone())
        .build()
        .unwrap()
}

/// A flow whose second step fails the first time it runs, and succeeds after.
pub fn flaky(store: &Arc<dyn RunStore>, failed: Arc<AtomicBool>) -> Flow<Doc> {
    FlowBuilder::<Doc>::new("flaky")
        .start("prepare", |_cx: Cx<Doc>, (): ()| async move { Ok(7u32) })
        .listen("finish", "prepare", move |_cx: Cx<Doc>, n: u32| {
            let failed = failed.clone();
            async move {
                if !failed.swap(true, Ordering::SeqCst) {
                    return Err(StepError::msg("the first attempt fails"));
                }
                Ok(n * 6)
            }
        })
        .store(store.clone())
        .build()
        .unwrap()
}

/// `draft`, then a pause for feedback: `approved` publishes, `rejected` bins.
pub fn review(store: &Arc<dyn RunStore>) -> Flow<Doc> {
    FlowBuilder::<Doc>::new("review")
        .start("draft", |_cx: Cx<Doc>, (): ()| async move { Ok("the draft") })
        .human_feedback(HumanFeedback::new("Publish?").emit(["approved", "rejected"]).provider(DeferredFeedback))
        .listen("on_approved", label("approved"), |_cx: Cx<Doc>, (): ()| async move { Ok("published") })
        .listen("on_rejected", label("rejected"), |_cx: Cx<Doc>, (): ()| async move { Ok("binned") })
        .store(store.clone())
        .build()
        .unwrap()
}

/// A conversational flow that replies `echo: <message>`, its sessions in `sessions` (a SQLite
/// file).
pub fn echo_chat(sessions: impl AsRef<std::path::Path>) -> crewflow_chat::ChatFlow<crewflow_chat::ChatState> {
    use crewflow_chat::{ChatCx, ChatFlow, ChatState};
    let echo = FlowBuilder::<ChatState>::new("echo")
        .start("answer", |cx: Cx<ChatState>, message: String| async move {
            cx.reply(format!("echo: {message}"));
            Ok(())
        })
        .build()
        .unwrap();
    ChatFlow::new(echo, crewflow_store::SqliteStore::open(sessions.as_ref()))
}

/// A conversational flow `talk` that replies `echo: <message>` streamed word by word, as a
/// model's reply is (`llm_chunk` events, `token` frames), and holds the reply's last word until
/// it takes a permit of `gate` (one per turn): a test sees the partial reply with no timing
/// involved.
pub fn streaming_chat(
    sessions: impl AsRef<std::path::Path>,
    gate: Arc<tokio::sync::Semaphore>,
) -> crewflow_chat::ChatFlow<crewflow_chat::ChatState> {
    use crewflow_chat::{ChatCx, ChatFlow, ChatState};
    use crewflow_core::EventKind;
    let talk = FlowBuilder::<ChatState>::new("talk")
        .start("answer", move |cx: Cx<ChatState>, message: String| {
            let gate = gate.clone();
            async move {
                let reply = format!("echo: {message}");
                let scope = crewflow_core::scope::current().ok_or_else(|| StepError::msg("no step scope"))?;
                let call = scope.next_call();
                let pieces: Vec<&str> = reply.split_inclusive(' ').collect();
                for (i, piece) in pieces.iter().enumerate() {
                    if i + 1 == pieces.len() {
                        gate.acquire().await.map_err(StepError::msg)?.forget();
                    }
                    scope.emit(|| EventKind::LlmChunk { call, text: piece.to_string() });
                }
                cx.reply(reply);
                Ok(())
            }
        })
        .build()
        .unwrap();
    ChatFlow::new(talk, crewflow_store::SqliteStore::open(sessions.as_ref()))
}
