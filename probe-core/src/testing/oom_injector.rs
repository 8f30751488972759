use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;

use super::fnv;
use crate::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, ModelInfo, Result, SpecialTokens,
};

/// Wraps an extractor and fails seeded pseudo-random calls with [`Error::OutOfMemory`],
/// for fault tests: the caller's out-of-memory handling must give the same activations.
///
/// Call `k` (counting every call from 0) fails when a hash of `(seed, k)` falls below
/// `probability`, and only when the call would run more than one row in a forward pass
/// (`min(batch_size, rows) > 1`): a batch of one always runs, so a back-off that shrinks
/// the batch always makes progress. The same seed and the same sequence of calls give the
/// same failures.
///
/// # Contract
/// Follows [`ActivationExtractor`]'s contract for the calls it lets through (they go to the
/// inner extractor unchanged); an injected failure does no work.
#[derive(Debug)]
pub struct OomInjector {
    inner: Arc<dyn ActivationExtractor>,
    seed: u64,
    /// `probability` scaled to `0..=u64::MAX`.
    threshold: u64,
    calls: AtomicU64,
    injected: AtomicUsize,
}

impl OomInjector {
    /// Wraps `inner`; `probability` (clamped to `0.0..=1.0`) is the chance of failing a
    /// call that runs more than one row.
    pub fn new(inner: Arc<dyn ActivationExtractor>, seed: u64, probability: f64) -> Self {
        let p = if probability.is_nan() { 0.0 } else { probability.clamp(0.0, 1.0) };
        let threshold = if p >= 1.0 { u64::MAX } else { (p * u64::MAX as f64) as u64 };
        Self { inner, seed, threshold, calls: AtomicU64::new(0), injected: AtomicUsize::new(0) }
    }

    /// Parses `"seed:probability"` (the `PROBE_INJECT_OOM` form of the CLI).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the text when it is not `u64:f64` with the
    /// probability in `0..=1`.
    pub fn parse_spec(spec: &str) -> Result<(u64, f64)> {
        let bad =
            || Error::invalid("out-of-memory injection", format!("{spec:?} (expected SEED:PROBABILITY, e.g. 7:0.3)"));
        let (seed, p) = spec.split_once(':').ok_or_else(bad)?;
        let seed: u64 = seed.trim().parse().map_err(|_| bad())?;
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=1.0).contains(&p) {
            return Err(bad());
        }
        Ok((seed, p))
    }

    /// Out-of-memory errors injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ActivationExtractor for OomInjector {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        let k = self.calls.fetch_add(1, Ordering::SeqCst);
        let n = request.inputs.len();
        let rows = request.batch_size.unwrap_or(n).min(n);
        if rows > 1 && self.threshold > 0 && fnv(&[&self.seed.to_le_bytes(), &k.to_le_bytes()]) <= self.threshold {
            self.injected.fetch_add(1, Ordering::SeqCst);
            tracing::debug!("injecting an out-of-memory error into extraction call {k} ({rows} rows)");
            return Err(Error::OutOfMemory { device: "injected".into(), requested_bytes: None });
        }
        self.inner.extract(request).await
    }

    fn model_info(&self) -> ModelInfo {
        self.inner.model_info()
    }

    fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        self.inner.tokenize(text, special)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn release_memory(&self) {
        self.inner.release_memory();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockExtractor;

    async fn pattern(seed: u64) -> Vec<bool> {
        let inner: Arc<dyn ActivationExtractor> = Arc::new(MockExtractor::new("m", 2, 4));
        let texts: Vec<String> = (0..4).map(|i| format!("w{i} x")).collect();
        let inj = OomInjector::new(inner, seed, 0.5);
        let mut pattern = Vec::new();
        for _ in 0..32 {
            let r = inj.extract(ActivationRequest::texts(texts.clone(), vec![1]).with_batch_size(4)).await;
            pattern.push(r.is_err_and(|e| e.is_out_of_memory()));
        }
        let one = inj.extract(ActivationRequest::texts(texts, vec![1]).with_batch_size(1)).await;
        assert!(one.is_ok(), "batches of one always run");
        assert_eq!(inj.injected(), pattern.iter().filter(|&&x| x).count());
        pattern
    }

    #[tokio::test]
    async fn injects_seeded_failures_only_above_one_row() {
        let a = pattern(7).await;
        assert_eq!(a, pattern(7).await, "same seed, same failures");
        assert!(a.iter().any(|&x| x) && a.iter().any(|&x| !x), "{a:?}");
        assert_ne!(a, pattern(8).await);
        assert_eq!(OomInjector::parse_spec("7:0.25").unwrap(), (7, 0.25));
        for bad in ["7", "x:0.1", "7:2", "7:-0.1", "7:nan"] {
            assert!(OomInjector::parse_spec(bad).is_err(), "{bad}");
        }
    }
}
