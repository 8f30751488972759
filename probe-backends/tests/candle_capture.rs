//! States read while generating (`Generator::generate_capturing`) equal a separate extraction
//! pass over prompt + completion ids, on every architecture's fixture (PROBE_FIXTURES): every
//! layer of the residual stream and every block's `mlp_out`, at `last` and `mean` (and on Llama
//! and Gemma 2, sliding windows and soft-capping, at `last-prompt` and `mean-completion` too), prompts of different lengths decoded together (a decode batch
//! smaller than the prompts, so rows join and leave) with completions that stop at different
//! steps. A sweep that generates with candle runs no extraction pass for what it generated,
//! a second sweep and one at another batch size read everything from the cache, and its
//! activations are those of the separate pass.
#![cfg(feature = "candle")]

mod archs;

use archs::{ARCHS, relative_error};
use std::path::PathBuf;

use async_trait::async_trait;
use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::sweep::{self, PromptFormat, PromptSet, SweepConfig, SweepParts};
use probe_core::testing::{MemoryCache, require_service};
use probe_core::{
    ActivationExtractor, ActivationRequest, Capabilities, Generation, GenerationRequest, Generator, Inputs, ModelId,
    Positions, Readout, Result, SamplingParams, Site, Span, StateCapture,
};

/// max |captured − extracted|, over max(1, max |extracted|), f32.
const TOLERANCE: f32 = 1e-5;

fn load(arch: &str, batch: usize) -> Option<CandleBackend> {
    let root = PathBuf::from(require_service("PROBE_FIXTURES")?);
    let options = CandleOptions::default().with_default_batch_size(batch);
    Some(CandleBackend::load(&root.join("models").join(arch), options).expect("fixture model"))
}

/// Prompts of different lengths.
fn prompts() -> Vec<String> {
    [
        "Hi",
        "The capital of France is",
        "Once upon a time, in a land far away, there lived a",
        "1 2 3 4",
        "A much longer prompt that goes on and on about nothing in particular, so that its rows are padded \
         the least of all and the others wait",
    ]
    .map(String::from)
    .to_vec()
}

/// Greedy sampling of `max_tokens` with stop strings that end the fixture's completions of
/// [`prompts`] at different steps.
async fn stopping(model: &CandleBackend, max_tokens: u32) -> SamplingParams {
    let plain = SamplingParams::greedy(max_tokens);
    let request = GenerationRequest::new(model.model_id().id, prompts()).with_sampling(plain.clone());
    let gens = model.generate(request).await.unwrap();
    // The character whose first occurrence ends the completions at the most different places.
    let mut chars: Vec<char> = gens.iter().flat_map(|g| g.completion.chars()).filter(|c| !c.is_whitespace()).collect();
    chars.sort_unstable();
    chars.dedup();
    let ends = |c: char| {
        let mut at: Vec<Option<usize>> = gens.iter().map(|g| g.completion.chars().position(|x| x == c)).collect();
        at.sort_unstable();
        at.dedup();
        at.len()
    };
    let best = chars.iter().copied().max_by_key(|&c| (ends(c), std::cmp::Reverse(c)));
    let stop = best.map(|c| vec![c.to_string()]).unwrap_or_default();
    plain.with_stop(stop)
}

#[tokio::test]
async fn captured_states_equal_the_extraction_pass() {
    for &arch in ARCHS {
        // Decode 3 rows at once: the 5 prompts join as rows leave.
        let Some(model) = load(arch, 3) else { return };
        let info = model.model_info();
        let l = info.num_layers;
        let reads = vec![(Site::Resid, (0..=l).collect::<Vec<_>>()), (Site::MlpOut, (0..l).collect())];
        assert!(Generator::capabilities(&model).capture_states);
        assert_eq!(model.states_model().as_ref(), Some(&info));
        // Stop strings (taken from the completions themselves) end some completions at
        // different steps; the others run to max_tokens.
        let sampling = stopping(&model, 12).await;
        // Every readout on two of them, the two plain ones on the others.
        let readouts = match arch {
            "llama" | "gemma2" => &[Readout::Last, Readout::Mean, Readout::LastPrompt, Readout::MeanCompletion][..],
            _ => &[Readout::Last, Readout::Mean][..],
        };
        for readout in readouts.iter().cloned() {
            let positions = readout.positions();
            let request = GenerationRequest::new(model.model_id().id, prompts()).with_sampling(sampling.clone());
            let capture = StateCapture::new(info.clone(), reads.clone(), readout.clone());
            let (gens, acts) = model.generate_capturing(request.clone(), capture).await.unwrap();
            assert_eq!(gens, model.generate(request).await.unwrap(), "{arch}: the same completions");
            let lens: Vec<usize> = gens.iter().map(|g| g.token_ids.as_ref().unwrap().len()).collect();
            let distinct: std::collections::BTreeSet<_> = lens.iter().collect();
            assert!(distinct.len() >= 2, "{arch}: completions of different lengths ({lens:?})");
            let ids: Vec<Vec<u32>> = gens.iter().map(|g| g.full_token_ids().unwrap()).collect();
            let mut req = ActivationRequest::new(Inputs::TokenIds(ids), reads[0].1.clone())
                .with_positions(positions)
                .with_batch_size(2);
            req.more_sites = reads[1..].to_vec();
            // The extraction pass reads the readout's span of each prompt + completion.
            let spans = gens.iter().map(|g| {
                let (p, all) = (g.prompt_token_ids.as_ref().unwrap().len(), g.full_token_ids().unwrap().len());
                match readout {
                    Readout::LastPrompt => Span::new(0, p),
                    Readout::MeanCompletion => Span::new(p, all),
                    _ => Span::new(0, all),
                }
            });
            req.spans = Some(spans.collect());
            let extracted = model.extract(req).await.unwrap();
            let mut worst = 0f32;
            for (site, layers) in &reads {
                for &layer in layers {
                    let (a, b) = (acts.at(*site, layer).unwrap(), extracted.at(*site, layer).unwrap());
                    assert_eq!(a.shape, b.shape, "{arch} {site} {layer}");
                    let e = relative_error(&a.data, &b.data);
                    assert!(e <= TOLERANCE, "{arch} {readout} {site} layer {layer}: error {e}");
                    worst = worst.max(e);
                }
            }
            eprintln!("{arch} {readout}: completion lengths {lens:?}, worst error {worst:e}");
        }
    }
}

