//! The activation phase: per-(site, layer) cache entries per block of the cache grid
//! ([`super::cache_blocks`]), forward passes of up to `batch_size` rows over consecutive
//! blocks that lack the same (site, layer) pairs (every site read in the same pass, cut back
//! into block entries), out-of-memory back-off ([`Backoff`], the one path), and assembly of
//! whole-layer entries. A "layer" here is a [`Slot`]: a layer at a site.

use std::collections::{BTreeMap, HashMap};

use crate::key::{ActivationSource, activation_key_at};
use crate::plan::Backoff;
use crate::{
    ActivationExtractor, ActivationRequest, CacheKey, CacheStore, CacheStoreExt, Error, Inputs, ModelInfo, Positions,
    PutRequest, Readout, Result, Site, Span, SpecialTokens, Tensor, codec,
};

use super::{Phase, SweepEvent, SweepObserver, SweepSummary};

/// Rows `[start, end)`.
type Rows = (usize, usize);

/// A layer at a site: what one cache entry holds (sites inside blocks number layers by block).
pub(super) type Slot = (Site, usize);

/// The (site, layer) slots of `reads` (per site, its layers), in order.
pub(super) fn slots(reads: &[(Site, Vec<usize>)]) -> Vec<Slot> {
    reads.iter().flat_map(|(site, layers)| layers.iter().map(move |&l| (*site, l))).collect()
}

/// `slots` as an extraction request's reads: per site (in the order of first appearance), its
/// layers.
pub(super) fn reads(slots: &[Slot]) -> Vec<(Site, Vec<usize>)> {
    let mut out: Vec<(Site, Vec<usize>)> = Vec::new();
    for &(site, layer) in slots {
        match out.iter_mut().find(|(s, _)| *s == site) {
            Some((_, layers)) => layers.push(layer),
            None => out.push((site, vec![layer])),
        }
    }
    out
}

/// What to extract, and under which keys.
#[derive(Debug)]
pub(super) struct Job<'a> {
    pub(super) info: &'a ModelInfo,
    pub(super) prompt_set: &'a str,
    pub(super) source: &'a ActivationSource,
    /// Number of rows (prompts).
    pub(super) n: usize,
    /// Sorted, deduplicated (site, layer) pairs.
    pub(super) layers: &'a [Slot],
    pub(super) readout: &'a Readout,
    /// Per row, the tokens the readout reads (`None`: every token). A shard fills only its
    /// own rows.
    pub(super) spans: Option<Vec<Span>>,
    /// Rows per forward pass (the cache grid does not depend on it).
    pub(super) batch_size: usize,
    /// How texts are tokenised (chat renderings as written).
    pub(super) special_tokens: SpecialTokens,
}

impl Job<'_> {
    fn key(&self, slot: Slot, rows: Option<(usize, usize)>) -> CacheKey {
        activation_key_at(self.info, self.prompt_set, self.source, slot, self.readout, rows)
    }

    /// Values per row of an entry of `slot`.
    fn width(&self, (site, _): Slot) -> usize {
        self.info.width(site)
    }

    /// The blocks of the cache grid.
    pub(super) fn blocks(&self) -> Vec<Rows> {
        super::cache_blocks(self.n)
    }

    pub(super) fn put(&self, (site, layer): Slot, rows: Option<(usize, usize)>, tensor: &Tensor) -> Result<PutRequest> {
        let (start, end) = rows.unwrap_or((0, self.n));
        let meta: HashMap<String, String> = [
            ("model", self.info.id.id.clone()),
            ("revision", self.info.id.revision.clone()),
            ("dtype", self.info.dtype.clone()),
            ("prompt_set", self.prompt_set.to_owned()),
            ("layer", layer.to_string()),
            ("positions", self.readout.to_string()),
            ("rows", format!("{start}..{end}")),
        ]
        .into_iter()
        .chain((!site.is_resid()).then(|| ("site", site.to_string())))
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let payload = codec::encode_tensors(&[(codec::ACTIVATIONS_TENSOR, tensor)], Some(meta.clone()))?;
        let mut put = PutRequest::new(self.key((site, layer), rows), payload);
        for (k, v) in meta {
            put = put.with_attr(k, v);
        }
        Ok(put)
    }
}

