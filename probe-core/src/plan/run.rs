//! One plan per run: the device inventory, the model's shape and the run's settings in, the
//! [`RunPlan`] out — the extraction batch size, compute dtype and placement, and the vLLM
//! servers' arguments that the run then uses. `probe plan`, `probe sweep|generate|extract`
//! (and their `--dry-run --json`) and library users all resolve it here.
//!
//! ```
//! use probe_core::plan::{DeviceInventory, ModelSpec, RunSettings, resolve_run};
//! let spec = ModelSpec::from_json(r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,
//!   "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,
//!   "max_position_embeddings":8192}"#)?;
//! let inventory = DeviceInventory::parse_gpus("1x80GiB")?;
//! let plan = resolve_run(inventory, spec, &RunSettings::new(200).with_max_new_tokens(Some(64)))?;
//! let extraction = plan.extraction.as_ref().expect("extraction planned");
//! assert_eq!(extraction.placement[0].device, "cuda:0");
//! assert_eq!(extraction.dtype.as_str(), "bf16");
//! # Ok::<(), probe_core::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use super::config::ModelSpec;
use super::inventory::DeviceInventory;
use super::memory::Dtype;
use super::placement::Planner;
use super::request::{
    DeviceUse, ExtractionPlan, ExtractionWorkload, GenerationWorkload, ModelMemory, Plan, PlanRequest, ShareMode,
    VllmServerPlan, VllmSettings,
};
use super::units::gib;
use crate::{DevicePolicy, Error, Positions, Result};

/// Largest extraction batch a run plans for (the plan picks the largest that fits up to it).
pub const DEFAULT_MAX_EXTRACTION_BATCH: u64 = 64;

/// Sequences in flight per launched vLLM server that a run plans for (shrunk to fit).
pub const DEFAULT_GENERATION_BATCH: u64 = 64;

/// What a run asks for; the rest is planned.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RunSettings {
    /// Longest prompt in tokens (as the model's tokenizer counts them, special tokens included).
    pub prompt_tokens: u64,
    /// New tokens per completion; `None` when the run generates nothing.
    pub max_new_tokens: Option<u64>,
    /// Whether the run launches vLLM servers for generation (then they are planned).
    pub launch_servers: bool,
    /// Whether the run extracts hidden states.
    pub extraction: bool,
    /// The extraction batch size given by the user (`--batch-size`); `None` plans it.
    pub batch_size: Option<usize>,
    /// Largest extraction batch to plan for.
    pub max_batch_size: u64,
    /// Layers captured per forward pass; `None` counts every hidden state.
    pub layers: Option<u64>,
    /// Blocks an extraction-only model loads (see [`ExtractionWorkload::blocks`]); `None`:
    /// the whole model.
    pub extraction_blocks: Option<u64>,
    /// Position reduction of the captured layers.
    pub positions: Positions,
    /// Compute dtype (`--dtype`); default f32 without a GPU, bf16 with one.
    pub dtype: Option<Dtype>,
    /// Sequences in flight per launched server.
    pub generation_batch: u64,
    /// GPUs for generation; `None` lets the planner choose.
    pub generation_gpus: Option<Vec<usize>>,
    /// GPUs for extraction; `None` lets the planner choose.
    pub extraction_gpus: Option<Vec<usize>>,
    /// Sharing mode; `None` lets the planner choose.
    pub mode: Option<ShareMode>,
    /// vLLM settings (`[vllm]` keys); unset fields are planned.
    pub vllm: VllmSettings,
    /// CPU memory cap for offloaded layers (default 90 % of the CPU's).
    pub cpu_max_memory: Option<u64>,
}

