//! A layer sweep's extraction: one pass capturing 8 layers vs 8 single-layer passes (what a
//! per-layer script does). On the mock extractor always; on candle with the fixture Llama
//! when `PROBE_FIXTURES` is set (scripts/python/make_fixtures.py) and the `candle` feature is on.
//!
//! `cargo bench -p probe-benches --bench sweep`

use criterion::{Criterion, criterion_group, criterion_main};
use probe_core::sweep::{self, NoProgress};
use probe_core::testing::MockExtractor;
use probe_core::{ActivationExtractor, Positions};

const PROMPTS: usize = 64;
const BATCH: usize = 16;

fn texts() -> Vec<String> {
    (0..PROMPTS)
        .map(|i| format!("The {} animal number {i} walked to the {} river and sat down quietly.", i % 7, i % 5))
        .collect()
}

fn bench_extractor(c: &mut Criterion, name: &str, ext: &dyn ActivationExtractor) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let layers: Vec<usize> = (1..=ext.model_info().num_layers.min(8)).collect();
    let texts = texts();
    let mut group = c.benchmark_group(format!("sweep/{name}"));
    group.sample_size(10);
    group.bench_function(format!("one pass, {} layers", layers.len()), |b| {
        b.to_async(&rt).iter(|| async {
            sweep::extract_all(ext, &NoProgress, &texts, &layers, Positions::Last, BATCH).await.expect("extract")
        })
    });
    group.bench_function(format!("{} single-layer passes", layers.len()), |b| {
        b.to_async(&rt).iter(|| async {
            for &l in &layers {
                sweep::extract_all(ext, &NoProgress, &texts, &[l], Positions::Last, BATCH).await.expect("extract");
            }
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let mock = MockExtractor::new("mock", 8, 256);
    bench_extractor(c, "mock", &mock);
    #[cfg(feature = "candle")]
    if let Ok(fixtures) = std::env::var("PROBE_FIXTURES") {
        let dir = std::path::Path::new(&fixtures).join("models/llama");
        match probe_backends::candle::CandleBackend::load(&dir, probe_backends::candle::CandleOptions::default()) {
            Ok(model) => bench_extractor(c, "candle", &model),
            Err(e) => eprintln!("skipping the candle sweep bench: {e}"),
        }
    }
}

criterion_group!(sweep_benches, benches);
criterion_main!(sweep_benches);
