//! The backend registry: a backend name (`--backend candle|vllm|tch|ort`) and a model to an
//! opened extractor and generator, run where the plan places it. The one place that knows
//! which backends this build has: a backend whose cargo feature is off is
//! [`Error::FeatureDisabled`], from [`open`] as from [`Backend::check_available`].
//!
//! ```no_run
//! use probe_backends::registry::{self, Backend, OpenOptions};
//! # fn demo() -> probe_core::Result<()> {
//! let opened = registry::open(Backend::Candle, "fixtures/models/llama", &OpenOptions::default())?;
//! println!("{}", opened.extractor.model_info().id.id);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use probe_core::plan::Placement;
use probe_core::{ActivationExtractor, Error, Generator, Result};

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// In process, pure Rust (the default).
    Candle,
    /// OpenAI-compatible vLLM servers for generation; extraction on candle from the same folder,
    /// or on the servers themselves ([`OpenOptions::vllm_extraction`]).
    Vllm,
    /// libtorch, on a TorchScript export (`scripts/python/export_torchscript.py`).
    Tch,
    /// ONNX Runtime, on an ONNX export (`scripts/python/export_onnx.py`).
    Ort,
    /// Deterministic test doubles, no model (`testing` builds only; see [`crate::mock`]).
    Mock,
}

impl std::str::FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "candle" => Ok(Self::Candle),
            "vllm" => Ok(Self::Vllm),
            "tch" => Ok(Self::Tch),
            "ort" => Ok(Self::Ort),
            "mock" => Ok(Self::Mock),
            other => Err(Error::invalid("backend", format!("{other:?} (expected candle, vllm, tch, ort or mock)"))),
        }
    }
}

impl Backend {
    /// The name on the command line (and of its cargo feature).
    pub fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Vllm => "vllm",
            Self::Tch => "tch",
            Self::Ort => "ort",
            Self::Mock => "mock",
        }
    }

    /// Whether the backend generates (candle in process, vllm on servers).
    pub fn generates(self) -> bool {
        matches!(self, Self::Candle | Self::Vllm | Self::Mock)
    }

    /// Fails for a backend that cannot generate (tch and ort extract only).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the backend.
    pub fn check_generates(self) -> Result<()> {
        if self.generates() {
            Ok(())
        } else {
            Err(Error::invalid("backend", format!("{} cannot generate (use candle or vllm)", self.name())))
        }
    }

    /// Fails when the backend's cargo feature is off (`vllm` extracts on candle: both).
    ///
    /// # Errors
    /// [`Error::FeatureDisabled`] naming the feature.
    pub fn check_available(self) -> Result<()> {
        match self {
            Self::Vllm => crate::require_feature("candle")?,
            Self::Mock => return crate::require_feature("testing"),
            _ => {}
        }
        crate::require_feature(self.name())
    }

    /// The number of transformer blocks of the model folder `model`, from its `config.json`
    /// without loading weights; for candle and vllm the whole folder is checked as loading
    /// would (`config.json`, safetensors headers, tokenizer).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the folder or file: not a folder, an unreadable or bad
    /// `config.json`, a bad safetensors header.
    pub fn model_layers(self, model: &str) -> Result<usize> {
        if self == Self::Mock {
            return Ok(crate::mock::MOCK_LAYERS);
        }
        let layers = config_layers(model)?;
        self.check_folder(model)?;
        Ok(layers)
    }

    /// Checks the folder `model` as loading would, without loading weights: for candle and
    /// vllm (whose extraction runs on candle) `config.json`'s architecture, the safetensors
    /// headers and the tokenizer; nothing for the others.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file; for vllm, an architecture candle lacks.
    pub fn check_folder(self, model: &str) -> Result<()> {
        let dir = Path::new(model);
        match self {
            Self::Candle => check_candle_folder(dir),
            // The generation servers would read the folder; the extractor that runs must too.
            Self::Vllm => check_candle_folder(dir).map_err(|e| match e {
                Error::NotSupported { operation, .. } => Error::invalid(
                    "model",
                    format!(
                        "{model}: extraction (candle) does not support {operation}; generation (vllm) would serve it, \
                         but the activations are extracted with candle"
                    ),
                ),
                other => other,
            }),
            _ => Ok(()),
        }
    }
}

impl Backend {
    /// Refuses a site the model folder `model` lacks where `reads` reads it, from its
    /// `config.json` (the candle extractor's check, for candle and for vllm's in-process
    /// extraction), before anything is generated or loaded; other backends check at extraction.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the site.
    pub fn check_sites(self, model: &str, reads: &[(probe_core::Site, Vec<usize>)]) -> Result<()> {
        match self {
            Self::Candle | Self::Vllm => check_candle_sites(Path::new(model), reads),
            _ => Ok(()),
        }
    }
}

