//! `probe sweep --shard k/N` and `probe merge`: one sweep split over many workers that share
//! one cache (see `docs/scale.md`). The work is [`probe_core::sweep::run_shard`] and
//! [`probe_core::sweep::merge`]; this is the command-line layer.

use clap::Args;
use probe_core::sweep::{self, Shard, SweepParts};
use probe_core::{Error, Result};

use crate::outputs;
use crate::progress::Bars;
use crate::servers;
use crate::sweep_cmd::{Plan, SweepArgs, plan};

/// Arguments of `probe merge`: those of `probe sweep` (same model, prompts, layers,
/// settings and cache), plus the shard count for naming missing shards.
#[derive(Debug, Clone, Args)]
pub(crate) struct MergeArgs {
    #[command(flatten)]
    pub(crate) sweep: SweepArgs,
    /// How many shards the sweep was split into (names the shards of missing blocks).
    #[arg(long)]
    pub(crate) shards: Option<usize>,
}

/// `probe sweep --shard k/N`: generates and extracts this shard's blocks into the cache and
/// prints what it did; writes no report.
pub(crate) async fn run_shard(plan: Plan, shard: Shard, quiet: bool) -> Result<()> {
    let launches = plan.servers.launches();
    servers::with_signals(launches, execute_shard(plan, shard, quiet)).await
}

async fn execute_shard(plan: Plan, shard: Shard, quiet: bool) -> Result<()> {
    let cache = probe_cache::from_url(&plan.cache_url)?;
    let bars = Bars::new(quiet);
    let launched = plan.servers.on_demand(&plan.model)?;
    tracing::info!("loading {} with {:?}", plan.model, plan.backend);
    let model = crate::faults::inject(plan.backend.open(&plan.model, plan.gpu, &plan.servers.urls())?)?;
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    let ld = launched.as_deref();
    if let Some(g) = ld.map(|g| g as &dyn probe_core::Generator).or(model.generator.as_deref()) {
        parts = parts.with_generator(g);
    }
    let result = sweep::run_shard(parts, &plan.prompts, &plan.config, shard).await;
    if let Some(g) = ld {
        g.stop("after the shard").await?;
    }
    let summary = result?;
    drop(bars);
    println!("{summary}");
    println!("cache: {}", cache.location());
    println!("when every shard of {} is done: probe merge (same arguments, --shards {})", shard.count, shard.count);
    Ok(())
}

/// `probe merge`: checks that every block is in the cache, folds them into whole entries,
/// trains the probes and writes the report (as `probe sweep` does).
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
    if args.shards == Some(0) {
        return Err(Error::invalid("shards", "0 (must be ≥ 1)"));
    }
    let plan = plan(&args.sweep)?;
    let cache = probe_cache::from_url(&plan.cache_url)?;
    let bars = Bars::new(quiet);
    tracing::info!("loading {} with {:?}", plan.model, plan.backend);
    // The generator is only asked for its identity (the cache keys): nothing is generated.
    let model = plan.backend.open(&plan.model, plan.gpu, &plan.servers.urls())?;
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    if let Some(g) = model.generator.as_deref() {
        parts = parts.with_generator(g);
    }
    let report = sweep::merge(parts, &plan.prompts, &plan.config, args.shards).await?;
    drop(bars);
    let written = outputs::write_all(&report, &plan.out)?;
    crate::sweep_cmd::print_report(&report, &written, &cache.location());
    Ok(())
}
