//! `probe sweep` and `probe generate` with `--backend vllm` and no server URL: the CLI launches
//! its own servers from probe.toml (`[vllm] command` = the stand-in server
//! scripts/python/openai_stand_in.py, which records its argv, environment, pid and start/stop
//! events under STAND_IN_RECORD), time-shares the CPU with candle extraction (the servers stop
//! before extraction starts), and `--dry-run` prints the launch commands without starting
//! anything.

#![cfg(all(feature = "vllm", feature = "candle"))]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use probe_core::testing::require_service;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn prompts(dir: &Path) {
    prompts_n(dir, 12);
}

/// `n` prompts, two classes, in `p.jsonl`.
fn prompts_n(dir: &Path, n: usize) {
    let mut s = String::new();
    for i in 0..n {
        let (w, l) = if i % 2 == 0 { ("cat", "animal") } else { ("hammer", "tool") };
        s.push_str(&format!("{{\"id\":\"q{i}\",\"text\":\"The {w} number {i} is\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(dir.join("p.jsonl"), s).unwrap();
}

/// A port `p` with `p + 1` also free (the launcher gives consecutive ports).
fn two_free_ports() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

/// probe.toml launching `servers` stand-ins on the CPU from `port`.
fn config(dir: &Path, python: &str, servers: usize, port: u16) {
    let script = repo().join("scripts/python/openai_stand_in.py");
    let text = format!(
        "[vllm]\nservers = {servers}\nbase_port = {port}\nhealth_timeout_s = 120\ncommand = [{:?}, {:?}]\n",
        python,
        script.display().to_string()
    );
    std::fs::write(dir.join("probe.toml"), text).unwrap();
}

fn probe(dir: &Path, record: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .current_dir(dir)
        .env("STAND_IN_RECORD", record)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

fn ok(out: &Output, what: &str) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed ({:?}):\n{stderr}\n{stdout}", out.status);
    (stdout, stderr)
}

/// `(time, what, port)` of each line of the stand-ins' events.log.
fn events(record: &Path) -> Vec<(f64, String, u16)> {
    let text = std::fs::read_to_string(record.join("events.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

fn running(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn record_of(record: &Path, port: u16) -> Value {
    serde_json::from_str(&std::fs::read_to_string(record.join(format!("{port}.json"))).unwrap()).unwrap()
}

/// Index of the first stderr line containing `needle`.
fn line_of(stderr: &str, needle: &str) -> usize {
    stderr.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stderr}"))
}

#[test]
fn sweep_launches_servers_on_the_cpu_and_stops_them_before_extraction() {
    let (Some(python), Some(fixtures)) = (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES")) else {
        return;
    };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (d, record) = (tmp.path(), tmp.path().join("record"));
    prompts(d);
    let port = two_free_ports();
    config(d, &python, 2, port);
    let args = [
        "sweep",
        "--backend",
        "vllm",
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
    let (stdout, stderr) = ok(&probe(d, &record, &args), "first sweep");

    // Two stand-ins on the CPU at consecutive ports.
    for p in [port, port + 1] {
        let r = record_of(&record, p);
        let argv: Vec<&str> = r["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(argv[0], model, "the model folder is the positional argument: {argv:?}");
        let at = argv.iter().position(|a| *a == "--port").unwrap();
        assert_eq!(argv[at + 1], p.to_string());
        assert_eq!(r["env"]["CUDA_VISIBLE_DEVICES"], "", "no GPU visible to a CPU server");
        assert_eq!(r["env"]["VLLM_TARGET_DEVICE"], "cpu");
        let pid = r["pid"].as_u64().unwrap();
        assert!(!running(pid), "server pid {pid} still runs after the sweep");
        assert!(d.join(format!("out/vllm-logs/vllm-cpu-port{p}.log")).is_file(), "log of the server on {p}");
    }
    let ev = events(&record);
    let starts: Vec<u16> = ev.iter().filter(|e| e.1 == "start").map(|e| e.2).collect();
    let mut stops: Vec<u16> = ev.iter().filter(|e| e.1 == "stop").map(|e| e.2).collect();
    stops.sort_unstable();
    assert_eq!(starts.len(), 2, "{ev:?}");
    assert_eq!(stops, vec![port, port + 1], "each server was stopped (SIGTERM) by the launcher: {ev:?}");

    // Order: healthy → generation → both stopped → the extraction model loads.
    let healthy = line_of(&stderr, "vllm: 2 servers healthy at");
    let stopped = line_of(&stderr, "vllm: stopped 2 servers before extraction (time-shared devices)");
    let loading = line_of(&stderr, &format!("loading {model} with vllm"));
    assert!(healthy < stopped && stopped < loading, "order of the log lines:\n{stderr}");
    assert!(!stderr.contains("after the sweep"), "time-shared: nothing left to stop at the end:\n{stderr}");
    assert!(
        stdout.contains("generations: 12 generated, 0 cached · activations: 2 layers computed, 0 cached"),
        "{stdout}"
    );
    assert!(d.join("out/report.json").is_file() && d.join("out/report.md").is_file());

    // Everything cached: the rerun launches nothing.
    let (stdout, stderr) = ok(&probe(d, &record, &args), "second sweep");
    assert_eq!(events(&record).len(), ev.len(), "no server started on the rerun");
    assert!(stderr.contains("vllm: no server was launched: everything was cached"), "{stderr}");
    assert!(
        stdout.contains("generations: 0 generated, 12 cached · activations: 0 layers computed, 2 cached"),
        "{stdout}"
    );
}

#[test]
fn dry_run_prints_gpu_cycling_ports_and_utilizations_and_starts_nothing() {
    let Some(fixtures) = require_service("PROBE_FIXTURES") else { return };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    prompts(d);
    let record = d.join("record");
    std::fs::write(
        d.join("probe.toml"),
        format!(
            "[devices]\ngeneration_gpus = [0, 1]\n[vllm]\nservers = 4\nbase_port = 9300\ngpu_memory_utilization = 0.8\n\
             command = [\"python3\", {:?}]\n",
            repo().join("scripts/python/openai_stand_in.py").display().to_string()
        ),
    )
    .unwrap();
    let common = ["--backend", "vllm", "--model", &model, "--prompts", "p.jsonl", "--dry-run"];
    let sweep: Vec<&str> = ["sweep"]
        .iter()
        .chain(&common)
        .chain(&["--layers", "all", "--cache", "cache", "--out", "out"])
        .copied()
        .collect();
    let (stdout, _) = ok(&probe(d, &record, &sweep), "sweep --dry-run");
    let servers: Vec<&str> = stdout.lines().filter(|l| l.starts_with("server ")).collect();
    assert_eq!(servers.len(), 4, "{stdout}");
    for (k, line) in servers.iter().enumerate() {
        let port = 9300 + k;
        assert!(line.starts_with(&format!("server {k}: CUDA_VISIBLE_DEVICES={} ", k % 2)), "{line}");
        assert!(line.contains("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"), "{line}");
        assert!(line.contains(&format!("--port {port} --gpu-memory-utilization 0.4 ")), "2 servers per GPU: {line}");
        assert!(line.ends_with(&format!("out/vllm-logs/vllm-gpu{}-port{port}.log 2>&1", k % 2)), "{line}");
    }
    assert!(stdout.contains("generation: 4 vLLM server(s) launched on cuda:0,cuda:1"), "{stdout}");
    assert!(stdout.contains("extraction: candle in process on cpu"), "{stdout}");
    assert!(stdout.contains("time-shared: no (derived from the device sets)"), "{stdout}");
    for nothing in ["record", "cache", "out"] {
        assert!(!d.join(nothing).exists(), "a dry run created {nothing}");
    }

    let generate: Vec<&str> = ["generate"].iter().chain(&common).chain(&["--out", "g/g.jsonl"]).copied().collect();
    let (stdout, _) = ok(&probe(d, &record, &generate), "generate --dry-run");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("server ")).count(), 4, "{stdout}");
    assert!(stdout.contains("g/vllm-logs/vllm-gpu1-port9303.log"), "{stdout}");
    assert!(!d.join("record").exists() && !d.join("g").exists(), "a dry run started or wrote something");
}

/// Without `[devices]` GPU sets, a declared inventory (`--gpus`) puts the launched servers
/// where the plan puts generation, with the plan's arguments.
#[test]
fn dry_run_with_declared_gpus_launches_the_planned_servers() {
    let Some(fixtures) = require_service("PROBE_FIXTURES") else { return };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    prompts(d);
    config(d, "python3", 1, 9400);
    let args = [
        "sweep",
        "--backend",
        "vllm",
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--max-tokens",
        "8",
        "--gpus",
        "2x80GiB",
        "--layers",
        "all",
        "--dry-run",
        "--cache",
        "cache",
        "--out",
        "out",
    ];
    let (stdout, _) = ok(&probe(d, &d.join("record"), &args), "sweep --gpus --dry-run");
    assert!(stdout.contains("generation: 1 vLLM server(s) launched on cuda:0"), "{stdout}");
    assert!(stdout.contains("extraction: candle in process on cuda:1"), "{stdout}");
    let server = stdout.lines().find(|l| l.starts_with("server 0: ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(server.starts_with("server 0: CUDA_VISIBLE_DEVICES=0 "), "{server}");
    for planned in ["--max-model-len ", "--max-num-seqs ", "--gpu-memory-utilization "] {
        assert!(server.contains(planned), "the plan's {planned}: {server}");
    }
    assert!(!d.join("cache").exists() && !d.join("out").exists(), "a dry run wrote something");

    // With the vLLM extractor the plan gives every GPU to servers that generate and extract, each
    // with probe's hidden-states connector (it reduces in the server; on PYTHONPATH).
    let mut vllm = args.to_vec();
    vllm.extend(["--extractor", "vllm"]);
    let (stdout, _) = ok(&probe(d, &d.join("record"), &vllm), "sweep --extractor vllm --gpus --dry-run");
    assert!(stdout.contains("generation: 2 vLLM server(s) launched on cuda:0,cuda:1"), "{stdout}");
    assert!(stdout.contains("time-shared: no: the servers generate and extract"), "{stdout}");
    for (k, line) in stdout.lines().filter(|l| l.starts_with("server ")).enumerate() {
        assert!(line.starts_with(&format!("server {k}: CUDA_VISIBLE_DEVICES={k} ")), "{line}");
        for want in ["extract_hidden_states", "ProbeHiddenStatesConnector", "PYTHONPATH=", "--max-model-len "] {
            assert!(line.contains(want), "{want}: {line}");
        }
    }
    assert!(!d.join("cache").exists() && !d.join("out").exists(), "a dry run wrote something");
}

#[test]
fn generate_launches_a_server_writes_completions_and_stops_it() {
    let (Some(python), Some(fixtures)) = (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES")) else {
        return;
    };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (d, record) = (tmp.path(), tmp.path().join("record"));
    prompts(d);
    let port = two_free_ports();
    config(d, &python, 1, port);
    let args = [
        "generate",
        "--backend",
        "vllm",
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--max-tokens",
        "3",
        "--cache",
        "cache",
        "--out",
        "g.jsonl",
        "--quiet",
    ];
    let (stdout, stderr) = ok(&probe(d, &record, &args), "generate");
    assert!(stdout.contains("wrote 12 completions to g.jsonl"), "{stdout}");
    let lines: Vec<Value> =
        std::fs::read_to_string(d.join("g.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 12);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("q{i}"), "prompt order");
        let words: Vec<&str> = l["completion"].as_str().unwrap().split_whitespace().collect();
        assert_eq!(words.len(), 3, "the stand-in answers max_tokens words: {l}");
        assert!(words.iter().all(|w| w.starts_with('w') && w.len() == 5), "{l}");
    }
    let pid = record_of(&record, port)["pid"].as_u64().unwrap();
    assert!(!running(pid), "the server still runs after probe generate");
    let ev = events(&record);
    assert_eq!(ev.iter().map(|e| (e.1.as_str(), e.2)).collect::<Vec<_>>(), vec![("start", port), ("stop", port)]);
    assert!(stderr.contains("vllm: stopped 1 servers after generation"), "{stderr}");

    let (_, stderr) = ok(&probe(d, &record, &args), "generate again");
    assert_eq!(events(&record).len(), 2, "cached: no server started");
    assert!(stderr.contains("0 completions generated, 12 read from the cache"), "{stderr}");
}

#[test]
fn exclusive_mode_keeps_the_servers_up_until_the_sweep_ends() {
    let (Some(python), Some(fixtures)) = (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES")) else {
        return;
    };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (d, record) = (tmp.path(), tmp.path().join("record"));
    prompts(d);
    let port = two_free_ports();
    config(d, &python, 1, port);
    let mut toml = std::fs::read_to_string(d.join("probe.toml")).unwrap();
    toml.push_str("[devices]\nmode = \"exclusive\"\n");
    std::fs::write(d.join("probe.toml"), toml).unwrap();
    let args = [
        "sweep",
        "--backend",
        "vllm",
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--layers",
        "1",
        "--max-tokens",
        "2",
        "--cache",
        "cache",
        "--out",
        "out",
        "--quiet",
    ];
    let (stdout, stderr) = ok(&probe(d, &record, &args), "exclusive sweep");
    assert!(stdout.contains("generations: 12 generated, 0 cached"), "{stdout}");
    let loading = line_of(&stderr, &format!("loading {model} with vllm"));
    let stopped = line_of(&stderr, "vllm: stopped 1 servers after the sweep");
    assert!(loading < stopped, "exclusive: the server stops after extraction:\n{stderr}");
    assert!(!stderr.contains("before extraction"), "{stderr}");
    assert!(!running(record_of(&record, port)["pid"].as_u64().unwrap()));
    assert_eq!(events(&record).iter().filter(|e| e.1 == "stop").count(), 1);
}

#[test]
fn ctrl_c_during_generation_stops_the_launched_servers() {
    let (Some(python), Some(fixtures)) = (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES")) else {
        return;
    };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (d, record) = (tmp.path(), tmp.path().join("record"));
    prompts(d);
    let port = two_free_ports();
    config(d, &python, 2, port);
    let args = [
        "sweep",
        "--backend",
        "vllm",
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--layers",
        "1",
        "--max-tokens",
        "2",
        "--cache",
        "cache",
        "--out",
        "out",
        "--quiet",
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .current_dir(d)
        .env("STAND_IN_RECORD", &record)
        .env("STAND_IN_DELAY_MS", "600000") // every completion request hangs
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Both servers up (they record themselves once they run), then a moment for the requests.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !(record.join(format!("{port}.json")).is_file() && record.join(format!("{}.json", port + 1)).is_file()) {
        assert!(std::time::Instant::now() < deadline, "the servers never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "probe exits with an error, not killed by the signal:\n{stderr}");
    assert!(stderr.contains("interrupted (Ctrl-C); the launched vLLM servers were stopped"), "{stderr}");
    for p in [port, port + 1] {
        let pid = record_of(&record, p)["pid"].as_u64().unwrap();
        assert!(!running(pid), "server {pid} on port {p} outlived probe");
    }
    let stops = events(&record).iter().filter(|e| e.1 == "stop").count();
    assert_eq!(stops, 2, "both servers got SIGTERM: {:?}", events(&record));
    assert!(!d.join("out/report.json").exists());
}

#[test]
fn a_server_that_exits_before_it_is_healthy_fails_the_run_with_its_log() {
    let (Some(python), Some(fixtures)) = (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES")) else {
        return;
    };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    prompts(d);
    let port = two_free_ports();
    let crash = "import sys; print('stand-in: no GPU memory left', flush=True); sys.exit(3)";
    std::fs::write(
        d.join("probe.toml"),
        format!("[vllm]\nservers = 1\nbase_port = {port}\ncommand = [{python:?}, \"-c\", {crash:?}]\n"),
    )
    .unwrap();
    let args = [
        "sweep",
        "--backend",
        "vllm",
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--layers",
        "1",
        "--max-tokens",
        "2",
        "--cache",
        "cache",
        "--out",
        "out",
        "--quiet",
    ];
    let out = probe(d, &d.join("record"), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: ") && last.contains("exited"), "{stderr}");
    assert!(last.contains("stand-in: no GPU memory left"), "the end of the server's log is shown: {stderr}");
    assert!(!d.join("out/report.json").exists());
}

#[test]
fn a_shard_on_time_shared_devices_stops_its_servers_before_extraction() {
    let (Some(python), Some(fixtures)) = (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES")) else {
        return;
    };
    let model = Path::new(&fixtures).join("models/llama").display().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (d, record) = (tmp.path(), tmp.path().join("record"));
    prompts_n(d, 40);
    let port = two_free_ports();
    config(d, &python, 2, port);
    let common = [
        "--backend",
        "vllm",
        "--model",
        &model,
        "--prompts",
        "p.jsonl",
        "--layers",
        "1",
        "--max-tokens",
        "3",
        "--batch-size",
        "4",
        "--cache",
        "cache",
        "--out",
        "out",
        "--quiet",
    ];
    let shard = |k: &str| -> (String, String) {
        let args: Vec<&str> = ["sweep", "--shard", k].into_iter().chain(common).collect();
        ok(&probe(d, &record, &args), k)
    };
    let (stdout, stderr) = shard("1/2");
    // 40 prompts in blocks of 16: shard 1/2 owns blocks 0 and 2 (24 prompts).
    assert!(
        stdout.contains("shard 1/2: 2 of 3 blocks (blocks 0,2; 24 prompts) · generations: 24 generated, 0 cached"),
        "{stdout}"
    );
    let healthy = line_of(&stderr, "servers healthy");
    let stopped = line_of(&stderr, "vllm: stopped 2 servers before extraction (time-shared devices)");
    let loading = line_of(&stderr, &format!("loading {model} with vllm"));
    assert!(healthy < stopped && stopped < loading, "order of the log lines:\n{stderr}");
    let ev = events(&record);
    assert_eq!(ev.iter().filter(|e| e.1 == "stop").count(), 2, "both servers stopped: {ev:?}");

    let (stdout, _) = shard("2/2");
    assert!(
        stdout.contains("shard 2/2: 1 of 3 blocks (blocks 1; 16 prompts) · generations: 16 generated, 0 cached"),
        "{stdout}"
    );
    let merge: Vec<&str> = ["merge", "--shards", "2"].into_iter().chain(common).collect();
    let (stdout, _) = ok(&probe(d, &record, &merge), "merge");
    assert!(stdout.contains("generations: 40 generated, 0 cached"), "{stdout}");
    assert_eq!(events(&record).iter().filter(|e| e.1 == "start").count(), 4, "the merge launches no server");
}

/// `--backend vllm --extractor vllm` without a URL, on a Granite model (an architecture candle
/// does not implement; scripts/python/make_vllm_only_model.py makes it and transformers' hidden
/// states): probe launches a real vLLM CPU server with the hidden-states flags and its CPU-safe
/// connector. `probe extract` matches transformers at every layer; the sweep generates and
/// extracts on the launched server (the prompt's last token read from the generation pass), stops
/// it and leaves no hidden-states file; the rerun finds everything cached and launches nothing.
#[test]
fn the_vllm_extractor_launches_servers_and_probes_a_model_candle_cannot_load() {
    let (Some(python), Some(fixtures), Some(_)) =
        (require_service("PROBE_PYTHON"), require_service("PROBE_FIXTURES"), require_service("PROBE_TEST_VLLM_MODEL"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let made = Command::new(&python)
        .arg(repo().join("scripts/python/make_vllm_only_model.py"))
        .args([Path::new(&fixtures).join("tokenizer"), d.join("granite")])
        .output()
        .unwrap();
    assert!(made.status.success(), "make_vllm_only_model.py: {}", String::from_utf8_lossy(&made.stderr));
    let model = d.join("granite/model").display().to_string();
    let reference: Value = serde_json::from_slice(&std::fs::read(d.join("granite/reference.json")).unwrap()).unwrap();
    let texts: String = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}\n", serde_json::json!({"text": p})))
        .collect();
    std::fs::write(d.join("r.jsonl"), texts).unwrap();
    prompts(d);
    let port = two_free_ports();
    let toml = format!(
        "[vllm]\nbase_port = {port}\nhealth_timeout_s = 600\ngpu_memory_utilization = 0.05\n\
         command = [{python:?}, \"-m\", \"vllm.entrypoints.openai.api_server\"]\n\
         args = [\"--dtype\", \"float32\", \"--max-model-len\", \"512\"]\n"
    );
    std::fs::write(d.join("probe.toml"), toml).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(args)
            .current_dir(d)
            .env("RUST_LOG", "info")
            .env("VLLM_CPU_KVCACHE_SPACE", "1")
            .env("VLLM_NO_USAGE_STATS", "1")
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let extract = |backend: &str, out: &str| {
        let mut args = vec!["extract", "--backend", backend, "--model", &model, "--input", "r.jsonl", "--layers"];
        args.extend(["all", "--positions", "mean", "--out", out]);
        run(&args)
    };

    let refused = extract("candle", "c.safetensors");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("\"granite\""), "candle refuses granite: {stderr}");
    ok(&extract("vllm", "v.safetensors"), "probe extract --backend vllm (launched)");
    let bytes = std::fs::read(d.join("v.safetensors")).unwrap();
    let got = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let layers = reference["num_layers"].as_u64().unwrap() as usize;
    for l in 0..=layers {
        let t = got.tensor(&format!("layer.{l}")).unwrap();
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let want: Vec<f32> = reference["mean"][l]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
            .collect();
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        assert!(err <= 1e-4, "layer {l}: max relative error to transformers {err:e}");
    }

    let mut args = vec!["sweep", "--backend", "vllm", "--extractor", "vllm", "--model", &model, "--prompts"];
    args.extend(["p.jsonl", "--layers", "all", "--positions", "last-prompt", "--max-tokens", "4"]);
    args.extend(["--cache", "cache", "--out", "out", "--quiet"]);
    let (stdout, stderr) = ok(&run(&args), "sweep with the vllm extractor (launched)");
    assert!(stderr.contains("vllm: 1 servers healthy at"), "{stderr}");
    assert!(stderr.contains("vllm: stopped 1 servers after the sweep"), "{stderr}");
    assert!(stdout.contains("generations: 12 generated, 0 cached"), "{stdout}");
    assert!(stdout.contains("12 inputs read from the generation pass, 0 extra passes"), "{stdout}");
    let logs = d.join("out/vllm-logs");
    assert!(logs.join("python/probe_vllm/hidden_states.py").is_file(), "the connector is shipped by probe");
    let left: Vec<_> = std::fs::read_dir(logs.join("hidden-states")).unwrap().collect();
    assert!(left.is_empty(), "every hidden-states file was read and deleted: {left:?}");

    let (stdout, stderr) = ok(&run(&args), "rerun");
    assert!(stderr.contains("vllm: no server was launched: everything was cached"), "{stderr}");
    assert!(stdout.contains("generations: 0 generated, 12 cached · activations: 0 layers computed"), "{stdout}");
}
