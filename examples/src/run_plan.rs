//! The plan of one `probe sweep|generate|extract` run: the device inventory (`--gpus`,
//! `[devices] gpus`, NVML under `cuda`, else the CPU and its RAM), the model's shape and the
//! run's settings go to [`probe_core::plan::resolve_run`]; the run then uses its extraction
//! batch size, dtype and placement and its servers' arguments. `--dry-run --json` prints it.

use std::io::Write as _;
use std::path::Path;

use clap::Args;
use probe_core::plan::units::parse_bytes;
use probe_core::plan::{Dtype, ModelSpec, RunPlan, RunSettings, ShareMode, VllmSettings};
use probe_core::sweep::PromptSet;
use probe_core::{Error, Result};

use crate::backends::{BackendKind, MOCK_LAYERS};
use crate::config_file::ProbeToml;

/// The plan flags shared by `probe sweep`, `generate` and `extract`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct PlanFlags {
    /// Declared GPUs, as `probe plan --gpus`: "4x80GiB", "80GiB,40GiB" [default: `[devices] gpus`,
    /// else detected (NVML with the cuda feature), else the CPU].
    #[arg(long)]
    pub(crate) gpus: Option<String>,
    /// Compute dtype: f32, bf16 or f16 [default: `[extraction] dtype`, else f32 on the CPU and
    /// bf16 on GPUs]. Part of the activation cache key.
    #[arg(long)]
    pub(crate) dtype: Option<String>,
    /// With --dry-run: print the resolved plan as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What a command runs, for the plan.
#[derive(Debug, Clone)]
pub(crate) struct Workload<'a> {
    pub(crate) backend: BackendKind,
    pub(crate) model: &'a str,
    pub(crate) prompts: &'a PromptSet,
    /// New tokens per completion (`None`: no generation).
    pub(crate) max_new_tokens: Option<u64>,
    /// Whether the run launches its own vLLM servers.
    pub(crate) launches: bool,
    /// Whether a model is loaded in process (extraction, or candle generation).
    pub(crate) in_process: bool,
    /// `--extractor vllm`: the servers keep every layer's hidden states in their cache.
    pub(crate) hidden_states_on_servers: bool,
    /// `--batch-size` / `[extraction] batch_size`.
    pub(crate) batch_size: Option<usize>,
    /// Hidden states captured per forward pass.
    pub(crate) layers: Option<u64>,
    pub(crate) positions: probe_core::Positions,
}

/// The compute dtype asked for (`--dtype`, then `[extraction] dtype`), checked.
///
/// # Errors
/// [`Error::InvalidInput`] naming a dtype other than f32, bf16 or f16.
pub(crate) fn dtype(flags: &PlanFlags, file: &ProbeToml) -> Result<Option<Dtype>> {
    let Some(text) = flags.dtype.as_deref().or(file.extraction.dtype.as_deref()) else { return Ok(None) };
    match text.parse::<Dtype>()? {
        d @ (Dtype::F32 | Dtype::Bf16 | Dtype::F16) => Ok(Some(d)),
        d => Err(Error::invalid("dtype", format!("{d} (a run computes in f32, bf16 or f16)"))),
    }
}

/// The model's shape: the `mock` backend's fixed one, or the folder's `config.json`; `None`
/// when there is none to read (an export folder, a served model name).
fn model_spec(backend: BackendKind, model: &str) -> Result<Option<ModelSpec>> {
    if backend == BackendKind::Mock {
        let json = format!(
            r#"{{"model_type":"mock","hidden_size":32,"intermediate_size":64,"num_hidden_layers":{MOCK_LAYERS},
               "num_attention_heads":4,"vocab_size":256,"max_position_embeddings":4096}}"#
        );
        return ModelSpec::from_json(&json).map(Some);
    }
    let config = Path::new(model).join("config.json");
    if !config.is_file() {
        return Ok(None);
    }
    ModelSpec::from_path(&config).map(Some)
}

/// Tokens of the longest prompt: counted with the folder's `tokenizer.json` when it loads,
/// else bounded by its bytes (a token covers at least one byte) plus 8 special tokens. Chat
/// prompts not rendered yet count their messages plus 16 tokens of template per message.
fn prompt_tokens(model: &str, prompts: &PromptSet) -> u64 {
    let texts: Vec<String> = prompts
        .prompts
        .iter()
        .map(|p| match (&p.messages, p.text.is_empty()) {
            (Some(m), true) => m.iter().map(|m| format!("{}{}{}", m.role, m.content, " ".repeat(16))).collect(),
            _ => p.text.clone(),
        })
        .collect();
    let by_bytes = || texts.iter().map(|t| t.len() as u64 + 8).max().unwrap_or(8);
    let Ok(tok) = tokenizers::Tokenizer::from_file(Path::new(model).join("tokenizer.json")) else {
        return by_bytes();
    };
    match tok.encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true) {
        Ok(encs) => encs.iter().map(|e| e.get_ids().len() as u64).max().unwrap_or(1),
        Err(_) => by_bytes(),
    }
}

