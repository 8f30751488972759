//! Device inventory, memory model and placement plans (the [`crate::DevicePolicy`] side).

use serde::{Deserialize, Serialize};

/// One device the planner may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Device {
    /// Index (CUDA ordinal), or `None` for the CPU.
    pub index: Option<usize>,
    /// Total memory in bytes.
    pub total_bytes: u64,
    /// Free memory in bytes.
    pub free_bytes: u64,
}

/// The devices of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceInventory {
    /// GPUs.
    pub gpus: Vec<Device>,
    /// CPU RAM in bytes.
    pub cpu_bytes: u64,
}

/// What to plan for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlanRequest {
    /// Devices available.
    pub inventory: DeviceInventory,
}

/// A placement plan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// Extraction batch size.
    pub extraction_batch_size: usize,
    /// Whether generation and extraction must run in turn.
    pub time_shared: bool,
}
