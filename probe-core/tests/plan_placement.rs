//! Plans: roles, vLLM servers, extraction placement, caps, and every refusal.

use std::path::PathBuf;

use probe_core::plan::memory::weight_bytes;
use probe_core::plan::paged::{PagedLimits, PagedRequest, plan_paged, prefill_scratch};
use probe_core::plan::units::{GIB, MIB};
use probe_core::plan::{
    Device, DeviceInventory, Dtype, ExtractionWorkload, GenerationWorkload, ModelSpec, Plan, PlanRequest, Planner,
    ShareMode, VllmSettings, parse_gpu_set, reserve,
};
use probe_core::{DevicePolicy, Error, Positions};
use proptest::prelude::*;

fn spec(name: &str) -> ModelSpec {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs").join(format!("{name}.json"));
    ModelSpec::from_path(&p).expect("fixture config")
}

fn inv(gpus: &str, cpu_gib: u64) -> DeviceInventory {
    DeviceInventory::parse_gpus(gpus).expect("gpus").with_cpu_bytes(cpu_gib * GIB)
}

fn plan(req: PlanRequest) -> probe_core::Result<Plan> {
    Planner::new(req.inventory.clone()).plan(req)
}

fn refusal(req: PlanRequest) -> String {
    let e = plan(req).expect_err("refused");
    assert!(matches!(e, Error::InvalidInput { .. }), "refusals are InvalidInput: {e}");
    e.to_string()
}

/// Checks that an accepted plan fits every device it uses.
fn assert_fits(p: &Plan, inv: &DeviceInventory) {
    for d in &inv.gpus {
        let label = d.label();
        let u = p.devices.iter().find(|u| u.device == label).expect("device listed");
        if p.time_shared {
            assert!(u.generation_bytes <= d.free_bytes, "{label}: generation fits");
            assert!(u.extraction_bytes + reserve(d.total_bytes) <= d.free_bytes, "{label}: extraction fits");
        } else {
            assert!(
                u.generation_bytes + u.extraction_bytes + reserve(d.total_bytes) * u64::from(u.extraction_bytes > 0)
                    <= d.free_bytes,
                "{label}: both phases fit at once: {u:?}"
            );
        }
    }
    if let Some(g) = &p.generation {
        for s in &g.servers {
            let total = inv.gpu(s.gpus[0]).unwrap().total_bytes;
            let requested = (total as f64 * s.gpu_memory_utilization) as u64;
            assert!(s.weights_bytes + s.non_torch_bytes + s.activation_peak_bytes + s.kv_cache_bytes <= requested);
            if p.model.sliding_layers == 0 {
                assert!(s.kv_tokens >= s.max_model_len, "one full-length sequence fits the KV cache");
            } else {
                assert!(s.kv_blocks > 0, "windowed layers hold less than max_model_len tokens each");
            }
        }
        assert!(g.max_new_tokens >= 1 && g.max_new_tokens <= g.max_new_tokens_requested);
    }
    let cpu = p.devices.iter().find(|u| u.device == "CPU").unwrap();
    assert!(cpu.extraction_bytes <= inv.cpu_bytes, "CPU share fits");
}

