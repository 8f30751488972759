//! Test-only knobs of the CLI, read from the environment, for fault tests (never needed in use):
//!
//! - `PROBE_MOCK_GEN_DELAY_MS=N`: the `mock` backend's generator pauses N ms per `generate`
//!   call (one call per generation chunk), so a test can interrupt a run mid-generation
//!   (`PROBE_MOCK_DELAY_MS` does the same for the mock extractor's forward passes).
//! - `PROBE_INJECT_OOM=SEED:PROBABILITY`: every backend's extractor fails seeded pseudo-random
//!   calls of more than one row with an out-of-memory error
//!   ([`probe_core::testing::OomInjector`]), so a test can check that the back-off gives the
//!   same activations.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use probe_core::testing::{MockGenerator, OomInjector};
use probe_core::{Capabilities, Generation, GenerationRequest, Generator, ModelId, Result};

use crate::backends::Opened;

/// Name of the out-of-memory injection variable.
pub(crate) const INJECT_OOM_ENV: &str = "PROBE_INJECT_OOM";

/// The `mock` backend's generator, slowed by `PROBE_MOCK_GEN_DELAY_MS` when set.
pub(crate) fn mock_generator(model: &str) -> Arc<dyn Generator> {
    let delay = std::env::var("PROBE_MOCK_GEN_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    Arc::new(SlowGenerator { inner: MockGenerator::new(model), delay: Duration::from_millis(delay) })
}

/// Wraps the opened model's extractor in an [`OomInjector`] when `PROBE_INJECT_OOM` is set.
///
/// # Errors
/// [`probe_core::Error::InvalidInput`] naming the value when it is not `SEED:PROBABILITY`.
pub(crate) fn inject(mut opened: Opened) -> Result<Opened> {
    let Some(spec) = std::env::var(INJECT_OOM_ENV).ok().filter(|v| !v.is_empty()) else {
        return Ok(opened);
    };
    let (seed, probability) = OomInjector::parse_spec(&spec)?;
    tracing::warn!("{INJECT_OOM_ENV}={spec}: injecting out-of-memory errors into extraction (a test setting)");
    opened.extractor = Arc::new(OomInjector::new(opened.extractor, seed, probability));
    Ok(opened)
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
