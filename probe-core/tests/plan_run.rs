//! The library's run plan: `resolve_run` from an inventory, a model spec and settings, used by
//! `sweep::run` through `SweepConfig::with_plan` (planned batch size, recorded in the
//! report), on the published configs of Qwen3-32B and gemma-3-12b-it.

use std::path::Path;

use probe_core::plan::{
    BatchSource, DeviceInventory, Dtype, ModelSpec, Planner, RunPlan, RunSettings, resolve_run, units::GIB,
};
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator};
use probe_core::{DevicePolicy, Error, SamplingParams};

fn spec(name: &str) -> ModelSpec {
    ModelSpec::from_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs").join(name)).unwrap()
}

fn devices(plan: &RunPlan) -> Vec<(String, [usize; 2])> {
    plan.extraction.as_ref().unwrap().placement.iter().map(|p| (p.device.clone(), p.layers)).collect()
}

#[test]
fn qwen3_32b_placements_follow_the_inventory() {
    let s = RunSettings::new(512).with_max_new_tokens(Some(256));
    let one = resolve_run(DeviceInventory::parse_gpus("1x80GiB").unwrap(), spec("qwen3-32b.json"), &s).unwrap();
    assert_eq!(devices(&one), vec![("cuda:0".to_owned(), [0, 63])]);
    let e = one.extraction.as_ref().unwrap();
    assert_eq!((e.dtype, e.batch_size_source), (Dtype::Bf16, BatchSource::Planned));
    assert_eq!(one.first_extraction_gpu(), Some(0));

    let two = resolve_run(DeviceInventory::parse_gpus("2x40GiB").unwrap(), spec("qwen3-32b.json"), &s).unwrap();
    let d = devices(&two);
    assert_eq!((d.len(), d[0].0.as_str(), d[1].0.as_str()), (2, "cuda:0", "cuda:1"));
    assert_eq!((d[0].1[0], d[0].1[1] + 1, d[1].1[1]), (0, d[1].1[0], 63), "contiguous blocks: {d:?}");

    let inv = DeviceInventory::parse_gpus("1x24GiB").unwrap().with_cpu_bytes(96 * GIB);
    let off = resolve_run(inv, spec("qwen3-32b.json"), &s).unwrap();
    assert_eq!(devices(&off).iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["cuda:0", "cpu"]);
    assert!(off.extraction.as_ref().unwrap().cpu_offload);

    let inv = DeviceInventory::parse_gpus("1x24GiB").unwrap().with_cpu_bytes(16 * GIB);
    let e = resolve_run(inv, spec("qwen3-32b.json"), &s).unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }));
    assert!(e.to_string().contains("weights 61.02 GiB") && e.to_string().contains("CPU has 14.40 GiB"), "{e}");
}

#[test]
fn launched_servers_take_tensor_parallelism_through_the_device_policy() {
    let planner = Planner::new(DeviceInventory::parse_gpus("4x24GiB").unwrap());
    assert_eq!(planner.inventory().unwrap().gpus.len(), 4);
    let s = RunSettings::new(512).with_max_new_tokens(Some(256)).with_launch_servers(true);
    let p = RunPlan::resolve(&planner, spec("qwen3-32b.json"), &s).unwrap();
    assert_eq!(p.generation.servers.len(), 1);
    assert_eq!(p.generation.servers[0].gpus, vec![0, 1, 2, 3]);
    assert!(p.generation.servers[0].args.windows(2).any(|w| w == ["--tensor-parallel-size", "4"]));
    // The launcher builds its servers from the planner's own generation plan.
    assert_eq!(p.detail.generation.as_ref().unwrap().servers[0].tensor_parallel_size, 4);
}

#[test]
fn gemma3_12b_it_reads_as_its_language_model() {
    let s = RunSettings::new(512).with_max_new_tokens(Some(256));
    let inv = DeviceInventory::parse_gpus("1x16GiB").unwrap().with_cpu_bytes(64 * GIB);
    let p = resolve_run(inv, spec("gemma-3-12b-it.json"), &s).unwrap();
    assert_eq!((p.model.layers, p.model.sliding_layers), (48, 40));
    assert_eq!(devices(&p).iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["cuda:0", "cpu"]);
}

