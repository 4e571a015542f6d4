//! A BERT encoder (all-MiniLM-L6-v2 and its kin) from safetensors, on candle: token, type and
//! position embeddings, then the encoder layers; pooling is the caller's.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder, embedding, layer_norm, linear};
use serde::Deserialize;

/// The activation between a layer's two feed-forward matrices.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HiddenAct {
    Gelu,
    GeluApproximate,
    Relu,
}

/// The parts of a BERT `config.json` the encoder reads (the rest is ignored).
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct Config {
    pub(crate) vocab_size: usize,
    pub(crate) hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: HiddenAct,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    #[serde(default)]
    model_type: Option<String>,
}

struct Embeddings {
    words: Embedding,
    positions: Embedding,
    types: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        Ok(Embeddings {
            words: embedding(config.vocab_size, config.hidden_size, vb.pp("word_embeddings"))?,
            positions: embedding(config.max_position_embeddings, config.hidden_size, vb.pp("position_embeddings"))?,
            types: embedding(config.type_vocab_size, config.hidden_size, vb.pp("token_type_embeddings"))?,
            norm: layer_norm(config.hidden_size, config.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, ids: &Tensor, types: &Tensor) -> Result<Tensor> {
        let (_batch, seq_len) = ids.dims2()?;
        let positions: Vec<u32> = (0..seq_len as u32).collect();
        let positions = Tensor::new(positions.as_slice(), ids.device())?;
        let sum = (self.words.forward(ids)? + self.types.forward(types)?)?;
        self.norm.forward(&sum.broadcast_add(&self.positions.forward(&positions)?)?)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    act: HiddenAct,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    head_size: usize,
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        let heads = config.num_attention_heads;
        let head_size = hidden / heads;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        Ok(Layer {
            query: linear(hidden, heads * head_size, own.pp("query"))?,
            key: linear(hidden, heads * head_size, own.pp("key"))?,
            value: linear(hidden, heads * head_size, own.pp("value"))?,
            attention_out: linear(hidden, hidden, attention.pp("output").pp("dense"))?,
            attention_norm: layer_norm(hidden, eps, attention.pp("output").pp("LayerNorm"))?,
            intermediate: linear(hidden, config.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            act: config.hidden_act,
            output: linear(config.intermediate_size, hidden, vb.pp("output").pp("dense"))?,
            output_norm: layer_norm(hidden, eps, vb.pp("output").pp("LayerNorm"))?,
            heads,
            head_size,
        })
    }

    /// (batch, sequence, hidden) to (batch, heads, sequence, head size).
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = x.dims().to_vec();
        shape.pop();
        shape.extend([self.heads, self.head_size]);
        x.reshape(shape.as_slice())?.transpose(1, 2)?.contiguous()
    }

    fn forward(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let q = self.split_heads(&self.query.forward(hidden)?)?;
        let k = self.split_heads(&self.key.forward(hidden)?)?;
        let v = self.split_heads(&self.value.forward(hidden)?)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_size as f64).sqrt())?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.flatten_from(D::Minus2)?;
        let attended = self.attention_norm.forward(&(self.attention_out.forward(&context)? + hidden)?)?;
        let inner = self.intermediate.forward(&attended)?;
        let inner = match self.act {
            HiddenAct::Gelu => inner.gelu_erf()?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.output_norm.forward(&(self.output.forward(&inner)? + attended)?)
    }
}

/// A BERT encoder: the hidden state of every token.
pub(crate) struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Loads the weights, whether their names start with `bert.`, the config's `model_type`,
    /// or nothing.
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert") { vb.pp("bert") } else { vb };
        let parts = |vb: &VarBuilder| -> Result<(Embeddings, Vec<Layer>)> {
            let layers = (0..config.num_hidden_layers)
                .map(|index| Layer::load(vb.pp(format!("encoder.layer.{index}")), config))
                .collect::<Result<Vec<_>>>()?;
            Ok((Embeddings::load(vb.pp("embeddings"), config)?, layers))
        };
        let (embeddings, layers) = match (parts(&vb), &config.model_type) {
            (Ok(parts), _) => parts,
            (Err(error), Some(prefix)) => parts(&vb.pp(prefix)).map_err(|_| error)?,
            (Err(error), None) => return Err(error),
        };
        Ok(BertModel { embeddings, layers })
    }

    /// The hidden states of `ids` (batch, sequence); `mask` is 1 for real tokens, 0 for
    /// padding, which no token attends to.
    pub(crate) fn forward(&self, ids: &Tensor, types: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut hidden = self.embeddings.forward(ids, types)?;
        let mask = match mask {
            Some(mask) => mask.clone(),
            None => ids.ones_like()?,
        };
        // (batch, 1, 1, sequence): 0 where attended, the lowest f32 where masked.
        let mask = mask.unsqueeze(1)?.unsqueeze(1)?.to_dtype(hidden.dtype())?;
        let mask = (mask.ones_like()? - &mask)?
            .broadcast_mul(&Tensor::new(f32::MIN, mask.device())?.to_dtype(hidden.dtype())?)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask)?;
        }
        Ok(hidden)
    }
}
