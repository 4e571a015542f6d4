//! The two model architectures the local provider runs, and its sampler.
//!
//! Adapted from candle-transformers 0.11.1 (`models::quantized_llama`, `models::bert`,
//! `generation`, `utils`; © Hugging Face, MIT OR Apache-2.0, the licence of this crate too),
//! trimmed to what the local provider loads: a dense llama-architecture GGUF and a BERT
//! sentence encoder. Why not depend on candle-transformers: it compiles every one of its 125
//! architectures, about 110 s of CPU on a fresh 2-core machine, a fifth of the README's first
//! run, for the two used here (docs/architecture.md, "Build time"). The arithmetic is candle's
//! (`candle-core`, `candle-nn`), unchanged; `tests/llm_local.rs` pins the replies.

pub(super) mod bert;
pub(super) mod llama;
pub(super) mod sampling;
