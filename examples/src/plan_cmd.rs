//! `probe plan`: the device and memory plan for a model on some GPUs, as a table or JSON.
//!
//! `--activation-peak` and `--non-torch-memory` reproduce a measured vLLM start-up log:
//! `probe plan --model llama-3-8b --gpus 39.5GiB --activation-peak 9.37GiB
//! --non-torch-memory 0.10GiB --max-model-len 8192 --no-extraction` gives vLLM's KV blocks.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use probe_core::plan::units::parse_bytes;
use probe_core::plan::{
    AttentionKind, Dtype, ExtractionWorkload, GenerationWorkload, ModelSpec, Plan, PlanRequest, RunPlan, ShareMode,
    VllmSettings, parse_gpu_set,
};
use probe_core::{DevicePolicy, Error, Positions, Result};

/// Arguments of `probe plan`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PlanArgs {
    /// The model's config.json, or a folder holding one.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// GPUs: "8x80GiB", "2x40GB", "80GiB,80GiB,40GiB" [default: detected; CPU only without `cuda`].
    #[arg(long)]
    pub(crate) gpus: Option<String>,
    /// CPU memory for offload [default: this machine's].
    #[arg(long)]
    pub(crate) cpu_memory: Option<String>,
    /// Weight dtype: f32, bf16, f16, int8, int4 [default: the checkpoint's; f32 as bf16 on GPUs].
    #[arg(long)]
    pub(crate) dtype: Option<Dtype>,
    /// KV-cache dtype [default: the compute dtype].
    #[arg(long)]
    pub(crate) kv_dtype: Option<Dtype>,
    /// exclusive (disjoint GPU sets) or time-shared (phases in turn) [default: exclusive when possible].
    #[arg(long)]
    pub(crate) mode: Option<ShareMode>,
    /// GPUs for generation: "0,1", "0-3", "all".
    #[arg(long)]
    pub(crate) generation_gpus: Option<String>,
    /// GPUs for extraction: "2,3", "4-7", "all".
    #[arg(long)]
    pub(crate) extraction_gpus: Option<String>,
    /// Plan no generation phase.
    #[arg(long)]
    pub(crate) no_generation: bool,
    /// Plan no extraction phase.
    #[arg(long)]
    pub(crate) no_extraction: bool,
    /// Wanted max_new_tokens.
    #[arg(long, default_value_t = 512)]
    pub(crate) max_tokens: u64,
    /// Longest prompt in tokens.
    #[arg(long, default_value_t = 512)]
    pub(crate) prompt_tokens: u64,
    /// Sequences in flight per vLLM server (shrinks to fit unless --fixed-batch).
    #[arg(long, default_value_t = 64)]
    pub(crate) batch_size: u64,
    /// Keep --batch-size and cap max_new_tokens instead.
    #[arg(long)]
    pub(crate) fixed_batch: bool,
    /// Largest extraction batch wanted.
    #[arg(long, default_value_t = 64)]
    pub(crate) extraction_batch_size: u64,
    /// Extraction tokens per input [default: prompt + max tokens].
    #[arg(long)]
    pub(crate) seq_len: Option<u64>,
    /// Layers captured per forward [default: all, L + 1].
    #[arg(long)]
    pub(crate) layers: Option<u64>,
    /// Position reduction of the captured layers: last, mean, all.
    #[arg(long, default_value = "last")]
    pub(crate) positions: Positions,
    /// The extractor's attention: chunked (probe's candle attention: one query chunk's scores),
    /// eager (scores materialised, as transformers' eager) or fused (flash / SDPA).
    #[arg(long, default_value = "chunked", value_parser = parse_attention)]
    pub(crate) attention: AttentionKind,
    /// No CPU offload of extraction layers.
    #[arg(long)]
    pub(crate) no_cpu_offload: bool,
    /// Per-GPU memory cap for extraction ("70GiB").
    #[arg(long)]
    pub(crate) gpu_max_memory: Option<String>,
    /// CPU memory cap for offloaded layers [default: 90 % of CPU memory].
    #[arg(long)]
    pub(crate) cpu_max_memory: Option<String>,
    /// vLLM --max-model-len [default: prompt + max tokens].
    #[arg(long)]
    pub(crate) max_model_len: Option<u64>,
    /// vLLM --gpu-memory-utilization, shared by the servers of a GPU [default: 0.90].
    #[arg(long)]
    pub(crate) gpu_memory_utilization: Option<f64>,
    /// vLLM --block-size.
    #[arg(long, default_value_t = 16)]
    pub(crate) block_size: u64,
    /// vLLM --max-num-seqs upper bound [default: 256].
    #[arg(long)]
    pub(crate) max_num_seqs: Option<u64>,
    /// vLLM --max-num-batched-tokens of the start-up profile [default: 8192].
    #[arg(long)]
    pub(crate) max_num_batched_tokens: Option<u64>,
    /// Measured vLLM activation peak ("9.37GiB"), instead of the estimate.
    #[arg(long)]
    pub(crate) activation_peak: Option<String>,
    /// Measured vLLM non-torch memory ("0.10GiB") [default: 1GiB].
    #[arg(long)]
    pub(crate) non_torch_memory: Option<String>,
    /// vLLM servers per GPU.
    #[arg(long, default_value_t = 1)]
    pub(crate) servers_per_gpu: usize,
    /// vLLM --tensor-parallel-size [default: the smallest that fits].
    #[arg(long)]
    pub(crate) tensor_parallel_size: Option<usize>,
    /// Paged-attention engine (TPU sampler): kernel scratch limit per device ("16MiB"); plans
    /// max_seqs / max_pages / max_prefill_size instead of vLLM servers.
    #[arg(long)]
    pub(crate) scratch_limit: Option<String>,
    /// Paged engine: device memory for weights and pages ("95GiB") [default: the first GPU's free memory].
    #[arg(long)]
    pub(crate) paged_device_memory: Option<String>,
    /// Paged engine: tokens per page.
    #[arg(long, default_value_t = 128)]
    pub(crate) page_size: u64,
    /// Paged engine: sequences decoded together (halved until they fit).
    #[arg(long, default_value_t = 8)]
    pub(crate) max_seqs: u64,
    /// Paged engine: tokens per prefill step (halved until the kernel scratch fits).
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_prefill_size: u64,
    /// Paged engine: devices the model is sharded over.
    #[arg(long, default_value_t = 1)]
    pub(crate) shards: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The paged-engine plan, when `--scratch-limit` is given.
