//! The cache grid on the test doubles: a run killed mid-generation keeps its finished
//! blocks, the whole-set entry is the one a single call makes and is read whatever the batch
//! size, block entries are shared by every batch size (a run at another batch size, or after
//! the shards, computes nothing), a batch smaller than a block gives the same activations, a
//! killed run resumes at another batch size, and the counts are right.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::{PromptFormat, PromptSet, SweepConfig, SweepParts, run};
use crate::key::{generation_block_key, generation_key};
use crate::testing::{MemoryCache, MockExtractor, MockGenerator};
use crate::{
    CacheEntry, CacheKey, CacheStore, CacheStoreExt, Capabilities, EntryKind, EntryMeta, Error, GenerationRequest,
    Generator, GetRequest, ListRequest, PutRequest, Result, SamplingParams, codec,
};

/// `n` prompts in two word groups a linear probe can read.
pub(super) fn prompts(n: usize) -> PromptSet {
    let mut lines = String::new();
    for i in 0..n {
        let (w, label) = if i % 2 == 0 {
            (["apple", "pear", "fig"][i / 2 % 3], "fruit")
        } else {
            (["iron", "tin", "zinc"][i / 2 % 3], "metal")
        };
        lines.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"item {i} is {w}\",\"label\":\"{label}\"}}\n"));
    }
    PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap()
}

pub(super) fn config(batch: usize) -> SweepConfig {
    SweepConfig::new(vec![1, 3]).with_batch_size(batch).with_sampling(Some(SamplingParams::greedy(4)))
}

/// Fails every `put` after the first `allowed` (a run killed there).
#[derive(Debug)]
pub(super) struct Dying<'a> {
    pub(super) inner: &'a MemoryCache,
    pub(super) allowed: usize,
    pub(super) puts: AtomicUsize,
}

impl<'a> Dying<'a> {
    pub(super) fn new(inner: &'a MemoryCache, allowed: usize) -> Self {
        Self { inner, allowed, puts: AtomicUsize::new(0) }
    }
}

#[async_trait]
impl CacheStore for Dying<'_> {
    async fn get(&self, r: GetRequest) -> Result<Option<CacheEntry>> {
        self.inner.get(r).await
    }
    async fn put(&self, r: PutRequest) -> Result<EntryMeta> {
        if self.puts.fetch_add(1, Ordering::SeqCst) >= self.allowed {
            return Err(Error::Temporary { backend: "dying".into(), message: "killed".into() });
        }
        self.inner.put(r).await
    }
    async fn contains(&self, r: GetRequest) -> Result<bool> {
        self.inner.contains(r).await
    }
    async fn list(&self, r: ListRequest) -> Result<Vec<CacheKey>> {
        self.inner.list(r).await
    }
    async fn delete(&self, r: GetRequest) -> Result<bool> {
        self.inner.delete(r).await
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn location(&self) -> String {
        "dying://".into()
    }
}

async fn generation_entries(cache: &MemoryCache) -> usize {
    cache.list(ListRequest::all().with_kind(EntryKind::Generations)).await.unwrap().len()
}

#[tokio::test]
async fn a_run_killed_mid_generation_keeps_its_finished_blocks() {
    let set = prompts(70);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g1 = MockGenerator::new("m");
    // Blocks of 16: [0,16) [16,32) [32,48) [48,64) [64,70), generated 8 prompts a call; the
    // 4th put (block [48,64), done by the 8th call) fails.
    let dying = Dying::new(&cache, 3);
    let err = run(SweepParts::new(&ext, &dying).with_generator(&g1), &set, &config(8)).await.unwrap_err();
    assert!(matches!(err, Error::Temporary { .. }), "{err}");
    assert_eq!(g1.generated(), 64, "one call at a time: the 4th block failed to commit");
    assert_eq!(g1.calls(), 8);
    assert_eq!(generation_entries(&cache).await, 3, "three block entries committed, no whole-set entry");
    assert_eq!(ext.passes(), 0);

    let g2 = MockGenerator::new("m");
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g2), &set, &config(8)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (22, 48));
    assert_eq!(g2.generated(), 22, "only the two missing blocks were generated");
    assert_eq!(g2.calls(), 3, "rows 48..56, 56..64, 64..70");
    assert_eq!(generation_entries(&cache).await, 1, "block entries folded into the whole-set entry");

    let fresh = MemoryCache::new();
    let g3 = MockGenerator::new("m");
    let clean = run(SweepParts::new(&ext, &fresh).with_generator(&g3), &set, &config(8)).await.unwrap();
    assert_eq!(clean.layers, r.layers, "same report as an uninterrupted run");
    assert_eq!((clean.summary.generations_generated, clean.summary.generations_cached), (70, 0));
}

#[tokio::test]
async fn the_whole_set_entry_is_what_one_call_makes_and_any_batch_size_reads_it() {
    let set = prompts(22);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    run(SweepParts::new(&ext, &cache).with_generator(&g), &set, &config(4).with_generation_in_flight(3)).await.unwrap();

    // The entry a pre-block version wrote: one call over every prompt, same key.
    let texts = set.texts();
    let sampling = SamplingParams::greedy(4);
    let one = MockGenerator::new("m");
    let all = one.generate(GenerationRequest::new("m", texts.clone()).with_sampling(sampling.clone())).await.unwrap();
    let key = generation_key(&g.model_id(), "set", &sampling, &texts);
    let entry = cache.get_key(&key).await.unwrap().expect("whole-set entry");
    assert_eq!(entry.payload, codec::encode_generations(&all));
    assert!(
        cache.get_key(&generation_block_key(&g.model_id(), "set", &sampling, &texts, (0, 16))).await.unwrap().is_none(),
        "block entries folded"
    );

    let g2 = MockGenerator::new("m");
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g2), &set, &config(7)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (0, 22));
    assert_eq!(g2.calls(), 0, "a different batch size still reads the whole-set entry");
}

