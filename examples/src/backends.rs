//! Choosing and opening a backend, and the checks that can run before any model loads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use probe_core::testing::MockExtractor;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Generator, ModelInfo, Result,
};

/// Blocks and hidden size of the `mock` backend's model.
pub(crate) const MOCK_LAYERS: usize = 6;
const MOCK_HIDDEN: usize = 32;

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// In process, pure Rust (the default).
    Candle,
    /// OpenAI-compatible vLLM servers (generation only).
    Vllm,
    /// libtorch.
    Tch,
    /// ONNX Runtime.
    Ort,
    /// Deterministic test doubles, no model: for tests and dry runs.
    Mock,
}

impl std::str::FromStr for BackendKind {
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

impl BackendKind {
    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Vllm => "vllm",
            Self::Tch => "tch",
            Self::Ort => "ort",
            Self::Mock => "mock",
        }
    }

    /// Fails when the backend's cargo feature is off, or when it is not wired into the CLI.
    pub(crate) fn check_available(self) -> Result<()> {
        match self {
            Self::Mock => Ok(()),
            Self::Candle => probe_backends::require_feature("candle"),
            other => probe_backends::require_feature(other.name()),
        }
    }

    /// The number of transformer blocks of `model`, read from its `config.json` without
    /// loading weights; for the mock, its fixed shape. For candle and vllm, the whole
    /// `config.json` and the safetensors headers are checked too (`CandleBackend::check`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the folder or file for a missing or unreadable model
    /// folder or `config.json`, a bad `config.json` field or a bad safetensors header.
    pub(crate) fn model_layers(self, model: &str) -> Result<usize> {
        if self == Self::Mock {
            return Ok(MOCK_LAYERS);
        }
        let dir = Path::new(model);
        if !dir.is_dir() {
            return Err(Error::invalid(
                "model",
                format!("{model:?} is not a folder (expected a Hugging Face model folder)"),
            ));
        }
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| Error::invalid("model", format!("{}: cannot be read: {e}", cfg_path.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid("model", format!("{}: not valid JSON: {e}", cfg_path.display())))?;
        let layers = v
            .get("num_hidden_layers")
            .or_else(|| v.get("text_config").and_then(|t| t.get("num_hidden_layers")))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::invalid("model", format!("{}: no num_hidden_layers", cfg_path.display())))?;
        if matches!(self, Self::Candle | Self::Vllm) {
            check_candle_folder(dir)?;
        }
        Ok(layers as usize)
    }

    /// Loads the model: an extractor and, where the backend generates, a generator.
    /// `gpu` is the CUDA ordinal to extract on (`[devices] extraction_gpus`), `None` for the CPU.
    /// For `vllm`, generation goes to the servers at `urls` (serving `model` under that name)
    /// and extraction runs in process on candle from the same folder.
    pub(crate) fn open(self, model: &str, gpu: Option<usize>, urls: &[String]) -> Result<Opened> {
        self.open_as(model, gpu, urls, "f32")
    }

    /// [`BackendKind::open`] computing in `dtype` (`f32`, `bf16`, `f16`: candle's
    /// `CandleOptions::dtype`; the exports and the mock ignore it).
    pub(crate) fn open_as(self, model: &str, gpu: Option<usize>, urls: &[String], dtype: &str) -> Result<Opened> {
        self.check_available()?;
        match self {
            Self::Mock => {
                let delay = std::env::var("PROBE_MOCK_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                Ok(Opened {
                    extractor: Arc::new(SlowMock {
                        inner: MockExtractor::new(model, MOCK_LAYERS, MOCK_HIDDEN),
                        delay: Duration::from_millis(delay),
                    }),
                    generator: Some(crate::faults::mock_generator(model)),
                })
            }
            Self::Candle => open_candle(model, gpu, dtype),
            Self::Vllm => open_vllm(model, gpu, urls, dtype),
            Self::Tch => open_tch(model, gpu),
            Self::Ort => open_ort(model),
        }
    }
}

impl BackendKind {
    /// Only the generator: for `vllm` no model is loaded in process.
    pub(crate) fn open_generator(self, model: &str, gpu: Option<usize>, urls: &[String]) -> Result<Arc<dyn Generator>> {
        self.open_generator_as(model, gpu, urls, "f32")
    }

    /// [`BackendKind::open_generator`] computing in `dtype` (candle's `CandleOptions::dtype`).
    pub(crate) fn open_generator_as(
        self,
        model: &str,
        gpu: Option<usize>,
        urls: &[String],
        dtype: &str,
    ) -> Result<Arc<dyn Generator>> {
        if self == Self::Vllm {
            self.check_available()?;
            return vllm_generator(model, urls);
        }
        self.open_as(model, gpu, urls, dtype)?.generator.ok_or_else(|| Error::not_supported("generation", self.name()))
    }
}