fn paged(
    args: &PlanArgs,
    spec: &ModelSpec,
    inventory: &probe_core::plan::DeviceInventory,
) -> Result<Option<probe_core::plan::paged::PagedPlan>> {
    use probe_core::plan::paged::{PagedLimits, PagedRequest, plan_paged};
    let Some(limit) = &args.scratch_limit else { return Ok(None) };
    let scratch = parse_bytes("scratch limit", limit)?;
    let device = match &args.paged_device_memory {
        Some(m) => parse_bytes("paged device memory", m)?,
        None => inventory.gpus.first().map(|d| d.free_bytes).ok_or_else(|| {
            Error::invalid("paged device memory", "no GPU declared or found: give --paged-device-memory")
        })?,
    };
    let req =
        PagedRequest::new(args.max_seqs, args.page_size, args.prompt_tokens + args.max_tokens, args.max_prefill_size)
            .with_shards(args.shards);
    let mut limits = PagedLimits::new(device, scratch);
    if let Some(d) = args.dtype {
        limits.dtype = d;
    }
    plan_paged(spec, &req, &limits).map(Some)
}

fn parse_attention(s: &str) -> std::result::Result<AttentionKind, String> {
    match s {
        "chunked" => Ok(AttentionKind::Chunked),
        "eager" => Ok(AttentionKind::Eager),
        "fused" | "flash" | "sdpa" => Ok(AttentionKind::Fused),
        other => Err(format!("{other:?} (expected chunked, eager or fused)")),
    }
}

