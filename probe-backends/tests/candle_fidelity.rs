//! The candle backend against transformers on the fixture models (PROBE_FIXTURES, made by
//! scripts/python/make_fixtures.py): every layer at `last` and `mean`, greedy tokens, the
//! conformance suites, and the layer-range and seed contracts.
#![cfg(feature = "candle")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use probe_backends::candle::{CandleBackend, CandleDType, CandleOptions};
use probe_core::testing::{extractor_conformance, generator_conformance, require_service};
use probe_core::{
    ActivationExtractor, ActivationRequest, Error, FinishReason, GenerationRequest, Generator, Positions,
    SamplingParams,
};
use serde::Deserialize;

/// (model folder, reference): the `gemma3` folder is laid out as gemma-3-12b-it ships
/// (Gemma3ForConditionalGeneration, 4.x config, nested weights, a vision tower beside them)
/// around the `gemma3_text` fixture's language model, so that reference applies to it;
/// `qwen3_moe_fused` is `qwen3_moe` with its experts stacked as transformers 5 keeps them;
/// `<arch>_v4` is `<arch>` with its config.json as transformers 4.x wrote it (`rope_theta` /
/// `rope_scaling`, GPT-NeoX's `rotary_pct` / `rotary_emb_base`). `llama_dynamic` (dynamic NTK)
/// and `qwen3_yarn` (YaRN) have a `max_position_embeddings` / `original_max_position_embeddings`
/// the longer prompts and generations exceed; `phi3`'s reference has a prompt whose greedy
/// generation crosses longrope's threshold.
const MODELS: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("llama3", "llama3"),
    ("mistral", "mistral"),
    ("qwen2", "qwen2"),
    ("gemma2", "gemma2"),
    ("qwen3", "qwen3"),
    ("gemma3_text", "gemma3_text"),
    ("gemma3", "gemma3_text"),
    ("mixtral", "mixtral"),
    ("qwen3_moe", "qwen3_moe"),
    ("qwen3_moe_fused", "qwen3_moe"),
    ("olmo2", "olmo2"),
    ("phi3", "phi3"),
    ("gpt2", "gpt2"),
    ("gpt2_v4", "gpt2"),
    ("gpt_neox", "gpt_neox"),
    ("gpt_neox_v4", "gpt_neox"),
    ("llama_dynamic", "llama_dynamic"),
    ("llama_dynamic_v4", "llama_dynamic"),
    ("qwen3_yarn", "qwen3_yarn"),
    ("qwen3_yarn_v4", "qwen3_yarn"),
];

#[derive(Deserialize)]
struct Reference {
    num_layers: usize,
    hidden_size: usize,
    prompts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    generated_ids: Vec<Vec<u32>>,
    /// transformers' greedy generate over all the prompts as one left-padded batch (absent from
    /// fixtures made before it was added: the batched test then fails naming it).
    #[serde(default)]
    batched_generated_ids: Option<Vec<Vec<u32>>>,
    max_new_tokens: u32,
}

fn fixtures() -> Option<PathBuf> {
    require_service("PROBE_FIXTURES").map(PathBuf::from)
}

fn load(root: &Path, arch: &str) -> CandleBackend {
    CandleBackend::load(&root.join("models").join(arch), CandleOptions::default())
        .unwrap_or_else(|e| panic!("load {arch}: {e}"))
}

fn reference(root: &Path, arch: &str) -> (Reference, HashMap<String, Vec<f32>>) {
    let dir = root.join("reference").join(arch);
    let meta: Reference =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json")).expect("json");
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name} is f32");
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
async fn every_layer_matches_transformers() {
    let Some(root) = fixtures() else { return };
    let mut worst_all = 0f32;
    for &(arch, refname) in MODELS {
        let model = load(&root, arch);
        let (meta, tensors) = reference(&root, refname);
        let info = model.model_info();
        assert_eq!((info.num_layers, info.hidden_size), (meta.num_layers, meta.hidden_size), "{arch} shape");
        for (i, prompt) in meta.prompts.iter().enumerate() {
            assert_eq!(model.tokenize(prompt).expect("tokenize"), meta.token_ids[i], "{arch}: tokens of {prompt:?}");
        }
        let layers: Vec<usize> = (0..=meta.num_layers).collect();
        let mut worst = (0f32, String::new());
        for positions in [Positions::Last, Positions::Mean] {
            // Batched (padded) texts, so padding and masks are part of what is checked.
            let req = ActivationRequest::texts(meta.prompts.clone(), layers.clone()).with_positions(positions);
            let acts = model.extract(req).await.unwrap_or_else(|e| panic!("{arch} extract: {e}"));
            for la in &acts.layers {
                let name = format!("{positions}.{}", la.layer);
                let want = &tensors[&name];
                let err = rel_err(&la.tensor.data, want);
                assert!(err <= 1e-4, "{arch} {name}: max relative error {err:e} > 1e-4");
                if err > worst.0 {
                    worst = (err, name);
                }
            }
        }
        println!("{arch}: worst max relative error {:.2e} at {}", worst.0, worst.1);
        worst_all = worst_all.max(worst.0);
    }
    println!("all architectures: worst max relative error {worst_all:.2e}");
}

