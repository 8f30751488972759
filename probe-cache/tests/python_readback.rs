//! Our files read back with stock Python: `scripts/python/read_cache.py` loads an activation
//! entry with `safetensors.numpy` and a generations entry with `json`, checks `meta.json`'s
//! SHA-256 with `hashlib`, and compares the values with what this test wrote.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use probe_cache::{ObjectCache, payload_file_name};
use probe_core::codec::{ACTIVATIONS_TENSOR, MASK_TENSOR, encode_generations, encode_tensors};
use probe_core::testing::require_service;
use probe_core::{CacheKey, CacheStore, EntryKind, FinishReason, Generation, PutRequest, Tensor};
use serde_json::json;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/read_cache.py")
}

fn run(python: &str, root: &Path, expected: &Path) -> std::process::Output {
    Command::new(python).arg(script()).arg(root).arg(expected).output().expect("run python")
}

#[tokio::test]
async fn python_reads_our_entries_with_stock_libraries() {
    let Some(python) = require_service("PROBE_PYTHON") else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = ObjectCache::open(root.to_str().unwrap()).unwrap();

    let acts = Tensor::new(vec![3, 4], (0..12).map(|i| (i as f32 * 0.7).sin() * 10f32.powi(i % 5 - 2)).collect());
    let mask = Tensor::new(vec![3, 2], vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    let bytes = encode_tensors(&[(ACTIVATIONS_TENSOR, &acts), (MASK_TENSOR, &mask)], None).unwrap();
    let akey = CacheKey::new(EntryKind::Activations, "/models/tiny-llama", "50/50", Some(3), "acts");
    cache.put(PutRequest::new(akey.clone(), bytes).with_attr("layer", "3")).await.unwrap();

    let gens = vec![
        Generation::new(0, 0, "Is ice cold?", " yes, \"very\"\n", FinishReason::Stop, Some(vec![5, 17, 2])),
        Generation::new(1, 0, "Zürich — 2+2?", " 4 ✓", FinishReason::Length, None),
    ];
    let gkey = CacheKey::new(EntryKind::Generations, "/models/tiny-llama", "50/50", None, "gens");
    cache.put(PutRequest::new(gkey.clone(), encode_generations(&gens))).await.unwrap();

    let expected = json!({"entries": [
        {"key": akey.path(), "tensors": {
            ACTIVATIONS_TENSOR: {"shape": acts.shape, "values": acts.data},
            MASK_TENSOR: {"shape": mask.shape, "values": mask.data},
        }},
        {"key": gkey.path(), "generations": serde_json::to_value(&gens).unwrap()},
    ]});
    let expected_path = dir.path().join("expected.json");
    std::fs::write(&expected_path, serde_json::to_vec_pretty(&expected).unwrap()).unwrap();

    let out = run(&python, &root, &expected_path);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "read_cache.py failed:\n{text}");
    assert!(text.contains("2 entries read, 0 errors"), "{text}");

    // The script really checks: a wrong expected value and a flipped payload byte both fail it.
    let mut wrong = expected.clone();
    wrong["entries"][0]["tensors"][ACTIVATIONS_TENSOR]["values"][5] = json!(123.5);
    std::fs::write(&expected_path, serde_json::to_vec(&wrong).unwrap()).unwrap();
    assert!(!run(&python, &root, &expected_path).status.success(), "a wrong value is caught");

    std::fs::write(&expected_path, serde_json::to_vec(&expected).unwrap()).unwrap();
    let entry = probe_core::CacheStoreExt::get_key(&cache, &gkey).await.unwrap().unwrap();
    let payload = root.join(gkey.path()).join(payload_file_name(&entry.meta).unwrap());
    let mut raw = std::fs::read(&payload).unwrap();
    raw[3] ^= 0x20;
    std::fs::write(&payload, raw).unwrap();
    let out = run(&python, &root, &expected_path);
    assert!(!out.status.success(), "a corrupt payload is caught");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"), "{}", String::from_utf8_lossy(&out.stderr));
}
