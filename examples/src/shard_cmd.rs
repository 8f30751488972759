//! `probe sweep --shard k/N` and `probe merge`: one sweep split over many workers that share
//! one cache (see `docs/scale.md`). The work is [`probe_core::sweep::run_shard`] and
//! [`probe_core::sweep::merge`]; this is the command-line layer.

use clap::Args;
use probe_core::sweep::{self, Shard, SweepParts};
use probe_core::{Error, Result};

use crate::backends::Opened;

use crate::outputs;
use crate::progress::Bars;
use crate::servers;
use crate::sweep_cmd::{Plan, SweepArgs};

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
    let ld = launched.as_deref();
    let generated =
        servers::generation_first(ld, &plan.prompts, &plan.config, cache.as_ref(), &bars, Some(shard)).await?;
    tracing::info!("loading {} with {:?}", plan.model, plan.backend);
    let dtype = crate::run_plan::dtype_name(plan.run_plan.as_ref());
    let urls = plan.servers.urls();
    let opened = plan.backend.open_planned(&plan.model, plan.run_plan.as_ref(), plan.gpu, &urls, dtype)?;
    let model = crate::faults::inject(opened)?;
    let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(&bars);
    if let Some(g) = ld.map(|g| g as &dyn probe_core::Generator).or(model.generator.as_deref()) {
        parts = parts.with_generator(g);
    }
    let result = sweep::run_shard(parts, &plan.prompts, &plan.config, shard).await;
    if let Some(g) = ld {
        g.stop("after the shard").await?;
    }
    let mut summary = result?;
    if let Some(g) = generated {
        // The shard found the completions of its time-shared generation phase cached.
        summary.work.generations_generated = g.generations_generated;
        summary.work.generations_cached = g.generations_cached;
    }
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
    // The merge runs nothing on a device: plan as for a dry run, so that the GPUs of
    // `[devices]` need not exist on the (often CPU-only) node it runs on.
    let plan = crate::sweep_cmd::plan_merge(&args.sweep)?;
    let cache = probe_cache::from_url(&plan.cache_url)?;
    let bars = Bars::new(quiet);
    let model = identities(&plan)?;
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

/// What a merge needs of the model: the identities in the cache keys. For candle (and the
/// candle extractor of `vllm`) they are read from config.json, the safetensors headers and
/// tokenizer.json without loading any weights, so a merge needs no GPU and little memory;
/// other backends are opened as for a sweep. Nothing is generated or extracted either way.
pub(crate) fn identities(plan: &Plan) -> Result<Opened> {
    #[cfg(feature = "candle")]
    if matches!(plan.backend, crate::backends::BackendKind::Candle | crate::backends::BackendKind::Vllm) {
        use std::sync::Arc;

        use identity::Identity;
        use probe_backends::candle::{CandleBackend, CandleOptions};
        use probe_core::Generator;
        let info = CandleBackend::model_info_of(
            std::path::Path::new(&plan.model),
            &CandleOptions::default().with_dtype(crate::run_plan::dtype_name(plan.run_plan.as_ref()).parse()?),
        )?;
        let generator: Arc<dyn Generator> = if plan.backend == crate::backends::BackendKind::Vllm {
            // Builds the client only: no server is contacted.
            plan.backend.open_generator(&plan.model, None, &plan.servers.urls())?
        } else {
            Arc::new(Identity(info.clone()))
        };
        return Ok(Opened { extractor: Arc::new(Identity(info)), generator: Some(generator) });
    }
    tracing::info!("loading {} with {:?}", plan.model, plan.backend);
    plan.backend.open(&plan.model, plan.gpu, &plan.servers.urls())
}

#[cfg(feature = "candle")]
mod identity {
    use async_trait::async_trait;
    use probe_core::{
        ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Generation, GenerationRequest,
        Generator, ModelId, ModelInfo, Result,
    };

    /// A model's identity and nothing else: computing anything is refused.
    #[derive(Debug)]
    pub(super) struct Identity(pub(super) ModelInfo);

    #[async_trait]
    impl ActivationExtractor for Identity {
        async fn extract(&self, _request: ActivationRequest) -> Result<Activations> {
            Err(Error::not_supported("extraction during a merge", "identity-only"))
        }
        fn model_info(&self) -> ModelInfo {
            self.0.clone()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
        }
    }

    #[async_trait]
    impl Generator for Identity {
        async fn generate(&self, _request: GenerationRequest) -> Result<Vec<Generation>> {
            Err(Error::not_supported("generation during a merge", "identity-only"))
        }
        fn model_id(&self) -> ModelId {
            self.0.id.clone()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
        }
    }
}
