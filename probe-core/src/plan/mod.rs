//! Device inventory, memory model and placement plans (the [`crate::DevicePolicy`] side).
//!
//! - [`ModelSpec`]: a model's shape from its `config.json`.
//! - [`memory`]: parameter counts, weight bytes, KV bytes per token (sliding windows),
//!   extraction working sets, vLLM's start-up profile and KV-block arithmetic.
//! - [`DeviceInventory`]: declared (`"8x80GiB"`) or detected GPUs and CPU memory.
//! - [`Planner`]: roles, vLLM servers, extraction batch and layer split, the
//!   `max_new_tokens` cap; an impossible plan is refused with its numbers.
//! - [`paged`]: the paged-attention engine ladder (max_seqs, pages, prefill size).
//! - [`OomBackoff`]: retries a batch smaller on [`crate::Error::OutOfMemory`].
//! - [`RunPlan`]: the plan one run resolves and uses ([`resolve_run`]): extraction batch,
//!   dtype and placement, the launched servers' arguments; [`MemoryReport`]: what it measured.

mod backoff;
mod config;
mod extraction;
mod inventory;
mod measured;
pub mod memory;
pub mod paged;
mod placement;
mod policy;
mod request;
mod run;
mod table;
pub mod units;

pub use backoff::{Backoff, ClearCache, OomBackoff};
pub use config::ModelSpec;
pub use extraction::reserve;
pub use inventory::{Device, DeviceInventory, InventorySource, parse_gpu_set, parse_meminfo};
pub use measured::{DeviceMemory, MemoryReport, PhaseMemory};
pub use memory::{AttentionKind, Dtype, ExtractionShape, ParamCount, VllmKv, VllmMemory};
pub use placement::{
    DEFAULT_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, DEFAULT_NON_TORCH, DEFAULT_UTILIZATION, Planner, PlannerBuilder, plan,
};
pub use policy::DevicePolicy;
pub use request::{
    DeviceUse, ExtractionPlan, ExtractionWorker, ExtractionWorkload, GenerationPlan, GenerationWorkload, LayerShare,
    ModelMemory, Plan, PlanRequest, ShareMode, VllmServerPlan, VllmSettings,
};
pub use run::{
    BatchSource, DEFAULT_GENERATION_BATCH, DEFAULT_MAX_EXTRACTION_BATCH, ExtractionRun, GenerationRun, Placement,
    RunPlan, RunSettings, ServerRun, device_name, resolve_run,
};
