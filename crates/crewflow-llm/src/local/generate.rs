//! The local text model: a GGUF file (SmolLM2 by default; `llama` or `qwen2` architecture)
//! run on the CPU with candle.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use futures::StreamExt;
use rayon::iter::{IntoParallelIterator, ParallelIterator};
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use super::models::llama::{Architecture, Llama, apply_repeat_penalty};
use super::models::sampling::Sampler;
use super::tokens::{Piece, TextStream};
use super::tools::{self, CallScanner};
use super::{default_model_path, default_threads, failed, pool, require};
use crate::error::LlmError;
use crate::provider::{BoxFuture, Provider};
use crate::stream::{Assembler, Delta, DeltaStream};
use crate::types::{ChatRequest, ChatResponse, FinishReason, ResponseFormat, Role, TokenUsage, ToolCall};

/// How the local model generates, where a request does not say.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The reply's length limit when the request sets none.
    pub max_tokens: u32,
    /// The penalty on recently used tokens (1.0 = none); small models loop without it.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// The seed for sampling when the request sets a temperature but no seed.
    pub seed: u64,
    /// Inference threads (see [the module docs](super)).
    pub threads: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            max_tokens: 256,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 299_792_458,
            threads: default_threads(),
        }
    }
}

/// A small language model on the CPU. Cheap to clone: clones share the loaded weights;
/// calls take turns on them.
///
/// ```no_run
/// # async fn demo() -> Result<(), crewflow_llm::LlmError> {
/// use crewflow_llm::{Llm, local::LocalModel};
///
/// let llm = Llm::from(LocalModel::load_default()?);
/// println!("{}", llm.complete("Write one sentence about the sea.").await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalModel {
    inner: Arc<Loaded>,
    options: LocalOptions,
}

struct Loaded {
    name: String,
    path: PathBuf,
    weights: Mutex<Llama>,
    tokenizer: Tokenizer,
    template: Option<String>,
    /// The template takes tools (`<tool_call>` blocks, see [`tools`]).
    takes_tools: bool,
    stop_ids: Vec<u32>,
    context_length: usize,
}

impl std::fmt::Debug for LocalModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModel").field("model", &self.inner.name).field("path", &self.inner.path).finish()
    }
}

impl LocalModel {
    /// Loads the default model ([`default_model_path`](super::default_model_path)); once per
    /// process, later calls share it.
    pub fn load_default() -> Result<Self, LlmError> {
        Self::load(default_model_path())
    }