/// The inventory: `--gpus`, else `[devices] gpus`, else detected; `[devices] cpu_memory`
/// overrides the CPU's RAM.
fn inventory(flags: &PlanFlags, file: &ProbeToml) -> Result<probe_backends::device::Detected> {
    let declared = flags.gpus.as_deref().or(file.devices.gpus.as_deref());
    let mut d = probe_backends::device::inventory(declared)?;
    if let Some(c) = &file.devices.cpu_memory {
        let cpu = parse_bytes("[devices] cpu_memory", c)?;
        d.inventory = d.inventory.with_cpu_bytes(cpu);
    }
    Ok(d)
}

/// `[vllm]` keys over the planner's defaults.
fn vllm_settings(file: &ProbeToml, gpus: usize) -> VllmSettings {
    let v = &file.vllm;
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

/// Resolves the run's plan; `None` when the model has no `config.json` to plan from (then the
/// run keeps its given or default batch size and computes in f32).
///
/// # Errors
/// Bad `--gpus`, `--dtype` or `[devices]`/`[vllm]` values, and an impossible plan (weights
/// that fit neither the GPUs nor the GPUs and the CPU, a `max_tokens` whose KV cache does not
/// fit), with the numbers.
pub(crate) fn resolve(flags: &PlanFlags, file: &ProbeToml, w: &Workload<'_>) -> Result<Option<RunPlan>> {
    let dtype = dtype(flags, file)?;
    let detected = inventory(flags, file)?;
    let Some(spec) = model_spec(w.backend, w.model)? else { return Ok(None) };
    // Exports run as they were exported (f32); only candle computes in another dtype.
    let dtype = match w.backend {
        BackendKind::Tch | BackendKind::Ort => Some(Dtype::F32),
        _ => dtype,
    };
    let d = &file.devices;
    let mode = d.mode.as_deref().map(str::parse::<ShareMode>).transpose()?;
    let gpus = d.generation_gpus.as_ref().map_or(detected.inventory.gpus.len(), Vec::len);
    let mut settings = RunSettings::new(prompt_tokens(w.model, w.prompts))
        .with_max_new_tokens(w.max_new_tokens)
        .with_launch_servers(w.launches)
        .with_extraction(w.in_process)
        .with_batch_size(w.batch_size)
        .with_layers(w.layers)
        .with_positions(w.positions)
        .with_dtype(dtype)
        .with_vllm(vllm_settings(file, gpus).with_hidden_states(w.hidden_states_on_servers));
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
    settings.generation_gpus = known("generation_gpus", &d.generation_gpus);
    settings.extraction_gpus = known("extraction_gpus", &d.extraction_gpus);
    settings.mode = mode;
    let mut plan = RunPlan::resolve(&probe_core::plan::Planner::new(detected.inventory.clone()), spec, &settings)?;
    notes.append(&mut plan.notes);
    plan.notes = notes;
    Ok(Some(plan))
}

/// `--json` without `--dry-run` is refused (a run prints its report, not its plan).
///
/// # Errors
/// [`Error::InvalidInput`] naming `--json`.
pub(crate) fn check_json(flags: &PlanFlags, dry_run: bool) -> Result<()> {
    if flags.json && !dry_run {
        return Err(Error::invalid("json", "--json prints the plan of a dry run: add --dry-run"));
    }
    Ok(())
}

/// Prints the plan as one JSON object on stdout, with `command`, `backend`, `model_path` and
/// `generation.urls` beside the plan's fields; `extraction` is `null` when nothing is planned.
///
/// # Errors
/// [`Error::Io`] when stdout cannot be written.
pub(crate) fn print_json(
    command: &str,
    backend: BackendKind,
    model: &str,
    plan: Option<&RunPlan>,
    urls: &[String],
) -> Result<()> {
    let mut v = match plan {
        Some(p) => serde_json::to_value(p).map_err(|e| Error::backend("json", e))?,
        None => serde_json::json!({ "extraction": null, "generation": { "servers": [] } }),
    };
    v["command"] = command.into();
    v["backend"] = backend.name().into();
    v["model_path"] = model.into();
    v["generation"]["urls"] = urls.into();
    let text = serde_json::to_string(&v).map_err(|e| Error::backend("json", e))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| Error::io("stdout", e))
}

/// The CandleOptions dtype name of a plan (`"f32"` without one).
pub(crate) fn dtype_name(plan: Option<&RunPlan>) -> &'static str {
    plan.and_then(|p| p.extraction.as_ref()).map_or("f32", |e| e.dtype.as_str())
}
