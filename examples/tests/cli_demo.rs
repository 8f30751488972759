//! `probe demo` end to end on candle: makes the fixture model and prompts in a temporary
//! folder, sweeps, and reruns entirely from the cache.

#![cfg(feature = "candle")]

use std::process::Command;

#[test]
fn demo_runs_then_reruns_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let dir_s = dir.display().to_string();
    let args = ["demo", "--dir", &dir_s, "--prompts", "200", "--max-tokens", "3", "--quiet"];
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_probe")).args(args).env_remove("RUST_LOG").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "demo failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let first = run();
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "prompts.jsonl",
        "out/report.json",
        "out/report.md",
        "out/accuracy.svg",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing; stdout: {first}");
    }
    assert!(
        first.contains("generations: 200 generated, 0 cached · activations: 7 layers computed, 0 cached"),
        "{first}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap()).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 7, "layers 0..=6");
    let best = layers.iter().map(|l| l["accuracy"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(best >= 0.7, "the label is linearly readable at some layer: {layers:?}");

    let second = run();
    assert!(
        second.contains("generations: 0 generated, 200 cached · activations: 0 layers computed, 7 cached"),
        "{second}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(again["layers"], report["layers"]);
}