#[tokio::test]
async fn a_sweep_with_a_plan_runs_with_its_batch_and_records_it() {
    let mut lines = String::new();
    for i in 0..100 {
        let (w, l) = if i % 2 == 0 { ("apple", "fruit") } else { ("iron", "metal") };
        lines.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"item {i} is {w}\",\"label\":\"{l}\"}}\n"));
    }
    let prompts = PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap();
    let spec = ModelSpec::from_json(
        r#"{"model_type":"llama","hidden_size":16,"intermediate_size":32,"num_hidden_layers":4,
            "num_attention_heads":2,"vocab_size":64,"max_position_embeddings":512}"#,
    )
    .unwrap();
    let mut settings = RunSettings::new(16).with_max_new_tokens(Some(4));
    settings.max_batch_size = 24;
    let plan = resolve_run(DeviceInventory::new(vec![], 8 * GIB), spec, &settings).unwrap();
    assert_eq!(plan.batch_size_or(0), 24, "the largest batch up to the cap fits a tiny model");
    let (extractor, generator, cache) = (MockExtractor::new("m", 4, 16), MockGenerator::new("m"), MemoryCache::new());
    let parts = SweepParts::new(&extractor, &cache).with_generator(&generator);
    let config = SweepConfig::new(vec![1, 3]).with_sampling(Some(SamplingParams::greedy(4))).with_plan(plan.clone());
    let report = sweep::run(parts, &prompts, &config).await.unwrap();
    assert_eq!(report.summary.extract_calls, 100usize.div_ceil(24), "forward passes of the planned batch");
    assert_eq!(report.summary.batches_computed, 100usize.div_ceil(sweep::CACHE_BLOCK_ROWS), "the cache grid");
    assert_eq!(report.plan.as_ref(), Some(&plan));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["plan"]["extraction"]["batch_size"], 24);
    assert_eq!(json["plan"]["extraction"]["placement"][0]["device"], "cpu");
}

/// Servers that keep every layer's hidden states (vLLM extraction) hold fewer tokens: Qwen3-32B
/// keeps 65 × 5,120 bf16 values (650 KiB) per token beside its 256 KiB of KV, so a server (one
/// 80 GiB GPU each) holds about 3.5 times fewer.
#[test]
fn hidden_states_on_the_servers_take_their_share_of_the_cache() {
    use probe_core::plan::VllmSettings;
    let inv = || DeviceInventory::parse_gpus("2x80GiB").unwrap();
    let s = RunSettings::new(512).with_max_new_tokens(Some(256)).with_launch_servers(true).with_extraction(false);
    let plain = resolve_run(inv(), spec("qwen3-32b.json"), &s).unwrap();
    let with = s.clone().with_vllm(VllmSettings::default().with_hidden_states(true));
    let hidden = resolve_run(inv(), spec("qwen3-32b.json"), &with).unwrap();
    let server = |r: &RunPlan| r.detail.generation.as_ref().unwrap().servers[0].clone();
    let (p, h) = (&server(&plain), &server(&hidden));
    assert_eq!((p.tensor_parallel_size, h.tensor_parallel_size), (1, 1));
    assert_eq!(p.kv_cache_bytes, h.kv_cache_bytes, "the same memory");
    let per_token = |sv: &probe_core::plan::VllmServerPlan| sv.kv_cache_bytes as f64 / sv.kv_tokens as f64;
    let (kv, hs) = (f64::from(256 << 10), f64::from(65 * 5120 * 2));
    assert!((per_token(p) / kv - 1.0).abs() < 1e-3, "KV per token: {}", per_token(p));
    assert!((per_token(h) / (kv + hs) - 1.0).abs() < 1e-3, "plus every layer's hidden state: {}", per_token(h));
    let ratio = p.kv_tokens as f64 / h.kv_tokens as f64;
    assert!((ratio / ((kv + hs) / kv) - 1.0).abs() < 0.01, "{} vs {} tokens", h.kv_tokens, p.kv_tokens);
}

