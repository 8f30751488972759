//! A sweep reads the token positions it is asked for: the last prompt token, the mean over the
//! completion, the last token of a marker's last occurrence — each under its own cache key,
//! each equal to what the extractor gives for those tokens directly; bad readouts are refused
//! before any forward pass, naming the prompt.

use probe_core::key::{ActivationSource, activation_key, generation_key};
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator};
use probe_core::{
    ActivationExtractor, ActivationRequest, CacheStoreExt, Generator, Positions, Readout, SamplingParams, Tensor, codec,
};

fn prompts(text: impl Fn(usize) -> String) -> PromptSet {
    let mut lines = String::new();
    for i in 0..8 {
        let label = if i % 2 == 0 { "a" } else { "b" };
        lines.push_str(&format!("{{\"id\":\"p{i}\",\"text\":{:?},\"label\":\"{label}\"}}\n", text(i)));
    }
    PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap()
}

const LAYER: usize = 2;

/// Runs a sweep reading `readout` of `set` (with completions) and returns the cached layer.
async fn swept(set: &PromptSet, readout: Readout, model: &MockExtractor) -> Tensor {
    let generator = MockGenerator::new("mock-gen");
    let cache = MemoryCache::new();
    let sampling = SamplingParams::greedy(3);
    let config = SweepConfig::new(vec![LAYER])
        .with_positions(readout.clone())
        .with_batch_size(3)
        .with_sampling(Some(sampling.clone()))
        .with_probe(sweep::ProbeConfig::default().with_folds(2));
    sweep::run(SweepParts::new(model, &cache).with_generator(&generator), set, &config).await.unwrap();
    let digest = generation_key(&generator.model_id(), "set", &sampling, &set.texts()).digest;
    let key = activation_key(&model.model_info(), "set", &ActivationSource::Generations(digest), LAYER, &readout, None);
    let entry = cache.get_key(&key).await.unwrap().expect("the layer entry under the readout's key");
    codec::decode_tensors(&entry.payload).unwrap().remove(0).1
}

async fn direct(model: &MockExtractor, texts: Vec<String>, positions: Positions) -> Tensor {
    let request = ActivationRequest::texts(texts, vec![LAYER]).with_positions(positions);
    model.extract(request).await.unwrap().layer(LAYER).unwrap().clone()
}

async fn completions(set: &PromptSet) -> Vec<String> {
    let generator = MockGenerator::new("mock-gen");
    let request = probe_core::GenerationRequest::new("mock-gen", set.texts()).with_sampling(SamplingParams::greedy(3));
    generator.generate(request).await.unwrap().into_iter().map(|g| g.completion).collect()
}

#[tokio::test]
async fn last_prompt_reads_the_prompts_last_token() {
    let set = prompts(|i| format!("question {i} here"));
    let model = MockExtractor::new("mock", 4, 8);
    let got = swept(&set, Readout::LastPrompt, &model).await;
    assert_eq!(got, direct(&model, set.texts(), Positions::Last).await, "the prompt alone, at its last token");
    let last = swept(&set, Readout::Last, &model).await;
    assert_ne!(got, last, "the completion's last token differs");
}

#[tokio::test]
async fn mean_completion_averages_the_completions_tokens_only() {
    let set = prompts(|i| format!("question {i} here"));
    let model = MockExtractor::new("mock", 4, 8);
    let got = swept(&set, Readout::MeanCompletion, &model).await;
    let full: Vec<String> = set.texts().iter().zip(completions(&set).await).map(|(p, c)| format!("{p}{c}")).collect();
    let all = direct(&model, full.clone(), Positions::All).await;
    let (seq, hidden) = (all.shape[1], all.shape[2]);
    for (i, text) in full.iter().enumerate() {
        let prompt_len = 1 + set.texts()[i].split_whitespace().count();
        let len = 1 + text.split_whitespace().count();
        assert!(len > prompt_len, "the mock completes every prompt");
        let row = &all.data[i * seq * hidden..(i + 1) * seq * hidden];
        for j in 0..hidden {
            let mean = (prompt_len..len).map(|t| row[t * hidden + j]).sum::<f32>() / (len - prompt_len) as f32;
            assert!((got.row(i)[j] - mean).abs() < 1e-5, "row {i} dim {j}: {} vs {mean}", got.row(i)[j]);
        }
    }
}

#[tokio::test]
async fn a_marker_reads_its_last_occurrence() {
    let set = prompts(|i| format!("A: first {i} A: second {i} then more"));
    let model = MockExtractor::new("mock", 4, 8);
    let got = swept(&set, Readout::Marker("A:".into()), &model).await;
    let upto: Vec<String> = (0..8).map(|i| format!("A: first {i} A:")).collect();
    assert_eq!(got, direct(&model, upto, Positions::Last).await);
}

#[tokio::test]
async fn bad_readouts_are_refused_before_any_forward_pass() {
    let model = MockExtractor::new("mock", 4, 8);
    let generator = MockGenerator::new("mock-gen");
    let cache = MemoryCache::new();
    let set = prompts(|i| if i == 5 { "no mark".into() } else { format!("x {i} A: y") });
    let config = SweepConfig::new(vec![1])
        .with_positions(Readout::Marker("A:".into()))
        .with_sampling(Some(SamplingParams::greedy(2)))
        .with_probe(sweep::ProbeConfig::default().with_folds(2));
    let e = sweep::run(SweepParts::new(&model, &cache).with_generator(&generator), &set, &config)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"A:\"") && e.contains("\"p5\""), "{e}");
    assert_eq!(model.passes(), 0);

    let no_completions = config.clone().with_positions(Readout::MeanCompletion).with_sampling(None);
    let e = sweep::run(SweepParts::new(&model, &cache), &set, &no_completions).await.unwrap_err().to_string();
    assert!(e.contains("mean-completion"), "{e}");
    let all = config.with_positions(Readout::All);
    let e = sweep::run(SweepParts::new(&model, &cache).with_generator(&generator), &set, &all)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"all\""), "{e}");
    assert_eq!(model.passes(), 0);
}
