//! Routing turns by intent: by example utterances and an embedder (with an explicit unknown
//! route), or by a model choosing from a closed set; model-written summaries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

mod common;

use common::chat::{on_file, on_file_with, sid, temp_db};
use common::http::{Reply, TestServer};
use crewflow::chat::{ChatError, ChatOptions, ChatState, TurnEvent};
use crewflow::llm::{HashEmbedder, Intents, LlmIntents, LlmOptions, RetryPolicy};
use crewflow::prelude::*;
use crewflow::{Error, EventKind};
use serde_json::json;

fn support_intents() -> Intents {
    Intents::new(HashEmbedder::default())
        .intent("billing", ["my invoice is wrong", "I was charged twice on my invoice", "refund my payment"])
        .intent("bug_report", ["the app crashes when I click save", "the save button crashes the app"])
        .threshold(0.3)
}

/// A flow whose router is the intent classifier; each intent has its own desk.
fn support_flow(path: &std::path::Path, intents: Intents) -> ChatFlow<ChatState> {
    let labels = intents.labels();
    let mut builder = FlowBuilder::<ChatState>::new("support")
        .start_router("route", move |cx: Cx<ChatState>, message: String| {
            let intents = intents.clone();
            async move { Ok(intents.route(&cx, &message).await?) }
        })
        .routes(labels.clone());
    for l in labels {
        builder = builder.listen(&format!("{l}_desk"), label(l.as_str()), move |_cx, (): ()| {
            let l = l.clone();
            async move { Ok(format!("{l} desk here")) }
        });
    }
    on_file(builder, path)
}

#[tokio::test]
async fn the_embedder_routes_by_example_and_below_the_threshold_to_unknown() {
    let (_dir, path) = temp_db();
    let flow = support_flow(&path, support_intents());
    let turn = flow.handle_turn(sid("s"), "why is my invoice wrong").await.unwrap();
    assert_eq!((turn.intent.as_deref(), turn.reply.as_str()), (Some("billing"), "billing desk here"));
    let turn = flow.handle_turn(sid("s"), "it crashes when I click save").await.unwrap();
    assert_eq!((turn.intent.as_deref(), turn.reply.as_str()), (Some("bug_report"), "bug_report desk here"));
    let turn = flow.handle_turn(sid("s"), "lovely weather today").await.unwrap();
    assert_eq!((turn.intent.as_deref(), turn.reply.as_str()), (Some("unknown"), "unknown desk here"));
    let turns = flow.session(sid("s")).await.unwrap().unwrap().turns;
    let intents: Vec<_> = turns.iter().map(|t| t.intent.as_deref()).collect();
    assert_eq!(intents, [Some("billing"), Some("bug_report"), Some("unknown")], "the intent is stored per turn");
}

/// Issue 18: the label a router returns is the turn's intent (on the `Turn`, in
/// `ChatState::last_intent` and in the stored turn record) without any `cx.set_intent`.
#[tokio::test]
async fn a_routers_label_is_the_turns_intent() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("routed")
            .start_router("route", |_cx, m: String| async move {
                Ok(if m.contains("invoice") { "billing" } else { "other" }.to_string())
            })
            .routes(["billing", "other"])
            .listen("desk", or([label("billing"), label("other")]), |cx: Cx<ChatState>, lane: String| async move {
                // Steps after the router get its label as their input.
                Ok(format!("{lane} desk, previous intent {:?}", cx.state(|s| s.previous_intent.clone())))
            }),
        &path,
    );
    let first = flow.handle_turn(sid("s"), "my invoice is wrong").await.unwrap();
    assert_eq!(
        (first.intent.as_deref(), first.reply.as_str()),
        (Some("billing"), "billing desk, previous intent None")
    );
    let second = flow.handle_turn(sid("s"), "hello").await.unwrap();
    assert_eq!(second.intent.as_deref(), Some("other"));
    assert_eq!(second.reply, r#"other desk, previous intent Some("billing")"#, "the recorded intent carries over");
    let session = flow.session(sid("s")).await.unwrap().unwrap();
    assert_eq!(session.state.last_intent.as_deref(), Some("other"));
    let stored: Vec<_> = session.turns.iter().map(|t| t.intent.as_deref()).collect();
    assert_eq!(stored, [Some("billing"), Some("other")]);
}

