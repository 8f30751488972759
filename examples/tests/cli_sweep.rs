//! `probe sweep`, `extract` and `generate` end to end on the mock backend: outputs, cached
//! reruns, a superset of layers, and a run killed with SIGKILL mid-extraction.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn write_prompts(path: &Path, n: usize) {
    let a = ["apple", "pear", "plum", "fig", "kiwi"];
    let b = ["iron", "steel", "tin", "zinc", "lead"];
    let mut s = String::new();
    for i in 0..n {
        let (w, l) = if i % 2 == 0 { (a[i / 2 % 5], "fruit") } else { (b[i / 2 % 5], "metal") };
        s.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"item {i} is {w} today\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(path, s).unwrap();
}

fn probe(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("PROBE_CACHE")
        .env_remove("PROBE_MOCK_DELAY_MS")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn summary_line(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with("generations:")).unwrap_or_else(|| panic!("no summary in {stdout}"))
}

fn sweep_args<'a>(cache: &'a str, out: &'a str, layers: &'a str) -> Vec<&'a str> {
    vec![
        "sweep",
        "--model",
        "mock-model",
        "--backend",
        "mock",
        "--prompts",
        "prompts.jsonl",
        "--layers",
        layers,
        "--cache",
        cache,
        "--out",
        out,
        "--batch-size",
        "8",
        "--max-tokens",
        "4",
        "--quiet",
        "--positions",
        "mean",
    ]
}

#[test]
fn sweep_writes_reports_and_reruns_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 80);
    let first = ok(&probe(d, &sweep_args("cache", "out", "1,3,5")));
    assert_eq!(
        summary_line(&first),
        "generations: 80 generated, 0 cached · activations: 3 layers computed, 0 cached (5 batches computed, 0 cached)"
    );
    assert!(first.contains("layer  accuracy"), "{first}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (l, want) in layers.iter().zip([1, 3, 5]) {
        assert_eq!(l["layer"], want);
        assert_eq!((l["n_train"].as_u64(), l["n_test"].as_u64()), (Some(64), Some(16)));
        assert!(l["accuracy"].as_f64().unwrap() >= 0.0 && l["auc"].as_f64().unwrap() <= 1.0);
    }
    assert!(std::fs::read_to_string(d.join("out/report.md")).unwrap().contains("| layer | accuracy |"));
    assert!(std::fs::read_to_string(d.join("out/accuracy.svg")).unwrap().starts_with("<svg"));

    let second = ok(&probe(d, &sweep_args("cache", "out2", "1,3,5")));
    assert_eq!(
        summary_line(&second),
        "generations: 0 generated, 80 cached · activations: 0 layers computed, 3 cached (0 batches computed, 0 cached)"
    );
    let layers_of = |p: &str| {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join(p)).unwrap()).unwrap();
        v["layers"].clone()
    };
    assert_eq!(layers_of("out/report.json"), layers_of("out2/report.json"), "same scores from the cache");

    let third = ok(&probe(d, &sweep_args("cache", "out3", "0..=5")));
    assert!(
        summary_line(&third)
            .starts_with("generations: 0 generated, 80 cached · activations: 3 layers computed, 3 cached"),
        "{third}"
    );

    let mut no_gen = sweep_args("cache", "out4", "1");
    no_gen.push("--no-generate");
    let fourth = ok(&probe(d, &no_gen));
    assert!(
        summary_line(&fourth).starts_with("generations: off · activations: 1 layers computed, 0 cached"),
        "{fourth}"
    );
}

