//! The vLLM extractor against the real vLLM CPU server of the test command that writes hidden
//! states (PROBE_TEST_VLLM_URL3, its folder PROBE_TEST_VLLM_HIDDEN_STATES, serving
//! PROBE_TEST_VLLM_MODEL = the `llama` fixture; PROBE_TEST_VLLM_URL is a server without the flags): every layer against transformers' reference
//! (PROBE_FIXTURES) and against candle, files deleted after reading, a server that goes away
//! mid-extraction, and a server without the flags refused with them.
#![cfg(all(feature = "vllm", feature = "candle"))]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_backends::vllm::{VllmExtractor, VllmGenerator};
use probe_core::testing::require_service;
use probe_core::{
    ActivationExtractor, ActivationRequest, Error, GenerationRequest, Generator, PassReuse, Positions, SamplingParams,
    Span,
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One test at a time: the file check counts what the server's folder holds.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Deserialize)]
struct Reference {
    num_layers: usize,
    prompts: Vec<String>,
}

struct Env {
    url: String,
    plain_url: String,
    model: String,
    hs_dir: PathBuf,
    fixtures: PathBuf,
}

fn env() -> Option<Env> {
    Some(Env {
        url: require_service("PROBE_TEST_VLLM_URL3")?,
        plain_url: require_service("PROBE_TEST_VLLM_URL")?,
        model: require_service("PROBE_TEST_VLLM_MODEL")?,
        hs_dir: PathBuf::from(require_service("PROBE_TEST_VLLM_HIDDEN_STATES")?),
        fixtures: PathBuf::from(require_service("PROBE_FIXTURES")?),
    })
}

fn extractor(urls: Vec<String>, model: &str) -> VllmExtractor {
    let client = VllmGenerator::builder()
        .urls(urls)
        .model(model)
        .failure_threshold(1)
        .probe_interval(Duration::from_secs(30))
        .build()
        .expect("client");
    VllmExtractor::new(Arc::new(client), Path::new(model)).expect("extractor")
}

fn reference(root: &Path) -> (Reference, HashMap<String, Vec<f32>>) {
    let dir = root.join("reference").join("llama");
    let meta: Reference = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (name, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        })
        .collect();
    (meta, tensors)
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    num / b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-12)
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_layer_matches_transformers_and_candle_and_files_are_deleted() {
    let Some(env) = env() else { return };
    let _serial = SERIAL.lock().await;
    let (meta, want) = reference(&env.fixtures);
    assert_eq!(Path::new(&env.model), env.fixtures.join("models").join("llama"), "the server serves the fixture");
    let vllm = extractor(vec![env.url.clone()], &env.model);
    let candle = CandleBackend::load(Path::new(&env.model), CandleOptions::default()).unwrap();
    let before = files(&env.hs_dir);
    let layers: Vec<usize> = (0..=meta.num_layers).collect();
    let mut worst = 0f32;
    for positions in [Positions::Last, Positions::Mean] {
        let req = ActivationRequest::texts(meta.prompts.clone(), layers.clone()).with_positions(positions);
        let got = vllm.extract(req.clone()).await.unwrap_or_else(|e| panic!("vllm extract: {e}"));
        let by_candle = candle.extract(req).await.unwrap();
        assert_eq!(got.token_counts, by_candle.token_counts, "same tokens as candle");
        for (la, lc) in got.layers.iter().zip(&by_candle.layers) {
            let name = format!("{positions}.{}", la.layer);
            let err = rel_err(&la.tensor.data, &want[&name]);
            assert!(err <= 1e-4, "{name}: max relative error to transformers {err:e} > 1e-4");
            let err_c = rel_err(&la.tensor.data, &lc.tensor.data);
            assert!(err_c <= 1e-4, "{name}: max relative error to candle {err_c:e} > 1e-4");
            worst = worst.max(err).max(err_c);
        }
    }
    println!("vllm extractor: worst max relative error {worst:.2e} (transformers and candle, every layer)");
    let all = vllm
        .extract(ActivationRequest::texts(meta.prompts[..2].to_vec(), vec![1]).with_positions(Positions::All))
        .await
        .unwrap();
    assert_eq!(all.mask.as_ref().map(|m| m.shape.len()), Some(2), "all positions come with a mask");
    let left: Vec<_> = files(&env.hs_dir).difference(&before).cloned().collect();
    assert!(left.is_empty(), "the extractor deletes every file it read: {left:?} left in {}", env.hs_dir.display());
}

