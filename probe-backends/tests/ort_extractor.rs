//! The ort backend on the fixture models (PROBE_FIXTURES), exported with
//! scripts/python/export_onnx.py (PROBE_PYTHON), ONNX Runtime from ORT_DYLIB_PATH: the
//! conformance suite, every layer against transformers at `last` and `mean` on every
//! architecture, all positions, the sites of an export made with `--sites` against
//! transformers' forward hooks, the provider report, and load errors.
#![cfg(feature = "ort")]

mod tch_ort_common;

use probe_backends::ort::{OrtExtractor, OrtOptions};
use probe_core::testing::{extractor_conformance, require_service};
use probe_core::{ActivationExtractor, Error};
use tch_ort_common::{
    ARCHS, DENSE_SITES, check_all_positions, check_exported_sites, check_fidelity, export, fixtures, python, reference,
};

fn options() -> Option<OrtOptions> {
    require_service("ORT_DYLIB_PATH").map(|lib| OrtOptions::default().with_library(lib))
}

#[tokio::test]
async fn conformance_suite_passes() {
    let (Some(root), Some(py), Some(opts)) = (fixtures(), python(), options()) else { return };
    let dir = export(&root, &py, "llama", "onnx");
    let e = OrtExtractor::load(&dir, opts).expect("load");
    let (meta, _) = reference(&root, "llama");
    extractor_conformance(&e, &tch_ort_common::conformance_texts(&meta)).await;
    check_all_positions(&e, &meta.prompts).await;
}

#[tokio::test]
async fn every_layer_matches_transformers_on_every_architecture() {
    let (Some(root), Some(py), Some(opts)) = (fixtures(), python(), options()) else { return };
    let mut worst = 0f32;
    for arch in ARCHS {
        let dir = export(&root, &py, arch, "onnx");
        let e = OrtExtractor::load(&dir, opts.clone()).expect("load");
        let err = check_fidelity(&e, &root, arch).await;
        eprintln!("ort {arch}: max relative error vs transformers over every layer at last and mean: {err:.3e}");
        worst = worst.max(err);
    }
    eprintln!("ort: worst relative error {worst:.3e}");
}

#[tokio::test]
async fn reports_the_provider_and_model_info() {
    let (Some(root), Some(py), Some(opts)) = (fixtures(), python(), options()) else { return };
    let dir = export(&root, &py, "mistral", "onnx");
    let e = OrtExtractor::load(&dir, opts.with_intra_threads(1)).expect("load");
    if cfg!(feature = "cuda") {
        assert!(["CUDAExecutionProvider", "CPUExecutionProvider"].contains(&e.provider()), "{}", e.provider());
    } else {
        assert_eq!(e.provider(), "CPUExecutionProvider", "without the cuda feature the CPU provider runs");
    }
    assert!(e.library().to_string_lossy().contains("libonnxruntime"), "{}", e.library().display());
    let info = e.model_info();
    assert_eq!(info.id.id, dir.to_string_lossy());
    assert_eq!(info.id.revision.len(), 64, "a sha256: {}", info.id.revision);
    assert_eq!((info.architecture.as_str(), info.dtype.as_str()), ("mistral", "f32"));
    assert!(format!("{e:?}").contains(e.provider()), "Debug shows the provider");
}

#[tokio::test]
async fn a_folder_without_an_export_is_a_clean_error() {
    let Some(opts) = options() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let err = OrtExtractor::load(dir.path(), opts).expect_err("no export");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("export_onnx.py"), "names the script: {err}");
}

/// No mixtral: torch.onnx's dynamo exporter cannot translate transformers' grouped expert
/// matmul (`grouped_mm_fallback`), with or without `--sites`; the tch test reads its router.
#[tokio::test]
async fn exported_sites_match_transformers_hooks() {
    let (Some(root), Some(py), Some(opts)) = (fixtures(), python(), options()) else { return };
    let worst = check_exported_sites(&root, &py, "onnx", &[("llama", DENSE_SITES), ("gemma2", DENSE_SITES)], |dir| {
        OrtExtractor::load(dir, opts.clone()).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
    })
    .await;
    eprintln!("ort --sites: worst relative error {worst:.3e}");
}
