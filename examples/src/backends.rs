//! Choosing and opening a backend, and the checks that can run before any model loads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use probe_core::testing::{MockExtractor, MockGenerator};
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
    fn name(self) -> &'static str {
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
            other => {
                probe_backends::require_feature(other.name())?;
                Err(Error::not_supported(
                    "running it from the probe CLI (not wired yet; use `--backend candle`)",
                    other.name(),
                ))
            }
        }
    }

    /// The number of transformer blocks of `model`, read from its `config.json` without
    /// loading weights; for the mock, its fixed shape.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the folder for a missing or unreadable model folder or
    /// `config.json`.
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
        Ok(layers as usize)
    }

    /// Loads the model: an extractor and, where the backend generates, a generator.
    /// `gpu` is the CUDA ordinal to extract on (`[devices] extraction_gpus`), `None` for the CPU.
    pub(crate) fn open(self, model: &str, gpu: Option<usize>) -> Result<Opened> {
        self.check_available()?;
        match self {
            Self::Mock => {
                let delay = std::env::var("PROBE_MOCK_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
                Ok(Opened {
                    extractor: Arc::new(SlowMock {
                        inner: MockExtractor::new(model, MOCK_LAYERS, MOCK_HIDDEN),
                        delay: Duration::from_millis(delay),
                    }),
                    generator: Some(Arc::new(MockGenerator::new(model))),
                })
            }
            Self::Candle => open_candle(model, gpu),
            _ => unreachable!("check_available refused it"),
        }
    }
}

/// An opened model.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) extractor: Arc<dyn ActivationExtractor>,
    pub(crate) generator: Option<Arc<dyn Generator>>,
}

#[cfg(feature = "candle")]
fn open_candle(model: &str, gpu: Option<usize>) -> Result<Opened> {
    use probe_backends::candle::{CandleBackend, CandleDevice, CandleOptions};
    let mut options = CandleOptions::default();
    if let Some(i) = gpu {
        options = options.with_device(CandleDevice::Cuda(i));
    }
    let backend = CandleBackend::load(Path::new(model), options)?;
    Ok(Opened { extractor: Arc::new(backend.clone()), generator: Some(Arc::new(backend)) })
}

#[cfg(not(feature = "candle"))]
fn open_candle(_model: &str, _gpu: Option<usize>) -> Result<Opened> {
    Err(Error::FeatureDisabled { feature: "candle".into() })
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