/// Puts of a run over `n` prompts and 2 layers at any batch size: one per generation block,
/// the whole-set generation entry, then one per (block, layer).
fn puts_before_the_layer_entries(n: usize) -> usize {
    let blocks = super::cache_blocks(n).len();
    blocks + 1 + 2 * blocks
}

#[tokio::test]
async fn a_sweep_at_batch_8_then_at_batch_32_computes_nothing_the_second_time() {
    let set = prompts(40); // blocks [0,16) [16,32) [32,40)
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");

    // A whole run, then another batch size: everything is read.
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache).with_generator(&g);
    let first = run(parts, &set, &config(8)).await.unwrap();
    assert_eq!((first.summary.batches_computed, first.summary.extract_calls), (3, 5), "5 passes of 8 over 3 blocks");
    let before = (ext.passes(), g.calls());
    let r = run(parts, &set, &config(32)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (0, 40));
    assert_eq!((r.summary.batches_computed, r.summary.extract_calls), (0, 0));
    assert_eq!((ext.passes(), g.calls()), before, "0 generated, 0 extractor calls");
    assert_eq!(r.layers, first.layers);

    // Block entries alone (a run at batch 8 killed before its layer entries): batch 32 reads
    // every block entry of both kinds.
    let cache = MemoryCache::new();
    let dying = Dying::new(&cache, puts_before_the_layer_entries(40));
    run(SweepParts::new(&ext, &dying).with_generator(&g), &set, &config(8)).await.unwrap_err();
    let before = (ext.passes(), g.calls());
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g), &set, &config(32)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (0, 40));
    assert_eq!((r.summary.batches_computed, r.summary.batches_cached, r.summary.extract_calls), (0, 3, 0));
    assert_eq!((ext.passes(), g.calls()), before, "0 generated, 0 extractor calls");
    assert_eq!(r.layers, first.layers);

    // Generation block entries alone (killed at the whole-set entry): not one regenerated.
    let cache = MemoryCache::new();
    let dying = Dying::new(&cache, 3);
    run(SweepParts::new(&ext, &dying).with_generator(&g), &set, &config(8)).await.unwrap_err();
    let calls = g.calls();
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g), &set, &config(32)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (0, 40));
    assert_eq!(g.calls(), calls);
    assert_eq!(r.summary.extract_calls, 2, "activations computed now: 2 passes of up to 32 over 40 rows");
}

#[tokio::test]
async fn a_batch_of_5_gives_the_activations_of_a_batch_of_16() {
    let set = prompts(40);
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let mut got = Vec::new();
    for batch in [5, 16] {
        let cache = MemoryCache::new();
        let parts = SweepParts::new(&ext, &cache).with_generator(&g);
        let (features, summary) = super::features(parts, &set, &config(batch)).await.unwrap();
        got.push((features, summary));
    }
    let ((five, s5), (sixteen, s16)) = (&got[0], &got[1]);
    assert_eq!(five, sixteen, "same activations, bit for bit");
    // Batch 5: 8 passes over 40 rows (the pass of rows 15..20 spans blocks 0 and 1, block 0
    // takes 4 passes); the same 3 blocks × 2 layers entries as batch 16 (3 passes).
    assert_eq!((s5.batches_computed, s5.extract_calls, s5.entries_written), (3, 8, 6));
    assert_eq!((s16.batches_computed, s16.extract_calls, s16.entries_written), (3, 3, 6));
    assert_eq!((s5.generations_generated, s16.generations_generated), (40, 40));
}

#[tokio::test]
async fn a_killed_run_resumes_at_another_batch_size_from_its_committed_blocks() {
    let set = prompts(40);
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let cache = MemoryCache::new();
    // 3 generation blocks + the whole-set entry, then block 0 (layers 1 and 3) and layer 1 of
    // block 1; the put of layer 3 of block 1 fails.
    let dying = Dying::new(&cache, 4 + 3);
    run(SweepParts::new(&ext, &dying).with_generator(&g), &set, &config(5)).await.unwrap_err();
    let passes = ext.passes();
    assert_eq!(passes, 7, "block 1 is committed after the pass of rows 30..35");

    let r = run(SweepParts::new(&ext, &cache).with_generator(&g), &set, &config(12)).await.unwrap();
    let s = &r.summary;
    assert_eq!((s.generations_generated, s.generations_cached), (0, 40));
    assert_eq!((s.batches_computed, s.batches_cached), (2, 1), "block 0 was kept");
    // Block 1 lacks layer 3 only (passes of rows 16..28, 28..32), block 2 both (32..40).
    assert_eq!((s.extract_calls, s.entries_written), (3, 3));
    assert_eq!(ext.passes(), passes + 3);

    let fresh = MemoryCache::new();
    let clean = run(SweepParts::new(&ext, &fresh).with_generator(&g), &set, &config(16)).await.unwrap();
    assert_eq!(clean.layers, r.layers, "same report as an uninterrupted run");
}
