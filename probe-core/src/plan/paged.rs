//! Paged-attention engines (a TPU sampler's `max_seqs`, `page_size`, `max_pages`,
//! `max_prefill_size`): the seeds' halving ladder, by calculation instead of by crash.
//!
//! The prefill kernel stages the query block of the whole prefill in kernel scratch
//! (TPU VMEM): `max_prefill_size × heads × head_dim × bytes_per_q_element` plus two
//! double-buffered K/V pages. The default 9.15 bytes per query element reproduces the
//! seeds' failure: 1024 prefill tokens of Llama-3-8B (32 × 128 heads) asked 37.54 MiB of a
//! 16 MiB VMEM; the ladder predicts 256 tokens fit.

use serde::{Deserialize, Serialize};

use super::config::ModelSpec;
use super::memory::{Dtype, kv_bytes_per_token_per_layer, weight_bytes};
use super::units::{MIB, gib};
use crate::{Error, Result};

/// What the engine was configured with; the plan halves from here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PagedRequest {
    /// Sequences decoded together.
    pub max_seqs: u64,
    /// Tokens per KV page.
    pub page_size: u64,
    /// Longest sequence (prompt + max_new_tokens).
    pub max_seq_len: u64,
    /// Tokens per prefill step.
    pub max_prefill_size: u64,
    /// Model shards (tensor parallel devices); weights and KV heads split over them.
    pub shards: u64,
}

impl PagedRequest {
    /// A request; `shards` 1.
    pub fn new(max_seqs: u64, page_size: u64, max_seq_len: u64, max_prefill_size: u64) -> Self {
        Self { max_seqs, page_size, max_seq_len, max_prefill_size, shards: 1 }
    }
    /// Sets the number of shards.
    pub fn with_shards(mut self, shards: u64) -> Self {
        self.shards = shards;
        self
    }
}

/// The device's limits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PagedLimits {
    /// Device memory for weights and KV pages (HBM), after any reserve.
    pub device_bytes: u64,
    /// Kernel scratch limit (VMEM).
    pub scratch_bytes: u64,
    /// Scratch bytes per query element of a prefill.
    pub bytes_per_q_element: f64,
    /// Weight and KV dtype.
    pub dtype: Dtype,
}

impl PagedLimits {
    /// Limits with 9.15 scratch bytes per query element, bf16.
    pub fn new(device_bytes: u64, scratch_bytes: u64) -> Self {
        Self { device_bytes, scratch_bytes, bytes_per_q_element: 9.15, dtype: Dtype::Bf16 }
    }
}

/// The engine settings that fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PagedPlan {
    /// Sequences decoded together.
    pub max_seqs: u64,
    /// Tokens per page.
    pub page_size: u64,
    /// Pages: `max_seqs × ⌈max_seq_len / page_size⌉`.
    pub max_pages: u64,
    /// Tokens per prefill step.
    pub max_prefill_size: u64,
    /// KV bytes of the pages on one device.
    pub kv_bytes: u64,
    /// Weight bytes on one device.
    pub weights_bytes: u64,
    /// Kernel scratch of one prefill step.
    pub scratch_bytes: u64,
    /// Each halving, in order.
    pub steps: Vec<String>,
}

/// Scratch bytes of a prefill of `tokens` tokens.
pub fn prefill_scratch(spec: &ModelSpec, req: &PagedRequest, limits: &PagedLimits, tokens: u64) -> u64 {
    let heads = (spec.num_heads as u64).div_ceil(req.shards.max(1));
    let q = tokens * heads * spec.head_dim as u64;
    let kv_heads = (spec.num_kv_heads as u64).div_ceil(req.shards.max(1));
    let pages = 4 * req.page_size * kv_heads * spec.head_dim as u64 * limits.dtype.activation_bytes();
    (q as f64 * limits.bytes_per_q_element).ceil() as u64 + pages
}

/// Halves `max_prefill_size` until the prefill fits the scratch limit, then `max_seqs`
/// until the pages fit the device.
///
/// # Errors
/// [`Error::InvalidInput`] for zero settings, or when one sequence or a one-page prefill
/// does not fit, with the numbers.
pub fn plan_paged(spec: &ModelSpec, req: &PagedRequest, limits: &PagedLimits) -> Result<PagedPlan> {
    for (name, v) in [
        ("max_seqs", req.max_seqs),
        ("page_size", req.page_size),
        ("max_seq_len", req.max_seq_len),
        ("max_prefill_size", req.max_prefill_size),
        ("shards", req.shards),
    ] {
        if v == 0 {
            return Err(Error::invalid(name, "0 (must be ≥ 1)"));
        }
    }
    let mut steps = Vec::new();
    let mut prefill = req.max_prefill_size.min(req.max_seq_len);
    while prefill_scratch(spec, req, limits, prefill) > limits.scratch_bytes {
        if prefill == 1 {
            return Err(Error::invalid(
                "plan",
                format!(
                    "a 1-token prefill needs {:.2} MiB of kernel scratch, the limit is {:.2} MiB",
                    prefill_scratch(spec, req, limits, 1) as f64 / MIB as f64,
                    limits.scratch_bytes as f64 / MIB as f64
                ),
            ));
        }
        let next = prefill / 2;
        steps.push(format!(
            "max_prefill_size {prefill} → {next}: scratch {:.2} MiB > limit {:.2} MiB",
            prefill_scratch(spec, req, limits, prefill) as f64 / MIB as f64,
            limits.scratch_bytes as f64 / MIB as f64
        ));
        prefill = next;
    }
    let kv_split = req.shards.min(spec.num_kv_heads as u64).max(1);
    let per_token = (kv_bytes_per_token_per_layer(spec, limits.dtype) * spec.num_layers as u64).div_ceil(kv_split);
    let weights = weight_bytes(spec, limits.dtype).div_ceil(req.shards);
    let pages_per_seq = req.max_seq_len.div_ceil(req.page_size);
    let kv = |seqs: u64| seqs * pages_per_seq * req.page_size * per_token;
    let mut seqs = req.max_seqs;
    while weights + kv(seqs) > limits.device_bytes {
        if seqs == 1 {
            return Err(Error::invalid(
                "plan",
                format!(
                    "one {}-token sequence needs {} (weights {} + KV {}), the device has {}",
                    req.max_seq_len,
                    gib(weights + kv(1)),
                    gib(weights),
                    gib(kv(1)),
                    gib(limits.device_bytes)
                ),
            ));
        }
        let next = seqs / 2;
        steps.push(format!(
            "max_seqs {seqs} → {next}: weights + KV {} > device {}",
            gib(weights + kv(seqs)),
            gib(limits.device_bytes)
        ));
        seqs = next;
    }
    Ok(PagedPlan {
        max_seqs: seqs,
        page_size: req.page_size,
        max_pages: seqs * pages_per_seq,
        max_prefill_size: prefill,
        kv_bytes: kv(seqs),
        weights_bytes: weights,
        scratch_bytes: prefill_scratch(spec, req, limits, prefill),
        steps,
    })
}
