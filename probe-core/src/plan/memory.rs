//! The memory model: pure functions of a [`ModelSpec`].
//!
//! Parameter counts and weight bytes per dtype, KV-cache bytes per token (sliding-window
//! layers capped at their window), the extraction working set of a batch, an estimate of
//! vLLM's start-up profile peak, and vLLM's own KV-block arithmetic.

use serde::{Deserialize, Serialize};

use super::config::ModelSpec;
use super::units::MIB;
use crate::{Error, Positions, Result};

/// Number formats for weights and the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    #[default]
    Bf16,
    /// IEEE half.
    F16,
    /// 8-bit integer weights (block linears; embeddings stay 16-bit).
    Int8,
    /// 4-bit integer weights, group size 128 (block linears; embeddings stay 16-bit).
    Int4,
}

/// Weights per quantisation group (one 16-bit scale per group, plus a 4-bit zero for int4).
pub const QUANT_GROUP: u64 = 128;

impl Dtype {
    /// Bits per value.
    pub fn bits(self) -> u64 {
        match self {
            Dtype::F32 => 32,
            Dtype::Bf16 | Dtype::F16 => 16,
            Dtype::Int8 => 8,
            Dtype::Int4 => 4,
        }
    }
    /// Bytes of one activation (or KV) value computed in this dtype: integer weights
    /// compute in 16-bit.
    pub fn activation_bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            _ => 2,
        }
    }
    /// True for the integer formats.
    pub fn is_quantized(self) -> bool {
        matches!(self, Dtype::Int8 | Dtype::Int4)
    }
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::Int8 => "int8",
            Dtype::Int4 => "int4",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "float" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Dtype::F16),
            "int8" | "i8" | "8bit" => Ok(Dtype::Int8),
            "int4" | "i4" | "4bit" => Ok(Dtype::Int4),
            other => Err(Error::invalid("dtype", format!("{other:?} (expected f32, bf16, f16, int8 or int4)"))),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parameters of a model, split the way quantisation treats them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ParamCount {
    /// Input embedding matrix (V × H).
    pub embedding: u64,
    /// Output projection, 0 when tied to the embedding.
    pub lm_head: u64,
    /// Matrices of the blocks' linear layers (attention and MLP projections).
    pub block_linear: u64,
    /// Norm vectors and biases (blocks and final norm).
    pub small: u64,
}

impl ParamCount {
    /// All parameters.
    pub fn total(&self) -> u64 {
        self.embedding + self.lm_head + self.block_linear + self.small
    }
}

/// Linear-layer parameters of one block.
fn block_linear(s: &ModelSpec) -> u64 {
    let h = s.hidden_size as u64;
    let q = (s.num_heads * s.head_dim) as u64;
    let kv = (s.num_kv_heads * s.head_dim) as u64;
    let attn = h * q + 2 * h * kv + q * h;
    let mlp = 3 * h * s.intermediate_size as u64;
    attn + mlp
}

/// Norm and bias parameters of one block.
fn block_small(s: &ModelSpec) -> u64 {
    let h = s.hidden_size as u64;
    let q = (s.num_heads * s.head_dim) as u64;
    let kv = (s.num_kv_heads * s.head_dim) as u64;
    let mut n = s.norms_per_layer as u64 * h;
    if s.qkv_bias {
        n += q + 2 * kv;
    }
    if s.o_bias {
        n += h;
    }
    if s.mlp_bias {
        n += 2 * s.intermediate_size as u64 + h;
    }
    if s.qk_norm {
        n += 2 * s.head_dim as u64;
    }
    n
}

/// Counts the parameters of a model (tied embeddings counted once).
pub fn param_count(s: &ModelSpec) -> ParamCount {
    let emb = s.vocab_size as u64 * s.hidden_size as u64;
    let layers = s.num_layers as u64;
    ParamCount {
        embedding: emb,
        lm_head: if s.tie_word_embeddings { 0 } else { emb },
        block_linear: layers * block_linear(s),
        small: layers * block_small(s) + s.hidden_size as u64,
    }
}

/// Bytes of `n` linear weights stored in `dtype` (with group scales when quantised).
fn linear_bytes(n: u64, dtype: Dtype) -> u64 {
    let groups = n.div_ceil(QUANT_GROUP);
    match dtype {
        Dtype::Int8 => n + groups * 2,
        Dtype::Int4 => n.div_ceil(2) + groups * 2 + groups.div_ceil(2),
        d => n * d.bits() / 8,
    }
}

/// Bytes of the weights in `dtype`. Integer formats quantise the blocks' linear layers
/// (group size [`QUANT_GROUP`], 16-bit scales, 4-bit zeros for int4) and keep the
/// embedding, output projection, norms and biases in 16-bit, as GPTQ/AWQ checkpoints do.
pub fn weight_bytes(s: &ModelSpec, dtype: Dtype) -> u64 {
    let p = param_count(s);
    let other = p.embedding + p.lm_head + p.small;
    linear_bytes(p.block_linear, dtype) + other * dtype.activation_bytes()
}

