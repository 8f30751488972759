//! `probe generate`: completions of prompts to JSON lines, in input order, optionally cached.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use probe_core::sweep::{self, NoProgress, PromptFormat, PromptSet, SweepConfig};
use probe_core::{Error, Generator, Result, SamplingParams};

use crate::backends::BackendKind;
use crate::config_file::ProbeToml;
use crate::run_plan::{self, PlanFlags, Workload};
use crate::servers::{self, OnDemand, Servers};
use crate::sweep_cmd::cache_url;

/// Arguments of `probe generate`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GenerateArgs {
    /// Model folder (candle) or served model name (vllm).
    #[arg(long)]
    pub(crate) model: String,
    /// Prompts: JSON lines with `text` (and `id`, else the line number).
    #[arg(long)]
    pub(crate) prompts: PathBuf,
    /// Backend: candle (default), vllm, or mock.
    #[arg(long)]
    pub(crate) backend: Option<BackendKind>,
    /// vLLM server URL (repeatable) (default: `[vllm] urls` in probe.toml).
    #[arg(long)]
    pub(crate) url: Vec<String>,
    /// New tokens per completion [default: 64].
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) temperature: Option<f32>,
    /// Seed of the sampler [default: 0].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Cache the completions here (and reuse cached ones).
    #[arg(long)]
    pub(crate) cache: Option<String>,
    /// Settings file [default: ./probe.toml when present].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Output JSON-lines file.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Chat template for `messages` prompts (a Jinja file) [default: the model folder's
    /// chat_template.jinja, else tokenizer_config.json's chat_template].
    #[arg(long, value_name = "FILE")]
    pub(crate) chat_template: Option<PathBuf>,
    /// Prompts decoded together by candle's batched generation [default: the plan's batch size,
    /// else 16].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Print the device roles and vLLM launch commands; start nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) plan: PlanFlags,
}

/// `probe generate`.
pub(crate) async fn run(args: GenerateArgs) -> Result<()> {
    run_plan::check_json(&args.plan, args.dry_run)?;
    let file = ProbeToml::load(args.config.as_deref())?;
    let backend = args.backend.unwrap_or(BackendKind::Candle);
    if matches!(backend, BackendKind::Tch | BackendKind::Ort) {
        return Err(Error::invalid("backend", format!("{backend:?} cannot generate (use candle or vllm)")));
    }
    if args.batch_size == Some(0) {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    backend.check_available()?;
    let prompts = PromptSet::load(&args.prompts, PromptFormat::texts())?;
    if backend != BackendKind::Vllm {
        backend.model_layers(&args.model)?;
    }
    let prompts = probe_backends::chat::render_prompts(
        prompts,
        std::path::Path::new(&args.model),
        args.chat_template.as_deref(),
    )?;
    let urls = if args.url.is_empty() { file.vllm.urls.clone().unwrap_or_default() } else { args.url.clone() };
    let g = &file.generation;
    let sampling = SamplingParams::greedy(args.max_tokens.or(g.max_tokens).unwrap_or(64))
        .with_temperature(args.temperature.or(g.temperature).unwrap_or(0.0))
        .with_top_p(g.top_p.unwrap_or(1.0))
        .with_seed(args.seed.or(g.seed).unwrap_or(0));
    sampling.validate()?;
    if let Some(url) = &args.cache {
        probe_cache::check_url(url)?;
    }
    if !args.url.is_empty() && backend != BackendKind::Vllm {
        return Err(Error::invalid("url", format!("{:?} is only used with --backend vllm", args.url[0])));
    }
    let log_dir = args.out.parent().unwrap_or(std::path::Path::new("")).join("vllm-logs");
    let mut servers = Servers::plan(&file, backend, &args.model, &urls, true, log_dir, args.dry_run)?;
    let work = Workload {
        backend,
        model: &args.model,
        prompts: &prompts,
        max_new_tokens: Some(u64::from(sampling.max_tokens)),
        launches: servers.launches(),
        in_process: backend != BackendKind::Vllm,
        hidden_states_on_servers: false,
        batch_size: args.batch_size,
        layers: Some(1),
        positions: probe_core::Positions::Last,
    };
    let plan = run_plan::resolve(&args.plan, &file, &work)?;
    servers.use_plan(plan.as_ref())?;
    if args.dry_run {
        if args.plan.json {
            return run_plan::print_json("generate", backend, &args.model, plan.as_ref(), &servers.urls());
        }
        servers.dry_run_lines(false).iter().for_each(|l| println!("{l}"));
        plan.iter().flat_map(|p| p.lines()).for_each(|l| println!("plan: {l}"));
        return Ok(());
    }
    let launched = servers.on_demand(&args.model)?;
    let on = launched.is_some();
    servers::with_signals(on, generate(&args, &file, backend, &prompts, sampling, launched, plan.as_ref())).await
}

/// Generates (or reads the cache), writes the output; stops launched servers at the end.
async fn generate(
    args: &GenerateArgs,
    file: &ProbeToml,
    backend: BackendKind,
    prompts: &PromptSet,
    sampling: SamplingParams,
    launched: Option<Arc<OnDemand>>,
    plan: Option<&probe_core::plan::RunPlan>,
) -> Result<()> {
    let urls = if args.url.is_empty() { file.vllm.urls.clone().unwrap_or_default() } else { args.url.clone() };
    // In process, the model goes where the plan placed it.
    let gpu = match plan {
        Some(p) if backend != BackendKind::Vllm => p.first_extraction_gpu(),
        _ => file.devices.generation_gpus.as_ref().and_then(|g| g.first().copied()),
    };
    let generator = match &launched {
        Some(g) => g.clone() as Arc<dyn Generator>,
        None => {
            let batch = args.batch_size.or_else(|| plan.map(|p| p.batch_size_or(16)));
            backend.open_generator_as(&args.model, gpu, &urls, (run_plan::dtype_name(plan), batch))?
        }
    };
    // Opened (and, on disk, created) only once the generator is: bad input writes nothing.
    // Without --cache the completions go through a cache in memory, gone at exit.
    let url = args.cache.as_deref().map_or_else(|| "memory://".to_owned(), |u| cache_url(Some(u), file));
    let cache = probe_cache::from_url(&url)?;
    // The sweep's generation phase: blocks of 16 prompts, cached as they finish, several in
    // flight on vLLM servers.
    let in_flight = if backend == BackendKind::Vllm { 4 * urls.len().max(1) } else { 1 };
    let config = SweepConfig::new(Vec::new()).with_sampling(Some(sampling)).with_generation_in_flight(in_flight);
    let (gens, counts) = sweep::completions(generator.as_ref(), cache.as_ref(), &NoProgress, prompts, &config).await?;
    tracing::info!(
        "{} completions generated, {} read from the cache",
        counts.generations_generated,
        counts.generations_cached
    );
    let mut out = Vec::new();
    for (p, g) in prompts.prompts.iter().zip(&gens) {
        let line = serde_json::json!({
            "id": p.id,
            "prompt": g.prompt,
            "completion": g.completion,
            "finish_reason": g.finish_reason,
            "completion_token_ids": g.token_ids,
            "prompt_token_ids": g.prompt_token_ids,
        });
        serde_json::to_writer(&mut out, &line).map_err(|e| Error::backend("json", e))?;
        out.write_all(b"\n").map_err(|e| Error::io(args.out.display(), e))?;
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
    }
    std::fs::write(&args.out, out).map_err(|e| Error::io(args.out.display(), e))?;
    if let Some(g) = &launched {
        g.stop("after generation").await?;
    }
    println!("wrote {} completions to {}", gens.len(), args.out.display());
    Ok(())
}