#[test]
fn declared_inventories() {
    let i = DeviceInventory::parse_gpus("8x80GiB").unwrap();
    assert_eq!(i.gpus.len(), 8);
    assert!(i.gpus.iter().all(|d| d.total_bytes == 80 * GIB && d.free_bytes == 80 * GIB));
    let i = DeviceInventory::parse_gpus("2x40GB").unwrap();
    assert_eq!(i.gpus[1].total_bytes, 40_000_000_000);
    let i = DeviceInventory::parse_gpus("80GiB,80GiB,40GiB").unwrap();
    assert_eq!(i.indices(), vec![0, 1, 2]);
    assert_eq!(i.gpus[2].total_bytes, 40 * GIB);
    for (bad, names) in [("8x80XiB", "80XiB"), ("0x80GiB", "0x80GiB"), ("80GiB,,40GiB", "\"\""), ("4xGiB", "GiB")] {
        let e = DeviceInventory::parse_gpus(bad).unwrap_err().to_string();
        assert!(e.contains(names), "{bad}: {e}");
    }
    let i = inv("4x80GiB", 0);
    assert_eq!(parse_gpu_set("generation GPUs", "0-2", &i).unwrap(), vec![0, 1, 2]);
    assert_eq!(parse_gpu_set("generation GPUs", "3,1", &i).unwrap(), vec![1, 3]);
    assert_eq!(parse_gpu_set("x", "all", &i).unwrap(), vec![0, 1, 2, 3]);
    let e = parse_gpu_set("extraction GPUs", "1,7", &i).unwrap_err().to_string();
    assert!(e.contains("extraction GPUs") && e.contains("GPU 7 does not exist"), "{e}");
    assert!(parse_gpu_set("x", "1,1", &i).unwrap_err().to_string().contains("twice"));
    assert!(parse_gpu_set("x", "a", &i).unwrap_err().to_string().contains("\"a\""));
}

#[test]
fn eight_gpus_split_roles_exclusively() {
    let i = inv("8x80GiB", 512);
    let p = plan(PlanRequest::new(spec("llama-3-8b"), i.clone())).unwrap();
    assert!(!p.time_shared);
    let g = p.generation.as_ref().unwrap();
    let e = p.extraction.as_ref().unwrap();
    assert_eq!(e.gpus, vec![7], "one GPU holds the 8B model for extraction");
    assert_eq!(g.gpus, (0..7).collect::<Vec<_>>());
    assert_eq!(g.servers.len(), 7);
    assert!(g.servers.iter().all(|s| s.tensor_parallel_size == 1 && s.gpu_memory_utilization == 0.90));
    assert_eq!(p.extraction_batch_size, 64, "the wanted batch fits an 80 GiB card");
    assert_eq!(g.max_new_tokens, 512);
    assert_fits(&p, &i);
}

#[test]
fn exclusive_refuses_overlap_and_time_shared_runs_in_turn() {
    let i = inv("2x80GiB", 256);
    let base =
        PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation_gpus(vec![0, 1]).with_extraction_gpus(vec![1]);
    let e = refusal(base.clone().with_mode(ShareMode::Exclusive));
    assert!(e.contains("GPU 1 is in both") && e.contains("exclusive"), "{e}");
    let p = plan(base.clone().with_mode(ShareMode::TimeShared)).unwrap();
    assert!(p.time_shared);
    assert_fits(&p, &i);
    let p = plan(base).unwrap();
    assert!(p.time_shared, "overlap without a mode time-shares");
    assert!(p.notes.iter().any(|n| n.contains("time-share")));
    // One GPU: time-shared by default, refused in exclusive mode.
    let one = inv("1x80GiB", 64);
    assert!(plan(PlanRequest::new(spec("llama-3-8b"), one.clone())).unwrap().time_shared);
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), one).with_mode(ShareMode::Exclusive));
    assert!(e.contains("exclusive mode needs at least 2 GPUs"), "{e}");
    let e = refusal(PlanRequest::new(spec("qwen2.5-72b-instruct"), inv("2x80GiB", 64)).with_mode(ShareMode::Exclusive));
    assert!(e.contains("takes all 2 GPUs"), "{e}");
    let p = plan(PlanRequest::new(spec("qwen2.5-72b-instruct"), inv("2x80GiB", 64))).unwrap();
    assert!(p.time_shared && p.notes.iter().any(|n| n.contains("time-share")));
}

#[test]
fn bad_indices_and_zero_counts_are_named() {
    let i = inv("2x80GiB", 64);
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation_gpus(vec![0, 5]));
    assert!(e.contains("generation GPUs") && e.contains("GPU 5 does not exist"), "{e}");
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_extraction_gpus(vec![]));
    assert!(e.contains("extraction GPUs") && e.contains("empty"), "{e}");
    let v = VllmSettings::default().with_servers_per_gpu(0);
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_vllm(v));
    assert!(e.contains("0 servers"), "{e}");
    let v = VllmSettings::default().with_gpu_memory_utilization(1.5);
    assert!(refusal(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_vllm(v)).contains("1.5"));
    let e = refusal(
        PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation(Some(GenerationWorkload::new(10, 10, 0))),
    );
    assert!(e.contains("batch size"), "{e}");
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), i).with_extraction(Some(ExtractionWorkload::new(128, 0))));
    assert!(e.contains("extraction batch size"), "{e}");
    let e = refusal(PlanRequest::default());
    assert!(e.contains("model"), "{e}");
}

