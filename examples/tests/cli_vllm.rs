//! `probe generate` and `probe sweep` with `--backend vllm` against the two real vLLM CPU servers
//! that scripts/test starts (PROBE_TEST_VLLM_URL and _URL2 serving PROBE_TEST_VLLM_MODEL); extraction
//! for the sweep runs on candle from the same folder.

#![cfg(all(feature = "vllm", feature = "candle"))]

use std::process::Command;

use probe_core::testing::require_service;

fn prompts(dir: &std::path::Path) {
    let mut s = String::new();
    for i in 0..12 {
        let (w, l) = if i % 2 == 0 { ("cat", "animal") } else { ("hammer", "tool") };
        s.push_str(&format!("{{\"id\":\"q{i}\",\"text\":\"The {w} number {i} is\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(dir.join("p.jsonl"), s).unwrap();
}

fn run(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_probe")).args(args).current_dir(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn generate_and_sweep_with_vllm_servers() {
    let (Some(url), Some(url2), Some(model)) = (
        require_service("PROBE_TEST_VLLM_URL"),
        require_service("PROBE_TEST_VLLM_URL2"),
        require_service("PROBE_TEST_VLLM_MODEL"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    prompts(d);
    let gen_args = [
        "generate",
        "--backend",
        "vllm",
        "--url",
        &url,
        "--url",
        &url2,
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--max-tokens",
        "4",
        "--out",
        "g.jsonl",
    ];
    run(d, &gen_args);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(d.join("g.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(lines[3]["id"], "q3");
    assert!(lines.iter().all(|l| l["completion"].is_string()));

    let sweep = [
        "sweep",
        "--backend",
        "vllm",
        "--url",
        &url,
        "--url",
        &url2,
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--layers",
        "0,2",
        "--max-tokens",
        "4",
        "--cache",
        "cache",
        "--out",
        "out",
        "--quiet",
    ];
    let first = run(d, &sweep);
    assert!(
        first.contains("generations: 12 generated, 0 cached · activations: 2 layers computed, 0 cached"),
        "{first}"
    );
    let second = run(d, &sweep);
    assert!(
        second.contains("generations: 0 generated, 12 cached · activations: 0 layers computed, 2 cached"),
        "{second}"
    );
}