/// An opened model.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) extractor: Arc<dyn ActivationExtractor>,
    pub(crate) generator: Option<Arc<dyn Generator>>,
}

/// The whole `config.json` and the safetensors headers, checked without loading weights.
#[cfg(feature = "candle")]
fn check_candle_folder(dir: &Path) -> Result<()> {
    probe_backends::candle::CandleBackend::check(dir)
}

#[cfg(not(feature = "candle"))]
fn check_candle_folder(_dir: &Path) -> Result<()> {
    Ok(())
}

#[cfg(feature = "candle")]
fn open_candle(model: &str, gpu: Option<usize>, dtype: &str) -> Result<Opened> {
    use probe_backends::candle::{CandleBackend, CandleDevice, CandleOptions};
    let mut options = CandleOptions::default().with_dtype(dtype.parse()?);
    if let Some(i) = gpu {
        options = options.with_device(CandleDevice::Cuda(i));
    }
    let backend = CandleBackend::load(Path::new(model), options)?;
    Ok(Opened { extractor: Arc::new(backend.clone()), generator: Some(Arc::new(backend)) })
}

#[cfg(not(feature = "candle"))]
fn open_candle(_model: &str, _gpu: Option<usize>, _dtype: &str) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "candle".into() })
}

/// tch runs a TorchScript export (`scripts/python/export_torchscript.py MODEL OUT`): `model`
/// is the export folder. Extraction only.
#[cfg(feature = "tch")]
fn open_tch(model: &str, gpu: Option<usize>) -> Result<Opened> {
    use probe_backends::tch::{TchDevice, TchExtractor, TchOptions};
    let device = gpu.map_or(TchDevice::Auto, TchDevice::Cuda);
    let extractor = TchExtractor::load(Path::new(model), TchOptions::default().with_device(device))?;
    Ok(Opened { extractor: Arc::new(extractor), generator: None })
}

#[cfg(not(feature = "tch"))]
fn open_tch(_model: &str, _gpu: Option<usize>) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "tch".into() })
}

/// ort runs an ONNX export (`scripts/python/export_onnx.py MODEL OUT`): `model` is the export
/// folder. Extraction only; the CUDA provider when built with `cuda` and a GPU is present.
#[cfg(feature = "ort")]
fn open_ort(model: &str) -> Result<Opened> {
    use probe_backends::ort::{OrtExtractor, OrtOptions};
    let extractor = OrtExtractor::load(Path::new(model), OrtOptions::default())?;
    tracing::info!("ONNX Runtime execution provider: {}", extractor.provider());
    Ok(Opened { extractor: Arc::new(extractor), generator: None })
}

#[cfg(not(feature = "ort"))]
fn open_ort(_model: &str) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "ort".into() })
}

#[cfg(feature = "vllm")]
fn vllm_generator(model: &str, urls: &[String]) -> Result<Arc<dyn Generator>> {
    use probe_backends::vllm::VllmGenerator;
    if urls.is_empty() {
        return Err(Error::invalid("url", "--backend vllm needs server URLs: --url URL or [vllm] urls in probe.toml"));
    }
    let env_key = if std::env::var_os("VLLM_API_KEY").is_some() { "VLLM_API_KEY" } else { "OPENAI_API_KEY" };
    let generator = VllmGenerator::builder()
        .urls(urls.to_vec())
        .model(model)
        .api_key_from_env(env_key)
        .request_timeout(Duration::from_secs(600))
        .build()?;
    Ok(Arc::new(generator))
}

#[cfg(not(feature = "vllm"))]
fn vllm_generator(_model: &str, _urls: &[String]) -> Result<Arc<dyn Generator>> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}

fn open_vllm(model: &str, gpu: Option<usize>, urls: &[String], dtype: &str) -> Result<Opened> {
    let generator = vllm_generator(model, urls)?;
    let extractor = open_candle(model, gpu, dtype)?.extractor;
    Ok(Opened { extractor, generator: Some(generator) })
}

/// The mock extractor with an optional pause per call (`PROBE_MOCK_DELAY_MS`), so tests can
/// interrupt a run mid-extraction.
#[derive(Debug)]
struct SlowMock {
    inner: MockExtractor,
    delay: Duration,
}

#[async_trait]
impl ActivationExtractor for SlowMock {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.extract(request).await
    }
    fn model_info(&self) -> ModelInfo {
        self.inner.model_info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