    /// Loads a GGUF file (`llama` architecture: SmolLM, Llama, ...; or `qwen2`: Qwen2.5);
    /// once per process and path, later calls share it. Takes about a second for the
    /// default model.
    ///
    /// A model whose chat template declares tools in the `<tool_call>` format (Qwen2.5's)
    /// can be given tools; see [the module docs](super) for what that takes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LlmError> {
        static LOADED: Mutex<Option<HashMap<PathBuf, Arc<Loaded>>>> = Mutex::new(None);
        let path = path.as_ref().to_path_buf();
        require(&path, "model", super::MODEL_VAR)?;
        let options = LocalOptions::default();
        // Held while loading, so that concurrent first calls load once.
        let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(inner) = loaded.get_or_insert_with(HashMap::new).get(&path) {
            return Ok(LocalModel { inner: inner.clone(), options });
        }
        let inner = Arc::new(pool(options.threads)?.install(|| Loaded::read(&path))?);
        loaded.get_or_insert_with(HashMap::new).insert(path, inner.clone());
        Ok(LocalModel { inner, options })
    }

    /// Changes the defaults (reply length, repeat penalty, seed).
    pub fn with_options(mut self, options: LocalOptions) -> Self {
        self.options = options;
        self
    }

    /// The model's name, from the file's metadata.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The prompt the model sees for these messages (its chat template, rendered).
    pub fn prompt(&self, request: &ChatRequest) -> Result<String, LlmError> {
        self.inner.prompt(request)
    }

    /// Generates a reply on the calling thread, passing each text piece to `on_text`
    /// (return `false` to stop). Blocking: call it from a blocking thread.
    fn generate(
        &self,
        request: &ChatRequest,
        on_text: &mut (dyn FnMut(String) -> bool + Send),
    ) -> Result<(FinishReason, TokenUsage), LlmError> {
        let prompt = self.inner.prompt(request)?;
        let ids = self.inner.tokenizer.encode(prompt, false).map_err(|e| self.fail("cannot tokenize for", e))?;
        let ids = ids.get_ids().to_vec();
        let room = self.inner.context_length.saturating_sub(ids.len());
        if room == 0 {
            return Err(LlmError::ContextTooLong {
                provider: "local",
                message: format!(
                    "the prompt has {} tokens; {} holds {}",
                    ids.len(),
                    self.inner.name,
                    self.inner.context_length
                ),
            });
        }
        let max_tokens = (request.max_tokens.unwrap_or(self.options.max_tokens) as usize).min(room);
        let mut sampler = Sampler::new(
            request.seed.unwrap_or(self.options.seed),
            request.temperature.map(f64::from),
            request.top_p.map(f64::from),
        );
        pool(self.options.threads)?.install(|| self.decode(ids, max_tokens, &request.stop, &mut sampler, on_text))
    }

    fn decode(
        &self,
        prompt: Vec<u32>,
        max_tokens: usize,
        stops: &[String],
        sampler: &mut Sampler,
        on_text: &mut (dyn FnMut(String) -> bool + Send),
    ) -> Result<(FinishReason, TokenUsage), LlmError> {
        let mut weights = self.inner.weights.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let fail = |e: candle_core::Error| self.fail("cannot run", e);
        // The whole pieces the prompt shares with the previous one are in the cache already.
        let reused = weights.keep_prefix(&prompt).map_err(fail)?;
        let mut usage =
            TokenUsage { prompt_tokens: prompt.len() as u64, cached_tokens: reused as u64, ..TokenUsage::default() };
        let mut text = TextStream::new(stops);
        let mut logits = weights.prefill(&prompt, reused).and_then(|l| l.squeeze(0)).map_err(fail)?;
        let mut tokens = prompt;
        let decode = |ids: &[u32]| self.inner.tokenizer.decode(ids, true).unwrap_or_default();
        let finish = loop {
            let recent = &tokens[tokens.len().saturating_sub(self.options.repeat_last_n)..];
            let penalized = if self.options.repeat_penalty == 1.0 {
                logits
            } else {
                apply_repeat_penalty(&logits, self.options.repeat_penalty, recent).map_err(fail)?
            };
            let next = sampler.sample(&penalized).map_err(fail)?;
            if self.inner.stop_ids.contains(&next) {
                break FinishReason::Stop;
            }
            usage.completion_tokens += 1;
            tokens.push(next);
            let (piece, stopped) = match text.push(next, decode) {
                Piece::Text(piece) => (piece, false),
                Piece::Stop(piece) => (piece, true),
            };
            if !piece.is_empty() && !on_text(piece) {
                break FinishReason::Other("cancelled".into());
            }
            if stopped {
                break FinishReason::Stop;
            }
            if usage.completion_tokens as usize >= max_tokens {
                break FinishReason::Length;
            }
            logits = weights.step(next).and_then(|l| l.squeeze(0)).map_err(fail)?;
        };
        let rest = text.finish();
        if !rest.is_empty() {
            on_text(rest);
        }
        Ok((finish, usage))
    }

    fn fail(&self, doing: &str, error: impl std::fmt::Display) -> LlmError {
        failed(doing, &self.inner.path, error)
    }

    /// Whether this model's chat template takes tools.
    pub fn takes_tools(&self) -> bool {
        self.inner.takes_tools
    }

    /// The request, checked for what this local model can do.
    fn check(&self, request: &ChatRequest) -> Result<(), LlmError> {
        let unsupported = |what: String| Err(LlmError::Unsupported { provider: "local", what });
        if !request.tools.is_empty() && !self.inner.takes_tools {
            return unsupported(format!(
                "tool calls with {}: its chat template has no tool format (choose a hosted model with \
                 CREWFLOW_MODEL, or a local GGUF whose template takes tools, such as Qwen2.5's, with {})",
                self.inner.name,
                super::MODEL_VAR
            ));
        }
        if tools::has_images(request) {
            return unsupported("images".into());
        }
        Ok(())
    }
}

