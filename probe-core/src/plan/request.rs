//! What to plan for ([`PlanRequest`]) and what comes out ([`Plan`]).

use serde::{Deserialize, Serialize};

use super::config::ModelSpec;
use super::inventory::DeviceInventory;
use super::memory::{AttentionKind, Dtype};
use crate::{Error, Positions, Result};

/// How generation and extraction share GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShareMode {
    /// Disjoint GPU sets, both phases may run at once; overlap is refused.
    #[default]
    Exclusive,
    /// Phases run in turn: generate everything, stop the servers the pipeline started,
    /// then extract; each phase may use the whole GPU.
    TimeShared,
}

impl std::str::FromStr for ShareMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exclusive" => Ok(ShareMode::Exclusive),
            "time-shared" | "time_shared" | "timeshared" => Ok(ShareMode::TimeShared),
            other => Err(Error::invalid("mode", format!("{other:?} (expected exclusive or time-shared)"))),
        }
    }
}

/// vLLM server settings; `None` fields are chosen by the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VllmSettings {
    /// Fraction of each generation GPU the servers on it may take together (default 0.90).
    pub gpu_memory_utilization: Option<f64>,
    /// Tokens per KV block (default 16).
    pub block_size: u64,
    /// `--max-model-len`; default prompt + max_new_tokens, capped by the model's context.
    pub max_model_len: Option<u64>,
    /// `--max-num-seqs` upper bound (default 256).
    pub max_num_seqs: Option<u64>,
    /// Tokens of the start-up profile forward (`--max-num-batched-tokens`, default 8192).
    pub max_num_batched_tokens: Option<u64>,
    /// Measured activation peak, overriding the estimate (to reproduce a start-up log).
    pub activation_peak_bytes: Option<u64>,
    /// Measured non-torch memory, overriding the default of 1 GiB.
    pub non_torch_bytes: Option<u64>,
    /// Servers sharing each GPU (default 1).
    pub servers_per_gpu: usize,
    /// Tensor-parallel size; default the smallest that fits.
    pub tensor_parallel_size: Option<usize>,
    /// The servers also keep hidden states of each token in their cache (vLLM's
    /// `extract_hidden_states`: probe's vLLM extractor): [`VllmSettings::hidden_state_layers`]
    /// × hidden values per token beside the KV cache, on every tensor-parallel rank.
    #[serde(default)]
    pub hidden_states: bool,
    /// How many hidden states the servers keep (`eagle_aux_hidden_state_layer_ids`: the layers
    /// the run asks for); `None`: every one, `L + 1`.
    #[serde(default)]
    pub hidden_state_layers: Option<u64>,
}

impl Default for VllmSettings {
    fn default() -> Self {
        Self {
            gpu_memory_utilization: None,
            block_size: 16,
            max_model_len: None,
            max_num_seqs: None,
            max_num_batched_tokens: None,
            activation_peak_bytes: None,
            non_torch_bytes: None,
            servers_per_gpu: 1,
            tensor_parallel_size: None,
            hidden_states: false,
            hidden_state_layers: None,
        }
    }
}

impl VllmSettings {
    /// Sets `gpu_memory_utilization`.
    pub fn with_gpu_memory_utilization(mut self, u: f64) -> Self {
        self.gpu_memory_utilization = Some(u);
        self
    }
    /// Sets the block size.
    pub fn with_block_size(mut self, n: u64) -> Self {
        self.block_size = n;
        self
    }
    /// Sets `max_model_len`.
    pub fn with_max_model_len(mut self, n: u64) -> Self {
        self.max_model_len = Some(n);
        self
    }
    /// Sets the `max_num_seqs` upper bound.
    pub fn with_max_num_seqs(mut self, n: u64) -> Self {
        self.max_num_seqs = Some(n);
        self
    }
    /// Sets `max_num_batched_tokens`.
    pub fn with_max_num_batched_tokens(mut self, n: u64) -> Self {
        self.max_num_batched_tokens = Some(n);
        self
    }
    /// Overrides the activation peak with a measured one.
    pub fn with_activation_peak(mut self, bytes: u64) -> Self {
        self.activation_peak_bytes = Some(bytes);
        self
    }
    /// Overrides the non-torch memory with a measured one.
    pub fn with_non_torch(mut self, bytes: u64) -> Self {
        self.non_torch_bytes = Some(bytes);
        self
    }
    /// Sets the servers per GPU.
    pub fn with_servers_per_gpu(mut self, k: usize) -> Self {
        self.servers_per_gpu = k;
        self
    }
    /// Sets the tensor-parallel size.
    pub fn with_tensor_parallel_size(mut self, t: usize) -> Self {
        self.tensor_parallel_size = Some(t);
        self
    }
    /// The servers keep every layer's hidden states ([`VllmSettings::hidden_states`]).
    pub fn with_hidden_states(mut self, on: bool) -> Self {
        self.hidden_states = on;
        self
    }
    /// The servers keep `n` hidden states per token (the layers the run asks for), not `L + 1`.
    pub fn with_hidden_state_layers(mut self, n: u64) -> Self {
        self.hidden_states = true;
        self.hidden_state_layers = Some(n);
        self
    }
}

