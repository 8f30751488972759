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

/// `--positions all` streams every token into row shards of bounded size that stock
/// numpy/safetensors read back: offsets, prompt ids, the tokenizer's ids, and each row's last
/// token equal to `--positions last` of the same inputs.
#[test]
fn all_positions_round_trip_through_stock_python_over_several_shards() {
    let (Some(fixtures), Some(python)) = (require_service("PROBE_FIXTURES"), require_service("PROBE_PYTHON")) else {
        return;
    };
    let model = PathBuf::from(&fixtures).join("models/llama");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.jsonl");
    let texts = ["hello world", "the cat sat on the mat", "a", "one two three four five six seven", "end of it"];
    let lines: String =
        texts.iter().enumerate().map(|(i, t)| format!("{{\"id\":\"r{i}\",\"text\":\"{t}\"}}\n")).collect();
    std::fs::write(&input, lines).expect("write input");
    let last = dir.path().join("last.safetensors");
    let shards = dir.path().join("all");
    for (positions, out, extra) in [("last", &last, None), ("all", &shards, Some("20000"))] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_probe"));
        cmd.args(["extract", "--quiet", "--layers", "0,2,4", "--positions", positions, "--batch-size", "2"])
            .arg("--model")
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(out);
        if let Some(bytes) = extra {
            cmd.args(["--max-shard-bytes", bytes]);
        }
        let o = cmd.output().expect("run probe");
        assert!(o.status.success(), "probe extract --positions {positions}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let check = r#"
import glob, json, sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer
folder, last_file, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = [json.loads(l)["text"] for l in open(sys.argv[5])]
tok = Tokenizer.from_file(model + "/tokenizer.json")
last = load_file(last_file)
paths = sorted(glob.glob(folder + "/shard-*.safetensors"))
assert len(paths) >= 2, paths
rows = 0
for path in paths:
    t = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    ids, offs = json.loads(meta["ids"]), t["row_offsets"]
    assert meta["positions"] == "all" and int(meta["first_row"]) == rows, meta
    assert offs.dtype == np.int64 and offs[0] == 0 and offs[-1] == len(t["token_ids"]) and len(offs) == len(ids) + 1
    for r, pid in enumerate(ids):
        assert pid == "r%d" % (rows + r)
        want = tok.encode(texts[rows + r]).ids
        assert t["token_ids"][offs[r]:offs[r + 1]].tolist() == want, (pid, want)
        for name in ("layer.0", "layer.2", "layer.4"):
            x = t[name]
            assert x.dtype == np.float32 and x.shape == (len(t["token_ids"]), last[name].shape[1])
            np.testing.assert_allclose(x[offs[r + 1] - 1], last[name][rows + r], rtol=1e-4, atol=1e-5)
    rows += len(ids)
assert rows == n, rows
print("shards", len(paths), "rows", rows)
"#;
    let o = Command::new(&python)
        .args(["-c", check])
        .arg(&shards)
        .arg(&last)
        .arg(&model)
        .arg(texts.len().to_string())
        .arg(&input)
        .output()
        .expect("run python");
    assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}