#[test]
fn servers_sharing_a_gpu_fit_together() {
    let i = inv("2x80GiB", 64);
    let v = VllmSettings::default().with_servers_per_gpu(2);
    let p = plan(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_vllm(v)).unwrap();
    let g = p.generation.unwrap();
    assert_eq!(g.servers.len(), 2, "two servers on the one generation GPU");
    assert!(g.servers.iter().all(|s| s.gpus == vec![0] && s.gpu_memory_utilization == 0.45));
    // Three 8B servers cannot share a 40 GiB card at 0.90.
    let small = inv("2x40GiB", 64);
    let v = VllmSettings::default().with_servers_per_gpu(3);
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), small).with_vllm(v));
    assert!(e.contains("3 servers share it") && e.contains("GPU 0 has"), "{e}");
}

#[test]
fn partly_used_gpu_lowers_utilization_or_is_refused() {
    let mut i = inv("2x80GiB", 64);
    i.gpus[0] = Device::gpu(0, 80 * GIB).with_free(60 * GIB);
    let p = plan(PlanRequest::new(spec("llama-3-8b"), i.clone())).unwrap();
    assert_eq!(p.generation.as_ref().unwrap().servers[0].gpu_memory_utilization, 0.75);
    assert_fits(&p, &i);
    let v = VllmSettings::default().with_gpu_memory_utilization(0.9);
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), i).with_vllm(v));
    assert!(e.contains("0.90 asks 72.00 GiB of GPU 0, which has 60.00 GiB free"), "{e}");
}

#[test]
fn qwen72b_needs_tensor_parallelism_and_a_split() {
    let i = inv("4x80GiB", 512);
    let p = plan(PlanRequest::new(spec("qwen2.5-72b-instruct"), i.clone())).unwrap();
    assert!(!p.time_shared, "135 GiB of weights need 2 GPUs per phase: 2 generate, 2 extract");
    let g = p.generation.as_ref().unwrap();
    assert_eq!(g.gpus, vec![0, 1]);
    assert_eq!(g.servers.len(), 1);
    assert!(g.servers.iter().all(|s| s.tensor_parallel_size == 2));
    assert_eq!(p.extraction.as_ref().unwrap().gpus, vec![2, 3]);
    // Time-shared, generation gets all four GPUs: two TP-2 servers.
    let ts = plan(PlanRequest::new(spec("qwen2.5-72b-instruct"), i.clone()).with_mode(ShareMode::TimeShared)).unwrap();
    assert!(ts.time_shared);
    assert_eq!(ts.generation.as_ref().unwrap().servers.len(), 2);
    assert_fits(&ts, &i);
    let e = p.extraction.as_ref().unwrap();
    assert_eq!(e.workers.len(), 1);
    let shares = &e.workers[0].shares;
    assert_eq!(shares.len(), 2, "72B split over two 80 GiB GPUs: {shares:?}");
    assert_eq!(shares.iter().map(|s| s.num_layers).sum::<usize>(), 80);
    assert!(shares[0].embedding && shares[1].head);
    assert!(shares[0].weights_bytes < shares[1].weights_bytes, "GPU 0 is kept lighter");
    assert!(!e.cpu_offload);
    assert_fits(&p, &i);

    // One 80 GiB card: generation is refused with its numbers.
    let one = inv("1x80GiB", 512);
    let e = refusal(PlanRequest::new(spec("qwen2.5-72b-instruct"), one.clone()));
    assert!(e.contains("needs 13") && e.contains("GPU 0 has 72.00 GiB"), "{e}");
    // Extraction alone offloads layers to the CPU, or is refused without offload.
    let req = PlanRequest::new(spec("qwen2.5-72b-instruct"), one.clone()).with_generation(None);
    let p = plan(req.clone()).unwrap();
    let x = p.extraction.as_ref().unwrap();
    assert!(x.cpu_offload);
    let cpu = x.workers[0].shares.iter().find(|s| s.gpu.is_none()).expect("CPU share");
    assert!(cpu.num_layers > 30 && cpu.head, "{cpu:?}");
    assert!(p.notes.iter().any(|n| n.contains("offloaded to the CPU")));
    assert_fits(&p, &one);
    let e = refusal(req.with_cpu_offload(false));
    assert!(e.contains("extraction needs 13") && e.contains("GPU 0 has") && e.contains("CPU offload is off"), "{e}");
}

