//! The layer sweep: labelled prompts → completions (cached) → hidden states at every
//! requested layer (forward passes of `batch_size` rows, cached per layer and block of
//! [`CACHE_BLOCK_ROWS`] prompts) → cross-validated probes per layer ([`probe`]: logistic,
//! difference of means, control task; ridge for numeric labels) → a [`SweepReport`].
//!
//! The pipeline works on the traits only (`&dyn Generator`, `&dyn ActivationExtractor`,
//! `&dyn CacheStore`), so any backend and any store can run it.
//!
//! # Cache layout and resumption
//!
//! The cache is cut into *blocks* of [`CACHE_BLOCK_ROWS`] prompts: block `i` is rows
//! `[16·i, 16·(i+1))` ([`cache_blocks`]), whatever the batch size. The batch size is a
//! compute setting only (rows per forward pass and per generate call), so runs at any batch
//! size, and the shards of a sharded run, share every entry.
//!
//! - **Generations**, JSON lines ([`crate::codec::encode_generations`]), two granularities:
//!   a *block entry* per block ([`crate::key::generation_block_key`]), written as soon as the
//!   block's completions are all generated, and the *whole-set entry* per prompt set and
//!   sampling settings ([`crate::key::generation_key`]), assembled once every block exists
//!   (the block entries are then deleted where the store can).
//! - **Activations**, two granularities, both keyed with [`crate::key::activation_key`]:
//!   - a *block entry* per (layer, block) — `rows = Some((start, end))` — written as soon as
//!     the block's rows have been through the forward pass, so a killed run loses at most the
//!     rows in flight;
//!   - a *layer entry* per layer over all rows — `rows = None` — assembled from the block
//!     entries once every block of the layer exists; its block entries are then deleted
//!     (when the store supports it).
//!
//!   Both hold one f32 tensor named [`crate::codec::ACTIVATIONS_TENSOR`] of shape
//!   `[rows, hidden]` plus string metadata (model, layer, positions, rows).
//! - The pipeline looks up every requested layer that has no layer entry in every block, then
//!   runs forward passes of up to `batch_size` rows that run on from one missing block to the
//!   next (the blocks lacking the same layers, one pass for all of those layers), cutting the
//!   results back into block entries, each committed as soon as its rows are done; a block
//!   larger than the batch takes several passes. Generation likewise asks for up to
//!   `batch_size` prompts of the missing blocks per call. An out-of-memory error halves the
//!   extractor's batch size and retries the same rows (the cache grid is unchanged).
//! - Entries of an older version's grid (blocks of the batch size) are misses, except where
//!   they coincide with this grid (batch size 16); whole-set and layer entries never depended
//!   on the batch size and are read as before.
//! - A corrupt entry is a miss: it is recomputed, and counted in
//!   [`SweepSummary::corrupt_entries`] (from [`CacheStore::corrupt_entries`]).
//!
//! # States read while generating
//!
//! When the generator can read the extractor's model's hidden states as it generates
//! ([`crate::Capabilities::capture_states`], [`Generator::states_model`] equal to
//! [`ActivationExtractor::model_info`]), the readout is `last`, `mean`, `last-prompt` or
//! `mean-completion` and nothing steers
//! the completions, the blocks generated now are captured
//! ([`Generator::generate_capturing`]): each block's activation block entries (the layers
//! without a whole-layer entry) are committed with its generation block entry, under the keys
//! and in the layout extraction would write, so the activation phase finds them and runs no
//! forward pass for those rows (counted in [`SweepSummary::pass_reuse`]). Completions found
//! in the cache, other readouts and steered runs are extracted as before.
//!
//! Everything is validated before any expensive work: layers against
//! [`crate::ActivationExtractor::model_info`], the batch size, sampling, the probe settings and
//! the labels (at least two examples per class).

mod activations;
#[cfg(test)]
mod block_tests;
mod generations;
pub mod layers;
mod observer;
pub mod probe;
pub mod prompts;
mod report;
mod shard;
#[cfg(test)]
mod shard_tests;
mod spans;
mod tokens;
mod transfer;

