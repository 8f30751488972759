//! The sweep pipeline on the test doubles: caching, resumption, layer supersets, corrupt
//! entries, out-of-memory back-off and validation before work.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepEvent, SweepObserver, SweepParts};
use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator};
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, CacheEntry, CacheKey, CacheStore, Capabilities, EntryKind,
    EntryMeta, Error, GetRequest, ListRequest, ModelInfo, PutRequest, Result, SamplingParams,
};

/// 40 prompts; the label is which word group the sentence uses (readable by a linear probe
/// on the mock's word vectors).
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

/// Records the layers of every request it forwards.
#[derive(Debug)]
struct Recording<'a> {
    inner: &'a MockExtractor,
    requests: Mutex<Vec<Vec<usize>>>,
}

impl<'a> Recording<'a> {
    fn new(inner: &'a MockExtractor) -> Self {
        Self { inner, requests: Mutex::new(Vec::new()) }
    }
    fn layers_requested(&self) -> Vec<Vec<usize>> {
        self.requests.lock().unwrap().clone()
    }
}

#[async_trait]
impl ActivationExtractor for Recording<'_> {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        self.requests.lock().unwrap().push(request.sorted_layers());
        self.inner.extract(request).await
    }
    fn model_info(&self) -> ModelInfo {
        self.inner.model_info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// A store that fails every `put` after the first `allowed`: a run "killed" mid-extraction.
#[derive(Debug)]
struct Dying<'a> {
    inner: &'a MemoryCache,
    allowed: usize,
    puts: AtomicUsize,
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

#[derive(Debug, Default)]
struct Events(Mutex<Vec<SweepEvent>>);

impl SweepObserver for Events {
    fn on_event(&self, e: &SweepEvent) {
        self.0.lock().unwrap().push(e.clone());
    }
}

fn config(layers: Vec<usize>) -> SweepConfig {
    SweepConfig::new(layers).with_batch_size(8).with_sampling(Some(SamplingParams::greedy(4)))
}

#[tokio::test]
async fn first_run_computes_second_run_reads_everything() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16);
    let generator = MockGenerator::new("mock-model");
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache).with_generator(&generator);

    let cfg = config(vec![1, 3, 5]).with_positions(probe_core::Positions::Mean);
    let a = sweep::run(parts, &set, &cfg).await.unwrap();
    let s = &a.summary;
    assert_eq!((s.generations_generated, s.generations_cached), (40, 0));
    assert_eq!((s.layers_computed, s.layers_cached), (3, 0));
    assert_eq!((s.batches_computed, s.batches_cached), (3, 0), "blocks of 16 prompts: 16, 16, 8");
    assert_eq!(s.extract_calls, 5);
    assert_eq!(ext.passes(), 5, "one forward pass per 8 prompts for all three layers");
    assert_eq!(ext.rows(), 40);
    assert_eq!(generator.calls(), 5, "one generation call per block of 8 prompts");
    assert_eq!(a.layers.iter().map(|l| l.layer).collect::<Vec<_>>(), vec![1, 3, 5]);
    assert!(a.layers.iter().all(|l| l.n_train == 32 && l.n_test == 8));
    assert!(a.best().unwrap().accuracy >= 0.75, "word groups are linearly readable: {:?}", a.layers);
    // generations entry + one whole-layer entry per layer; block entries were folded in.
    assert_eq!(cache.list(ListRequest::all().with_kind(EntryKind::Generations)).await.unwrap().len(), 1);
    assert_eq!(cache.list(ListRequest::all().with_kind(EntryKind::Activations)).await.unwrap().len(), 3);

    let b = sweep::run(parts, &set, &cfg).await.unwrap();
    let s = &b.summary;
    assert_eq!((s.generations_generated, s.generations_cached), (0, 40));
    assert_eq!((s.layers_computed, s.layers_cached), (0, 3));
    assert_eq!((s.batches_computed, s.extract_calls), (0, 0));
    assert_eq!(ext.passes(), 5, "nothing recomputed");
    assert_eq!(generator.calls(), 5, "nothing regenerated");
    assert_eq!(a.layers, b.layers, "same report from the cache");
    assert_eq!(
        b.summary.to_string(),
        "generations: 0 generated, 40 cached · activations: 0 layers computed, 3 cached (0 batches computed, 0 cached)"
    );
}

