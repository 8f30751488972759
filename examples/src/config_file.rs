//! `probe.toml`: the settings file (see `probe.example.toml` at the repository root).
//! Command-line flags override it; an unknown key is an error naming the key.

use std::path::{Path, PathBuf};

use probe_core::{Error, Result};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProbeToml {
    #[serde(default)]
    pub(crate) devices: Devices,
    #[serde(default)]
    pub(crate) vllm: Vllm,
    #[serde(default)]
    pub(crate) extraction: Extraction,
    #[serde(default)]
    pub(crate) generation: Generation,
    #[serde(default)]
    pub(crate) cache: Cache,
    #[serde(default)]
    pub(crate) slurm: Slurm,
}

/// `[devices]`: which GPUs serve which phase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Devices {
    pub(crate) generation_gpus: Option<Vec<usize>>,
    pub(crate) extraction_gpus: Option<Vec<usize>>,
    /// "exclusive" or "time-shared" (default: time-shared when the two sets overlap).
    pub(crate) mode: Option<String>,
    /// Declared GPUs for the plan, as `--gpus` ("4x80GiB", "80GiB,40GiB").
    pub(crate) gpus: Option<String>,
    /// CPU memory for the plan ("64GiB") [default: this machine's].
    pub(crate) cpu_memory: Option<String>,
}

/// `[vllm]`: generation servers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Vllm {
    pub(crate) servers: Option<usize>,
    pub(crate) gpu_memory_utilization: Option<f64>,
    pub(crate) urls: Option<Vec<String>>,
    /// Program and leading arguments of a launched server (default `["vllm", "serve"]`).
    pub(crate) command: Option<Vec<String>>,
    /// Port of the first launched server; the others follow (default 8000).
    pub(crate) base_port: Option<u16>,
    /// Folder of the launched servers' logs (default `<out>/vllm-logs`).
    pub(crate) log_dir: Option<PathBuf>,
    /// Seconds to wait for the launched servers to be healthy (default 900).
    pub(crate) health_timeout_s: Option<u64>,
    /// More arguments for every launched server.
    pub(crate) args: Option<Vec<String>>,
    /// GPUs per launched server (vLLM `--tensor-parallel-size`; default 1): the generation
    /// GPUs are taken in consecutive groups of this many, one server per group.
    pub(crate) tensor_parallel_size: Option<usize>,
    /// `--max-model-len` of launched servers [default: planned, prompt + max_tokens].
    pub(crate) max_model_len: Option<u64>,
    /// `--max-num-seqs` upper bound of launched servers [default: planned].
    pub(crate) max_num_seqs: Option<u64>,
}

/// `[extraction]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Extraction {
    pub(crate) batch_size: Option<usize>,
    pub(crate) positions: Option<String>,
    /// Compute dtype: "f32", "bf16" or "f16" (as `--dtype`).
    pub(crate) dtype: Option<String>,
}

/// `[generation]`: sampling of the completions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Generation {
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) seed: Option<u64>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cache {
    pub(crate) url: Option<String>,
}

/// `[slurm]`: how `probe sweep --shards N --submit slurm` submits its jobs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Slurm {
    /// The submitting program (default: `$PROBE_SBATCH`, else `sbatch` on the PATH).
    pub(crate) sbatch: Option<String>,
    /// `--partition` of every job.
    pub(crate) partition: Option<String>,
    /// `--time` of every job ("24:00:00").
    pub(crate) time: Option<String>,
    /// More `#SBATCH` arguments of every job (before `--sbatch-arg`).
    pub(crate) args: Option<Vec<String>>,
    /// Folder of the job scripts and logs (default `<out>/slurm`).
    pub(crate) log_dir: Option<PathBuf>,
}

