//! The [`Planner`]: roles, vLLM servers and the generation cap.

use std::collections::BTreeSet;

use super::config::ModelSpec;
use super::extraction::plan_extraction;
use super::inventory::{Device, DeviceInventory};
use super::memory::{
    Dtype, VllmMemory, kv_bytes_for_sequence, kv_bytes_per_token, param_count, vllm_activation_peak, vllm_kv_cache,
    weight_bytes,
};
use super::request::{
    DeviceUse, GenerationPlan, GenerationWorkload, ModelMemory, Plan, PlanRequest, ShareMode, VllmServerPlan,
};
use super::units::{GIB, gib};
use crate::{DevicePolicy, Error, Result};

/// Default `gpu_memory_utilization`.
pub const DEFAULT_UTILIZATION: f64 = 0.90;
/// Default non-torch memory per GPU (CUDA context, cuBLAS/NCCL workspaces).
pub const DEFAULT_NON_TORCH: u64 = GIB;
/// Default `max_num_seqs`.
pub const DEFAULT_MAX_NUM_SEQS: u64 = 256;
/// Default `max_num_batched_tokens` of the start-up profile.
pub const DEFAULT_BATCHED_TOKENS: u64 = 8192;

/// The planner: a [`DevicePolicy`] over a fixed inventory (declared, or detected by the
/// caller), planning with pure arithmetic.
///
/// ```
/// use probe_core::DevicePolicy;
/// use probe_core::plan::{DeviceInventory, ModelSpec, PlanRequest, Planner};
/// let spec = ModelSpec::from_json(r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
///   "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256}"#)?;
/// let planner = Planner::builder().gpus("2x80GiB")?.build();
/// let plan = planner.plan(PlanRequest::new(spec, planner.inventory()?))?;
/// assert!(!plan.time_shared && plan.extraction_batch_size > 0);
/// # Ok::<(), probe_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Planner {
    inventory: DeviceInventory,
}

/// Builds a [`Planner`].
#[derive(Debug, Clone, Default)]
pub struct PlannerBuilder {
    inventory: DeviceInventory,
}

impl PlannerBuilder {
    /// Uses this inventory.
    pub fn inventory(mut self, inventory: DeviceInventory) -> Self {
        self.inventory = inventory;
        self
    }
    /// Declares GPUs (`"8x80GiB"`, `"80GiB,40GiB"`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad item.
    pub fn gpus(mut self, spec: &str) -> Result<Self> {
        let cpu = self.inventory.cpu_bytes;
        self.inventory = DeviceInventory::parse_gpus(spec)?.with_cpu_bytes(cpu);
        Ok(self)
    }
    /// Declares CPU RAM.
    pub fn cpu_bytes(mut self, bytes: u64) -> Self {
        self.inventory.cpu_bytes = bytes;
        self
    }
    /// The planner.
    pub fn build(self) -> Planner {
        Planner { inventory: self.inventory }
    }
}

impl Planner {
    /// A builder.
    pub fn builder() -> PlannerBuilder {
        PlannerBuilder::default()
    }
    /// A planner over `inventory`.
    pub fn new(inventory: DeviceInventory) -> Self {
        Self { inventory }
    }
}

impl DevicePolicy for Planner {
    fn plan(&self, request: PlanRequest) -> Result<Plan> {
        plan(request)
    }
    fn inventory(&self) -> Result<DeviceInventory> {
        Ok(self.inventory.clone())
    }
}

/// The weight dtype: asked for, else the checkpoint's, with f32 served as bf16 on GPUs.
fn resolve_dtype(req: &PlanRequest, spec: &ModelSpec) -> Dtype {
    req.dtype.unwrap_or(match spec.torch_dtype {
        Some(Dtype::F32) if req.inventory.gpus.is_empty() => Dtype::F32,
        Some(Dtype::F32) | None => Dtype::Bf16,
        Some(d) => d,
    })
}

