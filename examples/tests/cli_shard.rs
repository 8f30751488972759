//! `probe sweep --shard k/N` and `probe merge`: shards running at the same time over one
//! cache split the blocks without overlap, the merge gives the single-worker report.json,
//! missing shards are named before anything is written. The mock test runs everywhere; the
//! vLLM one needs the two real vLLM servers and the S3 server that scripts/test starts.

use std::path::Path;
use std::process::{Command, Output};

fn write_prompts(path: &Path, n: usize) {
    let a = ["cat", "dog", "horse", "mouse"];
    let b = ["hammer", "saw", "drill", "wrench"];
    let mut s = String::new();
    for i in 0..n {
        let (w, l) = if i % 2 == 0 { (a[i / 2 % 4], "animal") } else { (b[i / 2 % 4], "tool") };
        s.push_str(&format!("{{\"id\":\"q{i}\",\"text\":\"The {w} number {i} is\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(path, s).unwrap();
}

fn command(dir: &Path, args: &[String], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_probe"));
    c.args(args).current_dir(dir).env_remove("RUST_LOG").env_remove("PROBE_CACHE").env_remove("PROBE_MOCK_DELAY_MS");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn ok(args: &[String], out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs `probe sweep --shard k/N` for every k at the same time; returns each shard's stdout.
fn shards_concurrently(dir: &Path, base: &[String], count: usize, env: &[(&str, String)]) -> Vec<String> {
    let children: Vec<_> = (1..=count)
        .map(|k| {
            let mut args = base.to_vec();
            args.extend(strings(&["--shard", &format!("{k}/{count}")]));
            let child = command(dir, &args, env)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (args, child)
        })
        .collect();
    children.into_iter().map(|(args, c)| ok(&args, &c.wait_with_output().unwrap())).collect()
}

/// `(blocks, batches computed, generations generated)` from a shard's summary line.
fn shard_counts(stdout: &str) -> (Vec<usize>, usize, usize) {
    let line = stdout.lines().find(|l| l.starts_with("shard ")).unwrap_or_else(|| panic!("no shard line: {stdout}"));
    let num_before = |marker: &str| -> usize {
        let head = &line[..line.find(marker).unwrap_or_else(|| panic!("{marker:?} not in {line}"))];
        head.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
    };
    let blocks = line
        .split_once("(blocks ")
        .map(|(_, rest)| rest.split(';').next().unwrap().split(',').map(|b| b.parse().unwrap()).collect())
        .unwrap_or_default();
    (blocks, num_before(" batches computed"), num_before(" generated"))
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A report.json without its `memory` (measured per run; a merge runs no model).
fn unmeasured(dir: &Path, file: &str) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&read(dir, file)).unwrap();
    v.as_object_mut().unwrap().remove("memory");
    v
}

fn files_under(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    std::fs::read_dir(dir).unwrap().flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}

fn mock_args(cache: &str, out: &str) -> Vec<String> {
    strings(&[
        "--model",
        "mock-model",
        "--backend",
        "mock",
        "--prompts",
        "p.jsonl",
        "--layers",
        "1,3",
        "--batch-size",
        "4",
        "--max-tokens",
        "4",
        "--quiet",
        "--cache",
        cache,
        "--out",
        out,
    ])
}

fn with(first: &str, rest: Vec<String>) -> Vec<String> {
    let mut v = vec![first.to_owned()];
    v.extend(rest);
    v
}

#[test]
fn mock_shards_split_the_blocks_and_merge_to_the_single_worker_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 98); // 7 blocks of 16 (the last has 2)
    let outs = shards_concurrently(d, &with("sweep", mock_args("shared", "unused")), 3, &[]);
    let counts: Vec<_> = outs.iter().map(|o| shard_counts(o)).collect();
    assert_eq!(counts[0].0, vec![0, 3, 6]);
    assert_eq!(counts[1].0, vec![1, 4]);
    assert_eq!(counts[2].0, vec![2, 5]);
    assert_eq!(counts.iter().map(|c| c.1).sum::<usize>(), 7, "each block computed exactly once: {outs:?}");
    assert_eq!(counts.iter().map(|c| c.2).sum::<usize>(), 98, "each prompt generated exactly once: {outs:?}");
    assert!(!d.join("unused").exists(), "a shard writes no report");

    let merged = ok(&[], &command(d, &with("merge", mock_args("shared", "merged")), &[]).output().unwrap());
    assert!(merged.contains("7 batches computed"), "{merged}");
    let single = with("sweep", mock_args("alone", "single"));
    ok(&single, &command(d, &single, &[]).output().unwrap());
    assert_eq!(unmeasured(d, "merged/report.json"), unmeasured(d, "single/report.json"));

    // A plain sweep over the merged cache computes nothing.
    let again = with("sweep", mock_args("shared", "again"));
    let out = ok(&again, &command(d, &again, &[]).output().unwrap());
    assert!(out.contains("generations: 0 generated, 98 cached · activations: 0 layers computed, 2 cached"), "{out}");
}

#[test]
fn mock_merge_names_missing_shards_and_writes_nothing_then_a_plain_sweep_fills_in() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 96); // 6 blocks of 16
    let mut shard = with("sweep", mock_args("c", "o"));
    shard.extend(strings(&["--shard", "2/3"]));
    let out = ok(&shard, &command(d, &shard, &[]).output().unwrap());
    assert_eq!(shard_counts(&out).0, vec![1, 4]);
    let before = files_under(&d.join("c"));

    let mut merge = with("merge", mock_args("c", "o"));
    merge.extend(strings(&["--shards", "3"]));
    let out = command(d, &merge, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line: {err}");
    assert!(err.contains("4 of 6 blocks are missing"), "{err}");
    assert!(err.contains("block 0 (rows 0..16: generations, layers 1,3; shard 1/3)"), "{err}");
    assert!(err.contains("block 5 (rows 80..96"), "{err}");
    assert!(err.contains("run shards 1/3, 3/3"), "{err}");
    assert_eq!(files_under(&d.join("c")), before, "the failed merge wrote nothing");
    assert!(!d.join("o").exists(), "no report");

    let plain = with("sweep", mock_args("c", "o"));
    let out = ok(&plain, &command(d, &plain, &[]).output().unwrap());
    assert!(out.contains("generations: 64 generated, 32 cached"), "{out}");
    assert!(out.contains("(4 batches computed, 2 cached)"), "{out}");
}

#[test]
fn bad_shard_values_are_refused_naming_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 8);
    for bad in ["0/3", "4/3", "1/0", "a/b", "3"] {
        let mut args = with("sweep", mock_args("c", "o"));
        args.extend(strings(&["--shard", bad]));
        let out = command(d, &args, &[]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
        assert_eq!(err.lines().count(), 1, "{bad}: {err}");
    }
    let mut args = with("merge", mock_args("c", "o"));
    args.extend(strings(&["--shard", "1/2"]));
    let out = command(d, &args, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"1/2\""));
    assert!(!d.join("c").exists(), "nothing written");
}

