//! One of two generation servers killed mid-run: `probe generate --backend vllm --url A
//! --url B` retries the requests that were in flight on A on B, takes A out, finishes on B,
//! logs the retries, and writes exactly what an undisturbed run writes.
//!
//! The servers are two processes of the OpenAI-compatible stand-in
//! (scripts/python/openai_stand_in.py, deterministic completions, 300 ms per request), run
//! with the venv's python (`PROBE_PYTHON`).

#![cfg(feature = "vllm")]

mod fault_support;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fault_support::{probe_cmd, write_prompts};

const MODEL: &str = "stand-in-model";

/// A stand-in server process, killed on drop.
struct StandIn {
    child: Child,
    url: String,
}

impl StandIn {
    fn start(python: &str) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/openai_stand_in.py");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new(python)
            .arg(&script)
            .args(["serve", MODEL, "--host", "127.0.0.1", "--port", &port.to_string()])
            .env("STAND_IN_DELAY_MS", "300")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "the stand-in did not start on port {port}");
            assert!(child.try_wait().unwrap().is_none(), "the stand-in exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn generate(d: &Path, urls: &[&str], out: &str) -> Command {
    let mut c = probe_cmd(d);
    c.args(["generate", "--backend", "vllm", "--model", MODEL, "--prompts", "prompts.jsonl", "--max-tokens", "5"])
        .args(["--out", out])
        .env_remove("VLLM_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .env("RUST_LOG", "info");
    for u in urls {
        c.args(["--url", u]);
    }
    c
}

#[test]
fn a_generation_server_killed_mid_run_leaves_the_run_to_the_other_with_the_same_output() {
    let Some(python) = probe_core::testing::require_service("PROBE_PYTHON") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 20 requests of 16 prompts, at most 4 in flight per server.
    write_prompts(&d.join("prompts.jsonl"), 320);
    let mut a = StandIn::start(&python);
    let b = StandIn::start(&python);
    // Count the completion requests A answers (its access log is written as each reply starts).
    let answered = Arc::new(AtomicUsize::new(0));
    let log = BufReader::new(a.child.stdout.take().unwrap());
    let counter = answered.clone();
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if line.contains("POST /v1/completions") {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    let undisturbed = generate(d, &[&a.url, &b.url], "undisturbed.jsonl").output().unwrap();
    assert!(undisturbed.status.success(), "{}", String::from_utf8_lossy(&undisturbed.stderr));
    std::thread::sleep(Duration::from_millis(200));
    let before = answered.load(Ordering::SeqCst);
    assert!(before >= 1, "both servers take part in an undisturbed run");

    let mut child = generate(d, &[&a.url, &b.url], "disturbed.jsonl").stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    // Kill A once it has answered one request of this run: its other requests are in flight.
    while answered.load(Ordering::SeqCst) == before {
        assert!(start.elapsed() < Duration::from_secs(60), "A got no request");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before A answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the run finishes on the other server: {stderr}");
    eprintln!("A answered {} requests of the run before it was killed", answered.load(Ordering::SeqCst) - before);

    assert_eq!(
        std::fs::read_to_string(d.join("disturbed.jsonl")).unwrap(),
        std::fs::read_to_string(d.join("undisturbed.jsonl")).unwrap(),
        "same completions as the undisturbed run"
    );
    let retries: Vec<&str> = stderr.lines().filter(|l| l.contains("retrying prompts")).collect();
    assert!(!retries.is_empty(), "the retries are logged: {stderr}");
    assert!(retries.iter().all(|l| l.contains(&a.url)), "the retried requests were A's: {retries:#?}");
    eprintln!("{} retries logged, e.g. {}", retries.len(), retries[0]);
    if let Some(out) = stderr.lines().find(|l| l.contains("taking")) {
        eprintln!("{out}");
    }
}

/// The pid of the process group leader whose command line serves `--port port` (a server the
/// launcher started: each runs in its own process group).
#[cfg(feature = "candle")]
fn server_group(port: u16) -> Option<u32> {
    let want = format!("--port\0{port}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let pgid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()?;
        (pgid == pid && String::from_utf8_lossy(&cmd).contains(&want)).then_some(pid)
    })
}

/// Running (non-zombie) processes whose process group is `pgid`.
#[cfg(feature = "candle")]
fn group_members(pgid: u32) -> usize {
    std::fs::read_dir("/proc")
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
                    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    f.len() > 3 && f[2] == pgid.to_string() && !f[0].starts_with(['Z', 'X'])
                })
                .count()
        })
        .unwrap_or(0)
}

