//! The demo's fixture, made locally in Rust (no Python, no download): a small random-weight
//! Llama in Hugging Face layout (`config.json`, `model.safetensors`, a byte-level BPE
//! `tokenizer.json` trained here with the tokenizers crate) and a labelled prompt set.
//!
//! The label of a prompt is which of two word groups (animals or tools) its subject comes
//! from. The subject sits mid-sentence, so at the last position the label is only readable
//! where attention has mixed earlier tokens in: layer 0 (the embedding of a shared final
//! word) sits at chance, later layers rise above it, even with random weights.

use std::collections::HashMap;
use std::path::Path;

use probe_core::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
};

/// Shape of the demo model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelShape {
    pub(crate) layers: usize,
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) intermediate: usize,
}

/// The demo's default shape: 6 blocks, hidden 128, 2 heads of 64.
pub(crate) const SHAPE: ModelShape = ModelShape { layers: 6, hidden: 128, heads: 2, intermediate: 256 };

const ANIMALS: &[&str] = &["cat", "dog", "horse", "rabbit", "tiger", "sparrow", "otter", "goat", "mouse", "whale"];
const TOOLS: &[&str] = &["hammer", "wrench", "shovel", "chisel", "ladder", "drill", "saw", "rake", "spanner", "pliers"];
const ADJECTIVES: &[&str] =
    &["small", "old", "red", "quiet", "heavy", "bright", "muddy", "strange", "little", "green", "broken", "clean"];
const VERBS: &[&str] =
    &["sits", "waits", "rests", "stays", "lies", "was found", "is seen", "stands", "appeared", "remained"];
const PLACES: &[&str] = &["barn", "garden", "shed", "river", "kitchen", "field", "garage", "forest", "yard", "attic"];
const FILLER: &[&str] = &[
    "the", "a", "near", "by", "in", "under", "behind", "today", "again", "every", "morning", "evening", "while", "it",
    "rains", "we", "saw", "that", "and", "then", "left", "there",
];

/// One sentence: `the <adj> <subject> <verb> <prep> the <place> <time> .`
fn sentence(rng: &mut StdRng, subject: &str) -> String {
    let pick = |rng: &mut StdRng, xs: &[&str]| xs[rng.random_range(0..xs.len())].to_owned();
    let adj = pick(rng, ADJECTIVES);
    let verb = pick(rng, VERBS);
    let prep = pick(rng, &["near", "by", "in", "under", "behind"]);
    let place = pick(rng, PLACES);
    let time = pick(rng, &["today", "again", "every morning", "every evening", "while it rains"]);
    format!("The {adj} {subject} {verb} {prep} the {place} {time}.")
}

/// Writes `n` labelled prompts (half animals, half tools, interleaved) as JSON lines.
pub(crate) fn write_prompts(path: &Path, n: usize, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::new();
    for i in 0..n {
        let (group, label) = if i % 2 == 0 { (ANIMALS, "animal") } else { (TOOLS, "tool") };
        let subject = group[rng.random_range(0..group.len())];
        let line =
            serde_json::json!({ "id": format!("demo-{i:04}"), "text": sentence(&mut rng, subject), "label": label });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| Error::io(path.display(), e))
}

