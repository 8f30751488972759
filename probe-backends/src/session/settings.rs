//! [`Settings`]: every setting of a run, the type `probe.toml` deserializes into. Builder
//! methods set what a program (or the command line, flag by flag) gives; what is left unset
//! is planned or takes the one default of [`defaults`]. An unknown key in a file is an error
//! naming the key and its line.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use probe_core::plan::Dtype;
use probe_core::sweep::{LabelKind, LayerSelection, ProbeConfig};
use probe_core::{Error, Readout, Result, SamplingParams, Site, Sites};
use serde::{Deserialize, Deserializer};

use crate::registry::Backend;

/// The one default of each setting that has one (what the plan does not decide).
pub mod defaults {
    /// Cache URL when neither the settings nor `$PROBE_CACHE` give one.
    pub const CACHE_URL: &str = "./probe-cache";
    /// New tokens per completion.
    pub const MAX_TOKENS: u32 = 64;
    /// Sampling temperature (greedy).
    pub const TEMPERATURE: f32 = 0.0;
    /// Nucleus sampling mass.
    pub const TOP_P: f32 = 1.0;
    /// Seed of the sampler, the probe folds, the control task and the bootstrap.
    pub const SEED: u64 = 0;
    /// Folder of launched vLLM servers' logs (the CLI puts it under `--out`).
    pub const VLLM_LOG_DIR: &str = "probe-out/vllm-logs";
    /// Inputs per forward pass when neither the settings nor the plan give one.
    pub const BATCH_SIZE: usize = probe_core::DEFAULT_BATCH_SIZE;
}

/// Every setting of a run: `probe.toml`'s sections, each key optional.
///
/// ```
/// use probe_backends::session::Settings;
/// let s = Settings::default().batch_size(8).max_tokens(5).seed(3);
/// assert_eq!(s.sampling().unwrap().max_tokens, 5);
/// let file = Settings::from_toml("[extraction]\nbatch_size = 4\nlayers = \"1..3\"\n", "p.toml").unwrap();
/// assert_eq!(file.extraction.batch_size, Some(4));
/// assert!(Settings::from_toml("[extraction]\nbacth = 1\n", "p.toml").unwrap_err().to_string().contains("p.toml:2"));
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `[run]`: the backend and what the run does.
    #[serde(default)]
    pub run: Run,
    /// `[devices]`: which GPUs serve which phase.
    #[serde(default)]
    pub devices: Devices,
    /// `[vllm]`: generation servers, given or launched.
    #[serde(default)]
    pub vllm: Vllm,
    /// `[extraction]`.
    #[serde(default)]
    pub extraction: Extraction,
    /// `[generation]`: sampling of the completions.
    #[serde(default)]
    pub generation: Generation,
    /// `[probe]`: the probes trained per layer.
    #[serde(default)]
    pub probe: Probe,
    /// `[cache]`.
    #[serde(default)]
    pub cache: Cache,
    /// `[slurm]`: how sharded sweeps are submitted.
    #[serde(default)]
    pub slurm: Slurm,
    /// Plan only: GPUs named by `[devices]` need not exist on this machine, and nothing starts.
    #[serde(skip)]
    pub dry_run: bool,
}

/// `[run]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// candle (default), vllm, tch, ort (and mock in `testing` builds).
    #[serde(default, deserialize_with = "parsed")]
    pub backend: Option<Backend>,
    /// `vllm` only: `"candle"` (default: extraction in process) or `"vllm"` (the servers' own
    /// hidden states).
    pub extractor: Option<String>,
    /// Probe the prompt texts themselves: no completions.
    pub no_generate: Option<bool>,
    /// Chat template for `messages` prompts [default: the model folder's].
    pub chat_template: Option<PathBuf>,
    /// Name of the prompt set in the cache and the report [default: the prompt file's stem].
    pub prompt_set: Option<String>,
}