impl Loaded {
    fn read(path: &Path) -> Result<Loaded, LlmError> {
        let bytes = std::fs::read(path).map_err(|e| failed("cannot read", path, e))?;
        let content = gguf_file::Content::read(&mut Cursor::new(&bytes))
            .map_err(|e| failed("not a GGUF model file:", path, e))?;
        let meta = |key: &str| content.metadata.get(key);
        let named = meta("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let Some(architecture) = Architecture::from_gguf_name(&named) else {
            return Err(failed(
                "unsupported model architecture",
                path,
                format!("`{named}` (the local provider runs `llama` and `qwen2` GGUF files, like SmolLM2 and Qwen2.5)"),
            ));
        };
        let name = super::model_label(path);
        let context_length = meta(&format!("{}.context_length", architecture.key_prefix()))
            .and_then(|v| v.to_u32().ok())
            .unwrap_or(2048) as usize;
        let template = meta("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
        let takes_tools = template.as_deref().is_some_and(tools::template_takes_tools);
        let tokenizer = tokenizer_from(&content, path)?;
        let eos = meta("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
        let stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .chain(eos)
            .collect();
        let weights = fast_weights(architecture, content, bytes, path)?;
        Ok(Loaded {
            name,
            path: path.to_path_buf(),
            weights: Mutex::new(weights),
            tokenizer,
            template,
            takes_tools,
            stop_ids,
            context_length,
        })
    }

    fn prompt(&self, request: &ChatRequest) -> Result<String, LlmError> {
        let mut texts: Vec<String> = request.messages.iter().map(|m| m.text_content()).collect();
        let mut roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        let mut calls: Vec<&[ToolCall]> = request.messages.iter().map(|m| m.tool_calls.as_slice()).collect();
        if let Some(instruction) = format_instruction(request.response_format.as_ref()) {
            match (roles.first(), texts.first_mut()) {
                (Some(Role::System), Some(text)) => text.push_str(&format!("\n\n{instruction}")),
                _ => {
                    texts.insert(0, instruction);
                    roles.insert(0, Role::System);
                    calls.insert(0, &[]);
                }
            }
        }
        let offered = self.takes_tools && tools::offers_tools(request);
        let Some(template) = self.template.as_deref() else { return Ok(chatml(&roles, &texts)) };
        let messages: Vec<minijinja::Value> = (roles.iter().zip(texts.iter()).zip(&calls))
            .map(|((role, text), calls)| tools::template_message(*role, text.clone(), calls))
            .collect();
        let tool_list = if offered { tools::template_tools(request) } else { vec![] };
        match render_template(template, &messages, &tool_list) {
            Ok(prompt) if self.takes_tools => Ok(prompt + &tools::forced_opening(request)),
            Ok(prompt) => Ok(prompt),
            // Tools only exist in the template: without it they would be dropped unseen.
            Err(e) if offered => Err(failed("cannot render the chat template (with tools) of", &self.path, e)),
            Err(_) => Ok(chatml(&roles, &texts)),
        }
    }
}

/// What to tell the model about a JSON reply: it has no constrained decoding.
fn format_instruction(format: Option<&ResponseFormat>) -> Option<String> {
    match format? {
        ResponseFormat::Text => None,
        ResponseFormat::Json => Some("Reply with a single JSON object and nothing else.".into()),
        ResponseFormat::JsonSchema { schema, .. } => {
            Some(format!("Reply with a single JSON object matching this JSON Schema, and nothing else: {schema}"))
        }
    }
}

/// The GGUF's own chat template, rendered. `tools` is given to the template only when
/// there are some (templates test it for truth).
fn render_template(
    template: &str,
    messages: &[minijinja::Value],
    tools: &[minijinja::Value],
) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    env.add_filter("tojson", |value: minijinja::Value| tools::python_tojson(&value));
    env.add_template("chat", template)?;
    let tools = (!tools.is_empty()).then_some(tools);
    env.get_template("chat")?.render(minijinja::context! {
        messages, tools, add_generation_prompt => true, bos_token => "", eos_token => ""
    })
}

/// ChatML, the format SmolLM2 and Qwen use, for files without a usable template.
fn chatml(roles: &[Role], texts: &[String]) -> String {
    let mut out = String::new();
    for (role, content) in roles.iter().zip(texts) {
        let role = tools::role_name(*role);
        out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// The tokenizer stored in the GGUF. SmolLM's pre-tokenizer (`smollm`) is not one candle
/// knows; it is digits one by one, then byte-level without a prefix space (as in the
/// model's tokenizer.json), which gives the same ids as llama.cpp.
fn tokenizer_from(content: &gguf_file::Content, path: &Path) -> Result<Tokenizer, LlmError> {
    use candle_core::quantized::tokenizer::TokenizerFromGguf;
    let mut tokenizer = Tokenizer::from_gguf(content).map_err(|e| failed("cannot read the tokenizer of", path, e))?;
    let pre = content.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok());
    if pre.map(String::as_str) == Some("smollm") {
        let digits = Digits::new(true);
        let bytes = ByteLevel::new(false, true, true);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![digits.into(), bytes.into()])));
    }
    Ok(tokenizer)
}