use std::collections::BTreeMap;

/// What the activation phase hands the probes: per (site, layer), `[n, width]`.
pub type Features = BTreeMap<(crate::Site, usize), Tensor>;

pub use activations::{extract_all, extract_inputs};

/// Hidden states of the prompts themselves (no completions) at `readout`, in batches of
/// `batch_size` through the out-of-memory back-off, without a cache (`probe extract`). Without
/// completions `last-prompt` is `last`; `mean-completion` and `all` are refused.
///
/// # Errors
/// [`Error::InvalidInput`] for those readouts, a marker missing from a prompt (naming it), no
/// prompts, no layers or a batch size of 0; then the extractor's errors.
pub async fn extract_prompts(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    prompts: &PromptSet,
    reads: &[(crate::Site, Vec<usize>)],
    readout: &Readout,
    batch_size: usize,
) -> Result<BTreeMap<(crate::Site, usize), Tensor>> {
    spans::check(readout, false)?;
    let texts = crate::Inputs::Texts(prompts.texts());
    let special = prompts.special_tokens;
    let spans = spans::resolve(extractor, readout, special, (prompts, (0, prompts.len())), None, &texts)?;
    let how = (readout.positions(), spans.as_deref());
    activations::extract_spans(extractor, observer, &texts, special, reads, how, batch_size).await
}
pub use layers::LayerSelection;
pub use observer::{NoProgress, Phase, SweepEvent, SweepObserver};
pub use probe::{
    Applied, LabelKind, LogisticProbe, ProbeConfig, ProbeMeta, SavedProbe, Targets, evaluate_heads, evaluate_layer,
    parse_c_grid, roc_auc, stratified_folds,
};
pub use prompts::{ChatMessage, Prompt, PromptFormat, PromptSet};
pub use report::{LayerScore, SweepReport, SweepSummary};
pub use shard::{Shard, ShardSummary, generate_shard, merge, missing_blocks, run_shard};
pub use tokens::{DEFAULT_SHARD_BYTES, TokenShard, stream_all_tokens};
pub use transfer::{LayerResults, TransferScore, transfer};

use crate::key::ActivationSource;
use crate::{ActivationExtractor, CacheStore, Error, Generator, Readout, Result, SamplingParams, Tensor};

/// Settings of one sweep.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SweepConfig {
    /// Layers to probe (Hugging Face numbering); duplicates ignored.
    pub layers: Vec<usize>,
    /// Position reduction (`last` or `mean`; probes need one vector per prompt).
    pub positions: Readout,
    /// Rows per forward pass and prompts per generate call: a compute setting only (the cache
    /// is cut into blocks of [`CACHE_BLOCK_ROWS`] whatever it is).
    pub batch_size: usize,
    /// Sampling of the completions; `None` probes the prompt texts themselves.
    pub sampling: Option<SamplingParams>,
    /// Probe training and split.
    pub probe: ProbeConfig,
    /// Generate calls in flight at once (each of up to `batch_size` prompts; every block of
    /// the cache grid is committed as soon as its completions are all back); more than 1 keeps
    /// several servers busy. Default 1.
    pub generation_in_flight: usize,
    /// The run's resolved plan ([`crate::plan::resolve_run`]), recorded in the report.
    pub plan: Option<crate::plan::RunPlan>,
    /// Where activations are read; for a site inside blocks, `layers` are blocks (`0..L`).
    pub site: crate::Site,
    /// Further sites read in the same forward passes, each at its own layers (see
    /// [`SweepConfig::reads`]); empty: `site` alone.
    pub more_sites: Vec<(crate::Site, Vec<usize>)>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            layers: Vec::new(),
            positions: Readout::Last,
            batch_size: crate::DEFAULT_BATCH_SIZE,
            sampling: Some(SamplingParams::default()),
            probe: ProbeConfig::default(),
            generation_in_flight: 1,
            plan: None,
            site: crate::Site::Resid,
            more_sites: Vec::new(),
        }
    }
}

