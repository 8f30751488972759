//! `probe extract`: hidden states of texts to a safetensors file, one `layer.<L>` tensor
//! `[n_inputs, hidden]` per layer, rows in input order; with `--positions all`, every token
//! into a folder of row shards (`shard-<k>.safetensors`, see [`probe_core::sweep::TokenShard`]).

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use probe_core::sweep::{self, LayerSelection, PromptFormat, PromptSet};
use probe_core::{Error, Readout, Result, codec};

use crate::backends::BackendKind;
use crate::config_file::ProbeToml;
use crate::progress::Bars;
use crate::run_plan::{self, PlanFlags, Workload};
use crate::servers::{self, Servers};

/// Arguments of `probe extract`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ExtractArgs {
    /// Model folder.
    #[arg(long)]
    pub(crate) model: String,
    /// Inputs: JSON lines with a `text` field (used verbatim; special tokens as the
    /// tokenizer adds them by default).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Layers: `all`, `12`, `3,5,7`, `2..6` (end excluded) or `2..=6`.
    #[arg(long)]
    pub(crate) layers: LayerSelection,
    /// Token positions: last, mean, marker:TEXT (the last token of TEXT's last occurrence;
    /// inputs are prompts, so last-prompt is last), or all (every token, to a folder of shards).
    #[arg(long)]
    pub(crate) positions: Readout,
    /// Output safetensors file (a folder for `--positions all`).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// `--positions all`: bytes per shard file at most [default: 2 GiB].
    #[arg(long, default_value_t = sweep::DEFAULT_SHARD_BYTES)]
    pub(crate) max_shard_bytes: u64,
    /// Backend: candle (default), vllm (the hidden states `--url` servers write; they need the
    /// extraction flags, see README), tch, ort, or mock.
    #[arg(long)]
    pub(crate) backend: Option<BackendKind>,
    /// vLLM server URL for `--backend vllm` (repeatable) (default: `[vllm] urls` in probe.toml).
    #[arg(long)]
    pub(crate) url: Vec<String>,
    /// Inputs per forward pass (default: `[extraction] batch_size` in probe.toml, or 16).
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Settings file [default: ./probe.toml when present].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Chat template for `messages` prompts (a Jinja file) [default: the model folder's
    /// chat_template.jinja, else tokenizer_config.json's chat_template].
    #[arg(long, value_name = "FILE")]
    pub(crate) chat_template: Option<PathBuf>,
    /// Print the plan (batch size, dtype, placement); load nothing, write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) plan: PlanFlags,
}