/// Generation through the extractor keeps each completion's hidden states: a readout within
/// the generation pass (the prompt and every completion token but the last) reads them, one
/// that reaches the last token takes a pass of its own; both equal candle on the same tokens.
#[tokio::test]
async fn the_generation_pass_serves_readouts_within_it() {
    let Some(env) = env() else { return };
    let _serial = SERIAL.lock().await;
    let (meta, _) = reference(&env.fixtures);
    let vllm = extractor(vec![env.url.clone()], &env.model);
    let candle = CandleBackend::load(Path::new(&env.model), CandleOptions::default()).unwrap();
    let before = files(&env.hs_dir);
    let prompts = meta.prompts[..6].to_vec();
    let layers: Vec<usize> = (0..=meta.num_layers).collect();
    let generate = || async {
        let req = GenerationRequest::new(env.model.clone(), prompts.clone()).with_sampling(SamplingParams::greedy(6));
        let gens = vllm.generate(req).await.unwrap_or_else(|e| panic!("generate on the extraction server: {e}"));
        let ids: Vec<Vec<u32>> = gens.iter().map(|g| g.full_token_ids().expect("token ids")).collect();
        let prompt_lens: Vec<usize> = gens.iter().map(|g| g.prompt_token_ids.as_ref().unwrap().len()).collect();
        (ids, prompt_lens)
    };
    let compare = |got: &probe_core::Activations, want: &probe_core::Activations, what: &str| {
        for (a, b) in got.layers.iter().zip(&want.layers) {
            let err = rel_err(&a.tensor.data, &b.tensor.data);
            assert!(err <= 1e-4, "{what}, layer {}: max relative error to candle {err:e} > 1e-4", a.layer);
        }
    };
    // Within the pass: the prompt's last token; the mean over all but the last token.
    let (ids, prompt_lens) = generate().await;
    let start = vllm.pass_reuse().unwrap();
    let last_prompt: Vec<Span> = prompt_lens.iter().map(|&p| Span::new(0, p)).collect();
    let req = ActivationRequest::token_ids(ids.clone(), layers.clone()).with_spans(last_prompt);
    let got = vllm.extract(req.clone()).await.unwrap();
    compare(&got, &candle.extract(req).await.unwrap(), "last prompt token");
    let r = vllm.pass_reuse().unwrap().since(start);
    assert_eq!(
        PassReuse { reused: r.reused, extra_passes: r.extra_passes, ..PassReuse::default() },
        PassReuse { reused: 6, extra_passes: 0, ..PassReuse::default() },
        "the prompt's last token was computed by the generation pass"
    );
    // Past the pass: the completion's last token.
    let (ids, _) = generate().await;
    let start = vllm.pass_reuse().unwrap();
    let req = ActivationRequest::token_ids(ids.clone(), layers.clone()).with_positions(Positions::Mean);
    let got = vllm.extract(req.clone()).await.unwrap();
    compare(&got, &candle.extract(req).await.unwrap(), "mean of every token");
    let r = vllm.pass_reuse().unwrap().since(start);
    assert_eq!(
        PassReuse { reused: r.reused, extra_passes: r.extra_passes, ..PassReuse::default() },
        PassReuse { reused: 0, extra_passes: 6, ..PassReuse::default() },
        "the last sampled token was never fed back: one pass each"
    );
    // Generated but never extracted: the files go with the extractor.
    generate().await;
    drop(vllm);
    let left: Vec<_> = files(&env.hs_dir).difference(&before).cloned().collect();
    assert!(left.is_empty(), "every generation-pass file is deleted: {left:?} left in {}", env.hs_dir.display());
}

#[tokio::test]
async fn a_server_without_the_flags_is_refused_with_them() {
    let Some(env) = env() else { return };
    let _serial = SERIAL.lock().await;
    let err = extractor(vec![env.plain_url.clone()], &env.model)
        .extract(ActivationRequest::texts(vec!["Hello".into()], vec![1]))
        .await
        .expect_err("a server that writes no hidden states");
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    for flag in ["--speculative-config", "extract_hidden_states", "--kv-transfer-config", "--enable-prefix-caching"] {
        assert!(msg.contains(flag), "the error names {flag}: {msg}");
    }
    assert!(!msg.contains("allow_custom_save_path"), "{msg}");
}

/// An HTTP/1.1 stand-in for a server: forwards `serve` requests to `upstream`, then goes away
/// (every later request, on any connection, is cut before it reaches the server, so the server
/// writes no file nobody reads).
async fn dying_proxy(upstream: String, serve: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (http, upstream, count) = (http.clone(), upstream.clone(), count.clone());
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let head_end = loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let mut words = head.split_whitespace();
                    let (method, path) =
                        (words.next().unwrap_or("GET").to_owned(), words.next().unwrap_or("/").to_owned());
                    if method == "POST" && count.fetch_add(1, Ordering::SeqCst) >= serve {
                        return; // gone: the connection closes unanswered
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    let rb = if method == "POST" {
                        http.post(format!("{upstream}{path}")).header("content-type", "application/json").body(body)
                    } else {
                        http.get(format!("{upstream}{path}"))
                    };
                    let Ok(resp) = rb.send().await else { return };
                    let status = resp.status().as_u16();
                    let bytes = resp.bytes().await.unwrap_or_default();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        bytes.len()
                    );
                    if sock.write_all(head.as_bytes()).await.is_err() || sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, served)
}

#[tokio::test]
async fn a_server_that_goes_away_mid_extraction_is_survived() {
    let Some(env) = env() else { return };
    let _serial = SERIAL.lock().await;
    let (proxy, served) = dying_proxy(env.url.clone(), 2).await;
    // Enough inputs that the pool sends the proxy more than it serves, however it balances.
    let prompts: Vec<String> = (0..32).map(|i| format!("Input number {i} is here")).collect();
    let req = ActivationRequest::texts(prompts, vec![0, 2, 4]).with_positions(Positions::Mean);
    let both = extractor(vec![proxy, env.url.clone()], &env.model);
    let got = both.extract(req.clone()).await.expect("the other server takes over");
    assert!(served.load(Ordering::SeqCst) > 2, "the proxy went away during the extraction");
    assert!(both.client().stats().retries >= 1, "{:?}", both.client().stats());
    let alone = extractor(vec![env.url.clone()], &env.model).extract(req).await.unwrap();
    for (a, b) in got.layers.iter().zip(&alone.layers) {
        assert_eq!(a.tensor.data, b.tensor.data, "layer {}: same values, same order", a.layer);
    }
}