impl SweepConfig {
    /// A sweep over `layers` with default settings (greedy completions of 64 tokens, last
    /// position, batch 16, 80/20 split with seed 0).
    pub fn new(layers: Vec<usize>) -> Self {
        Self { layers, ..Self::default() }
    }
    /// Sets the position reduction.
    pub fn with_positions(mut self, p: impl Into<Readout>) -> Self {
        self.positions = p.into();
        self
    }
    /// Sets the batch size.
    pub fn with_batch_size(mut self, b: usize) -> Self {
        self.batch_size = b;
        self
    }
    /// Sets where activations are read (one site: the further sites are dropped).
    pub fn with_site(mut self, site: crate::Site) -> Self {
        self.site = site;
        self.more_sites.clear();
        self
    }
    /// Also reads `site` at `layers` (numbered as that site numbers them), in the same forward
    /// passes.
    pub fn with_more_site(mut self, site: crate::Site, layers: Vec<usize>) -> Self {
        self.more_sites.push((site, layers));
        self
    }
    /// What is read: `(site, layers)` per site, [`SweepConfig::site`] first, as
    /// [`crate::ActivationRequest::reads`].
    pub fn reads(&self) -> Vec<(crate::Site, Vec<usize>)> {
        let mut request =
            crate::ActivationRequest::new(crate::Inputs::default(), self.layers.clone()).with_site(self.site);
        request.more_sites = self.more_sites.clone();
        request.reads()
    }
    /// Whether several sites are read (the report then names each layer's site).
    pub fn several_sites(&self) -> bool {
        !self.more_sites.is_empty()
    }
    /// Sets the sampling; `None` turns generation off.
    pub fn with_sampling(mut self, s: Option<SamplingParams>) -> Self {
        self.sampling = s;
        self
    }
    /// Sets the probe settings.
    pub fn with_probe(mut self, p: ProbeConfig) -> Self {
        self.probe = p;
        self
    }
    /// Uses a resolved plan: its extraction batch size (planned, or the one the user gave),
    /// and records it in the report.
    pub fn with_plan(mut self, plan: crate::plan::RunPlan) -> Self {
        self.batch_size = plan.batch_size_or(self.batch_size);
        self.plan = Some(plan);
        self
    }
    /// Sets how many generate calls are in flight at once (0 is taken as 1).
    pub fn with_generation_in_flight(mut self, n: usize) -> Self {
        self.generation_in_flight = n.max(1);
        self
    }
}

/// The parts a sweep runs on.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct SweepParts<'a> {
    /// Produces completions; needed when [`SweepConfig::sampling`] is set.
    pub generator: Option<&'a dyn Generator>,
    /// Produces hidden states.
    pub extractor: &'a dyn ActivationExtractor,
    /// Stores generations and activations.
    pub cache: &'a dyn CacheStore,
    /// Receives progress.
    pub observer: &'a dyn SweepObserver,
}

impl std::fmt::Debug for SweepParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepParts")
            .field("generator", &self.generator)
            .field("extractor", &self.extractor)
            .field("cache", &self.cache.location())
            .finish_non_exhaustive()
    }
}

impl<'a> SweepParts<'a> {
    /// Parts without a generator and without progress.
    pub fn new(extractor: &'a dyn ActivationExtractor, cache: &'a dyn CacheStore) -> Self {
        Self { generator: None, extractor, cache, observer: &NoProgress }
    }
    /// Sets the generator.
    pub fn with_generator(mut self, g: &'a dyn Generator) -> Self {
        self.generator = Some(g);
        self
    }
    /// Sets the observer.
    pub fn with_observer(mut self, o: &'a dyn SweepObserver) -> Self {
        self.observer = o;
        self
    }
}

