//! Extraction throughput of the tch backend (libtorch, CPU) on a random Llama of the candle
//! bench's shape (8 layers, hidden 512), traced by scripts/python/export_torchscript.py:
//! capturing 1 layer vs all layers, batch 16 × 128 tokens. Needs PROBE_PYTHON.
//!
//! `cargo bench -p probe-benches --features tch --bench tch` (tokens/s is criterion's throughput).

#[allow(dead_code, unreachable_pub)]
mod exported_model;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use exported_model::{BATCH, LAYERS, SEQ, exported, token_ids};
use probe_backends::tch::{TchExtractor, TchOptions};
use probe_core::{ActivationExtractor, ActivationRequest};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(export) = exported(dir.path(), "export_torchscript.py") else { return };
    let model = TchExtractor::load(&export, TchOptions::default()).expect("load");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ids = token_ids();
    let mut group = c.benchmark_group(format!("tch_extract_llama_8x512_{}", model.device()));
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    for (name, layers) in [("capture_1_layer", vec![LAYERS]), ("capture_all_layers", (0..=LAYERS).collect())] {
        let req = ActivationRequest::token_ids(ids.clone(), layers).with_batch_size(BATCH);
        // extract returns after the values are copied to the host: the device is synced.
        group.bench_function(name, |b| b.iter(|| rt.block_on(model.extract(req.clone())).expect("extract")));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
