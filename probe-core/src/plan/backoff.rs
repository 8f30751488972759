//! [`Backoff`]: the one out-of-memory back-off — shrinks the batch on
//! [`Error::OutOfMemory`] and retries the same inputs, keeping what finished. The sweep keeps
//! one per run; [`OomBackoff`] wraps any extractor in one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, LayerActivations, ModelInfo, Positions,
    Result, Site, Tensor,
};

/// Called between tries, e.g. to empty a device's cache allocator.
pub type ClearCache = Arc<dyn Fn() + Send + Sync>;

/// The one out-of-memory back-off: a request's inputs go in chunks of the current batch
/// size; a chunk that fails with [`Error::OutOfMemory`] is retried with the batch shrunk by
/// `factor` (×0.9 by default, always by at least one), down to `floor` (1 by default), after
/// the extractor gives its cached device memory back
/// ([`ActivationExtractor::release_memory`]) and the clear-cache hook runs. Finished chunks
/// are kept, so no input runs twice after it succeeded, and the results equal those of a run
/// that never ran out of memory. The size that worked is kept for every later call. At the
/// floor the error is returned, quoting the plan when one was given.
///
/// [`OomBackoff`] wraps an extractor in one; the sweep keeps one per run.
pub struct Backoff {
    factor: f64,
    floor: usize,
    current: AtomicUsize,
    retries: AtomicUsize,
    clear_cache: Option<ClearCache>,
    plan_note: Option<String>,
}

impl std::fmt::Debug for Backoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff")
            .field("factor", &self.factor)
            .field("floor", &self.floor)
            .field("current", &self.current.load(Ordering::SeqCst))
            .field("retries", &self.retries.load(Ordering::SeqCst))
            .field("clear_cache", &self.clear_cache.is_some())
            .field("plan_note", &self.plan_note)
            .finish()
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// Factor 0.9, floor 1, no ceiling yet.
    pub fn new() -> Self {
        Self {
            factor: 0.9,
            floor: 1,
            current: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            clear_cache: None,
            plan_note: None,
        }
    }
    /// Factor 0.5, floor 1: the sweep's back-off (each retry halves the batch).
    pub fn halving() -> Self {
        Self { factor: 0.5, ..Self::new() }
    }
    /// Sets the shrink factor, in (0, 1).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside (0, 1).
    pub fn with_factor(mut self, factor: f64) -> Result<Self> {
        if !(factor > 0.0 && factor < 1.0) {
            return Err(Error::invalid("backoff factor", format!("{factor} (must be in (0, 1))")));
        }
        self.factor = factor;
        Ok(self)
    }
    /// Sets the smallest batch tried (≥ 1).
    pub fn with_floor(mut self, floor: usize) -> Self {
        self.floor = floor.max(1);
        self
    }
    /// Never runs batches larger than this (e.g. the planned batch size).
    pub fn with_start(self, batch: usize) -> Self {
        self.current.store(batch, Ordering::SeqCst);
        self
    }
    /// Calls `hook` between tries (to empty a device cache).
    pub fn with_clear_cache(mut self, hook: ClearCache) -> Self {
        self.clear_cache = Some(hook);
        self
    }
    /// A description of the plan, quoted when the floor is reached.
    pub fn with_plan_note(mut self, note: impl Into<String>) -> Self {
        self.plan_note = Some(note.into());
        self
    }
    /// The batch-size ceiling learned from out-of-memory errors (or set by
    /// [`Backoff::with_start`]); 0 while none. Later calls never exceed it.
    pub fn current_batch_size(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }
    /// Out-of-memory retries so far.
    pub fn retries(&self) -> usize {
        self.retries.load(Ordering::SeqCst)
    }

    fn shrink(&self, b: usize) -> usize {
        (((b as f64) * self.factor).floor() as usize).min(b - 1).max(self.floor)
    }

    /// Runs `request` on `inner` in chunks, shrinking on out-of-memory errors;
    /// `on_shrink(from, to)` is told of each shrink.
    ///
    /// # Errors
    /// `inner`'s errors; [`Error::OutOfMemory`] at the floor.
    pub async fn extract(
        &self,
        inner: &dyn ActivationExtractor,
        request: ActivationRequest,
        on_shrink: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<Activations> {
        request.validate(&inner.model_info())?;
        if request.positions == Positions::All && !inner.capabilities().all_positions {
            return Err(Error::not_supported("Positions::All", inner.model_info().architecture));
        }
        let n = request.inputs.len();
        let asked = request.batch_size.unwrap_or(n).clamp(1, n);
        let mut batch = match self.current.load(Ordering::SeqCst) {
            0 => asked,
            kept => kept.min(asked),
        };
        let mut parts = Vec::new();
        let mut done = 0usize;
        while done < n {
            let end = (done + batch).min(n);
            let chunk = request.rows(&(done..end).collect::<Vec<_>>());
            match inner.extract(chunk).await {
                Ok(a) => {
                    parts.push(a);
                    done = end;
                }
                Err(Error::OutOfMemory { device, requested_bytes }) => {
                    if batch <= self.floor {
                        tracing::error!(batch, floor = self.floor, %device, "out of memory at the floor batch size");
                        let plan = self.plan_note.as_ref().map(|p| format!("; plan: {p}")).unwrap_or_default();
                        return Err(Error::OutOfMemory {
                            device: format!("{device} at batch size {batch}, the floor of the back-off{plan}"),
                            requested_bytes,
                        });
                    }
                    let next = self.shrink(batch);
                    self.retries.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(from = batch, to = next, %device, inputs = end - done, "out of memory: retrying the same inputs with a smaller batch");
                    inner.release_memory();
                    if let Some(hook) = &self.clear_cache {
                        hook();
                    }
                    on_shrink(batch, next);
                    batch = next;
                    self.current.store(batch, Ordering::SeqCst);
                }
                Err(other) => return Err(other),
            }
        }
        Ok(concat(parts, request.positions))
    }
}

