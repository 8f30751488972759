//! Device inventory: declared devices, or GPUs found through NVML or the CUDA driver
//! (loaded at run time) when built with the `cuda` feature; CPU memory from
//! `/proc/meminfo`.
//!
//! Without `cuda`, or on a machine without an NVIDIA driver, [`detect`] reports the CPU
//! only and says why in [`Detected::message`].
//!
//! [`MemorySampler`] measures a run's memory (NVML per GPU under `cuda`, the process's
//! resident set on the CPU), phase by phase.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use probe_core::plan::{
    Device, DeviceInventory, DeviceMemory, InventorySource, MemoryReport, PhaseMemory, Planner, RunPlan, parse_meminfo,
};
use probe_core::{Error, Result};

/// An inventory and a sentence saying where it came from.
#[derive(Debug, Clone)]
pub struct Detected {
    /// The devices.
    pub inventory: DeviceInventory,
    /// `"2 GPUs through NVML"`, `"no GPU: built without the cuda feature"` …
    pub message: String,
}

/// CPU memory as `(total, available)` bytes, from `/proc/meminfo`.
///
/// # Errors
/// [`Error::DeviceUnavailable`] when it cannot be read (not Linux).
pub fn cpu_memory() -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| Error::DeviceUnavailable(format!("cannot read /proc/meminfo: {e}")))?;
    parse_meminfo(&text)
}

/// Finds the GPUs (NVML, then the CUDA driver, with the `cuda` feature) and the CPU memory.
/// Never fails for lack of a GPU: the inventory is then CPU only, with the reason in the
/// message. CPU memory is 0 where `/proc/meminfo` is missing.
pub fn detect() -> Detected {
    let cpu = cpu_memory().map(|(total, _)| total).unwrap_or(0);
    let (gpus, source, message) = detect_gpus();
    let inventory = DeviceInventory::new(gpus, cpu).with_source(source);
    Detected { inventory, message }
}

/// The declared GPUs (`"8x80GiB"`, `"80GiB,40GiB"`) with this machine's CPU memory, or, when
/// `declared` is `None`, what [`detect`] finds.
///
/// # Errors
/// [`Error::InvalidInput`] for a malformed declaration, naming the bad item.
pub fn inventory(declared: Option<&str>) -> Result<Detected> {
    match declared {
        Some(spec) => {
            let cpu = cpu_memory().map(|(total, _)| total).unwrap_or(0);
            let inventory = DeviceInventory::parse_gpus(spec)?.with_cpu_bytes(cpu);
            let message = format!("{} declared GPU(s) ({spec})", inventory.gpus.len());
            Ok(Detected { inventory, message })
        }
        None => Ok(detect()),
    }
}

/// A [`Planner`] over the declared or detected devices.
///
/// # Errors
/// As [`inventory`].
pub fn planner(declared: Option<&str>) -> Result<Planner> {
    let d = inventory(declared)?;
    tracing::info!(devices = %d.inventory.summary(), "{}", d.message);
    Ok(Planner::new(d.inventory))
}

/// `VmRSS` and `VmHWM` (bytes) of this process, from `/proc/self/status`; `None` where it
/// cannot be read (not Linux).
pub fn process_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let kb: u64 = l.strip_prefix(name)?.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples the used memory of every device a run uses — each GPU through NVML (with the
/// `cuda` feature and a driver), and the process's resident set for the CPU — when each phase
/// starts and finishes, and every `interval` on a thread for the peak during a phase.
///
/// ```
/// let s = probe_backends::device::MemorySampler::start(std::time::Duration::from_millis(20));
/// s.phase_started("extraction");
/// let v = vec![1u8; 8 << 20];
/// s.phase_finished("extraction");
/// let report = s.finish(None);
/// let cpu = report.devices.iter().find(|d| d.device == "cpu").expect("the CPU is measured");
/// assert!(cpu.phase("extraction").expect("measured").peak_bytes > 0);
/// # drop(v);
/// ```
#[derive(Debug)]
pub struct MemorySampler {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    interval: Duration,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    reader: Reader,
    state: Mutex<Vec<DeviceMemory>>,
}

/// Reads `(device, used, total)` of every device measured.
#[derive(Debug)]
struct Reader {
    #[cfg(feature = "cuda")]
    nvml: Option<nvml_wrapper::Nvml>,
}

impl Reader {
    fn new() -> Self {
        Self {
            #[cfg(feature = "cuda")]
            nvml: nvml_wrapper::Nvml::init().ok(),
        }
    }

    fn source(&self) -> &'static str {
        #[cfg(feature = "cuda")]
        if self.nvml.is_some() {
            return "nvml (GPUs), process rss (cpu)";
        }
        "process rss"
    }

    fn read(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        #[cfg(feature = "cuda")]
        if let Some(nvml) = &self.nvml {
            out.extend(nvml::used(nvml));
        }
        let total = cpu_memory().map(|(t, _)| t).unwrap_or(0);
        out.push(("cpu".to_owned(), process_memory().map_or(0, |(rss, _)| rss), total));
        out
    }
}

