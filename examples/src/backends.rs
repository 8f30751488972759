//! `--backend NAME`: the registry's backends ([`probe_backends::registry`], the one place
//! with per-feature stubs), and with the `testing` feature the `mock` test double
//! ([`crate::faults`]).

use std::sync::Arc;

use probe_backends::registry::{self, Backend, OpenOptions};
use probe_core::plan::RunPlan;
use probe_core::{Error, Generator, Result};

pub(crate) use probe_backends::registry::Opened;

/// Blocks of the `mock` backend's model.
pub(crate) const MOCK_LAYERS: usize = 6;

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// In process, pure Rust (the default).
    Candle,
    /// OpenAI-compatible vLLM servers (generation; extraction with `--extractor vllm`).
    Vllm,
    /// libtorch.
    Tch,
    /// ONNX Runtime.
    Ort,
    /// Deterministic test doubles, no model (builds with the `testing` feature only).
    Mock,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "mock" {
            return if cfg!(feature = "testing") {
                Ok(Self::Mock)
            } else {
                Err(Error::invalid("backend", "\"mock\" is a test double: build with --features testing"))
            };
        }
        let real = s
            .parse::<Backend>()
            .map_err(|_| Error::invalid("backend", format!("{s:?} (expected candle, vllm, tch, ort or mock)")))?;
        Ok(match real {
            Backend::Vllm => Self::Vllm,
            Backend::Tch => Self::Tch,
            Backend::Ort => Self::Ort,
            _ => Self::Candle,
        })
    }
}

impl BackendKind {
    /// The registry's backend (`None` for the mock).
    fn real(self) -> Option<Backend> {
        match self {
            Self::Candle => Some(Backend::Candle),
            Self::Vllm => Some(Backend::Vllm),
            Self::Tch => Some(Backend::Tch),
            Self::Ort => Some(Backend::Ort),
            Self::Mock => None,
        }
    }

    /// The name on the command line.
    pub(crate) fn name(self) -> &'static str {
        self.real().map_or("mock", Backend::name)
    }

    /// Fails when the backend's cargo feature is off.
    pub(crate) fn check_available(self) -> Result<()> {
        self.real().map_or(Ok(()), Backend::check_available)
    }

    /// The number of transformer blocks of `model` ([`Backend::model_layers`]); for the mock,
    /// its fixed shape.
    ///
    /// # Errors
    /// As [`Backend::model_layers`].
    pub(crate) fn model_layers(self, model: &str) -> Result<usize> {
        self.real().map_or(Ok(MOCK_LAYERS), |b| b.model_layers(model))
    }

    /// Loads the model where `plan` places extraction (its `extraction.placement`: a layer
    /// split, data-parallel replicas), else on GPU `gpu` or the CPU, computing in `dtype`.
    /// For `vllm`, generation goes to the servers at `urls` and extraction runs on candle.
    pub(crate) fn open_planned(
        self,
        model: &str,
        plan: Option<&RunPlan>,
        gpu: Option<usize>,
        urls: &[String],
        dtype: &str,
    ) -> Result<Opened> {
        let Some(real) = self.real() else { return crate::faults::mock(model) };
        // The plan's batch size also bounds candle's batched generation.
        let mut options = OpenOptions::default()
            .on(gpu)
            .with_dtype(dtype)
            .with_urls(urls.to_vec())
            .with_gpus_as_cpu(crate::faults::gpus_as_cpu())
            .with_batch_size(plan.and_then(|p| p.extraction.as_ref()).map(|e| e.batch_size));
        if let Some(e) = plan.and_then(|p| p.extraction.as_ref()).filter(|e| !e.placement.is_empty()) {
            options = options.with_placement(e.placement.clone());
        }
        registry::open(real, model, &options)
    }

    /// [`BackendKind::open_planned`] on one device (GPU `gpu`, or the CPU).
    pub(crate) fn open_as(self, model: &str, gpu: Option<usize>, urls: &[String], dtype: &str) -> Result<Opened> {
        self.open_planned(model, None, gpu, urls, dtype)
    }

    /// [`BackendKind::open_as`] in f32.
    pub(crate) fn open(self, model: &str, gpu: Option<usize>, urls: &[String]) -> Result<Opened> {
        self.open_as(model, gpu, urls, "f32")
    }

    /// Only the generator: for `vllm` no model is loaded in process.
    pub(crate) fn open_generator(self, model: &str, gpu: Option<usize>, urls: &[String]) -> Result<Arc<dyn Generator>> {
        self.open_generator_as(model, gpu, urls, ("f32", None))
    }

    /// [`BackendKind::open_generator`] computing in `dtype` (candle's `CandleOptions::dtype`).
    pub(crate) fn open_generator_as(
        self,
        model: &str,
        gpu: Option<usize>,
        urls: &[String],
        (dtype, batch_size): (&str, Option<usize>),
    ) -> Result<Arc<dyn Generator>> {
        match self.real() {
            Some(real) => {
                let options = OpenOptions::default()
                    .on(gpu)
                    .with_dtype(dtype)
                    .with_urls(urls.to_vec())
                    .with_batch_size(batch_size);
                registry::open_generator(real, model, &options)
            }
            None => {
                crate::faults::mock(model)?.generator.ok_or_else(|| Error::not_supported("generation", self.name()))
            }
        }
    }
}