/// Wraps an extractor in a [`Backoff`]: see there.
///
/// # Contract
/// Follows [`ActivationExtractor`]'s contract (it passes the conformance suite); retries
/// only [`Error::OutOfMemory`]; every other error is returned at once.
#[derive(Debug)]
pub struct OomBackoff<E> {
    inner: E,
    backoff: Backoff,
}

impl<E: ActivationExtractor> OomBackoff<E> {
    /// Wraps `inner` with factor 0.9 and floor 1.
    pub fn new(inner: E) -> Self {
        Self { inner, backoff: Backoff::new() }
    }
    /// Sets the shrink factor, in (0, 1).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] outside (0, 1).
    pub fn with_factor(mut self, factor: f64) -> Result<Self> {
        self.backoff = self.backoff.with_factor(factor)?;
        Ok(self)
    }
    /// Sets the smallest batch tried (≥ 1).
    pub fn with_floor(mut self, floor: usize) -> Self {
        self.backoff = self.backoff.with_floor(floor);
        self
    }
    /// Never runs batches larger than this (e.g. the planned batch size).
    pub fn with_start(mut self, batch: usize) -> Self {
        self.backoff = self.backoff.with_start(batch);
        self
    }
    /// Calls `hook` between tries (to empty a device cache).
    pub fn with_clear_cache(mut self, hook: ClearCache) -> Self {
        self.backoff = self.backoff.with_clear_cache(hook);
        self
    }
    /// A description of the plan, quoted when the floor is reached.
    pub fn with_plan_note(mut self, note: impl Into<String>) -> Self {
        self.backoff = self.backoff.with_plan_note(note);
        self
    }
    /// See [`Backoff::current_batch_size`].
    pub fn current_batch_size(&self) -> usize {
        self.backoff.current_batch_size()
    }
    /// Out-of-memory retries so far.
    pub fn retries(&self) -> usize {
        self.backoff.retries()
    }
    /// The wrapped extractor.
    pub fn inner(&self) -> &E {
        &self.inner
    }
    /// Unwraps.
    pub fn into_inner(self) -> E {
        self.inner
    }
}

/// Concatenates chunk results in order; for `Positions::All` pads every chunk to the
/// longest sequence (zeros, mask 0).
fn concat(parts: Vec<Activations>, positions: Positions) -> Activations {
    let Some(first) = parts.first() else { return Activations::default() };
    let layer_ids: Vec<(Site, usize)> = first.layers.iter().map(|l| (l.site, l.layer)).collect();
    let token_counts: Vec<usize> = parts.iter().flat_map(|p| p.token_counts.iter().copied()).collect();
    let n = token_counts.len();
    if positions != Positions::All {
        let layers = layer_ids
            .iter()
            .enumerate()
            .map(|(j, &(site, layer))| {
                let shape_tail = parts[0].layers[j].tensor.shape[1..].to_vec();
                let data: Vec<f32> = parts.iter().flat_map(|p| p.layers[j].tensor.data.iter().copied()).collect();
                let mut shape = vec![n];
                shape.extend(shape_tail);
                LayerActivations::new(site, layer, Tensor::new(shape, data))
            })
            .collect();
        return Activations::new(layers, positions, None, token_counts);
    }
    let seq = parts.iter().filter_map(|p| p.mask.as_ref().map(|m| m.shape[1])).max().unwrap_or(0);
    let pad = |t: &Tensor, width: usize| -> Vec<f32> {
        // t: [rows, s, …] (`width` values per position) → [rows, seq, width]
        let rows = t.shape[0];
        let s = t.shape[1];
        let mut out = Vec::with_capacity(rows * seq * width);
        for r in 0..rows {
            out.extend_from_slice(&t.data[r * s * width..(r + 1) * s * width]);
            out.extend(std::iter::repeat_n(0.0, (seq - s) * width));
        }
        out
    };
    let layers = layer_ids
        .iter()
        .enumerate()
        .map(|(j, &(site, layer))| {
            // One position's values: `[hidden]`, `[heads, head_dim]` …
            let tail = parts[0].layers[j].tensor.shape[2..].to_vec();
            let width = tail.iter().product();
            let data = parts.iter().flat_map(|p| pad(&p.layers[j].tensor, width)).collect();
            LayerActivations::new(site, layer, Tensor::new([vec![n, seq], tail].concat(), data))
        })
        .collect();
    let mask_data = parts
        .iter()
        .flat_map(|p| {
            let m = p.mask.as_ref().expect("Positions::All returns a mask");
            let m3 = Tensor::new(vec![m.shape[0], m.shape[1], 1], m.data.clone());
            pad(&m3, 1)
        })
        .collect();
    Activations::new(layers, positions, Some(Tensor::new(vec![n, seq], mask_data)), token_counts)
}

#[async_trait]
impl<E: ActivationExtractor> ActivationExtractor for OomBackoff<E> {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        self.backoff.extract(&self.inner, request, &|_, _| {}).await
    }

    fn model_info(&self) -> ModelInfo {
        self.inner.model_info()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn release_memory(&self) {
        self.inner.release_memory();
    }
}