fn lock(m: &Mutex<Vec<DeviceMemory>>) -> std::sync::MutexGuard<'_, Vec<DeviceMemory>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemorySampler {
    /// Takes the first sample and starts the sampling thread.
    pub fn start(interval: Duration) -> Self {
        let reader = Reader::new();
        let devices = reader.read().into_iter().map(|(d, used, total)| DeviceMemory::new(d, total, used)).collect();
        let shared = Arc::new(Shared { stop: AtomicBool::new(false), reader, state: Mutex::new(devices) });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("probe-memory".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    s.sample(|p, used| p.peak_bytes = p.peak_bytes.max(used));
                }
            })
            .ok();
        Self { shared, thread: Mutex::new(thread), interval }
    }

    /// Records the used memory as `phase` starts.
    pub fn phase_started(&self, phase: &str) {
        let mut state = lock(&self.shared.state);
        for (d, used) in self.shared.current(&mut state) {
            d.phases.push(PhaseMemory::started(phase, used));
        }
    }

    /// Records the used memory as `phase` finishes.
    pub fn phase_finished(&self, phase: &str) {
        self.shared.sample(|p, used| {
            if p.phase == phase {
                p.after_bytes = used;
                p.peak_bytes = p.peak_bytes.max(used);
            }
        });
    }

    /// Stops sampling; the measurements beside `plan`'s predictions.
    pub fn finish(&self, plan: Option<&RunPlan>) -> MemoryReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let devices = lock(&self.shared.state).clone();
        let mut report =
            MemoryReport::new(self.shared.reader.source(), self.interval.as_millis() as u64, devices, plan);
        report.process_peak_bytes = process_memory().map(|(_, hwm)| hwm);
        report
    }
}

impl Shared {
    /// Pairs each device with its used memory now.
    fn current<'a>(&self, state: &'a mut [DeviceMemory]) -> Vec<(&'a mut DeviceMemory, u64)> {
        let now = self.reader.read();
        state
            .iter_mut()
            .filter_map(|d| {
                let used = now.iter().find(|(name, ..)| *name == d.device)?.1;
                Some((d, used))
            })
            .collect()
    }

    /// Applies `f` to the phase in progress (the last one) of every device.
    fn sample(&self, f: impl Fn(&mut PhaseMemory, u64)) {
        let mut state = lock(&self.state);
        for (d, used) in self.current(&mut state) {
            if let Some(p) = d.phases.last_mut() {
                f(p, used);
            }
        }
    }
}

impl Drop for MemorySampler {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(not(feature = "cuda"))]
fn detect_gpus() -> (Vec<Device>, InventorySource, String) {
    (
        Vec::new(),
        InventorySource::CpuOnly,
        "no GPU: this build lacks the `cuda` feature (declare GPUs with --gpus, e.g. 8x80GiB)".into(),
    )
}

#[cfg(feature = "cuda")]
fn detect_gpus() -> (Vec<Device>, InventorySource, String) {
    let nvml_err = match nvml::gpus() {
        Ok(g) if !g.is_empty() => {
            let n = g.len();
            return (g, InventorySource::Nvml, format!("{n} GPU(s) through NVML"));
        }
        Ok(_) => "NVML found no GPU".to_string(),
        Err(e) => e,
    };
    match cuda::gpus() {
        Ok(g) if !g.is_empty() => {
            let n = g.len();
            (g, InventorySource::Cuda, format!("{n} GPU(s) through the CUDA driver ({nvml_err})"))
        }
        Ok(_) => (Vec::new(), InventorySource::CpuOnly, format!("no GPU: {nvml_err}; the CUDA driver reports none")),
        Err(e) => (Vec::new(), InventorySource::CpuOnly, format!("no GPU: {nvml_err}; {e}")),
    }
}

