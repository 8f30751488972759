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

/// The `layer.<L>` tensors of a `probe extract` file.
fn layers_of(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The two tests on the server that writes hidden states compare its folder before and after:
/// one at a time, or each would see the other's files in flight.
static HIDDEN_STATES_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn files(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// `--extractor vllm` / `probe extract --backend vllm` against the server that writes hidden
/// states (PROBE_TEST_VLLM_URL3): the same values as candle, the sweep's completions generated
/// there with the prompt's last token read from the generation pass, every file deleted.
#[test]
fn extract_and_sweep_on_the_server_that_writes_hidden_states() {
    let (Some(url), Some(model), Some(hs)) = (
        require_service("PROBE_TEST_VLLM_URL3"),
        require_service("PROBE_TEST_VLLM_MODEL"),
        require_service("PROBE_TEST_VLLM_HIDDEN_STATES"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    prompts(d);
    let _alone = HIDDEN_STATES_SERVER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = files(std::path::Path::new(&hs));
    let extract = |backend: &str, out: &str| {
        let mut args = vec!["extract", "--backend", backend, "--model", &model, "--input", "p.jsonl"];
        args.extend(["--layers", "all", "--positions", "mean", "--out", out]);
        if backend == "vllm" {
            args.extend(["--url", &url]);
        }
        run(d, &args);
        layers_of(&d.join(out))
    };
    let (by_vllm, by_candle) = (extract("vllm", "v.safetensors"), extract("candle", "c.safetensors"));
    assert_eq!(by_vllm.len(), by_candle.len());
    for ((name, v), (_, c)) in by_vllm.iter().zip(&by_candle) {
        let err = v.iter().zip(c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
            / c.iter().map(|b| b.abs()).fold(0f32, f32::max);
        assert!(err <= 1e-4, "{name}: max relative error vllm vs candle {err:e}");
    }

    let mut sweep = vec!["sweep", "--backend", "vllm", "--extractor", "vllm", "--url", &url, "--model", &model];
    sweep.extend(["--prompts", "p.jsonl", "--layers", "all", "--positions", "last-prompt", "--max-tokens", "4"]);
    sweep.extend(["--cache", "cache", "--out", "out", "--quiet"]);
    let first = run(d, &sweep);
    assert!(first.contains("generations: 12 generated, 0 cached"), "{first}");
    assert!(first.contains("12 inputs read from the generation pass, 0 extra passes"), "{first}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(
        report["summary"]["pass_reuse"],
        serde_json::json!({"reused": 12, "extra_passes": 0, "extra_pass_tokens": 0, "extra_pass_cached_tokens": 0}),
        "{report:#}"
    );
    let left: Vec<_> = files(std::path::Path::new(&hs)).difference(&before).cloned().collect();
    assert!(left.is_empty(), "files left in {hs}: {left:?}");
}

/// `a` and `b` equal, numbers within `tol` (relative to the larger, at least 1).
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= tol * x.abs().max(y.abs()).max(1.0), "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                assert_close(p, q, tol, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{at}: keys");
            for (k, p) in x {
                assert_close(p, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// A report.json without its `memory` and `summary.pass_reuse` (measured per run; a merge runs
/// no model).
fn unmeasured(path: &std::path::Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("memory");
    v["summary"].as_object_mut().unwrap().remove("pass_reuse");
    v
}

/// Issue 29: sharded sweeps with the vLLM extractor on the server that writes hidden states
/// (PROBE_TEST_VLLM_URL3): the shards (`run_shards` runs them in `d`, the cache `shared`, the
/// merged report in `merged/`), then a single worker, give the same report (the activations of
/// one input do not depend on what else the server batched with it beyond float rounding:
/// numbers within 1e-5), and no file is left in the server's folder.
fn vllm_shards_equal_a_single_worker(run_shards: impl FnOnce(&std::path::Path, &dyn Fn(&str, &str) -> Vec<String>)) {
    let (Some(url), Some(model), Some(hs)) = (
        require_service("PROBE_TEST_VLLM_URL3"),
        require_service("PROBE_TEST_VLLM_MODEL"),
        require_service("PROBE_TEST_VLLM_HIDDEN_STATES"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut s = String::new();
    for i in 0..40 {
        let (w, l) = if i % 2 == 0 { ("cat", "animal") } else { ("hammer", "tool") };
        s.push_str(&format!("{{\"id\":\"q{i}\",\"text\":\"The {w} number {i} is\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(d.join("p.jsonl"), s).unwrap();
    let _alone = HIDDEN_STATES_SERVER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let before = files(std::path::Path::new(&hs));
    let args = |cache: &str, out: &str| -> Vec<String> {
        let flags = ["--backend", "vllm", "--extractor", "vllm", "--url", &url, "--model", &model, "--prompts"];
        let more = ["p.jsonl", "--layers", "1,4", "--positions", "mean", "--no-generate", "--quiet", "--cache"];
        flags.iter().chain(&more).chain(&[cache, "--out", out]).map(|s| (*s).to_owned()).collect()
    };
    run_shards(d, &args);
    let mut single = vec!["sweep".to_owned()];
    single.extend(args("alone", "single"));
    run(d, &single.iter().map(String::as_str).collect::<Vec<_>>());
    let (m, s) = (unmeasured(&d.join("merged/report.json")), unmeasured(&d.join("single/report.json")));
    assert_close(&m, &s, 1e-5, "report");
    assert_eq!(files(std::path::Path::new(&hs)), before, "no file left in the server's folder");
}

/// `cmd`, then `rest`, then `more`.
fn command(cmd: &str, rest: Vec<String>, more: &[&str]) -> Vec<String> {
    let mut v = vec![cmd.to_owned()];
    v.extend(rest);
    v.extend(more.iter().map(|s| (*s).to_owned()));
    v
}

/// Issue 29: `--shard 1/2`, `--shard 2/2`, then `probe merge`.
#[test]
fn vllm_extractor_shards_merge_to_the_single_worker_report() {
    vllm_shards_equal_a_single_worker(|d, args| {
        for k in ["1/2", "2/2"] {
            let a = command("sweep", args("shared", "unused"), &["--shard", k]);
            let out = run(d, &a.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.contains(&format!("shard {k}")), "{out}");
        }
        let merge = command("merge", args("shared", "merged"), &["--shards", "2"]);
        run(d, &merge.iter().map(String::as_str).collect::<Vec<_>>());
    });
}

/// Issue 29: `--shards 2 --submit slurm --wait` on the real single-node SLURM that scripts/test
/// starts (PROBE_TEST_SLURM): each array task runs its shard on the server, the merge job merges.
#[test]
fn vllm_extractor_shards_as_a_slurm_array() {
    if require_service("PROBE_TEST_SLURM").is_none() {
        return;
    }
    vllm_shards_equal_a_single_worker(|d, args| {
        let a = command("sweep", args("shared", "merged"), &["--shards", "2", "--submit", "slurm", "--wait"]);
        let out = run(d, &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.contains("submitted shards 1-2 of 2"), "{out}");
        assert!(out.contains("COMPLETED (exit 0)"), "the merge job completed: {out}");
    });
}

/// `probe vllm-args` prints a hand-started server's flags for the asked layers and writes
/// probe's connector package; a layer the model lacks is refused.
#[test]
fn vllm_args_prints_the_flags_for_the_asked_layers_and_writes_the_connector() {
    let Some(model) = require_service("PROBE_TEST_VLLM_MODEL") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["vllm-args", "--model", &model, "--layers", "4,1", "--hidden-states-dir", "hs", "--python-dir", "py"])
        .current_dir(d)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for want in [r#""eagle_aux_hidden_state_layer_ids":[1,4]"#, "ProbeHiddenStatesConnector", "--enable-prefix-caching"]
    {
        assert!(stdout.contains(want), "{want} in {stdout}");
    }
    assert!(stdout.contains(&format!("PYTHONPATH={}", d.join("py").display())), "{stdout}");
    assert!(d.join("py/probe_vllm/hidden_states.py").is_file(), "the connector is written");
    let bad = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["vllm-args", "--model", &model, "--layers", "9", "--hidden-states-dir", "hs", "--python-dir", "py"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}
