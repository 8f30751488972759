//! The generation phase, cached per block of prompts.
//!
//! The blocks are the cache grid (`[0, 16)`, `[16, 32)`, …: [`super::CACHE_BLOCK_ROWS`]
//! prompts each, whatever the batch size). The missing blocks are generated in calls of up to
//! `batch_size` prompts that run on from one missing block to the next (a block larger than
//! the batch takes several calls), `generation_in_flight` calls at once. Each block's completions
//! go to a *block entry* ([`generation_block_key`]) as soon as they are all back, so a killed
//! run loses at most the calls in flight. Once every block exists, they are folded into the
//! *whole-set entry* ([`generation_key`], the same key as before blocks existed) and the block
//! entries are deleted where the store can. Every entry is found whatever the batch size of
//! the run that made it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt, stream};

use crate::key::{ActivationSource, generation_block_key_with, generation_key_with};
use crate::{
    Activations, CacheKey, CacheStore, CacheStoreExt, Error, Generation, GenerationRequest, Generator, Inputs, ModelId,
    ModelInfo, PutRequest, Readout, Result, SamplingParams, StateCapture, Tensor, codec,
};

use super::activations::{self, Slot};
use super::{Phase, PromptSet, SweepEvent, SweepObserver, SweepSummary};

/// Per row, per slot of a [`Capture`]: the values read while generating.
type RowStates = Vec<Vec<f32>>;

/// Hidden states read while generating ([`Generator::generate_capturing`]): every generated
/// block's activation block entries, written under the keys, in the layout and on the grid
/// that extraction would write them.
pub(super) struct Capture<'a> {
    pub(super) info: &'a ModelInfo,
    /// The source extraction would key them under (the generations' token ids).
    pub(super) source: ActivationSource,
    /// The (site, layer) slots without a whole-layer entry.
    pub(super) slots: Vec<Slot>,
    pub(super) readout: &'a Readout,
    /// The extraction batch size (part of the job; entries do not depend on it).
    pub(super) batch_size: usize,
}

impl Capture<'_> {
    /// The extraction job these entries belong to.
    pub(super) fn job<'b>(&'b self, prompts: &'b PromptSet) -> activations::Job<'b> {
        activations::Job {
            info: self.info,
            prompt_set: &prompts.name,
            source: &self.source,
            n: prompts.len(),
            layers: &self.slots,
            readout: self.readout,
            spans: None,
            batch_size: self.batch_size,
            special_tokens: prompts.special_tokens,
        }
    }

    fn request(&self) -> StateCapture {
        StateCapture::new(self.info.clone(), activations::reads(&self.slots), self.readout.clone())
    }

    /// The captured values of `n` rows, per row then slot, each slot checked for its width.
    fn rows(&self, acts: &Activations, n: usize) -> Result<Vec<RowStates>> {
        let mut out: Vec<RowStates> = vec![Vec::with_capacity(self.slots.len()); n];
        for &(site, layer) in &self.slots {
            let width = self.info.width(site);
            let t = acts.at(site, layer).filter(|t| t.rows() == n && t.data.len() == n * width).ok_or_else(|| {
                Error::backend(
                    "generator",
                    format!("captured no [{n}, {width}] states of layer {layer} of site {site}"),
                )
            })?;
            for (r, row) in out.iter_mut().enumerate() {
                row.push(t.data[r * width..(r + 1) * width].to_vec());
            }
        }
        Ok(out)
    }
}

/// What one generate call did.
struct CallDone {
    /// Completions generated.
    count: usize,
    /// The blocks it completed, with their completions.
    complete: Vec<(Rows, Vec<Generation>)>,
    /// Rows whose states were captured and committed (blocks it completed).
    captured: usize,
    /// Activation block entries written.
    entries: usize,
}

/// Rows `[start, end)` of one block.
pub(super) type Rows = (usize, usize);