/// `[devices]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// CUDA ordinals of the generation servers.
    pub generation_gpus: Option<Vec<usize>>,
    /// CUDA ordinals of in-process extraction.
    pub extraction_gpus: Option<Vec<usize>>,
    /// "exclusive" or "time-shared" (default: time-shared when the two sets overlap).
    pub mode: Option<String>,
    /// Declared GPUs for the plan ("4x80GiB", "80GiB,40GiB") [default: detected].
    pub gpus: Option<String>,
    /// CPU memory for the plan ("64GiB") [default: this machine's].
    pub cpu_memory: Option<String>,
}

/// `[vllm]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vllm {
    /// Servers to launch.
    pub servers: Option<usize>,
    /// Share of each GPU a launched server may reserve, in (0, 1].
    pub gpu_memory_utilization: Option<f64>,
    /// Servers already running; when set, none are launched.
    pub urls: Option<Vec<String>>,
    /// Program and leading arguments of a launched server (default `["vllm", "serve"]`).
    pub command: Option<Vec<String>>,
    /// Port of the first launched server; the others follow (default 8000).
    pub base_port: Option<u16>,
    /// Folder of the launched servers' logs (default [`defaults::VLLM_LOG_DIR`]).
    pub log_dir: Option<PathBuf>,
    /// Seconds to wait for the launched servers to be healthy (default 900).
    pub health_timeout_s: Option<u64>,
    /// More arguments for every launched server.
    pub args: Option<Vec<String>>,
    /// GPUs per launched server (`--tensor-parallel-size`; default 1).
    pub tensor_parallel_size: Option<usize>,
    /// `--max-model-len` of launched servers [default: planned].
    pub max_model_len: Option<u64>,
    /// `--max-num-seqs` upper bound of launched servers [default: planned].
    pub max_num_seqs: Option<u64>,
}

/// `[extraction]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extraction {
    /// Layers: `"all"`, `"12"`, `"3,5,7"`, `"2..6"`, `"2..=6"` [default: all].
    #[serde(default, deserialize_with = "parsed")]
    pub layers: Option<LayerSelection>,
    /// Inputs per forward pass [default: planned, else [`defaults::BATCH_SIZE`]].
    pub batch_size: Option<usize>,
    /// Readout: last, last-prompt, mean, mean-completion, marker:TEXT, all [default: last].
    #[serde(default, deserialize_with = "parsed")]
    pub positions: Option<Readout>,
    /// Compute dtype: f32, bf16 or f16 [default: planned: f32 on the CPU, bf16 on GPUs].
    #[serde(default, deserialize_with = "parsed")]
    pub dtype: Option<Dtype>,
    /// Where activations are read: resid, resid_mid, attn_out, mlp_out, heads or router
    /// [default: resid]; `layers` are blocks (`0..L`) for every site but resid. Several sites
    /// (`"resid,attn_out"` or `["resid", "attn_out"]`) are read in the same forward pass.
    #[serde(default, deserialize_with = "parsed_list")]
    pub site: Option<Sites>,
}

/// `[generation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    /// New tokens per completion.
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Seed of the sampler (and of the probes' folds).
    pub seed: Option<u64>,
    /// Steering while generating (`[[generation.steer]]`, candle only): each adds
    /// `alpha · d/‖d‖` at every position.
    #[serde(default)]
    pub steer: Vec<Steer>,
}

/// One `[[generation.steer]]`: a direction (`vector` or `probe`), where it goes and how far.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steer {
    /// A safetensors file holding a tensor `direction` (`[hidden]`, `[head_dim]` with `head`).
    pub vector: Option<PathBuf>,
    /// A probe saved by a sweep (`<out>/probes/layer-<L>.safetensors`): its weight mapped from
    /// standardised to residual-stream space.
    pub probe: Option<PathBuf>,
    /// The block whose incoming residual stream receives it (`hidden_states[layer]`) [default:
    /// the probe's layer].
    pub layer: Option<usize>,
    /// `"b:h"`: head h of block b instead (Inference-Time Intervention).
    pub head: Option<String>,
    /// The step along the unit direction.
    pub alpha: f32,
}