/// Reads an activation entry; a missing, corrupt or mis-shaped entry is `None` (a miss).
async fn load(cache: &dyn CacheStore, key: &CacheKey, rows: usize, hidden: usize) -> Result<Option<Tensor>> {
    let Some(entry) = cache.get_key(key).await? else { return Ok(None) };
    let tensor = codec::decode_tensors(&entry.payload)
        .ok()
        .and_then(|ts| ts.into_iter().find(|(n, _)| n == codec::ACTIVATIONS_TENSOR).map(|(_, t)| t));
    match tensor {
        Some(t) if t.shape == [rows, hidden] => Ok(Some(t)),
        Some(t) => {
            tracing::warn!("cache entry {key} has shape {:?}, expected [{rows}, {hidden}]; recomputing", t.shape);
            Ok(None)
        }
        None => {
            tracing::warn!("cache entry {key} holds no `{}` tensor; recomputing", codec::ACTIVATIONS_TENSOR);
            Ok(None)
        }
    }
}

/// The request of `inputs` at `reads` (per site, its layers; one forward pass per batch reads
/// them all).
pub(super) fn request_for(inputs: &Inputs, reads: &[(Site, Vec<usize>)]) -> ActivationRequest {
    let (site, layers) = reads.first().cloned().unwrap_or_default();
    let mut request = ActivationRequest::new(inputs.clone(), layers).with_site(site);
    request.more_sites = reads.iter().skip(1).cloned().collect();
    request
}

/// Runs the extractor on `texts` (texts tokenised with `special`, or token ids) for the
/// (site, layer) `slots`, every site in the same forward passes, through the run's
/// out-of-memory back-off (the one path: [`Backoff`], halving, the size that worked kept for
/// later calls). Counts the extractor calls (retries included) into `calls`. Returns the
/// tensors by slot, `[n, width]` (a site of several values per token, [`Site::Heads`],
/// flattened).
#[allow(clippy::too_many_arguments)]
async fn extract_with_backoff(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    texts: &Inputs,
    special: SpecialTokens,
    slots: &[Slot],
    (positions, spans): (Positions, Option<&[Span]>),
    (batch_size, backoff): (usize, &Backoff),
    calls: &mut usize,
) -> Result<BTreeMap<Slot, Tensor>> {
    let mut request = request_for(texts, &reads(slots))
        .with_special_tokens(special)
        .with_positions(positions)
        .with_batch_size(batch_size.min(texts.len()).max(1));
    request.spans = spans.map(<[Span]>::to_vec);
    let before = backoff.retries();
    let on_shrink = |from: usize, to: usize| {
        tracing::warn!("out of memory; retrying with batch size {to}");
        observer.on_event(&SweepEvent::BatchShrunk { from, to });
    };
    let result = backoff.extract(extractor, request, &on_shrink).await;
    *calls += 1 + backoff.retries() - before;
    let acts = result?;
    let mut out = BTreeMap::new();
    for &(site, layer) in slots {
        let t = acts.at(site, layer).ok_or_else(|| {
            Error::backend("extractor", format!("layer {layer} of site {site} is missing from the extractor's result"))
        })?;
        let expected = if site == Site::Heads { 3 } else { 2 };
        if t.shape.len() != expected || t.rows() != texts.len() {
            return Err(Error::backend(
                "extractor",
                format!("layer {layer} has shape {:?} for {} inputs", t.shape, texts.len()),
            ));
        }
        let width = t.shape[1..].iter().product();
        out.insert((site, layer), Tensor::new(vec![t.rows(), width], t.data.clone()));
    }
    Ok(out)
}

/// Records the out-of-memory retries and the batch size the back-off settled on, when it
/// shrank.
fn record_backoff(backoff: &Backoff, summary: &mut SweepSummary) {
    summary.oom_retries = backoff.retries();
    if backoff.retries() > 0 {
        summary.backoff_batch_size = Some(backoff.current_batch_size());
    }
}

fn concat(parts: Vec<Tensor>, hidden: usize) -> Tensor {
    let rows = parts.iter().map(Tensor::rows).sum();
    let mut data = Vec::with_capacity(rows * hidden);
    for p in parts {
        data.extend_from_slice(&p.data);
    }
    Tensor::new(vec![rows, hidden], data)
}