/// What to generate, and under which keys.
pub(super) struct GenJob<'a> {
    /// `None` when nothing may be generated (merging).
    pub(super) generator: Option<&'a dyn Generator>,
    pub(super) cache: &'a dyn CacheStore,
    pub(super) observer: &'a dyn SweepObserver,
    pub(super) prompts: &'a PromptSet,
    pub(super) sampling: &'a SamplingParams,
    /// The model the completions are keyed under (the generator's).
    pub(super) model: ModelId,
    /// Every prompt text, in order.
    pub(super) texts: Vec<String>,
    /// Generate calls in flight at once.
    pub(super) in_flight: usize,
    /// Prompts per generate call (the batch size).
    pub(super) batch: usize,
    /// States to read while generating (`None`: generation only).
    pub(super) capture: Option<Capture<'a>>,
}

impl<'a> GenJob<'a> {
    /// The job of generating (or finding) the completions of `prompts` with `generator`,
    /// `config.generation_in_flight` calls of `config.batch_size` prompts at a time.
    pub(super) fn new(
        generator: &'a dyn Generator,
        cache: &'a dyn CacheStore,
        observer: &'a dyn SweepObserver,
        prompts: &'a PromptSet,
        sampling: &'a SamplingParams,
        config: &super::SweepConfig,
    ) -> Self {
        Self {
            generator: Some(generator),
            cache,
            observer,
            prompts,
            sampling,
            model: generator.model_id(),
            texts: prompts.texts(),
            in_flight: config.generation_in_flight,
            batch: config.batch_size,
            capture: None,
        }
    }
}

