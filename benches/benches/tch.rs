//! Extraction throughput of the tch backend (libtorch, CPU) on a random Llama of the candle
//! bench's shape (8 layers, hidden 512), traced by scripts/python/export_torchscript.py:
//! capturing 1 layer vs all layers, batch 16 × 128 tokens. Needs PROBE_PYTHON.
//!
//! `cargo bench -p probe-benches --features tch --bench tch` (tokens/s is criterion's throughput).

#[allow(dead_code, unreachable_pub)]
mod exported_model;

use criterion::{Criterion, criterion_group, criterion_main};
use exported_model::exported;
use probe_backends::tch::{TchExtractor, TchOptions};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(export) = exported(dir.path(), "export_torchscript.py") else { return };
    let model = TchExtractor::load(&export, TchOptions::default()).expect("load");
    exported_model::bench_capture(c, format!("tch_extract_llama_8x512_{}", model.device()), &model);
}

criterion_group!(benches, bench);
criterion_main!(benches);
