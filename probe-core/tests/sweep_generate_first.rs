//! `sweep::generate` (the generation phase alone, for devices that generation and extraction
//! take turns on): it caches the completions under the key `sweep::run` reads, so the run
//! that follows generates nothing, even with a generator that would fail.

use async_trait::async_trait;
use probe_core::sweep::{self, NoProgress, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator};
use probe_core::{Error, Generation, GenerationRequest, Generator, ModelId, Result, SamplingParams};

fn prompts() -> PromptSet {
    let mut lines = String::new();
    for i in 0..12 {
        let (w, label) = if i % 2 == 0 { ("apple", "fruit") } else { ("iron", "metal") };
        lines.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"item {i} is {w}\",\"label\":\"{label}\"}}\n"));
    }
    PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap()
}

/// Same identity as the mock generator, but every call fails: stands for servers already
/// stopped.
#[derive(Debug)]
struct Stopped(MockGenerator);

#[async_trait]
impl Generator for Stopped {
    async fn generate(&self, _request: GenerationRequest) -> Result<Vec<Generation>> {
        Err(Error::backend("stopped", "the servers were stopped"))
    }
    fn model_id(&self) -> ModelId {
        self.0.model_id()
    }
    fn capabilities(&self) -> probe_core::Capabilities {
        self.0.capabilities()
    }
}

#[tokio::test]
async fn generation_first_then_run_reads_the_cached_completions() {
    let set = prompts();
    let cache = MemoryCache::new();
    let generator = MockGenerator::new("mock-model");
    let sampling = SamplingParams::greedy(4);
    // A batch size and calls in flight unlike the defaults: the run below must still find
    // every completion.
    let cfg = SweepConfig::new(vec![1, 2]).with_sampling(Some(sampling)).with_batch_size(5);
    let cfg = cfg.with_generation_in_flight(3);

    let g = sweep::generate(&generator, &cache, &NoProgress, &set, &cfg).await.unwrap();
    assert_eq!((g.generation, g.generations_generated, g.generations_cached), (true, 12, 0));
    assert!(generator.calls() >= 1);
    let calls = generator.calls();

    let again = sweep::generate(&generator, &cache, &NoProgress, &set, &cfg).await.unwrap();
    assert_eq!((again.generations_generated, again.generations_cached), (0, 12));
    assert_eq!(generator.calls(), calls, "cached: not generated again");

    let stopped = Stopped(MockGenerator::new("mock-model"));
    let ext = MockExtractor::new("mock-model", 4, 16);
    let parts = SweepParts::new(&ext, &cache).with_generator(&stopped);
    let report = sweep::run(parts, &set, &cfg).await.unwrap();
    assert_eq!((report.summary.generations_generated, report.summary.generations_cached), (0, 12));
    assert_eq!(report.layers.len(), 2);
}

#[tokio::test]
async fn generation_phase_refuses_several_samples_per_prompt_or_no_sampling() {
    let mut sampling = SamplingParams::greedy(4);
    sampling.n = 2;
    let (g, cache) = (MockGenerator::new("m"), MemoryCache::new());
    let cfg = SweepConfig::new(vec![1]).with_sampling(Some(sampling));
    let e = sweep::generate(&g, &cache, &NoProgress, &prompts(), &cfg).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }) && e.to_string().contains("one completion per prompt"), "{e}");
    let none = SweepConfig::new(vec![1]).with_sampling(None);
    let e = sweep::generate(&g, &cache, &NoProgress, &prompts(), &none).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    assert_eq!(g.calls(), 0);
}
