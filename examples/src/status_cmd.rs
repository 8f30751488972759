//! `probe status --shards N`: per shard, which blocks of a sharded sweep the cache holds, read
//! without a scheduler and without writing anything
//! ([`probe_backends::session::Session::shard_status`]). `probe sweep --shards N --submit
//! slurm` uses the same reading to resubmit only the shards with missing blocks.

use clap::Args;
use probe_backends::session::ShardProgress;
use probe_core::{Error, Result};

use crate::sweep_cmd::SweepArgs;

/// Arguments of `probe status`: those of `probe sweep` (same model, prompts, layers, settings
/// and cache) and the shard count.
#[derive(Debug, Clone, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) sweep: SweepArgs,
    /// How many shards the sweep is split into.
    #[arg(long, value_name = "N")]
    pub(crate) shards: usize,
}

/// Reads the cache for the sweep of `args` split into `count` shards.
///
/// # Errors
/// `--shard` or `--dry-run` given, every error of planning the sweep, the store's errors.
pub(crate) async fn progress(args: &SweepArgs, count: usize) -> Result<ShardProgress> {
    if let Some(s) = args.shard {
        return Err(Error::invalid(
            "shard",
            format!("{:?}: the status covers every shard (give --shards N alone)", s.to_string()),
        ));
    }
    if args.dry_run {
        return Err(Error::invalid("dry-run", "probe status starts nothing to preview: it only reads the cache"));
    }
    let (session, prompts) = args.open(true).await?;
    session.shard_status(&prompts, count).await
}

/// `probe status`: prints [`ShardProgress::lines`].
pub(crate) async fn run(args: StatusArgs) -> Result<()> {
    progress(&args.sweep, args.shards).await?.lines().iter().for_each(|l| println!("{l}"));
    Ok(())
}