/// Plans a request (the body of [`Planner::plan`]).
///
/// # Errors
/// [`Error::InvalidInput`] for an impossible or inconsistent plan, with its numbers.
pub fn plan(req: PlanRequest) -> Result<Plan> {
    let spec = req.model.clone().ok_or_else(|| Error::invalid("model", "no model config given"))?;
    let dtype = resolve_dtype(&req, &spec);
    let kv_dtype = req.kv_dtype.unwrap_or(if dtype == Dtype::F32 { Dtype::F32 } else { Dtype::Bf16 });
    let model = ModelMemory {
        architecture: spec.architecture.clone(),
        params: param_count(&spec).total(),
        dtype,
        weights_bytes: weight_bytes(&spec, dtype),
        kv_dtype,
        kv_bytes_per_token: kv_bytes_per_token(&spec, kv_dtype),
        layers: spec.num_layers,
        sliding_layers: spec.sliding_layers(),
    };
    // Extraction holds its weights in its compute dtype (`--dtype`), the servers in theirs.
    let extraction_model = match req.compute_dtype {
        Some(d) if d != dtype => ModelMemory { dtype: d, weights_bytes: weight_bytes(&spec, d), ..model.clone() },
        _ => model.clone(),
    };
    let mut notes = Vec::new();
    let (mut gen_gpus, mut ext_gpus, mut mode) = roles(&req, &spec, &extraction_model, &mut notes)?;
    let generation = match (&req.generation, gen_gpus.is_empty()) {
        (Some(w), false) => match plan_generation(&req, &spec, &model, w, &gen_gpus, &mut notes) {
            Ok(g) => Some(g),
            // The planner's own exclusive split starved generation: time-share every GPU instead.
            Err(e) if chose_split(&req, mode, &gen_gpus) => {
                let all = req.inventory.indices();
                notes.push(format!(
                    "generation does not fit GPUs {gen_gpus:?} alone ({e}): the phases time-share all GPUs"
                ));
                (gen_gpus, ext_gpus, mode) = (all.clone(), all, ShareMode::TimeShared);
                Some(plan_generation(&req, &spec, &model, w, &gen_gpus, &mut notes)?)
            }
            Err(e) => return Err(e),
        },
        (Some(_), true) => {
            notes.push(
                "no GPU for generation: no vLLM server planned (generate in-process or on remote servers)".into(),
            );
            None
        }
        (None, _) => None,
    };
    let extraction = match &req.extraction {
        Some(w) => Some(plan_extraction(&req, &spec, &extraction_model, w, &ext_gpus, &mut notes)?),
        None => None,
    };
    let devices = device_uses(&req.inventory, generation.as_ref(), extraction.as_ref());
    Ok(Plan {
        extraction_batch_size: extraction.as_ref().map_or(0, |e| e.batch_size as usize),
        time_shared: mode == ShareMode::TimeShared,
        model,
        generation,
        extraction,
        devices,
        notes,
    })
}

/// True when the planner itself split the GPUs exclusively (no sets, no mode given).
fn chose_split(req: &PlanRequest, mode: ShareMode, gen_gpus: &[usize]) -> bool {
    req.mode.is_none()
        && req.generation_gpus.is_none()
        && req.extraction_gpus.is_none()
        && req.extraction.is_some()
        && mode == ShareMode::Exclusive
        && gen_gpus.len() < req.inventory.gpus.len()
}

fn check_set(what: &str, set: &[usize], inv: &DeviceInventory) -> Result<()> {
    let mut seen = BTreeSet::new();
    for &i in set {
        inv.gpu(i).map_err(|e| match e {
            Error::InvalidInput { message, .. } => Error::invalid(what, message),
            other => other,
        })?;
        if !seen.insert(i) {
            return Err(Error::invalid(what, format!("GPU {i} is listed twice")));
        }
    }
    if set.is_empty() {
        return Err(Error::invalid(what, "the set is empty (name at least one GPU)"));
    }
    Ok(())
}