impl Steer {
    /// The intervention: reads the vector or the probe.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the value: neither or both of vector and probe, no layer
    /// for a vector, a bad `b:h`, or an unreadable file.
    pub fn intervention(&self) -> Result<probe_core::Intervention> {
        let head = self
            .head
            .as_deref()
            .map(|h| {
                let bad = || Error::invalid("steer-head", format!("{h:?} (expected BLOCK:HEAD, e.g. 3:7)"));
                let (b, h) = h.split_once(':').ok_or_else(bad)?;
                Ok::<_, Error>((
                    b.trim().parse::<usize>().map_err(|_| bad())?,
                    h.trim().parse::<usize>().map_err(|_| bad())?,
                ))
            })
            .transpose()?;
        match (&self.vector, &self.probe) {
            (Some(v), None) => {
                let direction = probe_core::Intervention::read_vector(v)?;
                match (head, self.layer) {
                    (Some((b, h)), _) => Ok(probe_core::Intervention::head(b, h, direction, self.alpha)),
                    (None, Some(l)) => Ok(probe_core::Intervention::residual(l, direction, self.alpha)),
                    (None, None) => Err(Error::invalid(
                        "steer-layer",
                        format!("{}: a steering vector needs the block it enters (--steer-layer)", v.display()),
                    )),
                }
            }
            (None, Some(p)) => {
                if head.is_some() {
                    return Err(Error::invalid(
                        "steer-head",
                        "a probe's direction steers the residual stream, not a head",
                    ));
                }
                let probe = probe_core::sweep::SavedProbe::load(p)?;
                let mut i = probe_core::Intervention::from_probe(&probe, self.alpha)?;
                if let Some(l) = self.layer {
                    i.layer = l;
                }
                Ok(i)
            }
            _ => Err(Error::invalid("steer-vector", "give one of --steer-vector and --steer-probe per intervention")),
        }
    }
}

/// `[probe]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Stratified cross-validation folds (≥ 2) [default: 5].
    pub folds: Option<usize>,
    /// Inverse regularisation strengths C; several are chosen between per fold [default: 1].
    pub c: Option<Vec<f64>>,
    /// classes, numeric or auto [default: auto].
    #[serde(default, deserialize_with = "parsed")]
    pub labels: Option<LabelKind>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// A folder, `file:///abs/path`, `memory://` or `s3://bucket/prefix`.
    pub url: Option<String>,
}

/// `[slurm]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slurm {
    /// The submitting program (default: `$PROBE_SBATCH`, else `sbatch` on the PATH).
    pub sbatch: Option<String>,
    /// `--partition` of every job.
    pub partition: Option<String>,
    /// `--time` of every job ("24:00:00").
    pub time: Option<String>,
    /// More `#SBATCH` arguments of every job.
    pub args: Option<Vec<String>>,
    /// Folder of the job scripts and logs (default `<out>/slurm`).
    pub log_dir: Option<PathBuf>,
}

/// The section of each key [`Settings::validate`] names, for a file's messages.
const SECTIONS: [(&str, &str); 10] = [
    ("gpu_memory_utilization", "vllm"),
    ("servers", "vllm"),
    ("batch_size", "extraction"),
    ("dtype", "extraction"),
    ("args", "slurm"),
    ("extractor", "run"),
    ("temperature", "generation"),
    ("top_p", "generation"),
    ("max_tokens", "generation"),
    ("folds", "probe"),
];

/// A string field read with the type's `FromStr` (its error names the value).
fn parsed<'de, D: Deserializer<'de>, T: FromStr<Err = Error>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| t.parse().map_err(|e: Error| serde::de::Error::custom(e.to_string()))).transpose()
}

