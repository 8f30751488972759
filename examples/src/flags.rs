//! The flags every run command shares, laid over `probe.toml` into one
//! [`Settings`] (flags > file > plan > defaults: the last two are the session's), the
//! dry-run printing, and the mapping of the library's field names back to flags in errors.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use probe_backends::registry::Backend;
use probe_backends::session::{Prepared, Session, Settings, Steer};
use probe_core::plan::Dtype;
use probe_core::{Error, Result};

/// Model, backend, cache and device flags (`probe sweep|extract|generate|apply|merge|status`).
#[derive(Debug, Clone, Args)]
pub(crate) struct RunFlags {
    /// Model folder (Hugging Face layout: config.json, *.safetensors, tokenizer.json); for
    /// vllm generation also a served model name.
    #[arg(long)]
    pub(crate) model: String,
    /// Backend: candle (default), vllm, tch, ort, or mock (test double, no model).
    #[arg(long)]
    pub(crate) backend: Option<Backend>,
    /// vLLM server URL (repeatable) [default: `[vllm] urls`; none: servers are launched].
    #[arg(long)]
    pub(crate) url: Vec<String>,
    /// Cache URL: a folder, file:///abs/path, memory:// or s3://bucket/prefix [default:
    /// `[cache] url`, then $PROBE_CACHE, then ./probe-cache].
    #[arg(long)]
    pub(crate) cache: Option<String>,
    /// Inputs per forward pass [default: `[extraction] batch_size`, else planned, else 16].
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    /// Settings file [default: ./probe.toml when present].
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Chat template for `messages` prompts (a Jinja file) [default: the model folder's
    /// chat_template.jinja, else tokenizer_config.json's chat_template].
    #[arg(long, value_name = "FILE")]
    pub(crate) chat_template: Option<PathBuf>,
    /// Declared GPUs for the plan: "4x80GiB", "80GiB,40GiB" [default: `[devices] gpus`, else
    /// detected (NVML with the cuda feature), else the CPU].
    #[arg(long)]
    pub(crate) gpus: Option<String>,
    /// Compute dtype: f32, bf16 or f16 [default: `[extraction] dtype`, else f32 on the CPU and
    /// bf16 on GPUs]. Part of the activation cache key.
    #[arg(long)]
    pub(crate) dtype: Option<Dtype>,
}

/// Sampling flags (`probe sweep|generate`).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct SamplingFlags {
    /// New tokens per completion [default: 64].
    #[arg(long)]
    pub(crate) max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) temperature: Option<f32>,
    /// Seed of the sampler, the probe folds, the control task and the bootstrap [default: 0].
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Steer generation (candle) along a safetensors file's tensor `direction` (`[hidden]`;
    /// `[head_dim]` with --steer-head); repeatable: the i-th goes with the i-th --steer-layer,
    /// --steer-alpha and --steer-head (one given serves all).
    #[arg(long, value_name = "FILE")]
    pub(crate) steer_vector: Vec<PathBuf>,
    /// Steer along a saved probe's direction (`<out>/probes/layer-<L>.safetensors`, mapped from
    /// standardised to residual-stream space); repeatable, after the --steer-vector ones.
    #[arg(long, value_name = "FILE")]
    pub(crate) steer_probe: Vec<PathBuf>,
    /// The block whose incoming residual stream is steered (HF `hidden_states[L]`) [default
    /// for a probe: its layer].
    #[arg(long, value_name = "L")]
    pub(crate) steer_layer: Vec<usize>,
    /// Adds ALPHA · direction/‖direction‖ at every position, prompt and generated.
    #[arg(long, value_name = "ALPHA", allow_negative_numbers = true)]
    pub(crate) steer_alpha: Vec<f32>,
    /// Steer head H of block B instead (`B:H`, Inference-Time Intervention).
    #[arg(long, value_name = "B:H")]
    pub(crate) steer_head: Vec<String>,
}

impl RunFlags {
    /// The settings file with these flags over it.
    ///
    /// # Errors
    /// The file's errors, naming it.
    pub(crate) fn settings(&self) -> Result<Settings> {
        let mut s = Settings::load(self.config.as_deref())?;
        if let Some(b) = self.backend {
            s = s.backend(b);
        }
        if !self.url.is_empty() {
            s = s.urls(self.url.clone());
        }
        if let Some(c) = &self.cache {
            s = s.cache(c.clone());
        }
        if let Some(b) = self.batch_size {
            s = s.batch_size(b);
        }
        if let Some(t) = &self.chat_template {
            s = s.chat_template(t.clone());
        }
        if let Some(g) = &self.gpus {
            s = s.gpus(g.clone());
        }
        if let Some(d) = self.dtype {
            s = s.dtype(d);
        }
        Ok(s)
    }
}