/// The number of transformer blocks in the model folder `model`'s `config.json`, nothing else
/// checked (vLLM extraction: the servers load the model, whatever candle supports).
///
/// # Errors
/// [`Error::InvalidInput`] naming the folder or file: not a folder, an unreadable or bad
/// `config.json`.
pub fn config_layers(model: &str) -> Result<usize> {
    let dir = Path::new(model);
    if !dir.is_dir() {
        return Err(Error::invalid(
            "model",
            format!("{model:?} is not a folder (expected a Hugging Face model folder)"),
        ));
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::invalid("model", format!("{}: cannot be read: {e}", path.display())))?;
    let named = |e: Error| Error::invalid("model", format!("{}: {e}", path.display()));
    let cfg = probe_core::hf_config::HfConfig::parse(&text).map_err(named)?;
    probe_core::hf_config::HfConfig::required(cfg.num_hidden_layers, "num_hidden_layers").map_err(named)
}

/// Where and how to open a model.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// The plan's `extraction.placement`: candle runs each worker's blocks on its shares'
    /// devices, several workers as data-parallel replicas; tch runs on the first share's GPU;
    /// ort picks its execution provider itself. Empty: the CPU.
    pub placement: Vec<Placement>,
    /// Compute dtype (`f32`, `bf16`, `f16`; candle only). `None`: f32.
    pub dtype: Option<String>,
    /// vLLM server URLs (`vllm` only).
    pub urls: Vec<String>,
    /// Runs the placement's `cuda:N` shares on the CPU (candle): a declared inventory
    /// (`--gpus`) rehearsed on a machine without GPUs, every share and replica as planned.
    pub gpus_as_cpu: bool,
    /// Inputs per forward pass when a request gives none, and sequences decoded together by
    /// candle's batched generation (`None`: the backend's default, 16 for candle).
    pub batch_size: Option<usize>,
    /// `vllm` only: extract with the hidden states the servers write themselves
    /// ([`crate::vllm::VllmExtractor`]; servers started with
    /// [`crate::vllm::hidden::extraction_args`]) instead of candle.
    pub vllm_extraction: bool,
    /// `vllm` extraction: the servers' hidden-states folder as this machine sees it (a shared
    /// mount); `None`: the paths the servers answer, as they are.
    pub hidden_states_dir: Option<std::path::PathBuf>,
    /// `vllm` extraction on servers this run launches, started on first use.
    #[cfg(feature = "vllm")]
    pub launched: Option<Arc<crate::vllm::LazyServers>>,
}

impl OpenOptions {
    /// Sets the placement.
    pub fn with_placement(mut self, placement: Vec<Placement>) -> Self {
        self.placement = placement;
        self
    }
    /// Every block on one device: GPU `gpu`, or the CPU for `None`.
    pub fn on(self, gpu: Option<usize>) -> Self {
        self.with_placement(vec![Placement::whole(probe_core::plan::device_name(gpu), usize::MAX)])
    }
    /// Sets the compute dtype.
    pub fn with_dtype(mut self, dtype: impl Into<String>) -> Self {
        self.dtype = Some(dtype.into());
        self
    }
    /// Sets the vLLM server URLs.
    pub fn with_urls(mut self, urls: Vec<String>) -> Self {
        self.urls = urls;
        self
    }
    /// Sets the batch size ([`OpenOptions::batch_size`]).
    pub fn with_batch_size(mut self, b: Option<usize>) -> Self {
        self.batch_size = b;
        self
    }
    /// Extracts with vLLM itself ([`OpenOptions::vllm_extraction`]), reading its files from
    /// `shared_dir` when given ([`OpenOptions::hidden_states_dir`]).
    pub fn with_vllm_extraction(mut self, on: bool, shared_dir: Option<std::path::PathBuf>) -> Self {
        self.vllm_extraction = on;
        self.hidden_states_dir = shared_dir;
        self
    }
    /// `vllm` extraction on servers this run launches ([`OpenOptions::launched`]).
    #[cfg(feature = "vllm")]
    pub fn with_launched(mut self, servers: Option<Arc<crate::vllm::LazyServers>>) -> Self {
        self.launched = servers;
        self
    }
    /// Runs the placement's GPU shares on the CPU ([`OpenOptions::gpus_as_cpu`]).
    pub fn with_gpus_as_cpu(mut self, on: bool) -> Self {
        self.gpus_as_cpu = on;
        self
    }
    /// The GPU of the first share (`None`: the CPU).
    pub fn first_gpu(&self) -> Option<usize> {
        self.placement.first().and_then(|p| p.device.strip_prefix("cuda:")).and_then(|i| i.parse().ok())
    }
}

