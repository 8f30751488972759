//! `probe sweep`: labelled prompts → completions → activations → one probe per layer.

use std::path::{Path, PathBuf};

use clap::Args;
use probe_core::sweep::{
    self, LayerSelection, ProbeConfig, PromptFormat, PromptSet, SweepConfig, SweepParts, SweepReport,
};
use probe_core::{Error, Positions, Result, SamplingParams};

use crate::backends::BackendKind;
use crate::config_file::ProbeToml;
use crate::outputs;
use crate::progress::Bars;
use crate::servers::{self, Servers};

/// Arguments of `probe sweep`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SweepArgs {
    /// Model folder (Hugging Face layout: config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub(crate) model: String,
    /// Prompts: JSON lines with `id`, `text` and `label`.
    #[arg(long)]
    pub(crate) prompts: PathBuf,
    /// Name of the prompt set in the cache and the report [default: the prompt file's name
    /// without extension]; ASCII letters, digits, `.`, `_` and `-`.
    #[arg(long)]
    pub(crate) prompt_set: Option<String>,
    /// Layers: `all`, `12`, `3,5,7`, `2..6` (end excluded) or `2..=6`.
    #[arg(long)]
    pub(crate) layers: LayerSelection,
    /// Backend: candle (default), vllm, tch, ort, or mock (test double, no model).
    #[arg(long)]
    pub(crate) backend: Option<BackendKind>,
    /// Cache URL: a folder, file:///abs/path, memory:// or s3://bucket/prefix
    /// (default: `[cache] url` in probe.toml, then $PROBE_CACHE, then ./probe-cache).
    #[arg(long)]
    pub(crate) cache: Option<String>,
    /// Position reduction: last or mean [default: last].
    #[arg(long)]
    pub(crate) positions: Option<Positions>,
    /// Prompts per forward pass and per cached batch [default: 16].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// New tokens per completion [default: 64].
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) temperature: Option<f32>,
    /// Seed of the sampler and of the train/test split [default: 0].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Probe the prompt texts themselves: no completions.
    #[arg(long)]
    pub(crate) no_generate: bool,
    /// vLLM server URL for `--backend vllm` (repeatable) (default: `[vllm] urls` in probe.toml).
    #[arg(long)]
    pub(crate) url: Vec<String>,
    /// Settings file [default: ./probe.toml when present].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Output folder for report.json, report.md and accuracy.svg.
    #[arg(long, default_value = "probe-out")]
    pub(crate) out: PathBuf,
    /// Run only shard k of N (1 ≤ k ≤ N): its blocks of prompts, generated and extracted into
    /// the shared cache; no report (`probe merge` makes it once every shard is done).
    #[arg(long, value_name = "k/N")]
    pub(crate) shard: Option<probe_core::sweep::Shard>,
    /// Print the device roles, time-sharing and vLLM launch commands; start nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// Everything resolved and checked, before anything expensive.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) backend: BackendKind,
    pub(crate) model: String,
    pub(crate) prompts: PromptSet,
    pub(crate) config: SweepConfig,
    pub(crate) cache_url: String,
    pub(crate) out: PathBuf,
    /// CUDA ordinal for extraction (`[devices] extraction_gpus`, the first one).
    pub(crate) gpu: Option<usize>,
    /// Device roles, the vLLM servers given (`--url`, else `[vllm] urls`) or launched.
    pub(crate) servers: Servers,
}

/// The cache URL: flag, then the file, then `$PROBE_CACHE`, then `./probe-cache`.
pub(crate) fn cache_url(flag: Option<&str>, file: &ProbeToml) -> String {
    flag.map(str::to_owned)
        .or_else(|| file.cache.url.clone())
        .or_else(|| std::env::var("PROBE_CACHE").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "./probe-cache".into())
}

