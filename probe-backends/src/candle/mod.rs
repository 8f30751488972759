//! The candle backend: a Hugging Face model folder loaded in process, pure Rust on the CPU
//! (CUDA with `candle-cuda`), implementing both [`probe_core::ActivationExtractor`] and
//! [`probe_core::Generator`].
//!
//! One generic decoder serves every supported architecture; what differs between them is
//! data (a small spec per `model_type`): Llama (with Llama 3 RoPE scaling), Mistral (sliding
//! window), Qwen2 (q/k/v bias), Gemma 2 (scaled embeddings, `1 + w` norms, sandwich norms,
//! soft-capping, alternating sliding window), Qwen3 (per-head q/k norms), Gemma 3 (q/k norms,
//! local and global RoPE, also nested in a `Gemma3ForConditionalGeneration` checkpoint whose
//! vision tower is never read), Mixtral and Qwen3-MoE (sparse mixtures of experts), OLMo 2
//! (post-norms), Phi-3 (fused projections, longrope), GPT-2 (learned positions, Conv1D,
//! LayerNorm with bias) and GPT-NeoX / Pythia (parallel residual, partial rotary); RoPE
//! scaling linear, llama3, yarn, longrope and dynamic. Other architectures are refused with [`probe_core::Error::NotSupported`] listing the supported ones.
//!
//! Extraction runs one forward pass per batch that stops after the deepest requested layer
//! and never computes logits; layers are numbered as transformers' `output_hidden_states`.
//! Inputs that start alike (a templated set: one instruction or chat template, then an item)
//! share it: a batch runs its common prefix once and its rows only what follows, attending to
//! the prefix's keys (`CandleOptions::shared_prefixes`, the `batches` module); generation's
//! prefill does the same for the prompts it admits together.
//! Attention never holds a `[batch, heads, seq, seq]` score matrix: queries go in chunks over
//! only the keys they see (causal, sliding window), with f32 scores and softmax in every dtype;
//! on the CPU a fused kernel, on a GPU candle's ops (see the `attention` module).
//! Generation decodes with continuous batching: up to `default_batch_size` sequences (the `n`
//! samples of the admitted prompts) advance one token per step, each at its own positions over
//! its own keys, all rows' attention in one batched operation (keys padded to the longest row
//! and masked); the admitted prompts are prefilled together, a finished sequence leaves
//! the batch and the next prompt joins (greedy decoding computes one row per prompt and copies
//! it `n` times). Each sample draws
//! from its own RNG stream seeded by (seed, prompt index, sample index), so results do not
//! depend on batching. A completion ends at an end-of-sequence token (`config.json` or
//! `generation_config.json` `eos_token_id`; kept in `token_ids`, not in the text), at a stop
//! string (the text is cut before it; `token_ids` run up to the token that completed it), or
//! after `max_tokens` tokens. Completion text is decoded with special tokens skipped.
//!
//! ```no_run
//! # async fn demo() -> probe_core::Result<()> {
//! use probe_backends::candle::{CandleBackend, CandleOptions};
//! use probe_core::{ActivationExtractor, ActivationRequest};
//! let model = CandleBackend::load(std::path::Path::new("fixtures/models/llama"), CandleOptions::default())?;
//! let acts = model.extract(ActivationRequest::texts(vec!["Hello".into()], vec![0, 2, 4])).await?;
//! assert_eq!(acts.layers.len(), 3);
//! # Ok(()) }
//! ```

mod attention;
mod attention_cpu;
mod backend;
mod batches;
mod block;
mod config;
mod extract;
mod generate;
mod kv;
mod layers;
mod model;
mod moe;
mod oom;
mod options;
mod placement;
mod rope;
mod weights;

pub use backend::{CandleBackend, CandleFolder};
pub use options::{CandleDType, CandleDevice, CandleOptions};
pub use placement::{BlockShare, CandleReplicas, device_of, open_placement};

/// The `model_type`s this backend has a spec for.
pub fn supported_architectures() -> Vec<&'static str> {
    config::SPECS.iter().map(|s| s.name).collect()
}