impl GenJob<'_> {
    /// The whole-set key.
    pub(super) fn whole_key(&self) -> CacheKey {
        generation_key_with(&self.model, &self.prompts.name, self.sampling, &self.texts, self.prompts.special_tokens)
    }

    fn block_key(&self, rows: Rows) -> CacheKey {
        let special = self.prompts.special_tokens;
        generation_block_key_with(&self.model, &self.prompts.name, self.sampling, &self.texts, rows, special)
    }

    fn put(&self, key: CacheKey, gens: &[Generation], rows: Rows) -> PutRequest {
        PutRequest::new(key, codec::encode_generations(gens))
            .with_attr("model", self.model.id.clone())
            .with_attr("revision", self.model.revision.clone())
            .with_attr("prompt_set", self.prompts.name.clone())
            .with_attr("prompts", self.texts.len().to_string())
            .with_attr("rows", format!("{}..{}", rows.0, rows.1))
    }

    /// The whole-set entry, if present and usable.
    async fn load_whole(&self) -> Result<Option<Vec<Generation>>> {
        self.load(&self.whole_key(), (0, self.texts.len())).await
    }

    /// An entry holding the completions of `rows` (global prompt indices), if usable.
    async fn load(&self, key: &CacheKey, rows: Rows) -> Result<Option<Vec<Generation>>> {
        let Some(entry) = self.cache.get_key(key).await? else { return Ok(None) };
        match codec::decode_generations(&entry.payload) {
            Ok(g) if usable(&g, &self.texts, rows) => Ok(Some(g)),
            Ok(g) => {
                tracing::warn!(
                    "cached generations {key} hold {} records for prompts {}..{}; regenerating",
                    g.len(),
                    rows.0,
                    rows.1
                );
                Ok(None)
            }
            Err(e) => {
                tracing::warn!("{e} (entry {key}); regenerating");
                Ok(None)
            }
        }
    }

    /// Generates the prompts of rows `call` (rows of the missing blocks `pending` holds),
    /// capturing states with [`Self::capture`], then commits the entries of every block this
    /// call completes (its activation block entries first, then its generations).
    async fn generate_call(
        &self,
        generator: &dyn Generator,
        call: &[usize],
        pending: &Mutex<Pending>,
    ) -> Result<CallDone> {
        let texts: Vec<String> = call.iter().map(|&i| self.texts[i].clone()).collect();
        let request = GenerationRequest::new(self.model.id.clone(), texts.clone())
            .with_sampling(self.sampling.clone())
            .with_special_tokens(self.prompts.special_tokens);
        let (mut g, states) = match &self.capture {
            Some(capture) => {
                let (g, acts) = generator.generate_capturing(request, capture.request()).await?;
                let states = capture.rows(&acts, call.len())?;
                (g, Some(states))
            }
            None => (generator.generate(request).await?, None),
        };
        g.sort_by_key(|x| x.prompt_index);
        if !usable(&g, &texts, (0, call.len())) {
            return Err(Error::backend(
                "generator",
                format!("returned {} generations for {} prompts, or out of order", g.len(), call.len()),
            ));
        }
        for x in &mut g {
            x.prompt_index = call[x.prompt_index];
        }
        let states = states.map(|s| call.iter().copied().zip(s).collect());
        let complete = pending.lock().expect("pending generations").add(g, states);
        let mut done = CallDone { count: call.len(), complete: Vec::new(), captured: 0, entries: 0 };
        for (rows, gens, states) in complete {
            if let (Some(capture), Some(states)) = (&self.capture, states) {
                let job = capture.job(self.prompts);
                for (k, &slot) in capture.slots.iter().enumerate() {
                    let width = capture.info.width(slot.0);
                    let data: Vec<f32> = states.iter().flat_map(|row| row[k].iter().copied()).collect();
                    let tensor = Tensor::new(vec![rows.1 - rows.0, width], data);
                    self.cache.put(job.put(slot, Some(rows), &tensor)?).await?;
                    done.entries += 1;
                }
                done.captured += rows.1 - rows.0;
            }
            self.cache.put(self.put(self.block_key(rows), &gens, rows)).await?;
            tracing::debug!("generations of prompts {}..{} committed", rows.0, rows.1);
            done.complete.push((rows, gens));
        }
        Ok(done)
    }

    /// The completions of every block in `blocks`: read from block entries, the missing
    /// ones generated in calls of up to `batch` prompts that run on from one missing block to
    /// the next (up to `in_flight` calls at once), each block committed as soon as it is
    /// complete. Counts into `summary`; reports progress in prompts, starting from `done`.
    async fn fill(
        &self,
        generator: &dyn Generator,
        blocks: &[Rows],
        done: &mut usize,
        summary: &mut SweepSummary,
    ) -> Result<BTreeMap<Rows, Vec<Generation>>> {
        let mut have = BTreeMap::new();
        let mut missing = Vec::new();
        for &rows in blocks {
            match self.load(&self.block_key(rows), rows).await? {
                Some(g) => {
                    summary.generations_cached += g.len();
                    *done += g.len();
                    have.insert(rows, g);
                }
                None => missing.push(rows),
            }
        }
        if !have.is_empty() {
            self.observer.on_event(&SweepEvent::Progress { phase: Phase::Generation, done: *done });
        }
        let calls = super::passes(&missing, self.batch);
        let pending = Mutex::new(Pending { blocks: missing, rows: BTreeMap::new(), states: BTreeMap::new() });
        let mut generated = stream::iter(calls.iter().map(|call| self.generate_call(generator, call, &pending)))
            .buffer_unordered(self.in_flight.max(1));
        while let Some(call) = generated.try_next().await? {
            summary.generations_generated += call.count;
            *done += call.count;
            self.observer.on_event(&SweepEvent::Progress { phase: Phase::Generation, done: *done });
            have.extend(call.complete);
            if self.capture.is_some() {
                summary.entries_written += call.entries;
                summary.pass_reuse.get_or_insert_default().reused += call.captured as u64;
            }
        }
        Ok(have)
    }

    /// Which of `blocks` have a usable block entry, with their completions.
    async fn load_blocks(&self, blocks: &[Rows]) -> Result<BTreeMap<Rows, Vec<Generation>>> {
        let mut have = BTreeMap::new();
        for &rows in blocks {
            if let Some(g) = self.load(&self.block_key(rows), rows).await? {
                have.insert(rows, g);
            }
        }
        Ok(have)
    }

    /// Commits the whole-set entry made of `blocks` (in order) and deletes the block entries
    /// where the store can.
    async fn fold(&self, blocks: &BTreeMap<Rows, Vec<Generation>>) -> Result<Vec<Generation>> {
        let all: Vec<Generation> = blocks.values().flatten().cloned().collect();
        debug_assert!(usable(&all, &self.texts, (0, self.texts.len())));
        self.cache.put(self.put(self.whole_key(), &all, (0, self.texts.len()))).await?;
        if self.cache.capabilities().delete {
            self.delete_blocks(blocks.keys().copied()).await;
        }
        Ok(all)
    }

    /// Deletes block entries, the last block's first, so the first block's entry goes last: a
    /// run killed while deleting leaves that one, which [`Self::delete_leftover_blocks`] finds.
    async fn delete_blocks(&self, blocks: impl DoubleEndedIterator<Item = Rows>) {
        for rows in blocks.rev() {
            if let Err(e) = self.cache.delete_key(&self.block_key(rows)).await {
                tracing::warn!("could not delete the generation block entry of prompts {rows:?}: {e}");
            }
        }
    }

    /// Deletes block entries left by a run killed between committing the whole-set entry and
    /// deleting its blocks (one `contains`: the first block's entry).
    async fn delete_leftover_blocks(&self, blocks: &[Rows]) -> Result<()> {
        let Some(&first) = blocks.first() else { return Ok(()) };
        if self.cache.capabilities().delete && self.cache.contains_key(&self.block_key(first)).await? {
            tracing::info!("deleting generation block entries left by an interrupted run");
            self.delete_blocks(blocks.iter().copied()).await;
        }
        Ok(())
    }

    fn generator(&self) -> Result<&dyn Generator> {
        self.generator
            .ok_or_else(|| Error::invalid("generation", "completions were asked for but no generator was given"))
    }
}