/// Chooses the generation and extraction GPUs and the sharing mode.
fn roles(
    req: &PlanRequest,
    spec: &ModelSpec,
    model: &ModelMemory,
    notes: &mut Vec<String>,
) -> Result<(Vec<usize>, Vec<usize>, ShareMode)> {
    let inv = &req.inventory;
    let all = inv.indices();
    let want_gen = req.generation.is_some();
    let want_ext = req.extraction.is_some();
    if let Some(g) = &req.generation_gpus {
        check_set("generation GPUs", g, inv)?;
    }
    if let Some(e) = &req.extraction_gpus {
        check_set("extraction GPUs", e, inv)?;
    }
    if all.is_empty() {
        return Ok((vec![], vec![], ShareMode::TimeShared));
    }
    if !(want_gen && want_ext) {
        let g = req.generation_gpus.clone().unwrap_or_else(|| all.clone());
        let e = req.extraction_gpus.clone().unwrap_or_else(|| all.clone());
        return Ok((g, e, req.mode.unwrap_or(ShareMode::Exclusive)));
    }
    let rest = |taken: &[usize]| all.iter().copied().filter(|i| !taken.contains(i)).collect::<Vec<_>>();
    let (gen_gpus, ext_gpus) = match (&req.generation_gpus, &req.extraction_gpus) {
        (Some(g), Some(e)) => (g.clone(), e.clone()),
        (Some(g), None) => {
            let r = rest(g);
            (g.clone(), if r.is_empty() || req.mode == Some(ShareMode::TimeShared) { g.clone() } else { r })
        }
        (None, Some(e)) => {
            let r = rest(e);
            (if r.is_empty() || req.mode == Some(ShareMode::TimeShared) { e.clone() } else { r }, e.clone())
        }
        (None, None) => {
            if all.len() < 2 && req.mode == Some(ShareMode::Exclusive) {
                return Err(Error::invalid(
                    "GPU roles",
                    "exclusive mode needs at least 2 GPUs (one to generate, one to extract), found 1; use mode time-shared ([devices] mode)",
                ));
            }
            if all.len() < 2 || req.mode == Some(ShareMode::TimeShared) {
                (all.clone(), all.clone())
            } else {
                // Extraction gets the fewest GPUs (from the end) that hold the weights, generation the rest.
                let k = extraction_gpus_needed(inv, spec, model.weights_bytes, &all);
                if k >= all.len() {
                    if req.mode == Some(ShareMode::Exclusive) {
                        return Err(Error::invalid(
                            "GPU roles",
                            format!(
                                "exclusive mode: extraction needs {} of weights, which takes all {} GPUs and leaves \
                                 none for generation; use mode time-shared ([devices] mode)",
                                gib(model.weights_bytes),
                                all.len()
                            ),
                        ));
                    }
                    notes.push(format!(
                        "the weights ({}) need all {} GPUs for extraction: the phases time-share",
                        gib(model.weights_bytes),
                        all.len()
                    ));
                    (all.clone(), all.clone())
                } else {
                    let split = all.len() - k;
                    (all[..split].to_vec(), all[split..].to_vec())
                }
            }
        }
    };
    let overlap: Vec<usize> = gen_gpus.iter().copied().filter(|i| ext_gpus.contains(i)).collect();
    let mode = match (req.mode, overlap.is_empty()) {
        (Some(ShareMode::Exclusive), false) => {
            return Err(Error::invalid(
                "GPU roles",
                format!(
                    "GPU {} {} in both the generation and the extraction GPUs; exclusive mode refuses overlap \
                     (give disjoint sets or use mode time-shared ([devices] mode))",
                    overlap.iter().map(usize::to_string).collect::<Vec<_>>().join(", "),
                    if overlap.len() == 1 { "is" } else { "are" }
                ),
            ));
        }
        (Some(m), _) => m,
        (None, true) => ShareMode::Exclusive,
        (None, false) => {
            notes.push("generation and extraction share GPUs: the phases time-share".into());
            ShareMode::TimeShared
        }
    };
    Ok((gen_gpus, ext_gpus, mode))
}

