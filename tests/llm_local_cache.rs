//! The local model's prompt cache, with the real model (SmolLM2-135M-Instruct): a test of its
//! own, in a process of its own, so that no other test's prompt passes through the model's
//! cache between its calls. Needs `scripts/fetch-models` and `CREWFLOW_TEST_LOCAL_MODELS=1`.
#![allow(clippy::unwrap_used)]

use crewflow::llm::local::LocalModel;
use crewflow::llm::{ChatRequest, Llm, Message};

/// A prompt that begins as the previous one did (the same system prompt) runs only from where
/// they differ: the shared tokens' keys and values stay in the cache (`cached_tokens`), and the
/// reply is the one the whole prompt gives from an empty cache.
#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn a_shared_start_of_the_prompt_is_run_once_and_changes_no_reply() {
    let llm = Llm::from(LocalModel::load_default().unwrap());
    let system = "You are a support agent for a bank. Answer in one short sentence, politely, without greeting.";
    let ask = |question: &str| {
        ChatRequest::new([Message::system(system), Message::user(question)]).max_tokens(24).temperature(0.0)
    };
    let fresh = llm.chat(ask("My card was stolen.")).await.unwrap();
    let other = llm.chat(ask("How do I open an account?")).await.unwrap();
    assert!(other.usage.cached_tokens >= 16, "the system prompt was not run again: {:?}", other.usage);
    assert!(other.usage.cached_tokens < other.usage.prompt_tokens, "{:?}", other.usage);
    let again = llm.chat(ask("My card was stolen.")).await.unwrap();
    assert!(again.usage.cached_tokens >= 16, "{:?}", again.usage);
    assert_eq!(again.text, fresh.text, "the same reply with the start of the prompt from the cache");
    // The very same prompt again: its whole pieces of 16 tokens but the one holding its last
    // token come from the cache (a prompt runs in pieces cut at multiples of 16, so that what is
    // cached was computed as a fresh run computes it).
    let same = llm.chat(ask("My card was stolen.")).await.unwrap();
    assert_eq!(same.usage.cached_tokens, (same.usage.prompt_tokens - 1) / 16 * 16, "{:?}", same.usage);
    assert_eq!(same.text, fresh.text);
    // A follow-up whose prompt holds the earlier reply: generated tokens ran one by one, so
    // they are never reused, and the follow-up's reply is the one an empty cache gives.
    let follow = ChatRequest::new([
        Message::system(system),
        Message::user("My card was stolen."),
        Message::assistant(fresh.text.clone()),
        Message::user("What should I do now?"),
    ])
    .max_tokens(24)
    .temperature(0.0);
    let followed = llm.chat(follow.clone()).await.unwrap();
    let prompt_only = (fresh.usage.prompt_tokens as usize - 1) / 16 * 16;
    assert!(followed.usage.cached_tokens as usize <= prompt_only.max(16), "{:?}", followed.usage);
    // An unrelated prompt in between (it shares less than a piece): the follow-up then runs
    // from an empty cache, and gives the same reply.
    let unrelated = ChatRequest::new([Message::user("Name a colour.")]).max_tokens(4);
    llm.chat(unrelated).await.unwrap();
    let from_scratch = llm.chat(follow).await.unwrap();
    assert_eq!(from_scratch.usage.cached_tokens, 0, "{:?}", from_scratch.usage);
    assert_eq!(followed.text, from_scratch.text);
}
