//! Device inventories: declared (`"8x80GiB"`, `"80GiB,80GiB,40GiB"`) or detected, GPU index
//! sets (`"0,1"`, `"2-3"`), and CPU memory from `/proc/meminfo`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::units::{gib, parse_bytes};
use crate::{Error, Result};

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
    /// Name (`"NVIDIA A100-SXM4-40GB"`, `"declared"`).
    #[serde(default)]
    pub name: String,
}

impl Device {
    /// GPU `index` with `total_bytes`, all of it free.
    pub fn gpu(index: usize, total_bytes: u64) -> Self {
        Self { index: Some(index), total_bytes, free_bytes: total_bytes, name: "declared".into() }
    }
    /// Sets the free memory.
    pub fn with_free(mut self, free_bytes: u64) -> Self {
        self.free_bytes = free_bytes.min(self.total_bytes);
        self
    }
    /// Sets the name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// `"GPU 3"` or `"CPU"`.
    pub fn label(&self) -> String {
        self.index.map_or_else(|| "CPU".to_string(), |i| format!("GPU {i}"))
    }
}

/// Where an inventory came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventorySource {
    /// Declared by the user or config.
    #[default]
    Declared,
    /// Read through NVML.
    Nvml,
    /// Read through the CUDA driver.
    Cuda,
    /// No GPU: the CPU only.
    CpuOnly,
}

/// The devices of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceInventory {
    /// GPUs, by index.
    pub gpus: Vec<Device>,
    /// CPU RAM in bytes (total).
    pub cpu_bytes: u64,
    /// Where it came from.
    #[serde(default)]
    pub source: InventorySource,
}

impl DeviceInventory {
    /// An inventory of `gpus` and `cpu_bytes` of RAM.
    pub fn new(gpus: Vec<Device>, cpu_bytes: u64) -> Self {
        Self { gpus, cpu_bytes, source: InventorySource::Declared }
    }

    /// Sets where it came from.
    pub fn with_source(mut self, source: InventorySource) -> Self {
        self.source = source;
        self
    }

    /// Sets the CPU memory.
    pub fn with_cpu_bytes(mut self, cpu_bytes: u64) -> Self {
        self.cpu_bytes = cpu_bytes;
        self
    }

    /// Parses declared GPUs: `"8x80GiB"`, `"2x40GB"`, a list `"80GiB,80GiB,40GiB"`, or
    /// a mix (`"2x80GiB,40GiB"`); indices count from 0 in order. `""`/`"none"`/`"0"` is no
    /// GPU.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad item.
    pub fn parse_gpus(spec: &str) -> Result<Self> {
        let mut gpus = Vec::new();
        let spec = spec.trim();
        if spec.is_empty() || spec.eq_ignore_ascii_case("none") || spec == "0" {
            return Ok(Self::new(gpus, 0));
        }
        for item in spec.split(',').map(str::trim) {
            let (count, size) = match item.split_once(['x', 'X', '×']) {
                Some((n, size)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
                    let count: usize = n.parse().map_err(|_| Error::invalid("gpus", format!("{item:?}: bad count")))?;
                    (count, size)
                }
                _ => (1, item),
            };
            if count == 0 {
                return Err(Error::invalid("gpus", format!("{item:?} declares zero GPUs")));
            }
            let bytes = parse_bytes("gpus", size)?;
            if bytes == 0 {
                return Err(Error::invalid("gpus", format!("{item:?} declares a GPU with no memory")));
            }
            for _ in 0..count {
                gpus.push(Device::gpu(gpus.len(), bytes));
            }
        }
        Ok(Self::new(gpus, 0))
    }

    /// The GPU with CUDA ordinal `index`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when there is none, naming the index and what exists.
    pub fn gpu(&self, index: usize) -> Result<&Device> {
        self.gpus.iter().find(|d| d.index == Some(index)).ok_or_else(|| {
            Error::invalid(
                "gpu index",
                format!(
                    "GPU {index} does not exist: {}",
                    if self.gpus.is_empty() {
                        "this machine has no GPU".to_string()
                    } else {
                        format!(
                            "GPUs are {}",
                            self.indices().iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                        )
                    }
                ),
            )
        })
    }

    /// All GPU indices.
    pub fn indices(&self) -> Vec<usize> {
        self.gpus.iter().filter_map(|d| d.index).collect()
    }

    /// A readable summary: `"8 × 80.00 GiB GPU (declared), 64.00 GiB CPU"`.
    pub fn summary(&self) -> String {
        let gpus = if self.gpus.is_empty() {
            "no GPU".to_string()
        } else {
            self.gpus
                .iter()
                .map(|d| format!("{}: {} free of {}", d.label(), gib(d.free_bytes), gib(d.total_bytes)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        format!("{gpus}; CPU {}", gib(self.cpu_bytes))
    }
}

/// Parses a GPU index set: `"0,1,3"`, `"0-3"`, `"all"`, checked against `inventory`.
/// `what` names the set in errors (`"generation GPUs"`).
///
/// # Errors
/// [`Error::InvalidInput`] naming a malformed item, a duplicate, or an index the inventory
/// lacks.
pub fn parse_gpu_set(what: &str, spec: &str, inventory: &DeviceInventory) -> Result<Vec<usize>> {
    let spec = spec.trim();
    if spec.eq_ignore_ascii_case("all") {
        return Ok(inventory.indices());
    }
    let mut set = BTreeSet::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || Error::invalid(what, format!("{item:?} is not a GPU index or range (e.g. 0,1 or 0-3)"));
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => {
                (a.trim().parse::<usize>().map_err(|_| bad())?, b.trim().parse::<usize>().map_err(|_| bad())?)
            }
            None => {
                let i = item.parse::<usize>().map_err(|_| bad())?;
                (i, i)
            }
        };
        if hi < lo {
            return Err(bad());
        }
        for i in lo..=hi {
            inventory.gpu(i).map_err(|e| match e {
                Error::InvalidInput { message, .. } => Error::invalid(what, message),
                other => other,
            })?;
            if !set.insert(i) {
                return Err(Error::invalid(what, format!("GPU {i} is listed twice")));
            }
        }
    }
    if set.is_empty() {
        return Err(Error::invalid(what, format!("{spec:?} names no GPU")));
    }
    Ok(set.into_iter().collect())
}

/// Reads `MemTotal` and `MemAvailable` (bytes) from the text of `/proc/meminfo`.
///
/// # Errors
/// [`Error::InvalidInput`] when `MemTotal` is missing or malformed.
pub fn parse_meminfo(text: &str) -> Result<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    let total = field("MemTotal").ok_or_else(|| Error::invalid("/proc/meminfo", "no MemTotal line"))?;
    let available = field("MemAvailable").or_else(|| field("MemFree")).unwrap_or(total);
    Ok((total, available))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::units::GIB;

    #[test]
    fn meminfo() {
        let (t, a) =
            parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   12288000 kB\n").unwrap();
        assert_eq!((t, a), (24_576_000 * 1024, 12_288_000 * 1024));
        assert!(parse_meminfo("nothing").is_err());
    }

    #[test]
    fn gpu_spec_mix() {
        let inv = DeviceInventory::parse_gpus("2x80GiB, 40GiB").unwrap();
        assert_eq!(inv.indices(), vec![0, 1, 2]);
        assert_eq!(inv.gpus[2].total_bytes, 40 * GIB);
        assert!(DeviceInventory::parse_gpus("none").unwrap().gpus.is_empty());
    }
}
