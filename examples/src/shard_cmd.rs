//! `probe merge`: finishes a sharded sweep (`probe sweep --shard k/N`, see `docs/scale.md`);
//! the work is [`probe_backends::session::Session::merge`].

use clap::Args;
use probe_core::{Error, Result};

use crate::sweep_cmd::SweepArgs;

/// Arguments of `probe merge`: those of `probe sweep`, and the shard count.
#[derive(Debug, Clone, Args)]
pub(crate) struct MergeArgs {
    #[command(flatten)]
    pub(crate) sweep: SweepArgs,
    /// The shard count, to name the shards whose blocks are missing.
    #[arg(long)]
    pub(crate) shards: Option<usize>,
}

/// `probe merge`.
pub(crate) async fn run_merge(args: MergeArgs, quiet: bool) -> Result<()> {
    if let Some(s) = args.sweep.shard {
        return Err(Error::invalid(
            "shard",
            format!("{:?}: probe merge takes every shard (use --shards N to name the missing ones)", s.to_string()),
        ));
    }
    if args.sweep.dry_run {
        return Err(Error::invalid("dry-run", "probe merge starts nothing to preview: it only reads the cache"));
    }
    let (session, prompts) = args.sweep.open(quiet).await?;
    let report = session.merge(&prompts, args.shards).await?;
    let written = probe_backends::session::write_report(&report, &args.sweep.out)?;
    crate::sweep_cmd::print_report(&report, &written, &session.cache_location()?);
    session.close().await
}
