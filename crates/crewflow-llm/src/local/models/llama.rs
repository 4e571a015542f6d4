//! A llama-architecture language model from a GGUF file (SmolLM2, Llama, ...), quantized
//! matrices, on candle. Dense models only (no mixture of experts). The `qwen2` architecture
//! (Qwen2, Qwen2.5) is the same network with biases on the query, key and value projections
//! and the rotary embedding applied to the two halves of a head (llama.cpp's "neox" rope)
//! rather than to interleaved pairs; [`Architecture`] says which.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::Embedding;

/// The longest sequence the rotary tables cover.
const MAX_SEQ_LEN: usize = 4096;

/// A prompt runs in pieces of this many tokens, cut at multiples of it from the sequence's
/// start ([`Llama::prefill`]), so that a token's keys and values are computed the same way
/// whatever came before in the cache; only whole pieces are reused.
pub(crate) const PREFILL_CHUNK: usize = 16;

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn from_qtensor(weight: QTensor, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: weight.dequantize(&weight.device())?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct Mlp {
    gate: QMatMul,
    down: QMatMul,
    up: QMatMul,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let up = self.up.forward(x)?;
        self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

/// The architectures [`Llama`] runs, by their GGUF name (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Architecture {
    /// `llama`: SmolLM2, Llama, Mistral-style dense models.
    Llama,
    /// `qwen2`: Qwen2 and Qwen2.5.
    Qwen2,
}

impl Architecture {
    /// The architecture of a GGUF file's `general.architecture`, if it is one of these.
    pub(crate) fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Architecture::Llama),
            "qwen2" => Some(Architecture::Qwen2),
            _ => None,
        }
    }

    /// The prefix of the architecture's metadata keys (`llama.block_count`, ...).
    pub(crate) fn key_prefix(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// A projection: a quantized matrix, with a bias in `qwen2`.
struct Projection {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Projection {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

struct Layer {
    wq: Projection,
    wk: Projection,
    wv: Projection,
    wo: QMatMul,
    attention_norm: RmsNorm,
    mlp: Mlp,
    ffn_norm: RmsNorm,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    /// The rotary embedding on the halves of a head (`qwen2`), not on interleaved pairs.
    rope_halves: bool,
    kv_cache: Option<(Tensor, Tensor)>,
}

impl Layer {
    fn rotary(&self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_batch, _heads, seq_len, _dim) = x.dims4()?;
        let cos = self.cos.narrow(0, index_pos, seq_len)?;
        let sin = self.sin.narrow(0, index_pos, seq_len)?;
        if self.rope_halves {
            candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
        } else {
            candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)
        }
    }

    fn attention(&mut self, x: &Tensor, mask: Option<&Tensor>, index_pos: usize) -> Result<Tensor> {
        let (batch, seq_len, n_embd) = x.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((batch, seq_len, n, self.head_dim))?.transpose(1, 2);
        let q = heads(self.wq.forward(x)?, self.n_head)?;
        let k = heads(self.wk.forward(x)?, self.n_kv_head)?;
        // Contiguous so that the matmul below takes its fast path (a no-op after the prompt).
        let v = heads(self.wv.forward(x)?, self.n_kv_head)?.contiguous()?;
        let q = self.rotary(&q, index_pos)?;
        let k = self.rotary(&k, index_pos)?;
        let (k, v) = match &self.kv_cache {
            Some((k_cache, v_cache)) if index_pos > 0 => {
                (Tensor::cat(&[k_cache, &k], 2)?, Tensor::cat(&[v_cache, &v], 2)?)
            }
            _ => (k, v),
        };
        self.kv_cache = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, self.n_head / self.n_kv_head)?;
        let v = repeat_kv(v, self.n_head / self.n_kv_head)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = match mask {
            None => scores,
            Some(mask) => {
                let mask = mask.broadcast_as(scores.shape())?;
                mask.where_cond(&self.neg_inf.broadcast_as(mask.shape().dims())?, &scores)?
            }
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape(&[batch, seq_len, n_embd])?;
        self.wo.forward(&y)
    }
}

/// Grouped-query attention: each key/value head serves `n_rep` query heads. `cat` rather than
/// a broadcast, which would go through a strided copy.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (batch, n_kv_head, seq_len, head_dim) = x.dims4()?;
    Tensor::cat(&vec![&x; n_rep], 2)?.reshape((batch, n_kv_head * n_rep, seq_len, head_dim))
}