#[test]
fn qwen3_32b_on_80_and_40_gb_cards() {
    let big = inv("2x80GB", 256);
    let p = plan(PlanRequest::new(spec("qwen3-32b"), big.clone())).unwrap();
    assert!(!p.time_shared);
    assert_eq!(p.generation.as_ref().unwrap().servers[0].tensor_parallel_size, 1);
    assert_eq!(p.extraction.as_ref().unwrap().workers[0].shares.len(), 1, "61 GiB fit one 80 GB card");
    assert_fits(&p, &big);
    let small = inv("4x40GB", 256);
    let p = plan(PlanRequest::new(spec("qwen3-32b"), small.clone())).unwrap();
    assert!(!p.time_shared, "2 GPUs generate, 2 extract");
    let g = p.generation.as_ref().unwrap();
    assert_eq!((g.servers.len(), g.servers[0].tensor_parallel_size), (1, 2));
    assert_eq!(p.extraction.as_ref().unwrap().workers[0].shares.len(), 2);
    assert_fits(&p, &small);
    // 4096 new tokens do not fit two 40 GB cards at TP 2: the planner time-shares all four (TP 4).
    let long = PlanRequest::new(spec("qwen3-32b"), small.clone())
        .with_generation(Some(GenerationWorkload::new(512, 4096, 64)));
    let p = plan(long.clone()).unwrap();
    assert!(p.time_shared);
    assert_eq!(p.generation.as_ref().unwrap().servers[0].tensor_parallel_size, 4);
    assert!(p.notes.iter().any(|n| n.contains("time-share all GPUs")));
    assert_fits(&p, &small);
    let e = refusal(long.with_mode(ShareMode::Exclusive));
    assert!(e.contains("needs") && e.contains("GPU 0 has"), "{e}");
}

#[test]
fn max_new_tokens_is_capped_to_fit() {
    let i = inv("1x24GiB", 64);
    // The batch shrinks first, keeping max_new_tokens.
    let w = GenerationWorkload::new(1024, 4096, 64);
    let p =
        plan(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation(Some(w)).with_extraction(None)).unwrap();
    let g = p.generation.as_ref().unwrap();
    assert_eq!(g.max_new_tokens, 4096);
    let s = &g.servers[0];
    assert!(g.batch_size < 64 && g.batch_size * 5120 <= s.kv_tokens && (g.batch_size + 1) * 5120 > s.kv_tokens);
    assert!(s.max_num_seqs >= g.batch_size);
    assert!(p.notes.iter().any(|n| n.contains("generation batch lowered")));
    // A fixed batch caps max_new_tokens instead.
    let w = GenerationWorkload::new(1024, 4096, 16).with_fixed_batch(true);
    let p =
        plan(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation(Some(w)).with_extraction(None)).unwrap();
    let g = p.generation.as_ref().unwrap();
    let s = &g.servers[0];
    assert!(g.max_new_tokens < 4096, "16 × 5120 tokens exceed the KV cache");
    assert_eq!(g.batch_size, 16);
    // The cap is the largest that fits: one more token would not.
    let fits = |m: u64| 16 * (1024 + m) <= s.kv_tokens;
    assert!(fits(g.max_new_tokens) && !fits(g.max_new_tokens + 1), "{} of {}", g.max_new_tokens, s.kv_tokens);
    assert!(p.notes.iter().any(|n| n.contains("max_new_tokens capped")));
    assert_fits(&p, &i);
    // Sliding windows let Mistral generate more into the same memory than its full-attention twin.
    let mistral = spec("mistral-7b-v0.1");
    let w = GenerationWorkload::new(4096, 28000, 32).with_fixed_batch(true);
    let req = |s: ModelSpec| {
        PlanRequest::new(s, inv("1x40GiB", 64))
            .with_generation(Some(w))
            .with_extraction(None)
            .with_vllm(VllmSettings::default().with_max_model_len(32768))
    };
    let mut full = mistral.clone();
    full.layer_windows = vec![None; full.num_layers];
    let windowed = plan(req(mistral)).unwrap().generation.unwrap().max_new_tokens;
    let unwindowed = plan(req(full)).unwrap().generation.unwrap().max_new_tokens;
    assert!(windowed > unwindowed, "{windowed} vs {unwindowed}");
    // Nothing fits: refused with numbers.
    let e = refusal(
        PlanRequest::new(spec("llama-3-8b"), inv("1x24GiB", 64))
            .with_generation(Some(GenerationWorkload::new(8000, 100, 512).with_fixed_batch(true)))
            .with_extraction(None),
    );
    assert!(e.contains("512 sequences of 8000 prompt tokens need"), "{e}");
}