#[test]
fn a_sweep_killed_mid_extraction_resumes_with_the_same_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 400);
    // 25 blocks of 16 prompts, each 2 passes of 8 at 100 ms: kill after 5 committed blocks.
    let mut child = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(sweep_args("cache", "out-killed", "1,2,4"))
        .current_dir(d)
        .env("RUST_LOG", "info")
        .env("PROBE_MOCK_DELAY_MS", "100")
        .env_remove("PROBE_CACHE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut committed = 0;
    for line in stderr.lines() {
        if line.unwrap().contains("committed") {
            committed += 1;
            if committed == 5 {
                break;
            }
        }
    }
    assert_eq!(committed, 5, "the sweep reached extraction");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not finished");
    assert!(!d.join("out-killed/report.json").exists());

    let resumed = ok(&probe(d, &sweep_args("cache", "out", "1,2,4")));
    let line = summary_line(&resumed);
    assert!(
        line.starts_with("generations: 0 generated, 400 cached · activations: 3 layers computed, 0 cached ("),
        "{line}"
    );
    let counts: Vec<usize> = line
        .rsplit('(')
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let (computed, cached) = (counts[0], counts[1]);
    assert!(cached >= 5, "the blocks committed before the kill were reused: {line}");
    assert_eq!(computed + cached, 25, "{line}");

    let fresh = ok(&probe(d, &sweep_args("fresh-cache", "out-fresh", "1,2,4")));
    assert!(summary_line(&fresh).contains("(25 batches computed, 0 cached)"));
    let report = |p: &str| {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join(p)).unwrap()).unwrap();
        v["layers"].clone()
    };
    assert_eq!(report("out/report.json"), report("out-fresh/report.json"), "same report as an uninterrupted run");
}

#[test]
fn extract_writes_one_tensor_per_layer_in_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 10);
    let args = [
        "extract",
        "--model",
        "m",
        "--backend",
        "mock",
        "--input",
        "prompts.jsonl",
        "--layers",
        "3,1",
        "--positions",
        "last",
        "--batch-size",
        "3",
        "--out",
        "acts/x.safetensors",
    ];
    ok(&probe(d, &args));
    let bytes = std::fs::read(d.join("acts/x.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert_eq!(names, vec!["layer.1", "layer.3"]);
    let t = st.tensor("layer.3").unwrap();
    assert_eq!(t.shape(), &[10, 32]);
    assert_eq!(t.dtype(), safetensors::Dtype::F32);

    // Same rows as extracting the inputs one at a time.
    std::fs::write(
        d.join("one.jsonl"),
        std::fs::read_to_string(d.join("prompts.jsonl")).unwrap().lines().nth(7).unwrap(),
    )
    .unwrap();
    let args1 = [
        "extract",
        "--model",
        "m",
        "--backend",
        "mock",
        "--input",
        "one.jsonl",
        "--layers",
        "3",
        "--positions",
        "last",
        "--out",
        "one.safetensors",
    ];
    ok(&probe(d, &args1));
    let one = std::fs::read(d.join("one.safetensors")).unwrap();
    let one = safetensors::SafeTensors::deserialize(&one).unwrap();
    let row = 32 * 4;
    assert_eq!(&t.data()[7 * row..8 * row], one.tensor("layer.3").unwrap().data());
}

#[test]
fn generate_writes_json_lines_in_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 6);
    let args = [
        "generate",
        "--model",
        "m",
        "--backend",
        "mock",
        "--prompts",
        "prompts.jsonl",
        "--max-tokens",
        "3",
        "--cache",
        "gcache",
        "--out",
        "gen.jsonl",
    ];
    let stdout = ok(&probe(d, &args));
    assert!(stdout.contains("wrote 6 completions"), "{stdout}");
    let text = std::fs::read_to_string(d.join("gen.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("p{i}"));
        assert!(l["prompt"].as_str().unwrap().starts_with(&format!("item {i} ")));
        assert!(l["completion"].is_string());
        assert!(l["finish_reason"] == "length" || l["finish_reason"] == "stop");
        assert!(l["completion_token_ids"].as_array().unwrap().len() <= 3);
    }
    ok(&probe(d, &args));
    assert_eq!(std::fs::read_to_string(d.join("gen.jsonl")).unwrap(), text, "cached rerun gives the same file");
}