/// Issue 29: servers launched for vLLM extraction keep only the asked layers
/// (`eagle_aux_hidden_state_layer_ids`), and the plan sizes their cache from that count: for
/// Qwen3-32B, 3 asked layers (30 KiB of bf16 per token beside 256 KiB of KV) let a server hold
/// at least 3 times the tokens it holds when it keeps all 65 (650 KiB).
#[test]
fn servers_that_keep_only_the_asked_layers_hold_3x_more_tokens() {
    use probe_core::plan::VllmSettings;
    let inv = || DeviceInventory::parse_gpus("2x80GiB").unwrap();
    let s = RunSettings::new(512).with_max_new_tokens(Some(256)).with_launch_servers(true).with_extraction(false);
    let run = |v: VllmSettings| resolve_run(inv(), spec("qwen3-32b.json"), &s.clone().with_vllm(v)).unwrap();
    let server = |r: &RunPlan| r.detail.generation.as_ref().unwrap().servers[0].clone();
    let all = server(&run(VllmSettings::default().with_hidden_states(true)));
    let every = server(&run(VllmSettings::default().with_hidden_state_layers(65)));
    let three = server(&run(VllmSettings::default().with_hidden_state_layers(3)));
    assert_eq!(all.kv_tokens, every.kv_tokens, "all hidden states = 65 asked layers");
    assert_eq!(all.kv_cache_bytes, three.kv_cache_bytes, "the same memory");
    let per_token = |sv: &probe_core::plan::VllmServerPlan| sv.kv_cache_bytes as f64 / sv.kv_tokens as f64;
    let want = f64::from(256 << 10) + f64::from(3 * 5120 * 2);
    assert!((per_token(&three) / want - 1.0).abs() < 1e-3, "KV + 3 hidden states per token: {}", per_token(&three));
    let ratio = three.kv_tokens as f64 / every.kv_tokens as f64;
    assert!(ratio >= 3.0, "3 layers hold {ratio:.2}x the tokens of 65 ({} vs {})", three.kv_tokens, every.kv_tokens);
}

/// Issue 26: whole papers into Qwen3-32B. With the attention candle runs (query chunks, no
/// `[batch, heads, seq, seq]` score matrix), 8,000-token prompts extract on one 80 GiB GPU
/// alone; the eager estimate (30 GiB of f32 scores and softmax at batch 1) spilled blocks to the CPU.
#[test]
fn qwen3_32b_8000_token_prompts_extract_on_one_80gib_gpu() {
    use probe_core::Positions;
    use probe_core::plan::memory::extraction_working_set;
    use probe_core::plan::{AttentionKind, ExtractionShape, ExtractionWorkload, PlanRequest};
    let inv = DeviceInventory::parse_gpus("1x80GiB").unwrap().with_cpu_bytes(256 * GIB);
    let s = RunSettings::new(8000);
    let plan = resolve_run(inv.clone(), spec("qwen3-32b.json"), &s).unwrap();
    let e = plan.extraction.as_ref().unwrap();
    assert_eq!(devices(&plan), vec![("cuda:0".to_owned(), [0, 63])], "{e:?}");
    assert!(!e.cpu_offload && e.planned_batch_size >= 1 && e.seq_len == 8000, "{e:?}");
    // What `--dry-run --json` prints: no block on the CPU.
    let json = serde_json::to_value(&plan).unwrap();
    let placement = &json["extraction"]["placement"];
    assert_eq!(placement.as_array().map(Vec::len), Some(1), "{placement}");
    assert_eq!(placement[0]["device"], "cuda:0", "{placement}");
    assert_eq!(json["extraction"]["cpu_offload"], false);

    let plan_with = |attention| {
        let w = ExtractionWorkload::new(8000, 64).with_attention(attention);
        let req = PlanRequest::new(spec("qwen3-32b.json"), inv.clone())
            .with_compute_dtype(Dtype::Bf16)
            .with_extraction(Some(w))
            .with_cpu_offload(true);
        Planner::new(inv.clone()).plan(req).unwrap().extraction.unwrap()
    };
    let chunked = plan_with(AttentionKind::Chunked);
    assert!(!chunked.cpu_offload && chunked.batch_size >= 1);
    // One input of 8,000 tokens: a few GiB of working set, not the 30 GiB of eager f32 scores and softmax.
    let ws = |attention| {
        let shape = ExtractionShape::new(1, 8000, 65, Positions::Last, Dtype::Bf16).with_attention(attention);
        extraction_working_set(&spec("qwen3-32b.json"), &shape)
    };
    assert!(ws(AttentionKind::Chunked) < 4 * GIB, "{}", ws(AttentionKind::Chunked));
    assert!(ws(AttentionKind::Eager) > 30 * GIB, "{}", ws(AttentionKind::Eager));
    let eager = plan_with(AttentionKind::Eager);
    assert!(eager.cpu_offload && eager.batch_size == 1, "the eager estimate spills: {eager:?}");
}
