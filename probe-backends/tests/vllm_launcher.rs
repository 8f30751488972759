//! The launcher with a stand-in server command: a Python script that records its arguments
//! and environment, starts a child process, and answers health checks. GPU placement, ports,
//! environment, logs and stop-by-pid are checked without GPUs and without vLLM.
#![cfg(feature = "vllm")]

use std::path::Path;
use std::time::{Duration, Instant};

use probe_backends::vllm::{ServerSpec, VllmLauncher};
use probe_core::Error;
use serde_json::Value;

const STAND_IN: &str = r#"
import json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
out = os.environ["STAND_IN_DIR"]
child = subprocess.Popen(["sleep", "1000"])
env = {k: v for k, v in os.environ.items() if k in ("CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "VLLM_TARGET_DEVICE", "EXTRA")}
rec = {"argv": args, "env": env, "pid": os.getpid(), "pgid": os.getpgid(0), "child": child.pid}
with open(os.path.join(out, f"{port}.json.tmp"), "w") as f:
    json.dump(rec, f)
os.rename(os.path.join(out, f"{port}.json.tmp"), os.path.join(out, f"{port}.json"))
print(f"stand-in serving on {port}", flush=True)
if os.environ.get("STAND_IN_MODE") == "exit":
    sys.exit(3)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" and os.environ.get("STAND_IN_MODE") != "unhealthy"
        self.send_response(200 if ok else 503)
        self.end_headers()
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn python() -> String {
    std::env::var("PROBE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// True while `pid` runs (not a zombie).
fn running(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn wait_gone(pid: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    !running(pid)
}

fn launcher(dir: &Path, specs: Vec<ServerSpec>, mode: &str) -> VllmLauncher {
    let script = dir.join("stand_in.py");
    std::fs::write(&script, STAND_IN).unwrap();
    VllmLauncher::builder("org/model")
        .command([python(), script.display().to_string()])
        .servers(specs)
        .env("STAND_IN_DIR", dir.display().to_string())
        .env("STAND_IN_MODE", mode)
        .env("EXTRA", "yes")
        .log_dir(dir.join("logs"))
        .health_timeout(Duration::from_secs(60))
        .grace(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn record(dir: &Path, port: u16) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{port}.json"))).unwrap()).unwrap()
}

#[tokio::test]
async fn servers_cycle_over_gpus_and_stop_by_pid() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    // Three servers on two GPUs: 0, 1, 0.
    let specs: Vec<ServerSpec> = ServerSpec::cycle(&[0, 1], 3, 1, 0.8)
        .unwrap()
        .into_iter()
        .zip(&ports)
        .map(|(s, &p)| {
            let mut s = s;
            s.port = p;
            s.with_max_model_len(2048)
        })
        .collect();
    let l = launcher(dir.path(), specs, "ok");
    let group = l.launch().await.expect("stand-ins become healthy");
    assert_eq!(group.urls(), ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>());

    let mut pids = Vec::new();
    for (k, (&port, server)) in ports.iter().zip(group.servers()).enumerate() {
        let r = record(dir.path(), port);
        let gpu = ["0", "1", "0"][k];
        assert_eq!(r["env"]["CUDA_VISIBLE_DEVICES"], gpu, "server {k} on GPU {gpu}");
        assert_eq!(r["env"]["PYTORCH_CUDA_ALLOC_CONF"], "expandable_segments:True");
        assert_eq!(r["env"]["EXTRA"], "yes");
        let argv: Vec<&str> = r["argv"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let util = if gpu == "0" { "0.4" } else { "0.8" };
        assert_eq!(
            argv,
            [
                "org/model",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--gpu-memory-utilization",
                util,
                "--max-model-len",
                "2048"
            ]
        );
        assert_eq!(r["pid"].as_u64().unwrap(), u64::from(server.pid()), "the launcher knows the server's pid");
        assert_eq!(r["pgid"], r["pid"], "each server leads its own process group");
        let log = std::fs::read_to_string(server.log()).unwrap();
        assert!(log.contains(&format!("stand-in serving on {port}")), "stdout goes to the log: {log:?}");
        pids.push(r["pid"].as_u64().unwrap());
        pids.push(r["child"].as_u64().unwrap());
    }
    assert!(pids.iter().all(|&p| running(p)));
    group.stop().await.unwrap();
    for p in pids {
        assert!(wait_gone(p), "process {p} (a server or its child) is gone after stop");
    }
}

#[tokio::test]
async fn dropping_the_group_stops_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let l = launcher(dir.path(), vec![ServerSpec::cpu(port)], "ok");
    let group = l.launch().await.unwrap();
    let r = record(dir.path(), port);
    assert_eq!(r["env"]["VLLM_TARGET_DEVICE"], "cpu");
    assert_eq!(r["env"]["CUDA_VISIBLE_DEVICES"], "");
    let (pid, child) = (r["pid"].as_u64().unwrap(), r["child"].as_u64().unwrap());
    drop(group);
    assert!(wait_gone(pid) && wait_gone(child), "drop stops the server and its child");
}

#[tokio::test]
async fn a_server_that_exits_early_is_reported_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let l = launcher(dir.path(), vec![ServerSpec::gpu(0, port)], "exit");
    let e = l.launch().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Backend { .. }), "{e}");
    assert!(msg.contains("exited") && msg.contains("stand-in serving on"), "{msg}");
    let child = record(dir.path(), port)["child"].as_u64().unwrap();
    assert!(wait_gone(child), "its child was stopped too");
}

#[tokio::test]
async fn an_unhealthy_server_times_out_and_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let script = dir.path().join("stand_in.py");
    std::fs::write(&script, STAND_IN).unwrap();
    let l = VllmLauncher::builder("m")
        .command([python(), script.display().to_string()])
        .servers(vec![ServerSpec::gpu(0, port)])
        .env("STAND_IN_DIR", dir.path().display().to_string())
        .env("STAND_IN_MODE", "unhealthy")
        .log_dir(dir.path())
        .health_timeout(Duration::from_secs(2))
        .grace(Duration::from_secs(2))
        .build()
        .unwrap();
    let e = l.launch().await.unwrap_err();
    assert!(matches!(e, Error::Temporary { .. }), "{e}");
    assert!(e.to_string().contains("not healthy"), "{e}");
    let r = record(dir.path(), port);
    assert!(wait_gone(r["pid"].as_u64().unwrap()) && wait_gone(r["child"].as_u64().unwrap()));
}