/// Trains a byte-level BPE tokenizer on generated text and saves it as `tokenizer.json`;
/// returns (vocabulary size, bos id, eos id).
fn write_tokenizer(dir: &Path) -> Result<(usize, u32, u32)> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| Error::backend("tokenizers", e);
    let mut rng = StdRng::seed_from_u64(7);
    let mut corpus: Vec<String> = Vec::new();
    for _ in 0..4000 {
        let subject = if rng.random_bool(0.5) { ANIMALS } else { TOOLS };
        let word = subject[rng.random_range(0..subject.len())];
        corpus.push(sentence(&mut rng, word));
        let k = rng.random_range(4..12);
        let words: Vec<&str> = (0..k).map(|_| FILLER[rng.random_range(0..FILLER.len())]).collect();
        corpus.push(words.join(" "));
    }
    let specials = ["<s>", "</s>", "<unk>"];
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(600)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials.iter().map(|s| AddedToken::from(s.to_string(), true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))))
            .with_post_processor(None)
            .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
            .build()
            .map_err(err)?;
    tokenizer.train(&mut trainer, corpus.iter()).map_err(err)?;
    let bos = tokenizer.token_to_id("<s>").ok_or_else(|| Error::invalid("tokenizer", "no <s> after training"))?;
    let eos = tokenizer.token_to_id("</s>").ok_or_else(|| Error::invalid("tokenizer", "no </s> after training"))?;
    let template = TemplateProcessing::builder()
        .try_single("<s> $A")
        .map_err(|e| Error::invalid("tokenizer template", e))?
        .try_pair("<s> $A <s> $B:1")
        .map_err(|e| Error::invalid("tokenizer template", e))?
        .special_tokens(vec![("<s>", bos)])
        .build()
        .map_err(|e| Error::invalid("tokenizer template", e))?;
    tokenizer.with_post_processor(Some(PostProcessorWrapper::Template(template)));
    let vocab = tokenizer.get_vocab_size(true);
    tokenizer.save(dir.join("tokenizer.json"), false).map_err(err)?;
    let tok_config = serde_json::json!({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
    });
    let p = dir.join("tokenizer_config.json");
    std::fs::write(&p, tok_config.to_string()).map_err(|e| Error::io(p.display(), e))?;
    Ok((vocab, bos, eos))
}

/// Standard normal samples (Box–Muller) scaled by `std`.
fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f32 = rng.random::<f32>().max(1e-12);
        let u2: f32 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f32::consts::PI * u2;
        out.push(r * t.cos() * std);
        out.push(r * t.sin() * std);
    }
    out.truncate(n);
    out
}

/// Writes the model folder: tokenizer, `config.json` and deterministic random weights
/// (normal, std 0.02, as transformers initialises Llama; norms 1).
pub(crate) fn write_model(dir: &Path, shape: ModelShape, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    let (vocab, bos, eos) = write_tokenizer(dir)?;
    let ModelShape { layers, hidden, heads, intermediate } = shape;
    let head_dim = hidden / heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "torch_dtype": "float32",
    });
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&config).unwrap_or_default())
        .map_err(|e| Error::io(p.display(), e))?;

    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, rng: &mut StdRng, ones: bool| {
        let n = shape.iter().product();
        let data = if ones { vec![1.0; n] } else { normal(rng, n, 0.02) };
        tensors.push((name, shape, data));
    };
    add("model.embed_tokens.weight".into(), vec![vocab, hidden], &mut rng, false);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), vec![hidden], &mut rng, true);
        add(format!("{p}.post_attention_layernorm.weight"), vec![hidden], &mut rng, true);
        for proj in ["q_proj", "k_proj", "v_proj"] {
            add(format!("{p}.self_attn.{proj}.weight"), vec![heads * head_dim, hidden], &mut rng, false);
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![hidden, heads * head_dim], &mut rng, false);
        add(format!("{p}.mlp.gate_proj.weight"), vec![intermediate, hidden], &mut rng, false);
        add(format!("{p}.mlp.up_proj.weight"), vec![intermediate, hidden], &mut rng, false);
        add(format!("{p}.mlp.down_proj.weight"), vec![hidden, intermediate], &mut rng, false);
    }
    add("model.norm.weight".into(), vec![hidden], &mut rng, true);
    add("lm_head.weight".into(), vec![vocab, hidden], &mut rng, false);

    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), b) in tensors.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), b).map_err(|e| Error::backend("safetensors", e))?;
        views.push((name.clone(), view));
    }
    let meta: HashMap<String, String> = [("format".to_owned(), "pt".to_owned())].into_iter().collect();
    safetensors::serialize_to_file(views, Some(meta), &dir.join("model.safetensors"))
        .map_err(|e| Error::backend("safetensors", e))?;
    let gen_cfg = serde_json::json!({ "bos_token_id": bos, "eos_token_id": eos });
    let p = dir.join("generation_config.json");
    std::fs::write(&p, gen_cfg.to_string()).map_err(|e| Error::io(p.display(), e))
}
