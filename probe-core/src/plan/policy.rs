//! The [`DevicePolicy`] contract, beside its implementation ([`super::Planner`]).

use super::{DeviceInventory, Plan, PlanRequest};
use crate::Result;

/// Turns a device inventory and a model spec into a plan, before anything is launched.
///
/// # Contract
/// - `plan` is a pure calculation: it launches nothing and allocates no device memory.
/// - An impossible plan is [`crate::Error::InvalidInput`] with its numbers
///   ("needs 83.1 GiB, GPU 0 has 79.2 GiB"), before anything starts.
/// - `inventory` reports declared devices, or devices found through NVML/CUDA when built
///   with `cuda`; without them it reports the CPU only.
pub trait DevicePolicy: Send + Sync + std::fmt::Debug {
    /// Plans roles, memory and batch sizes.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for an impossible or inconsistent plan.
    fn plan(&self, request: PlanRequest) -> Result<Plan>;

    /// The devices this policy plans over.
    ///
    /// # Errors
    /// [`crate::Error::DeviceUnavailable`] when the inventory cannot be read.
    fn inventory(&self) -> Result<DeviceInventory>;
}