/// Builds the request from the arguments and an inventory.
fn request(args: &PlanArgs, spec: ModelSpec, inventory: probe_core::plan::DeviceInventory) -> Result<PlanRequest> {
    let bytes = |what: &str, v: &Option<String>| v.as_deref().map(|s| parse_bytes(what, s)).transpose();
    let mut vllm = VllmSettings::default().with_block_size(args.block_size).with_servers_per_gpu(args.servers_per_gpu);
    if let Some(u) = args.gpu_memory_utilization {
        vllm = vllm.with_gpu_memory_utilization(u);
    }
    if let Some(n) = args.max_model_len {
        vllm = vllm.with_max_model_len(n);
    }
    if let Some(n) = args.max_num_seqs {
        vllm = vllm.with_max_num_seqs(n);
    }
    if let Some(n) = args.max_num_batched_tokens {
        vllm = vllm.with_max_num_batched_tokens(n);
    }
    if let Some(b) = bytes("activation peak", &args.activation_peak)? {
        vllm = vllm.with_activation_peak(b);
    }
    if let Some(b) = bytes("non-torch memory", &args.non_torch_memory)? {
        vllm = vllm.with_non_torch(b);
    }
    if let Some(t) = args.tensor_parallel_size {
        vllm = vllm.with_tensor_parallel_size(t);
    }
    let generation = (!args.no_generation).then(|| {
        GenerationWorkload::new(args.prompt_tokens, args.max_tokens, args.batch_size).with_fixed_batch(args.fixed_batch)
    });
    let mut extraction = ExtractionWorkload::new(
        args.seq_len.unwrap_or(args.prompt_tokens + args.max_tokens),
        args.extraction_batch_size,
    )
    .with_positions(args.positions)
    .with_attention(args.attention);
    if let Some(l) = args.layers {
        extraction = extraction.with_layers(l);
    }
    let gen_set =
        args.generation_gpus.as_deref().map(|s| parse_gpu_set("generation GPUs", s, &inventory)).transpose()?;
    let ext_set =
        args.extraction_gpus.as_deref().map(|s| parse_gpu_set("extraction GPUs", s, &inventory)).transpose()?;
    let gpu_max = bytes("GPU max memory", &args.gpu_max_memory)?;
    let cpu_max = bytes("CPU max memory", &args.cpu_max_memory)?;
    let mut req = PlanRequest::new(spec, inventory)
        .with_generation(generation)
        .with_extraction((!args.no_extraction).then_some(extraction))
        .with_vllm(vllm)
        .with_cpu_offload(!args.no_cpu_offload);
    req.dtype = args.dtype;
    req.kv_dtype = args.kv_dtype;
    req.mode = args.mode;
    req.generation_gpus = gen_set;
    req.extraction_gpus = ext_set;
    req.gpu_max_memory = gpu_max;
    req.cpu_max_memory = cpu_max;
    Ok(req)
}

/// The JSON form: the headline figures first, then the whole plan.
fn to_json(plan: &Plan, inventory_message: &str) -> serde_json::Value {
    let server = plan.generation.as_ref().and_then(|g| g.servers.first());
    serde_json::json!({
        "params": plan.model.params,
        "weights_bytes": plan.model.weights_bytes,
        "kv_bytes_per_token": plan.model.kv_bytes_per_token,
        "kv_cache_bytes": server.map(|s| s.kv_cache_bytes),
        "kv_blocks": server.map(|s| s.kv_blocks),
        "devices": plan.devices,
        "inventory": inventory_message,
        "plan": plan,
    })
}

/// The readable form.
fn to_table(plan: &Plan, inventory_message: &str) -> String {
    format!("devices: {inventory_message}\n{plan}")
}

