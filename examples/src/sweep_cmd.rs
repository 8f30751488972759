//! `probe sweep`: labelled prompts → completions → activations → one probe per layer; the
//! work is [`Session::sweep`] (and [`Session::shard`] with `--shard k/N`).

use std::path::{Path, PathBuf};

use clap::Args;
use probe_backends::session::{Session, Settings, Task};
use probe_core::sweep::{self, LabelKind, LayerSelection, PromptSet, Shard, SweepReport};
use probe_core::{Error, Readout, Result, Sites};

use crate::flags::{self, RunFlags, SamplingFlags};

/// Arguments of `probe sweep` (and of `probe merge` and `probe status`).
#[derive(Debug, Clone, Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    pub(crate) run: RunFlags,
    /// Prompts: JSON lines with `id`, `text` (or `messages`) and `label`.
    #[arg(long)]
    pub(crate) prompts: PathBuf,
    /// Name of the prompt set in the cache and the report [default: the prompt file's name
    /// without extension]; ASCII letters, digits, `.`, `_` and `-`.
    #[arg(long)]
    pub(crate) prompt_set: Option<String>,
    /// Layers: `all`, `12`, `3,5,7`, `2..6` (end excluded) or `2..=6`.
    #[arg(long)]
    pub(crate) layers: LayerSelection,
    /// Token positions the probes read: last, last-prompt, mean, mean-completion or
    /// marker:TEXT (the last token of TEXT's last occurrence) [default: last].
    #[arg(long)]
    pub(crate) positions: Option<Readout>,
    /// Where activations are read: resid (the residual stream between blocks, `--layers` in
    /// `output_hidden_states` numbering), or inside each block (`--layers` = blocks `0..L`):
    /// resid_mid, attn_out, mlp_out, heads (`o_proj`'s input per head) or router (MoE router
    /// logits); candle reads every site, tch and ort those of an export made with `--sites`
    /// [default: resid]. Several, comma-separated (`resid,attn_out`), are read in the same
    /// forward passes: one probe per (site, layer).
    #[arg(long)]
    pub(crate) site: Option<Sites>,
    #[command(flatten)]
    pub(crate) sampling: SamplingFlags,
    /// Stratified cross-validation folds of the probes (≥ 2) [default: 5].
    #[arg(long)]
    pub(crate) folds: Option<usize>,
    /// The probes' inverse regularisation strength C (scikit-learn's), or a comma-separated grid
    /// (`0.01,0.1,1,10`) chosen per fold by inner cross-validation [default: 1].
    #[arg(long, value_name = "C[,C…]")]
    pub(crate) probe_c: Option<String>,
    /// How labels are read: classes, numeric (ridge regression, R²) or auto (numeric when every
    /// label is a number and one is not an integer or there are more than 20 values) [default: auto].
    #[arg(long, value_name = "KIND")]
    pub(crate) labels: Option<LabelKind>,
    /// Probe the prompt texts themselves: no completions.
    #[arg(long)]
    pub(crate) no_generate: bool,
    /// Extractor for `--backend vllm`: candle (default, in process) or vllm (the hidden states
    /// the servers write themselves: launched with the extraction flags, or `--url` servers
    /// started with them, see docs/vllm.md; they generate too, and a readout within a
    /// completion's generation pass costs no pass of its own).
    #[arg(long, value_name = "candle|vllm")]
    pub(crate) extractor: Option<String>,
    /// Output folder for report.json, report.md and accuracy.svg.
    #[arg(long, default_value = "probe-out")]
    pub(crate) out: PathBuf,
    /// Run only shard k of N (1 ≤ k ≤ N): its blocks of prompts, generated and extracted into
    /// the shared cache; no report (`probe merge` makes it once every shard is done).
    #[arg(long, value_name = "k/N")]
    pub(crate) shard: Option<Shard>,
    /// Print the device roles, time-sharing and vLLM launch commands; start nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: print the resolved plan as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also test the probes trained on all of --prompts on this prompt set (repeatable; JSON
    /// lines with `text` or `messages`, `id`, and `label` for an accuracy): generalisation
    /// across sets, in `report.json` (`transfer`) and `<out>/predictions-<set>.jsonl`.
    #[arg(long, value_name = "FILE")]
    pub(crate) test_on: Vec<PathBuf>,
}

