//! candle, tch and ort agree on the same inputs: every fixture architecture, every layer, at
//! `last`, `mean` and `all` (real positions), batched with padding. Needs PROBE_FIXTURES,
//! PROBE_PYTHON (to export the fixtures) and ORT_DYLIB_PATH.
#![cfg(all(feature = "candle", feature = "tch", feature = "ort"))]

mod tch_ort_common;

use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_backends::ort::{OrtExtractor, OrtOptions};
use probe_backends::tch::{TchExtractor, TchOptions};
use probe_core::testing::require_service;
use probe_core::{ActivationExtractor, ActivationRequest, Activations, Positions};
use tch_ort_common::{ARCHS, export, fixtures, python, reference, rel_err};

/// The values of `acts` at real positions only (for `all`, padding rows are dropped).
fn real_values(acts: &Activations, layer: usize, hidden: usize) -> Vec<f32> {
    let t = acts.layer(layer).expect("layer");
    if acts.positions != Positions::All {
        return t.data.clone();
    }
    let w = t.shape[1];
    acts.token_counts
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| t.data[i * w * hidden..(i * w + n) * hidden].to_vec())
        .collect()
}

#[tokio::test]
async fn candle_tch_and_ort_agree() {
    let (Some(root), Some(py), Some(lib)) = (fixtures(), python(), require_service("ORT_DYLIB_PATH")) else { return };
    let mut worst = (0f32, 0f32);
    for arch in ARCHS {
        let candle = CandleBackend::load(&root.join("models").join(arch), CandleOptions::default()).expect("candle");
        let tch = TchExtractor::load(&export(&root, &py, arch, "torchscript"), TchOptions::default()).expect("tch");
        let ort = OrtExtractor::load(&export(&root, &py, arch, "onnx"), OrtOptions::default().with_library(&lib))
            .expect("ort");
        let (meta, _) = reference(&root, arch);
        for e in [&tch as &dyn ActivationExtractor, &ort] {
            assert_eq!(e.model_info().tokenizer, candle.model_info().tokenizer, "{arch}: same tokenizer settings");
        }
        let layers: Vec<usize> = (0..=meta.num_layers).collect();
        for positions in [Positions::Last, Positions::Mean, Positions::All] {
            let req = ActivationRequest::texts(meta.prompts.clone(), layers.clone())
                .with_positions(positions)
                .with_batch_size(3);
            let c = candle.extract(req.clone()).await.expect("candle extract");
            let t = tch.extract(req.clone()).await.expect("tch extract");
            let o = ort.extract(req).await.expect("ort extract");
            assert_eq!(c.token_counts, t.token_counts, "{arch}: candle and tch see the same tokens");
            assert_eq!(c.token_counts, o.token_counts, "{arch}: candle and ort see the same tokens");
            for &layer in &layers {
                let cv = real_values(&c, layer, meta.hidden_size);
                let e_tch = rel_err(&real_values(&t, layer, meta.hidden_size), &cv);
                let e_ort = rel_err(&real_values(&o, layer, meta.hidden_size), &cv);
                assert!(e_tch <= 1e-4, "{arch} {positions} layer {layer}: tch vs candle {e_tch}");
                assert!(e_ort <= 1e-4, "{arch} {positions} layer {layer}: ort vs candle {e_ort}");
                worst = (worst.0.max(e_tch), worst.1.max(e_ort));
            }
        }
    }
    eprintln!("worst relative error vs candle: tch {:.3e}, ort {:.3e}", worst.0, worst.1);
}
