//! `probe sweep`: labelled prompts → completions → activations → one probe per layer.

use std::path::{Path, PathBuf};

use clap::Args;
use probe_core::sweep::{
    self, LayerSelection, ProbeConfig, PromptFormat, PromptSet, SweepConfig, SweepParts, SweepReport,
};
use probe_core::{Error, Readout, Result, SamplingParams};

use crate::backends::BackendKind;
use crate::config_file::ProbeToml;
use crate::outputs;
use crate::progress::Bars;
use crate::run_plan::{self, PlanFlags, Workload};
use crate::servers::{self, Servers};
use probe_backends::device::MemorySampler;

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
    /// Token positions the probes read: last, last-prompt, mean, mean-completion or
    /// marker:TEXT (the last token of TEXT's last occurrence) [default: last].
    #[arg(long)]
    pub(crate) positions: Option<Readout>,
    /// Prompts per forward pass and per cached batch [default: 16].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// New tokens per completion [default: 64].
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) temperature: Option<f32>,
    /// Seed of the sampler, the probe folds, the control task and the bootstrap [default: 0].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Stratified cross-validation folds of the probes (≥ 2) [default: 5].
    #[arg(long, default_value_t = 5)]
    pub(crate) folds: usize,
    /// The probes' inverse regularisation strength C (scikit-learn's), or a comma-separated grid
    /// (`0.01,0.1,1,10`) chosen per fold by inner cross-validation [default: 1].
    #[arg(long, value_name = "C[,C…]")]
    pub(crate) probe_c: Option<String>,
    /// How labels are read: classes, numeric (ridge regression, R²) or auto (numeric when every
    /// label is a number and one is not an integer or there are more than 20 values) [default: auto].
    #[arg(long, value_name = "KIND")]
    pub(crate) labels: Option<probe_core::sweep::LabelKind>,
    /// Probe the prompt texts themselves: no completions.
    #[arg(long)]
    pub(crate) no_generate: bool,
    /// vLLM server URL for `--backend vllm` (repeatable) (default: `[vllm] urls` in probe.toml).
    #[arg(long)]
    pub(crate) url: Vec<String>,
    /// Extractor for `--backend vllm`: candle (default, in process) or vllm (the hidden states
    /// the servers write themselves: launched with the extraction flags, or `--url` servers
    /// started with them, see README; they generate too, and a readout within a completion's
    /// generation pass costs no pass of its own).
    #[arg(long, value_name = "candle|vllm")]
    pub(crate) extractor: Option<String>,
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
    /// Chat template for `messages` prompts (a Jinja file) [default: the model folder's
    /// chat_template.jinja, else tokenizer_config.json's chat_template].
    #[arg(long, value_name = "FILE")]
    pub(crate) chat_template: Option<PathBuf>,
    /// Print the device roles, time-sharing and vLLM launch commands; start nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Also test the probes trained on all of --prompts on this prompt set (repeatable; JSON
    /// lines with `text` or `messages`, `id`, and `label` for an accuracy): generalisation
    /// across sets, in `report.json` (`transfer`) and `<out>/predictions-<set>.jsonl`.
    #[arg(long, value_name = "FILE")]
    pub(crate) test_on: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) plan: PlanFlags,
}

/// Everything resolved and checked, before anything expensive.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) backend: BackendKind,
    pub(crate) model: String,
    pub(crate) prompts: PromptSet,
    /// The `--test-on` sets, rendered.
    pub(crate) test_sets: Vec<PromptSet>,
    pub(crate) config: SweepConfig,
    pub(crate) cache_url: String,
    pub(crate) out: PathBuf,
    /// CUDA ordinal for extraction (`[devices] extraction_gpus`, the first one).
    pub(crate) gpu: Option<usize>,
    /// Device roles, the vLLM servers given (`--url`, else `[vllm] urls`) or launched.
    pub(crate) servers: Servers,
    /// The resolved plan (`None` for a model without `config.json`).
    pub(crate) run_plan: Option<probe_core::plan::RunPlan>,
    /// `--extractor vllm`: extraction on the vLLM servers.
    pub(crate) vllm_extraction: bool,
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
    plan_with(args, args.shard.is_some())
}

/// [`plan`] for `probe merge`: the batch grid of the shards (see [`plan_with`]).
pub(crate) fn plan_merge(args: &SweepArgs) -> Result<Plan> {
    plan_with(&SweepArgs { dry_run: true, ..args.clone() }, true)
}