/// An opened model.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Extracts hidden states.
    pub extractor: Arc<dyn ActivationExtractor>,
    /// Generates, where the backend does.
    pub generator: Option<Arc<dyn Generator>>,
}

/// Loads `model` with `backend`: an extractor and, where the backend generates, a generator.
/// For `vllm`, generation goes to the servers at `options.urls` (serving `model` under that
/// name) and extraction runs in process on candle from the same folder, or with
/// [`OpenOptions::vllm_extraction`] on the same servers.
///
/// # Errors
/// [`Error::FeatureDisabled`] for a backend not compiled in; the backend's loading errors.
pub fn open(backend: Backend, model: &str, options: &OpenOptions) -> Result<Opened> {
    backend.check_available()?;
    match backend {
        Backend::Candle => open_candle(model, options),
        Backend::Vllm if options.vllm_extraction => open_vllm_extractor(model, options),
        Backend::Vllm => {
            let generator = vllm_generator(model, &options.urls)?;
            Ok(Opened { extractor: open_candle(model, options)?.extractor, generator: Some(generator) })
        }
        Backend::Tch => open_tch(model, options.first_gpu()),
        Backend::Ort => open_ort(model),
        Backend::Mock => crate::mock::open(model),
    }
}

/// Only the generator: for `vllm` no model is loaded in process.
///
/// # Errors
/// As [`open`]; [`Error::NotSupported`] for a backend that does not generate.
pub fn open_generator(backend: Backend, model: &str, options: &OpenOptions) -> Result<Arc<dyn Generator>> {
    if backend == Backend::Vllm {
        backend.check_available()?;
        return vllm_generator(model, &options.urls);
    }
    open(backend, model, options)?.generator.ok_or_else(|| Error::not_supported("generation", backend.name()))
}

#[cfg(feature = "candle")]
fn check_candle_folder(dir: &Path) -> Result<()> {
    crate::candle::CandleBackend::check(dir)
}

#[cfg(not(feature = "candle"))]
fn check_candle_folder(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(feature = "candle")]
fn check_candle_sites(dir: &Path, reads: &[(probe_core::Site, Vec<usize>)]) -> Result<()> {
    crate::candle::CandleBackend::check_sites(dir, reads)
}

#[cfg(not(feature = "candle"))]
fn check_candle_sites(_dir: &Path, _reads: &[(probe_core::Site, Vec<usize>)]) -> Result<()> {
    Ok(())
}

#[cfg(feature = "candle")]
fn open_candle(model: &str, options: &OpenOptions) -> Result<Opened> {
    use crate::candle::{CandleBackend, CandleOptions, device_of, open_placement};
    let mut base = CandleOptions::default();
    if let Some(d) = &options.dtype {
        base = base.with_dtype(d.parse()?);
    }
    if let Some(b) = options.batch_size {
        base = base.with_default_batch_size(b);
    }
    let dir = Path::new(model);
    if options.placement.is_empty() {
        let backend = CandleBackend::load(dir, base)?;
        return Ok(Opened { extractor: Arc::new(backend.clone()), generator: Some(Arc::new(backend)) });
    }
    // A one-share placement's open end (`OpenOptions::on`) is the model's last block.
    let blocks = CandleBackend::model_info_of(dir, &base)?.num_layers;
    let mut placement = options.placement.clone();
    for p in &mut placement {
        p.layers[1] = p.layers[1].min(blocks.saturating_sub(1));
    }
    let on_cpu = |name: &str| if name.starts_with("cuda:") { device_of("cpu") } else { device_of(name) };
    let map: &dyn Fn(&str) -> Result<crate::candle::CandleDevice> =
        if options.gpus_as_cpu { &on_cpu } else { &device_of };
    let replicas = open_placement(dir, &base, &placement, map)?;
    tracing::info!(
        "candle: {} worker(s) on {}{}",
        replicas.replicas().len(),
        placement
            .iter()
            .map(|p| format!("{} [{}..={}]", p.device, p.layers[0], p.layers[1]))
            .collect::<Vec<_>>()
            .join(", "),
        if options.gpus_as_cpu { " (GPU shares rehearsed on the CPU)" } else { "" }
    );
    let generator: Arc<dyn Generator> = Arc::new(replicas.first().clone());
    Ok(Opened { extractor: Arc::new(replicas), generator: Some(generator) })
}

