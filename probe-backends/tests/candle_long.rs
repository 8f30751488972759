//! The candle backend's attention on long inputs against transformers (eager, f32, each text
//! alone; scripts/python/long_reference.py run with PROBE_PYTHON) on fixture models
//! (PROBE_FIXTURES) whose `max_position_embeddings` is raised to fit: three texts of about
//! 1,100, 1,030 and 300 tokens as one right-padded batch, extracted with a chunk budget small
//! enough for chunks of 64 query rows (so the causal and sliding-window skips and the masks of
//! partial chunks all run), then decoded greedily together (rows of different lengths in one
//! batched decode step, sliding windows shorter than every row).
#![cfg(feature = "candle")]

mod words;

use std::path::{Path, PathBuf};

use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::testing::require_service;
use probe_core::{ActivationExtractor, ActivationRequest, GenerationRequest, Generator, Positions, SamplingParams};
use serde::Deserialize;

/// Full attention (grouped-query, 2 heads over 1), a sliding window of 16 on every layer, and
/// Gemma 2's window of 8 on every other layer with soft-capped scores.
const MODELS: &[&str] = &["llama", "mistral", "gemma2"];
const LENGTHS: [usize; 3] = [1100, 1030, 300];
const NEW_TOKENS: u32 = 8;

#[derive(Deserialize)]
struct Reference {
    token_ids: Vec<Vec<u32>>,
    generated_ids: Vec<Vec<u32>>,
}

/// `arch`'s fixture in `dir` with room for the long texts (the same weights, linked).
fn long_copy(root: &Path, arch: &str, dir: &Path) -> PathBuf {
    let src = root.join("models").join(arch);
    let dst = dir.join(arch);
    std::fs::create_dir_all(&dst).expect("model folder");
    for f in std::fs::read_dir(&src).expect("fixture folder") {
        let f = f.expect("entry");
        if f.file_name() == "config.json" {
            let mut c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(f.path()).expect("config")).expect("json");
            c["max_position_embeddings"] = 4096.into();
            std::fs::write(dst.join("config.json"), c.to_string()).expect("write config");
        } else {
            std::fs::hard_link(f.path(), dst.join(f.file_name())).expect("link");
        }
    }
    dst
}

fn text_of(model: &CandleBackend, tokens: usize, seed: u64) -> String {
    words::text_of(tokens, seed, |t| model.tokenize(t).expect("tokenize").len())
}

fn reference(dir: &Path, arch: &str) -> (Reference, std::collections::HashMap<String, Vec<f32>>) {
    let meta: Reference =
        serde_json::from_slice(&std::fs::read(dir.join(arch).join("reference.json")).expect("reference.json"))
            .expect("json");
    let bytes = std::fs::read(dir.join(arch).join("reference.safetensors")).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let data = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, data)
        })
        .collect();
    (meta, tensors)
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "same length");
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let den = b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-12);
    num / den
}

#[tokio::test]
async fn long_ragged_inputs_match_transformers() {
    let Some(root) = require_service("PROBE_FIXTURES").map(PathBuf::from) else { return };
    let Some(python) = require_service("PROBE_PYTHON") else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    // Chunks of 64 query rows: 3 rows × 2 heads × 1,100 keys × 4 bytes each.
    let chunk = 64 * 3 * 2 * LENGTHS[0] as u64 * 4;
    let options = CandleOptions::default().with_attention_chunk_bytes(Some(chunk)).with_default_batch_size(3);
    let models: Vec<(String, CandleBackend)> = MODELS
        .iter()
        .map(|arch| {
            let folder = long_copy(&root, arch, dir.path());
            let m = CandleBackend::load(&folder, options.clone()).unwrap_or_else(|e| panic!("load {arch}: {e}"));
            (folder.to_string_lossy().into_owned(), m)
        })
        .collect();
    let texts: Vec<String> = LENGTHS.iter().zip(1..).map(|(&n, seed)| text_of(&models[0].1, n, seed)).collect();
    let request = serde_json::json!({
        "models": MODELS.iter().zip(&models).map(|(a, (f, _))| (a.to_string(), f.clone().into()))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "texts": texts,
        "max_new_tokens": NEW_TOKENS,
    });
    std::fs::write(dir.path().join("request.json"), request.to_string()).expect("request");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/long_reference.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(dir.path().join("request.json"))
        .arg(dir.path().join("reference"))
        .output()
        .expect("start PROBE_PYTHON");
    assert!(out.status.success(), "long_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));

    for (arch, (_, model)) in MODELS.iter().zip(&models) {
        let (meta, tensors) = reference(&dir.path().join("reference"), arch);
        let lens: Vec<usize> = meta.token_ids.iter().map(Vec::len).collect();
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(model.tokenize(text).expect("tokenize"), meta.token_ids[i], "{arch}: tokens of text #{i}");
        }
        assert!(lens[0] >= 1024 && lens[1] >= 1024 && lens[2] < lens[1], "{arch}: long ragged texts: {lens:?}");
        let layers: Vec<usize> = (0..=4).collect();
        let mut worst = 0f32;
        for positions in [Positions::Last, Positions::Mean] {
            let req = ActivationRequest::texts(texts.clone(), layers.clone()).with_positions(positions);
            let acts = model.extract(req).await.unwrap_or_else(|e| panic!("{arch} extract: {e}"));
            assert_eq!(acts.token_counts, lens, "{arch}: one padded batch");
            for la in &acts.layers {
                let name = format!("{positions}.{}", la.layer);
                let err = rel_err(&la.tensor.data, &tensors[&name]);
                assert!(err <= 1e-5, "{arch} {name}: max relative error {err:e} > 1e-5");
                worst = worst.max(err);
            }
        }
        let req = GenerationRequest::new(model.model_id().id, texts.clone())
            .with_sampling(SamplingParams::greedy(NEW_TOKENS));
        let gens = model.generate(req).await.unwrap_or_else(|e| panic!("{arch} generate: {e}"));
        for (i, (g, want)) in gens.iter().zip(&meta.generated_ids).enumerate() {
            assert_eq!(g.token_ids.as_ref(), Some(want), "{arch}: greedy tokens after text #{i} ({} tokens)", lens[i]);
        }
        println!("{arch}: {lens:?} tokens, worst max relative error {worst:.2e}, greedy tokens equal");
    }
}