impl ProbeToml {
    /// Reads `path`, or `./probe.toml` when no path is given and that file exists.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        let path: PathBuf = match path {
            Some(p) => p.to_path_buf(),
            None => {
                let default = PathBuf::from("probe.toml");
                if !default.is_file() {
                    return Ok(Self::default());
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::invalid("config file", format!("{}: cannot be read: {e}", path.display())))?;
        let cfg = Self::parse(&text, &path.display().to_string())?;
        cfg.validate(&path.display().to_string())?;
        Ok(cfg)
    }

    /// Parses TOML text; `origin` names the file in messages.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().replace('\n', " ");
            let at = line.map(|l| format!(":{l}")).unwrap_or_default();
            Error::invalid("config file", format!("{origin}{at}: {msg}"))
        })
    }

    fn validate(&self, origin: &str) -> Result<()> {
        if let Some(u) = self.vllm.gpu_memory_utilization
            && !(u > 0.0 && u <= 1.0)
        {
            return Err(Error::invalid(
                "config file",
                format!("{origin}: [vllm] gpu_memory_utilization = {u} (must be in (0, 1])"),
            ));
        }
        if self.vllm.servers == Some(0) {
            return Err(Error::invalid("config file", format!("{origin}: [vllm] servers = 0 (must be ≥ 1)")));
        }
        if self.extraction.batch_size == Some(0) {
            return Err(Error::invalid("config file", format!("{origin}: [extraction] batch_size = 0 (must be ≥ 1)")));
        }
        if let Some(a) = self.slurm.args.iter().flatten().find(|a| !a.starts_with('-') || a.contains('\n')) {
            return Err(Error::invalid(
                "config file",
                format!("{origin}: [slurm] args: {a:?} (each is one sbatch option, such as \"--account=abc\")"),
            ));
        }
        self.generation.validate(origin)
    }
}

impl Generation {
    /// The sampling settings, named with the file (flags are checked by `SamplingParams`).
    fn validate(&self, origin: &str) -> Result<()> {
        let bad = |what: String| Err(Error::invalid("config file", format!("{origin}: [generation] {what}")));
        if let Some(t) = self.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return bad(format!("temperature = {t} (must be a finite number ≥ 0)"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p = {p} (must be in (0, 1])"));
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens = 0 (must be ≥ 1)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../probe.example.toml");
        let cfg = ProbeToml::parse(text, "probe.example.toml").unwrap();
        cfg.validate("probe.example.toml").unwrap();
        assert_eq!(cfg.extraction.batch_size, Some(16));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = ProbeToml::parse("[extraction]\nbatch_size = 4\nbacth = 3\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:3") && e.contains("bacth"), "{e}");
        let e = ProbeToml::parse("[gpus]\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("gpus"), "{e}");
    }

    #[test]
    fn the_slurm_section_is_read_and_checked() {
        let text = "[slurm]\nsbatch = \"/opt/slurm/bin/sbatch\"\npartition = \"gpu\"\ntime = \"2:00:00\"\nargs = [\"--account=x\"]\n";
        let cfg = ProbeToml::parse(text, "p.toml").unwrap();
        cfg.validate("p.toml").unwrap();
        assert_eq!(cfg.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(cfg.slurm.args, Some(vec!["--account=x".to_owned()]));
        let cfg = ProbeToml::parse("[slurm]\nargs = [\"account=x\"]\n", "p.toml").unwrap();
        let e = cfg.validate("p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml: [slurm] args: \"account=x\""), "{e}");
    }

    #[test]
    fn bad_sampling_values_name_the_file_and_key() {
        for (text, want) in [
            ("[generation]\ntemperature = nan\n", "p.toml: [generation] temperature = NaN"),
            ("[generation]\ntemperature = -0.5\n", "p.toml: [generation] temperature = -0.5"),
            ("[generation]\ntemperature = inf\n", "p.toml: [generation] temperature = inf"),
            ("[generation]\ntop_p = 0.0\n", "p.toml: [generation] top_p = 0"),
            ("[generation]\nmax_tokens = 0\n", "p.toml: [generation] max_tokens = 0"),
        ] {
            let e = ProbeToml::parse(text, "p.toml").unwrap().validate("p.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