/// The weights, with Q4_1/Q5_0/Q5_1 matrices re-quantized to Q8_0: candle has SIMD kernels
/// for Q8_0 but runs those formats scalar, about 5× slower. Takes under a second for 135M.
fn fast_weights(
    architecture: Architecture,
    content: gguf_file::Content,
    bytes: Vec<u8>,
    path: &Path,
) -> Result<Llama, LlmError> {
    let slow = |t: GgmlDType| matches!(t, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
    let fail = |e: candle_core::Error| failed("cannot load the weights of", path, e);
    let mut reader = Cursor::new(bytes);
    if !content.tensor_infos.values().any(|info| slow(info.ggml_dtype)) {
        return Llama::from_gguf(architecture, content, &mut reader, &Device::Cpu).map_err(fail);
    }
    let mut read = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        read.push((name.as_str(), content.tensor(&mut reader, name, &Device::Cpu).map_err(fail)?));
    }
    // Converted on every inference thread (the caller runs in the pool): most of the load.
    let tensors = read
        .into_par_iter()
        .map(|(name, tensor)| {
            let block_fits = tensor.shape().dims().last().is_some_and(|d| d % GgmlDType::Q8_0.block_size() == 0);
            if !(slow(tensor.dtype()) && block_fits) {
                return Ok((name, tensor));
            }
            let converted = QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?;
            Ok((name, converted))
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(fail)?;
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut fast = Cursor::new(Vec::new());
    gguf_file::write(&mut fast, &metadata, &tensor_refs).map_err(fail)?;
    drop(tensors);
    fast.set_position(0);
    let content = gguf_file::Content::read(&mut fast).map_err(fail)?;
    Llama::from_gguf(architecture, content, &mut fast, &Device::Cpu).map_err(fail)
}

impl From<LocalModel> for crate::Llm {
    fn from(model: LocalModel) -> Self {
        crate::Llm::from_provider(Arc::new(model))
    }
}

impl Provider for LocalModel {
    fn name(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        &self.inner.name
    }

    fn calls_tools(&self) -> BoxFuture<'_, Result<bool, LlmError>> {
        Box::pin(async { Ok(self.inner.takes_tools) })
    }

    fn chat<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let mut deltas = self.chat_stream(req).await?;
            let mut reply = Assembler::new(&self.inner.name);
            while let Some(delta) = deltas.next().await {
                reply.add(delta?);
            }
            Ok(reply.finish())
        })
    }

    fn chat_stream<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<DeltaStream, LlmError>> {
        Box::pin(async move {
            self.check(req)?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Delta, LlmError>>(32);
            let (model, request) = (self.clone(), req.clone());
            tokio::task::spawn_blocking(move || {
                // A reply that may call tools is read for `<tool_call>` blocks as it streams.
                let mut scanner = (model.inner.takes_tools && tools::offers_tools(&request))
                    .then(|| CallScanner::new(&request, &tools::forced_opening(&request)));
                let send = |delta: Delta| tx.blocking_send(Ok(delta)).is_ok();
                // Dropping the stream closes the channel: generation stops at the next token.
                let mut on_text = |piece: String| match &mut scanner {
                    Some(scanner) => scanner.push(&piece).into_iter().all(send),
                    None => send(Delta::Text(piece)),
                };
                let end = model.generate(&request, &mut on_text);
                let (rest, calls) = scanner.as_mut().map_or((vec![], 0), |s| (s.finish(), s.calls()));
                let deltas = match end {
                    Ok((finish, usage)) => {
                        let finish =
                            if calls > 0 && finish == FinishReason::Stop { FinishReason::ToolCalls } else { finish };
                        rest.into_iter().map(Ok).chain([Ok(Delta::Usage(usage)), Ok(Delta::Finish(finish))]).collect()
                    }
                    Err(e) => vec![Err(e)],
                };
                for delta in deltas {
                    if tx.blocking_send(delta).is_err() {
                        break;
                    }
                }
            });
            Ok(Box::pin(tokio_stream_from(rx)) as DeltaStream)
        })
    }
}

