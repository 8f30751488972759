//! The vLLM client against a real vLLM CPU server serving a fixture model folder.
//!
//! `scripts/test` starts it with `scripts/start-vllm fixtures/models/llama PORT LOG` and sets
//! PROBE_TEST_VLLM_URL (its base URL) and PROBE_TEST_VLLM_MODEL (the folder, which is also
//! the served model name). Without them these tests say SKIPPED (and fail under
//! PROBE_REQUIRE_SERVICES=1).
#![cfg(feature = "vllm")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use probe_backends::vllm::VllmGenerator;
use probe_core::testing::{generator_conformance, require_service};
use probe_core::{Error, Generation, GenerationRequest, Generator, SamplingParams};

const PROMPTS: &[&str] = &[
    "Hello",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog while the farmer sleeps in the barn.",
    "Paris is the capital of",
    "Numbers like 12345 and symbols like #@! are tokenised too, aren't they? Yes: they are, byte by byte.",
    "one two three four five six seven eight nine ten eleven twelve",
];

fn service() -> Option<(String, String)> {
    let url = require_service("PROBE_TEST_VLLM_URL")?;
    let model = require_service("PROBE_TEST_VLLM_MODEL")?;
    Some((url, model))
}

fn client(urls: Vec<String>, model: &str) -> VllmGenerator {
    VllmGenerator::builder()
        .urls(urls)
        .model(model)
        .request_timeout(Duration::from_secs(300))
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
        .probe_interval(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn prompts() -> Vec<String> {
    PROMPTS.iter().map(|s| s.to_string()).collect()
}

fn ids(g: &[Generation]) -> Vec<Vec<u32>> {
    g.iter().map(|g| g.token_ids.clone().expect("vLLM returns token ids")).collect()
}

#[tokio::test]
async fn conformance_against_a_real_server() {
    let Some((url, model)) = service() else { return };
    let g = client(vec![url], &model);
    assert_eq!(g.check_servers().await.unwrap(), 1, "the server serves {model}");
    generator_conformance(&g, &model, &PROMPTS[..3]).await;
    assert_eq!(g.model_id().id, model);
}

/// The reference folder make_fixtures.py writes next to the models (OUT/reference/<arch>).
fn reference_of(model: &str) -> Option<PathBuf> {
    let m = Path::new(model);
    let r = m.parent()?.parent()?.join("reference").join(m.file_name()?).join("reference.json");
    r.exists().then_some(r)
}

#[tokio::test]
async fn greedy_equals_transformers_reference_tokens() {
    let Some((url, model)) = service() else { return };
    let Some(reference) = reference_of(&model) else {
        panic!("no reference.json next to {model}: make_fixtures.py writes OUT/reference/<arch>/reference.json");
    };
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let ref_prompts: Vec<String> = serde_json::from_value(r["prompts"].clone()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(r["generated_ids"].clone()).unwrap();
    let max_new = r["max_new_tokens"].as_u64().unwrap() as u32;
    let g = client(vec![url], &model);
    let req = GenerationRequest::new(&model, ref_prompts).with_sampling(SamplingParams::greedy(max_new));
    let got = g.generate(req).await.unwrap();
    assert_eq!(ids(&got), want, "vLLM greedy tokens equal transformers' generate (from {})", reference.display());
}

#[cfg(feature = "candle")]
#[tokio::test]
async fn greedy_equals_the_candle_backend() {
    use probe_backends::candle::{CandleBackend, CandleOptions};
    let Some((url, model)) = service() else { return };
    let candle = CandleBackend::load(Path::new(&model), CandleOptions::default()).unwrap();
    let vllm = client(vec![url], &model);
    let req = GenerationRequest::new(&model, prompts()).with_sampling(SamplingParams::greedy(16));
    let a = vllm.generate(req.clone()).await.unwrap();
    let b = candle.generate(req).await.unwrap();
    assert_eq!(ids(&a), ids(&b), "same greedy token ids from vLLM and candle");
    for (x, y) in a.iter().zip(&b) {
        // vLLM's incremental detokenizer holds back a trailing incomplete UTF-8 sequence
        // (byte-level BPE tokens that end mid-character); candle decodes it as U+FFFD.
        // The token ids above are the exact comparison; the texts agree up to that tail.
        let candle_text = y.completion.trim_end_matches('\u{FFFD}');
        assert_eq!(x.completion, candle_text, "same text for {:?}", x.prompt);
        assert_eq!(x.finish_reason, y.finish_reason, "same finish reason for {:?}", x.prompt);
    }
}

#[tokio::test]
async fn many_prompts_over_two_urls_keep_their_order() {
    let Some((url, model)) = service() else { return };
    let many: Vec<String> = (0..48).map(|i| format!("{} {i}", PROMPTS[i % PROMPTS.len()])).collect();
    let req = GenerationRequest::new(&model, many.clone()).with_sampling(SamplingParams::greedy(6));
    // One request per prompt: the reference answers, independent of batching.
    let one_by_one = VllmGenerator::builder().url(&url).model(&model).batch_size(1).build().unwrap();
    let want = one_by_one.generate(req.clone()).await.unwrap();
    // The same server twice, batches of 5, many in flight.
    let two =
        VllmGenerator::builder().urls([url.clone(), format!("{url}/")]).model(&model).batch_size(5).build().unwrap();
    let got = two.generate(req).await.unwrap();
    assert_eq!(got.len(), many.len());
    for (i, g) in got.iter().enumerate() {
        assert_eq!((g.prompt_index, g.prompt.as_str()), (i, many[i].as_str()), "prompt order");
    }
    assert_eq!(got, want, "batched over two URLs equals one prompt per request");
    assert_eq!(two.stats().requests, 10, "48 prompts in batches of 5");
}

#[tokio::test]
async fn a_dead_url_does_not_stop_the_run() {
    let Some((url, model)) = service() else { return };
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let g = VllmGenerator::builder()
        .urls([dead, url])
        .model(&model)
        .batch_size(1)
        .probe_timeout(Duration::from_secs(2))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap();
    let req = GenerationRequest::new(&model, prompts()).with_sampling(SamplingParams::greedy(4));
    let got = g.generate(req).await.expect("the live server does the work");
    assert_eq!(got.len(), PROMPTS.len());
    for (i, x) in got.iter().enumerate() {
        assert_eq!(x.prompt, PROMPTS[i]);
    }
}

#[tokio::test]
async fn a_4xx_carries_the_servers_message() {
    let Some((url, model)) = service() else { return };
    let g = client(vec![url], &model);
    // The server runs with --max-model-len 512.
    let req = GenerationRequest::new(&model, prompts()).with_sampling(SamplingParams::greedy(5000));
    let e = g.generate(req).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("400") && msg.contains("512"), "the server's own message: {msg}");
    assert_eq!(g.stats().retries, 0, "a 4xx is not retried");
}

#[tokio::test]
async fn the_api_key_is_never_shown() {
    let Some((url, model)) = service() else { return };
    let secret = "sk-probe-test-secret-0123456789";
    // The test server runs without --api-key and ignores the header: generation works.
    let g = VllmGenerator::builder().url(&url).model(&model).api_key(secret).build().unwrap();
    let req = GenerationRequest::new(&model, prompts()).with_sampling(SamplingParams::greedy(2));
    g.generate(req.clone()).await.unwrap();
    let e = g.generate(req.with_sampling(SamplingParams::greedy(5000))).await.unwrap_err();
    let shown = format!("{g:?} {g:#?} {e} {e:?}");
    assert!(!shown.contains(secret), "the key leaked: {shown}");
    assert!(shown.contains("******"));
}