/// Checks everything a sweep needs before any generation or forward pass.
///
/// # Errors
/// [`Error::InvalidInput`] naming the bad value: no layers, a layer out of range, a batch
/// size of 0, positions `all`, bad sampling or `n ≠ 1`, generation without a generator, bad
/// probe settings, prompts without labels, or a class with fewer than two prompts.
pub fn validate(parts: &SweepParts<'_>, prompts: &PromptSet, config: &SweepConfig) -> Result<()> {
    validate_features(parts, prompts, config)?;
    config.probe.validate()?;
    validate_labels(prompts, config)
}

/// What [`features`] needs: layers, batch size, positions, sampling, the generator.
fn validate_features(parts: &SweepParts<'_>, prompts: &PromptSet, config: &SweepConfig) -> Result<()> {
    let info = parts.extractor.model_info();
    prompts.check_rendered()?;
    crate::activation::check_reads(&config.reads(), &info)?;
    if config.batch_size == 0 {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    spans::check(&config.positions, config.sampling.is_some())?;
    if let Some(s) = &config.sampling {
        s.validate()?;
        if s.n != 1 {
            return Err(Error::invalid("n", format!("{} (a sweep probes one completion per prompt)", s.n)));
        }
        if parts.generator.is_none() {
            return Err(Error::invalid("generation", "completions were asked for but no generator was given"));
        }
    }
    Ok(())
}

/// The labels a probe needs: two classes or more, each with two prompts or more.
fn validate_labels(prompts: &PromptSet, config: &SweepConfig) -> Result<()> {
    let targets = targets(prompts, config)?;
    if let Targets::Classes { .. } = targets {
        let classes = prompts.classes();
        if classes.len() < 2 {
            return Err(Error::invalid(
                "labels",
                format!("every prompt has the label {:?}; a probe needs at least two classes", classes.join("")),
            ));
        }
        for (class, count) in prompts.class_counts() {
            if count < 2 {
                return Err(Error::invalid(
                    "labels",
                    format!("label {class:?} has {count} prompt; a train/test split needs at least 2 per class"),
                ));
            }
        }
    }
    if prompts.len() < config.probe.folds {
        return Err(Error::invalid(
            "folds",
            format!("{} (more folds than the {} prompts)", config.probe.folds, prompts.len()),
        ));
    }
    Ok(())
}

/// What the probes predict: classes, or numbers ([`ProbeConfig::labels`]).
fn targets(prompts: &PromptSet, config: &SweepConfig) -> Result<Targets> {
    prompts.class_indices()?;
    let labels: Vec<&str> = prompts.prompts.iter().map(|p| p.label.as_deref().unwrap_or_default()).collect();
    Targets::from_labels(&labels, &prompts.classes(), config.probe.labels)
}

/// The generation phase alone: generates the completions of `prompts` (or finds them in
/// `cache`) and caches them under the same key [`run`] reads, so a later [`run`] with the same
/// generator identity, prompts and sampling finds them cached. For running generation and
/// extraction one after the other on shared devices (stop the generation servers in between)
/// without loading the extractor first.
///
/// Uses `config`'s sampling, batch size and generate calls in flight (the rest of it is
/// not looked at). Returns the generation counts (`generation`, `generations_generated`,
/// `generations_cached`; the rest stays 0).
///
/// # Errors
/// [`Error::InvalidInput`] when `config` has no sampling, for bad sampling, `n ≠ 1` or a batch
/// size of 0; then the generator's or store's errors.
pub async fn generate(
    generator: &dyn Generator,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    prompts: &PromptSet,
    config: &SweepConfig,
) -> Result<SweepSummary> {
    completions(generator, cache, observer, prompts, config).await.map(|(_, summary)| summary)
}

/// [`generate`], also returning every prompt's completion in prompt order (`probe generate`).
///
/// # Errors
/// As [`generate`].
pub async fn completions(
    generator: &dyn Generator,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    prompts: &PromptSet,
    config: &SweepConfig,
) -> Result<(Vec<crate::Generation>, SweepSummary)> {
    let sampling = generation_sampling(config)?;
    prompts.check_rendered()?;
    let mut summary = SweepSummary { generation: true, ..SweepSummary::default() };
    let job = generations::GenJob::new(generator, cache, observer, prompts, sampling, config);
    let gens = generations::completions(&job, &cache_blocks(prompts.len()), &mut summary).await?;
    Ok((gens, summary))
}

/// The sampling of a generation-only phase, checked: set, valid, one completion per prompt,
/// and a batch size ≥ 1.
fn generation_sampling(config: &SweepConfig) -> Result<&SamplingParams> {
    let Some(sampling) = &config.sampling else {
        return Err(Error::invalid("generation", "the sweep settings ask for no completions (sampling is None)"));
    };
    if config.batch_size == 0 {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    sampling.validate()?;
    if sampling.n != 1 {
        return Err(Error::invalid("n", format!("{} (a sweep probes one completion per prompt)", sampling.n)));
    }
    Ok(sampling)
}

/// Prompts per block of the cache grid: generation block entries, activation block entries
/// and shard ownership all cut the prompts into blocks of this many rows ([`cache_blocks`]),
/// whatever the batch size, so a run at another batch size (or a plain run after a sharded
/// one) finds every entry.
///
/// Why 16: small enough that a killed run loses little (at most the rows in flight and a
/// partly done block) and that a few hundred prompts give N shards work (90 prompts are 6
/// blocks); large enough that object counts stay sane on S3 (10 000 prompts × 80 layers are
/// 50 000 block entries before they are folded, not 800 000 of single rows) and that an
/// entry is not tiny (16 rows × 8192 hidden × 4 bytes = 512 KiB). It is also the default
/// batch size and divides the usual ones (32, 64, 128), so default passes end on block
/// boundaries, and the blocks of caches written at batch size 16 before the grid was fixed
/// are still found.
///
/// Changing it makes every block entry a miss (whole-set and layer entries still hit).
pub const CACHE_BLOCK_ROWS: usize = 16;

/// The cache grid of `n` rows: `[0, 16)`, `[16, 32)`, …, the last one shorter (blocks of
/// [`CACHE_BLOCK_ROWS`]). Generation block entries, activation block entries and shards all
/// use it.
pub fn cache_blocks(n: usize) -> Vec<(usize, usize)> {
    blocks(n, CACHE_BLOCK_ROWS)
}

/// `n` rows cut into consecutive chunks of `size`: `[0, size)`, `[size, 2·size)`, …, the last
/// one shorter. `blocks(n, CACHE_BLOCK_ROWS)` is the cache grid ([`cache_blocks`]).
pub fn blocks(n: usize, size: usize) -> Vec<(usize, usize)> {
    let b = size.max(1);
    (0..n).step_by(b).map(|s| (s, (s + b).min(n))).collect()
}

/// The rows of `blocks`, in order, cut into forward passes (or generate calls) of up to
/// `batch` rows: a pass holds the rows of several blocks when they are smaller than the
/// batch (neighbours or not: a shard's blocks are not), a block larger than the batch takes
/// several passes.
fn passes(blocks: &[(usize, usize)], batch: usize) -> Vec<Vec<usize>> {
    let rows: Vec<usize> = blocks.iter().flat_map(|&(s, e)| s..e).collect();
    rows.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

/// Runs a sweep: validates, generates (or reads cached completions), extracts every
/// requested layer (or reads it from the cache), trains one probe per layer and reports.
///
/// # Errors
/// Validation errors ([`validate`]) before any work; then the generator's, extractor's or
/// store's errors. What was committed to the cache before an error is kept.
pub async fn run(parts: SweepParts<'_>, prompts: &PromptSet, config: &SweepConfig) -> Result<SweepReport> {
    validate(&parts, prompts, config)?;
    let (features, summary) = features(parts, prompts, config).await?;
    report(&parts, prompts, config, &parts.extractor.model_info(), &features, summary)
}

/// The sweep without probes: completions (cached) and every requested layer's `[n, hidden]`
/// activations (cached) of `prompts`, whose labels are not needed (`probe apply`, the test
/// sets of `--test-on`). Same cache entries as [`run`].
///
/// # Errors
/// As [`run`], less the label and probe checks.
pub async fn features(
    parts: SweepParts<'_>,
    prompts: &PromptSet,
    config: &SweepConfig,
) -> Result<(Features, SweepSummary)> {
    validate_features(&parts, prompts, config)?;
    let info = parts.extractor.model_info();
    let layers = activations::slots(&config.reads());
    let mut summary = SweepSummary { generation: config.sampling.is_some(), ..SweepSummary::default() };
    let corrupt_before = parts.cache.corrupt_entries();
    let reuse_before = parts.extractor.pass_reuse();

    let (texts, source, gens) = match (&config.sampling, parts.generator) {
        (Some(sampling), Some(generator)) => {
            let mut job = generations::GenJob::new(generator, parts.cache, parts.observer, prompts, sampling, config);
            job.capture = capture(parts.cache, generator, &job, &info, &layers, config).await?;
            let (texts, source, gens) =
                generations::texts_with_completions(&job, &cache_blocks(prompts.len()), &mut summary).await?;
            (texts, source, Some(gens))
        }
        _ => {
            let texts = prompts.texts();
            let source = ActivationSource::texts_with(&texts, prompts.special_tokens);
            (crate::Inputs::Texts(texts), source, None)
        }
    };
    let special = prompts.special_tokens;
    let rows = (prompts, (0, prompts.len()));
    let spans = spans::resolve(parts.extractor, &config.positions, special, rows, gens.as_deref(), &texts)?;

    let job = activations::Job {
        info: &info,
        prompt_set: &prompts.name,
        source: &source,
        n: texts.len(),
        layers: &layers,
        readout: &config.positions,
        spans,
        batch_size: config.batch_size,
        special_tokens: prompts.special_tokens,
    };
    let features: Features =
        activations::cached_extract(parts.extractor, parts.cache, parts.observer, &job, &texts, &mut summary).await?;

    summary.corrupt_entries = parts.cache.corrupt_entries().saturating_sub(corrupt_before);
    let extractor_reuse = parts.extractor.pass_reuse().map(|now| now.since(reuse_before.unwrap_or_default()));
    summary.pass_reuse = match (summary.pass_reuse, extractor_reuse) {
        (Some(mut read), Some(r)) => {
            read.reused += r.reused;
            read.extra_passes += r.extra_passes;
            read.extra_pass_tokens += r.extra_pass_tokens;
            read.extra_pass_cached_tokens += r.extra_pass_cached_tokens;
            Some(read)
        }
        (read, r) => read.or(r),
    };
    Ok((features, summary))
}

/// The states to read while generating, when the generator can
/// ([`Generator::generate_capturing`]) for the extractor's model, the readout is one it reads
/// ([`crate::StateCapture::can_read`]), nothing steers the completions (extraction reads unsteered states) and some
/// (site, layer) lacks its whole-layer entry. Only blocks whose completions are generated now
/// are captured; cached completions are extracted as before.
async fn capture<'a>(
    cache: &dyn CacheStore,
    generator: &dyn Generator,
    job: &generations::GenJob<'_>,
    info: &'a crate::ModelInfo,
    slots: &[activations::Slot],
    config: &'a SweepConfig,
) -> Result<Option<generations::Capture<'a>>> {
    let can = generator.capabilities().capture_states
        && crate::StateCapture::can_read(&config.positions)
        && job.sampling.steering.is_empty()
        && job.sampling.n == 1
        && generator.states_model().as_ref() == Some(info);
    if !can {
        return Ok(None);
    }
    let mut capture = generations::Capture {
        info,
        source: ActivationSource::GeneratedTokens(job.whole_key().digest),
        slots: slots.to_vec(),
        readout: &config.positions,
        batch_size: config.batch_size,
    };
    capture.slots = activations::without_whole(cache, &capture.job(job.prompts)).await?;
    Ok((!capture.slots.is_empty()).then_some(capture))
}

/// One probe per (block, head) of a `heads` sweep's `features` (`[n, heads·head_dim]` per
/// block), with the statistics of layers; in block then head order.
fn head_scores(
    info: &crate::ModelInfo,
    features: &Features,
    targets: &Targets,
    fold: &[usize],
    config: &SweepConfig,
) -> Result<Vec<LayerScore>> {
    let mut out = Vec::with_capacity(features.len() * info.num_heads);
    for (&(_, layer), tensor) in features.iter().filter(|((site, _), _)| *site == crate::Site::Heads) {
        out.extend(evaluate_heads(layer, tensor, (info.num_heads, info.head_dim), targets, fold, &config.probe)?);
    }
    Ok(out)
}

/// Trains one probe per layer of `features` and makes the report (the last phase of
/// [`run`] and of [`merge`]).
pub(super) fn report(
    parts: &SweepParts<'_>,
    prompts: &PromptSet,
    config: &SweepConfig,
    info: &crate::ModelInfo,
    features: &Features,
    summary: SweepSummary,
) -> Result<SweepReport> {
    let targets = targets(prompts, config)?;
    let fold = stratified_folds(&targets.strata(config.probe.folds), config.probe.folds, config.probe.seed)?;
    parts.observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Probes, total: features.len() });
    let mut scores = Vec::with_capacity(features.len());
    let mut probes = Vec::new();
    // Layers in the order the sites were asked for (a one-site sweep: by layer).
    let order = activations::slots(&config.reads());
    let several = config.several_sites();
    for (i, (site, layer)) in order.into_iter().enumerate() {
        let tensor = features
            .get(&(site, layer))
            .ok_or_else(|| Error::backend("sweep", format!("layer {layer} of site {site} has no activations")))?;
        let mut score = evaluate_layer(layer, tensor, &targets, &fold, &config.probe)?;
        score.site = several.then_some(site);
        scores.push(score);
        if let Targets::Classes { .. } = targets {
            let meta = ProbeMeta {
                model: info.id.id.clone(),
                revision: info.id.revision.clone(),
                dtype: info.dtype.clone(),
                tokenizer: info.tokenizer.clone(),
                layer,
                hidden_size: info.width(site),
                site,
                positions: config.positions.clone(),
                classes: prompts.classes(),
                c: f64::NAN,
                prompt_set: prompts.name.clone(),
                n_train: 0,
                sampling: config.sampling.clone(),
            };
            probes.push(SavedProbe::train(tensor, &targets, &config.probe, meta)?);
        }
        parts.observer.on_event(&SweepEvent::Progress { phase: Phase::Probes, done: i + 1 });
    }
    let heads = head_scores(info, features, &targets, &fold, config)?;
    parts.observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Probes });
    tracing::info!("{summary}");
    Ok(SweepReport {
        model: info.id.id.clone(),
        revision: info.id.revision.clone(),
        prompt_set: prompts.name.clone(),
        positions: config.positions.to_string(),
        site: config.site,
        sites: if several { config.reads().into_iter().map(|(s, _)| s).collect() } else { Vec::new() },
        steering: config.sampling.as_ref().map(|s| s.steering.clone()).unwrap_or_default(),
        heads,
        classes: if matches!(targets, Targets::Classes { .. }) { prompts.classes() } else { Vec::new() },
        n_prompts: prompts.len(),
        seed: config.probe.seed,
        task: targets.task().to_owned(),
        probe: config.probe.clone(),
        folds: prompts.prompts.iter().map(|p| p.id.clone()).zip(fold).collect(),
        layers: scores,
        summary,
        plan: config.plan.clone(),
        memory: None,
        probes,
        transfer: Vec::new(),
    })
}