/// The generation phase's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerationWorkload {
    /// Longest prompt, in tokens.
    pub prompt_tokens: u64,
    /// Wanted `max_new_tokens`; the plan may cap it.
    pub max_new_tokens: u64,
    /// Sequences in flight per server (at most; see `fixed_batch`).
    pub batch_size: u64,
    /// Keep `batch_size` and cap `max_new_tokens` to fit; by default the batch shrinks
    /// first (it changes speed only) and `max_new_tokens` is capped only when one
    /// sequence cannot hold it (it changes the completions).
    pub fixed_batch: bool,
}

impl Default for GenerationWorkload {
    fn default() -> Self {
        Self { prompt_tokens: 512, max_new_tokens: 512, batch_size: 64, fixed_batch: false }
    }
}

/// The extraction phase's workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExtractionWorkload {
    /// Padded tokens per input (prompt + completion).
    pub seq_len: u64,
    /// Largest batch wanted (the plan picks the largest that fits up to this).
    pub max_batch_size: u64,
    /// Layers captured per forward (`None`: every layer, L + 1).
    pub layers: Option<u64>,
    /// Position reduction.
    pub positions: Positions,
    /// Attention implementation of the extractor.
    pub attention: AttentionKind,
    /// Blocks the extractor loads when it only extracts: the embedding, blocks `0..n`, the
    /// final norm when `n` is every block, no output head. `None`: the whole model (it
    /// generates too).
    #[serde(default)]
    pub blocks: Option<u64>,
}

impl Default for ExtractionWorkload {
    fn default() -> Self {
        Self {
            seq_len: 1024,
            max_batch_size: 64,
            layers: None,
            positions: Positions::Last,
            attention: AttentionKind::default(),
            blocks: None,
        }
    }
}

/// What to plan for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlanRequest {
    /// Devices available.
    pub inventory: DeviceInventory,
    /// The model (required).
    pub model: Option<ModelSpec>,
    /// Weight dtype of the generation servers; default the checkpoint's, with f32 served as
    /// bf16 on GPUs (as vLLM's `auto`).
    pub dtype: Option<Dtype>,
    /// KV-cache dtype; default the compute dtype.
    pub kv_dtype: Option<Dtype>,
    /// Extraction's compute dtype (`--dtype`), which its weights are held in; default the
    /// weight dtype.
    #[serde(default)]
    pub compute_dtype: Option<Dtype>,
    /// Sharing mode; `None` picks exclusive when the GPUs allow it, else time-shared.
    pub mode: Option<ShareMode>,
    /// GPUs for generation; `None` lets the planner choose.
    pub generation_gpus: Option<Vec<usize>>,
    /// GPUs for extraction; `None` lets the planner choose.
    pub extraction_gpus: Option<Vec<usize>>,
    /// Generation workload; `None` plans no generation.
    pub generation: Option<GenerationWorkload>,
    /// Extraction workload; `None` plans no extraction.
    pub extraction: Option<ExtractionWorkload>,
    /// vLLM settings.
    pub vllm: VllmSettings,
    /// Allow extraction layers on the CPU when the GPUs cannot hold the weights.
    pub cpu_offload: bool,
    /// Per-GPU memory cap for extraction (accelerate's `max_memory` for GPUs).
    pub gpu_max_memory: Option<u64>,
    /// CPU memory cap for offloaded layers (default 90 % of CPU RAM).
    pub cpu_max_memory: Option<u64>,
}