#[tokio::test]
async fn greedy_tokens_equal_transformers_generate() {
    let Some(root) = fixtures() else { return };
    for &(arch, refname) in MODELS {
        let model = load(&root, arch);
        let (meta, _) = reference(&root, refname);
        let id = model.model_id().id;
        let req =
            GenerationRequest::new(id, meta.prompts.clone()).with_sampling(SamplingParams::greedy(meta.max_new_tokens));
        let out = model.generate(req).await.unwrap_or_else(|e| panic!("{arch} generate: {e}"));
        for (g, want) in out.iter().zip(&meta.generated_ids) {
            assert_eq!(g.token_ids.as_ref(), Some(want), "{arch}: greedy tokens of {:?}", g.prompt);
            let reason =
                if want.len() < meta.max_new_tokens as usize { FinishReason::Stop } else { FinishReason::Length };
            assert_eq!(g.finish_reason, reason, "{arch}: finish reason of {:?}", g.prompt);
        }
        println!("{arch}: greedy tokens equal transformers' for {} prompts", out.len());
    }
}

/// Architectures whose rotary frequencies transformers picks per forward pass from the longest
/// row of the batch (dynamic NTK, longrope: `dynamic_rope_update` reads `max(position_ids)`), so
/// its batched greedy tokens of a short prompt depend on the longer prompts beside it. Batched
/// decoding here gives every row its own frequencies, as if it ran alone: for these, the
/// unbatched reference is the one to equal.
const BATCH_DEPENDENT_ROPE: &[&str] = &["phi3", "llama_dynamic"];

/// The greedy tokens (`max_tokens` new ones) of `prompts` decoded `batch` sequences at a time.
async fn greedy_batched(root: &Path, arch: &str, prompts: &[String], max_tokens: u32, batch: usize) -> Vec<Vec<u32>> {
    let dir = root.join("models").join(arch);
    let model = CandleBackend::load(&dir, CandleOptions::default().with_default_batch_size(batch))
        .unwrap_or_else(|e| panic!("load {arch}: {e}"));
    let req =
        GenerationRequest::new(model.model_id().id, prompts.to_vec()).with_sampling(SamplingParams::greedy(max_tokens));
    let out = model.generate(req).await.unwrap_or_else(|e| panic!("{arch} generate (batch {batch}): {e}"));
    out.into_iter().map(|g| g.token_ids.expect("token ids")).collect()
}

#[tokio::test]
async fn greedy_tokens_equal_transformers_batched_generate() {
    let Some(root) = fixtures() else { return };
    for &(arch, refname) in MODELS {
        let (meta, _) = reference(&root, refname);
        let lens: Vec<usize> = meta.token_ids.iter().map(Vec::len).collect();
        let (short, long) = (lens.iter().min().expect("prompts"), lens.iter().max().expect("prompts"));
        assert!(long >= &(4 * short), "{arch}: prompts of very different lengths ({short} and {long} tokens)");
        let batched = meta.batched_generated_ids.as_ref().unwrap_or_else(|| {
            panic!("{arch}: reference.json has no batched_generated_ids (remake the fixtures: scripts/python/make_fixtures.py)")
        });
        let base = arch.trim_end_matches("_v4");
        let want = if BATCH_DEPENDENT_ROPE.contains(&base) { &meta.generated_ids } else { batched };
        // 3: prompts join as others finish (continuous batching); 1: one after another; all at once.
        for batch in [3, 1, meta.prompts.len()] {
            let got = greedy_batched(&root, arch, &meta.prompts, meta.max_new_tokens, batch).await;
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g, w, "{arch}: greedy tokens of prompt #{i} ({} tokens) decoded {batch} at a time", lens[i]);
            }
        }
        // One new token each: every sequence finishes at its prefill and the next prompts join.
        if arch == "llama" {
            let got = greedy_batched(&root, arch, &meta.prompts, 1, 3).await;
            let firsts: Vec<Vec<u32>> = want.iter().map(|w| w[..1].to_vec()).collect();
            assert_eq!(got, firsts, "{arch}: one token per prompt, 3 at a time");
        }
        println!("{arch}: batched greedy tokens equal transformers' batched generate");
    }
}

