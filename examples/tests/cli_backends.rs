//! `probe extract --backend candle|tch|ort` on the same fixture model give the same numbers.
#![cfg(all(feature = "candle", feature = "tch", feature = "ort"))]

use std::path::{Path, PathBuf};
use std::process::Command;

use probe_core::codec::decode_tensors;
use probe_core::testing::require_service;

fn export(python: &str, script: &str, model: &Path, out: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(python)
        .arg(repo.join("scripts/python").join(script))
        .arg(model)
        .arg(out)
        .status()
        .expect("run the export script");
    assert!(status.success(), "{script} failed");
}

fn extract(backend: &str, model: &Path, input: &Path, out: &Path) -> Vec<(String, probe_core::Tensor)> {
    let o = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["extract", "--quiet", "--backend", backend, "--layers", "0,2,4", "--positions", "mean"])
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run probe");
    assert!(o.status.success(), "probe extract --backend {backend}: {}", String::from_utf8_lossy(&o.stderr));
    decode_tensors(&std::fs::read(out).expect("read output")).expect("safetensors")
}

#[test]
fn candle_tch_and_ort_agree_through_the_cli() {
    let (Some(fixtures), Some(python)) = (require_service("PROBE_FIXTURES"), require_service("PROBE_PYTHON")) else {
        return;
    };
    let model = PathBuf::from(&fixtures).join("models/llama");
    let dir = tempfile::tempdir().expect("tempdir");
    let exported = PathBuf::from(&fixtures).join("exported/llama");
    export(&python, "export_torchscript.py", &model, &exported.join("torchscript"));
    export(&python, "export_onnx.py", &model, &exported.join("onnx"));
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\":\"a\",\"text\":\"hello world\"}\n{\"id\":\"b\",\"text\":\"the cat sat on the mat\"}\n",
    )
    .expect("write input");
    let reference = extract("candle", &model, &input, &dir.path().join("candle.safetensors"));
    assert_eq!(reference.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["layer.0", "layer.2", "layer.4"]);
    for (backend, folder) in [("tch", "torchscript"), ("ort", "onnx")] {
        let got = extract(backend, &exported.join(folder), &input, &dir.path().join(format!("{backend}.safetensors")));
        for ((name, a), (_, b)) in reference.iter().zip(&got) {
            assert_eq!(a.shape, vec![2, 128], "{name}");
            assert_eq!(a.shape, b.shape, "{backend} {name}");
            let scale = a.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.data.iter().zip(&b.data).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
            assert!(err < 1e-4, "{backend} {name}: relative error {err}");
        }
    }
}