/// A receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Tool};

    const SMOL_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    /// Qwen2.5's chat template, as its GGUF files carry it.
    const QWEN_TEMPLATE: &str = include_str!("testdata/qwen2.5-chat-template.jinja");

    fn render(template: &str, request: &ChatRequest) -> Result<String, minijinja::Error> {
        let messages: Vec<_> =
            request.messages.iter().map(|m| tools::template_message(m.role, m.text_content(), &m.tool_calls)).collect();
        render_template(template, &messages, &tools::template_tools(request))
    }

    #[test]
    fn the_gguf_template_renders_like_chatml_with_its_default_system_prompt() {
        assert_eq!(
            render(SMOL_TEMPLATE, &ChatRequest::from("Hi")).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = ChatRequest::new([Message::system("Be brief."), Message::user("Hi")]);
        assert_eq!(
            render(SMOL_TEMPLATE, &with_system).unwrap(),
            chatml(&[Role::System, Role::User], &["Be brief.".into(), "Hi".into()])
        );
        assert!(render("{% for %}", &with_system).is_err(), "a broken template is an error (the caller falls back)");
    }

    /// The text Hugging Face's `apply_chat_template` gives for this conversation: the tools
    /// as Python's `json.dumps` prints them, a call and its result in Qwen's tags.
    #[test]
    fn qwens_template_renders_tools_calls_and_results_as_the_model_was_trained() {
        let lookup = Tool::new(
            "lookup",
            "Look up an order <by id>",
            serde_json::json!({"type": "object", "properties": {"order": {"type": "integer"}}, "required": ["order"]}),
        );
        let call = ToolCall::new("call_0", "lookup", r#"{"order":42}"#);
        let request = ChatRequest::new([
            Message::system("You help."),
            Message::user("Where is order 42?"),
            Message::assistant_tool_calls("", vec![call.clone()]),
            Message::tool_result(&call, "shipped, «today»"),
        ])
        .tool(lookup);
        let expected = concat!(
            "<|im_start|>system\nYou help.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n",
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
            r#"{"type": "function", "function": {"name": "lookup", "description": "Look up an order <by id>", "parameters": {"properties": {"order": {"type": "integer"}}, "required": ["order"], "type": "object"}}}"#,
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n",
            "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\nWhere is order 42?<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"order\": 42}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\nshipped, «today»\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\n",
        );
        assert_eq!(render(QWEN_TEMPLATE, &request).unwrap(), expected);
        assert!(tools::template_takes_tools(QWEN_TEMPLATE));
        assert!(!tools::template_takes_tools(SMOL_TEMPLATE));

        // Without tools (or with calling forbidden) the template's plain system prompt is used.
        let plain = render(QWEN_TEMPLATE, &ChatRequest::from("Hi")).unwrap();
        assert!(plain.starts_with("<|im_start|>system\nYou are Qwen") && !plain.contains("<tools>"), "{plain}");
    }
}
