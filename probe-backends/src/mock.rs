//! The `mock` backend ([`crate::registry::Backend::Mock`]) and the test-only knobs, compiled
//! with the `testing` feature only (without it the mock is [`probe_core::Error::FeatureDisabled`]
//! and the variables are ignored):
//!
//! - `PROBE_MOCK_DELAY_MS=N` / `PROBE_MOCK_GEN_DELAY_MS=N`: the `mock` backend's extractor
//!   pauses N ms per forward pass, its generator per `generate` call (one call per generation
//!   chunk), so a test can interrupt a run mid-extraction or mid-generation.
//! - `PROBE_INJECT_OOM=SEED:PROBABILITY`: every backend's extractor fails seeded pseudo-random
//!   calls of more than one row with an out-of-memory error
//!   ([`probe_core::testing::OomInjector`]), so a test can check that the back-off gives the
//!   same activations.
//! - `PROBE_GPUS_AS_CPU=1`: candle runs the plan's `cuda:N` shares on the CPU, so a run
//!   planned for a declared inventory (`--gpus`) executes its split or replicas here.

use probe_core::Result;

use crate::registry::Opened;

/// Blocks of the `mock` backend's model.
pub const MOCK_LAYERS: usize = 6;

/// The `mock` model's shape, for the planner.
///
/// # Errors
/// None in practice (a fixed, valid config).
pub fn spec() -> Result<probe_core::plan::ModelSpec> {
    let json = format!(
        r#"{{"model_type":"mock","hidden_size":32,"intermediate_size":64,"num_hidden_layers":{MOCK_LAYERS},
           "num_attention_heads":4,"vocab_size":256,"max_position_embeddings":4096}}"#
    );
    probe_core::plan::ModelSpec::from_json(&json)
}

/// The `mock` backend: a deterministic extractor and generator, no model.
///
/// # Errors
/// [`probe_core::Error::FeatureDisabled`] (`testing`) in builds without the feature.
pub(crate) fn open(model: &str) -> Result<Opened> {
    #[cfg(feature = "testing")]
    return Ok(knobs::mock(model));
    #[cfg(not(feature = "testing"))]
    {
        let _ = model;
        Err(probe_core::Error::FeatureDisabled { feature: "testing".into() })
    }
}

/// Wraps the opened model's extractor in an [`probe_core::testing::OomInjector`] when
/// `PROBE_INJECT_OOM` is set (`testing` builds only; otherwise returns `opened`).
///
/// # Errors
/// [`probe_core::Error::InvalidInput`] naming the value when it is not `SEED:PROBABILITY`.
pub(crate) fn inject(opened: Opened) -> Result<Opened> {
    #[cfg(feature = "testing")]
    return knobs::inject(opened);
    #[cfg(not(feature = "testing"))]
    Ok(opened)
}

/// `PROBE_GPUS_AS_CPU=1` in `testing` builds: the placement's GPU shares run on the CPU.
pub(crate) fn gpus_as_cpu() -> bool {
    cfg!(feature = "testing") && std::env::var("PROBE_GPUS_AS_CPU").is_ok_and(|v| v == "1")
}

#[cfg(feature = "testing")]
mod knobs {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use probe_core::testing::{MockExtractor, MockGenerator, OomInjector};
    use probe_core::{
        ActivationExtractor, ActivationRequest, Activations, Capabilities, Generation, GenerationRequest, Generator,
        ModelId, ModelInfo, Result,
    };

    use super::MOCK_LAYERS;
    use crate::registry::Opened;

    /// Hidden size of the `mock` backend's model.
    const MOCK_HIDDEN: usize = 32;

    /// Name of the out-of-memory injection variable.
    const INJECT_OOM_ENV: &str = "PROBE_INJECT_OOM";

    fn delay(var: &str) -> Duration {
        Duration::from_millis(std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    pub(super) fn mock(model: &str) -> Opened {
        Opened {
            extractor: Arc::new(SlowMock {
                inner: MockExtractor::new(model, MOCK_LAYERS, MOCK_HIDDEN),
                delay: delay("PROBE_MOCK_DELAY_MS"),
            }),
            generator: Some(Arc::new(SlowGenerator {
                inner: MockGenerator::new(model),
                delay: delay("PROBE_MOCK_GEN_DELAY_MS"),
            })),
        }
    }

    pub(super) fn inject(mut opened: Opened) -> Result<Opened> {
        let Some(spec) = std::env::var(INJECT_OOM_ENV).ok().filter(|v| !v.is_empty()) else {
            return Ok(opened);
        };
        let (seed, probability) = OomInjector::parse_spec(&spec)?;
        tracing::warn!("{INJECT_OOM_ENV}={spec}: injecting out-of-memory errors into extraction (a test setting)");
        opened.extractor = Arc::new(OomInjector::new(opened.extractor, seed, probability));
        Ok(opened)
    }

    /// The mock extractor with an optional pause per call.
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
        fn tokenize(&self, text: &str, special: probe_core::SpecialTokens) -> Result<Vec<u32>> {
            self.inner.tokenize(text, special)
        }
    }

    /// The mock generator with an optional pause per call.
    #[derive(Debug)]
    struct SlowGenerator {
        inner: MockGenerator,
        delay: Duration,
    }

    #[async_trait]
    impl Generator for SlowGenerator {
        async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.inner.generate(request).await
        }
        fn model_id(&self) -> ModelId {
            self.inner.model_id()
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
    }
}