/// The requested layers that have a whole-layer entry (with their tensors), and the rest.
async fn whole_layers(cache: &dyn CacheStore, job: &Job<'_>) -> Result<(BTreeMap<Slot, Tensor>, Vec<Slot>)> {
    let mut done: BTreeMap<Slot, Tensor> = BTreeMap::new();
    for &slot in job.layers {
        if let Some(t) = load(cache, &job.key(slot, None), job.n, job.width(slot)).await? {
            done.insert(slot, t);
        }
    }
    let missing = job.layers.iter().copied().filter(|l| !done.contains_key(l)).collect();
    Ok((done, missing))
}

/// The requested layers without a whole-layer entry (presence only: nothing is read).
pub(super) async fn without_whole(cache: &dyn CacheStore, job: &Job<'_>) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    for &slot in job.layers {
        if !cache.contains_key(&job.key(slot, None)).await? {
            out.push(slot);
        }
    }
    Ok(out)
}

/// The inputs of `rows`, in order, taken from the blocks of `own` that hold them.
fn gather(own: &BTreeMap<Rows, Inputs>, rows: &[usize]) -> Inputs {
    let mut texts = Vec::new();
    let mut ids = Vec::new();
    for &r in rows {
        let (&(s, e), inputs) = own.range(..=(r, usize::MAX)).next_back().expect("a block holds the row");
        debug_assert!(s <= r && r < e);
        match inputs {
            Inputs::Texts(t) => texts.push(t[r - s].clone()),
            Inputs::TokenIds(t) => ids.push(t[r - s].clone()),
        }
    }
    debug_assert!(texts.is_empty() || ids.is_empty(), "one kind of input per sweep");
    if ids.is_empty() { Inputs::Texts(texts) } else { Inputs::TokenIds(ids) }
}

/// What the cache holds of one block for the layers being filled.
struct BlockFound {
    rows: Rows,
    /// Slots with a block entry, and their tensors.
    have: BTreeMap<Slot, Tensor>,
    /// Slots without one.
    need: Vec<Slot>,
}

