//! OomBackoff: retries smaller on OutOfMemory, loses nothing, repeats nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use probe_core::plan::OomBackoff;
use probe_core::testing::{MockExtractor, extractor_conformance};
use probe_core::{ActivationExtractor, ActivationRequest, Error, Positions};

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| (0..=(i % 5)).map(|j| format!("w{i}_{j}")).collect::<Vec<_>>().join(" ")).collect()
}

#[tokio::test]
async fn retries_smaller_and_matches_the_no_oom_run() {
    for positions in [Positions::Last, Positions::Mean, Positions::All] {
        let req = ActivationRequest::texts(texts(23), vec![0, 2, 4]).with_positions(positions).with_batch_size(16);
        let reference = MockExtractor::new("m", 4, 8).extract(req.clone()).await.unwrap();
        let cleared = Arc::new(AtomicUsize::new(0));
        let c = cleared.clone();
        let wrapped =
            OomBackoff::new(MockExtractor::new("m", 4, 8).with_oom_above(5)).with_clear_cache(Arc::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }));
        let got = wrapped.extract(req.clone()).await.unwrap();
        assert_eq!(got, reference, "{positions}: results equal the run that never ran out of memory");
        // 16 → 14 → 12 → 10 → 9 → 8 → 7 → 6 → 5 (×0.9, at least one less each time).
        assert_eq!(wrapped.retries(), 8);
        assert_eq!(wrapped.current_batch_size(), 5);
        assert_eq!(cleared.load(Ordering::SeqCst), 8, "the cache is cleared between tries");
        assert_eq!(wrapped.inner().rows(), 23, "every input ran exactly once after it succeeded");
        assert_eq!(wrapped.inner().passes(), 5, "⌈23 / 5⌉ batches");
        // The size that worked is kept: no new failure on the next call.
        let again = wrapped.extract(req).await.unwrap();
        assert_eq!(again, reference);
        assert_eq!(wrapped.retries(), 8);
    }
}

#[tokio::test]
async fn halving_when_asked() {
    let req = ActivationRequest::texts(texts(10), vec![1]).with_batch_size(16);
    let wrapped = OomBackoff::new(MockExtractor::new("m", 2, 4).with_oom_above(3)).with_factor(0.5).unwrap();
    wrapped.extract(req).await.unwrap();
    // 10 → 5 → 2.
    assert_eq!((wrapped.retries(), wrapped.current_batch_size()), (2, 2));
    assert!(OomBackoff::new(MockExtractor::new("m", 2, 4)).with_factor(1.0).is_err());
    assert!(OomBackoff::new(MockExtractor::new("m", 2, 4)).with_factor(0.0).is_err());
}

#[tokio::test]
async fn fails_at_the_floor_quoting_the_plan() {
    let wrapped = OomBackoff::new(MockExtractor::new("m", 2, 4).with_oom_above(0))
        .with_plan_note("extraction batch 8 × 1024 tokens on GPU 0");
    let err = wrapped.extract(ActivationRequest::texts(texts(4), vec![1])).await.unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("batch size 1") && msg.contains("extraction batch 8 × 1024 tokens on GPU 0"), "{msg}");
    assert_eq!(wrapped.inner().rows(), 0);
    // A higher floor stops earlier.
    let wrapped = OomBackoff::new(MockExtractor::new("m", 2, 4).with_oom_above(2)).with_floor(4);
    let err = wrapped.extract(ActivationRequest::texts(texts(8), vec![1])).await.unwrap_err();
    assert!(err.to_string().contains("batch size 4"), "{err}");
}

#[tokio::test]
async fn other_errors_are_not_retried() {
    let wrapped = OomBackoff::new(MockExtractor::new("m", 2, 4).with_oom_above(1));
    let err = wrapped.extract(ActivationRequest::texts(texts(4), vec![3])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_eq!(wrapped.retries(), 0);
}

#[tokio::test]
async fn a_planned_start_is_a_ceiling() {
    let wrapped = OomBackoff::new(MockExtractor::new("m", 2, 4)).with_start(3);
    wrapped.extract(ActivationRequest::texts(texts(10), vec![1]).with_batch_size(8)).await.unwrap();
    assert_eq!(wrapped.inner().passes(), 4, "batches of 3");
}

#[tokio::test]
async fn passes_the_extractor_conformance_suite() {
    let texts = ["the cat sat", "a dog", "one two three four five six"];
    extractor_conformance(&OomBackoff::new(MockExtractor::new("m", 4, 16).with_oom_above(1)), &texts).await;
    extractor_conformance(&OomBackoff::new(MockExtractor::new("m", 4, 16)), &texts).await;
}
