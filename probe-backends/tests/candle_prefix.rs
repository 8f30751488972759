//! Inputs that start alike run their common prefix once (`CandleOptions::shared_prefixes`)
//! and give the values of running every input whole, on every architecture's fixture
//! (PROBE_FIXTURES): extraction at `last`, `mean` and `all`, spans inside and outside the
//! prefix, several sites, batched and not, with two templates (prefixes of different
//! lengths), an input that is nearly all prefix and one that shares nothing; generation's
//! greedy tokens (the rows decoding over the prefix's keys, held once), sampled ones (the
//! samples of a prompt decoding over its keys, held once), and the states it reads while
//! generating.
#![cfg(feature = "candle")]

mod archs;

use archs::{ARCHS, relative_error};
use std::path::PathBuf;

use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::testing::require_service;
use probe_core::{
    ActivationExtractor, ActivationRequest, GenerationRequest, Generator, Inputs, Positions, SamplingParams, Site,
    Span, StateCapture,
};

/// max |shared − whole| over max(1, max |whole|), f32.
const TOLERANCE: f32 = 1e-5;

fn load(arch: &str, share: bool) -> Option<CandleBackend> {
    let root = PathBuf::from(require_service("PROBE_FIXTURES")?);
    let options = CandleOptions::default().with_shared_prefixes(share).with_default_batch_size(4);
    Some(CandleBackend::load(&root.join("models").join(arch), options).expect("fixture model"))
}

/// Two templates (instructions of different lengths) before items of different lengths, an
/// input that is its template and one word, and one that shares nothing.
fn texts() -> Vec<String> {
    let long = "You are a careful reader. Read the statement below and answer whether it is true or \
                false, thinking about what the words mean before you answer.";
    let short = "Translate into French:";
    let items =
        ["The sky is green.", "Two and two make four.", "Water", "Paris is the capital of France and of fashion."];
    let mut out: Vec<String> = items.iter().map(|i| format!("{long} Statement: {i}")).collect();
    out.extend(items.iter().take(3).map(|i| format!("{short} {i}")));
    out.push(format!("{long} Statement"));
    out.push("Something else entirely.".into());
    out
}

fn ids(model: &CandleBackend) -> Vec<Vec<u32>> {
    texts().iter().map(|t| model.tokenize(t).expect("tokenizes")).collect()
}

#[tokio::test]
async fn a_shared_prefix_gives_the_values_of_whole_inputs() {
    for &arch in ARCHS {
        let (Some(whole), Some(shared)) = (load(arch, false), load(arch, true)) else { return };
        let l = whole.model_info().num_layers;
        let ids = ids(&whole);
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut worst = 0f32;
        for positions in [Positions::Last, Positions::Mean, Positions::All] {
            // The whole input; for last and mean also spans inside the prefix (its 3rd token)
            // and at the end (the last 2 tokens).
            let mut spans = vec![None];
            if positions != Positions::All {
                spans.push(Some(lens.iter().map(|_| Span::new(0, 3)).collect::<Vec<_>>()));
                spans.push(Some(lens.iter().map(|&n| Span::new(n - 2, n)).collect()));
            }
            for spans in spans {
                for batch in [1, 3, 16] {
                    let mut req = ActivationRequest::new(Inputs::TokenIds(ids.clone()), (0..=l).collect())
                        .with_positions(positions)
                        .with_batch_size(batch)
                        .with_more_site(Site::MlpOut, (0..l).collect())
                        .with_more_site(Site::Heads, vec![l - 1]);
                    req.spans = spans.clone();
                    let (a, b) = (shared.extract(req.clone()).await.unwrap(), whole.extract(req).await.unwrap());
                    assert_eq!((&a.mask, &a.token_counts), (&b.mask, &b.token_counts), "{arch}");
                    for (x, y) in a.layers.iter().zip(&b.layers) {
                        assert_eq!((x.site, x.layer, &x.tensor.shape), (y.site, y.layer, &y.tensor.shape));
                        let e = relative_error(&x.tensor.data, &y.tensor.data);
                        let at = format!("{arch} {positions:?} batch {batch} spans {spans:?} {} {}", x.site, x.layer);
                        assert!(e <= TOLERANCE, "{at}: error {e}");
                        worst = worst.max(e);
                    }
                }
            }
        }
        let (ran, all) = (shared.positions_run(), whole.positions_run());
        assert!(ran * 3 < all * 2, "{arch}: sharing ran {ran} positions, whole inputs {all}");
        eprintln!("{arch}: worst error {worst:e}; positions run {ran} shared, {all} whole");
    }
}

#[tokio::test]
async fn generating_after_a_shared_prefix_keeps_tokens_and_captured_states() {
    for &arch in ARCHS {
        let (Some(whole), Some(shared)) = (load(arch, false), load(arch, true)) else { return };
        let info = whole.model_info();
        let l = info.num_layers;
        let request = GenerationRequest::new(whole.model_id().id, texts()).with_sampling(SamplingParams::greedy(5));
        let (a, b) = (shared.generate(request.clone()).await.unwrap(), whole.generate(request.clone()).await.unwrap());
        assert_eq!(a, b, "{arch}: the same greedy completions");
        let (ran, all) = (shared.positions_run(), whole.positions_run());
        if arch == "phi3" {
            // Its rows may drop their keys at the longrope switch: each keeps all of its own.
            assert_eq!(ran, all, "{arch}: no prefix shared in generation");
        } else {
            assert!(ran < all, "{arch}: prefills after a shared prefix ran {ran} positions, whole prompts {all}");
        }
        // Sampled, 3 samples a prompt (which then share all of its keys): the same draws.
        let sampled =
            request.clone().with_sampling(SamplingParams::greedy(5).with_temperature(0.8).with_n(3).with_seed(7));
        let (a, b) = (shared.generate(sampled.clone()).await.unwrap(), whole.generate(sampled).await.unwrap());
        assert_eq!(a, b, "{arch}: the same sampled completions");
        let reads = vec![(Site::Resid, (0..=l).collect::<Vec<_>>()), (Site::MlpOut, vec![0])];
        for positions in [Positions::Last, Positions::Mean] {
            let capture = StateCapture::new(info.clone(), reads.clone(), positions);
            let (ga, sa) = shared.generate_capturing(request.clone(), capture.clone()).await.unwrap();
            let (gb, sb) = whole.generate_capturing(request.clone(), capture).await.unwrap();
            assert_eq!(ga, gb, "{arch} {positions:?}");
            for (x, y) in sa.layers.iter().zip(&sb.layers) {
                let e = relative_error(&x.tensor.data, &y.tensor.data);
                assert!(e <= TOLERANCE, "{arch} {positions:?} {} {}: error {e}", x.site, x.layer);
            }
        }
    }
}