/// Bytes of one block's weights in `dtype`.
pub fn layer_weight_bytes(s: &ModelSpec, dtype: Dtype) -> u64 {
    linear_bytes(block_linear(s), dtype) + block_small(s) * dtype.activation_bytes()
}

/// Bytes of the weights outside the blocks (embedding, output projection, final norm).
pub fn edge_weight_bytes(s: &ModelSpec, dtype: Dtype) -> u64 {
    let p = param_count(s);
    (p.embedding + p.lm_head + s.hidden_size as u64) * dtype.activation_bytes()
}

/// KV-cache bytes of one layer per cached token: 2 × kv_heads × head_dim × dtype bytes.
pub fn kv_bytes_per_token_per_layer(s: &ModelSpec, kv_dtype: Dtype) -> u64 {
    2 * (s.num_kv_heads * s.head_dim) as u64 * kv_dtype.activation_bytes()
}

/// KV-cache bytes per token over all layers (no window applied):
/// 2 × layers × kv_heads × head_dim × dtype bytes.
pub fn kv_bytes_per_token(s: &ModelSpec, kv_dtype: Dtype) -> u64 {
    s.num_layers as u64 * kv_bytes_per_token_per_layer(s, kv_dtype)
}

/// KV-cache bytes of one sequence of `tokens`, sliding-window layers capped at their window.
pub fn kv_bytes_for_sequence(s: &ModelSpec, kv_dtype: Dtype, tokens: u64) -> u64 {
    let per = kv_bytes_per_token_per_layer(s, kv_dtype);
    s.layer_windows.iter().map(|w| per * w.map_or(tokens, |w| tokens.min(w as u64))).sum()
}

/// How attention is computed in a forward pass, for the working set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Scores materialised as `[batch, heads, seq, seq]` (transformers' eager attention).
    Eager,
    /// Fused attention (flash / SDPA): no score matrix.
    Fused,
    /// probe's candle attention (the default extractor): queries in chunks, each chunk's f32
    /// scores over the keys it sees, never `[batch, heads, seq, seq]`; at most
    /// [`ATTENTION_CHUNK_BYTES_GPU`] per chunk (unless a single query row needs more), counted
    /// three times (scores, masked scores, probabilities).
    #[default]
    Chunked,
}

/// The f32 scores one query chunk of probe's candle attention may hold on the CPU: small
/// enough to stay in the caches of a few cores.
pub const ATTENTION_CHUNK_BYTES_CPU: u64 = 32 * MIB;

/// The f32 scores one query chunk of probe's candle attention may hold on a GPU: large enough
/// that a long prompt takes few chunks (kernel launches), small next to the weights.
pub const ATTENTION_CHUNK_BYTES_GPU: u64 = 512 * MIB;

/// Query rows per chunk of probe's candle attention: as many as keep `batch × heads × rows ×
/// keys` f32 scores within `budget` bytes, at least 1, at most `queries`.
pub fn attention_chunk_rows(batch: u64, heads: u64, queries: u64, keys: u64, budget: u64) -> u64 {
    let row = 4 * batch.max(1) * heads.max(1) * keys.max(1);
    (budget / row).clamp(1, queries.max(1))
}

/// An extraction batch: what the forward pass holds at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExtractionShape {
    /// Inputs per forward pass.
    pub batch: u64,
    /// Padded tokens per input.
    pub seq_len: u64,
    /// Layers captured.
    pub layers: u64,
    /// Position reduction of the captured layers.
    pub positions: Positions,
    /// Attention implementation.
    pub attention: AttentionKind,
    /// Compute dtype.
    pub dtype: Dtype,
}

impl ExtractionShape {
    /// A batch of `batch` × `seq_len` tokens capturing `layers` layers at `positions`.
    pub fn new(batch: u64, seq_len: u64, layers: u64, positions: Positions, dtype: Dtype) -> Self {
        Self { batch, seq_len, layers, positions, attention: AttentionKind::default(), dtype }
    }
    /// Sets the attention implementation.
    pub fn with_attention(mut self, a: AttentionKind) -> Self {
        self.attention = a;
        self
    }
}