/// CUDA ordinals visible to this process: `CUDA_VISIBLE_DEVICES` as a list of indices,
/// or `None` for all (UUIDs and unset alike).
#[cfg(feature = "cuda")]
fn visible_devices() -> Option<Vec<u32>> {
    let v = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    v.split(',').map(|s| s.trim().parse::<u32>().ok()).collect()
}

#[cfg(feature = "cuda")]
mod nvml {
    use nvml_wrapper::Nvml;
    use probe_core::plan::Device;

    /// GPUs through NVML, renumbered as CUDA ordinals under `CUDA_VISIBLE_DEVICES`.
    pub(super) fn gpus() -> Result<Vec<Device>, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable ({e})"))?;
        let count = nvml.device_count().map_err(|e| format!("NVML device count failed ({e})"))?;
        let physical: Vec<u32> = super::visible_devices().unwrap_or_else(|| (0..count).collect());
        let mut out = Vec::new();
        for (ordinal, idx) in physical.into_iter().enumerate() {
            if idx >= count {
                continue;
            }
            let d = nvml.device_by_index(idx).map_err(|e| format!("NVML device {idx} failed ({e})"))?;
            let mem = d.memory_info().map_err(|e| format!("NVML memory of device {idx} failed ({e})"))?;
            let name = d.name().unwrap_or_else(|_| "NVIDIA GPU".into());
            out.push(Device::gpu(ordinal, mem.total).with_free(mem.free).with_name(name));
        }
        Ok(out)
    }

    /// `("cuda:N", used, total)` of every visible GPU (CUDA ordinals); GPUs NVML cannot read
    /// are left out.
    pub(super) fn used(nvml: &Nvml) -> Vec<(String, u64, u64)> {
        let count = nvml.device_count().unwrap_or(0);
        let physical: Vec<u32> = super::visible_devices().unwrap_or_else(|| (0..count).collect());
        physical
            .into_iter()
            .enumerate()
            .filter(|&(_, idx)| idx < count)
            .filter_map(|(ordinal, idx)| {
                let mem = nvml.device_by_index(idx).ok()?.memory_info().ok()?;
                Some((format!("cuda:{ordinal}"), mem.used, mem.total))
            })
            .collect()
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use cudarc::driver::CudaContext;
    use probe_core::plan::Device;

    /// GPUs through the CUDA driver (creates a context on each: prefer NVML).
    pub(super) fn gpus() -> Result<Vec<Device>, String> {
        // CudaContext::new panics when libcuda is absent: check first (with candle-cuda,
        // libcuda is linked, so the program would not have started without it).
        // SAFETY: it only tries to dlopen libcuda and reports whether that worked.
        #[cfg(not(feature = "candle-cuda"))]
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("the CUDA driver library (libcuda) is not installed".into());
        }
        let count = CudaContext::device_count().map_err(|e| format!("CUDA device count failed ({e})"))?;
        let mut out = Vec::new();
        for i in 0..count.max(0) as usize {
            let ctx = CudaContext::new(i).map_err(|e| format!("CUDA device {i} failed ({e})"))?;
            let (free, total) = ctx.mem_get_info().map_err(|e| format!("CUDA memory of device {i} failed ({e})"))?;
            let name = ctx.name().unwrap_or_else(|_| "CUDA GPU".into());
            out.push(Device::gpu(i, total as u64).with_free(free as u64).with_name(name));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_memory_is_read() {
        let (total, avail) = cpu_memory().expect("Linux has /proc/meminfo");
        assert!(total > 0 && avail <= total);
    }

    #[test]
    fn detection_never_fails_and_explains_itself() {
        let d = detect();
        assert!(!d.message.is_empty());
        if d.inventory.gpus.is_empty() {
            assert_eq!(d.inventory.source, InventorySource::CpuOnly);
            assert!(d.message.starts_with("no GPU"), "{}", d.message);
        }
        assert!(d.inventory.cpu_bytes > 0);
    }

    #[test]
    fn declared_inventory_keeps_cpu_and_names_bad_items() {
        let d = inventory(Some("2x40GB")).unwrap();
        assert_eq!(d.inventory.gpus.len(), 2);
        assert!(d.inventory.cpu_bytes > 0);
        let e = inventory(Some("2x40QB")).unwrap_err().to_string();
        assert!(e.contains("40QB"), "{e}");
        let p = planner(Some("1x80GiB")).unwrap();
        use probe_core::DevicePolicy;
        assert_eq!(p.inventory().unwrap().gpus.len(), 1);
    }
}