#[test]
fn saved_probes_applied_to_another_set_reproduce_the_sweeps_test_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 40);
    // Another set: same words, other ids and sentences.
    let other: String =
        std::fs::read_to_string(d.join("prompts.jsonl")).unwrap().replace("\"p", "\"q").replace("today", "again");
    std::fs::write(d.join("other.jsonl"), other).unwrap();
    let mut args = sweep_args("cache", "out", "1,3");
    args.extend(["--test-on", "other.jsonl"]);
    let out = ok(&probe(d, &args));
    assert!(out.contains("probes: out/probes/layer-<L>.safetensors (2 layers"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    let transfer = &report["transfer"][0];
    assert_eq!(transfer["prompt_set"], "other");
    assert_eq!(transfer["layers"].as_array().unwrap().len(), 2);
    let predicted = std::fs::read_to_string(d.join("out/predictions-other.jsonl")).unwrap();
    assert_eq!(predicted.lines().count(), 80, "40 prompts × 2 layers");
    for layer in ["1", "3"] {
        let probe_file = format!("out/probes/layer-{layer}.safetensors");
        let applied = ok(&probe(
            d,
            &[
                "apply",
                "--quiet",
                "--backend",
                "mock",
                "--model",
                "mock-model",
                "--probe",
                &probe_file,
                "--input",
                "other.jsonl",
                "--cache",
                "cache",
            ],
        ));
        let want: Vec<&str> =
            predicted.lines().filter(|l| l.contains(&format!("\"layer\":{layer},"))).collect::<Vec<_>>();
        assert_eq!(applied.lines().collect::<Vec<_>>(), want, "layer {layer}");
    }
    // The probe refuses activations of another model.
    let refused = probe(
        d,
        &[
            "apply",
            "--backend",
            "mock",
            "--model",
            "other-model",
            "--probe",
            "out/probes/layer-1.safetensors",
            "--input",
            "other.jsonl",
            "--cache",
            "cache",
        ],
    );
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("model") && err.contains("other-model"), "{err}");
}

/// The llama fixture's folder and its `config.json` (`None`: PROBE_FIXTURES is not set).
#[cfg(feature = "candle")]
fn llama_fixture() -> Option<(String, serde_json::Value)> {
    let fixtures = probe_core::testing::require_service("PROBE_FIXTURES")?;
    let model = format!("{fixtures}/models/llama");
    let cfg = serde_json::from_str(&std::fs::read_to_string(format!("{model}/config.json")).unwrap()).unwrap();
    Some((model, cfg))
}