/// Resolves flags over the settings file and checks everything that can be checked
/// without loading the model.
pub(crate) fn plan(args: &SweepArgs) -> Result<Plan> {
    let file = ProbeToml::load(args.config.as_deref())?;
    let backend = args.backend.unwrap_or(BackendKind::Candle);
    backend.check_available()?;
    let mut prompts = PromptSet::load(&args.prompts, PromptFormat::labelled())?;
    if let Some(name) = &args.prompt_set {
        prompts = prompts.with_name(name)?;
    }
    for (label, count) in prompts.class_counts() {
        if count < 2 {
            return Err(Error::invalid(
                "prompt file",
                format!(
                    "{}: label {label:?} has {count} prompt; a train/test split needs at least 2 per class",
                    args.prompts.display()
                ),
            ));
        }
    }
    if !args.url.is_empty() && backend != BackendKind::Vllm {
        return Err(Error::invalid("url", format!("{:?} is only used with --backend vllm", args.url[0])));
    }
    let num_layers = backend.model_layers(&args.model)?;
    let layers = args.layers.resolve(num_layers)?;
    let positions = match (args.positions, &file.extraction.positions) {
        (Some(p), _) => p,
        (None, Some(s)) => s.parse()?,
        (None, None) => Positions::Last,
    };
    if positions == Positions::All {
        return Err(Error::invalid("positions", "\"all\" (a probe needs one vector per prompt: use last or mean)"));
    }
    let batch_size = args.batch_size.or(file.extraction.batch_size).unwrap_or(16);
    if batch_size == 0 {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    let g = &file.generation;
    let seed = args.seed.or(g.seed).unwrap_or(0);
    let sampling = SamplingParams::greedy(args.max_tokens.or(g.max_tokens).unwrap_or(64))
        .with_temperature(args.temperature.or(g.temperature).unwrap_or(0.0))
        .with_top_p(g.top_p.unwrap_or(1.0))
        .with_seed(seed);
    sampling.validate()?;
    let urls = if args.url.is_empty() { file.vllm.urls.clone().unwrap_or_default() } else { args.url.clone() };
    let cache_url = cache_url(args.cache.as_deref(), &file);
    probe_cache::check_url(&cache_url)?;
    let config = SweepConfig::new(layers)
        .with_positions(positions)
        .with_batch_size(batch_size)
        .with_sampling((!args.no_generate).then_some(sampling))
        .with_probe(ProbeConfig::default().with_seed(seed))
        // vLLM: several blocks of completions in flight keep every server busy.
        .with_generation_in_flight(if backend == BackendKind::Vllm { 4 * urls.len().max(1) } else { 1 });
    Ok(Plan {
        backend,
        model: args.model.clone(),
        prompts,
        config,
        cache_url,
        out: args.out.clone(),
        gpu: file.devices.extraction_gpus.as_ref().and_then(|g| g.first().copied()),
        servers: Servers::plan(
            &file,
            backend,
            &args.model,
            &urls,
            !args.no_generate,
            args.out.join("vllm-logs"),
            args.dry_run,
        )?,
    })
}

/// Runs a checked plan: opens the cache and the model, sweeps, writes the outputs.
pub(crate) async fn execute(plan: Plan, quiet: bool) -> Result<SweepReport> {
    let cache = probe_cache::from_url(&plan.cache_url)?;
    let bars = Bars::new(quiet);
    let launched = plan.servers.on_demand(&plan.model)?;
    let ld = launched.as_deref();
    let generated = servers::generation_first(ld, &plan.prompts, &plan.config, cache.as_ref(), &bars, None).await?;
    tracing::info!("loading {} with {:?}", plan.model, plan.backend);
    let model = crate::faults::inject(plan.backend.open(&plan.model, plan.gpu, &plan.servers.urls())?)?;
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    if let Some(g) = ld.map(|g| g as &dyn probe_core::Generator).or(model.generator.as_deref()) {
        parts = parts.with_generator(g);
    }
    let mut report = sweep::run(parts, &plan.prompts, &plan.config).await?;
    servers::after_sweep(ld, generated, &mut report).await?;
    let written = outputs::write_all(&report, &plan.out)?;
    print_report(&report, &written, &cache.location());
    Ok(report)
}

pub(crate) fn print_report(report: &SweepReport, written: &outputs::Written, cache: &str) {
    println!("{}", report.table().trim_end());
    if let Some(b) = report.best() {
        println!("best layer: {} (accuracy {:.3}, AUC {:.3})", b.layer, b.accuracy, b.auc);
    }
    println!("{}", report.summary);
    println!("report: {} · {} · {}", show(&written.json), show(&written.markdown), show(&written.plot));
    println!("cache: {cache}");
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// `probe sweep`.
pub(crate) async fn run(args: SweepArgs, quiet: bool) -> Result<()> {
    let plan = plan(&args)?;
    if let (Some(shard), false) = (args.shard, args.dry_run) {
        return crate::shard_cmd::run_shard(plan, shard, quiet).await;
    }
    if args.dry_run {
        plan.servers.dry_run_lines(true).iter().for_each(|l| println!("{l}"));
        return Ok(());
    }
    servers::with_signals(plan.servers.launches(), execute(plan, quiet)).await.map(|_| ())
}