/// Every block of `own` (blocks of the cache grid, with their inputs) for the `missing`
/// layers: read from the block entries, the layers without one computed in forward passes of
/// up to `job.batch_size` rows that run on from one block to the next of those lacking the
/// same layers (through `backoff`), each block's entries committed as soon as its rows are
/// done. Counts into `summary` and reports each block. Returns the tensors by block and
/// layer when `keep` (else nothing: a shard only writes).
#[allow(clippy::too_many_arguments)]
async fn fill(
    extractor: &dyn ActivationExtractor,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    job: &Job<'_>,
    own: &BTreeMap<Rows, Inputs>,
    missing: &[Slot],
    (backoff, keep): (&Backoff, bool),
    summary: &mut SweepSummary,
) -> Result<BTreeMap<Rows, BTreeMap<Slot, Tensor>>> {
    let mut found = Vec::with_capacity(own.len());
    for &(start, end) in own.keys() {
        let (mut have, mut need) = (BTreeMap::new(), Vec::new());
        for &layer in missing {
            match load(cache, &job.key(layer, Some((start, end))), end - start, job.width(layer)).await? {
                Some(t) => {
                    have.insert(layer, t);
                }
                None => need.push(layer),
            }
        }
        found.push(BlockFound { rows: (start, end), have, need });
    }
    let mut out = BTreeMap::new();
    let mut done = 0;
    let mut finish = |f: BlockFound, computed: Vec<Slot>, summary: &mut SweepSummary| {
        let (start, end) = f.rows;
        if computed.is_empty() {
            summary.batches_cached += 1;
        } else {
            summary.batches_computed += 1;
        }
        tracing::debug!("block rows {start}..{end}: computed (site, layer) {computed:?}");
        let cached = missing.len() - computed.len();
        let computed = computed.into_iter().map(|(_, layer)| layer).collect();
        observer.on_event(&SweepEvent::BatchCommitted { start, end, cached, computed });
        done += 1;
        observer.on_event(&SweepEvent::Progress { phase: Phase::Activations, done });
        if keep {
            out.insert(f.rows, f.have);
        }
    };
    // The blocks lacking the same layers go together (in row order, over the blocks between
    // them that lack other layers or none), so that passes run on from one to the next.
    let mut groups: Vec<(Vec<Slot>, Vec<BlockFound>)> = Vec::new();
    for f in found {
        match groups.iter_mut().find(|(need, _)| *need == f.need) {
            Some((_, blocks)) => blocks.push(f),
            None => groups.push((f.need.clone(), vec![f])),
        }
    }
    for (need, group) in groups {
        if need.is_empty() {
            group.into_iter().for_each(|f| finish(f, Vec::new(), summary));
            continue;
        }
        let grid: Vec<Rows> = group.iter().map(|f| f.rows).collect();
        let mut blocks = group.into_iter().peekable();
        // Rows computed and not yet committed, per layer, from the first unfinished block on.
        let mut rows: BTreeMap<Slot, Vec<f32>> = need.iter().map(|&l| (l, Vec::new())).collect();
        for pass in super::passes(&grid, job.batch_size) {
            let spans: Option<Vec<Span>> = job.spans.as_ref().map(|s| pass.iter().map(|&r| s[r]).collect());
            let computed = extract_with_backoff(
                extractor,
                observer,
                &gather(own, &pass),
                job.special_tokens,
                &need,
                (job.readout.positions(), spans.as_deref()),
                (job.batch_size, backoff),
                &mut summary.extract_calls,
            )
            .await?;
            for ((site, layer), tensor) in computed {
                let hidden = job.width((site, layer));
                if tensor.shape[1] != hidden {
                    return Err(Error::backend(
                        "extractor",
                        format!("layer {layer} has shape {:?}; site {site} has width {hidden}", tensor.shape),
                    ));
                }
                let layer = (site, layer);
                rows.get_mut(&layer).expect("requested layer").extend_from_slice(&tensor.data);
            }
            let last = *pass.last().expect("passes are not empty");
            while let Some(mut f) = blocks.next_if(|f| f.rows.1 <= last + 1) {
                let (start, end) = f.rows;
                for (&layer, data) in &mut rows {
                    let hidden = job.width(layer);
                    let tensor = Tensor::new(vec![end - start, hidden], data.drain(..(end - start) * hidden).collect());
                    cache.put(job.put(layer, Some((start, end)), &tensor)?).await?;
                    summary.entries_written += 1;
                    f.have.insert(layer, tensor);
                }
                finish(f, need.clone(), summary);
            }
        }
        debug_assert!(blocks.peek().is_none(), "every block of the group committed");
    }
    Ok(out)
}

/// Commits the whole-layer entry of each layer's parts (in block order) and deletes its block
/// entries where the store can. Returns the tensors by layer.
async fn fold(
    cache: &dyn CacheStore,
    job: &Job<'_>,
    parts: BTreeMap<Slot, Vec<Tensor>>,
) -> Result<BTreeMap<Slot, Tensor>> {
    let can_delete = cache.capabilities().delete;
    let blocks = job.blocks();
    let mut done = BTreeMap::new();
    for (layer, layer_parts) in parts {
        let tensor = concat(layer_parts, job.width(layer));
        cache.put(job.put(layer, None, &tensor)?).await?;
        if can_delete {
            delete_block_entries(cache, job, layer, &blocks).await;
        }
        done.insert(layer, tensor);
    }
    Ok(done)
}

/// Deletes the block entries of `layer` (already folded into its whole-layer entry), the first
/// block's last: a run killed while deleting leaves that one, which the next run looks for.
async fn delete_block_entries(cache: &dyn CacheStore, job: &Job<'_>, (site, layer): Slot, blocks: &[Rows]) {
    for &rows in blocks.iter().rev() {
        if let Err(e) = cache.delete_key(&job.key((site, layer), Some(rows))).await {
            tracing::warn!("could not delete block entry of layer {layer} (site {site}) rows {rows:?}: {e}");
        }
    }
}