/// `--site heads` on a candle fixture: one probe per (block, head) in `report.json` `heads[]`,
/// `heads.svg`, the top heads in `report.md`; other sites cached under their own keys; a site
/// the model lacks refused naming it.
#[cfg(feature = "candle")]
#[test]
fn sweep_site_heads_trains_a_probe_per_head() {
    let Some((model, cfg)) = llama_fixture() else { return };
    let (blocks, heads) = (cfg["num_hidden_layers"].as_u64().unwrap(), cfg["num_attention_heads"].as_u64().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 20);
    let args = |site: &'static str, out: &'static str| {
        let mut a = vec!["sweep", "--model", model.as_str(), "--prompts", "prompts.jsonl", "--layers", "all"];
        a.extend(["--cache", "cache", "--out", out, "--no-generate", "--folds", "2", "--quiet", "--site", site]);
        a
    };
    let stdout = ok(&probe(d, &args("heads", "out")));
    assert!(summary_line(&stdout).contains(&format!("{blocks} layers computed")), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["site"], "heads");
    assert_eq!(report["layers"].as_array().unwrap().len() as u64, blocks);
    let per_head = report["heads"].as_array().unwrap();
    assert_eq!(per_head.len() as u64, blocks * heads);
    for (i, h) in per_head.iter().enumerate() {
        assert_eq!((h["layer"].as_u64(), h["head"].as_u64()), (Some(i as u64 / heads), Some(i as u64 % heads)));
        assert!(h["accuracy"].as_f64().is_some() && h["ci95"].is_array() && h["selectivity"].is_number(), "{h}");
    }
    assert!(std::fs::read_to_string(d.join("out/heads.svg")).unwrap().starts_with("<svg"));
    let md = std::fs::read_to_string(d.join("out/report.md")).unwrap();
    assert!(md.contains("## Top heads") && md.contains("site `heads`"), "{md}");
    let probe_meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/probes/layer-0.json")).unwrap()).unwrap();
    assert_eq!(probe_meta["site"], "heads");

    // Another site is another cache entry; the same site again is read from the cache.
    let attn = ok(&probe(d, &args("attn_out", "out2")));
    assert!(summary_line(&attn).contains(&format!("{blocks} layers computed, 0 cached")), "{attn}");
    let again = ok(&probe(d, &args("heads", "out3")));
    assert!(summary_line(&again).contains(&format!("0 layers computed, {blocks} cached")), "{again}");

    // `probe extract --site heads`: `[n, heads, head_dim]` per block.
    let head_dim = cfg["head_dim"].as_u64().unwrap_or(cfg["hidden_size"].as_u64().unwrap() / heads);
    let mut extract = vec!["extract", "--model", model.as_str(), "--input", "prompts.jsonl", "--layers", "0,2"];
    extract.extend(["--positions", "mean", "--site", "heads", "--out", "heads.safetensors", "--quiet"]);
    ok(&probe(d, &extract));
    let bytes = std::fs::read(d.join("heads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("layer.2").unwrap().shape(), &[20, heads as usize, head_dim as usize]);

    let refused = probe(d, &args("router", "out4"));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("router"), "{err}");
}

/// `probe generate --steer-*` on a candle fixture: steered completions differ from plain ones,
/// are cached under their own key, and a sweep's report records the steering; a block out of
/// range or a vector of the wrong size is refused naming the flag.
#[cfg(feature = "candle")]
#[test]
fn generate_steers_along_a_vector_file() {
    let Some((model, cfg)) = llama_fixture() else { return };
    let (hidden, blocks) = (cfg["hidden_size"].as_u64().unwrap() as usize, cfg["num_hidden_layers"].as_u64().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 20);
    let write_vector = |name: &str, n: usize| {
        let t = probe_core::Tensor::new(vec![n], (0..n).map(|i| ((i + 1) as f32).sin()).collect());
        let bytes = probe_core::codec::encode_tensors(&[(probe_core::DIRECTION_TENSOR, &t)], None).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    write_vector("d.safetensors", hidden);
    write_vector("short.safetensors", hidden - 1);
    let generate = |out: &str, steer: &[&str]| {
        let mut a = vec!["generate", "--model", model.as_str(), "--prompts", "prompts.jsonl", "--max-tokens", "6"];
        a.extend(["--cache", "cache", "--out", out, "--quiet"]);
        a.extend(steer);
        probe(d, &a)
    };
    let ids = |out: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(d.join(out)).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["completion_token_ids"].clone())
            .collect()
    };
    ok(&generate("plain.jsonl", &[]));
    let steer = ["--steer-vector", "d.safetensors", "--steer-layer", "1", "--steer-alpha", "3"];
    ok(&generate("steered.jsonl", &steer));
    assert_ne!(ids("plain.jsonl"), ids("steered.jsonl"), "steering changes the completions");
    ok(&generate("steered2.jsonl", &steer));
    assert_eq!(ids("steered.jsonl"), ids("steered2.jsonl"));

    let blocks_s = blocks.to_string();
    let out =
        generate("bad.jsonl", &["--steer-vector", "d.safetensors", "--steer-layer", &blocks_s, "--steer-alpha", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("steer-layer") && err.contains(&blocks_s), "{err}");
    let out =
        generate("bad.jsonl", &["--steer-vector", "short.safetensors", "--steer-layer", "1", "--steer-alpha", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("steer-vector"), "{err}");

    let mut sweep = vec!["sweep", "--model", model.as_str(), "--prompts", "prompts.jsonl", "--layers", "1"];
    sweep.extend(["--cache", "cache", "--out", "out", "--max-tokens", "6", "--folds", "2", "--quiet"]);
    sweep.extend(steer);
    let stdout = ok(&probe(d, &sweep));
    assert!(summary_line(&stdout).starts_with("generations: 0 generated, 20 cached"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["steering"][0]["layer"], 1);
    assert_eq!(report["steering"][0]["alpha"], 3.0);

    // Along the direction the sweep's probe found (its layer, 1, by default).
    ok(&generate("by_probe.jsonl", &["--steer-probe", "out/probes/layer-1.safetensors", "--steer-alpha", "3"]));
    assert_ne!(ids("plain.jsonl"), ids("by_probe.jsonl"), "steering along the probe changes the completions");
    assert_ne!(ids("steered.jsonl"), ids("by_probe.jsonl"), "another direction, other completions");
}

/// The tensors of a safetensors file: name → (shape, f32 values).
#[cfg(feature = "candle")]
fn tensors(path: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(name, v)| {
            let data = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, (v.shape().to_vec(), data))
        })
        .collect()
}

/// `--site a,b` on a candle fixture. `probe extract` writes `<site>.layer.<L>` tensors equal to
/// each site extracted alone (`layer.<L>`); `probe sweep` reads every site in the same forward
/// passes (one extractor call for 20 prompts at batch 32), reports one `layers[]` entry per
/// (site, layer) naming its site, writes a plot and a probe folder per site, and caches each
/// (site, layer) under the key a one-site sweep reads (which then computes nothing and reports
/// the same scores). `--positions all` at a site inside blocks writes `[tokens, width]` shards
/// whose last tokens are `--positions last`. Repeated sites and a router on a dense model are
/// refused naming them, the router before the model is loaded to generate.
#[cfg(feature = "candle")]
#[test]
fn several_sites_are_read_in_one_pass() {
    let Some((model, cfg)) = llama_fixture() else { return };
    let blocks = cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    let (hidden, heads) = (cfg["hidden_size"].as_u64().unwrap() as usize, cfg["num_attention_heads"].as_u64().unwrap());
    let head_dim = cfg["head_dim"].as_u64().unwrap_or(hidden as u64 / heads) as usize;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 20);
    let extract = |site: &str, positions: &str, out: &str| {
        let mut a = vec!["extract", "--model", model.as_str(), "--input", "prompts.jsonl", "--layers", "0,2"];
        a.extend(["--positions", positions, "--site", site, "--out", out, "--quiet"]);
        probe(d, &a)
    };

    let stdout = ok(&extract("resid,attn_out,heads", "mean", "multi.safetensors"));
    assert!(stdout.contains("resid.layer.0") && stdout.contains("heads.layer.2"), "{stdout}");
    let multi = tensors(&d.join("multi.safetensors"));
    assert_eq!(multi.len(), 6, "{:?}", multi.keys());
    assert_eq!(multi["heads.layer.2"].0, [20, heads as usize, head_dim]);
    for site in ["resid", "attn_out", "heads"] {
        ok(&extract(site, "mean", &format!("{site}.safetensors")));
        let alone = tensors(&d.join(format!("{site}.safetensors")));
        for layer in [0, 2] {
            let (both, one) = (&multi[&format!("{site}.layer.{layer}")], &alone[&format!("layer.{layer}")]);
            assert!(both == one, "{site} layer {layer}: read with other sites, not the value read alone");
        }
    }

    // Every token at a site inside blocks; the last token of each row is `--positions last`.
    ok(&extract("attn_out", "all", "all"));
    ok(&extract("attn_out", "last", "last.safetensors"));
    let bytes = std::fs::read(d.join("all/shard-00000.safetensors")).unwrap();
    let shard = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let offsets: Vec<usize> = shard
        .tensor("row_offsets")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let (tokens, rows) = (*offsets.last().unwrap(), offsets.len() - 1);
    assert_eq!(rows, 20);
    let all = tensors(&d.join("all/shard-00000.safetensors"));
    let last = tensors(&d.join("last.safetensors"));
    for layer in [0, 2] {
        let ((shape, data), (_, want)) = (&all[&format!("layer.{layer}")], &last[&format!("layer.{layer}")]);
        assert_eq!(shape, &[tokens, hidden], "layer {layer}: [tokens, hidden]");
        for r in 0..rows {
            let at = offsets[r + 1] - 1;
            let (got, want) = (&data[at * hidden..(at + 1) * hidden], &want[r * hidden..(r + 1) * hidden]);
            let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 1e-5, "layer {layer} row {r}: the last token is {err:e} from --positions last");
        }
    }
    ok(&extract("resid,heads", "all", "all2"));
    let all2 = tensors(&d.join("all2/shard-00000.safetensors"));
    assert_eq!(all2["heads.layer.2"].0, [tokens, heads as usize, head_dim]);
    assert_eq!(all2["resid.layer.0"].0, [tokens, hidden]);

    let sweep = |site: &str, out: &str, more: &[&str]| {
        let mut a = vec!["sweep", "--model", model.as_str(), "--prompts", "prompts.jsonl", "--layers", "all"];
        a.extend(["--cache", "cache", "--out", out, "--no-generate", "--folds", "2", "--quiet", "--site", site]);
        a.extend(["--batch-size", "32"]);
        a.extend(more);
        probe(d, &a)
    };
    write_prompts(&d.join("other.jsonl"), 6);
    let stdout = ok(&sweep("resid,attn_out", "multi", &["--test-on", "other.jsonl"]));
    let computed = 2 * blocks + 1;
    assert!(summary_line(&stdout).contains(&format!("{computed} layers computed, 0 cached")), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("multi/report.json")).unwrap()).unwrap();
    assert_eq!(report["summary"]["extract_calls"], 1, "every site and layer in one pass");
    assert_eq!(report["sites"], serde_json::json!(["resid", "attn_out"]));
    let entries = report["layers"].as_array().unwrap();
    let got: Vec<(String, u64)> =
        entries.iter().map(|l| (l["site"].as_str().unwrap().to_owned(), l["layer"].as_u64().unwrap())).collect();
    let want: Vec<(String, u64)> = (0..=blocks as u64)
        .map(|l| ("resid".to_owned(), l))
        .chain((0..blocks as u64).map(|l| ("attn_out".to_owned(), l)))
        .collect();
    assert_eq!(got, want);
    for f in ["accuracy-resid.svg", "accuracy-attn_out.svg", "probes/attn_out/layer-0.json"] {
        assert!(d.join("multi").join(f).exists(), "{f}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("multi/probes/attn_out/layer-0.json")).unwrap()).unwrap();
    assert_eq!(meta["site"], "attn_out");
    assert!(std::fs::read_to_string(d.join("multi/report.md")).unwrap().contains("| attn_out.0 |"));
    // Scored on another set: each probe names its site.
    let sites: Vec<&str> = want.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(report["transfer"][0]["sites"], serde_json::json!(sites));
    let predictions = std::fs::read_to_string(d.join("multi/predictions-other.jsonl")).unwrap();
    let named = predictions.lines().filter(|l| l.contains("\"site\":\"attn_out\"")).count();
    assert_eq!(named, 6 * blocks, "{predictions}");

    // One site alone reads the multi-site sweep's entries and scores them the same.
    let stdout = ok(&sweep("attn_out", "single", &[]));
    assert!(summary_line(&stdout).contains(&format!("0 layers computed, {blocks} cached")), "{stdout}");
    let single: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("single/report.json")).unwrap()).unwrap();
    assert!(single.get("sites").is_none() && single["site"] == "attn_out", "a one-site report as before");
    let mut mine: Vec<serde_json::Value> = entries.iter().filter(|l| l["site"] == "attn_out").cloned().collect();
    mine.iter_mut().for_each(|l| drop(l.as_object_mut().unwrap().remove("site")));
    assert_eq!(&mine, single["layers"].as_array().unwrap());

    for (sites, what) in [("attn_out,resid,attn_out", "attn_out is given twice"), ("resid,router", "router")] {
        let out = sweep(sites, "bad", &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(what), "{sites}: {err}");
    }
    // A site the model lacks is refused from config.json, before anything is generated.
    let mut generating = vec!["sweep", "--model", model.as_str(), "--prompts", "prompts.jsonl", "--layers", "1"];
    generating.extend(["--cache", "fresh", "--out", "bad", "--max-tokens", "2", "--site", "resid,router"]);
    let out = probe(d, &generating);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("router: llama is not a mixture of experts"), "{err}");
    assert!(!d.join("fresh").exists(), "refused before any completion was generated and cached");
}

