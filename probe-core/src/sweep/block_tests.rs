//! Generation blocks on the test doubles: a run killed mid-generation keeps its finished
//! blocks, the whole-set entry is the one a single call makes and is read whatever the batch
//! size, and the counts are right.

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
    let set = prompts(22);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g1 = MockGenerator::new("m");
    // Blocks of 4: [0,4) [4,8) [8,12) [12,16) [16,20) [20,22); the 4th put fails.
    let dying = Dying::new(&cache, 3);
    let err = run(SweepParts::new(&ext, &dying).with_generator(&g1), &set, &config(4)).await.unwrap_err();
    assert!(matches!(err, Error::Temporary { .. }), "{err}");
    assert_eq!(g1.generated(), 16, "blocks are generated one at a time: the 4th failed to commit");
    assert_eq!(generation_entries(&cache).await, 3, "three block entries committed, no whole-set entry");
    assert_eq!(ext.passes(), 0);

    let g2 = MockGenerator::new("m");
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g2), &set, &config(4)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (10, 12));
    assert_eq!(g2.generated(), 10, "only the three missing blocks were generated");
    assert_eq!(g2.calls(), 3);
    assert_eq!(generation_entries(&cache).await, 1, "block entries folded into the whole-set entry");

    let fresh = MemoryCache::new();
    let g3 = MockGenerator::new("m");
    let clean = run(SweepParts::new(&ext, &fresh).with_generator(&g3), &set, &config(4)).await.unwrap();
    assert_eq!(clean.layers, r.layers, "same report as an uninterrupted run");
    assert_eq!((clean.summary.generations_generated, clean.summary.generations_cached), (22, 0));
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
        cache.get_key(&generation_block_key(&g.model_id(), "set", &sampling, &texts, (0, 4))).await.unwrap().is_none()
    );

    let g2 = MockGenerator::new("m");
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g2), &set, &config(7)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (0, 22));
    assert_eq!(g2.calls(), 0, "a different batch size still reads the whole-set entry");
}

#[tokio::test]
async fn block_entries_of_another_batch_size_are_not_mixed_in() {
    let set = prompts(12);
    let cache = MemoryCache::new();
    let ext = MockExtractor::new("m", 4, 8);
    let g = MockGenerator::new("m");
    let dying = Dying::new(&cache, 2);
    run(SweepParts::new(&ext, &dying).with_generator(&g), &set, &config(4)).await.unwrap_err();
    assert_eq!(generation_entries(&cache).await, 2);
    // Batch 6 has its own grid: [0,6) [6,12); nothing of the batch-4 grid fits.
    let g2 = MockGenerator::new("m");
    let r = run(SweepParts::new(&ext, &cache).with_generator(&g2), &set, &config(6)).await.unwrap();
    assert_eq!((r.summary.generations_generated, r.summary.generations_cached), (12, 0));
    assert_eq!(g2.calls(), 2);
}