/// Deletes block entries left behind by a run killed between committing a whole-layer entry
/// and deleting its block entries: one `contains` per whole layer (the first block's entry).
async fn delete_leftover_blocks(cache: &dyn CacheStore, job: &Job<'_>, whole: &BTreeMap<Slot, Tensor>) -> Result<()> {
    let blocks = job.blocks();
    if !cache.capabilities().delete || blocks.is_empty() {
        return Ok(());
    }
    for &layer in whole.keys() {
        if cache.contains_key(&job.key(layer, Some(blocks[0]))).await? {
            tracing::info!("layer {} ({}): deleting block entries left by an interrupted run", layer.1, layer.0);
            delete_block_entries(cache, job, layer, &blocks).await;
        }
    }
    Ok(())
}

/// Every requested slot's `[n, width]` tensor, from the cache where possible, computing
/// and caching what is missing (see the module documentation of [`crate::sweep`]).
pub(super) async fn cached_extract(
    extractor: &dyn ActivationExtractor,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    job: &Job<'_>,
    texts: &Inputs,
    summary: &mut SweepSummary,
) -> Result<BTreeMap<Slot, Tensor>> {
    let (mut done, missing) = whole_layers(cache, job).await?;
    delete_leftover_blocks(cache, job, &done).await?;
    summary.layers_cached = done.len();
    summary.layers_computed = missing.len();
    let blocks = job.blocks();
    observer.on_event(&SweepEvent::PhaseStarted {
        phase: Phase::Activations,
        total: if missing.is_empty() { 0 } else { blocks.len() },
    });
    if missing.is_empty() {
        observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
        return Ok(done);
    }

    let own: BTreeMap<Rows, Inputs> = blocks.iter().map(|&(s, e)| ((s, e), texts.slice(s, e))).collect();
    let backoff = Backoff::halving();
    let got = fill(extractor, cache, observer, job, &own, &missing, (&backoff, true), summary).await?;
    record_backoff(&backoff, summary);
    let mut parts: BTreeMap<Slot, Vec<Tensor>> = missing.iter().map(|&l| (l, Vec::new())).collect();
    for mut block in got.into_values() {
        for (&layer, layer_parts) in &mut parts {
            layer_parts.push(block.remove(&layer).expect("every missing layer of every block"));
        }
    }
    done.extend(fold(cache, job, parts).await?);
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
    Ok(done)
}

/// A shard's part of the activations: the block entries of the blocks in `own` (with their
/// inputs) for every requested layer without a whole-layer entry. Writes block entries only.
pub(super) async fn shard_extract(
    extractor: &dyn ActivationExtractor,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    job: &Job<'_>,
    own: &BTreeMap<Rows, Inputs>,
    summary: &mut SweepSummary,
) -> Result<()> {
    let (done, missing) = whole_layers(cache, job).await?;
    summary.layers_cached = done.len();
    summary.layers_computed = missing.len();
    drop(done);
    observer.on_event(&SweepEvent::PhaseStarted {
        phase: Phase::Activations,
        total: if missing.is_empty() { 0 } else { own.len() },
    });
    let backoff = Backoff::halving();
    if !missing.is_empty() {
        fill(extractor, cache, observer, job, own, &missing, (&backoff, false), summary).await?;
    }
    record_backoff(&backoff, summary);
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
    Ok(())
}

/// What a merge found for the activations.
pub(super) struct MergeLookup {
    /// Slots with a whole-layer entry.
    pub(super) whole: BTreeMap<Slot, Tensor>,
    /// Slots without one: their block entries, in block order (complete only when
    /// `missing` is empty).
    pub(super) parts: BTreeMap<Slot, Vec<Tensor>>,
    /// (slot, block index) pairs without an entry.
    pub(super) missing: Vec<(Slot, usize)>,
}

/// Reads every layer entry or block entry a merge needs, computing and writing nothing.
pub(super) async fn merge_lookup(cache: &dyn CacheStore, job: &Job<'_>) -> Result<MergeLookup> {
    let (whole, layers) = whole_layers(cache, job).await?;
    let mut parts: BTreeMap<Slot, Vec<Tensor>> = BTreeMap::new();
    let mut missing = Vec::new();
    for &layer in &layers {
        let mut got = Vec::new();
        for (i, &(start, end)) in job.blocks().iter().enumerate() {
            match load(cache, &job.key(layer, Some((start, end))), end - start, job.width(layer)).await? {
                Some(t) => got.push(t),
                None => missing.push((layer, i)),
            }
        }
        parts.insert(layer, got);
    }
    Ok(MergeLookup { whole, parts, missing })
}

