//! The library as another Rust program uses it: `examples/sweep.rs` (a layer sweep through
//! `Session`, the public API only) built as its own crate outside the workspace, against path
//! dependencies, gives exactly the accuracies of `probe sweep` with the same settings on the
//! fixture Llama (PROBE_FIXTURES, made by scripts/test).
//!
//! The crate builds into this test's own target folder with the workspace's `Cargo.lock`, so
//! cargo reuses the dependencies the test build already compiled and builds only probe's crates
//! and the program (under a minute). Its manifest asks for the features the workspace's test
//! build turns on in a few shared dependencies: with other features, cargo would build those
//! and everything above them again.

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

/// The program's manifest: probe's crates by path, and the dependencies' features of the
/// workspace's test build (see the module's comment).
fn manifest(workspace: &Path) -> String {
    format!(
        r#"[package]
name = "outside"
version = "0.1.0"
edition = "2024"
publish = false

[[bin]]
name = "outside"
path = "{example}"

[dependencies]
probe-core = {{ path = "{ws}/probe-core" }}
probe-backends = {{ path = "{ws}/probe-backends", default-features = false, features = ["candle"] }}
tokio = {{ version = "1", features = ["rt-multi-thread", "macros", "sync", "time", "fs", "process", "signal", "io-util"] }}
serde_json = "1"
log = {{ version = "0.4", features = ["std"] }}
digest = {{ version = "0.10", features = ["std", "mac"] }}
tracing-core = "0.1"
plotters = {{ version = "0.3", default-features = false, features = ["svg_backend", "line_series", "point_series", "area_series"] }}
reqwest = {{ version = "0.13", default-features = false, features = ["json", "rustls"] }}

[profile.dev]
debug = "line-tables-only"

[profile.dev.package."*"]
opt-level = 2
debug = false

# probe's crates as the workspace builds its own members (no optimisation: builds faster).
[profile.dev.package.probe-core]
opt-level = 0
[profile.dev.package.probe-cache]
opt-level = 0
[profile.dev.package.probe-backends]
opt-level = 0

[workspace]
"#,
        ws = workspace.display(),
        example = workspace.join("examples/sweep.rs").display(),
    )
}

/// Builds the program in `dir` into this test's target folder; returns the binary.
fn build_outside(dir: &Path) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Cargo.toml"), manifest(&workspace)).unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    // …/target/debug/deps/lib_outside-<hash> → …/target
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let started = std::time::Instant::now();
    let out = Command::new(cargo)
        .args(["build", "--offline", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the outside crate did not build:\n{log}");
    let built = log.lines().filter(|l| l.trim_start().starts_with("Compiling")).count();
    eprintln!("outside crate: {built} crates compiled in {:.0?}", started.elapsed());
    target.join("debug/outside")
}

#[test]
fn a_program_outside_the_workspace_sweeps_like_the_command() {
    let Some(fixtures) = require_service("PROBE_FIXTURES") else { return };
    let model = PathBuf::from(fixtures).join("models/llama");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"));
    let program = build_outside(&d.join("outside"));
    let run = Command::new(program)
        .arg(&model)
        .arg(d.join("prompts.jsonl"))
        .arg(format!("file://{}", d.join("lib-cache").display()))
        .output()
        .unwrap();
    assert!(run.status.success(), "the outside program failed: {}", String::from_utf8_lossy(&run.stderr));
    let from_library: Vec<(u64, f64)> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["layer"].as_u64().unwrap(), v["accuracy"].as_f64().unwrap())
        })
        .collect();

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
