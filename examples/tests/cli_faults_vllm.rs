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