/// Folds a complete [`MergeLookup`] into whole-layer entries; returns every layer's tensor.
pub(super) async fn merge_fold(
    cache: &dyn CacheStore,
    job: &Job<'_>,
    found: MergeLookup,
) -> Result<BTreeMap<Slot, Tensor>> {
    debug_assert!(found.missing.is_empty());
    let mut done = found.whole;
    done.extend(fold(cache, job, found.parts).await?);
    Ok(done)
}

/// Extracts `layers` of `texts` without a cache: batches of `batch_size`, through the
/// out-of-memory back-off ([`Backoff`]); returns one `[n, hidden]` tensor per layer, rows in input
/// order. Reports [`Phase::Activations`] progress per batch.
///
/// # Errors
/// [`Error::InvalidInput`] for no texts, no layers or a batch size of 0; then the extractor's errors.
pub async fn extract_all(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    texts: &[String],
    layers: &[usize],
    positions: Positions,
    batch_size: usize,
) -> Result<BTreeMap<usize, Tensor>> {
    let texts = Inputs::Texts(texts.to_vec());
    extract_inputs(extractor, observer, &texts, SpecialTokens::Add, layers, positions, batch_size).await
}

/// [`extract_all`] for any inputs: texts tokenised with `special` (chat renderings as
/// written), or token ids.
///
/// # Errors
/// As [`extract_all`].
pub async fn extract_inputs(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    texts: &Inputs,
    special: SpecialTokens,
    layers: &[usize],
    positions: Positions,
    batch_size: usize,
) -> Result<BTreeMap<usize, Tensor>> {
    let reads = [(Site::Resid, layers.to_vec())];
    let out = extract_spans(extractor, observer, texts, special, &reads, (positions, None), batch_size).await?;
    Ok(out.into_iter().map(|((_, layer), t)| (layer, t)).collect())
}

/// [`extract_inputs`] at every site of `reads` (per site, its layers; all read in the same
/// forward passes), reading, for `Last` and `Mean`, the tokens `spans` give per input
/// (`None`: every token); tensors `[n, width]` by (site, layer) ([`Site::Heads`] flattened).
pub(super) async fn extract_spans(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    texts: &Inputs,
    special: SpecialTokens,
    reads: &[(Site, Vec<usize>)],
    (positions, spans): (Positions, Option<&[Span]>),
    batch_size: usize,
) -> Result<BTreeMap<Slot, Tensor>> {
    if batch_size == 0 {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    if positions == Positions::All {
        return Err(Error::invalid("positions", "\"all\" is not supported here: use last or mean"));
    }
    let info = extractor.model_info();
    let request = request_for(texts, reads).with_batch_size(batch_size);
    request.validate(&info)?;
    let slots = slots(&request.reads());
    let batches: Vec<(usize, usize)> =
        (0..texts.len()).step_by(batch_size).map(|s| (s, (s + batch_size).min(texts.len()))).collect();
    observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Activations, total: batches.len() });
    let mut parts: BTreeMap<Slot, Vec<Tensor>> = slots.iter().map(|&l| (l, Vec::new())).collect();
    let (backoff, mut calls) = (Backoff::halving(), 0);
    for (b, &(start, end)) in batches.iter().enumerate() {
        let part = texts.slice(start, end);
        let out = extract_with_backoff(
            extractor,
            observer,
            &part,
            special,
            &slots,
            (positions, spans.map(|s| &s[start..end])),
            (batch_size, &backoff),
            &mut calls,
        )
        .await?;
        for (layer, t) in out {
            parts.get_mut(&layer).expect("requested layer").push(t);
        }
        observer.on_event(&SweepEvent::Progress { phase: Phase::Activations, done: b + 1 });
    }
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
    Ok(parts.into_iter().map(|(l, p)| (l, concat(p, info.width(l.0)))).collect())
}