#[tokio::test]
async fn capture_refuses_steering_another_model_and_all() {
    let Some(model) = load("llama", 4) else { return };
    let info = model.model_info();
    let request = GenerationRequest::new(model.model_id().id, prompts()).with_sampling(SamplingParams::greedy(2));
    let all = StateCapture::new(info.clone(), vec![(Site::Resid, vec![1])], Positions::All);
    assert!(model.generate_capturing(request.clone(), all).await.is_err());
    let mut other = info.clone();
    other.dtype = "bf16".into();
    let other = StateCapture::new(other, vec![(Site::Resid, vec![1])], Positions::Last);
    assert!(model.generate_capturing(request, other).await.is_err());
}

/// Generates with candle without capturing (as any other generator would).
#[derive(Debug)]
struct Plain(CandleBackend);

#[async_trait]
impl Generator for Plain {
    async fn generate(&self, r: GenerationRequest) -> Result<Vec<Generation>> {
        self.0.generate(r).await
    }
    fn model_id(&self) -> ModelId {
        self.0.model_id()
    }
    fn capabilities(&self) -> Capabilities {
        let mut c = Generator::capabilities(&self.0);
        c.capture_states = false;
        c
    }
}

fn labelled(n: usize) -> PromptSet {
    let lines: String = (0..n)
        .map(|i| {
            let words = "word ".repeat(i % 5);
            format!("{{\"id\":\"p{i}\",\"text\":\"Prompt {i}: {words}so\",\"label\":\"{}\"}}\n", i % 2)
        })
        .collect();
    PromptSet::parse("set", "set.jsonl", lines.as_bytes(), PromptFormat::labelled()).unwrap()
}

#[tokio::test]
async fn a_candle_sweep_reads_its_activations_while_generating() {
    let Some(model) = load("llama", 8) else { return };
    let set = labelled(20); // two blocks of the cache grid: 16 + 4
    let l = model.model_info().num_layers;
    for readout in [Readout::Last, Readout::Mean, Readout::LastPrompt, Readout::MeanCompletion] {
        let config = SweepConfig::new((0..=l).collect())
            .with_positions(readout.clone())
            // Generate calls of 7 prompts, two at once: calls straddle the blocks.
            .with_batch_size(7)
            .with_generation_in_flight(2)
            .with_sampling(Some(SamplingParams::greedy(6).with_stop(vec!["e".into()])))
            .with_probe(sweep::ProbeConfig::default().with_folds(2));
        let cache = MemoryCache::new();
        let passes = model.forward_passes();
        let first = sweep::run(SweepParts::new(&model, &cache).with_generator(&model), &set, &config).await.unwrap();
        let s = &first.summary;
        assert_eq!(model.forward_passes(), passes, "{readout}: no extraction pass");
        assert_eq!((s.generations_generated, s.extract_calls), (20, 0), "{readout}: {s:?}");
        assert_eq!(s.pass_reuse.map(|r| (r.reused, r.extra_passes)), Some((20, 0)), "{readout}: {s:?}");
        assert!(s.to_string().contains("20 inputs read from the generation pass"), "{s}");

        // Again, and at another batch size: everything from the cache.
        for batch in [7, 3] {
            let again = sweep::run(
                SweepParts::new(&model, &cache).with_generator(&model),
                &set,
                &config.clone().with_batch_size(batch),
            )
            .await
            .unwrap();
            let s = &again.summary;
            assert_eq!((s.generations_cached, s.extract_calls, s.layers_cached), (20, 0, l + 1), "{s:?}");
            assert_eq!(s.pass_reuse, None, "{s:?}");
            assert_eq!(model.forward_passes(), passes);
        }

        // The same sweep with a generator that does not capture extracts, and agrees.
        let fresh = MemoryCache::new();
        let (captured, _) =
            sweep::features(SweepParts::new(&model, &cache).with_generator(&model), &set, &config).await.unwrap();
        let plain = Plain(model.clone());
        let (extracted, s) =
            sweep::features(SweepParts::new(&model, &fresh).with_generator(&plain), &set, &config).await.unwrap();
        assert!(s.extract_calls > 0 && s.pass_reuse.is_none(), "{s:?}");
        for (slot, t) in &extracted {
            let e = relative_error(&captured[slot].data, &t.data);
            assert!(e <= TOLERANCE, "{readout} {slot:?}: error {e}");
        }
    }
}