/// The weights of a llama-architecture model, with its key/value cache.
pub(crate) struct Llama {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    /// Causal masks by (sequence length, key length).
    masks: HashMap<(usize, usize), Tensor>,
    /// The tokens whose keys and values every layer's cache holds, in order (see
    /// [`Llama::keep_prefix`]).
    cached: Vec<u32>,
    /// How many of `cached` went through [`Llama::prefill`] in whole pieces: those alone may be
    /// reused (a generated token ran alone, a prompt's last piece may be short).
    reusable: usize,
}

fn rotary_tables(head_dim: usize, freq_base: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1f32 / freq_base.powf(i as f32 / head_dim as f32)).collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let angles = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((MAX_SEQ_LEN, 1))?
        .matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

impl Llama {
    /// Reads the weights of a GGUF file of this architecture.
    pub(crate) fn from_gguf<R: Seek + Read>(
        architecture: Architecture,
        ct: gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let prefix = architecture.key_prefix();
        let meta = |key: &str| {
            let key = format!("{prefix}.{key}");
            match ct.metadata.get(&key) {
                Some(value) => Ok(value),
                None => candle_core::bail!("the GGUF metadata has no `{key}`"),
            }
        };
        let experts = meta("expert_count").and_then(|v| v.to_u32()).unwrap_or(0);
        if experts > 1 {
            candle_core::bail!("a mixture-of-experts model ({experts} experts); the local provider runs dense models");
        }
        let n_head = meta("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = meta("attention.head_count_kv")?.to_u32()? as usize;
        let block_count = meta("block_count")?.to_u32()? as usize;
        let embedding_length = meta("embedding_length")?.to_u32()? as usize;
        // Qwen2 files do not say it: the whole head turns.
        let rope_dim =
            meta("rope.dimension_count").and_then(|v| v.to_u32()).map_or(embedding_length / n_head, |d| d as usize);
        let eps = meta("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let freq_base = meta("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0);
        let (cos, sin) = rotary_tables(rope_dim, freq_base, device)?;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?;
        let mut tensor = |name: &str| ct.tensor(reader, name, device);
        let embeddings_q = tensor("token_embd.weight")?;
        let embeddings = embeddings_q.dequantize(device)?;
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        // Models with tied embeddings (SmolLM2) have no output matrix.
        let output = tensor("output.weight").unwrap_or(embeddings_q);
        let mut layers = Vec::with_capacity(block_count);
        for index in 0..block_count {
            let mut matmul = |part: &str| QMatMul::from_qtensor(tensor(&format!("blk.{index}.{part}.weight"))?);
            let wo = matmul("attn_output")?;
            let mlp = Mlp { gate: matmul("ffn_gate")?, down: matmul("ffn_down")?, up: matmul("ffn_up")? };
            let mut projection = |part: &str| -> Result<Projection> {
                let weight = QMatMul::from_qtensor(tensor(&format!("blk.{index}.{part}.weight"))?)?;
                let bias = match architecture {
                    Architecture::Llama => None,
                    Architecture::Qwen2 => Some(tensor(&format!("blk.{index}.{part}.bias"))?.dequantize(device)?),
                };
                Ok(Projection { weight, bias })
            };
            let (wq, wk, wv) = (projection("attn_q")?, projection("attn_k")?, projection("attn_v")?);
            let attention_norm = RmsNorm::from_qtensor(tensor(&format!("blk.{index}.attn_norm.weight"))?, eps)?;
            let ffn_norm = RmsNorm::from_qtensor(tensor(&format!("blk.{index}.ffn_norm.weight"))?, eps)?;
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                attention_norm,
                mlp,
                ffn_norm,
                n_head,
                n_kv_head,
                head_dim: embedding_length / n_head,
                cos: cos.clone(),
                sin: sin.clone(),
                neg_inf: neg_inf.clone(),
                rope_halves: architecture == Architecture::Qwen2,
                kv_cache: None,
            });
        }
        Ok(Llama {
            embeddings: Embedding::new(embeddings, embedding_length),
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            masks: HashMap::new(),
            cached: Vec::new(),
            reusable: 0,
        })
    }

    /// A causal mask of shape (sequence, index_pos + sequence): 1 where a query may not look.
    fn mask(&mut self, seq_len: usize, index_pos: usize, device: &Device) -> Result<Tensor> {
        let kv_len = index_pos + seq_len;
        if let Some(mask) = self.masks.get(&(seq_len, kv_len)) {
            return Ok(mask.clone());
        }
        let cells: Vec<u8> = (0..seq_len).flat_map(|i| (0..kv_len).map(move |j| u8::from(j > index_pos + i))).collect();
        let mask = Tensor::from_slice(&cells, (seq_len, kv_len), device)?;
        self.masks.insert((seq_len, kv_len), mask.clone());
        Ok(mask)
    }

    /// Forgets the key/value cache (before an unrelated prompt).
    pub(crate) fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.kv_cache = None;
        }
        self.cached.clear();
        self.reusable = 0;
    }

    /// Keeps, of the key/value cache, the whole pieces of the previous prompt that `prompt`
    /// begins with (leaving at least its last token to run, whose logits give the first reply
    /// token) and returns how many tokens that is: [`prefill`](Llama::prefill) goes on from
    /// there. Requests that share a system prompt (an agent's, a step's instructions) pay for
    /// it once. What is kept was computed exactly as running the prompt from an empty cache
    /// computes it (the same pieces, the same tokens before them), so the reply is the same
    /// bit for bit, whatever ran before.
    pub(crate) fn keep_prefix(&mut self, prompt: &[u32]) -> Result<usize> {
        let shared = self.cached.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = shared.min(self.reusable).min(prompt.len().saturating_sub(1)) / PREFILL_CHUNK * PREFILL_CHUNK;
        if keep == 0 {
            self.clear_kv_cache();
            return Ok(0);
        }
        for layer in &mut self.layers {
            if let Some((k, v)) = &layer.kv_cache {
                layer.kv_cache = Some((k.narrow(2, 0, keep)?, v.narrow(2, 0, keep)?));
            }
        }
        self.cached.truncate(keep);
        self.reusable = keep;
        Ok(keep)
    }

    /// Runs `prompt` from token `from` (what [`keep_prefix`](Llama::keep_prefix) kept) in
    /// pieces cut at multiples of [`PREFILL_CHUNK`]; the logits of the token after it.
    pub(crate) fn prefill(&mut self, prompt: &[u32], from: usize) -> Result<Tensor> {
        let mut position = from;
        let mut logits = None;
        while position < prompt.len() {
            let end = ((position / PREFILL_CHUNK + 1) * PREFILL_CHUNK).min(prompt.len());
            let piece = &prompt[position..end];
            logits = Some(self.forward(&Tensor::new(piece, &Device::Cpu)?.unsqueeze(0)?, position)?);
            self.cached.extend_from_slice(piece);
            if end.is_multiple_of(PREFILL_CHUNK) {
                self.reusable = end;
            }
            position = end;
        }
        logits.ok_or_else(|| candle_core::Error::Msg("an empty prompt has nothing to run".into()))
    }

    /// Runs one generated token, at the end of the cached sequence; the logits of the next.
    pub(crate) fn step(&mut self, token: u32) -> Result<Tensor> {
        let position = self.cached.len();
        let logits = self.forward(&Tensor::new(&[token], &Device::Cpu)?.unsqueeze(0)?, position)?;
        self.cached.push(token);
        Ok(logits)
    }

    /// The logits of the token after `x` (shape (batch, sequence)), whose first token sits at
    /// `index_pos` in the cached sequence.
    fn forward(&mut self, x: &Tensor, index_pos: usize) -> Result<Tensor> {
        let (_batch, seq_len) = x.dims2()?;
        let mask = if seq_len == 1 { None } else { Some(self.mask(seq_len, index_pos, x.device())?) };
        let mut hidden = self.embeddings.forward(x)?;
        for layer in &mut self.layers {
            let attention = layer.attention(&layer.attention_norm.forward(&hidden)?, mask.as_ref(), index_pos)?;
            let x = (attention + &hidden)?;
            hidden = (layer.mlp.forward(&layer.ffn_norm.forward(&x)?)? + &x)?;
        }
        let last = self.norm.forward(&hidden)?.i((.., seq_len - 1, ..))?;
        self.output.forward(&last)
    }
}

/// Divides the logits of tokens seen in `context` by `penalty` (multiplies negative ones), so
/// a small model repeats itself less.
pub(crate) fn apply_repeat_penalty(logits: &Tensor, penalty: f32, context: &[u32]) -> Result<Tensor> {
    let mut values = logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut seen = std::collections::HashSet::new();
    for &token in context {
        if !seen.insert(token) {
            continue;
        }
        if let Some(logit) = values.get_mut(token as usize) {
            *logit = if *logit >= 0.0 { *logit / penalty } else { *logit * penalty };
        }
    }
    let len = values.len();
    Tensor::from_vec(values, len, logits.device())
}
