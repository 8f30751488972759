//! The logistic probe against scikit-learn: the same activations and folds go to
//! scripts/python/sklearn_probes.py (`StandardScaler` on the training folds, then
//! `LogisticRegression(C, l1_ratio=0)`), and the mean held-out accuracy of every layer must
//! agree within 0.5 points. Needs PROBE_PYTHON (the venv's python with scikit-learn); under
//! `PROBE_REQUIRE_SERVICES=1` (scripts/test) a missing python fails the test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use probe_core::Tensor;
use probe_core::sweep::{ProbeConfig, Targets, evaluate_layer, stratified_folds};
use probe_core::testing::require_service;
use safetensors::tensor::{Dtype, TensorView};

/// A deterministic generator of roughly normal numbers (sum of uniforms).
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        (0..6).map(|_| self.uniform()).sum::<f32>() - 3.0
    }
}

/// Activation-like rows: a class signal of strength `signal` along a few directions, shared
/// low-rank structure, per-feature offsets and scales far from standard.
fn layer(labels: &[usize], d: usize, signal: f32, seed: u64) -> Tensor {
    let mut rng = Noise(seed);
    let rank = 4;
    let basis: Vec<f32> = (0..rank * d).map(|_| rng.normal()).collect();
    let class_dirs: Vec<f32> = (0..4 * d).map(|_| rng.normal() * signal).collect();
    let offsets: Vec<f32> = (0..d).map(|_| rng.normal() * 5.0).collect();
    let scales: Vec<f32> = (0..d).map(|_| 0.1 + rng.uniform() * 10.0).collect();
    let mut data = Vec::with_capacity(labels.len() * d);
    for &y in labels {
        let z: Vec<f32> = (0..rank).map(|_| rng.normal()).collect();
        for j in 0..d {
            let shared: f32 = (0..rank).map(|r| z[r] * basis[r * d + j]).sum();
            let v = shared + class_dirs[y * d + j] + rng.normal() * 2.0;
            data.push(offsets[j] + scales[j] * v);
        }
    }
    Tensor::new(vec![labels.len(), d], data)
}

fn write_inputs(dir: &Path, layers: &BTreeMap<usize, Tensor>, labels: &[usize], folds: &[usize], c: f64) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = layers
        .iter()
        .map(|(l, t)| (format!("layer_{l}"), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(name, b, shape)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &dir.join("activations.safetensors")).unwrap();
    let meta = serde_json::json!({ "labels": labels, "folds": folds, "c": c });
    std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("probe-sklearn-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs both on the same layers and folds; returns (ours, sklearn's) per layer.
fn compare(python: &str, name: &str, labels: Vec<usize>, n_classes: usize, layers: BTreeMap<usize, Tensor>, c: f64) {
    let dir = scratch(name);
    let targets = Targets::Classes { labels: labels.clone(), n_classes };
    let config = ProbeConfig::default().with_c(c);
    let folds = stratified_folds(&targets.strata(config.folds), config.folds, 11).unwrap();
    write_inputs(&dir, &layers, &labels, &folds, c);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/sklearn_probes.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir.join("activations.safetensors"))
        .arg(dir.join("meta.json"))
        .output()
        .expect("start PROBE_PYTHON");
    assert!(out.status.success(), "sklearn_probes.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let reference: BTreeMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();
    for (l, x) in &layers {
        let ours = evaluate_layer(*l, x, &targets, &folds, &config).unwrap().accuracy;
        let theirs = reference[&l.to_string()];
        eprintln!("{name} layer {l}: ours {ours:.4}, scikit-learn {theirs:.4}");
        assert!((ours - theirs).abs() <= 0.005, "{name} layer {l}: ours {ours}, scikit-learn {theirs}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn logistic_probe_matches_scikit_learn() {
    let Some(python) = require_service("PROBE_PYTHON") else { return };
    let binary: Vec<usize> = (0..150).map(|i| usize::from(i % 3 == 0)).collect();
    let layers = BTreeMap::from([
        (0, layer(&binary, 24, 0.15, 1)), // weak signal: many borderline rows
        (1, layer(&binary, 64, 0.35, 2)),
        (2, layer(&binary, 300, 0.2, 3)), // more features than rows
    ]);
    compare(&python, "binary", binary, 2, layers, 1.0);

    let three: Vec<usize> = (0..120).map(|i| i % 3).collect();
    let layers = BTreeMap::from([(4, layer(&three, 16, 0.6, 4)), (5, layer(&three, 48, 0.5, 5))]);
    compare(&python, "multinomial", three, 3, layers, 0.1);
}