/// [`plan`]; with `fixed_grid` (shards and their merge) the batch size is `--batch-size`,
/// `[extraction] batch_size` or 16, never planned, and the dtype `--dtype`,
/// `[extraction] dtype` or f32: every worker must cut the prompts into the same blocks and
/// key them alike, whatever devices it has.
fn plan_with(args: &SweepArgs, fixed_grid: bool) -> Result<Plan> {
    run_plan::check_json(&args.plan, args.dry_run)?;
    let file = ProbeToml::load(args.config.as_deref())?;
    let mut flags = args.plan.clone();
    if fixed_grid && flags.dtype.is_none() && file.extraction.dtype.is_none() {
        flags.dtype = Some("f32".into());
    }
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
    let vllm_extraction = match args.extractor.as_deref() {
        None | Some("candle") => false,
        Some("vllm") if backend == BackendKind::Vllm => true,
        Some("vllm") => {
            return Err(Error::invalid("extractor", format!("\"vllm\" needs --backend vllm, not {}", backend.name())));
        }
        Some(other) => return Err(Error::invalid("extractor", format!("{other:?} (expected candle or vllm)"))),
    };
    if vllm_extraction && fixed_grid {
        return Err(Error::invalid(
            "extractor",
            "\"vllm\" with --shard or probe merge: not yet (shards extract with candle)",
        ));
    }
    // vLLM extraction: the servers load the model, whatever candle supports.
    let num_layers = if vllm_extraction {
        probe_backends::registry::config_layers(&args.model)?
    } else {
        backend.model_layers(&args.model)?
    };
    let prompts = probe_backends::chat::render_prompts(
        prompts,
        std::path::Path::new(&args.model),
        args.chat_template.as_deref(),
    )?;
    let layers = args.layers.resolve(num_layers)?;
    if fixed_grid && !args.test_on.is_empty() {
        return Err(Error::invalid("test-on", "not with sharded sweeps yet: run the sweep unsharded"));
    }
    let mut test_sets = Vec::new();
    for path in &args.test_on {
        let set = PromptSet::load(path, PromptFormat::texts())?;
        if set.name == prompts.name {
            return Err(Error::invalid(
                "test-on",
                format!("{}: the prompt set {:?} is the training set", path.display(), set.name),
            ));
        }
        let model = std::path::Path::new(&args.model);
        test_sets.push(probe_backends::chat::render_prompts(set, model, args.chat_template.as_deref())?);
    }
    let positions = match (&args.positions, &file.extraction.positions) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => s.parse()?,
        (None, None) => Readout::Last,
    };
    if positions == Readout::All {
        return Err(Error::invalid(
            "positions",
            "\"all\" (a probe needs one vector per prompt: use last, last-prompt, mean, mean-completion or \
             marker:TEXT; probe extract --positions all writes every token)",
        ));
    }
    if args.no_generate && positions == Readout::MeanCompletion {
        return Err(Error::invalid("positions", "mean-completion reads completions, and --no-generate asks for none"));
    }
    let mut batch_size = args.batch_size.or(file.extraction.batch_size);
    if batch_size == Some(0) {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    if fixed_grid {
        batch_size = batch_size.or(Some(16));
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
    let log_dir = args.out.join("vllm-logs");
    let mut servers =
        Servers::plan(&file, backend, &args.model, &urls, !args.no_generate, log_dir.clone(), args.dry_run)?;
    if vllm_extraction {
        servers.extract_on_servers(&file, &args.model, num_layers, log_dir)?;
    }
    let work = Workload {
        backend,
        model: &args.model,
        prompts: &prompts,
        // vLLM extraction: one-token requests to the servers, nothing extracted in process.
        // (The extraction request of prompt + completion asks one token more.)
        max_new_tokens: match (args.no_generate, vllm_extraction) {
            (false, false) => Some(u64::from(sampling.max_tokens)),
            (false, true) => Some(u64::from(sampling.max_tokens) + 1),
            (true, true) => Some(1),
            (true, false) => None,
        },
        launches: servers.launches(),
        in_process: !vllm_extraction,
        hidden_states_on_servers: vllm_extraction,
        batch_size,
        layers: Some(layers.len() as u64),
        positions: positions.positions(),
    };
    let run_plan = run_plan::resolve(&flags, &file, &work)?;
    servers.use_plan(run_plan.as_ref())?;
    let mut config = SweepConfig::new(layers)
        .with_positions(positions)
        .with_batch_size(batch_size.unwrap_or(16))
        .with_sampling((!args.no_generate).then_some(sampling))
        .with_probe(probe_config(args, seed)?)
        // vLLM: several blocks of completions in flight keep every server busy.
        .with_generation_in_flight(if backend == BackendKind::Vllm { 4 * urls.len().max(1) } else { 1 });
    if let Some(p) = &run_plan {
        config = config.with_plan(p.clone());
    }
    let first_gpu = file.devices.extraction_gpus.as_ref().and_then(|g| g.first().copied());
    Ok(Plan {
        backend,
        model: args.model.clone(),
        prompts,
        test_sets,
        config,
        cache_url,
        out: args.out.clone(),
        gpu: run_plan.as_ref().map_or(first_gpu, |p| p.first_extraction_gpu()),
        servers,
        run_plan,
        vllm_extraction,
    })
}

/// Runs a checked plan: opens the cache and the model, sweeps, writes the outputs.
pub(crate) async fn execute(plan: Plan, quiet: bool) -> Result<SweepReport> {
    let cache = probe_cache::from_url(&plan.cache_url)?;
    let memory = std::sync::Arc::new(MemorySampler::start(MEMORY_INTERVAL));
    let bars = Bars::new(quiet).with_memory(memory.clone());
    let launched = plan.servers.on_demand(&plan.model)?;
    let ld = launched.as_deref();
    let generated = servers::generation_first(ld, &plan.prompts, &plan.config, cache.as_ref(), &bars, None).await?;
    tracing::info!("loading {} with {:?}", plan.model, plan.backend);
    memory.phase_started("load");
    let dtype = run_plan::dtype_name(plan.run_plan.as_ref());
    let (opened, extracting_servers) = if plan.vllm_extraction {
        plan.servers.open_extraction(&plan.model)?
    } else {
        let urls = plan.servers.urls();
        (plan.backend.open_planned(&plan.model, plan.run_plan.as_ref(), plan.gpu, &urls, dtype)?, None)
    };
    let model = crate::faults::inject(opened)?;
    memory.phase_finished("load");
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    if let Some(g) = ld.map(|g| g as &dyn probe_core::Generator).or(model.generator.as_deref()) {
        parts = parts.with_generator(g);
    }
    let mut report = sweep::run(parts, &plan.prompts, &plan.config).await?;
    let mut predictions = Vec::new();
    for set in &plan.test_sets {
        let (features, _) = sweep::features(parts, set, &plan.config).await?;
        let (score, applied) = sweep::transfer(&report, set, &features)?;
        report.transfer.push(score);
        predictions.push((set, applied));
    }
    servers::after_sweep(ld, generated, &mut report).await?;
    if let Some(s) = extracting_servers {
        s.stop("after the sweep").await?;
    }
    report.memory = Some(memory.finish(plan.run_plan.as_ref()));
    let written = outputs::write_all(&report, &plan.out)?;
    for (set, applied) in predictions {
        let path = plan.out.join(format!("predictions-{}.jsonl", set.name));
        let mut text = String::new();
        for (probe, (_, rows)) in report.probes.iter().zip(&applied) {
            crate::apply_cmd::lines(probe, set, rows).into_iter().for_each(|l| text.push_str(&(l + "\n")));
        }
        std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))?;
        println!("tested on {}: {}", set.name, path.display());
    }
    print_report(&report, &written, &cache.location());
    Ok(report)
}