#[tokio::test]
async fn superset_of_layers_computes_only_the_new_ones() {
    let set = prompts(40);
    let mock = MockExtractor::new("mock-model", 6, 16);
    let ext = Recording::new(&mock);
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache);
    let cfg = |l| config(l).with_sampling(None);
    let a = sweep::run(parts, &set, &cfg(vec![2, 4])).await.unwrap();
    assert!(!a.summary.generation);
    assert_eq!(ext.layers_requested(), vec![vec![2, 4]; 5]);

    let b = sweep::run(parts, &set, &cfg(vec![1, 2, 4, 6])).await.unwrap();
    assert_eq!((b.summary.layers_computed, b.summary.layers_cached), (2, 2));
    assert_eq!(ext.layers_requested()[5..], vec![vec![1, 6]; 5], "only the new layers are extracted");
    assert_eq!(mock.rows(), 80);
    let old: Vec<_> = a.layers.clone();
    let new: Vec<_> = b.layers.iter().filter(|l| l.layer == 2 || l.layer == 4).copied().collect();
    assert_eq!(old, new, "cached layers give the same scores");
    assert!(b.summary.to_string().starts_with("generations: off · activations: 2 layers computed, 2 cached"));
}

#[tokio::test]
async fn a_killed_run_resumes_from_its_finished_blocks() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16);
    let generator = MockGenerator::new("mock-model");
    let cache = MemoryCache::new();
    // 3 generation blocks (16, 16, 8 prompts) and the whole-set generations entry, then 2
    // layers per block: puts 5 and 6 are block 0 (after 2 passes of 8), put 7 is layer 1 of
    // block 1, put 8 (layer 3 of block 1, after 4 passes) fails.
    let dying = Dying { inner: &cache, allowed: 7, puts: AtomicUsize::new(0) };
    let parts = SweepParts::new(&ext, &dying).with_generator(&generator);
    let err = sweep::run(parts, &set, &config(vec![1, 3])).await.unwrap_err();
    assert!(matches!(err, Error::Temporary { .. }), "{err}");
    assert_eq!(ext.passes(), 4);

    let mock = MockExtractor::new("mock-model", 6, 16);
    let rec = Recording::new(&mock);
    let parts = SweepParts::new(&rec, &cache).with_generator(&generator);
    let r = sweep::run(parts, &set, &config(vec![1, 3])).await.unwrap();
    let s = &r.summary;
    assert_eq!((s.generations_generated, s.generations_cached), (0, 40));
    assert_eq!((s.layers_computed, s.layers_cached), (2, 0));
    assert_eq!((s.batches_computed, s.batches_cached), (2, 1), "block 0 was kept");
    assert_eq!(rec.layers_requested(), vec![vec![3], vec![3], vec![1, 3]], "block 1 (2 passes) only lacks layer 3");
    assert_eq!(mock.rows(), 24);

    // Same report as an uninterrupted run.
    let fresh = MemoryCache::new();
    let ext2 = MockExtractor::new("mock-model", 6, 16);
    let clean =
        sweep::run(SweepParts::new(&ext2, &fresh).with_generator(&generator), &set, &config(vec![1, 3])).await.unwrap();
    assert_eq!(clean.layers, r.layers);
}

#[tokio::test]
async fn corrupt_entries_are_recomputed() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16);
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache);
    let cfg = config(vec![1, 2]).with_sampling(None);
    let a = sweep::run(parts, &set, &cfg).await.unwrap();
    let keys = cache.list(ListRequest::all().with_kind(EntryKind::Activations)).await.unwrap();
    assert_eq!(keys.len(), 2);
    let victim = keys.iter().find(|k| k.layer == Some(2)).unwrap();
    assert!(cache.corrupt(victim));
    let b = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!((b.summary.layers_computed, b.summary.layers_cached), (1, 1));
    assert_eq!(ext.passes(), 10);
    assert_eq!(a.layers, b.layers);
    let c = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!((c.summary.layers_computed, c.summary.layers_cached), (0, 2), "the rewritten entry is good");
}

