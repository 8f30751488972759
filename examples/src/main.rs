//! `probe`: layer sweeps, activation extraction and generation from the command line.
//!
//! ```text
//! probe sweep    --model <dir> --prompts <file.jsonl> --layers <list|a..b|all> [...]
//! probe sweep    <same> --shards N --submit slurm [--wait] [--sbatch-arg ARG]...
//! probe status   <same> --shards N
//! probe extract  --model <dir> --input <file.jsonl> --layers <list> --positions last|mean|marker:TEXT --out <file.safetensors>
//! probe apply    --probe <out>/probes/layer-<L>.safetensors --model <dir> --input <file.jsonl> [--out <file.jsonl>]
//! probe generate --model <dir|name> --prompts <file.jsonl> --out <file.jsonl> [...]
//! probe plan     --model <config.json|dir> --gpus 4x80GiB [...]
//! probe demo
//! ```
//!
//! Every user error is one line on stderr naming the bad value, with exit status 2, before
//! any model loads where that is possible; other failures exit with status 1.

mod allocator;
mod apply_cmd;
mod demo;
mod extract_cmd;
mod flags;
mod generate_cmd;
mod plan_cmd;
mod progress;
mod shard_cmd;
mod slurm;
mod status_cmd;
mod sweep_cmd;
mod vllm_args_cmd;

use clap::{Parser, Subcommand};
use probe_core::Error;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Language-model probing: labelled prompts → completions → hidden states at many layers →
/// one linear probe per layer, cached, resumable.
#[derive(Debug, Parser)]
#[command(name = "probe", version)]
struct Cli {
    /// No progress bars: only log lines (RUST_LOG sets their level; default info).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Per-layer probe accuracy: prompts → completions → activations → probes → report
    /// (`--shards N --submit slurm`: as a SLURM job array of shards and a merge job).
    Sweep(Box<slurm::SweepCmd>),
    /// Hidden states of texts to a safetensors file (`layer.<L>`: [n_inputs, hidden]).
    Extract(extract_cmd::ExtractArgs),
    /// Completions of prompts to JSON lines.
    Generate(generate_cmd::GenerateArgs),
    /// Score new prompts with a probe saved by `probe sweep` (one JSON line per input).
    Apply(Box<apply_cmd::ApplyArgs>),
    /// Finish a sharded sweep (`probe sweep --shard k/N`): fold the shards' blocks, train the
    /// probes, write the report. Same arguments as `probe sweep`.
    Merge(Box<shard_cmd::MergeArgs>),
    /// Per shard of a sharded sweep, which blocks the cache holds (same arguments as `probe
    /// sweep`, and --shards N).
    Status(Box<status_cmd::StatusArgs>),
    /// Make a small model and prompt set (no download) and run a full sweep on candle.
    Demo(demo::DemoArgs),
    /// The device and memory plan for a model on some GPUs (roles, vLLM servers, batch sizes).
    Plan(Box<plan_cmd::PlanArgs>),
    /// The flags (and probe's connector) for a vLLM server started by hand for `--extractor vllm`.
    VllmArgs(vllm_args_cmd::VllmArgsArgs),
}

/// Exit status of an error: 2 for what the user can fix, 1 for the rest.
fn exit_code(e: &Error) -> i32 {
    match e {
        Error::InvalidInput { .. } | Error::FeatureDisabled { .. } | Error::NotSupported { .. } => 2,
        _ => 1,
    }
}

/// One line: the error and its causes.
fn one_line(e: Error) -> String {
    let e = flags::as_flags(e);
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = inner.source();
    }
    s.replace('\n', " ")
}

/// A clap error on one line (usage and hints dropped).
fn clap_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    lines.join(" ")
}

fn main() {
    allocator::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                std::process::exit(2);
            }
            eprintln!("{}", clap_line(&e));
            std::process::exit(2);
        }
    };
    let default_level = if cli.quiet { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let quiet = cli.quiet;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Sweep(a) => slurm::run(*a, quiet).await,
            Command::Status(a) => status_cmd::run(*a).await,
            Command::Merge(a) => shard_cmd::run_merge(*a, quiet).await,
            Command::Extract(a) => extract_cmd::run(a, quiet).await,
            Command::Generate(a) => generate_cmd::run(a, quiet).await,
            Command::Apply(a) => apply_cmd::run(*a, quiet).await,
            Command::Demo(a) => demo::run(a, quiet).await,
            Command::Plan(a) => plan_cmd::run(*a).await,
            Command::VllmArgs(a) => vllm_args_cmd::run(a),
        }
    });
    if let Err(e) = result {
        let code = exit_code(&e);
        eprintln!("error: {}", one_line(e));
        std::process::exit(code);
    }
}