/// Steering along a sweep's probe moves that probe's score with α: greedy completions steered
/// along the probe of layer 1 at α = −8, 0 and 8, re-read without steering and scored by that
/// probe (`probe apply` on prompt + completion), have strictly increasing mean scores.
#[cfg(feature = "candle")]
#[test]
fn steering_along_a_probe_raises_its_score_with_alpha() {
    let Some((model, _)) = llama_fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 12);
    let mut sweep = vec!["sweep", "--model", model.as_str(), "--prompts", "prompts.jsonl", "--layers", "1"];
    sweep.extend(["--cache", "cache", "--out", "out", "--no-generate", "--folds", "2", "--quiet"]);
    ok(&probe(d, &sweep));
    let mut means = Vec::new();
    for alpha in ["-8", "0", "8"] {
        let gens = format!("gen{alpha}.jsonl");
        let mut generate = vec!["generate", "--model", model.as_str(), "--prompts", "prompts.jsonl"];
        generate.extend(["--max-tokens", "4", "--cache", "cache", "--out", &gens, "--quiet"]);
        generate.extend(["--steer-probe", "out/probes/layer-1.safetensors", "--steer-alpha", alpha]);
        ok(&probe(d, &generate));
        let texts: String = std::fs::read_to_string(d.join(&gens))
            .unwrap()
            .lines()
            .map(|l| {
                let g: serde_json::Value = serde_json::from_str(l).unwrap();
                let text = format!("{}{}", g["prompt"].as_str().unwrap(), g["completion"].as_str().unwrap());
                serde_json::json!({ "id": g["id"], "text": text }).to_string() + "\n"
            })
            .collect();
        std::fs::write(d.join("texts.jsonl"), texts).unwrap();
        let mut apply = vec!["apply", "--model", model.as_str(), "--probe", "out/probes/layer-1.safetensors"];
        apply.extend(["--input", "texts.jsonl", "--cache", "cache", "--quiet"]);
        let scores: Vec<f64> = ok(&probe(d, &apply))
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 12);
        means.push(scores.iter().sum::<f64>() / scores.len() as f64);
    }
    println!("mean probe score at α = -8, 0, 8: {means:?}");
    assert!(means[0] < means[1] && means[1] < means[2], "mean probe score at α = -8, 0, 8: {means:?}");
}

