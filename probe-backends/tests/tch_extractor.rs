//! The tch backend on the fixture models (PROBE_FIXTURES), exported with
//! scripts/python/export_torchscript.py (PROBE_PYTHON): the conformance suite, every layer
//! against transformers at `last` and `mean` on every architecture, all positions, the sites of an
//! export made with `--sites` against transformers' forward hooks, and load errors.
#![cfg(feature = "tch")]

mod tch_ort_common;

use probe_backends::tch::{TchDevice, TchExtractor, TchOptions};
use probe_core::testing::extractor_conformance;
use probe_core::{ActivationExtractor, Error};
use tch_ort_common::{
    ARCHS, DENSE_SITES, MOE_SITES, check_all_positions, check_exported_sites, check_fidelity, export, fixtures, python,
    reference,
};

#[tokio::test]
async fn conformance_suite_passes() {
    let (Some(root), Some(py)) = (fixtures(), python()) else { return };
    let dir = export(&root, &py, "llama", "torchscript");
    let e = TchExtractor::load(&dir, TchOptions::default()).expect("load");
    let (meta, _) = reference(&root, "llama");
    extractor_conformance(&e, &tch_ort_common::conformance_texts(&meta)).await;
    check_all_positions(&e, &meta.prompts).await;
}

#[tokio::test]
async fn every_layer_matches_transformers_on_every_architecture() {
    let (Some(root), Some(py)) = (fixtures(), python()) else { return };
    let mut worst = 0f32;
    for arch in ARCHS {
        let dir = export(&root, &py, arch, "torchscript");
        let e = TchExtractor::load(&dir, TchOptions::default()).expect("load");
        let err = check_fidelity(&e, &root, arch).await;
        eprintln!("tch {arch}: max relative error vs transformers over every layer at last and mean: {err:.3e}");
        worst = worst.max(err);
    }
    eprintln!("tch: worst relative error {worst:.3e}");
}

#[tokio::test]
async fn model_info_names_the_folder_and_a_revision() {
    let (Some(root), Some(py)) = (fixtures(), python()) else { return };
    let dir = export(&root, &py, "qwen2", "torchscript");
    let e = TchExtractor::load(&dir, TchOptions::default().with_device(TchDevice::Cpu)).expect("load");
    let info = e.model_info();
    assert_eq!(info.id.id, dir.to_string_lossy());
    assert_eq!(info.id.revision.len(), 64, "a sha256: {}", info.id.revision);
    assert_eq!((info.architecture.as_str(), info.dtype.as_str()), ("qwen2", "f32"));
    assert!(info.tokenizer.starts_with("add_special_tokens=true;sha256="), "{}", info.tokenizer);
    assert_eq!(e.device(), "cpu");
    assert!(!e.cuda_available(), "with TchDevice::Cpu CUDA is not probed");
    let auto = TchExtractor::load(&dir, TchOptions::default()).expect("load");
    assert_eq!(auto.cuda_available(), tch::Cuda::is_available(), "Auto reports what libtorch sees");
    assert!(format!("{auto:?}").contains("cuda_available"), "Debug shows CUDA availability");
    let other = TchExtractor::load(&export(&root, &py, "llama", "torchscript"), TchOptions::default()).expect("load");
    assert_ne!(other.model_info().id.revision, info.id.revision, "another model, another revision");
}

#[test]
fn a_folder_without_an_export_is_a_clean_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = TchExtractor::load(dir.path(), TchOptions::default()).expect_err("no export");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("export_torchscript.py"), "names the script: {err}");
}

#[tokio::test]
async fn an_absent_cuda_device_is_device_unavailable() {
    let (Some(root), Some(py)) = (fixtures(), python()) else { return };
    let dir = export(&root, &py, "llama", "torchscript");
    let n = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    let err = TchExtractor::load(&dir, TchOptions::default().with_device(TchDevice::Cuda(n))).expect_err("no such GPU");
    assert!(matches!(err, Error::DeviceUnavailable(_)), "{err}");
}

#[tokio::test]
async fn exported_sites_match_transformers_hooks() {
    let (Some(root), Some(py)) = (fixtures(), python()) else { return };
    let worst = check_exported_sites(
        &root,
        &py,
        "torchscript",
        &[("llama", DENSE_SITES), ("gemma2", DENSE_SITES), ("mixtral", MOE_SITES)],
        |dir| TchExtractor::load(dir, TchOptions::default()).unwrap_or_else(|e| panic!("load {}: {e}", dir.display())),
    )
    .await;
    eprintln!("tch --sites: worst relative error {worst:.3e}");
}
