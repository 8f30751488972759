//! `probe apply`: a probe saved by `probe sweep` (`<out>/probes/layer-<L>.safetensors`) scores
//! new prompts; the work is [`probe_backends::session::Session::apply`].

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use probe_core::sweep::{Applied, PromptFormat, PromptSet, SavedProbe};
use probe_core::{Error, Result};
use serde_json::json;

use crate::flags::{self, RunFlags};

/// Arguments of `probe apply`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApplyArgs {
    /// A probe saved by `probe sweep`: `<out>/probes/layer-<L>.safetensors`.
    #[arg(long)]
    pub(crate) probe: PathBuf,
    #[command(flatten)]
    pub(crate) run: RunFlags,
    /// Inputs: JSON lines with `id` and `text` (or `messages`); `label` is echoed.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Output JSON lines [default: stdout].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// One JSON line per prompt: id, layer (and its site, but for the residual stream), score,
/// class, label.
pub(crate) fn lines(probe: &SavedProbe, prompts: &PromptSet, applied: &[Applied]) -> Vec<String> {
    prompts
        .prompts
        .iter()
        .zip(applied)
        .map(|(p, a)| {
            let mut line = json!({
                "id": p.id,
                "layer": probe.meta.layer,
                "score": if a.score.len() == 1 { json!(a.score[0]) } else { json!(a.score) },
                "class": probe.meta.classes[a.class],
                "label": p.label,
            });
            if !probe.meta.site.is_resid() {
                line["site"] = json!(probe.meta.site);
            }
            line.to_string()
        })
        .collect()
}

/// `probe apply`.
pub(crate) async fn run(args: ApplyArgs, quiet: bool) -> Result<()> {
    let probe = SavedProbe::load(&args.probe)?;
    let prompts = PromptSet::load(&args.input, PromptFormat::texts())?;
    let session = flags::open(&args.run.model, args.run.settings()?, quiet).await?;
    let applied = session.apply(&probe, &prompts).await?;
    let out = lines(&probe, &prompts, &applied);
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
    session.close().await
}
