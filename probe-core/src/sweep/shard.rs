//! Sharded sweeps: `N` workers split the blocks of the cache grid between them, each
//! generating and extracting only its own blocks into one shared cache, and a merge folds
//! the block entries into whole entries, trains the probes and reports.
//!
//! Block `i` is rows `[16·i, 16·(i+1))` ([`super::CACHE_BLOCK_ROWS`]: the grid of the
//! generation and activation block entries, see [`crate::sweep`]), whatever the batch size;
//! shard `k` of `N` (`1 ≤ k ≤ N`) owns the blocks with `i mod N = k − 1`. No two shards write
//! the same entry, no shard waits for another, and no shard writes a whole-set or whole-layer
//! entry: [`merge`] does, once every block exists. A plain [`super::run`] over a cache that
//! shards filled computes only what is missing, at any batch size (the shards may each have
//! used another one). A shard's blocks are not neighbours (for `N > 1`), so its forward passes
//! and generate calls hold one block at most: [`super::CACHE_BLOCK_ROWS`] rows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::activations::{self, Job, Slot};
use super::generations::{self, GenJob, Merged};
use super::{PromptSet, SweepConfig, SweepParts, SweepReport, SweepSummary, cache_blocks, validate};
use crate::key::ActivationSource;
use crate::{Error, Result};

