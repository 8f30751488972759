//! The library as another Rust program uses it: `examples/sweep.rs` (a layer sweep through
//! `Session`, the public API only), compiled into this test, gives exactly the accuracies of `probe sweep` with the same
//! settings on the fixture Llama (PROBE_FIXTURES, made by scripts/test).
//!
//! (A crate outside the workspace with path dependencies compiles the same program, but its
//! own build of candle and the rest took over 12 minutes on CI's 2 cores: the example's
//! source, compiled into this test, stands in for it.)

use std::path::{Path, PathBuf};
use std::process::Command;

use probe_core::testing::require_service;

fn write_prompts(path: &Path) {
    let mut s = String::new();
    for i in 0..24 {
        let (w, l) = if i % 2 == 0 {
            (["apple", "pear", "plum"][i % 3], "fruit")
        } else {
            (["iron", "tin", "zinc"][i % 3], "metal")
        };
        s.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"item {i} is {w}\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(path, s).unwrap();
}

/// The example's source, compiled here as it is there.
#[path = "../sweep.rs"]
mod sweep_example;

#[tokio::test(flavor = "multi_thread")]
async fn a_program_outside_the_workspace_sweeps_like_the_command() {
    let Some(fixtures) = require_service("PROBE_FIXTURES") else { return };
    let model = PathBuf::from(fixtures).join("models/llama");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"));
    let from_library = sweep_example::sweep(
        &model.display().to_string(),
        &d.join("prompts.jsonl").display().to_string(),
        &format!("file://{}", d.join("lib-cache").display()),
        probe_backends::session::Settings::default(),
    )
    .await
    .unwrap();
    let from_library: Vec<(u64, f64)> = from_library.into_iter().map(|(l, a)| (l as u64, a)).collect();

    let cli = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["sweep", "--model"])
        .arg(&model)
        .args(["--prompts", "prompts.jsonl", "--layers", "all", "--max-tokens", "5", "--temperature", "0"])
        .args(["--seed", "5", "--cache", "cli-cache", "--out", "out", "--quiet"])
        .current_dir(d)
        .env_remove("PROBE_CACHE")
        .output()
        .unwrap();
    assert!(cli.status.success(), "probe sweep failed: {}", String::from_utf8_lossy(&cli.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out/report.json")).unwrap()).unwrap();
    let from_cli: Vec<(u64, f64)> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["layer"].as_u64().unwrap(), l["accuracy"].as_f64().unwrap()))
        .collect();
    assert!(!from_cli.is_empty(), "{report}");
    assert_eq!(from_library, from_cli, "the library's sweep and the command's, layer by layer");
}