impl RunSettings {
    /// Settings for prompts of at most `prompt_tokens` tokens: extraction planned, no
    /// generation, every layer captured at the last position.
    pub fn new(prompt_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            max_new_tokens: None,
            launch_servers: false,
            extraction: true,
            batch_size: None,
            max_batch_size: DEFAULT_MAX_EXTRACTION_BATCH,
            layers: None,
            extraction_blocks: None,
            positions: Positions::Last,
            dtype: None,
            generation_batch: DEFAULT_GENERATION_BATCH,
            generation_gpus: None,
            extraction_gpus: None,
            mode: None,
            vllm: VllmSettings::default(),
            cpu_max_memory: None,
        }
    }
    /// Sets the new tokens per completion (`None`: no generation).
    pub fn with_max_new_tokens(mut self, n: Option<u64>) -> Self {
        self.max_new_tokens = n;
        self
    }
    /// Plans the vLLM servers the run launches.
    pub fn with_launch_servers(mut self, on: bool) -> Self {
        self.launch_servers = on;
        self
    }
    /// Plans extraction or not.
    pub fn with_extraction(mut self, on: bool) -> Self {
        self.extraction = on;
        self
    }
    /// Fixes the extraction batch size (`None`: planned).
    pub fn with_batch_size(mut self, b: Option<usize>) -> Self {
        self.batch_size = b;
        self
    }
    /// Sets the number of captured tensors: one per layer, per (site, layer) when several sites
    /// are read.
    pub fn with_layers(mut self, n: Option<u64>) -> Self {
        self.layers = n;
        self
    }
    /// Sets the blocks an extraction-only model loads (`None`: the whole model).
    pub fn with_extraction_blocks(mut self, n: Option<u64>) -> Self {
        self.extraction_blocks = n;
        self
    }
    /// Sets the position reduction.
    pub fn with_positions(mut self, p: Positions) -> Self {
        self.positions = p;
        self
    }
    /// Sets the compute dtype (`None`: by device).
    pub fn with_dtype(mut self, d: Option<Dtype>) -> Self {
        self.dtype = d;
        self
    }
    /// Sets the vLLM settings.
    pub fn with_vllm(mut self, v: VllmSettings) -> Self {
        self.vllm = v;
        self
    }
}

/// Where the extraction batch size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSource {
    /// The plan: the largest batch whose working set fits.
    Planned,
    /// Given by the user (`--batch-size`, `[extraction] batch_size`).
    Given,
}

/// One device's share of an extraction worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Placement {
    /// `"cuda:N"` or `"cpu"`.
    pub device: String,
    /// First and last transformer block on this device (0-based, inclusive).
    pub layers: [usize; 2],
    /// The worker this share belongs to: shares of one worker form one pipeline (a layer
    /// split); different workers are data-parallel replicas.
    pub worker: usize,
    /// Holds the token embedding.
    pub embedding: bool,
    /// Holds the final norm (and output head).
    pub head: bool,
    /// Predicted weight bytes here.
    pub weights_bytes: u64,
    /// Predicted working set of one batch here.
    pub working_set_bytes: u64,
}

impl Placement {
    /// Every block of one worker on one device (`"cuda:N"` or `"cpu"`), embedding and head
    /// included; `last_block` is the model's last block (`usize::MAX`: whatever it is).
    pub fn whole(device: impl Into<String>, last_block: usize) -> Self {
        Self {
            device: device.into(),
            layers: [0, last_block],
            worker: 0,
            embedding: true,
            head: true,
            weights_bytes: 0,
            working_set_bytes: 0,
        }
    }
}

/// The extraction phase as the run executes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExtractionRun {
    /// Inputs per forward pass (and per cached batch entry).
    pub batch_size: usize,
    /// Whether `batch_size` was planned or given.
    pub batch_size_source: BatchSource,
    /// The largest batch that fits (what a planned run uses).
    pub planned_batch_size: u64,
    /// Compute dtype.
    pub dtype: Dtype,
    /// Devices and their blocks, in worker and layer order.
    pub placement: Vec<Placement>,
    /// Padded tokens per input planned for.
    pub seq_len: u64,
    /// Hidden states captured per forward pass.
    pub layers: u64,
    /// Whether some blocks run on the CPU beside GPUs.
    pub cpu_offload: bool,
}

