//! The device roles of a run: which GPUs generate, which extract, and whether the two phases
//! share devices (then the run is *time-shared*: generation finishes, launched servers stop,
//! then extraction starts).

use probe_core::{Error, Result};

/// How generation and extraction share devices (`[devices] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Launched servers stay up while extraction runs on other devices.
    Exclusive,
    /// Generation finishes and the launched servers stop before extraction starts.
    TimeShared,
}

/// Where each phase runs: CUDA ordinals, an empty list meaning the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Roles {
    /// GPUs for generation (empty: the CPU).
    pub generation: Vec<usize>,
    /// GPUs for extraction (empty: the CPU).
    pub extraction: Vec<usize>,
    /// How the phases share devices.
    pub mode: Mode,
    /// True when `mode` was derived from the overlap rather than set.
    pub derived: bool,
}

impl Roles {
    /// The roles of two GPU sets (absent: the CPU) and a mode (`"exclusive"`,
    /// `"time-shared"`; absent: time-shared when the sets overlap or both are the CPU).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown mode, or `"exclusive"` with a GPU in both sets.
    pub fn new(generation: Option<Vec<usize>>, extraction: Option<Vec<usize>>, mode: Option<&str>) -> Result<Self> {
        let generation = generation.unwrap_or_default();
        let extraction = extraction.unwrap_or_default();
        let shared = generation.iter().copied().find(|g| extraction.contains(g));
        let overlap = shared.is_some() || (generation.is_empty() && extraction.is_empty());
        let (mode, derived) = match mode {
            None => (if overlap { Mode::TimeShared } else { Mode::Exclusive }, true),
            Some("time-shared") => (Mode::TimeShared, false),
            Some("exclusive") => {
                if let Some(g) = shared {
                    return Err(Error::invalid(
                        "devices",
                        format!(
                            "[devices] mode = \"exclusive\" but GPU {g} is in both generation_gpus and extraction_gpus"
                        ),
                    ));
                }
                (Mode::Exclusive, false)
            }
            Some(other) => {
                return Err(Error::invalid(
                    "devices",
                    format!("[devices] mode = {other:?} (expected \"exclusive\" or \"time-shared\")"),
                ));
            }
        };
        Ok(Self { generation, extraction, mode, derived })
    }

    /// Refuses a GPU index this machine does not have (`count` GPUs, `why` says how they were
    /// found), naming the key, the index and the count.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first missing GPU.
    pub fn check_exist(&self, count: usize, why: &str) -> Result<()> {
        for (key, list) in [("generation_gpus", &self.generation), ("extraction_gpus", &self.extraction)] {
            if let Some(&bad) = list.iter().find(|&&g| g >= count) {
                let have = match count {
                    0 => "0 GPUs found".to_owned(),
                    1 => "1 GPU found, 0".to_owned(),
                    n => format!("{n} GPUs found, 0..={}", n - 1),
                };
                return Err(Error::invalid(
                    "devices",
                    format!("[devices] {key}: GPU {bad} does not exist ({have}; {why})"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_derived_from_the_overlap_of_the_device_sets() {
        let r = Roles::new(Some(vec![0, 1]), Some(vec![1, 2]), None).unwrap();
        assert_eq!((r.mode, r.derived), (Mode::TimeShared, true));
        let r = Roles::new(Some(vec![0, 1]), Some(vec![2]), None).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "disjoint GPU sets");
        let r = Roles::new(None, None, None).unwrap();
        assert_eq!(r.mode, Mode::TimeShared, "both on the CPU");
        let r = Roles::new(Some(vec![]), Some(vec![0]), None).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "servers on the CPU, extraction on GPU 0");
        let r = Roles::new(Some(vec![0]), None, None).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "servers on GPU 0, extraction on the CPU");
    }

    #[test]
    fn mode_set_wins_unless_exclusive_shares_a_gpu() {
        let r = Roles::new(Some(vec![0]), Some(vec![1]), Some("time-shared")).unwrap();
        assert_eq!((r.mode, r.derived), (Mode::TimeShared, false));
        let r = Roles::new(None, None, Some("exclusive")).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "exclusive on the CPU keeps the servers up");
        let e = Roles::new(Some(vec![0, 2]), Some(vec![3, 2]), Some("exclusive")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid devices: [devices] mode = \"exclusive\" but GPU 2 is in both generation_gpus and extraction_gpus"
        );
        let e = Roles::new(None, None, Some("shared")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid devices: [devices] mode = \"shared\" (expected \"exclusive\" or \"time-shared\")"
        );
    }

    #[test]
    fn gpu_indices_past_the_count_are_refused_naming_index_and_count() {
        let r = Roles::new(Some(vec![0, 1]), Some(vec![3]), None).unwrap();
        assert!(r.check_exist(4, "found").is_ok());
        let e = r.check_exist(2, "2 GPU(s) through NVML").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid devices: [devices] extraction_gpus: GPU 3 does not exist (2 GPUs found, 0..=1; 2 GPU(s) through \
             NVML)"
        );
        let e = r.check_exist(0, "no GPU").unwrap_err().to_string();
        assert!(e.contains("generation_gpus: GPU 0 does not exist (0 GPUs found; no GPU)"), "{e}");
        assert!(Roles::new(None, None, None).unwrap().check_exist(0, "").is_ok());
    }
}