pub(crate) fn print_report(report: &SweepReport, written: &outputs::Written, cache: &str) {
    println!("{}", report.table().trim_end());
    if let Some(b) = report.best() {
        println!("best layer: {} (accuracy {:.3}, AUC {:.3})", b.layer, b.accuracy, b.auc);
    }
    println!("{}", report.summary);
    if let Some(e) = report.plan.as_ref().and_then(|p| p.extraction.as_ref()) {
        let how = match e.batch_size_source {
            probe_core::plan::BatchSource::Planned => "planned".to_owned(),
            probe_core::plan::BatchSource::Given => format!("given; planned {}", e.planned_batch_size),
        };
        let devices: Vec<&str> = e.placement.iter().map(|p| p.device.as_str()).collect();
        println!("plan: batch size {} ({how}) · dtype {} · on {}", e.batch_size, e.dtype, devices.join(", "));
    }
    for line in report.memory.iter().flat_map(|m| m.lines()) {
        println!("{line}");
    }
    println!("report: {} · {} · {}", show(&written.json), show(&written.markdown), show(&written.plot));
    if let Some(dir) = &written.probes {
        println!(
            "probes: {}/layer-<L>.safetensors ({} layers; `probe apply --probe …`)",
            show(dir),
            report.probes.len()
        );
    }
    println!("cache: {cache}");
}

/// Milliseconds between memory samples during a run.
const MEMORY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// `--dry-run`: the plan as JSON (`--json`) or as lines; starts nothing, writes nothing.
fn dry_run(args: &SweepArgs, plan: &Plan) -> Result<()> {
    if args.plan.json {
        return run_plan::print_json("sweep", plan.backend, &plan.model, plan.run_plan.as_ref(), &plan.servers.urls());
    }
    plan.servers.dry_run_lines(true).iter().for_each(|l| println!("{l}"));
    plan.run_plan.iter().flat_map(|p| p.lines()).for_each(|l| println!("plan: {l}"));
    Ok(())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The probe settings of the flags: folds, `C` (one or a grid), label kind, seed.
fn probe_config(args: &SweepArgs, seed: u64) -> Result<ProbeConfig> {
    let mut probe = ProbeConfig::default().with_seed(seed).with_folds(args.folds);
    if let Some(c) = &args.probe_c {
        probe = probe.with_c_grid(sweep::parse_c_grid(c)?);
    }
    if let Some(kind) = args.labels {
        probe = probe.with_labels(kind);
    }
    probe.validate()?;
    Ok(probe)
}

/// `probe sweep`.
pub(crate) async fn run(args: SweepArgs, quiet: bool) -> Result<()> {
    let plan = plan(&args)?;
    if let (Some(shard), false) = (args.shard, args.dry_run) {
        return crate::shard_cmd::run_shard(plan, shard, quiet).await;
    }
    if args.dry_run {
        return dry_run(&args, &plan);
    }
    servers::with_signals(plan.servers.launches(), execute(plan, quiet)).await.map(|_| ())
}
