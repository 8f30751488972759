//! Extraction throughput of the ort backend (ONNX Runtime, CPU provider) on a random Llama of the candle
//! bench's shape (8 layers, hidden 512), exported by scripts/python/export_onnx.py:
//! capturing 1 layer vs all layers, batch 16 × 128 tokens. Needs PROBE_PYTHON and ORT_DYLIB_PATH.
//!
//! `cargo bench -p probe-benches --features ort --bench ort` (tokens/s is criterion's throughput).

#[allow(dead_code, unreachable_pub)]
mod exported_model;

use criterion::{Criterion, criterion_group, criterion_main};
use exported_model::exported;
use probe_backends::ort::{OrtExtractor, OrtOptions};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(export) = exported(dir.path(), "export_onnx.py") else { return };
    let model = OrtExtractor::load(&export, OrtOptions::default()).expect("load");
    exported_model::bench_capture(c, format!("ort_extract_llama_8x512_{}", model.provider()), &model);
}

criterion_group!(benches, bench);
criterion_main!(benches);