/// What to probe for every prompt, in prompt order ([`probed`]), and what it came from: the
/// whole-set generation entry, else block entries and generation of the missing blocks, then
/// folded into the whole-set entry.
pub(super) async fn texts_with_completions(
    job: &GenJob<'_>,
    blocks: &[Rows],
    summary: &mut SweepSummary,
) -> Result<(Inputs, ActivationSource, Vec<Generation>)> {
    let gens = completions(job, blocks, summary).await?;
    let source = source(&gens, job.whole_key().digest);
    Ok((probed(&gens, &source), source, gens))
}

/// Every prompt's completion, in prompt order: the whole-set generation entry, else block
/// entries and generation of the missing blocks, then folded into the whole-set entry.
pub(super) async fn completions(
    job: &GenJob<'_>,
    blocks: &[Rows],
    summary: &mut SweepSummary,
) -> Result<Vec<Generation>> {
    let n = job.texts.len();
    job.observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Generation, total: n });
    let gens = match job.load_whole().await? {
        Some(g) => {
            summary.generations_cached += g.len();
            job.delete_leftover_blocks(blocks).await?;
            g
        }
        None => {
            let mut done = 0;
            let have = job.fill(job.generator()?, blocks, &mut done, summary).await?;
            job.fold(&have).await?
        }
    };
    job.observer.on_event(&SweepEvent::Progress { phase: Phase::Generation, done: n });
    job.observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Generation });
    Ok(gens)
}

/// What the activations of generations are computed from: the prompt's and the completion's
/// token ids, exactly as generated, when every generation carries both
/// ([`ActivationSource::GeneratedTokens`]); otherwise (a generator that gives no ids) the text
/// prompt + completion, re-tokenised ([`ActivationSource::Generations`]), said once in the log.
pub(super) fn source<'g>(gens: impl IntoIterator<Item = &'g Generation>, digest: String) -> ActivationSource {
    let (mut n, mut without) = (0, 0);
    for g in gens {
        n += 1;
        without += usize::from(g.full_token_ids().is_none());
    }
    if without == 0 && n > 0 {
        return ActivationSource::GeneratedTokens(digest);
    }
    tracing::info!(
        "{without} of {n} completions came without token ids: extraction re-tokenises prompt + completion text, \
         which is not always the sequence that was generated"
    );
    ActivationSource::Generations(digest)
}

/// The inputs of `gens` for `source` (see [`source`]).
pub(super) fn probed(gens: &[Generation], source: &ActivationSource) -> Inputs {
    match source {
        ActivationSource::GeneratedTokens(_) => {
            Inputs::TokenIds(gens.iter().map(|g| g.full_token_ids().expect("ids checked by source()")).collect())
        }
        _ => Inputs::Texts(gens.iter().map(Generation::full_text).collect()),
    }
}

