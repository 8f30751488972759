//! The plan drives the run: `probe sweep|extract|generate --dry-run --json` print the plan
//! the run would use (declared GPUs, no GPU needed) and start and write nothing; on sparse
//! copies of Qwen3-32B and gemma-3-12b-it (real config.json and safetensors headers, no
//! weights) a model that fits one GPU is placed on one, one that does not is split over two,
//! one GPU too small sends the rest to the CPU, launched servers get tensor parallelism when
//! the weights need it, and impossible runs are refused with their numbers; a sweep without
//! `--batch-size` runs with the planned size and its report.json says so.

mod sparse_checkpoint;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn probe(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("PROBE_CACHE")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap()
}

fn write_prompts(path: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let (w, l) = if i % 2 == 0 { ("apple", "fruit") } else { ("iron", "metal") };
        s.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"the item {i} is {w}\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(path, s).unwrap();
}

/// A folder with prompts and `probe.toml` declaring `cpu` of CPU memory.
fn workdir(cpu: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_prompts(&tmp.path().join("prompts.jsonl"), 40);
    std::fs::write(tmp.path().join("probe.toml"), format!("[devices]\ncpu_memory = \"{cpu}\"\n")).unwrap();
    tmp
}

/// `probe sweep --dry-run --json` on `model` with `--gpus gpus` and `extra` flags.
fn dry_sweep(dir: &Path, model: &Path, gpus: &str, extra: &[&str]) -> Output {
    let model = model.display().to_string();
    let mut args = vec![
        "sweep",
        "--model",
        &model,
        "--prompts",
        "prompts.jsonl",
        "--layers",
        "all",
        "--gpus",
        gpus,
        "--dry-run",
        "--json",
        "--cache",
        "cache",
        "--out",
        "out",
    ];
    if !extra.contains(&"--max-tokens") {
        args.extend(["--max-tokens", "64"]);
    }
    args.extend_from_slice(extra);
    probe(dir, &args)
}

/// The one JSON object a dry run prints; checks it wrote nothing.
fn plan_of(dir: &Path, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "probe failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    assert!(!dir.join("cache").exists() && !dir.join("out").exists(), "a dry run writes nothing");
    serde_json::from_str(&stdout).unwrap()
}