/// Each layer's metrics of a report.json, rounded (the run's timings and servers aside).
#[cfg(feature = "candle")]
fn layer_scores(path: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let layers = v["layers"].as_array().unwrap_or_else(|| panic!("no layers in {v}"));
    layers
        .iter()
        .map(|l| {
            let mut l = l.clone();
            for (_, x) in l.as_object_mut().unwrap().iter_mut() {
                if let Some(f) = x.as_f64() {
                    *x = serde_json::json!(format!("{f:.4}"));
                }
            }
            l.to_string()
        })
        .collect()
}

/// Issue 29: one of two vLLM CPU servers that `probe sweep --extractor vllm` launched is killed
/// with SIGKILL (its whole process group) mid-sweep: the run finishes on the other, with the
/// layers' scores of an undisturbed run (on the test command's server that writes hidden
/// states, PROBE_TEST_VLLM_URL3); the requests in flight on the dead server are retried; the
/// files it left are removed; nothing is left in the hidden-states folder.
#[cfg(feature = "candle")]
#[test]
fn a_launched_extraction_server_killed_with_sigkill_mid_sweep_leaves_the_run_to_the_other() {
    let (Some(python), Some(model), Some(url3)) = (
        probe_core::testing::require_service("PROBE_PYTHON"),
        probe_core::testing::require_service("PROBE_TEST_VLLM_MODEL"),
        probe_core::testing::require_service("PROBE_TEST_VLLM_URL3"),
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 240);
    let port = loop {
        let p = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let toml = format!(
        "[vllm]\nservers = 2\nbase_port = {port}\nhealth_timeout_s = 900\ngpu_memory_utilization = 0.05\n\
         command = [{python:?}, \"-m\", \"vllm.entrypoints.openai.api_server\"]\n\
         args = [\"--dtype\", \"float32\", \"--max-model-len\", \"512\", \"--seed\", \"0\"]\n"
    );
    std::fs::write(d.join("probe.toml"), toml).unwrap();
    let sweep = |cache: &str, out: &str, url: Option<&str>| {
        let mut c = probe_cmd(d);
        c.args(["sweep", "--backend", "vllm", "--extractor", "vllm", "--model", &model, "--prompts", "prompts.jsonl"]);
        c.args(["--layers", "1,4", "--positions", "mean", "--no-generate", "--quiet", "--cache", cache, "--out", out]);
        if let Some(u) = url {
            c.args(["--url", u]);
        }
        c.env("RUST_LOG", "info").env("VLLM_CPU_KVCACHE_SPACE", "1").env("VLLM_NO_USAGE_STATS", "1");
        c.env("HF_HUB_OFFLINE", "1");
        c
    };
    let mut child = sweep("c1", "o1", None).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Server A's access log: kill its process group once it has answered a few extractions.
    let log = d.join(format!("o1/vllm-logs/vllm-cpu-port{port}.log"));
    let answered = || std::fs::read_to_string(&log).map(|t| t.matches("POST /v1/completions").count()).unwrap_or(0);
    let start = Instant::now();
    while answered() < 3 {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before server A answered 3 requests");
        assert!(start.elapsed() < Duration::from_secs(1200), "server A answered no request");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pgid = server_group(port).expect("server A's process group");
    let killed = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().unwrap();
    assert!(killed.success(), "SIGKILL to server A's group {pgid}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the run finishes on the other server: {stderr}");
    assert_eq!(group_members(pgid), 0, "server A is gone");
    let a = format!("127.0.0.1:{port}");
    let retries: Vec<&str> = stderr.lines().filter(|l| l.contains("retrying input")).collect();
    assert!(retries.iter().any(|l| l.contains(&a)), "A's requests in flight were retried: {stderr}");
    assert!(stderr.contains("vllm: stopped 2 servers after the sweep"), "{stderr}");
    let hs = d.join("o1/vllm-logs/hidden-states");
    let left: Vec<_> = std::fs::read_dir(&hs).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "nothing left in the hidden-states folder: {left:?}");
    if let Some(l) = stderr.lines().find(|l| l.contains("files left in")) {
        eprintln!("{l}");
    }

    let calm = sweep("c2", "o2", Some(&url3)).output().unwrap();
    assert!(calm.status.success(), "undisturbed run: {}", String::from_utf8_lossy(&calm.stderr));
    assert_eq!(layer_scores(&d.join("o1/report.json")), layer_scores(&d.join("o2/report.json")), "same report");
}
