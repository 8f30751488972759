//! Memory measured during a run, beside what the [`RunPlan`] predicted: `report.json`'s
//! `memory`. The samples come from NVML (each GPU's used memory) or the process's resident
//! set (`/proc/self/status`) — `probe_backends::device::MemorySampler` takes them.

use serde::{Deserialize, Serialize};

use super::run::RunPlan;
use super::units::human;

/// Used memory of one device around one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PhaseMemory {
    /// `"generation"`, `"extraction"`, `"probes"`.
    pub phase: String,
    /// Used bytes when the phase started.
    pub before_bytes: u64,
    /// Used bytes when it finished.
    pub after_bytes: u64,
    /// Largest used bytes sampled during it.
    pub peak_bytes: u64,
}

/// One device: predicted and measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceMemory {
    /// `"cuda:N"` or `"cpu"` (the process's resident set).
    pub device: String,
    /// Total memory of the device.
    pub total_bytes: u64,
    /// Used bytes when the run started (before any model loaded).
    pub start_bytes: u64,
    /// Predicted bytes of the generation phase here (launched servers).
    pub predicted_generation_bytes: u64,
    /// Predicted bytes of the extraction phase here (weights and one batch's working set).
    pub predicted_extraction_bytes: u64,
    /// Measured, phase by phase.
    pub phases: Vec<PhaseMemory>,
}

impl PhaseMemory {
    /// `phase` starting with `used` bytes in use.
    pub fn started(phase: impl Into<String>, used: u64) -> Self {
        Self { phase: phase.into(), before_bytes: used, after_bytes: 0, peak_bytes: used }
    }
}

impl DeviceMemory {
    /// A device with nothing measured yet.
    pub fn new(device: impl Into<String>, total_bytes: u64, start_bytes: u64) -> Self {
        Self { device: device.into(), total_bytes, start_bytes, ..Self::default() }
    }
    /// The measurement of `phase`, if it ran.
    pub fn phase(&self, phase: &str) -> Option<&PhaseMemory> {
        self.phases.iter().find(|p| p.phase == phase)
    }
}

/// What a run measured: `report.json`'s `memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MemoryReport {
    /// Where the numbers come from: `"nvml"` for GPUs, `"process rss"` for the CPU.
    pub source: String,
    /// Milliseconds between samples of the peak.
    pub interval_ms: u64,
    /// One entry per device measured.
    pub devices: Vec<DeviceMemory>,
    /// The process's high-water mark of resident memory (`VmHWM`) at the end.
    pub process_peak_bytes: Option<u64>,
}

impl MemoryReport {
    /// A report over `devices`, with the predictions of `plan` (GPUs by `cuda:N`, the CPU
    /// by `cpu`).
    pub fn new(
        source: impl Into<String>,
        interval_ms: u64,
        mut devices: Vec<DeviceMemory>,
        plan: Option<&RunPlan>,
    ) -> Self {
        if let Some(plan) = plan {
            for d in &mut devices {
                let label = match d.device.strip_prefix("cuda:") {
                    Some(i) => format!("GPU {i}"),
                    None => "CPU".to_owned(),
                };
                if let Some(u) = plan.devices.iter().find(|u| u.device == label) {
                    d.predicted_generation_bytes = u.generation_bytes;
                    d.predicted_extraction_bytes = u.extraction_bytes;
                }
            }
        }
        Self { source: source.into(), interval_ms, devices, process_peak_bytes: None }
    }

    /// One line per device and measured phase: predicted beside measured.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.devices {
            for p in &d.phases {
                let predicted = match p.phase.as_str() {
                    "generation" if d.predicted_generation_bytes > 0 => {
                        format!("predicted {}", human(d.predicted_generation_bytes))
                    }
                    "extraction" => format!("predicted {}", human(d.predicted_extraction_bytes)),
                    _ => "no prediction".to_owned(),
                };
                out.push(format!(
                    "memory {} {}: {predicted} · measured peak {} (+{} since the start), {} → {}",
                    d.device,
                    p.phase,
                    human(p.peak_bytes),
                    human(p.peak_bytes.saturating_sub(d.start_bytes)),
                    human(p.before_bytes),
                    human(p.after_bytes)
                ));
            }
        }
        if let Some(h) = self.process_peak_bytes {
            out.push(format!("memory: process peak resident set {} ({})", human(h), self.source));
        }
        out
    }
}
