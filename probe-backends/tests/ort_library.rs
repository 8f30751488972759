//! Loading ONNX Runtime: a missing library is a clean error (never a panic), and a failed
//! load is not remembered. Its own test binary, so no other test has loaded the library first.
#![cfg(feature = "ort")]

mod tch_ort_common;

use probe_backends::ort::{OrtExtractor, OrtOptions};
use probe_core::Error;
use probe_core::testing::require_service;
use tch_ort_common::{export, fixtures, python};

#[tokio::test]
async fn a_missing_library_is_a_clean_error_and_a_good_one_loads_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("libonnxruntime.so.1.31.1");
    let err = OrtExtractor::load(dir.path(), OrtOptions::default().with_library(&missing)).expect_err("missing");
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()) && msg.contains("ORT_DYLIB_PATH"), "{msg}");

    let not_a_library = dir.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"not a shared object").expect("write");
    let err = OrtExtractor::load(dir.path(), OrtOptions::default().with_library(&not_a_library)).expect_err("bad");
    assert!(err.to_string().contains("cannot load ONNX Runtime"), "{err}");

    let (Some(root), Some(py), Some(lib)) = (fixtures(), python(), require_service("ORT_DYLIB_PATH")) else { return };
    let export_dir = export(&root, &py, "llama", "onnx");
    let e = OrtExtractor::load(&export_dir, OrtOptions::default().with_library(&lib)).expect("a good library loads");
    assert_eq!(e.library(), std::path::Path::new(&lib));
}
