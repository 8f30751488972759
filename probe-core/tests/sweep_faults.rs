//! Faults in the sweep pipeline on the test doubles: corrupt entries are counted in the
//! summary, and out-of-memory errors injected at random calls leave the activations unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator, OomInjector};
use probe_core::{
    ActivationExtractor, CacheEntry, CacheKey, CacheStore, CacheStoreExt, Capabilities, EntryKind, EntryMeta, Error,
    GetRequest, ListRequest, PutRequest, Result, SamplingParams, codec,
};

fn prompts(n: usize) -> PromptSet {
    let a = ["apple", "pear", "plum", "fig"];
    let b = ["iron", "steel", "tin", "zinc"];
    let mut lines = String::new();
    for i in 0..n {
        let (w, label) = if i % 2 == 0 { (a[i / 2 % 4], "fruit") } else { (b[i / 2 % 4], "metal") };
        lines.push_str(&format!(r#"{{"id":"p{i}","text":"item {i} is {w}","label":"{label}"}}"#));
        lines.push('\n');
    }
    PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap()
}

fn config(layers: Vec<usize>) -> SweepConfig {
    SweepConfig::new(layers).with_batch_size(8).with_sampling(Some(SamplingParams::greedy(4)))
}

/// Every activation entry of `cache`, decoded, by key path.
async fn activations(cache: &MemoryCache) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for key in cache.list(ListRequest::all().with_kind(EntryKind::Activations)).await.unwrap() {
        let entry = cache.get_key(&key).await.unwrap().expect("listed entries read back");
        let tensors = codec::decode_tensors(&entry.payload).unwrap();
        out.push((key.path(), tensors.into_iter().next().unwrap().1.data));
    }
    out
}

#[tokio::test]
async fn corrupt_entries_met_by_a_run_are_counted_in_its_summary() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16);
    let generator = MockGenerator::new("mock-model");
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache).with_generator(&generator);
    let cfg = config(vec![1, 2, 4]);
    let a = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!(a.summary.corrupt_entries, 0);
    assert!(!a.summary.to_string().contains("corrupt"), "{}", a.summary);

    let gens = cache.list(ListRequest::all().with_kind(EntryKind::Generations)).await.unwrap();
    let acts = cache.list(ListRequest::all().with_kind(EntryKind::Activations)).await.unwrap();
    assert!(cache.corrupt(&acts[1]));
    let b = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!(b.summary.corrupt_entries, 1);
    assert_eq!((b.summary.layers_computed, b.summary.layers_cached), (1, 2));
    assert!(b.summary.to_string().ends_with(" · 1 corrupt cache entry recomputed"), "{}", b.summary);
    assert_eq!(a.layers, b.layers);

    // The generations entry: the completions are regenerated (the same texts, so the
    // activation entries still match).
    assert!(cache.corrupt(&gens[0]));
    let before = cache.corrupt_entries();
    let c = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!(cache.corrupt_entries() - before, 1, "the generations entry was the one bad entry read");
    assert_eq!(c.summary.corrupt_entries, 1);
    assert_eq!((c.summary.generations_generated, c.summary.generations_cached), (40, 0), "{}", c.summary);
    assert_eq!(a.layers, c.layers);
    let d = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!(d.summary.corrupt_entries, 0, "rewritten entries are good");
}

#[tokio::test]
async fn injected_out_of_memory_errors_leave_the_activations_unchanged() {
    let set = prompts(96);
    let generator = MockGenerator::new("mock-model");
    let cfg = config(vec![0, 3, 6]).with_batch_size(16);

    let plain = MockExtractor::new("mock-model", 6, 16);
    let clean_cache = MemoryCache::new();
    let clean = sweep::run(SweepParts::new(&plain, &clean_cache).with_generator(&generator), &set, &cfg).await.unwrap();
    // 96 prompts: 6 blocks of 16, 6 passes of 16.
    assert_eq!((clean.summary.batches_computed, clean.summary.extract_calls), (6, 6));
    assert_eq!(clean.summary.oom_retries, 0, "no retries without injection");

    for seed in [1, 2, 3] {
        let inner: Arc<dyn ActivationExtractor> = Arc::new(MockExtractor::new("mock-model", 6, 16));
        let injector = OomInjector::new(inner, seed, 0.4);
        let cache = MemoryCache::new();
        let r = sweep::run(SweepParts::new(&injector, &cache).with_generator(&generator), &set, &cfg).await.unwrap();
        assert!(injector.injected() > 0, "seed {seed} injected nothing");
        let retries = r.summary.oom_retries;
        assert_eq!(retries, injector.injected(), "every injected error was retried once");
        assert_eq!(r.summary.extract_calls, 6 + retries, "6 passes and the retries");
        assert!(r.summary.to_string().contains(&format!(" · {retries} out-of-memory retr")), "{}", r.summary);
        assert_eq!(r.layers, clean.layers);
        assert_eq!(activations(&cache).await, activations(&clean_cache).await, "seed {seed}: same activations");
    }
}

/// A store whose deletes fail: like a run killed after committing whole entries and before
/// deleting the generation and activation block entries they were folded from.
#[derive(Debug)]
struct NoDeletes<'a>(&'a MemoryCache);

#[async_trait]
impl CacheStore for NoDeletes<'_> {
    async fn get(&self, r: GetRequest) -> Result<Option<CacheEntry>> {
        self.0.get(r).await
    }
    async fn put(&self, r: PutRequest) -> Result<EntryMeta> {
        self.0.put(r).await
    }
    async fn contains(&self, r: GetRequest) -> Result<bool> {
        self.0.contains(r).await
    }
    async fn list(&self, r: ListRequest) -> Result<Vec<CacheKey>> {
        self.0.list(r).await
    }
    async fn delete(&self, _r: GetRequest) -> Result<bool> {
        Err(Error::Temporary { backend: "test".into(), message: "killed before deleting".into() })
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn location(&self) -> String {
        self.0.location()
    }
}

#[tokio::test]
async fn block_entries_left_by_an_interrupted_fold_are_deleted_by_the_next_run() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16);
    let generator = MockGenerator::new("mock-model");
    let cache = MemoryCache::new();
    let cfg = config(vec![1, 4]);
    let a = sweep::run(SweepParts::new(&ext, &NoDeletes(&cache)).with_generator(&generator), &set, &cfg).await.unwrap();
    // 1 whole generations entry + 3 blocks, 2 whole layers + 2 × 3 blocks.
    assert_eq!(cache.len(), 1 + 3 + 2 + 6);
    let b = sweep::run(SweepParts::new(&ext, &cache).with_generator(&generator), &set, &cfg).await.unwrap();
    assert_eq!((b.summary.generations_generated, b.summary.layers_computed), (0, 0), "{}", b.summary);
    assert_eq!(cache.len(), 1 + 2, "only the whole entries are left");
    assert_eq!(a.layers, b.layers);
}
