//! `probe apply`: a probe saved by `probe sweep` (`<out>/probes/layer-<L>.safetensors`) scores
//! new prompts. What it needs is made as the sweep made it, through the same cache: the
//! completions (when the probe was trained on them, with the same sampling) and the layer's
//! activations at the same token positions; activations of another model, dtype, tokenizer or
//! layer are refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use probe_core::sweep::{self, Applied, PromptFormat, PromptSet, SavedProbe, SweepConfig, SweepParts};
use probe_core::{Error, Result};
use serde_json::json;

use crate::backends::BackendKind;
use crate::config_file::ProbeToml;
use crate::progress::Bars;
use crate::sweep_cmd::cache_url;

/// Arguments of `probe apply`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApplyArgs {
    /// A saved probe (`<sweep out>/probes/layer-<L>.safetensors`).
    #[arg(long)]
    pub(crate) probe: PathBuf,
    /// Model folder (the one the probe was trained on).
    #[arg(long)]
    pub(crate) model: String,
    /// Inputs: JSON lines with `text` or `messages` (and `id`, else the line number).
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Output JSON-lines file [default: stdout].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Backend: candle (default), tch, ort, or mock.
    #[arg(long)]
    pub(crate) backend: Option<BackendKind>,
    /// Inputs per forward pass [default: 16].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Cache location (as `probe sweep`) [default: `[cache] url`, $PROBE_CACHE, ./probe-cache].
    #[arg(long)]
    pub(crate) cache: Option<String>,
    /// Settings file [default: ./probe.toml when present].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Chat template for `messages` prompts [default: the model folder's].
    #[arg(long, value_name = "FILE")]
    pub(crate) chat_template: Option<PathBuf>,
}

/// One output line per input: id, layer, score, predicted class, label (when given).
pub(crate) fn lines(probe: &SavedProbe, prompts: &PromptSet, applied: &[Applied]) -> Vec<String> {
    prompts
        .prompts
        .iter()
        .zip(applied)
        .map(|(p, a)| {
            json!({
                "id": p.id,
                "layer": probe.meta.layer,
                "score": if a.score.len() == 1 { json!(a.score[0]) } else { json!(a.score) },
                "class": probe.meta.classes[a.class],
                "label": p.label,
            })
            .to_string()
        })
        .collect()
}

/// `probe apply`.
pub(crate) async fn run(args: ApplyArgs, quiet: bool) -> Result<()> {
    let file = ProbeToml::load(args.config.as_deref())?;
    let probe = SavedProbe::load(&args.probe)?;
    let backend = args.backend.unwrap_or(BackendKind::Candle);
    if backend == BackendKind::Vllm {
        return Err(Error::not_supported(
            "probe apply (use the in-process backend the probe was trained with)",
            "vllm",
        ));
    }
    backend.check_available()?;
    let num_layers = backend.model_layers(&args.model)?;
    if probe.meta.layer > num_layers {
        return Err(Error::invalid(
            "layer",
            format!("the probe reads layer {}; {} has layers 0..={num_layers}", probe.meta.layer, args.model),
        ));
    }
    if args.batch_size == Some(0) {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    let prompts = PromptSet::load(&args.input, PromptFormat::texts())?;
    let prompts = probe_backends::chat::render_prompts(prompts, Path::new(&args.model), args.chat_template.as_deref())?;
    let cache_url = cache_url(args.cache.as_deref(), &file);
    probe_cache::check_url(&cache_url)?;
    let cache = probe_cache::from_url(&cache_url)?;
    let model = crate::faults::inject(backend.open_planned(&args.model, None, None, &[], &probe.meta.dtype)?)?;
    probe.check(&model.extractor.model_info())?;
    let config = SweepConfig::new(vec![probe.meta.layer])
        .with_positions(probe.meta.positions.clone())
        .with_batch_size(args.batch_size.unwrap_or(16))
        .with_sampling(probe.meta.sampling.clone());
    let bars = Bars::new(quiet);
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    if config.sampling.is_some() {
        let g = model.generator.as_deref().ok_or_else(|| {
            Error::invalid("backend", format!("the probe reads completions, and {backend:?} cannot generate"))
        })?;
        parts = parts.with_generator(g);
    }
    let (features, _) = sweep::features(parts, &prompts, &config).await?;
    let tensor = &features[&probe.meta.layer];
    let out = lines(&probe, &prompts, &probe.apply(tensor)?);
    match &args.out {
        Some(path) => {
            let text: String = out.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(path, text).map_err(|e| Error::io(path.display(), e))?;
            eprintln!("wrote {} predictions of layer {} to {}", out.len(), probe.meta.layer, path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            for l in out {
                writeln!(stdout, "{l}").map_err(|e| Error::io("stdout", e))?;
            }
        }
    }
    Ok(())
}