/// [`parsed`] of a string or of a list of strings (joined by commas).
fn parsed_list<'de, D: Deserializer<'de>, T: FromStr<Err = Error>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let text = Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(t) => t,
        OneOrMany::Many(list) => list.join(","),
    });
    text.map(|t| t.parse().map_err(|e: Error| serde::de::Error::custom(e.to_string()))).transpose()
}

impl Settings {
    /// Reads a settings file.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file (and line) for an unreadable file, bad TOML, an
    /// unknown key or a bad value.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("config file", format!("{}: cannot be read: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// `path`, or `./probe.toml` when no path is given and that file exists, else the defaults.
    ///
    /// # Errors
    /// As [`Settings::from_toml_file`].
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => Self::from_toml_file(p),
            None if Path::new("probe.toml").is_file() => Self::from_toml_file("probe.toml"),
            None => Ok(Self::default()),
        }
    }

    /// Parses TOML text; `origin` names the file in messages.
    ///
    /// # Errors
    /// As [`Settings::from_toml_file`].
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let s: Self = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().replace('\n', " ");
            let at = line.map(|l| format!(":{l}")).unwrap_or_default();
            Error::invalid("config file", format!("{origin}{at}: {msg}"))
        })?;
        s.validate().map_err(|e| match e {
            Error::InvalidInput { what, message } => {
                let section = SECTIONS.iter().find(|(k, _)| *k == what).map_or("", |(_, s)| *s);
                Error::invalid("config file", format!("{origin}: [{section}] {what} = {message}"))
            }
            other => other,
        })?;
        Ok(s)
    }

    /// Checks every value that can be checked without the model, naming the field (its key).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field and the value.
    pub fn validate(&self) -> Result<()> {
        if let Some(u) = self.vllm.gpu_memory_utilization
            && !(u > 0.0 && u <= 1.0)
        {
            return Err(Error::invalid("gpu_memory_utilization", format!("{u} (must be in (0, 1])")));
        }
        if self.vllm.servers == Some(0) {
            return Err(Error::invalid("servers", "0 (must be ≥ 1)"));
        }
        if self.extraction.batch_size == Some(0) {
            return Err(Error::invalid("batch_size", "0 (must be ≥ 1)"));
        }
        if let Some(d) = self.extraction.dtype
            && !matches!(d, Dtype::F32 | Dtype::Bf16 | Dtype::F16)
        {
            return Err(Error::invalid("dtype", format!("{d} (a run computes in f32, bf16 or f16)")));
        }
        if let Some(a) = self.slurm.args.iter().flatten().find(|a| !a.starts_with('-') || a.contains('\n')) {
            return Err(Error::invalid(
                "args",
                format!("{a:?} (each is one sbatch option, such as \"--account=abc\")"),
            ));
        }
        if let Some(e) = self.run.extractor.as_deref()
            && !matches!(e, "candle" | "vllm")
        {
            return Err(Error::invalid("extractor", format!("{e:?} (expected candle or vllm)")));
        }
        let g = &self.generation;
        if let Some(t) = g.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(Error::invalid("temperature", format!("{t} (must be a finite number ≥ 0)")));
        }
        if let Some(p) = g.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(Error::invalid("top_p", format!("{p} (must be in (0, 1])")));
        }
        if g.max_tokens == Some(0) {
            return Err(Error::invalid("max_tokens", "0 (must be ≥ 1)"));
        }
        self.probe_config()?;
        Ok(())
    }

    // ---- builder: each sets one field over whatever the file said ----

    /// The cache URL (`[cache] url`).
    pub fn cache(mut self, url: impl Into<String>) -> Self {
        self.cache.url = Some(url.into());
        self
    }
    /// The layers (`[extraction] layers`).
    pub fn layers(mut self, layers: LayerSelection) -> Self {
        self.extraction.layers = Some(layers);
        self
    }
    /// The readout (`[extraction] positions`).
    pub fn positions(mut self, readout: Readout) -> Self {
        self.extraction.positions = Some(readout);
        self
    }
    /// Steering while generating (`[[generation.steer]]`), replacing the file's.
    pub fn steer(mut self, steer: Vec<Steer>) -> Self {
        self.generation.steer = steer;
        self
    }
    /// Where activations are read (`[extraction] site`).
    pub fn site(mut self, site: Site) -> Self {
        self.extraction.site = Some(site.into());
        self
    }
    /// Several sites, read in the same forward pass (`[extraction] site = ["resid", …]`).
    pub fn sites(mut self, sites: Sites) -> Self {
        self.extraction.site = Some(sites);
        self
    }
    /// Inputs per forward pass (`[extraction] batch_size`); the plan's when unset.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.extraction.batch_size = Some(n);
        self
    }
    /// The compute dtype (`[extraction] dtype`).
    pub fn dtype(mut self, dtype: Dtype) -> Self {
        self.extraction.dtype = Some(dtype);
        self
    }
    /// New tokens per completion.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.generation.max_tokens = Some(n);
        self
    }
    /// Sampling temperature (0: greedy).
    pub fn temperature(mut self, t: f32) -> Self {
        self.generation.temperature = Some(t);
        self
    }
    /// Nucleus sampling mass.
    pub fn top_p(mut self, p: f32) -> Self {
        self.generation.top_p = Some(p);
        self
    }
    /// Seed of the sampler, the folds, the control task and the bootstrap.
    pub fn seed(mut self, seed: u64) -> Self {
        self.generation.seed = Some(seed);
        self
    }
    /// The backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.run.backend = Some(backend);
        self
    }
    /// `vllm`: extract on the servers themselves (`true`) or in process with candle.
    pub fn extract_on_servers(mut self, on: bool) -> Self {
        self.run.extractor = Some(if on { "vllm" } else { "candle" }.into());
        self
    }
    /// Probe the prompts themselves: no completions.
    pub fn no_generate(mut self, on: bool) -> Self {
        self.run.no_generate = Some(on);
        self
    }
    /// Chat template file for `messages` prompts.
    pub fn chat_template(mut self, file: impl Into<PathBuf>) -> Self {
        self.run.chat_template = Some(file.into());
        self
    }
    /// The prompt set's name in the cache and the report.
    pub fn prompt_set(mut self, name: impl Into<String>) -> Self {
        self.run.prompt_set = Some(name.into());
        self
    }
    /// vLLM servers already running (none are launched).
    pub fn urls(mut self, urls: Vec<String>) -> Self {
        self.vllm.urls = Some(urls);
        self
    }
    /// Declared GPUs for the plan ("4x80GiB").
    pub fn gpus(mut self, gpus: impl Into<String>) -> Self {
        self.devices.gpus = Some(gpus.into());
        self
    }
    /// Folder of launched servers' logs.
    pub fn vllm_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.vllm.log_dir = Some(dir.into());
        self
    }
    /// Probe folds.
    pub fn folds(mut self, folds: usize) -> Self {
        self.probe.folds = Some(folds);
        self
    }
    /// The probes' C, or a grid chosen per fold.
    pub fn probe_c(mut self, c: Vec<f64>) -> Self {
        self.probe.c = Some(c);
        self
    }
    /// How labels are read.
    pub fn labels(mut self, kind: LabelKind) -> Self {
        self.probe.labels = Some(kind);
        self
    }
    /// Plan only ([`Settings::dry_run`]).
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    // ---- resolved values: the setting, else its one default ----

    /// The backend [default: candle].
    pub fn backend_or_default(&self) -> Backend {
        self.run.backend.unwrap_or(Backend::Candle)
    }

    /// Whether the run generates completions.
    pub fn generates(&self) -> bool {
        !self.run.no_generate.unwrap_or(false)
    }

    /// Whether the vLLM servers extract (`[run] extractor = "vllm"`).
    pub fn extracts_on_servers(&self) -> bool {
        self.run.extractor.as_deref() == Some("vllm")
    }

    /// Where activations are read, in the order given [default: resid].
    pub fn read_sites(&self) -> Vec<Site> {
        self.extraction.site.as_ref().map_or_else(|| vec![Site::Resid], |s| s.as_slice().to_vec())
    }

    /// The readout [default: last].
    pub fn readout(&self) -> Readout {
        self.extraction.positions.clone().unwrap_or(Readout::Last)
    }

    /// The sampling of completions, checked.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming a bad value.
    pub fn sampling(&self) -> Result<SamplingParams> {
        let g = &self.generation;
        let s = SamplingParams::greedy(g.max_tokens.unwrap_or(defaults::MAX_TOKENS))
            .with_temperature(g.temperature.unwrap_or(defaults::TEMPERATURE))
            .with_top_p(g.top_p.unwrap_or(defaults::TOP_P))
            .with_seed(self.seed_or_default())
            .with_steering(g.steer.iter().map(Steer::intervention).collect::<Result<_>>()?);
        s.validate()?;
        Ok(s)
    }

    /// The seed [default: 0].
    pub fn seed_or_default(&self) -> u64 {
        self.generation.seed.unwrap_or(defaults::SEED)
    }

    /// The probes' settings, checked.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming a bad value.
    pub fn probe_config(&self) -> Result<ProbeConfig> {
        let mut probe = ProbeConfig::default().with_seed(self.seed_or_default());
        if let Some(f) = self.probe.folds {
            probe = probe.with_folds(f);
        }
        if let Some(c) = &self.probe.c {
            probe = probe.with_c_grid(c.clone());
        }
        if let Some(kind) = self.probe.labels {
            probe = probe.with_labels(kind);
        }
        probe.validate()?;
        Ok(probe)
    }

    /// The cache URL: the setting, else `$PROBE_CACHE`, else [`defaults::CACHE_URL`].
    pub fn cache_url(&self) -> String {
        self.cache
            .url
            .clone()
            .or_else(|| std::env::var("PROBE_CACHE").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| defaults::CACHE_URL.into())
    }

    /// The given vLLM server URLs (none: launched, where the run needs servers).
    pub fn server_urls(&self) -> Vec<String> {
        self.vllm.urls.clone().unwrap_or_default()
    }

    /// The launched servers' log folder.
    pub fn log_dir(&self) -> PathBuf {
        self.vllm.log_dir.clone().unwrap_or_else(|| defaults::VLLM_LOG_DIR.into())
    }

    /// The CUDA ordinal `[devices] extraction_gpus` starts with.
    pub fn first_extraction_gpu(&self) -> Option<usize> {
        self.devices.extraction_gpus.as_ref().and_then(|g| g.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../probe.example.toml");
        let cfg = Settings::from_toml(text, "probe.example.toml").unwrap();
        assert_eq!(cfg.extraction.batch_size, Some(16));
    }

    #[test]
    fn site_and_steering_are_read_and_checked() {
        let cfg = Settings::from_toml("[extraction]\nsite = \"attn_out\"\n", "p.toml").unwrap();
        assert_eq!(cfg.read_sites(), [Site::AttnOut]);
        assert_eq!(Settings::default().read_sites(), [Site::Resid]);
        let e = Settings::from_toml("[extraction]\nsite = \"attn\"\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:2") && e.contains("\"attn\""), "{e}");
        for list in ["\"resid,heads\"", "[\"resid\", \"heads\"]"] {
            let cfg = Settings::from_toml(&format!("[extraction]\nsite = {list}\n"), "p.toml").unwrap();
            assert_eq!(cfg.read_sites(), [Site::Resid, Site::Heads], "{list}");
        }
        let e = Settings::from_toml("[extraction]\nsite = [\"heads\", \"heads\"]\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:2") && e.contains("heads is given twice"), "{e}");
        let text = "[[generation.steer]]\nvector = \"missing.safetensors\"\nlayer = 2\nalpha = 1.5\n";
        let cfg = Settings::from_toml(text, "p.toml").unwrap();
        assert_eq!((cfg.generation.steer[0].layer, cfg.generation.steer[0].alpha), (Some(2), 1.5));
        let e = cfg.sampling().unwrap_err().to_string();
        assert!(e.contains("steer-vector") && e.contains("missing.safetensors"), "{e}");
        let bad_head = Steer { vector: Some("v".into()), head: Some("3".into()), alpha: 1.0, ..Steer::default() };
        assert!(bad_head.intervention().unwrap_err().to_string().contains("BLOCK:HEAD"));
        let neither = Steer { alpha: 1.0, ..Steer::default() };
        assert!(neither.intervention().unwrap_err().to_string().contains("--steer-probe"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Settings::from_toml("[extraction]\nbatch_size = 4\nbacth = 3\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:3") && e.contains("bacth"), "{e}");
        let e = Settings::from_toml("[gpus]\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("gpus"), "{e}");
        let e = Settings::from_toml("[extraction]\nlayers = \"1,x\"\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml:2") && e.contains('x'), "{e}");
        let e = Settings::from_toml("[run]\nbackend = \"torch\"\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("\"torch\""), "{e}");
    }

    #[test]
    fn the_slurm_section_is_read_and_checked() {
        let text = "[slurm]\nsbatch = \"/opt/slurm/bin/sbatch\"\npartition = \"gpu\"\ntime = \"2:00:00\"\nargs = [\"--account=x\"]\n";
        let cfg = Settings::from_toml(text, "p.toml").unwrap();
        assert_eq!(cfg.slurm.partition.as_deref(), Some("gpu"));
        assert_eq!(cfg.slurm.args, Some(vec!["--account=x".to_owned()]));
        let e = Settings::from_toml("[slurm]\nargs = [\"account=x\"]\n", "p.toml").unwrap_err().to_string();
        assert!(e.contains("p.toml: [slurm] args = \"account=x\""), "{e}");
    }

    #[test]
    fn bad_values_name_the_file_and_key() {
        for (text, want) in [
            ("[generation]\ntemperature = nan\n", "p.toml: [generation] temperature = NaN"),
            ("[generation]\ntemperature = -0.5\n", "p.toml: [generation] temperature = -0.5"),
            ("[generation]\ntemperature = inf\n", "p.toml: [generation] temperature = inf"),
            ("[generation]\ntop_p = 0.0\n", "p.toml: [generation] top_p = 0"),
            ("[generation]\nmax_tokens = 0\n", "p.toml: [generation] max_tokens = 0"),
            ("[extraction]\nbatch_size = 0\n", "p.toml: [extraction] batch_size = 0"),
            ("[extraction]\ndtype = \"int8\"\n", "p.toml: [extraction] dtype = int8"),
            ("[vllm]\nservers = 0\n", "p.toml: [vllm] servers = 0"),
        ] {
            let e = Settings::from_toml(text, "p.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{want} in {e}");
        }
    }

    #[test]
    fn builder_values_override_the_file_and_defaults_live_in_one_place() {
        let file = Settings::from_toml("[generation]\nmax_tokens = 9\nseed = 2\n", "p.toml").unwrap();
        let s = file.max_tokens(5);
        let sampling = s.sampling().unwrap();
        assert_eq!((sampling.max_tokens, sampling.seed), (5, 2));
        let d = Settings::default();
        assert_eq!(d.sampling().unwrap().max_tokens, defaults::MAX_TOKENS);
        assert_eq!(d.readout(), Readout::Last);
        assert!(d.generates() && !d.extracts_on_servers());
    }
}