impl PlanRequest {
    /// A request planning both phases with default workloads.
    pub fn new(model: ModelSpec, inventory: DeviceInventory) -> Self {
        Self {
            inventory,
            model: Some(model),
            generation: Some(GenerationWorkload::default()),
            extraction: Some(ExtractionWorkload::default()),
            cpu_offload: true,
            ..Self::default()
        }
    }
    /// Sets the weight dtype.
    pub fn with_dtype(mut self, d: Dtype) -> Self {
        self.dtype = Some(d);
        self
    }
    /// Sets extraction's compute dtype.
    pub fn with_compute_dtype(mut self, d: Dtype) -> Self {
        self.compute_dtype = Some(d);
        self
    }
    /// Sets the sharing mode.
    pub fn with_mode(mut self, m: ShareMode) -> Self {
        self.mode = Some(m);
        self
    }
    /// Sets the generation GPUs.
    pub fn with_generation_gpus(mut self, g: Vec<usize>) -> Self {
        self.generation_gpus = Some(g);
        self
    }
    /// Sets the extraction GPUs.
    pub fn with_extraction_gpus(mut self, g: Vec<usize>) -> Self {
        self.extraction_gpus = Some(g);
        self
    }
    /// Sets (or removes) the generation workload.
    pub fn with_generation(mut self, w: Option<GenerationWorkload>) -> Self {
        self.generation = w;
        self
    }
    /// Sets (or removes) the extraction workload.
    pub fn with_extraction(mut self, w: Option<ExtractionWorkload>) -> Self {
        self.extraction = w;
        self
    }
    /// Sets the vLLM settings.
    pub fn with_vllm(mut self, v: VllmSettings) -> Self {
        self.vllm = v;
        self
    }
    /// Allows or forbids CPU offload.
    pub fn with_cpu_offload(mut self, on: bool) -> Self {
        self.cpu_offload = on;
        self
    }
}

impl GenerationWorkload {
    /// A workload of `batch_size` sequences of `prompt_tokens` + `max_new_tokens`.
    pub fn new(prompt_tokens: u64, max_new_tokens: u64, batch_size: u64) -> Self {
        Self { prompt_tokens, max_new_tokens, batch_size, fixed_batch: false }
    }
    /// Keeps the batch and caps `max_new_tokens` instead.
    pub fn with_fixed_batch(mut self, fixed: bool) -> Self {
        self.fixed_batch = fixed;
        self
    }
}

impl ExtractionWorkload {
    /// A workload of inputs of `seq_len` tokens, batches up to `max_batch_size`.
    pub fn new(seq_len: u64, max_batch_size: u64) -> Self {
        Self { seq_len, max_batch_size, ..Self::default() }
    }
    /// Sets the number of captured layers.
    pub fn with_layers(mut self, n: u64) -> Self {
        self.layers = Some(n);
        self
    }
    /// Loads only blocks `0..n` and no output head (see [`ExtractionWorkload::blocks`]).
    pub fn with_blocks(mut self, n: Option<u64>) -> Self {
        self.blocks = n;
        self
    }
    /// Sets the position reduction.
    pub fn with_positions(mut self, p: Positions) -> Self {
        self.positions = p;
        self
    }
    /// Sets the attention implementation.
    pub fn with_attention(mut self, a: AttentionKind) -> Self {
        self.attention = a;
        self
    }
}

/// The model's memory figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelMemory {
    /// `model_type`.
    pub architecture: String,
    /// Parameters (tied embeddings once).
    pub params: u64,
    /// Weight dtype.
    pub dtype: Dtype,
    /// Weight bytes.
    pub weights_bytes: u64,
    /// KV dtype.
    pub kv_dtype: Dtype,
    /// KV bytes per token, all layers, no window.
    pub kv_bytes_per_token: u64,
    /// Transformer blocks.
    pub layers: usize,
    /// Blocks with a sliding window.
    pub sliding_layers: usize,
}