#[cfg(not(feature = "candle"))]
fn open_candle(_model: &str, _options: &OpenOptions) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "candle".into() })
}

/// tch runs a TorchScript export: `model` is the export folder. Extraction only.
#[cfg(feature = "tch")]
fn open_tch(model: &str, gpu: Option<usize>) -> Result<Opened> {
    use crate::tch::{TchDevice, TchExtractor, TchOptions};
    let device = gpu.map_or(TchDevice::Auto, TchDevice::Cuda);
    let extractor = TchExtractor::load(Path::new(model), TchOptions::default().with_device(device))?;
    Ok(Opened { extractor: Arc::new(extractor), generator: None })
}

#[cfg(not(feature = "tch"))]
fn open_tch(_model: &str, _gpu: Option<usize>) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "tch".into() })
}

/// ort runs an ONNX export: `model` is the export folder. Extraction only; the CUDA provider
/// when built with `cuda` and a GPU is present.
#[cfg(feature = "ort")]
fn open_ort(model: &str) -> Result<Opened> {
    use crate::ort::{OrtExtractor, OrtOptions};
    let extractor = OrtExtractor::load(Path::new(model), OrtOptions::default())?;
    tracing::info!("ONNX Runtime execution provider: {}", extractor.provider());
    Ok(Opened { extractor: Arc::new(extractor), generator: None })
}

#[cfg(not(feature = "ort"))]
fn open_ort(_model: &str) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "ort".into() })
}

#[cfg(feature = "vllm")]
fn vllm_client(model: &str, urls: &[String]) -> Result<Arc<crate::vllm::VllmGenerator>> {
    use crate::vllm::VllmGenerator;
    if urls.is_empty() {
        return Err(Error::invalid("urls", "the vllm backend needs server URLs ([vllm] urls), or servers to launch"));
    }
    let env_key = if std::env::var_os("VLLM_API_KEY").is_some() { "VLLM_API_KEY" } else { "OPENAI_API_KEY" };
    let generator = VllmGenerator::builder()
        .urls(urls.to_vec())
        .model(model)
        .api_key_from_env(env_key)
        .request_timeout(std::time::Duration::from_secs(600))
        .build()?;
    Ok(Arc::new(generator))
}

#[cfg(feature = "vllm")]
fn vllm_generator(model: &str, urls: &[String]) -> Result<Arc<dyn Generator>> {
    Ok(vllm_client(model, urls)?)
}

/// Extraction on the servers: the extractor reads the hidden states they write, and is the
/// generator too (one prompt per request; each completion's hidden states are kept for its
/// extraction).
#[cfg(feature = "vllm")]
fn open_vllm_extractor(model: &str, options: &OpenOptions) -> Result<Opened> {
    let client = vllm_client(model, &options.urls)?;
    let mut extractor = crate::vllm::VllmExtractor::new(client, Path::new(model))?;
    if let Some(dir) = &options.hidden_states_dir {
        extractor = extractor.with_shared_dir(dir);
    }
    if let Some(servers) = &options.launched {
        extractor = extractor.with_servers(servers.clone());
    }
    let extractor = Arc::new(extractor);
    Ok(Opened { extractor: extractor.clone(), generator: Some(extractor) })
}

#[cfg(not(feature = "vllm"))]
fn vllm_generator(_model: &str, _urls: &[String]) -> Result<Arc<dyn Generator>> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}

#[cfg(not(feature = "vllm"))]
fn open_vllm_extractor(_model: &str, _options: &OpenOptions) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_a_missing_feature_is_typed() {
        for b in [Backend::Candle, Backend::Vllm, Backend::Tch, Backend::Ort, Backend::Mock] {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            let feature = if b == Backend::Mock { "testing" } else { b.name() };
            let on = crate::COMPILED_FEATURES.contains(&feature);
            match b.check_available() {
                Ok(()) => assert!(on),
                Err(Error::FeatureDisabled { feature }) => {
                    assert!(!on || feature == "candle" || feature == "testing", "{feature}")
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            "bogus".parse::<Backend>().unwrap_err().to_string().contains("expected candle, vllm, tch, ort or mock")
        );
    }

    #[test]
    fn a_one_device_placement_names_its_gpu() {
        assert_eq!(OpenOptions::default().on(Some(3)).first_gpu(), Some(3));
        assert_eq!(OpenOptions::default().on(None).first_gpu(), None);
        assert_eq!(OpenOptions::default().first_gpu(), None);
    }
}
