//! The plan of one run: the device inventory (declared `[devices] gpus`, NVML under `cuda`,
//! else the CPU and its RAM), the model's shape and the run's settings go to
//! [`probe_core::plan::RunPlan::resolve`]; the run then uses its extraction batch size, dtype
//! and placement and its servers' arguments.

use probe_core::plan::units::parse_bytes;
use probe_core::plan::{Dtype, Planner, RunPlan, RunSettings, ShareMode, VllmSettings};
use probe_core::sweep::PromptSet;
use probe_core::{Positions, Result};

use super::folder::ModelFolder;
use super::settings::Settings;
use crate::device::Detected;
use crate::registry::Backend;

/// What a call runs, for the plan.
#[derive(Debug, Clone)]
pub(super) struct Workload<'a> {
    pub(super) prompts: &'a PromptSet,
    /// New tokens per completion (`None`: no generation).
    pub(super) max_new_tokens: Option<u64>,
    /// Whether the run launches its own vLLM servers.
    pub(super) launches: bool,
    /// Whether a model is loaded in process (extraction, or candle generation).
    pub(super) in_process: bool,
    /// The vLLM servers extract: they keep the asked layers' hidden states in their cache.
    pub(super) hidden_states_on_servers: bool,
    /// Hidden states captured per forward pass.
    pub(super) layers: u64,
    /// Blocks the in-process model loads when it only extracts (`None`: the whole model).
    pub(super) blocks: Option<usize>,
    pub(super) positions: Positions,
    /// The dtype every worker of a sharded sweep keys alike (given, else f32), not planned.
    pub(super) fixed_dtype: bool,
}

/// The inventory: declared `[devices] gpus`, else detected; `[devices] cpu_memory` overrides
/// the CPU's RAM.
///
/// # Errors
/// [`probe_core::Error::InvalidInput`] for a malformed `gpus` or `cpu_memory`.
pub(super) fn inventory(settings: &Settings) -> Result<Detected> {
    let mut d = crate::device::inventory(settings.devices.gpus.as_deref())?;
    if let Some(c) = &settings.devices.cpu_memory {
        d.inventory = d.inventory.with_cpu_bytes(parse_bytes("[devices] cpu_memory", c)?);
    }
    Ok(d)
}

/// `[vllm]` keys over the planner's defaults.
fn vllm_settings(settings: &Settings, gpus: usize) -> VllmSettings {
    let v = &settings.vllm;
    let mut s = VllmSettings::default();
    if let Some(u) = v.gpu_memory_utilization {
        s = s.with_gpu_memory_utilization(u);
    }
    if let Some(n) = v.max_model_len {
        s = s.with_max_model_len(n);
    }
    if let Some(n) = v.max_num_seqs {
        s = s.with_max_num_seqs(n);
    }
    if let Some(t) = v.tensor_parallel_size {
        s = s.with_tensor_parallel_size(t);
    }
    if let (Some(n), true) = (v.servers, gpus > 0) {
        s = s.with_servers_per_gpu(n.div_ceil(gpus).max(1));
    }
    s
}

/// Resolves the plan of a call; `None` when the model has no `config.json` to plan from (then
/// the run keeps its given or default batch size and computes in f32).
///
/// # Errors
/// Bad `[devices]`/`[vllm]` values, and an impossible plan (weights that fit neither the GPUs
/// nor the GPUs and the CPU, a `max_tokens` whose KV cache does not fit), with the numbers.
pub(super) fn resolve(
    settings: &Settings,
    folder: &ModelFolder,
    detected: &Detected,
    backend: Backend,
    w: &Workload<'_>,
) -> Result<Option<RunPlan>> {
    let Some(spec) = folder.spec().cloned() else { return Ok(None) };
    let dtype = match backend {
        // Exports run as they were exported (f32); only candle computes in another dtype.
        Backend::Tch | Backend::Ort => Some(Dtype::F32),
        _ if w.fixed_dtype => Some(settings.extraction.dtype.unwrap_or(Dtype::F32)),
        _ => settings.extraction.dtype,
    };
    let d = &settings.devices;
    let mode = d.mode.as_deref().map(str::parse::<ShareMode>).transpose()?;
    let gpus = d.generation_gpus.as_ref().map_or(detected.inventory.gpus.len(), Vec::len);
    let mut run = RunSettings::new(folder.longest_prompt_tokens(w.prompts))
        .with_max_new_tokens(w.max_new_tokens)
        .with_launch_servers(w.launches)
        .with_extraction(w.in_process)
        .with_batch_size(settings.extraction.batch_size)
        .with_layers(Some(w.layers))
        .with_extraction_blocks(w.blocks.map(|n| n as u64))
        .with_positions(w.positions)
        .with_dtype(dtype)
        .with_vllm(match w.hidden_states_on_servers {
            // The servers keep only the layers the run asks for.
            true => vllm_settings(settings, gpus).with_hidden_state_layers(w.layers),
            false => vllm_settings(settings, gpus),
        });
    // GPU sets naming GPUs the inventory lacks (a dry run on a machine without them; a real
    // run has refused them already) are left to the planner, with a note.
    let mut notes = vec![format!("inventory: {}", detected.message)];
    let mut known = |key: &str, set: &Option<Vec<usize>>| match set {
        Some(s) if s.iter().any(|&i| detected.inventory.gpu(i).is_err()) => {
            notes.push(format!("[devices] {key} {s:?}: not all in the inventory; planned without it"));
            None
        }
        other => other.clone(),
    };
    run.generation_gpus = known("generation_gpus", &d.generation_gpus);
    run.extraction_gpus = known("extraction_gpus", &d.extraction_gpus);
    run.mode = mode;
    let mut plan = RunPlan::resolve(&Planner::new(detected.inventory.clone()), spec, &run)?;
    notes.append(&mut plan.notes);
    plan.notes = notes;
    Ok(Some(plan))
}

/// The compute dtype of a plan (`"f32"` without one).
pub(super) fn dtype_name(plan: Option<&RunPlan>) -> &'static str {
    plan.and_then(|p| p.extraction.as_ref()).map_or("f32", |e| e.dtype.as_str())
}