/// How many GPUs (taken from the end of `all`) hold the weights for extraction.
fn extraction_gpus_needed(inv: &DeviceInventory, _spec: &ModelSpec, weights: u64, all: &[usize]) -> usize {
    let mut sum = 0u64;
    for (k, &i) in all.iter().rev().enumerate() {
        let d = inv.gpu(i).expect("index from the inventory");
        sum += d.free_bytes.saturating_sub(super::extraction::reserve(d.total_bytes) + GIB);
        if sum >= weights {
            return k + 1;
        }
    }
    all.len() + 1
}

fn round_down_2(x: f64) -> f64 {
    (x * 100.0).floor() / 100.0
}

/// Plans the vLLM servers on `gpus` and the `max_new_tokens` cap.
fn plan_generation(
    req: &PlanRequest,
    spec: &ModelSpec,
    model: &ModelMemory,
    w: &GenerationWorkload,
    gpus: &[usize],
    notes: &mut Vec<String>,
) -> Result<GenerationPlan> {
    let v = &req.vllm;
    let inv = &req.inventory;
    if w.batch_size == 0 {
        return Err(Error::invalid("generation batch size", "0 (must be ≥ 1)"));
    }
    if v.servers_per_gpu == 0 {
        return Err(Error::invalid("servers per GPU", "0 servers (must be ≥ 1)"));
    }
    if v.block_size == 0 {
        return Err(Error::invalid("block size", "0 (must be ≥ 1)"));
    }
    if let Some(u) = v.gpu_memory_utilization
        && !(u > 0.0 && u <= 1.0)
    {
        return Err(Error::invalid("gpu_memory_utilization", format!("{u} (must be in (0, 1])")));
    }
    let util_total = v.gpu_memory_utilization.unwrap_or(DEFAULT_UTILIZATION);
    let k = v.servers_per_gpu;
    let max_seqs_wanted = v.max_num_seqs.unwrap_or(DEFAULT_MAX_NUM_SEQS).max(1);
    let batched = v.max_num_batched_tokens.unwrap_or(DEFAULT_BATCHED_TOKENS);
    let non_torch = v.non_torch_bytes.unwrap_or(DEFAULT_NON_TORCH);
    let peak =
        v.activation_peak_bytes.unwrap_or_else(|| vllm_activation_peak(spec, model.dtype, batched, max_seqs_wanted));
    let context = spec.max_position_embeddings.map(|c| c as u64);
    let wanted_len = w.prompt_tokens + w.max_new_tokens;
    let max_model_len = match (v.max_model_len, context) {
        (Some(l), Some(c)) if l > c => {
            return Err(Error::invalid(
                "max_model_len",
                format!("{l} is longer than the model's context of {c} tokens (max_position_embeddings)"),
            ));
        }
        (Some(l), _) => l,
        (None, Some(c)) if wanted_len > c => {
            notes.push(format!("max_model_len capped at the model's context of {c} tokens"));
            c
        }
        (None, _) => wanted_len.next_multiple_of(v.block_size),
    };
    if w.prompt_tokens >= max_model_len {
        return Err(Error::invalid(
            "prompt tokens",
            format!(
                "{} prompt tokens leave no room for generation within max_model_len {max_model_len}",
                w.prompt_tokens
            ),
        ));
    }
    // Tensor-parallel size: given, or the smallest power of two that fits.
    let candidates: Vec<usize> = match v.tensor_parallel_size {
        Some(0) => return Err(Error::invalid("tensor_parallel_size", "0 (must be ≥ 1)")),
        Some(t) if t > gpus.len() => {
            return Err(Error::invalid(
                "tensor_parallel_size",
                format!("{t} is more than the {} generation GPUs", gpus.len()),
            ));
        }
        Some(t) => vec![t],
        None => [1usize, 2, 4, 8, 16]
            .into_iter()
            .filter(|&t| t <= gpus.len() && spec.num_heads.is_multiple_of(t) && (k == 1 || t == 1))
            .collect(),
    };
    if k > 1 && v.tensor_parallel_size.is_some_and(|t| t > 1) {
        return Err(Error::invalid("servers per GPU", "several servers per GPU need tensor_parallel_size 1"));
    }
    let mut last_err = None;
    for &tp in &candidates {
        match servers_for(req, spec, model, w, gpus, tp, util_total, non_torch, peak, max_model_len, max_seqs_wanted) {
            Ok((servers, cap, batch)) => {
                if cap < w.max_new_tokens {
                    notes.push(format!(
                        "max_new_tokens capped at {cap} (asked {}): {batch} sequences of {} prompt tokens fill the KV cache",
                        w.max_new_tokens, w.prompt_tokens
                    ));
                }
                if batch < w.batch_size {
                    notes.push(format!(
                        "generation batch lowered to {batch} sequences per server (asked {}) so that {} + {cap} tokens each fit the KV cache",
                        w.batch_size, w.prompt_tokens
                    ));
                }
                if tp > 1 {
                    notes.push(format!("the weights need tensor parallelism {tp} for generation"));
                }
                return Ok(GenerationPlan {
                    gpus: gpus.to_vec(),
                    servers,
                    prompt_tokens: w.prompt_tokens,
                    batch_size: batch,
                    max_new_tokens_requested: w.max_new_tokens,
                    max_new_tokens: cap,
                });
            }
            Err(e) => last_err = Some(e),
        }
    }
    let _ = inv;
    Err(last_err.unwrap_or_else(|| Error::invalid("generation GPUs", "no tensor-parallel size divides the heads")))
}