/// `probe plan`.
///
/// # Errors
/// [`Error::InvalidInput`] for bad arguments or an impossible plan (with its numbers),
/// [`Error::Io`] when the config cannot be read.
pub(crate) async fn run(args: PlanArgs) -> Result<()> {
    let spec = ModelSpec::from_path(&args.model)?;
    let mut detected = probe_backends::device::inventory(args.gpus.as_deref())?;
    if let Some(c) = &args.cpu_memory {
        let cpu = parse_bytes("cpu memory", c)?;
        detected.inventory = detected.inventory.with_cpu_bytes(cpu);
    }
    let planner = probe_core::plan::Planner::new(detected.inventory.clone());
    if let Some(p) = paged(&args, &spec, &detected.inventory)? {
        let text = if args.json {
            serde_json::to_string_pretty(&p).map_err(|e| Error::invalid("plan", format!("cannot serialise: {e}")))?
        } else {
            p.to_string()
        };
        return print(&text);
    }
    let req = request(&args, spec, planner.inventory()?)?;
    // The same path as a run's plan (`probe sweep --dry-run --json`), from this command's request.
    let run = RunPlan::from_request(&planner, req, None)?;
    let plan = &run.detail;
    let text = if args.json {
        let mut v = to_json(plan, &detected.message);
        v["run"] = serde_json::to_value(&run).map_err(|e| Error::invalid("plan", format!("cannot serialise: {e}")))?;
        serde_json::to_string_pretty(&v).map_err(|e| Error::invalid("plan", format!("cannot serialise: {e}")))?
    } else {
        to_table(plan, &detected.message)
    };
    print(&text)
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout", e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        plan: PlanArgs,
    }

    fn config() -> String {
        format!("{}/../probe-core/tests/fixtures/configs/llama-3-8b.json", env!("CARGO_MANIFEST_DIR"))
    }

    fn plan_of(argv: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(argv).map_err(|e| Error::invalid("arguments", e))?;
        let spec = ModelSpec::from_path(&cli.plan.model)?;
        let inv = probe_backends::device::inventory(cli.plan.gpus.as_deref())?.inventory;
        let planner = probe_core::plan::Planner::new(inv.clone());
        RunPlan::from_request(&planner, request(&cli.plan, spec, inv)?, None).map(|r| r.detail)
    }

    #[test]
    fn reproduces_the_a100_log() {
        let c = config();
        let p = plan_of(&[
            "probe",
            "--model",
            &c,
            "--gpus",
            "39.5GiB",
            "--activation-peak",
            "9.37GiB",
            "--non-torch-memory",
            "0.10GiB",
            "--max-model-len",
            "8192",
            "--no-extraction",
        ])
        .unwrap();
        let j = to_json(&p, "declared");
        let blocks = j["kv_blocks"].as_u64().unwrap();
        assert!((blocks as f64 / 5691.0 - 1.0).abs() < 0.01, "{blocks}");
        assert_eq!(j["kv_bytes_per_token"], 131_072);
        assert_eq!(j["params"], 8_030_261_248u64);
        assert!(j["weights_bytes"].as_u64().is_some() && j["devices"].as_array().unwrap().len() == 2);
        assert!(to_table(&p, "declared").contains("blocks"));
    }

    #[test]
    fn paged_engine_ladder() {
        let c = config();
        let cli = Cli::try_parse_from([
            "probe",
            "--model",
            &c,
            "--scratch-limit",
            "16MiB",
            "--paged-device-memory",
            "95GiB",
            "--max-tokens",
            "4096",
        ])
        .unwrap();
        let spec = ModelSpec::from_path(&cli.plan.model).unwrap();
        let p = paged(&cli.plan, &spec, &Default::default()).unwrap().expect("paged plan");
        assert_eq!((p.max_prefill_size, p.max_seqs, p.max_pages), (256, 8, 288));
        let cli = Cli::try_parse_from(["probe", "--model", &c, "--scratch-limit", "16MiB"]).unwrap();
        let e = paged(&cli.plan, &spec, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("--paged-device-memory"), "{e}");
    }

    #[test]
    fn table_and_refusals() {
        let c = config();
        let p = plan_of(&[
            "probe",
            "--model",
            &c,
            "--gpus",
            "4x80GiB",
            "--generation-gpus",
            "0-2",
            "--extraction-gpus",
            "3",
        ])
        .unwrap();
        let t = to_table(&p, "declared");
        assert!(t.contains("generation on GPUs [0, 1, 2]") && t.contains("extraction on GPUs [3]"), "{t}");
        let e = plan_of(&["probe", "--model", &c, "--gpus", "2x80GiB", "--extraction-gpus", "4"]).unwrap_err();
        assert!(e.to_string().contains("GPU 4 does not exist"), "{e}");
        let e = plan_of(&[
            "probe",
            "--model",
            &c,
            "--gpus",
            "2x80GiB",
            "--generation-gpus",
            "0,1",
            "--extraction-gpus",
            "1",
            "--mode",
            "exclusive",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("GPU 1 is in both"), "{e}");
        let e = plan_of(&["probe", "--model", &c, "--gpus", "1x10GiB", "--no-extraction"]).unwrap_err();
        assert!(e.to_string().contains("GPU 0 has"), "{e}");
    }
}