#[test]
fn max_model_len_checks() {
    let i = inv("2x80GiB", 64);
    let v = VllmSettings::default().with_max_model_len(100_000);
    let e = refusal(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_vllm(v));
    assert!(e.contains("100000") && e.contains("8192"), "{e}");
    let p = plan(
        PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation(Some(GenerationWorkload::new(512, 9000, 4))),
    )
    .unwrap();
    assert_eq!(p.generation.as_ref().unwrap().servers[0].max_model_len, 8192);
    assert_eq!(p.generation.as_ref().unwrap().max_new_tokens, 8192 - 512);
    // The overrides reproduce the A100 log: 5,691-ish blocks.
    let a100 = DeviceInventory::new(vec![Device::gpu(0, (39.5 * GIB as f64) as u64)], 64 * GIB);
    let v = VllmSettings::default()
        .with_activation_peak((9.37 * GIB as f64) as u64)
        .with_non_torch((0.10 * GIB as f64) as u64)
        .with_max_model_len(8192);
    let p = plan(PlanRequest::new(spec("llama-3-8b"), a100).with_vllm(v).with_extraction(None)).unwrap();
    let s = &p.generation.unwrap().servers[0];
    assert!((s.kv_blocks as f64 / 5691.0 - 1.0).abs() < 0.01, "{}", s.kv_blocks);
}

#[test]
fn extraction_batch_is_the_largest_that_fits() {
    let i = inv("1x24GiB", 64);
    let w = ExtractionWorkload::new(2048, 1024).with_positions(Positions::Mean);
    let p =
        plan(PlanRequest::new(spec("llama-3-8b"), i.clone()).with_generation(None).with_extraction(Some(w))).unwrap();
    let e = p.extraction.as_ref().unwrap();
    let b = e.batch_size;
    assert!((1..1024).contains(&b), "{b}");
    let cap = 24 * GIB - reserve(24 * GIB);
    let m = weight_bytes(&spec("llama-3-8b"), Dtype::Bf16);
    assert!(m + e.working_set_bytes <= cap);
    let shape = |b| probe_core::plan::ExtractionShape::new(b, 2048, 33, Positions::Mean, Dtype::Bf16);
    let next = probe_core::plan::memory::extraction_working_set(&spec("llama-3-8b"), &shape(b + 1));
    assert!(m + next > cap, "batch {} would fit too", b + 1);
    assert!(e.max_seq_len >= 2048 && e.max_seq_len <= 8192, "{}", e.max_seq_len);
    let at = |seq| {
        probe_core::plan::memory::extraction_working_set(
            &spec("llama-3-8b"),
            &probe_core::plan::ExtractionShape::new(1, seq, 33, Positions::Mean, Dtype::Bf16),
        )
    };
    if e.max_seq_len < 8192 {
        assert!(m + at(e.max_seq_len) <= cap && m + at(e.max_seq_len + 1) > cap, "the longest input is the longest");
    }
    assert_eq!(reserve(24 * GIB), 512 * MIB, "2 % of 24 GiB is below 512 MiB");
    assert_eq!(reserve(80 * GIB), 80 * GIB / 50);
    assert_fits(&p, &i);
}