/// The first router's label is the intent, not a later router's; a step's `cx.set_intent`
/// wins over both; a turn with no router and no `set_intent` has none.
#[tokio::test]
async fn set_intent_wins_and_otherwise_the_first_router_gives_the_intent() {
    let (_dir, path) = temp_db();
    let flow = on_file(
        FlowBuilder::<ChatState>::new("two_routers")
            .start_router("topic", |_cx, _m: String| async move { Ok("support".to_string()) })
            .routes(["support"])
            .router("desk", label("support"), |cx: Cx<ChatState>, (): ()| async move {
                if cx.user_message().contains("override") {
                    cx.set_intent("refund");
                }
                Ok("billing".to_string())
            })
            .routes(["billing"])
            .listen("answer", label("billing"), |_cx, (): ()| async move { Ok("on it".to_string()) }),
        &path,
    );
    let turn = flow.handle_turn(sid("s"), "help").await.unwrap();
    assert_eq!(turn.routes, ["support", "billing"]);
    assert_eq!(turn.intent.as_deref(), Some("support"), "the first router's label");
    let turn = flow.handle_turn(sid("s"), "override please").await.unwrap();
    assert_eq!(turn.intent.as_deref(), Some("refund"), "cx.set_intent wins");

    let plain =
        on_file(FlowBuilder::<ChatState>::new("plain").start("answer", |_cx, m: String| async move { Ok(m) }), &path);
    assert_eq!(plain.handle_turn(sid("s"), "hi").await.unwrap().intent, None);
}

#[tokio::test]
async fn the_routing_decision_is_an_event_with_its_score() {
    let (_dir, path) = temp_db();
    let flow = support_flow(&path, support_intents());
    let mut stream = flow.stream_turn(sid("s"), "nothing like the examples");
    let mut decision = None;
    while let Some(item) = stream.next().await {
        if let TurnEvent::Event(e) = item.unwrap()
            && let EventKind::Custom { name, data } = &e.kind
            && &**name == "intent"
        {
            decision = Some(data.clone());
        }
    }
    let decision = decision.expect("an intent event");
    assert_eq!(decision["label"], "unknown");
    assert!(decision["closest"].is_string(), "the closest intent is reported even below the threshold");
}

#[tokio::test]
async fn intents_are_embedded_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Default)]
    struct Counting(Arc<AtomicUsize>, HashEmbedder);
    impl crewflow::llm::Embedder for Counting {
        fn embed<'a>(&'a self, texts: &'a [&'a str]) -> crewflow::llm::EmbedFuture<'a> {
            self.0.fetch_add(texts.len(), Ordering::SeqCst);
            self.1.embed(texts)
        }
        fn model_id(&self) -> String {
            "counting".into()
        }
    }
    let counter = Counting::default();
    let intents = Intents::new(counter.clone()).intent("a", ["x y", "y z"]).intent("b", ["q"]);
    for _ in 0..5 {
        intents.classify("x").await.unwrap();
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 3 + 5, "3 examples once, then one vector per message");
}

fn llm(server: &TestServer) -> Llm {
    Llm::with_options(
        "openai/gpt-4o-mini",
        LlmOptions::default().base_url(format!("{}/v1", server.url)).api_key("sk-test").retry(RetryPolicy::none()),
    )
    .unwrap()
}

fn completion(text: &str) -> serde_json::Value {
    json!({
        "id": "r", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "finish_reason": "stop", "message": { "role": "assistant", "content": text } }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12 }
    })
}

fn llm_flow(path: &std::path::Path, intents: LlmIntents) -> ChatFlow<ChatState> {
    let labels = intents.labels();
    on_file(
        FlowBuilder::<ChatState>::new("llm_routed")
            .start_router("route", move |cx: Cx<ChatState>, message: String| {
                let intents = intents.clone();
                async move { Ok(intents.route(&cx, &message).await?) }
            })
            .routes(labels)
            .listen("billing_desk", label("billing"), |_cx, (): ()| async move { Ok("billing".to_string()) })
            .listen("other_desk", label("small_talk"), |_cx, (): ()| async move { Ok("chat".to_string()) }),
        path,
    )
}

