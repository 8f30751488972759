//! A sweep extracts from exactly the token ids that were generated (prompt ids + completion
//! ids) when the generator gives them, under their own activation keys; from the re-tokenised
//! text otherwise. Chat prompts are generated from and extracted as written.

use std::sync::Mutex;

use async_trait::async_trait;
use probe_core::key::{ActivationSource, activation_key, generation_key, generation_key_with};
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator};
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, CacheStoreExt, Capabilities, Generation, GenerationRequest,
    Generator, Inputs, ModelId, ModelInfo, Readout, Result, SamplingParams, SpecialTokens, Tensor, codec,
};

fn prompts() -> PromptSet {
    let mut lines = String::new();
    for i in 0..8 {
        let label = if i % 2 == 0 { "a" } else { "b" };
        lines.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"prompt {i}\",\"label\":\"{label}\"}}\n"));
    }
    PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap()
}

/// The mock generator, plus prompt token ids (one id per byte of the prompt) when `ids`.
#[derive(Debug)]
struct WithPromptIds {
    inner: MockGenerator,
    ids: bool,
    requests: Mutex<Vec<SpecialTokens>>,
}

#[async_trait]
impl Generator for WithPromptIds {
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        self.requests.lock().unwrap().push(request.special_tokens);
        let gens = self.inner.generate(request).await?;
        Ok(gens
            .into_iter()
            .map(|g| {
                let ids = self.ids.then(|| g.prompt.bytes().map(u32::from).collect());
                g.with_prompt_token_ids(ids)
            })
            .collect())
    }
    fn model_id(&self) -> ModelId {
        self.inner.model_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Records the inputs of every request it forwards.
#[derive(Debug)]
struct Recording {
    inner: MockExtractor,
    inputs: Mutex<Vec<(Inputs, SpecialTokens)>>,
}

#[async_trait]
impl ActivationExtractor for Recording {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        self.inputs.lock().unwrap().push((request.inputs.clone(), request.special_tokens));
        self.inner.extract(request).await
    }
    fn model_info(&self) -> ModelInfo {
        self.inner.model_info()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

fn parts(ids: bool) -> (WithPromptIds, Recording) {
    let generator = WithPromptIds { inner: MockGenerator::new("mock-gen"), ids, requests: Mutex::new(Vec::new()) };
    let extractor = Recording { inner: MockExtractor::new("mock", 4, 16), inputs: Mutex::new(Vec::new()) };
    (generator, extractor)
}

async fn layer_entry(cache: &MemoryCache, info: &ModelInfo, source: &ActivationSource) -> Option<Tensor> {
    let key = activation_key(info, "set", source, 2, &Readout::Last, None);
    let entry = cache.get_key(&key).await.unwrap()?;
    codec::decode_tensors(&entry.payload).unwrap().into_iter().next().map(|(_, t)| t)
}

#[tokio::test]
async fn generated_ids_are_probed_not_the_retokenised_text() {
    let (generator, extractor) = parts(true);
    let cache = MemoryCache::new();
    let set = prompts();
    let config = SweepConfig::new(vec![2]).with_batch_size(3).with_sampling(Some(SamplingParams::greedy(4)));
    let parts = SweepParts::new(&extractor, &cache).with_generator(&generator);
    sweep::run(parts, &set, &config).await.unwrap();

    let gen_key = generation_key(&generator.model_id(), "set", &SamplingParams::greedy(4), &set.texts());
    let gens = codec::decode_generations(&cache.get_key(&gen_key).await.unwrap().unwrap().payload).unwrap();
    let ids: Vec<Vec<u32>> = gens.iter().map(|g| g.full_token_ids().unwrap()).collect();
    assert_eq!(ids[0][..8], b"prompt 0".map(u32::from), "prompt ids first");
    assert_eq!(ids[0][8..], *gens[0].token_ids.as_ref().unwrap(), "then the completion's ids");

    // Every forward pass got token ids, and together exactly the generated sequences.
    let seen: Vec<Vec<u32>> = extractor
        .inputs
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(inputs, _)| match inputs {
            Inputs::TokenIds(t) => t.clone(),
            Inputs::Texts(t) => panic!("re-tokenised texts were extracted: {t:?}"),
        })
        .collect();
    assert_eq!(seen, ids);

    // The layer entry is under the generated-tokens key and holds the ids' activations, which
    // differ from those of the text prompt + completion.
    let info = extractor.model_info();
    let stored = layer_entry(&cache, &info, &ActivationSource::GeneratedTokens(gen_key.digest.clone())).await.unwrap();
    assert!(layer_entry(&cache, &info, &ActivationSource::Generations(gen_key.digest.clone())).await.is_none());
    let from_ids = extractor.inner.extract(ActivationRequest::token_ids(ids, vec![2])).await.unwrap();
    assert_eq!(&stored, from_ids.layer(2).unwrap());
    let texts: Vec<String> = gens.iter().map(Generation::full_text).collect();
    let from_text = extractor.inner.extract(ActivationRequest::texts(texts, vec![2])).await.unwrap();
    assert_ne!(&stored, from_text.layer(2).unwrap(), "the ids' activations are not the text's");
}

#[tokio::test]
async fn without_ids_the_text_is_probed_under_the_old_key() {
    let (generator, extractor) = parts(false);
    let cache = MemoryCache::new();
    let set = prompts();
    let config = SweepConfig::new(vec![2]).with_batch_size(8).with_sampling(Some(SamplingParams::greedy(4)));
    sweep::run(SweepParts::new(&extractor, &cache).with_generator(&generator), &set, &config).await.unwrap();
    assert!(extractor.inputs.lock().unwrap().iter().all(|(i, _)| matches!(i, Inputs::Texts(_))));
    let gen_key = generation_key(&generator.model_id(), "set", &SamplingParams::greedy(4), &set.texts());
    let info = extractor.model_info();
    assert!(layer_entry(&cache, &info, &ActivationSource::Generations(gen_key.digest)).await.is_some());
}

#[tokio::test]
async fn chat_prompts_are_generated_and_extracted_as_written() {
    let mut lines = String::new();
    for i in 0..6 {
        let label = if i % 2 == 0 { "a" } else { "b" };
        lines.push_str(&format!(
            "{{\"id\":\"c{i}\",\"messages\":[{{\"role\":\"user\",\"content\":\"question {i}\"}}],\"label\":\"{label}\"}}\n"
        ));
    }
    let set = PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap();
    let (generator, extractor) = parts(false);
    let cache = MemoryCache::new();
    let config = SweepConfig::new(vec![1]).with_batch_size(6).with_sampling(Some(SamplingParams::greedy(2)));
    let e = sweep::run(SweepParts::new(&extractor, &cache).with_generator(&generator), &set, &config).await;
    assert!(e.unwrap_err().to_string().contains("not rendered"), "unrendered chat prompts are refused");
    assert!(generator.requests.lock().unwrap().is_empty() && extractor.inputs.lock().unwrap().is_empty());

    let set = set.render_chat(|m| Ok(format!("<s>[user] {}\n", m[0].content))).unwrap();
    sweep::run(SweepParts::new(&extractor, &cache).with_generator(&generator), &set, &config).await.unwrap();
    assert_eq!(*generator.requests.lock().unwrap(), vec![SpecialTokens::AsWritten]);
    assert!(extractor.inputs.lock().unwrap().iter().all(|(_, s)| *s == SpecialTokens::AsWritten));
    // The generations are keyed by the rendered text, tokenised as written.
    let key = generation_key_with(
        &generator.model_id(),
        "set",
        &SamplingParams::greedy(2),
        &set.texts(),
        SpecialTokens::AsWritten,
    );
    assert!(cache.get_key(&key).await.unwrap().is_some());
    assert!(set.texts()[0].starts_with("<s>[user] question 0"));
}