#[allow(clippy::too_many_arguments)]
fn servers_for(
    req: &PlanRequest,
    spec: &ModelSpec,
    model: &ModelMemory,
    w: &GenerationWorkload,
    gpus: &[usize],
    tp: usize,
    util_total: f64,
    non_torch: u64,
    peak: u64,
    max_model_len: u64,
    max_seqs_wanted: u64,
) -> Result<(Vec<VllmServerPlan>, u64, u64)> {
    let v = &req.vllm;
    let k = v.servers_per_gpu;
    let kv_split = tp.min(spec.num_kv_heads).max(1) as u64;
    let weights = model.weights_bytes.div_ceil(tp as u64);
    let mut servers = Vec::new();
    let mut cap = w.max_new_tokens.min(max_model_len - w.prompt_tokens);
    let mut batch = w.batch_size;
    for group in gpus.chunks(tp).filter(|g| g.len() == tp) {
        let devs: Vec<&Device> = group.iter().map(|&i| req.inventory.gpu(i)).collect::<Result<_>>()?;
        let small = devs.iter().min_by_key(|d| d.total_bytes).expect("non-empty group");
        let free_frac = devs.iter().map(|d| d.free_bytes as f64 / d.total_bytes as f64).fold(1.0, f64::min);
        if v.gpu_memory_utilization.is_some() && util_total > free_frac + 1e-9 {
            return Err(Error::invalid(
                "gpu_memory_utilization",
                format!(
                    "{util_total:.2} asks {} of {}, which has {} free",
                    gib((small.total_bytes as f64 * util_total) as u64),
                    small.label(),
                    gib((small.total_bytes as f64 * free_frac) as u64)
                ),
            ));
        }
        let util = round_down_2(util_total.min(free_frac) / k as f64);
        // vLLM's `extract_hidden_states` keeps the asked hidden states (by default all L + 1) of
        // each token in its cache too, whole on every rank.
        let hidden_per_token = if v.hidden_states {
            let kept = v.hidden_state_layers.unwrap_or(spec.num_layers as u64 + 1).max(1);
            kept * spec.hidden_size as u64 * model.dtype.activation_bytes()
        } else {
            0
        };
        let mem = VllmMemory {
            total_bytes: small.total_bytes,
            gpu_memory_utilization: util,
            weights_bytes: weights,
            non_torch_bytes: non_torch,
            activation_peak_bytes: peak,
            block_size: v.block_size,
            kv_bytes_per_token: model.kv_bytes_per_token / kv_split + hidden_per_token,
        };
        let kv = vllm_kv_cache(&mem);
        let per_seq =
            |len: u64| kv_bytes_for_sequence(spec, model.kv_dtype, len).div_ceil(kv_split) + len * hidden_per_token;
        let one_seq = per_seq(max_model_len).next_multiple_of(v.block_size * mem.kv_bytes_per_token);
        let usable = kv.kv_blocks * v.block_size * mem.kv_bytes_per_token;
        if kv.kv_cache_bytes <= 0 || usable < one_seq {
            let needs = weights + non_torch + peak + one_seq;
            return Err(Error::invalid(
                "plan",
                format!(
                    "a vLLM server needs {} per GPU (weights {}, non-torch {}, activation peak {}, KV for one \
                     {max_model_len}-token sequence {}), {} has {} at gpu_memory_utilization {util:.2}{}",
                    gib(needs),
                    gib(weights),
                    gib(non_torch),
                    gib(peak),
                    gib(one_seq),
                    small.label(),
                    gib(kv.requested_bytes),
                    if k > 1 { format!(" ({k} servers share it)") } else { String::new() }
                ),
            ));
        }
        let fits = |b: u64, m: u64| b * per_seq(w.prompt_tokens + m) <= usable;
        if w.fixed_batch {
            // Largest max_new_tokens such that `batch` sequences fit the KV cache.
            if !fits(batch, 1) {
                return Err(Error::invalid(
                    "generation batch size",
                    format!(
                        "{} sequences of {} prompt tokens need {} of KV cache, {} holds {}",
                        batch,
                        w.prompt_tokens,
                        gib(batch * per_seq(w.prompt_tokens + 1)),
                        small.label(),
                        gib(usable)
                    ),
                ));
            }
            if !fits(batch, cap) {
                cap = largest(cap, |m| fits(batch, m));
            }
        } else if !fits(batch, cap) {
            // One full-length sequence fits (checked above): shrink the batch instead.
            batch = largest(batch, |b| fits(b, cap));
        }
        let seqs_fit = (usable / per_seq(w.prompt_tokens + cap).max(1)).max(1);
        for _ in 0..k {
            servers.push(VllmServerPlan {
                gpus: group.to_vec(),
                tensor_parallel_size: tp,
                gpu_memory_utilization: util,
                max_model_len,
                max_num_seqs: max_seqs_wanted.min(seqs_fit),
                block_size: v.block_size,
                weights_bytes: weights,
                non_torch_bytes: non_torch,
                activation_peak_bytes: peak,
                kv_cache_bytes: kv.kv_cache_bytes as u64,
                kv_blocks: kv.kv_blocks,
                kv_tokens: kv.kv_tokens(v.block_size),
            });
        }
    }
    if servers.is_empty() {
        return Err(Error::invalid("generation GPUs", format!("{} GPUs cannot form a group of {tp}", gpus.len())));
    }
    Ok((servers, cap, batch))
}