#[tokio::test]
async fn out_of_memory_halves_the_batch_and_keeps_the_cache_grid() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16).with_oom_above(3);
    let cache = MemoryCache::new();
    let events = Events::default();
    let parts = SweepParts::new(&ext, &cache).with_observer(&events);
    let r = sweep::run(parts, &set, &config(vec![1]).with_sampling(None)).await.unwrap();
    assert_eq!(r.summary.batches_computed, 3, "blocks of 16: 16, 16, 8");
    assert_eq!(r.summary.extract_calls, 7, "8 → 4 → 2 on the first pass of 8, then 2 for the other 4 passes");
    assert_eq!((r.summary.oom_retries, r.summary.backoff_batch_size), (2, Some(2)));
    assert!(r.summary.to_string().ends_with(" · 2 out-of-memory retries"), "{}", r.summary);
    let shrinks: Vec<_> =
        events.0.lock().unwrap().iter().filter(|e| matches!(e, SweepEvent::BatchShrunk { .. })).cloned().collect();
    assert_eq!(shrinks, vec![SweepEvent::BatchShrunk { from: 8, to: 4 }, SweepEvent::BatchShrunk { from: 4, to: 2 }]);
    // The same activations as without memory pressure.
    let plain = MockExtractor::new("mock-model", 6, 16);
    let cache2 = MemoryCache::new();
    let r2 = sweep::run(SweepParts::new(&plain, &cache2), &set, &config(vec![1]).with_sampling(None)).await.unwrap();
    assert_eq!(r.layers, r2.layers);
}

#[tokio::test]
async fn bad_input_is_refused_before_any_work() {
    let set = prompts(40);
    let ext = MockExtractor::new("mock-model", 6, 16);
    let generator = MockGenerator::new("mock-model");
    let cache = MemoryCache::new();
    let parts = SweepParts::new(&ext, &cache).with_generator(&generator);
    let cases: Vec<(SweepConfig, &str)> = vec![
        (config(vec![1, 7]), "7 is out of range"),
        (config(vec![]), "no layers"),
        (config(vec![1]).with_batch_size(0), "batch size: 0"),
        (config(vec![1]).with_sampling(Some(SamplingParams::greedy(0))), "max_tokens: 0"),
        (config(vec![1]).with_sampling(Some(SamplingParams::greedy(4).with_temperature(-1.0))), "temperature: -1"),
        (config(vec![1]).with_sampling(Some(SamplingParams::greedy(4).with_n(2))), "invalid n: 2"),
        (config(vec![1]).with_positions(probe_core::Positions::All), "\"all\""),
        (config(vec![1]).with_probe(sweep::ProbeConfig::default().with_folds(1)), "folds: 1"),
    ];
    for (cfg, want) in cases {
        let e = sweep::run(parts, &set, &cfg).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
        assert!(e.to_string().contains(want), "{e:?} should contain {want:?}");
    }
    let no_gen = SweepParts::new(&ext, &cache);
    let e = sweep::run(no_gen, &set, &config(vec![1])).await.unwrap_err();
    assert!(e.to_string().contains("no generator"), "{e}");
    let lonely = PromptSet::parse(
        "s",
        "s.jsonl",
        b"{\"id\":1,\"text\":\"a\",\"label\":\"x\"}\n{\"id\":2,\"text\":\"b\",\"label\":\"x\"}\n{\"id\":3,\"text\":\"c\",\"label\":\"y\"}",
        PromptFormat::labelled(),
    )
    .unwrap();
    let e = sweep::run(parts, &lonely, &config(vec![1])).await.unwrap_err();
    assert!(e.to_string().contains("label \"y\" has 1 prompt"), "{e}");
    assert_eq!((ext.passes(), generator.calls()), (0, 0), "no work was done");
    assert!(cache.is_empty(), "nothing was written");
}

#[tokio::test]
async fn extract_all_keeps_input_order_across_batches() {
    let ext = MockExtractor::new("mock-model", 4, 8);
    let texts: Vec<String> = (0..10).map(|i| format!("word{i} tail{}", i % 3)).collect();
    let all =
        sweep::extract_all(&ext, &sweep::NoProgress, &texts, &[3, 1], probe_core::Positions::Mean, 3).await.unwrap();
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    let single = ext
        .extract(ActivationRequest::texts(texts.clone(), vec![1, 3]).with_positions(probe_core::Positions::Mean))
        .await
        .unwrap();
    assert_eq!(all[&1], *single.layer(1).unwrap());
    assert_eq!(all[&3], *single.layer(3).unwrap());
    assert_eq!(ext.passes(), 4 + 1);
}