#[tokio::test]
async fn seeded_samples_do_not_depend_on_the_batch() {
    let Some(root) = fixtures() else { return };
    let (meta, _) = reference(&root, "llama3");
    let dir = root.join("models").join("llama3");
    let mut seen = Vec::new();
    // 1: one sequence at a time; 4: a prompt's 3 samples with room for no other; 64: all at once.
    for batch in [1, 4, 64] {
        let model = CandleBackend::load(&dir, CandleOptions::default().with_default_batch_size(batch)).expect("load");
        let s = SamplingParams::greedy(10).with_temperature(1.2).with_top_p(0.9).with_seed(7).with_n(3);
        let req = GenerationRequest::new(model.model_id().id, meta.prompts.clone()).with_sampling(s);
        seen.push(model.generate(req).await.unwrap_or_else(|e| panic!("batch {batch}: {e}")));
    }
    assert_eq!(seen[0].len(), 3 * meta.prompts.len());
    assert_eq!(seen[0], seen[1], "batch 1 and 4 give the same samples");
    assert_eq!(seen[0], seen[2], "batch 1 and 64 give the same samples");
}

#[tokio::test]
async fn conformance_suites_pass() {
    let Some(root) = fixtures() else { return };
    for &(arch, _) in MODELS {
        let model = load(&root, arch);
        extractor_conformance(
            &model,
            &["Hello", "The cat sat on the mat.", "A quick brown fox jumps over the lazy dog."],
        )
        .await;
        let id = model.model_id().id;
        generator_conformance(&model, &id, &["The cat", "Paris is the capital of"]).await;
    }
}

#[tokio::test]
async fn layer_above_the_last_is_refused_naming_it() {
    let Some(root) = fixtures() else { return };
    let model = load(&root, "llama");
    let l = model.model_info().num_layers;
    let err = model.extract(ActivationRequest::texts(vec!["x".into()], vec![1, l + 1])).await.expect_err("L+1");
    assert!(matches!(err, Error::InvalidInput { .. }) && err.to_string().contains(&(l + 1).to_string()), "{err}");
    let acts = model.extract(ActivationRequest::texts(vec!["x".into()], vec![l])).await.expect("layer L");
    assert_eq!(acts.layers[0].layer, l);
}

#[tokio::test]
async fn token_ids_and_texts_agree_and_all_positions_match_last() {
    let Some(root) = fixtures() else { return };
    let model = load(&root, "gemma2");
    let (meta, _) = reference(&root, "gemma2");
    let layers = vec![0, 2, meta.num_layers];
    let by_text = model.extract(ActivationRequest::texts(meta.prompts.clone(), layers.clone())).await.expect("texts");
    let by_ids =
        model.extract(ActivationRequest::token_ids(meta.token_ids.clone(), layers.clone())).await.expect("token ids");
    assert_eq!(by_text.token_counts, by_ids.token_counts);
    for (a, b) in by_text.layers.iter().zip(&by_ids.layers) {
        assert!(rel_err(&a.tensor.data, &b.tensor.data) <= 1e-5, "texts and their ids agree at layer {}", a.layer);
    }
    let all = model
        .extract(ActivationRequest::texts(meta.prompts.clone(), layers.clone()).with_positions(Positions::All))
        .await
        .expect("all positions");
    let h = meta.hidden_size;
    let seq = all.mask.as_ref().expect("mask").shape[1];
    for (la, last) in all.layers.iter().zip(&by_text.layers) {
        for (i, &count) in all.token_counts.iter().enumerate() {
            let at = (i * seq + count - 1) * h;
            let err = rel_err(&la.tensor.data[at..at + h], last.tensor.row(i));
            assert!(err <= 1e-4, "all-positions row {i} at its last token equals `last` (layer {}): {err}", la.layer);
            assert!(la.tensor.data[(i * seq + count) * h..(i + 1) * seq * h].iter().all(|&v| v == 0.0), "padding is 0");
        }
    }
}