/// `(device, [first, last], worker)` of every placement entry.
fn placement(plan: &Value) -> Vec<(String, [u64; 2], u64)> {
    plan["extraction"]["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let l = &p["layers"];
            (
                p["device"].as_str().unwrap().to_owned(),
                [l[0].as_u64().unwrap(), l[1].as_u64().unwrap()],
                p["worker"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Refused with exit status 2, one line; the line.
fn refused(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty(), "nothing printed on stdout");
    err
}

/// Every block of a `layers`-block model, in order, exactly once per worker.
fn covers(p: &[(String, [u64; 2], u64)], layers: u64) {
    let mut next = 0;
    for (_, [first, last], _) in p {
        assert_eq!(*first, next, "{p:?}");
        next = last + 1;
    }
    assert_eq!(next, layers, "{p:?}");
}

#[test]
fn qwen3_32b_fits_one_gpu_splits_over_two_and_offloads_to_the_cpu() {
    let tmp = workdir("96GiB");
    let (d, model) = (tmp.path(), tmp.path().join("Qwen3-32B"));
    sparse_checkpoint::qwen3_32b(&model);

    let one = plan_of(d, &dry_sweep(d, &model, "1x80GiB", &[]));
    assert_eq!(placement(&one), vec![("cuda:0".to_owned(), [0, 63], 0)], "{one}");
    let e = &one["extraction"];
    assert_eq!((e["dtype"].as_str(), e["batch_size_source"].as_str()), (Some("bf16"), Some("planned")));
    assert!(e["batch_size"].as_u64().unwrap() >= 1 && e["batch_size"] == e["planned_batch_size"], "{e}");
    assert_eq!(one["model"]["params"].as_u64().unwrap() / 1_000_000, 32_762, "Qwen3-32B's 32.76 B parameters");
    assert_eq!(one["generation"]["servers"], serde_json::json!([]), "candle generates in process");

    let two = plan_of(d, &dry_sweep(d, &model, "2x40GiB", &[]));
    let p = placement(&two);
    assert_eq!(p.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["cuda:0", "cuda:1"], "{two}");
    assert!(p.iter().all(|x| x.2 == 0), "one worker, split: {p:?}");
    covers(&p, 64);

    let offload = plan_of(d, &dry_sweep(d, &model, "1x24GiB", &["--dtype", "bf16"]));
    let p = placement(&offload);
    assert_eq!(p.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["cuda:0", "cpu"], "{offload}");
    covers(&p, 64);
    assert_eq!(offload["extraction"]["cpu_offload"], true);

    // Two 80 GiB GPUs: the model fits each, so each holds a whole replica.
    let replicas = plan_of(d, &dry_sweep(d, &model, "2x80GiB", &[]));
    assert_eq!(
        placement(&replicas),
        vec![("cuda:0".to_owned(), [0, 63], 0), ("cuda:1".to_owned(), [0, 63], 1)],
        "{replicas}"
    );
}

/// Issue 28: an extraction that stops at layer 20 of Qwen3-32B loads the embedding and blocks
/// 0..20, no output head: on one 40 GiB GPU it plans no split and no offload, where a sweep that
/// generates in process (the whole model) spills to the CPU.
#[test]
fn qwen3_32b_extraction_to_layer_20_loads_20_blocks_on_one_40gib_gpu() {
    let tmp = workdir("96GiB");
    let (d, model) = (tmp.path(), tmp.path().join("Qwen3-32B"));
    sparse_checkpoint::qwen3_32b(&model);
    let m = model.display().to_string();
    let run = |extra: &[&str]| {
        let args = ["sweep", "--model", &m, "--prompts", "prompts.jsonl", "--layers", "1,10,20", "--gpus", "1x40GiB"];
        let args = [&args[..], &["--dry-run", "--json", "--cache", "cache", "--out", "out"], extra].concat();
        plan_of(d, &probe(d, &args))
    };
    let only = run(&["--no-generate"]);
    assert_eq!(placement(&only), vec![("cuda:0".to_owned(), [0, 19], 0)], "{only}");
    assert_eq!(only["extraction"]["cpu_offload"], false, "{only}");
    let whole = run(&["--max-tokens", "8"]);
    assert_eq!(whole["extraction"]["cpu_offload"], true, "{whole}");
    covers(&placement(&whole), 64);
}

#[test]
fn impossible_runs_are_refused_with_their_numbers() {
    let tmp = workdir("16GiB");
    let (d, model) = (tmp.path(), tmp.path().join("Qwen3-32B"));
    sparse_checkpoint::qwen3_32b(&model);
    let err = refused(&dry_sweep(d, &model, "1x24GiB", &[]));
    assert!(
        err.contains("weights 61.02 GiB") && err.contains("GPU 0 has") && err.contains("the CPU has 14.40 GiB"),
        "{err}"
    );
    // Not a dry run either: refused before anything is written.
    let m = model.display().to_string();
    let args = ["sweep", "--model", &m, "--prompts", "prompts.jsonl", "--layers", "1", "--gpus", "1x24GiB"];
    let args = [&args[..], &["--cache", "cache", "--out", "out"]].concat();
    refused(&probe(d, &args));
    assert!(!d.join("cache").exists() && !d.join("out").exists());
    let err = refused(&probe(d, &["sweep", "--model", &m, "--prompts", "prompts.jsonl", "--layers", "1", "--json"]));
    assert!(err.contains("--dry-run"), "{err}");
    let err = refused(&dry_sweep(d, &model, "1x80GiB", &["--dtype", "int4"]));
    assert!(err.contains("int4"), "{err}");
}

#[cfg(feature = "vllm")]
#[test]
fn launched_servers_get_tensor_parallelism_when_the_weights_need_it_and_a_long_max_tokens_is_refused() {
    let tmp = workdir("256GiB");
    let (d, model) = (tmp.path(), tmp.path().join("Qwen3-32B"));
    sparse_checkpoint::qwen3_32b(&model);
    let plan = plan_of(d, &dry_sweep(d, &model, "4x24GiB", &["--backend", "vllm"]));
    let servers = plan["generation"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{plan}");
    assert_eq!(servers[0]["gpus"], serde_json::json!([0, 1, 2, 3]));
    let args: Vec<&str> = servers[0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let at = |k: &str| args.iter().position(|a| *a == k).map(|i| args[i + 1]);
    assert_eq!(at("--tensor-parallel-size"), Some("4"), "{args:?}");
    assert!(at("--max-model-len").is_some_and(|n| n.parse::<u64>().unwrap() >= 64), "{args:?}");
    assert!(at("--max-num-seqs").is_some() && at("--gpu-memory-utilization").is_some(), "{args:?}");
    assert_eq!(plan["time_shared"], true, "the weights need every GPU for generation: {plan}");
    // 38000 new tokens: under the 40960-token context, over one 80 GiB GPU's KV cache.
    let err = refused(&dry_sweep(d, &model, "1x80GiB", &["--backend", "vllm", "--max-tokens", "38000"]));
    assert!(err.contains("--max-tokens") && err.contains("38000") && err.contains("GiB"), "{err}");
    // [vllm] keys override the plan.
    std::fs::write(d.join("probe.toml"), "[vllm]\ntensor_parallel_size = 4\nmax_num_seqs = 8\n").unwrap();
    let plan = plan_of(d, &dry_sweep(d, &model, "4x80GiB", &["--backend", "vllm"]));
    let args = plan["generation"]["servers"][0]["args"].to_string();
    assert!(args.contains(r#""--tensor-parallel-size","4""#) && args.contains(r#""--max-num-seqs","8""#), "{args}");
}

#[test]
fn gemma3_12b_it_fits_one_gpu_or_offloads_to_the_cpu() {
    let tmp = workdir("64GiB");
    let (d, model) = (tmp.path(), tmp.path().join("gemma-3-12b-it"));
    sparse_checkpoint::gemma3_12b_it(&model);
    let one = plan_of(d, &dry_sweep(d, &model, "1x40GiB", &[]));
    assert_eq!(placement(&one), vec![("cuda:0".to_owned(), [0, 47], 0)], "{one}");
    assert_eq!(one["model"]["sliding_layers"], 40, "5 of every 6 layers slide: {one}");
    let small = plan_of(d, &dry_sweep(d, &model, "1x16GiB", &[]));
    let p = placement(&small);
    assert_eq!(p.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["cuda:0", "cpu"], "{small}");
    covers(&p, 48);
    // extract and generate resolve the same plan.
    let m = model.display().to_string();
    let out = probe(
        d,
        &[
            "extract",
            "--model",
            &m,
            "--input",
            "prompts.jsonl",
            "--layers",
            "all",
            "--positions",
            "last",
            "--out",
            "out/x.safetensors",
            "--gpus",
            "1x16GiB",
            "--dry-run",
            "--json",
        ],
    );
    let extract = plan_of(d, &out);
    assert_eq!(placement(&extract)[0].0, "cuda:0");
    let out = probe(
        d,
        &[
            "generate",
            "--model",
            &m,
            "--prompts",
            "prompts.jsonl",
            "--out",
            "out/g.jsonl",
            "--gpus",
            "1x40GiB",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(plan_of(d, &out)["extraction"]["placement"][0]["device"], "cuda:0");
}

#[cfg(feature = "testing")]
#[test]
fn a_sweep_without_batch_size_runs_with_the_planned_size_and_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 150);
    let args = [
        "sweep",
        "--model",
        "mock-model",
        "--backend",
        "mock",
        "--prompts",
        "prompts.jsonl",
        "--layers",
        "1,2",
        "--cache",
        "cache",
        "--max-tokens",
        "4",
        "--quiet",
    ];
    let out = probe(d, &[&args[..], &["--out", "out"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    let e = &report["plan"]["extraction"];
    assert_eq!(e["batch_size_source"], "planned", "{e}");
    let b = e["batch_size"].as_u64().unwrap();
    assert_eq!(Some(b), e["planned_batch_size"].as_u64());
    assert_eq!(e["dtype"], "f32", "f32 on the CPU");
    // The run's forward passes had the planned size; the cache grid is blocks of 16 prompts.
    assert_eq!(report["summary"]["extract_calls"].as_u64(), Some(150u64.div_ceil(b)), "batch {b}");
    assert!(stdout.contains("(10 batches computed, 0 cached)"), "batch {b}: {stdout}");
    assert!(stdout.contains(&format!("plan: batch size {b} (planned) · dtype f32 · on cpu")), "{stdout}");
    // Memory: measured per phase on the CPU, beside the prediction.
    let cpu = &report["memory"]["devices"][0];
    assert_eq!(cpu["device"], "cpu");
    let phases: Vec<&str> = cpu["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert!(phases.contains(&"extraction") && phases.contains(&"generation"), "{phases:?}");
    let extraction = cpu["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "extraction").unwrap();
    assert!(extraction["peak_bytes"].as_u64().unwrap() >= extraction["before_bytes"].as_u64().unwrap());
    assert!(cpu["predicted_extraction_bytes"].as_u64().unwrap() > 0);
    assert!(stdout.contains("memory cpu extraction: predicted"), "{stdout}");

    // --batch-size wins, and the report says it was given.
    let given = probe(d, &[&args[..], &["--batch-size", "7", "--out", "out7"]].concat());
    assert!(given.status.success(), "{}", String::from_utf8_lossy(&given.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(d.join("out7/report.json")).unwrap()).unwrap();
    assert_eq!(report["plan"]["extraction"]["batch_size"], 7);
    assert_eq!(report["plan"]["extraction"]["batch_size_source"], "given");
}

/// The same on the candle fixture model, when the fixtures are present.
#[test]
fn candle_sweeps_with_the_planned_batch_and_dtype() {
    let Some(fixtures) = probe_core::testing::require_service("PROBE_FIXTURES") else { return };
    let model = Path::new(&fixtures).join("models/llama");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 40);
    let m = model.display().to_string();
    let out = probe(
        d,
        &[
            "sweep",
            "--model",
            &m,
            "--prompts",
            "prompts.jsonl",
            "--layers",
            "1,2",
            "--cache",
            "cache",
            "--out",
            "out",
            "--max-tokens",
            "3",
            "--quiet",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["plan"]["extraction"]["batch_size_source"], "planned");
    assert_eq!(report["plan"]["extraction"]["placement"][0]["device"], "cpu");
    // bf16 is another activation key: nothing of the f32 run is reused.
    let out = probe(
        d,
        &[
            "sweep",
            "--model",
            &m,
            "--prompts",
            "prompts.jsonl",
            "--layers",
            "1,2",
            "--cache",
            "cache",
            "--out",
            "out2",
            "--max-tokens",
            "3",
            "--quiet",
            "--dtype",
            "bf16",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("activations: 2 layers computed, 0 cached"), "{stdout}");
    assert!(stdout.contains("dtype bf16"), "{stdout}");
}

/// A sweep planned for declared GPUs runs the plan's placement (`PROBE_GPUS_AS_CPU=1`, a
/// `testing` knob, runs the `cuda:N` shares on the CPU): two data-parallel replicas on
/// `2x80GiB`, a GPU + CPU layer split on a GPU too small for the weights; each reports the
/// same per-layer accuracies as the run on the CPU alone.
#[cfg(feature = "testing")]
#[test]
fn declared_gpus_run_the_planned_replicas_and_split() {
    let Some(fixtures) = probe_core::testing::require_service("PROBE_FIXTURES") else { return };
    let m = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 40);
    let sweep = |out: &str, extra: &[&str]| -> (Value, String) {
        let mut args = vec![
            "sweep",
            "--model",
            &m,
            "--prompts",
            "prompts.jsonl",
            "--layers",
            "all",
            "--cache",
            "cache",
            "--out",
            out,
            "--max-tokens",
            "3",
            "--dtype",
            "f32",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(&args)
            .current_dir(d)
            .env("RUST_LOG", "info")
            .env("PROBE_GPUS_AS_CPU", "1")
            .env_remove("PROBE_CACHE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{out}: {stderr}");
        let report = serde_json::from_str(&std::fs::read_to_string(d.join(out).join("report.json")).unwrap()).unwrap();
        (report, stderr)
    };
    let accuracies = |r: &Value| -> Vec<f64> {
        r["layers"].as_array().unwrap().iter().map(|l| l["accuracy"].as_f64().unwrap()).collect()
    };
    let (cpu, _) = sweep("cpu", &[]);
    assert_eq!(placement(&cpu["plan"])[0].0, "cpu");

    let (replicas, log) = sweep("replicas", &["--gpus", "2x80GiB"]);
    let p = placement(&replicas["plan"]);
    assert_eq!(p.iter().map(|e| (e.0.as_str(), e.2)).collect::<Vec<_>>(), [("cuda:0", 0), ("cuda:1", 1)], "{p:?}");
    assert!(
        log.contains("candle: 2 worker(s) on cuda:0 [0..=3], cuda:1 [0..=3] (GPU shares rehearsed on the CPU)"),
        "{log}"
    );
    assert_eq!(accuracies(&replicas), accuracies(&cpu));

    // 514 MiB less the 512 MiB reserve: the embedding and some blocks on the GPU, the rest on the CPU.
    let (split, log) = sweep("split", &["--gpus", "514MiB"]);
    let p = placement(&split["plan"]);
    assert_eq!(p.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["cuda:0", "cpu"], "{p:?}");
    covers(&p, 4);
    assert!(log.contains("candle: 1 worker(s) on cuda:0 [0..="), "{log}");
    assert_eq!(accuracies(&split), accuracies(&cpu));
}
