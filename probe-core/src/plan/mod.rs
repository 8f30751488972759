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

mod backoff;
mod config;
mod extraction;
mod inventory;
pub mod memory;
pub mod paged;
mod placement;
mod request;
pub mod units;

pub use backoff::{ClearCache, OomBackoff};
pub use config::ModelSpec;
pub use extraction::reserve;
pub use inventory::{Device, DeviceInventory, InventorySource, parse_gpu_set, parse_meminfo};
pub use memory::{AttentionKind, Dtype, ExtractionShape, ParamCount, VllmKv, VllmMemory};
pub use placement::{
    DEFAULT_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, DEFAULT_NON_TORCH, DEFAULT_UTILIZATION, Planner, PlannerBuilder, plan,
};
pub use request::{
    DeviceUse, ExtractionPlan, ExtractionWorker, ExtractionWorkload, GenerationPlan, GenerationWorkload, LayerShare,
    ModelMemory, Plan, PlanRequest, ShareMode, VllmServerPlan, VllmSettings,
};