impl SweepArgs {
    /// The settings: the file, then these flags.
    ///
    /// # Errors
    /// The file's errors and bad flag values.
    pub(crate) fn settings(&self) -> Result<Settings> {
        if self.json && !self.dry_run {
            return Err(Error::invalid("json", "--json prints the plan of a dry run: add --dry-run"));
        }
        let mut s = self.sampling.apply(self.run.settings()?)?.layers(self.layers.clone()).dry_run(self.dry_run);
        if s.vllm.log_dir.is_none() {
            s = s.vllm_log_dir(self.out.join("vllm-logs"));
        }
        if let Some(p) = &self.positions {
            s = s.positions(p.clone());
        }
        if let Some(sites) = &self.site {
            s = s.sites(sites.clone());
        }
        if let Some(f) = self.folds {
            s = s.folds(f);
        }
        if let Some(c) = &self.probe_c {
            s = s.probe_c(sweep::parse_c_grid(c)?);
        }
        if let Some(kind) = self.labels {
            s = s.labels(kind);
        }
        if self.no_generate {
            s = s.no_generate(true);
        }
        if let Some(e) = &self.extractor {
            if !matches!(e.as_str(), "candle" | "vllm") {
                return Err(Error::invalid("extractor", format!("{e:?} (expected candle or vllm)")));
            }
            s = s.extract_on_servers(e == "vllm");
        }
        if let Some(name) = &self.prompt_set {
            s = s.prompt_set(name.clone());
        }
        Ok(s)
    }

    /// The session and the prompts, every check done before anything loads.
    ///
    /// # Errors
    /// Bad settings, prompts or model folder.
    pub(crate) async fn open(&self, quiet: bool) -> Result<(Session, PromptSet)> {
        let settings = self.settings()?;
        let prompts = PromptSet::from_jsonl(&self.prompts)?;
        let session = flags::open(&self.run.model, settings, quiet).await?;
        Ok((session, prompts))
    }
}

/// `probe sweep`.
pub(crate) async fn run(args: SweepArgs, quiet: bool) -> Result<()> {
    if args.shard.is_some() && !args.test_on.is_empty() {
        return Err(Error::invalid("test-on", "not with sharded sweeps yet: run the sweep unsharded"));
    }
    let (session, prompts) = args.open(quiet).await?;
    let task = if args.shard.is_some() { Task::Shard } else { Task::Sweep };
    let prepared = session.prepare(task, &prompts)?;
    if args.dry_run {
        return flags::print_dry_run("sweep", &session, &prepared, args.json);
    }
    let launches = prepared.launches_servers();
    if let Some(shard) = args.shard {
        let summary = flags::with_signals(launches, session.shard_prepared(&prepared, shard)).await?;
        println!("{summary}");
        println!("cache: {}", session.cache_location()?);
        println!("when every shard of {0} is done: probe merge (same arguments, --shards {0})", shard.count);
        return session.close().await;
    }
    let tests = args.test_on.iter().map(|p| PromptSet::load(p, probe_core::sweep::PromptFormat::texts()));
    let tests: Vec<PromptSet> = tests.collect::<Result<_>>()?;
    let (report, tested) = flags::with_signals(launches, session.sweep_prepared(&prepared, &tests)).await?;
    let written = probe_backends::session::write_report(&report, &args.out)?;
    for t in &tested {
        let path = args.out.join(format!("predictions-{}.jsonl", t.set.name));
        let mut text = String::new();
        for (probe, (_, rows)) in report.probes.iter().zip(&t.applied) {
            crate::apply_cmd::lines(probe, &t.set, rows).into_iter().for_each(|l| text.push_str(&(l + "\n")));
        }
        std::fs::write(&path, text).map_err(|e| Error::io(path.display(), e))?;
        println!("tested on {}: {}", t.set.name, path.display());
    }
    print_report(&report, &written, &session.cache_location()?);
    session.close().await
}

/// The report's table, best layer, summary, plan, memory and where everything went.
pub(crate) fn print_report(report: &SweepReport, written: &probe_backends::session::Written, cache: &str) {
    println!("{}", report.table().trim_end());
    if let Some(b) = report.best() {
        println!("best layer: {} (accuracy {:.3}, AUC {:.3})", b.name(), b.accuracy, b.auc);
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
    let plots: Vec<String> = written.plots.iter().map(|p| show(p)).collect();
    println!("report: {} · {} · {}", show(&written.json), show(&written.markdown), plots.join(" · "));
    if let Some(dir) = &written.probes {
        let site = if report.sites.is_empty() { "" } else { "<site>/" };
        println!(
            "probes: {}/{site}layer-<L>.safetensors ({} layers; `probe apply --probe …`)",
            show(dir),
            report.probes.len()
        );
    }
    println!("cache: {cache}");
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