/// One vLLM server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VllmServerPlan {
    /// Its GPUs (`CUDA_VISIBLE_DEVICES`), one per tensor-parallel rank.
    pub gpus: Vec<usize>,
    /// `--tensor-parallel-size`.
    pub tensor_parallel_size: usize,
    /// `--gpu-memory-utilization`.
    pub gpu_memory_utilization: f64,
    /// `--max-model-len`.
    pub max_model_len: u64,
    /// `--max-num-seqs`.
    pub max_num_seqs: u64,
    /// `--block-size`.
    pub block_size: u64,
    /// Weights per GPU.
    pub weights_bytes: u64,
    /// Non-torch memory per GPU.
    pub non_torch_bytes: u64,
    /// Activation peak per GPU (estimated or given).
    pub activation_peak_bytes: u64,
    /// KV cache per GPU.
    pub kv_cache_bytes: u64,
    /// KV blocks.
    pub kv_blocks: u64,
    /// Tokens the KV cache holds.
    pub kv_tokens: u64,
}

/// The generation phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerationPlan {
    /// GPUs it uses.
    pub gpus: Vec<usize>,
    /// Servers to start.
    pub servers: Vec<VllmServerPlan>,
    /// Prompt tokens planned for.
    pub prompt_tokens: u64,
    /// Sequences in flight per server (≤ the workload's).
    pub batch_size: u64,
    /// `max_new_tokens` asked for.
    pub max_new_tokens_requested: u64,
    /// `max_new_tokens` that fits (≤ requested).
    pub max_new_tokens: u64,
}

/// Layers of one extraction worker on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LayerShare {
    /// `"GPU 0"` or `"CPU"`.
    pub device: String,
    /// The GPU index, `None` for the CPU.
    pub gpu: Option<usize>,
    /// First block on this device.
    pub first_layer: usize,
    /// Blocks on this device.
    pub num_layers: usize,
    /// Holds the embedding.
    pub embedding: bool,
    /// Holds the final norm and output projection.
    pub head: bool,
    /// Weight bytes here.
    pub weights_bytes: u64,
    /// Working-set bytes here.
    pub working_set_bytes: u64,
}

/// One extraction worker (a whole model on one GPU, or one split over several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExtractionWorker {
    /// Its devices, in layer order.
    pub shares: Vec<LayerShare>,
}

/// The extraction phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExtractionPlan {
    /// GPUs it uses.
    pub gpus: Vec<usize>,
    /// Workers; extraction chunks go round-robin over them.
    pub workers: Vec<ExtractionWorker>,
    /// Batch size that fits.
    pub batch_size: u64,
    /// Padded tokens per input.
    pub seq_len: u64,
    /// Longest input that fits one at a time (up to the model's context).
    pub max_seq_len: u64,
    /// Captured layers.
    pub layers: u64,
    /// Working set of one batch.
    pub working_set_bytes: u64,
    /// Reserve kept free on each GPU: max(2 %, 512 MiB).
    pub reserve_bytes: u64,
    /// Whether some layers run on the CPU.
    pub cpu_offload: bool,
    /// The dtype extraction computes in and holds its weights in.
    #[serde(default)]
    pub dtype: Dtype,
}

/// Bytes given to one device, by phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceUse {
    /// `"GPU 0"` or `"CPU"`.
    pub device: String,
    /// Total memory.
    pub total_bytes: u64,
    /// Bytes of the generation phase (the servers' `utilization × total`).
    pub generation_bytes: u64,
    /// Bytes of the extraction phase (weights + working set).
    pub extraction_bytes: u64,
}

/// A placement plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// Extraction batch size (0 when no extraction is planned).
    pub extraction_batch_size: usize,
    /// Whether generation and extraction must run in turn.
    pub time_shared: bool,
    /// Model figures.
    pub model: ModelMemory,
    /// Generation phase.
    pub generation: Option<GenerationPlan>,
    /// Extraction phase.
    pub extraction: Option<ExtractionPlan>,
    /// Bytes per device.
    pub devices: Vec<DeviceUse>,
    /// Decisions worth telling a person (caps, fallbacks).
    pub notes: Vec<String>,
}