/// Three shard processes at once against two real vLLM servers, one S3 cache; then merge.
#[cfg(all(feature = "vllm", feature = "candle"))]
#[test]
fn three_shards_on_two_vllm_servers_and_s3_merge_to_the_single_worker_report() {
    use probe_core::testing::require_service;
    let (Some(url1), Some(url2), Some(model), Some(endpoint), Some(bucket)) = (
        require_service("PROBE_TEST_VLLM_URL"),
        require_service("PROBE_TEST_VLLM_URL2"),
        require_service("PROBE_TEST_VLLM_MODEL"),
        require_service("PROBE_TEST_S3_ENDPOINT"),
        require_service("PROBE_TEST_S3_BUCKET"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 96); // 6 blocks of 16
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("s3://{bucket}/cli-shard-{}-{nanos}", std::process::id());
    let env = [("PROBE_S3_ENDPOINT", endpoint)];
    let args = |cache: &str, out: &str| {
        strings(&[
            "--backend",
            "vllm",
            "--url",
            &url1,
            "--url",
            &url2,
            "--model",
            &model,
            "--prompts",
            "p.jsonl",
            "--layers",
            "1,3",
            "--batch-size",
            "4",
            "--max-tokens",
            "4",
            "--quiet",
            "--cache",
            cache,
            "--out",
            out,
        ])
    };
    let shared = format!("{prefix}/shared");
    let outs = shards_concurrently(d, &with("sweep", args(&shared, "unused")), 3, &env);
    let counts: Vec<_> = outs.iter().map(|o| shard_counts(o)).collect();
    assert_eq!(counts.iter().map(|c| c.0.len()).collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_eq!(counts.iter().map(|c| c.1).sum::<usize>(), 6, "each block extracted exactly once: {outs:?}");
    assert_eq!(counts.iter().map(|c| c.2).sum::<usize>(), 96, "each prompt generated exactly once: {outs:?}");

    let mut merge = with("merge", args(&shared, "merged"));
    merge.extend(strings(&["--shards", "3"]));
    ok(&merge, &command(d, &merge, &env).output().unwrap());
    let alone = format!("{prefix}/alone");
    let single = with("sweep", args(&alone, "single"));
    ok(&single, &command(d, &single, &env).output().unwrap());
    assert_eq!(unmeasured(d, "merged/report.json"), unmeasured(d, "single/report.json"));
    // Same entries, byte for byte: the completions and every layer's activations.
    let endpoint = &env[0].1;
    let (a, b) = (s3_entries(&shared, endpoint), s3_entries(&alone, endpoint));
    assert_eq!(a.len(), 3, "whole-set generations + 2 layers, block entries folded: {:?}", a.keys());
    for (k, v) in &a {
        let w = b.get(k).unwrap_or_else(|| panic!("{k} is not in the single worker's cache: {:?}", b.keys()));
        if k.contains("/generations/") {
            assert_eq!(String::from_utf8_lossy(v), String::from_utf8_lossy(w), "{k}");
        } else {
            // The safetensors header's metadata map has no fixed order: compare the tensors.
            let (x, y) = (probe_core::codec::decode_tensors(v).unwrap(), probe_core::codec::decode_tensors(w).unwrap());
            assert_eq!(x.len(), 1);
            assert!(x[0].1.shape == y[0].1.shape && x[0].1.data == y[0].1.data, "{k}: activations differ");
        }
    }
}

/// Every entry of the S3 cache at `url`: key path → payload.
#[cfg(all(feature = "vllm", feature = "candle"))]
fn s3_entries(url: &str, endpoint: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    use probe_core::{CacheStore, CacheStoreExt, ListRequest};
    let cache = probe_cache::ObjectCacheBuilder::new(url).with_endpoint(endpoint).build().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = std::collections::BTreeMap::new();
        for key in cache.list(ListRequest::all()).await.unwrap() {
            let entry = cache.get_key(&key).await.unwrap().expect("listed entry reads");
            out.insert(key.path(), entry.payload.to_vec());
        }
        out
    })
}

