//! A sweep on candle extracts exactly the tokens that were generated (prompt ids + completion
//! ids), not the re-tokenised prompt + completion text, on the fixture Llama (PROBE_FIXTURES):
//! a completion "ance" generated after the prompt "… Fr" as its own tokens re-tokenises, as
//! the text "…France", into other tokens (byte-level BPE merges across the boundary).
#![cfg(feature = "candle")]

use std::path::PathBuf;

use async_trait::async_trait;
use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::key::{ActivationSource, activation_key, generation_key};
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, require_service};
use probe_core::{
    ActivationExtractor, ActivationRequest, CacheStoreExt, Capabilities, FinishReason, Generation, GenerationRequest,
    Generator, ModelId, Readout, Result, SamplingParams, codec,
};

fn model() -> Option<CandleBackend> {
    let root = PathBuf::from(require_service("PROBE_FIXTURES")?);
    Some(CandleBackend::load(&root.join("models/llama"), CandleOptions::default()).expect("fixture llama"))
}

/// A generator that "generated" each prompt's completion as the given tokens (the ids a model
/// emits one by one), with the prompt's ids as candle tokenises them.
#[derive(Debug)]
struct Emits {
    model: CandleBackend,
    completion: Vec<u32>,
    text: String,
}

#[async_trait]
impl Generator for Emits {
    async fn generate(&self, r: GenerationRequest) -> Result<Vec<Generation>> {
        r.prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let g = Generation::new(
                    i,
                    0,
                    p.clone(),
                    self.text.clone(),
                    FinishReason::Length,
                    Some(self.completion.clone()),
                );
                Ok(g.with_prompt_token_ids(Some(self.model.tokenize(p)?)))
            })
            .collect()
    }
    fn model_id(&self) -> ModelId {
        ModelId::new("emits", "1")
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }
}

#[tokio::test]
async fn candle_generation_reports_prompt_and_completion_ids() {
    let Some(model) = model() else { return };
    let prompt = "The capital of France is";
    let g = model
        .generate(
            GenerationRequest::new(model.model_id().id, vec![prompt.into()]).with_sampling(SamplingParams::greedy(5)),
        )
        .await
        .unwrap();
    assert_eq!(g[0].prompt_token_ids.as_ref(), Some(&model.tokenize(prompt).unwrap()));
    let full = g[0].full_token_ids().unwrap();
    assert_eq!(full.len(), model.tokenize(prompt).unwrap().len() + g[0].token_ids.as_ref().unwrap().len());
}

#[tokio::test]
async fn a_sweep_probes_the_generated_ids_not_the_retokenised_text() {
    let Some(model) = model() else { return };
    // "ance" as the model's own tokens (the fixture tokenizer adds one BOS in front).
    let with_bos = model.tokenize("ance").unwrap();
    assert_eq!(with_bos[0], model.tokenize("x").unwrap()[0], "BOS first");
    let generator = Emits { model: model.clone(), completion: with_bos[1..].to_vec(), text: "ance".into() };
    let lines: String = (0..4)
        .map(|i| format!("{{\"id\":\"p{i}\",\"text\":\"Prompt {i}: the capital of Fr\",\"label\":\"{}\"}}\n", i % 2))
        .collect();
    let set = PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap();
    let generated: Vec<Vec<u32>> = set
        .texts()
        .iter()
        .map(|p| model.tokenize(p).unwrap().into_iter().chain(with_bos[1..].iter().copied()).collect())
        .collect();
    let texts: Vec<String> = set.texts().iter().map(|p| format!("{p}ance")).collect();
    assert_ne!(model.tokenize(&texts[0]).unwrap(), generated[0], "the text re-tokenises into other tokens");

    let cache = MemoryCache::new();
    let sampling = SamplingParams::greedy(4);
    let config = SweepConfig::new(vec![1, 2])
        .with_batch_size(2)
        .with_sampling(Some(sampling.clone()))
        .with_probe(sweep::ProbeConfig::default().with_folds(2));
    sweep::run(SweepParts::new(&model, &cache).with_generator(&generator), &set, &config).await.unwrap();

    let digest = generation_key(&generator.model_id(), "set", &sampling, &set.texts()).digest;
    let key =
        activation_key(&model.model_info(), "set", &ActivationSource::GeneratedTokens(digest), 2, &Readout::Last, None);
    let entry = cache.get_key(&key).await.unwrap().expect("layer 2 under the generated-tokens key");
    let stored = codec::decode_tensors(&entry.payload).unwrap().remove(0).1;
    let from_ids = model.extract(ActivationRequest::token_ids(generated, vec![2])).await.unwrap();
    let from_text = model.extract(ActivationRequest::texts(texts, vec![2])).await.unwrap();
    assert_eq!(&stored, from_ids.layer(2).unwrap(), "the sweep's activations are those of the generated ids");
    let diff =
        stored.data.iter().zip(&from_text.layer(2).unwrap().data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "the re-tokenised text's activations differ (max |Δ| = {diff})");
}

/// Completions generated in bf16 are not those of f32: the generator's identity, and so the
/// generation cache key, carries the compute dtype.
#[test]
fn the_generation_key_carries_the_compute_dtype() {
    let Some(f32_model) = model() else { return };
    let root = PathBuf::from(std::env::var("PROBE_FIXTURES").expect("fixtures"));
    let bf16 = CandleOptions::default().with_dtype("bf16".parse().expect("bf16"));
    let bf16_model = CandleBackend::load(&root.join("models/llama"), bf16).expect("fixture llama in bf16");
    let (a, b) = (Generator::model_id(&f32_model), Generator::model_id(&bf16_model));
    assert_eq!(a.id, b.id);
    assert_eq!(b.revision, format!("{}+bf16", a.revision));
    let sampling = SamplingParams::default();
    let prompts = vec!["a".to_owned()];
    assert_ne!(generation_key(&a, "set", &sampling, &prompts), generation_key(&b, "set", &sampling, &prompts));
}