/// Largest `x` in `1..=max` with `ok(x)`, for `ok` true from 1 up to some point.
fn largest(max: u64, ok: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (1u64, max.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if ok(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

fn device_uses(
    inv: &DeviceInventory,
    generation: Option<&GenerationPlan>,
    extraction: Option<&super::request::ExtractionPlan>,
) -> Vec<DeviceUse> {
    let mut out: Vec<DeviceUse> = inv
        .gpus
        .iter()
        .map(|d| DeviceUse { device: d.label(), total_bytes: d.total_bytes, generation_bytes: 0, extraction_bytes: 0 })
        .collect();
    out.push(DeviceUse { device: "CPU".into(), total_bytes: inv.cpu_bytes, generation_bytes: 0, extraction_bytes: 0 });
    if let Some(g) = generation {
        for s in &g.servers {
            for &i in &s.gpus {
                if let Some(u) = out.iter_mut().find(|u| u.device == format!("GPU {i}")) {
                    u.generation_bytes += (u.total_bytes as f64 * s.gpu_memory_utilization) as u64;
                }
            }
        }
    }
    if let Some(e) = extraction {
        for share in e.workers.iter().flat_map(|w| &w.shares) {
            if let Some(u) = out.iter_mut().find(|u| u.device == share.device) {
                u.extraction_bytes += share.weights_bytes + share.working_set_bytes;
            }
        }
    }
    out
}
