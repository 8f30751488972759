//! `probe generate`: completions of prompts to JSON lines, in input order, optionally cached;
//! the work is [`probe_backends::session::Session::generate`].

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use probe_backends::session::Task;
use probe_core::sweep::{PromptFormat, PromptSet};
use probe_core::{Error, Result};

use crate::flags::{self, RunFlags, SamplingFlags};

/// Arguments of `probe generate`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) run: RunFlags,
    /// Prompts: JSON lines with `id` and `text` (or `messages`).
    #[arg(long)]
    pub(crate) prompts: PathBuf,
    #[command(flatten)]
    pub(crate) sampling: SamplingFlags,
    /// Output JSON lines: id, prompt, completion, finish_reason and the token ids.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Print the device roles and vLLM launch commands; start nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// With --dry-run: print the resolved plan as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `probe generate`.
pub(crate) async fn run(args: GenerateArgs, quiet: bool) -> Result<()> {
    if args.json && !args.dry_run {
        return Err(Error::invalid("json", "--json prints the plan of a dry run: add --dry-run"));
    }
    let mut settings = args.sampling.apply(args.run.settings()?)?.dry_run(args.dry_run);
    // Without --cache (and `[cache] url`), the completions go through a cache in memory.
    if args.run.cache.is_none() && settings.cache.url.is_none() {
        settings = settings.cache("memory://");
    }
    if settings.vllm.log_dir.is_none() {
        settings = settings.vllm_log_dir(args.out.parent().unwrap_or(std::path::Path::new("")).join("vllm-logs"));
    }
    // Before the folder is read: tch and ort never generate, whatever the model.
    settings.backend_or_default().check_generates()?;
    let prompts = PromptSet::load(&args.prompts, PromptFormat::texts())?;
    let session = flags::open(&args.run.model, settings, quiet).await?;
    let prepared = session.prepare(Task::Generate, &prompts)?;
    if args.dry_run {
        return flags::print_dry_run("generate", &session, &prepared, args.json);
    }
    let gens = flags::with_signals(prepared.launches_servers(), session.generate(&prompts)).await?;
    let mut out = Vec::new();
    for (p, g) in prepared.prompts.prompts.iter().zip(&gens) {
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
    println!("wrote {} completions to {}", gens.len(), args.out.display());
    session.close().await
}