/// `probe extract`.
pub(crate) async fn run(args: ExtractArgs, quiet: bool) -> Result<()> {
    run_plan::check_json(&args.plan, args.dry_run)?;
    let file = ProbeToml::load(args.config.as_deref())?;
    let backend = args.backend.unwrap_or(BackendKind::Candle);
    backend.check_available()?;
    let urls = if args.url.is_empty() { file.vllm.urls.clone().unwrap_or_default() } else { args.url.clone() };
    if !args.url.is_empty() && backend != BackendKind::Vllm {
        return Err(Error::invalid("url", format!("{:?} is only used with --backend vllm", args.url[0])));
    }
    let inputs = PromptSet::load(&args.input, PromptFormat::texts())?;
    let vllm = backend == BackendKind::Vllm;
    // vLLM extracts on its servers (given, or launched here): they load the model, whatever candle supports.
    let num_layers =
        if vllm { probe_backends::registry::config_layers(&args.model)? } else { backend.model_layers(&args.model)? };
    let layers = args.layers.resolve(num_layers)?;
    let servers = if vllm {
        let log_dir = args.out.parent().unwrap_or(std::path::Path::new(".")).join("vllm-logs");
        let mut s = Servers::plan(&file, backend, &args.model, &urls, false, log_dir.clone(), args.dry_run)?;
        s.extract_on_servers(&file, &args.model, num_layers, log_dir)?;
        Some(s)
    } else {
        None
    };
    let inputs =
        probe_backends::chat::render_prompts(inputs, std::path::Path::new(&args.model), args.chat_template.as_deref())?;
    if args.positions == Readout::MeanCompletion {
        return Err(Error::invalid(
            "positions",
            "mean-completion: probe extract reads prompts, which have no completion",
        ));
    }
    let given = args.batch_size.or(file.extraction.batch_size);
    if given == Some(0) {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    let all = args.positions == Readout::All;
    if all && args.out.extension().is_some_and(|e| e == "safetensors") {
        return Err(Error::invalid(
            "out",
            format!("{} (--positions all writes a folder of shards)", args.out.display()),
        ));
    }
    if !all && args.out.extension().is_none_or(|e| e != "safetensors") {
        return Err(Error::invalid("out", format!("{} (expected a .safetensors file)", args.out.display())));
    }
    let work = Workload {
        backend,
        model: &args.model,
        prompts: &inputs,
        // vLLM: each input is a one-token request to the servers, which the plan places.
        max_new_tokens: vllm.then_some(1),
        launches: servers.as_ref().is_some_and(Servers::launches),
        in_process: !vllm,
        hidden_states_on_servers: vllm,
        batch_size: given,
        layers: Some(layers.len() as u64),
        positions: args.positions.positions(),
    };
    let plan = run_plan::resolve(&args.plan, &file, &work)?;
    let mut servers = servers;
    if let Some(s) = &mut servers {
        s.use_plan(plan.as_ref())?;
    }
    if args.dry_run {
        if args.plan.json {
            return run_plan::print_json("extract", backend, &args.model, plan.as_ref(), &[]);
        }
        plan.iter().flat_map(|p| p.lines()).for_each(|l| println!("plan: {l}"));
        servers.iter().flat_map(|s| s.dry_run_lines(true)).skip(2).for_each(|l| println!("{l}"));
        return Ok(());
    }
    let launches = servers.as_ref().is_some_and(Servers::launches);
    servers::with_signals(launches, extract(&args, &inputs, &layers, servers.as_ref(), (plan.as_ref(), given), quiet))
        .await
}

/// Opens the model (for `vllm`, on the given or launched servers), extracts and writes.
async fn extract(
    args: &ExtractArgs,
    inputs: &PromptSet,
    layers: &[usize],
    servers: Option<&Servers>,
    (plan, given): (Option<&probe_core::plan::RunPlan>, Option<usize>),
    quiet: bool,
) -> Result<()> {
    let backend = args.backend.unwrap_or(BackendKind::Candle);
    let batch_size = plan.map_or(given.unwrap_or(16), |p| p.batch_size_or(16));
    let (opened, launched) = match servers {
        Some(s) => s.open_extraction(&args.model)?,
        None => {
            let file = ProbeToml::load(args.config.as_deref())?;
            let gpu = match plan {
                Some(p) => p.first_extraction_gpu(),
                None => file.devices.extraction_gpus.as_ref().and_then(|g| g.first().copied()),
            };
            (backend.open_planned(&args.model, plan, gpu, &[], run_plan::dtype_name(plan))?, None)
        }
    };
    let model = crate::faults::inject(opened)?;
    let bars = Bars::new(quiet);
    let extractor = model.extractor.as_ref();
    let written = if args.positions == Readout::All {
        write_shards(extractor, &bars, inputs, layers, (batch_size, args.max_shard_bytes), &args.out).await
    } else {
        write_file(args, extractor, &bars, inputs, layers, batch_size).await
    };
    if let Some(l) = launched {
        l.stop("after extraction").await?;
    }
    written
}

/// `--positions` other than `all`: one `[n, hidden]` tensor per layer in one file.
async fn write_file(
    args: &ExtractArgs,
    extractor: &dyn probe_core::ActivationExtractor,
    bars: &Bars,
    inputs: &PromptSet,
    layers: &[usize],
    batch_size: usize,
) -> Result<()> {
    let tensors = sweep::extract_prompts(extractor, bars, inputs, layers, &args.positions, batch_size).await?;
    let names: Vec<String> = tensors.keys().map(|l| format!("layer.{l}")).collect();
    let named: Vec<(&str, &probe_core::Tensor)> = names.iter().map(String::as_str).zip(tensors.values()).collect();
    let info = extractor.model_info();
    let meta: HashMap<String, String> = [
        ("model", info.id.id.clone()),
        ("revision", info.id.revision.clone()),
        ("positions", args.positions.to_string()),
        ("dtype", info.dtype.clone()),
        (
            "ids",
            serde_json::to_string(&inputs.prompts.iter().map(|p| p.id.as_str()).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let bytes = codec::encode_tensors(&named, Some(meta))?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
    }
    std::fs::write(&args.out, bytes).map_err(|e| Error::io(args.out.display(), e))?;
    println!(
        "wrote {} tensors ({}) of {} inputs × {} to {}",
        names.len(),
        names.join(", "),
        inputs.len(),
        info.hidden_size,
        args.out.display()
    );
    Ok(())
}

/// `--positions all`: every token, streamed into `out/shard-<k>.safetensors` (each written
/// aside and renamed into place).
async fn write_shards(
    extractor: &dyn probe_core::ActivationExtractor,
    bars: &Bars,
    inputs: &PromptSet,
    layers: &[usize],
    sizes: (usize, u64),
    out: &std::path::Path,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    let info = extractor.model_info();
    let meta: HashMap<String, String> =
        [("model", info.id.id.clone()), ("revision", info.id.revision.clone()), ("dtype", info.dtype.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    let mut tokens = 0;
    let mut sink = |shard: sweep::TokenShard| -> Result<()> {
        tokens += shard.token_ids.len();
        let path = out.join(format!("shard-{:05}.safetensors", shard.index));
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, shard.to_safetensors(&meta)?).map_err(|e| Error::io(tmp.display(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(path.display(), e))
    };
    let shards = sweep::stream_all_tokens(extractor, bars, inputs, layers, sizes, &mut sink).await?;
    println!(
        "wrote {shards} shard(s) of {} inputs, {tokens} tokens × {} layers × {} to {}",
        inputs.len(),
        layers.len(),
        info.hidden_size,
        out.display()
    );
    Ok(())
}