/// One launched vLLM server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerRun {
    /// Its GPUs (`CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<usize>,
    /// Its planned arguments ([`VllmServerPlan::args`]).
    pub args: Vec<String>,
    /// Predicted KV-cache bytes per GPU.
    pub kv_cache_bytes: u64,
    /// Tokens the KV cache holds.
    pub kv_tokens: u64,
}

/// The generation phase as the run executes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerationRun {
    /// The servers the run launches (empty: in process, or servers already running).
    pub servers: Vec<ServerRun>,
    /// New tokens per completion (`None`: no generation).
    pub max_new_tokens: Option<u64>,
    /// Longest prompt in tokens planned for.
    pub prompt_tokens: u64,
}

/// The plan a run resolved and uses: what `--dry-run --json` prints and `report.json`
/// records under `plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunPlan {
    /// The devices planned over.
    pub inventory: DeviceInventory,
    /// The model's memory figures.
    pub model: ModelMemory,
    /// Whether generation and extraction run in turn.
    pub time_shared: bool,
    /// The extraction phase, when the run extracts.
    pub extraction: Option<ExtractionRun>,
    /// The generation phase.
    pub generation: GenerationRun,
    /// Predicted bytes per device and phase.
    pub devices: Vec<DeviceUse>,
    /// Decisions worth telling a person.
    pub notes: Vec<String>,
    /// The planner's whole output (the launcher builds its servers from
    /// `detail.generation`); not serialised.
    #[serde(skip)]
    pub detail: Plan,
}

/// `"cuda:N"` for a GPU index, `"cpu"` for `None`.
pub fn device_name(gpu: Option<usize>) -> String {
    gpu.map_or_else(|| "cpu".to_owned(), |i| format!("cuda:{i}"))
}

impl RunPlan {
    /// Plans a run through `policy` (its inventory, its plan).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] with the numbers when the weights fit neither the GPUs nor the
    /// GPUs and the CPU, when the KV cache of one `max_new_tokens` sequence does not fit a
    /// launched server (or the model's context), and for inconsistent settings.
    pub fn resolve(policy: &dyn DevicePolicy, spec: ModelSpec, settings: &RunSettings) -> Result<Self> {
        let inventory = policy.inventory()?;
        if settings.batch_size == Some(0) {
            return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
        }
        let dtype = settings.dtype.unwrap_or(if inventory.gpus.is_empty() { Dtype::F32 } else { Dtype::Bf16 });
        if dtype.is_quantized() {
            return Err(Error::invalid("dtype", format!("{dtype} (a run computes in f32, bf16 or f16)")));
        }
        let new_tokens = settings.max_new_tokens.unwrap_or(0);
        let generation = (settings.launch_servers && settings.max_new_tokens.is_some())
            .then(|| GenerationWorkload::new(settings.prompt_tokens, new_tokens, settings.generation_batch.max(1)));
        let extraction = settings.extraction.then(|| {
            let mut w =
                ExtractionWorkload::new((settings.prompt_tokens + new_tokens).max(1), settings.max_batch_size.max(1))
                    .with_positions(settings.positions)
                    .with_blocks(settings.extraction_blocks);
            if let Some(l) = settings.layers {
                w = w.with_layers(l);
            }
            w
        });
        let mut req = PlanRequest::new(spec, inventory.clone())
            .with_compute_dtype(dtype)
            .with_generation(generation)
            .with_extraction(extraction)
            .with_vllm(settings.vllm.clone())
            .with_cpu_offload(true);
        req.generation_gpus = settings.generation_gpus.clone().filter(|g| !g.is_empty());
        req.extraction_gpus = settings.extraction_gpus.clone().filter(|g| !g.is_empty());
        req.mode = settings.mode;
        req.cpu_max_memory = settings.cpu_max_memory;
        let one_token = req.generation.map(|g| GenerationWorkload { max_new_tokens: 1, ..g });
        let short = req.extraction.map(|w| ExtractionWorkload { seq_len: settings.prompt_tokens.max(1) + 1, ..w });
        let probe = req.clone().with_generation(one_token).with_extraction(short);
        let mut run = Self::from_request(policy, req, settings.batch_size).map_err(|e| {
            // Name max_tokens when it is what does not fit (a 1-token plan would).
            match (&e, new_tokens > 1 && one_token.is_some() && policy.plan(probe).is_ok()) {
                (Error::InvalidInput { message, .. }, true) => {
                    Error::invalid("max_tokens", format!("{new_tokens} does not fit: {message}"))
                }
                _ => e,
            }
        })?;
        check_generation(&run.detail, settings)?;
        run.generation.max_new_tokens = settings.max_new_tokens;
        run.generation.prompt_tokens = settings.prompt_tokens;
        Ok(run)
    }