#[test]
fn cpu_only_and_unknown_memory() {
    let cpu = DeviceInventory::new(vec![], 64 * GIB);
    let p = plan(PlanRequest::new(spec("llama-3.2-1b"), cpu.clone())).unwrap();
    assert!(p.generation.is_none() && p.notes.iter().any(|n| n.contains("no GPU for generation")));
    let e = p.extraction.as_ref().unwrap();
    assert_eq!(e.workers[0].shares[0].device, "CPU");
    assert!(!e.cpu_offload);
    let e = refusal(PlanRequest::new(spec("qwen2.5-72b-instruct"), DeviceInventory::new(vec![], 16 * GIB)));
    assert!(e.contains("no GPU and the CPU has 14.40 GiB"), "{e}");
}

#[test]
fn paged_engine_ladder() {
    let s = spec("llama-3-8b");
    // The seeds' TPU sampler: 1024-token prefill asked 37.54 MiB of a 16 MiB VMEM.
    let req = PagedRequest::new(8, 128, 4608, 1024);
    let lim = PagedLimits::new(80 * GIB, 16 * MIB);
    let scratch = prefill_scratch(&s, &req, &lim, 1024) as f64 / MIB as f64;
    assert!((scratch / 37.54 - 1.0).abs() < 0.02, "{scratch}");
    let p = plan_paged(&s, &req, &lim).unwrap();
    assert_eq!(p.max_prefill_size, 256);
    assert_eq!(p.steps.len(), 2);
    assert_eq!((p.max_seqs, p.max_pages), (8, 288), "8 × 36 pages, as configured");
    // A smaller device halves max_seqs.
    let lim = PagedLimits::new(16 * GIB, 16 * MIB);
    let p = plan_paged(&s, &req, &lim).unwrap();
    assert!(p.max_seqs < 8 && p.weights_bytes + p.kv_bytes <= 16 * GIB);
    assert!(
        plan_paged(&s, &PagedRequest::new(8, 128, 4608, 1024), &PagedLimits::new(15 * GIB, 16 * MIB))
            .unwrap_err()
            .to_string()
            .contains("the device has 15.00 GiB")
    );
    assert!(plan_paged(&s, &PagedRequest::new(0, 128, 4608, 1024), &lim).unwrap_err().to_string().contains("max_seqs"));
}

fn arb_inventory() -> impl Strategy<Value = DeviceInventory> {
    prop::collection::vec((8u64..96, 50u64..=100), 1..5).prop_flat_map(|gpus| {
        (Just(gpus), 0u64..256).prop_map(|(gpus, cpu)| {
            let devs = gpus
                .iter()
                .enumerate()
                .map(|(i, &(g, pct))| Device::gpu(i, g * GIB).with_free(g * GIB * pct / 100))
                .collect();
            DeviceInventory::new(devs, cpu * GIB)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn accepted_plans_fit(
        i in arb_inventory(),
        model in prop::sample::select(vec!["llama-3-8b", "llama-3.2-1b", "qwen3-32b", "gemma-2-9b", "mistral-7b-v0.1"]),
        prompt in 16u64..4096, new in 1u64..4096, batch in 1u64..128, seq in 16u64..4096, k in 1usize..3,
    ) {
        let req = PlanRequest::new(spec(model), i.clone())
            .with_generation(Some(GenerationWorkload::new(prompt, new, batch)))
            .with_extraction(Some(ExtractionWorkload::new(seq, 64)))
            .with_vllm(VllmSettings::default().with_servers_per_gpu(k));
        match plan(req) {
            Ok(p) => assert_fits(&p, &i),
            Err(e) => prop_assert!(e.to_string().contains("needs"), "a refusal gives its numbers: {}", e),
        }
    }
}
