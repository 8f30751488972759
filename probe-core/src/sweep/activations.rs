//! The activation phase: per-layer, per-batch cache entries, one forward pass per batch
//! for the layers still missing, out-of-memory back-off, and assembly of whole-layer entries.

use std::collections::{BTreeMap, HashMap};

use crate::key::{ActivationSource, activation_key};
use crate::{
    ActivationExtractor, ActivationRequest, CacheKey, CacheStore, CacheStoreExt, Error, ModelInfo, Positions,
    PutRequest, Result, Tensor, codec,
};

use super::{Phase, SweepEvent, SweepObserver, SweepSummary};

/// What to extract, and under which keys.
#[derive(Debug)]
pub(super) struct Job<'a> {
    pub(super) info: &'a ModelInfo,
    pub(super) prompt_set: &'a str,
    pub(super) source: &'a ActivationSource,
    pub(super) texts: &'a [String],
    /// Sorted, deduplicated.
    pub(super) layers: &'a [usize],
    pub(super) positions: Positions,
    pub(super) batch_size: usize,
}

impl Job<'_> {
    fn key(&self, layer: usize, rows: Option<(usize, usize)>) -> CacheKey {
        activation_key(self.info, self.prompt_set, self.source, layer, self.positions, rows)
    }

    fn batches(&self) -> Vec<(usize, usize)> {
        let n = self.texts.len();
        (0..n).step_by(self.batch_size).map(|s| (s, (s + self.batch_size).min(n))).collect()
    }

    fn put(&self, layer: usize, rows: Option<(usize, usize)>, tensor: &Tensor) -> Result<PutRequest> {
        let (start, end) = rows.unwrap_or((0, self.texts.len()));
        let meta: HashMap<String, String> = [
            ("model", self.info.id.id.clone()),
            ("revision", self.info.id.revision.clone()),
            ("dtype", self.info.dtype.clone()),
            ("prompt_set", self.prompt_set.to_owned()),
            ("layer", layer.to_string()),
            ("positions", self.positions.to_string()),
            ("rows", format!("{start}..{end}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let payload = codec::encode_tensors(&[(codec::ACTIVATIONS_TENSOR, tensor)], Some(meta.clone()))?;
        let mut put = PutRequest::new(self.key(layer, rows), payload);
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

/// Runs the extractor on `texts` for `layers`, halving `batch_size` on out-of-memory errors
/// until it fits (the reduced size is kept for later calls). Returns the tensors by layer.
async fn extract_with_backoff(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    texts: &[String],
    layers: &[usize],
    positions: Positions,
    batch_size: &mut usize,
    calls: &mut usize,
) -> Result<BTreeMap<usize, Tensor>> {
    loop {
        let request = ActivationRequest::texts(texts.to_vec(), layers.to_vec())
            .with_positions(positions)
            .with_batch_size((*batch_size).min(texts.len()).max(1));
        *calls += 1;
        match extractor.extract(request).await {
            Ok(acts) => {
                let mut out = BTreeMap::new();
                for &layer in layers {
                    let t = acts.layer(layer).ok_or_else(|| {
                        Error::backend("extractor", format!("layer {layer} is missing from the extractor's result"))
                    })?;
                    if t.shape.len() != 2 || t.rows() != texts.len() {
                        return Err(Error::backend(
                            "extractor",
                            format!("layer {layer} has shape {:?} for {} inputs", t.shape, texts.len()),
                        ));
                    }
                    out.insert(layer, t.clone());
                }
                return Ok(out);
            }
            Err(e) if e.is_out_of_memory() && *batch_size > 1 => {
                let from = (*batch_size).min(texts.len());
                let to = (from / 2).max(1);
                tracing::warn!("{e}; retrying the batch with batch size {to}");
                observer.on_event(&SweepEvent::BatchShrunk { from, to });
                *batch_size = to;
            }
            Err(e) => return Err(e),
        }
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

/// Every requested layer's `[n, hidden]` tensor, from the cache where possible, computing
/// and caching what is missing (see the module documentation of [`crate::sweep`]).
pub(super) async fn cached_extract(
    extractor: &dyn ActivationExtractor,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    job: &Job<'_>,
    summary: &mut SweepSummary,
) -> Result<BTreeMap<usize, Tensor>> {
    let n = job.texts.len();
    let hidden = job.info.hidden_size;
    let mut done: BTreeMap<usize, Tensor> = BTreeMap::new();
    for &layer in job.layers {
        if let Some(t) = load(cache, &job.key(layer, None), n, hidden).await? {
            done.insert(layer, t);
        }
    }
    let missing: Vec<usize> = job.layers.iter().copied().filter(|l| !done.contains_key(l)).collect();
    summary.layers_cached = done.len();
    summary.layers_computed = missing.len();
    let batches = job.batches();
    observer.on_event(&SweepEvent::PhaseStarted {
        phase: Phase::Activations,
        total: if missing.is_empty() { 0 } else { batches.len() },
    });
    if missing.is_empty() {
        observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
        return Ok(done);
    }

    let mut parts: BTreeMap<usize, Vec<Tensor>> = missing.iter().map(|&l| (l, Vec::new())).collect();
    let mut batch_size = job.batch_size;
    for (b, &(start, end)) in batches.iter().enumerate() {
        let mut need = Vec::new();
        for &layer in &missing {
            match load(cache, &job.key(layer, Some((start, end))), end - start, hidden).await? {
                Some(t) => parts.get_mut(&layer).expect("missing layer").push(t),
                None => need.push(layer),
            }
        }
        if need.is_empty() {
            summary.batches_cached += 1;
        } else {
            let computed = extract_with_backoff(
                extractor,
                observer,
                &job.texts[start..end],
                &need,
                job.positions,
                &mut batch_size,
                &mut summary.extract_calls,
            )
            .await?;
            for (layer, tensor) in computed {
                cache.put(job.put(layer, Some((start, end)), &tensor)?).await?;
                summary.entries_written += 1;
                parts.get_mut(&layer).expect("missing layer").push(tensor);
            }
            summary.batches_computed += 1;
        }
        tracing::debug!("batch rows {start}..{end}: computed layers {need:?}");
        observer.on_event(&SweepEvent::BatchCommitted {
            start,
            end,
            cached: missing.len() - need.len(),
            computed: need,
        });
        observer.on_event(&SweepEvent::Progress { phase: Phase::Activations, done: b + 1 });
    }

    let can_delete = cache.capabilities().delete;
    for (layer, layer_parts) in parts {
        let tensor = concat(layer_parts, hidden);
        cache.put(job.put(layer, None, &tensor)?).await?;
        if can_delete {
            for &rows in &batches {
                if let Err(e) = cache.delete_key(&job.key(layer, Some(rows))).await {
                    tracing::warn!("could not delete batch entry of layer {layer} rows {rows:?}: {e}");
                }
            }
        }
        done.insert(layer, tensor);
    }
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
    Ok(done)
}

/// Extracts `layers` of `texts` without a cache: batches of `batch_size`, halving the batch
/// size on out-of-memory errors; returns one `[n, hidden]` tensor per layer, rows in input
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
    if batch_size == 0 {
        return Err(Error::invalid("batch size", "0 (must be ≥ 1)"));
    }
    if positions == Positions::All {
        return Err(Error::invalid("positions", "\"all\" is not supported here: use last or mean"));
    }
    let mut layers = layers.to_vec();
    layers.sort_unstable();
    layers.dedup();
    ActivationRequest::texts(texts.to_vec(), layers.clone())
        .with_batch_size(batch_size)
        .validate(&extractor.model_info())?;
    let hidden = extractor.model_info().hidden_size;
    let batches: Vec<(usize, usize)> =
        (0..texts.len()).step_by(batch_size).map(|s| (s, (s + batch_size).min(texts.len()))).collect();
    observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Activations, total: batches.len() });
    let mut parts: BTreeMap<usize, Vec<Tensor>> = layers.iter().map(|&l| (l, Vec::new())).collect();
    let (mut current, mut calls) = (batch_size, 0);
    for (b, &(start, end)) in batches.iter().enumerate() {
        let out =
            extract_with_backoff(extractor, observer, &texts[start..end], &layers, positions, &mut current, &mut calls)
                .await?;
        for (layer, t) in out {
            parts.get_mut(&layer).expect("requested layer").push(t);
        }
        observer.on_event(&SweepEvent::Progress { phase: Phase::Activations, done: b + 1 });
    }
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
    Ok(parts.into_iter().map(|(l, p)| (l, concat(p, hidden))).collect())
}