/// Peak transient bytes of a forward over `tokens` tokens in `batch` sequences of `seq`
/// tokens (no KV cache, no logits): the residual stream and normed input, plus the larger
/// of the attention step (q, k, v, output, and the score matrix and its softmax when
/// eager, one query chunk's scores when chunked) and the gated MLP step (gate‖up and the activated product).
pub fn forward_peak_bytes(s: &ModelSpec, batch: u64, seq: u64, dtype: Dtype, attention: AttentionKind) -> u64 {
    let b = dtype.activation_bytes();
    let t = batch * seq;
    let h = s.hidden_size as u64;
    let q = (s.num_heads * s.head_dim) as u64;
    let kv = (s.num_kv_heads * s.head_dim) as u64;
    let stream = 2 * t * h * b;
    let heads = s.num_heads as u64;
    let scores = match attention {
        AttentionKind::Eager => 2 * batch * heads * seq * seq * b.max(4),
        AttentionKind::Fused => 0,
        // The budget (a chunk's rows never hold more), or one query row when that is more,
        // or the whole matrix when that is less: a bound that grows with batch and seq.
        AttentionKind::Chunked => {
            let row = 4 * batch * heads * seq;
            3 * (row * seq).min(row.max(ATTENTION_CHUNK_BYTES_GPU))
        }
    };
    let attn = t * (2 * q + 2 * kv) * b + scores;
    let mlp = t * 3 * s.intermediate_size as u64 * b;
    stream + attn.max(mlp)
}

/// Working set of one extraction batch on the device: the forward's peak plus the
/// captured layers (f32, `[batch, hidden]` for `last`/`mean`, `[batch, seq, hidden]` for
/// `all`). No logits.
pub fn extraction_working_set(s: &ModelSpec, shape: &ExtractionShape) -> u64 {
    let per_layer = match shape.positions {
        Positions::Last | Positions::Mean => shape.batch * s.hidden_size as u64 * 4,
        Positions::All => shape.batch * shape.seq_len * s.hidden_size as u64 * 4,
    };
    forward_peak_bytes(s, shape.batch, shape.seq_len, shape.dtype, shape.attention) + shape.layers * per_layer
}

/// Bytes per logit held by vLLM's profiling sampler run (top-k = V − 1, top-p = 0.9):
/// f32 logits (4), sorted values (4) and int64 indices (8), sorted probabilities (4),
/// their cumulative sum (4), the mask (1), the scattered result (4), final probabilities
/// (4) — rounded up to 36.
pub const SAMPLER_BYTES_PER_LOGIT: u64 = 36;

/// An estimate of the activation peak vLLM measures at start-up: its profile runs a
/// forward over `max_num_batched_tokens` tokens (fused attention) and the sampler over
/// `max_num_seqs` rows of logits; the peak is the larger of the two, plus the final
/// hidden states.
pub fn vllm_activation_peak(s: &ModelSpec, dtype: Dtype, max_num_batched_tokens: u64, max_num_seqs: u64) -> u64 {
    let b = dtype.activation_bytes();
    let forward = forward_peak_bytes(s, 1, max_num_batched_tokens, dtype, AttentionKind::Fused);
    let sampler = max_num_seqs * s.vocab_size as u64 * (SAMPLER_BYTES_PER_LOGIT + b)
        + max_num_batched_tokens * s.hidden_size as u64 * b;
    forward.max(sampler)
}

/// The inputs of vLLM's KV-cache arithmetic for one server (one GPU's share under tensor
/// parallelism).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VllmMemory {
    /// The GPU's total memory.
    pub total_bytes: u64,
    /// `gpu_memory_utilization`.
    pub gpu_memory_utilization: f64,
    /// Weights on this GPU.
    pub weights_bytes: u64,
    /// Memory outside PyTorch's allocator (CUDA context, NCCL, cuBLAS workspaces).
    pub non_torch_bytes: u64,
    /// PyTorch activation peak of the profile run (plus CUDA graphs).
    pub activation_peak_bytes: u64,
    /// Tokens per KV block.
    pub block_size: u64,
    /// KV bytes per token on this GPU.
    pub kv_bytes_per_token: u64,
}

/// vLLM's KV-cache arithmetic: what is left for the KV cache and how many blocks it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VllmKv {
    /// `total × gpu_memory_utilization`.
    pub requested_bytes: u64,
    /// `requested − weights − non-torch − activation peak` (negative: does not fit).
    pub kv_cache_bytes: i128,
    /// `kv_cache_bytes / (block_size × KV bytes per token)`, 0 when negative.
    pub kv_blocks: u64,
}

impl VllmKv {
    /// Tokens the KV cache holds.
    pub fn kv_tokens(&self, block_size: u64) -> u64 {
        self.kv_blocks * block_size
    }
}

/// `(total × gpu_memory_utilization − weights − non-torch − activation peak) /
/// (block_size × KV bytes per token)`.
pub fn vllm_kv_cache(m: &VllmMemory) -> VllmKv {
    let requested = (m.total_bytes as f64 * m.gpu_memory_utilization).floor() as u64;
    let kv = requested as i128 - m.weights_bytes as i128 - m.non_torch_bytes as i128 - m.activation_peak_bytes as i128;
    let block = (m.block_size * m.kv_bytes_per_token).max(1) as i128;
    let blocks = if kv > 0 { (kv / block) as u64 } else { 0 };
    VllmKv { requested_bytes: requested, kv_cache_bytes: kv, kv_blocks: blocks }
}