/// On candle, a sweep that generates reads the activations while generating: no extraction
/// pass, the summary line and report.json say how many inputs; a rerun and a run at another
/// batch size read everything from the cache.
#[cfg(feature = "candle")]
#[test]
fn a_candle_sweep_reads_its_activations_while_generating() {
    let Some(fixtures) = probe_core::testing::require_service("PROBE_FIXTURES") else { return };
    let model = format!("{fixtures}/models/llama");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 20);
    let run = |out: &str, batch: &str| {
        let args = [
            "sweep",
            "--model",
            &model,
            "--prompts",
            "prompts.jsonl",
            "--layers",
            "all",
            "--max-tokens",
            "4",
            "--batch-size",
            batch,
            "--cache",
            "cache",
            "--out",
            out,
        ];
        let stdout = ok(&probe(d, &args));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join(out).join("report.json")).unwrap()).unwrap();
        (summary_line(&stdout).to_owned(), report["summary"].clone())
    };
    let (line, summary) = run("out", "8");
    assert!(line.contains("20 inputs read from the generation pass, 0 extra passes"), "{line}");
    assert_eq!((summary["extract_calls"].as_u64(), summary["pass_reuse"]["reused"].as_u64()), (Some(0), Some(20)));
    for (out, batch) in [("out2", "8"), ("out3", "3")] {
        let (line, summary) = run(out, batch);
        assert!(line.starts_with("generations: 0 generated, 20 cached · activations: 0 layers computed"), "{line}");
        assert_eq!(summary["extract_calls"].as_u64(), Some(0));
    }
}