/// The inputs of the blocks in `own` only (a shard's part), and their source (decided on
/// these blocks' generations): from the whole-set entry when it exists, else from block
/// entries, generating and committing the missing blocks. Never writes the whole-set entry.
pub(super) async fn shard_texts(
    job: &GenJob<'_>,
    own: &[Rows],
    summary: &mut SweepSummary,
) -> Result<(BTreeMap<Rows, Inputs>, ActivationSource, BTreeMap<Rows, Vec<Generation>>)> {
    let total = own.iter().map(|r| r.1 - r.0).sum();
    job.observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Generation, total });
    let gens: BTreeMap<Rows, Vec<Generation>> = match job.load_whole().await? {
        Some(all) => {
            summary.generations_cached += total;
            own.iter().map(|&(s, e)| ((s, e), all[s..e].to_vec())).collect()
        }
        None => {
            let mut done = 0;
            job.fill(job.generator()?, own, &mut done, summary).await?
        }
    };
    job.observer.on_event(&SweepEvent::Progress { phase: Phase::Generation, done: total });
    job.observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Generation });
    let source = source(gens.values().flatten(), job.whole_key().digest);
    Ok((gens.iter().map(|(&rows, g)| (rows, probed(g, &source))).collect(), source, gens))
}

/// What a merge found for the generations.
pub(super) enum Merged {
    /// The whole-set entry exists.
    Whole(Vec<Generation>),
    /// Every block entry exists (not yet folded).
    Blocks(BTreeMap<Rows, Vec<Generation>>),
    /// These blocks have no entry.
    Missing(Vec<Rows>),
}

/// Reads the generations for a merge without generating or writing anything.
pub(super) async fn merge_lookup(job: &GenJob<'_>, blocks: &[Rows]) -> Result<Merged> {
    if let Some(all) = job.load_whole().await? {
        return Ok(Merged::Whole(all));
    }
    let have = job.load_blocks(blocks).await?;
    let missing: Vec<Rows> = blocks.iter().copied().filter(|r| !have.contains_key(r)).collect();
    Ok(if missing.is_empty() { Merged::Blocks(have) } else { Merged::Missing(missing) })
}

/// Folds a merge's complete blocks into the whole-set entry.
pub(super) async fn merge_fold(job: &GenJob<'_>, blocks: &BTreeMap<Rows, Vec<Generation>>) -> Result<()> {
    job.fold(blocks).await.map(|_| ())
}

/// The missing blocks of a [`GenJob::fill`] and the completions generated for them so far.
struct Pending {
    /// Blocks not yet complete, in order.
    blocks: Vec<Rows>,
    /// Completions of those blocks generated so far, by prompt index.
    rows: BTreeMap<usize, Generation>,
    /// States captured with them, by prompt index.
    states: BTreeMap<usize, RowStates>,
}

/// A block completed: its rows, completions and (when captured) states.
type Completed = (Rows, Vec<Generation>, Option<Vec<RowStates>>);

impl Pending {
    /// Adds one call's completions (and captured states, by prompt index); returns the blocks
    /// they complete (taken out), in order.
    fn add(&mut self, gens: Vec<Generation>, states: Option<Vec<(usize, RowStates)>>) -> Vec<Completed> {
        self.rows.extend(gens.into_iter().map(|g| (g.prompt_index, g)));
        let captured = states.is_some();
        self.states.extend(states.into_iter().flatten());
        let mut complete = Vec::new();
        self.blocks.retain(|&(s, e)| {
            let whole = self.rows.range(s..e).count() == e - s;
            if whole {
                let gens = (s..e).filter_map(|i| self.rows.remove(&i)).collect();
                let states: Option<Vec<RowStates>> =
                    captured.then(|| (s..e).map(|i| self.states.remove(&i)).collect()).flatten();
                complete.push(((s, e), gens, states));
            }
            !whole
        });
        complete
    }
}

/// One generation per prompt of `rows`, in order, each carrying its prompt and its global index.
fn usable(gens: &[Generation], texts: &[String], rows: Rows) -> bool {
    let (start, end) = rows;
    end <= texts.len()
        && gens.len() == end - start
        && gens
            .iter()
            .enumerate()
            .all(|(i, g)| g.prompt_index == start + i && g.sample_index == 0 && g.prompt == texts[start + i])
}