impl SamplingFlags {
    /// `s` with these flags over it.
    ///
    /// # Errors
    /// Steering flags that do not pair up (naming the flag).
    pub(crate) fn apply(&self, mut s: Settings) -> Result<Settings> {
        if let Some(n) = self.max_tokens {
            s = s.max_tokens(n);
        }
        if let Some(t) = self.temperature {
            s = s.temperature(t);
        }
        if let Some(seed) = self.seed {
            s = s.seed(seed);
        }
        let sources: Vec<(Option<PathBuf>, Option<PathBuf>)> = self
            .steer_vector
            .iter()
            .map(|v| (Some(v.clone()), None))
            .chain(self.steer_probe.iter().map(|p| (None, Some(p.clone()))))
            .collect();
        let n = sources.len();
        // The i-th value, or the only one for every intervention.
        fn nth<T: Clone>(flag: &str, values: &[T], i: usize, n: usize) -> Result<Option<T>> {
            match values.len() {
                0 => Ok(None),
                1 => Ok(Some(values[0].clone())),
                k if k == n => Ok(Some(values[i].clone())),
                k => Err(Error::invalid(flag, format!("{k} values for {n} steering directions (give 1 or {n})"))),
            }
        }
        if n == 0 {
            let given = !self.steer_layer.is_empty() || !self.steer_alpha.is_empty() || !self.steer_head.is_empty();
            if given {
                return Err(Error::invalid("steer-vector", "steering flags without --steer-vector or --steer-probe"));
            }
            return Ok(s);
        }
        let mut steer = Vec::with_capacity(n);
        for (i, (vector, probe)) in sources.into_iter().enumerate() {
            let alpha = nth("--steer-alpha", &self.steer_alpha, i, n)?
                .ok_or_else(|| Error::invalid("--steer-alpha", "steering needs --steer-alpha"))?;
            let layer = nth("--steer-layer", &self.steer_layer, i, n)?;
            let head = nth("--steer-head", &self.steer_head, i, n)?;
            steer.push(Steer { vector, probe, layer, head, alpha });
        }
        Ok(s.steer(steer))
    }
}

/// Opens the session with progress bars (none when `quiet`).
///
/// # Errors
/// As [`Session::open`].
pub(crate) async fn open(model: &str, settings: Settings, quiet: bool) -> Result<Session> {
    Ok(Session::open(model, settings).await?.with_observer(Arc::new(crate::progress::Bars::new(quiet))))
}

/// Prints a dry run: as one JSON object (`json`) or as lines.
///
/// # Errors
/// [`Error::Io`] when stdout cannot be written.
pub(crate) fn print_dry_run(command: &str, session: &Session, p: &Prepared, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if !json {
        let lines = p.dry_run_lines(command != "generate");
        // `probe extract` on the CPU has no roles to show: only its plan and servers.
        let skip = if command == "extract" { 2 } else { 0 };
        for l in lines.iter().skip(skip) {
            writeln!(out, "{l}").map_err(|e| Error::io("stdout", e))?;
        }
        return Ok(());
    }
    let mut v = match &p.plan {
        Some(plan) => serde_json::to_value(plan).map_err(|e| Error::backend("json", e))?,
        None => serde_json::json!({ "extraction": null, "generation": { "servers": [] } }),
    };
    v["command"] = command.into();
    v["backend"] = session.backend().name().into();
    v["model_path"] = session.folder().name().into();
    v["generation"]["urls"] = p.server_urls().into();
    writeln!(out, "{v}").map_err(|e| Error::io("stdout", e))
}

/// Runs `work`; when `on`, Ctrl-C or SIGTERM cancels it instead of killing the process, so
/// the launched servers are stopped (their group's drop) before `probe` exits.
///
/// # Errors
/// `work`'s, or an interruption.
pub(crate) async fn with_signals<T>(on: bool, work: impl Future<Output = Result<T>>) -> Result<T> {
    if !on {
        return work.await;
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::backend("signals", e))?;
    let signal = tokio::select! {
        r = work => return r,
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!("vllm: {signal}: the launched servers were stopped");
    Err(Error::backend("probe", format!("interrupted ({signal}); the launched vLLM servers were stopped")))
}

/// The library names settings by field; the command line names them by flag.
const FLAGS: [(&str, &str); 14] = [
    ("site", "--site"),
    ("batch_size", "--batch-size"),
    ("urls", "--url"),
    ("chat_template", "--chat-template"),
    ("extractor", "--extractor"),
    ("positions", "--positions"),
    ("layers", "--layers"),
    ("dtype", "--dtype"),
    ("gpus", "--gpus"),
    ("backend", "--backend"),
    ("shards", "--shards"),
    ("test-on", "--test-on"),
    ("max_tokens", "--max-tokens"),
    ("temperature", "--temperature"),
];

/// `e` with a settings field named as its flag.
pub(crate) fn as_flags(e: Error) -> Error {
    match e {
        Error::InvalidInput { what, message } => {
            let what = FLAGS.iter().find(|(field, _)| *field == what).map_or(what, |(_, flag)| (*flag).to_owned());
            Error::InvalidInput { what, message }
        }
        other => other,
    }
}