/// Two candle shards on a fixture model, then a merge that reads only the model's identity
/// (config.json, safetensors headers, tokenizer.json): the single worker's report.
#[cfg(feature = "candle")]
#[test]
fn candle_shards_merge_without_loading_weights_to_the_single_worker_report() {
    let Some(fixtures) = probe_core::testing::require_service("PROBE_FIXTURES") else { return };
    let model = format!("{fixtures}/models/llama");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 48); // 3 blocks of 16
    let args = |cache: &str, out: &str| {
        strings(&[
            "--model",
            &model,
            "--prompts",
            "p.jsonl",
            "--layers",
            "2",
            "--batch-size",
            "4",
            "--max-tokens",
            "3",
            "--quiet",
            "--cache",
            cache,
            "--out",
            out,
        ])
    };
    let outs = shards_concurrently(d, &with("sweep", args("shared", "unused")), 2, &[]);
    assert_eq!(outs.iter().map(|o| shard_counts(o).1).sum::<usize>(), 3);
    let merge = with("merge", args("shared", "merged"));
    let out = command(d, &merge, &[]).output().unwrap();
    ok(&merge, &out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("loading"), "the merge loads no model");
    let single = with("sweep", args("alone", "single"));
    ok(&single, &command(d, &single, &[]).output().unwrap());
    // The single worker reads the states while it generates (the shards extract: their
    // counters differ); the rest of the reports is the same.
    let (mut merged, mut alone) = (unmeasured(d, "merged/report.json"), unmeasured(d, "single/report.json"));
    let counters = alone.as_object_mut().unwrap().remove("summary").unwrap();
    assert_eq!((counters["extract_calls"].as_u64(), counters["pass_reuse"]["reused"].as_u64()), (Some(0), Some(48)));
    assert!(merged.as_object_mut().unwrap().remove("summary").unwrap()["extract_calls"].as_u64() > Some(0));
    assert_eq!(merged, alone);
}