    /// Plans `request` through `policy` (`probe plan` builds its request from its flags);
    /// `given_batch` is the user's extraction batch size, if any. A capped `max_new_tokens`
    /// stays a note here; [`RunPlan::resolve`] refuses it.
    ///
    /// # Errors
    /// The planner's: an impossible plan, with its numbers.
    pub fn from_request(policy: &dyn DevicePolicy, request: PlanRequest, given_batch: Option<usize>) -> Result<Self> {
        let inventory = request.inventory.clone();
        let plan = policy.plan(request)?;
        let extraction = plan.extraction.as_ref().map(|e| extraction_run(e, e.dtype, given_batch));
        let mut notes = plan.notes.clone();
        if let (Some(e), Some(given)) = (&extraction, given_batch)
            && given as u64 > e.planned_batch_size
        {
            notes.push(format!(
                "batch_size {given} is larger than the planned {} (out-of-memory errors shrink it)",
                e.planned_batch_size
            ));
        }
        let servers = plan
            .generation
            .as_ref()
            .map(|g| {
                g.servers
                    .iter()
                    .map(|s| ServerRun {
                        gpus: s.gpus.clone(),
                        args: s.args(),
                        kv_cache_bytes: s.kv_cache_bytes,
                        kv_tokens: s.kv_tokens,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            inventory,
            model: plan.model.clone(),
            time_shared: plan.time_shared,
            extraction,
            generation: GenerationRun {
                servers,
                max_new_tokens: plan.generation.as_ref().map(|g| g.max_new_tokens),
                prompt_tokens: plan.generation.as_ref().map_or(0, |g| g.prompt_tokens),
            },
            devices: plan.devices.clone(),
            notes,
            detail: plan,
        })
    }

    /// The extraction batch size the run uses (`fallback` when no extraction is planned).
    pub fn batch_size_or(&self, fallback: usize) -> usize {
        self.extraction.as_ref().map_or(fallback, |e| e.batch_size)
    }

    /// The first extraction device's GPU index (`None`: the CPU, or no extraction).
    pub fn first_extraction_gpu(&self) -> Option<usize> {
        let first = self.extraction.as_ref()?.placement.first()?;
        first.device.strip_prefix("cuda:").and_then(|i| i.parse().ok())
    }

    /// A few readable lines: devices, dtype, batch, placement, servers, notes.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("devices: {}", self.inventory.summary())];
        out.push(format!(
            "model: {} · {:.2} B parameters · {} weights {}",
            self.model.architecture,
            self.model.params as f64 / 1e9,
            self.model.dtype,
            gib(self.model.weights_bytes)
        ));
        if let Some(e) = &self.extraction {
            let how = match e.batch_size_source {
                BatchSource::Planned => "planned".to_owned(),
                BatchSource::Given => format!("given; planned {}", e.planned_batch_size),
            };
            out.push(format!(
                "extraction: batch {} ({how}) × {} tokens, dtype {}{}",
                e.batch_size,
                e.seq_len,
                e.dtype,
                if e.cpu_offload { ", CPU offload" } else { "" }
            ));
            for p in &e.placement {
                out.push(format!(
                    "  worker {} on {}: blocks {}..={} ({} weights + {} working set)",
                    p.worker,
                    p.device,
                    p.layers[0],
                    p.layers[1],
                    gib(p.weights_bytes),
                    gib(p.working_set_bytes)
                ));
            }
        }
        for s in &self.generation.servers {
            out.push(format!("vLLM server on GPUs {:?}: {}", s.gpus, s.args.join(" ")));
        }
        out.extend(self.notes.iter().map(|n| format!("note: {n}")));
        out
    }
}

/// Plans a run over `inventory` with the default [`Planner`] (see [`RunPlan::resolve`]).
///
/// # Errors
/// As [`RunPlan::resolve`].
pub fn resolve_run(inventory: DeviceInventory, spec: ModelSpec, settings: &RunSettings) -> Result<RunPlan> {
    RunPlan::resolve(&Planner::new(inventory), spec, settings)
}

/// Refuses a `max_new_tokens` the launched servers cannot hold (the planner capped it).
fn check_generation(plan: &Plan, settings: &RunSettings) -> Result<()> {
    let Some(g) = &plan.generation else { return Ok(()) };
    if g.max_new_tokens >= g.max_new_tokens_requested {
        return Ok(());
    }
    let server = g.servers.first();
    let why = match server {
        Some(s) if s.max_model_len < settings.prompt_tokens + g.max_new_tokens_requested => format!(
            "{} prompt tokens + {} new tokens pass the longest sequence the servers can take ({} tokens: the \
             model's context or [vllm] max_model_len)",
            settings.prompt_tokens, g.max_new_tokens_requested, s.max_model_len
        ),
        Some(s) => format!(
            "the KV cache of a server holds {} tokens ({}); {} prompt tokens + {} new tokens leave room for {} new tokens",
            s.kv_tokens,
            gib(s.kv_cache_bytes),
            settings.prompt_tokens,
            g.max_new_tokens_requested,
            g.max_new_tokens
        ),
        None => "no server planned".to_owned(),
    };
    Err(Error::invalid("max_tokens", format!("{} does not fit: {why}", g.max_new_tokens_requested)))
}

/// The extraction phase of `plan`: placement by worker, the batch size used.
fn extraction_run(e: &ExtractionPlan, dtype: Dtype, given: Option<usize>) -> ExtractionRun {
    let mut placement = Vec::new();
    for (worker, w) in e.workers.iter().enumerate() {
        let start = placement.len();
        // A share without blocks (the embedding or the head alone) runs with its neighbour.
        let mut carried: Option<u64> = None;
        for s in &w.shares {
            if s.num_layers == 0 {
                match placement[start..].last_mut() {
                    Some(prev) => {
                        let prev: &mut Placement = prev;
                        prev.head |= s.head;
                        prev.weights_bytes += s.weights_bytes;
                    }
                    None => carried = Some(carried.unwrap_or(0) + s.weights_bytes),
                }
                continue;
            }
            placement.push(Placement {
                device: device_name(s.gpu),
                layers: [s.first_layer, s.first_layer + s.num_layers - 1],
                worker,
                embedding: s.embedding || carried.is_some(),
                head: s.head,
                weights_bytes: s.weights_bytes + carried.take().unwrap_or(0),
                working_set_bytes: s.working_set_bytes,
            });
        }
    }
    ExtractionRun {
        batch_size: given.unwrap_or(e.batch_size as usize),
        batch_size_source: if given.is_some() { BatchSource::Given } else { BatchSource::Planned },
        planned_batch_size: e.batch_size,
        dtype,
        placement,
        seq_len: e.seq_len,
        layers: e.layers,
        cpu_offload: e.cpu_offload,
    }
}

impl VllmServerPlan {
    /// The server's planned arguments, as the launcher passes them:
    /// `--gpu-memory-utilization U [--tensor-parallel-size T] --max-model-len N
    /// --max-num-seqs S --block-size B`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec!["--gpu-memory-utilization".to_owned(), self.gpu_memory_utilization.to_string()];
        if self.tensor_parallel_size > 1 {
            a.extend(["--tensor-parallel-size".to_owned(), self.tensor_parallel_size.to_string()]);
        }
        a.extend(["--max-model-len".to_owned(), self.max_model_len.to_string()]);
        a.extend(["--max-num-seqs".to_owned(), self.max_num_seqs.to_string()]);
        a.extend(["--block-size".to_owned(), self.block_size.to_string()]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::units::GIB;

    fn llama_8b() -> ModelSpec {
        ModelSpec::from_path(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs/llama-3-8b.json"),
        )
        .expect("fixture config")
    }

    #[test]
    fn cpu_only_plans_f32_on_the_cpu_with_a_planned_batch() {
        let inv = DeviceInventory::new(vec![], 64 * GIB);
        let p = resolve_run(inv, llama_8b(), &RunSettings::new(100)).unwrap();
        let e = p.extraction.as_ref().unwrap();
        assert_eq!((e.dtype, e.batch_size_source), (Dtype::F32, BatchSource::Planned));
        assert!(e.batch_size >= 1 && e.batch_size as u64 == e.planned_batch_size);
        assert_eq!(e.placement.len(), 1);
        assert_eq!((e.placement[0].device.as_str(), e.placement[0].layers), ("cpu", [0, 31]));
        assert!(e.placement[0].embedding && e.placement[0].head);
        assert!(p.generation.servers.is_empty());
    }

    #[test]
    fn a_given_batch_is_kept_and_a_quantised_dtype_refused() {
        let inv = DeviceInventory::parse_gpus("1x80GiB").unwrap();
        let p = resolve_run(inv.clone(), llama_8b(), &RunSettings::new(100).with_batch_size(Some(3))).unwrap();
        let e = p.extraction.unwrap();
        assert_eq!((e.batch_size, e.batch_size_source, e.dtype), (3, BatchSource::Given, Dtype::Bf16));
        let err = resolve_run(inv, llama_8b(), &RunSettings::new(100).with_dtype(Some(Dtype::Int4))).unwrap_err();
        assert!(err.to_string().contains("int4"), "{err}");
    }

    #[test]
    fn launched_servers_get_planned_arguments_and_a_long_max_tokens_is_refused() {
        let inv = DeviceInventory::parse_gpus("2x80GiB").unwrap();
        let s = RunSettings::new(200).with_max_new_tokens(Some(300)).with_launch_servers(true);
        let p = resolve_run(inv.clone(), llama_8b(), &s).unwrap();
        let args = &p.generation.servers[0].args;
        let at = |k: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone());
        assert_eq!(at("--max-model-len").as_deref(), Some("512"), "{args:?}");
        assert!(at("--max-num-seqs").is_some() && at("--gpu-memory-utilization").is_some(), "{args:?}");
        let s = RunSettings::new(200).with_max_new_tokens(Some(9000)).with_launch_servers(true);
        let e = resolve_run(inv, llama_8b(), &s).unwrap_err().to_string();
        assert!(e.contains("max_tokens") && e.contains("9000") && e.contains("8192"), "{e}");
    }

    #[test]
    fn servers_hold_the_checkpoint_dtype_and_extraction_its_compute_dtype() {
        let inv = DeviceInventory::parse_gpus("2x80GiB").unwrap();
        let s = RunSettings::new(200).with_max_new_tokens(Some(100)).with_launch_servers(true);
        let bf16 = resolve_run(inv.clone(), llama_8b(), &s).unwrap();
        let f32 = resolve_run(inv, llama_8b(), &s.with_dtype(Some(Dtype::F32))).unwrap();
        // The servers serve the bf16 checkpoint either way: the same arguments.
        assert_eq!(f32.detail.model.dtype, Dtype::Bf16);
        assert_eq!(f32.generation.servers, bf16.generation.servers);
        // Extraction holds f32 weights: twice the bytes, and says so.
        let (a, b) = (bf16.extraction.unwrap(), f32.extraction.unwrap());
        assert_eq!((a.dtype, b.dtype), (Dtype::Bf16, Dtype::F32));
        let weights = |e: &ExtractionRun| e.placement.iter().map(|p| p.weights_bytes).sum::<u64>();
        assert!(weights(&b) > weights(&a) * 19 / 10, "{} vs {}", weights(&b), weights(&a));
    }
}