#[tokio::test]
async fn a_model_picks_the_intent_from_a_closed_set() {
    let server = TestServer::start(vec![Reply::json(200, &completion(r#"{"label": "billing"}"#))]).await;
    let (_dir, path) = temp_db();
    let flow = llm_flow(&path, LlmIntents::new(llm(&server), ["billing", "small_talk"]));
    let turn = flow.handle_turn(sid("s"), "refund please").await.unwrap();
    assert_eq!((turn.intent.as_deref(), turn.reply.as_str()), (Some("billing"), "billing"));
    assert_eq!(turn.usage.total(), 12);
    let sent = server.requests()[0].json();
    assert!(sent.to_string().contains("small_talk"), "the model is offered the closed set");
}

#[tokio::test]
async fn a_model_naming_no_label_fails_the_turn_instead_of_falling_back() {
    let bad = completion(r#"{"label": "weather"}"#);
    let server = TestServer::start(vec![Reply::json(200, &bad), Reply::json(200, &bad)]).await;
    let (_dir, path) = temp_db();
    let flow = llm_flow(&path, LlmIntents::new(llm(&server), ["billing", "small_talk"]));
    let err = flow.handle_turn(sid("s"), "what's the weather").await.unwrap_err();
    assert!(matches!(err, ChatError::Run(Error::StepFailed { .. })), "{err:?}");
    assert!(err.to_string().contains("label"), "{err}");
    assert!(flow.session(sid("s")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_model_summarizes_older_turns() {
    let server = TestServer::start(vec![Reply::json(200, &completion("They greeted each other."))]).await;
    let (_dir, path) = temp_db();
    let flow = on_file_with(
        FlowBuilder::<ChatState>::new("summarized").start("answer", |_cx, m: String| async move { Ok(m) }),
        &path,
        ChatOptions::default().window(2).summarize(4, llm(&server)),
    );
    let mut compacted = Vec::new();
    for i in 0..3 {
        compacted.push(flow.handle_turn(sid("s"), &format!("hello {i}")).await.unwrap().compacted);
    }
    assert_eq!(compacted, [false, false, true], "compaction once more than 4 messages are uncovered");
    let state = flow.session(sid("s")).await.unwrap().unwrap().state;
    assert_eq!(state.summary.as_deref(), Some("They greeted each other."));
    assert_eq!(state.summarized, 4);
    let sent = server.requests()[0].json().to_string();
    assert!(sent.contains("hello 0") && sent.contains("hello 1") && !sent.contains("hello 2"), "{sent}");
}

/// The support example's intents on the local MiniLM embedder, with paraphrases that share
/// few words with the examples (so matching is by meaning, not by word overlap).
#[tokio::test]
#[cfg_attr(not(crewflow_local_model_tests), ignore = "set CREWFLOW_TEST_LOCAL_MODELS=1 after scripts/fetch-models")]
async fn minilm_routes_paraphrases_to_their_intents() {
    let embedder = crewflow::llm::local::LocalEmbedder::load_default().unwrap();
    let intents = Intents::new(embedder)
        .intent("billing", ["I was charged twice this month.", "My invoice shows the wrong amount."])
        .intent("bug_report", ["The app crashes when I click save.", "I get an error 500 when uploading a file."])
        .intent("security", ["Someone logged into my account from another country.", "I think my password was stolen."])
        .intent("small_talk", ["Hello!", "How are you today?"])
        .threshold(0.45);
    let cases = [
        ("Why did you bill my card two times?", "billing"),
        ("The program freezes and closes whenever I press the save button", "bug_report"),
        ("A stranger got into my account and changed my email", "security"),
        ("Hi there, good morning!", "small_talk"),
        ("What is the boiling point of tungsten?", "unknown"),
    ];
    for (text, expected) in cases {
        let found = intents.classify(text).await.unwrap();
        assert_eq!(found.label, expected, "{text}: {found:?}");
    }
}
