//! Tool calls on a local model whose chat template takes tools (a Qwen2.5 GGUF).
//!
//! No package registry ships such a model with a stated licence, so CI has none and these
//! report themselves ignored; point `CREWFLOW_TEST_TOOL_MODEL` at a `.gguf` file to run them
//! (docs/agents.md, "Small models", says which file was measured). What runs everywhere: the
//! template rendering and the reading of calls (unit tests in `crewflow-llm`'s `local::tools`
//! and `local::generate`), and the refusal on a model without a tool format (`llm_local.rs`).
//! Assertions are on structure (a call of the right tool with well-formed arguments), which the
//! measured 0.5B model meets on these requests; never on wording.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crewflow::llm::local::LocalModel;
use crewflow::llm::{ChatRequest, FinishReason, Llm, Message, StreamEvent, Tool, ToolChoice};
use futures::StreamExt;

const IGNORED: &str = "set CREWFLOW_TEST_TOOL_MODEL to a local GGUF whose template takes tools";

fn llm() -> Llm {
    let path = std::env::var("CREWFLOW_TEST_TOOL_MODEL").expect(IGNORED);
    Llm::from(LocalModel::load(path).unwrap())
}

fn order_status() -> Tool {
    Tool::new(
        "order_status",
        "Looks up an order's status by its number.",
        serde_json::json!({
            "type": "object",
            "properties": {"order_id": {"type": "integer", "description": "The order's number."}},
            "required": ["order_id"]
        }),
    )
}

fn weather() -> Tool {
    Tool::new(
        "weather",
        "Gives the current weather in a city.",
        serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    )
}

fn question(text: &str) -> ChatRequest {
    ChatRequest::new([Message::system("You look facts up with the tools."), Message::user(text)])
        .tool(order_status())
        .tool(weather())
        .max_tokens(64)
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_tool_model_tests),
    ignore = "needs a local GGUF whose template takes tools: set CREWFLOW_TEST_TOOL_MODEL"
)]
async fn a_question_a_tool_answers_comes_back_as_a_call_with_its_arguments() {
    let llm = llm();
    assert!(llm.calls_tools().await.unwrap());
    let reply = llm.chat(question("What is the status of order 42?")).await.unwrap();
    assert_eq!(reply.finish_reason, Some(FinishReason::ToolCalls), "{reply:?}");
    let call = &reply.tool_calls[0];
    assert_eq!((call.name.as_str(), call.id.as_str()), ("order_status", "call_0"));
    assert_eq!(call.args::<serde_json::Value>().unwrap()["order_id"], 42, "{call:?}");
    assert!(!reply.text.contains("order_status"), "the call is not left in the text: {:?}", reply.text);

    // Streamed, the same call arrives as call events, and the assembled reply is the same.
    let mut stream = llm.stream(question("What is the status of order 42?")).await.unwrap();
    let (mut call_events, mut done) = (0, None);
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::ToolCall { .. } => call_events += 1,
            StreamEvent::Done(whole) => done = Some(whole),
            _ => {}
        }
    }
    assert!(call_events >= 1);
    assert_eq!(done.unwrap().tool_calls, reply.tool_calls);
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_tool_model_tests),
    ignore = "needs a local GGUF whose template takes tools: set CREWFLOW_TEST_TOOL_MODEL"
)]
async fn a_named_tool_choice_forces_that_call_and_none_forbids_calls() {
    let llm = llm();
    let forced = question("I am flying to Oslo tomorrow.").tool_choice(ToolChoice::Tool("weather".into()));
    let reply = llm.chat(forced).await.unwrap();
    assert_eq!(reply.tool_calls.len(), 1, "{reply:?}");
    assert_eq!(reply.tool_calls[0].name, "weather");
    assert!(reply.tool_calls[0].args::<serde_json::Value>().unwrap().is_object());

    let forbidden = question("Say hello.").tool_choice(ToolChoice::None);
    let reply = llm.chat(forbidden).await.unwrap();
    assert!(reply.tool_calls.is_empty(), "{reply:?}");
    assert_ne!(reply.finish_reason, Some(FinishReason::ToolCalls));
}