/// Shard `index` of `count` (1-based: `1 ≤ index ≤ count`), written `k/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    /// Which shard, from 1.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Shard {
    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the value unless `1 ≤ index ≤ count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        let s = Self { index, count };
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        if self.count == 0 {
            return Err(Error::invalid("shard", format!("\"{self}\": the shard count must be at least 1")));
        }
        if self.index == 0 || self.index > self.count {
            return Err(Error::invalid(
                "shard",
                format!(
                    "\"{self}\": the shard number must be between 1 and {} (shards are k/N with 1 ≤ k ≤ N)",
                    self.count
                ),
            ));
        }
        Ok(())
    }

    /// Whether block `i` is this shard's.
    pub fn owns(&self, block: usize) -> bool {
        block % self.count == self.index - 1
    }

    /// The shard (of `count`) that owns block `i`.
    pub fn owner(block: usize, count: usize) -> Self {
        Self { index: block % count.max(1) + 1, count: count.max(1) }
    }

    /// This shard's blocks of the cache grid of `n` rows ([`super::cache_blocks`]): (block
    /// index, rows `[start, end)`).
    pub fn blocks(&self, n: usize) -> Vec<(usize, (usize, usize))> {
        cache_blocks(n).into_iter().enumerate().filter(|(i, _)| self.owns(*i)).collect()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid("shard", format!("{s:?} is not k/N (e.g. 2/8: shard 2 of 8, 1 ≤ k ≤ N)"));
        let (k, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
        Self::new(num(k)?, num(n)?)
    }
}

/// What one shard did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShardSummary {
    /// Which shard.
    pub shard: Shard,
    /// Blocks of the whole grid.
    pub total_blocks: usize,
    /// This shard's blocks (indices into the grid).
    pub blocks: Vec<usize>,
    /// Prompts in this shard's blocks.
    pub rows: usize,
    /// The counts, as for a whole sweep but over this shard's blocks only
    /// (`batches_computed + batches_cached` is this shard's block count when some layer
    /// lacked a whole-layer entry).
    pub work: SweepSummary,
}

impl std::fmt::Display for ShardSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.blocks.iter().map(usize::to_string).collect();
        write!(
            f,
            "shard {}: {} of {} blocks ({}; {} prompts) · {}",
            self.shard,
            self.blocks.len(),
            self.total_blocks,
            if list.is_empty() { "none".to_owned() } else { format!("blocks {}", list.join(",")) },
            self.rows,
            self.work
        )
    }
}

/// Runs one shard of a sweep: validates as [`super::run`] does, then generates and extracts
/// this shard's blocks only (reading what the cache holds), writing block entries only.
///
/// # Errors
/// Validation errors ([`super::validate`], a shard out of range) before any work; then the
/// generator's, extractor's or store's errors. Committed blocks are kept.
pub async fn run_shard(
    parts: SweepParts<'_>,
    prompts: &PromptSet,
    config: &SweepConfig,
    shard: Shard,
) -> Result<ShardSummary> {
    shard.check()?;
    validate(&parts, prompts, config)?;
    let info = parts.extractor.model_info();
    let layers = activations::slots(&config.reads());
    let n = prompts.len();
    let mine = shard.blocks(n);
    let own_rows: Vec<(usize, usize)> = mine.iter().map(|&(_, r)| r).collect();
    let mut work = SweepSummary { generation: config.sampling.is_some(), ..SweepSummary::default() };
    let corrupt_before = parts.cache.corrupt_entries();

    let (own, source, gens) = match (&config.sampling, parts.generator) {
        (Some(sampling), Some(generator)) => {
            let job = GenJob::new(generator, parts.cache, parts.observer, prompts, sampling, config);
            let (own, source, gens) = generations::shard_texts(&job, &own_rows, &mut work).await?;
            (own, source, Some(gens))
        }
        _ => {
            let texts = prompts.texts();
            let own = own_rows.iter().map(|&(s, e)| ((s, e), crate::Inputs::Texts(texts[s..e].to_vec()))).collect();
            (own, ActivationSource::texts_with(&texts, prompts.special_tokens), None)
        }
    };
    let mut job = activation_job(&info, prompts, &source, &layers, config);
    job.spans = own_spans(parts.extractor, config, prompts, &own, gens.as_ref())?;
    activations::shard_extract(parts.extractor, parts.cache, parts.observer, &job, &own, &mut work).await?;
    work.corrupt_entries = parts.cache.corrupt_entries().saturating_sub(corrupt_before);
    let summary = ShardSummary {
        shard,
        total_blocks: cache_blocks(n).len(),
        blocks: mine.iter().map(|&(i, _)| i).collect(),
        rows: own_rows.iter().map(|r| r.1 - r.0).sum(),
        work,
    };
    tracing::info!("{summary}");
    Ok(summary)
}

/// The generation phase of one shard alone: generates (or finds cached) the completions of
/// this shard's blocks and commits them as block entries, so that a later [`run_shard`] of the
/// same shard finds them cached. For time-shared devices: generation servers stop between the
/// two calls, before the extraction model loads.
///
/// # Errors
/// A shard out of range, bad sampling (`n ≠ 1`, or no sampling at all) or a batch size of 0,
/// before any work; then the generator's or store's errors. Committed blocks are kept.
pub async fn generate_shard(
    generator: &dyn crate::Generator,
    cache: &dyn crate::CacheStore,
    observer: &dyn super::SweepObserver,
    prompts: &PromptSet,
    config: &SweepConfig,
    shard: Shard,
) -> Result<SweepSummary> {
    shard.check()?;
    let sampling = super::generation_sampling(config)?;
    let own_rows: Vec<(usize, usize)> = shard.blocks(prompts.len()).into_iter().map(|(_, r)| r).collect();
    let mut work = SweepSummary { generation: true, ..SweepSummary::default() };
    let job = GenJob::new(generator, cache, observer, prompts, sampling, config);
    generations::shard_texts(&job, &own_rows, &mut work).await?;
    Ok(work)
}

/// Finishes a sharded sweep: checks that every block the report needs is in the cache
/// (whole entries or block entries), then folds the block entries into whole entries,
/// trains the probes and reports — the same report as [`super::run`] over one worker.
///
/// The report's summary is the one a single worker at `config`'s batch size would give over
/// an empty cache: block entries found count as generated or computed (by the shards), whole
/// entries as cached, and `extract_calls` is that worker's forward passes (`n / batch_size`,
/// rounded up; the shards' own passes and out-of-memory retries are in their summaries).
/// `shards`, when given, names the shards whose blocks are missing in the error.
///
/// # Errors
/// Validation errors; [`Error::NotFound`] naming every missing block (rows, what is
/// missing, its shard) before anything is written or computed; then the store's errors.
pub async fn merge(
    parts: SweepParts<'_>,
    prompts: &PromptSet,
    config: &SweepConfig,
    shards: Option<usize>,
) -> Result<SweepReport> {
    validate(&parts, prompts, config)?;
    let info = parts.extractor.model_info();
    let layers = activations::slots(&config.reads());
    let n = prompts.len();
    let grid = cache_blocks(n);
    let mut summary = SweepSummary { generation: config.sampling.is_some(), ..SweepSummary::default() };
    let corrupt_before = parts.cache.corrupt_entries();

    // Look everything up first: nothing is written unless every block is there.
    let looked = lookup(&parts, prompts, config, &info, &layers).await?;
    if !looked.missing.is_empty() {
        return Err(Error::NotFound(missing_message(&looked.missing, &grid, shards)));
    }
    let Lookup { gen_job, generations, source, found, .. } = looked;
    let job = activation_job(&info, prompts, &source, &layers, config);

    match (generations, &gen_job) {
        (Some(Merged::Whole(_)), _) => summary.generations_cached = n,
        (Some(Merged::Blocks(b)), Some(job)) => {
            generations::merge_fold(job, &b).await?;
            summary.generations_generated = n;
        }
        _ => {}
    }
    summary.layers_cached = found.whole.len();
    summary.layers_computed = found.parts.len();
    if summary.layers_computed > 0 {
        summary.batches_computed = grid.len();
        summary.extract_calls = n.div_ceil(config.batch_size);
        summary.entries_written = grid.len() * summary.layers_computed;
    }
    let features = activations::merge_fold(parts.cache, &job, found).await?;
    summary.corrupt_entries = parts.cache.corrupt_entries().saturating_sub(corrupt_before);
    super::report(&parts, prompts, config, &info, &features, summary)
}

/// The blocks of the cache grid ([`super::cache_blocks`]) that the cache lacks, each with what is missing
/// (`"generations"`, `"layers 1,3"`): what [`merge`] would name, read without writing
/// anything. Empty when every block (or every whole entry) is there.
///
/// # Errors
/// Validation errors, then the store's errors.
pub async fn missing_blocks(
    parts: SweepParts<'_>,
    prompts: &PromptSet,
    config: &SweepConfig,
) -> Result<BTreeMap<usize, Vec<String>>> {
    validate(&parts, prompts, config)?;
    let info = parts.extractor.model_info();
    let layers = activations::slots(&config.reads());
    Ok(lookup(&parts, prompts, config, &info, &layers).await?.missing)
}

/// What the cache holds for a merge.
struct Lookup<'a> {
    gen_job: Option<GenJob<'a>>,
    generations: Option<Merged>,
    source: ActivationSource,
    found: activations::MergeLookup,
    /// Block index → what it lacks.
    missing: BTreeMap<usize, Vec<String>>,
}

async fn lookup<'a>(
    parts: &SweepParts<'a>,
    prompts: &'a PromptSet,
    config: &'a SweepConfig,
    info: &crate::ModelInfo,
    layers: &[Slot],
) -> Result<Lookup<'a>> {
    let grid = cache_blocks(prompts.len());
    let mut gen_job = None;
    let (generations, source) = match (&config.sampling, parts.generator) {
        (Some(sampling), Some(generator)) => {
            let job = GenJob {
                generator: None,
                cache: parts.cache,
                observer: parts.observer,
                prompts,
                sampling,
                model: generator.model_id(),
                texts: prompts.texts(),
                in_flight: 1,
                batch: config.batch_size,
                capture: None,
            };
            let found = generations::merge_lookup(&job, &grid).await?;
            let digest = job.whole_key().digest;
            let source = match &found {
                Merged::Whole(all) => generations::source(all, digest),
                Merged::Blocks(b) => generations::source(b.values().flatten(), digest),
                Merged::Missing(_) => ActivationSource::Generations(digest),
            };
            gen_job = Some(job);
            (Some(found), source)
        }
        _ => (None, ActivationSource::texts_with(&prompts.texts(), prompts.special_tokens)),
    };
    let found = activations::merge_lookup(parts.cache, &activation_job(info, prompts, &source, layers, config)).await?;

    let mut missing: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    if let Some(Merged::Missing(rows)) = &generations {
        for r in rows {
            missing.entry(r.0 / super::CACHE_BLOCK_ROWS).or_default().push("generations".into());
        }
    }
    let mut by_block: BTreeMap<usize, Vec<Slot>> = BTreeMap::new();
    for &(slot, block) in &found.missing {
        by_block.entry(block).or_default().push(slot);
    }
    let several = config.several_sites();
    for (block, layers) in by_block {
        let name = |&(site, layer): &Slot| if several { format!("{site}.{layer}") } else { layer.to_string() };
        let list: Vec<String> = layers.iter().map(name).collect();
        missing.entry(block).or_default().push(format!(
            "layer{} {}",
            if layers.len() == 1 { "" } else { "s" },
            list.join(",")
        ));
    }
    Ok(Lookup { gen_job, generations, source, found, missing })
}

fn activation_job<'a>(
    info: &'a crate::ModelInfo,
    prompts: &'a PromptSet,
    source: &'a ActivationSource,
    layers: &'a [Slot],
    config: &'a SweepConfig,
) -> Job<'a> {
    Job {
        info,
        prompt_set: &prompts.name,
        source,
        n: prompts.len(),
        layers,
        readout: &config.positions,
        spans: None,
        batch_size: config.batch_size,
        special_tokens: prompts.special_tokens,
    }
}

/// The spans of a shard's own rows (others left empty: a shard never reads them).
fn own_spans(
    extractor: &dyn crate::ActivationExtractor,
    config: &SweepConfig,
    prompts: &PromptSet,
    own: &BTreeMap<(usize, usize), crate::Inputs>,
    gens: Option<&BTreeMap<(usize, usize), Vec<crate::Generation>>>,
) -> Result<Option<Vec<crate::Span>>> {
    let mut all: Option<Vec<crate::Span>> = None;
    for (&rows, inputs) in own {
        let g = gens.and_then(|g| g.get(&rows)).map(Vec::as_slice);
        let special = prompts.special_tokens;
        if let Some(part) = super::spans::resolve(extractor, &config.positions, special, (prompts, rows), g, inputs)? {
            let spans = all.get_or_insert_with(|| vec![crate::Span::new(0, 0); prompts.len()]);
            spans[rows.0..rows.1].copy_from_slice(&part);
        }
    }
    Ok(all)
}

/// "3 of 6 blocks are missing: block 1 (rows 4..8: generations, layers 1,3; shard 2/3), …".
fn missing_message(missing: &BTreeMap<usize, Vec<String>>, grid: &[(usize, usize)], shards: Option<usize>) -> String {
    const SHOWN: usize = 12;
    let mut parts = Vec::new();
    for (&block, what) in missing.iter().take(SHOWN) {
        let (s, e) = grid[block];
        let owner = shards.map(|c| format!("; shard {}", Shard::owner(block, c))).unwrap_or_default();
        parts.push(format!("block {block} (rows {s}..{e}: {}{owner})", what.join(", ")));
    }
    if missing.len() > SHOWN {
        parts.push(format!("and {} more", missing.len() - SHOWN));
    }
    let mut msg =
        format!("{} of {} blocks are missing from the cache: {}", missing.len(), grid.len(), parts.join(", "));
    if let Some(c) = shards {
        let mut owners: Vec<usize> = missing.keys().map(|&b| Shard::owner(b, c).index).collect();
        owners.dedup();
        owners.sort_unstable();
        owners.dedup();
        let list: Vec<String> = owners.iter().map(|k| format!("{k}/{c}")).collect();
        msg.push_str(&format!(
            "; run shard{} {} (or a plain sweep) first",
            if list.len() == 1 { "" } else { "s" },
            list.join(", ")
        ));
    } else {
        msg.push_str("; run the missing shards (or a plain sweep) first");
    }
    msg
}