#[tokio::test]
async fn sampling_is_deterministic_per_seed_and_stop_strings_cut() {
    let Some(root) = fixtures() else { return };
    let model = load(&root, "llama3");
    let id = model.model_id().id;
    let prompts = vec!["The cat".to_string(), "Paris is".to_string()];
    let s = |seed| SamplingParams::greedy(10).with_temperature(1.5).with_top_k(50).with_seed(seed).with_n(3);
    let a = model.generate(GenerationRequest::new(&id, prompts.clone()).with_sampling(s(1))).await.expect("seed 1");
    let b =
        model.generate(GenerationRequest::new(&id, prompts.clone()).with_sampling(s(1))).await.expect("seed 1 again");
    let c = model.generate(GenerationRequest::new(&id, prompts.clone()).with_sampling(s(2))).await.expect("seed 2");
    assert_eq!(a, b, "same seed, same samples");
    assert_ne!(a, c, "another seed, other samples");
    assert_eq!(a.len(), 6);
    let distinct: std::collections::BTreeSet<_> = a[..3].iter().map(|g| g.token_ids.clone()).collect();
    assert!(distinct.len() > 1, "the n samples of a prompt differ");

    // A stop string taken from a greedy completion: the completion ends right before it.
    let greedy = model
        .generate(GenerationRequest::new(&id, vec!["The cat".into()]).with_sampling(SamplingParams::greedy(12)))
        .await
        .expect("greedy");
    let text = greedy[0].completion.clone();
    let cut = text.char_indices().nth(text.chars().count() / 2).map(|(i, _)| i).expect("non-empty completion");
    let stop: String = text[cut..].chars().take(2).collect();
    let stopped = model
        .generate(
            GenerationRequest::new(&id, vec!["The cat".into()])
                .with_sampling(SamplingParams::greedy(12).with_stop(vec![stop.clone()])),
        )
        .await
        .expect("with a stop string");
    let first = text.find(&stop).expect("stop string occurs");
    assert_eq!(stopped[0].completion, text[..first], "completion cut before {stop:?}");
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn bf16_stays_close_to_the_f32_reference() {
    let Some(root) = fixtures() else { return };
    for &(arch, refname) in MODELS {
        let dir = root.join("models").join(arch);
        let model =
            CandleBackend::load(&dir, CandleOptions::default().with_dtype(CandleDType::BF16)).expect("bf16 load");
        assert_eq!(model.model_info().dtype, "bf16");
        let (meta, tensors) = reference(&root, refname);
        let layers: Vec<usize> = (0..=meta.num_layers).collect();
        let acts = model.extract(ActivationRequest::texts(meta.prompts.clone(), layers)).await.expect("bf16 extract");
        let worst = acts
            .layers
            .iter()
            .map(|la| rel_err(&la.tensor.data, &tensors[&format!("last.{}", la.layer)]))
            .fold(0f32, f32::max);
        println!("{arch} bf16: worst max relative error {worst:.2e} against the f32 reference");
        assert!(worst <= 5e-2, "{arch}: bf16 within 5e-2 of f32: {worst}");
    }
}

#[tokio::test]
async fn sharded_weights_with_an_index_load_the_same_model() {
    let Some(root) = fixtures() else { return };
    let src = root.join("models").join("mistral");
    let dir = tempfile::tempdir().expect("temp dir");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy");
    }
    let bytes = std::fs::read(src.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (k, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", k + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            part.iter().map(|n| (n.clone(), st.tensor(n).expect("tensor"))).collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(&file)).expect("write shard");
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).expect("index");

    let whole = load(&root, "mistral");
    let sharded = CandleBackend::load(dir.path(), CandleOptions::default()).expect("sharded load");
    let req = ActivationRequest::texts(vec!["The cat sat on the mat.".into()], vec![0, 2, 4]);
    let a = whole.extract(req.clone()).await.expect("whole");
    let b = sharded.extract(req).await.expect("sharded");
    assert_eq!(a.layers, b.layers, "the same weights give the same hidden states");
    assert_ne!(whole.model_info().id.revision, sharded.model_info().id.revision, "other files, other revision");
}
