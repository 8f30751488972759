//! Extraction throughput of the candle backend on a random Llama (8 layers, hidden 512,
//! 8 heads, 2 kv heads, intermediate 1408) written to a temp folder, so no Python and no
//! download is needed: capturing 1 layer vs all layers, stopping at L/2 vs running all, and
//! computing in bf16 vs f32 (group `candle_extract_dtype`, every layer captured); and greedy
//! generation of prompts of different lengths decoded one sequence at a time vs batched
//! (group `candle_generate`, new tokens/s); and 2,048 tokens per iteration as 16 × 128, 4 × 512
//! or 1 × 2,048 (group `candle_extract_seq_len`: attention's share grows with the length); and
//! 16 inputs that share their first 160 ids, the prefix run once vs every input whole (group
//! `candle_extract_templated`). The generation prompts are words repeated, so they share
//! their shorter ones' ids: the prefill runs that prefix once.
//!
//! `cargo bench -p probe-benches --bench candle` (tokens/s is criterion's throughput).

use std::fmt::Write as _;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::{ActivationExtractor, ActivationRequest, GenerationRequest, Generator, SamplingParams};

/// As in the probe binaries: large buffers are reused instead of mapped per op.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LAYERS: usize = 8;
const HIDDEN: usize = 512;
const HEADS: usize = 8;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const INTERMEDIATE: usize = 1408;
const VOCAB: usize = 4096;
const BATCH: usize = 16;
const SEQ: usize = 128;
const GEN_TOKENS: usize = 16;

/// Deterministic values uniform in [-scale, scale] (xorshift), no extra dependency.
fn random(n: usize, scale: f32, state: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            ((*state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes config.json, model.safetensors (random f32 weights) and a word-level tokenizer.json.
fn write_model(dir: &Path) {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32, state: &mut u64| {
        let n = shape.iter().product();
        let data = random(n, scale, state).into_iter().map(|v| v + offset).collect();
        tensors.push((name, shape, data));
    };
    add("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN], 0.5, 0.0, &mut state);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        let w = 1.0 / (HIDDEN as f32).sqrt();
        add(format!("{p}.self_attn.q_proj.weight"), vec![HEADS * HEAD_DIM, HIDDEN], w, 0.0, &mut state);
        add(format!("{p}.self_attn.k_proj.weight"), vec![KV_HEADS * HEAD_DIM, HIDDEN], w, 0.0, &mut state);
        add(format!("{p}.self_attn.v_proj.weight"), vec![KV_HEADS * HEAD_DIM, HIDDEN], w, 0.0, &mut state);
        add(format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HEADS * HEAD_DIM], w, 0.0, &mut state);
        add(format!("{p}.mlp.gate_proj.weight"), vec![INTERMEDIATE, HIDDEN], w, 0.0, &mut state);
        add(format!("{p}.mlp.up_proj.weight"), vec![INTERMEDIATE, HIDDEN], w, 0.0, &mut state);
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, INTERMEDIATE],
            1.0 / (INTERMEDIATE as f32).sqrt(),
            0.0,
            &mut state,
        );
        add(format!("{p}.input_layernorm.weight"), vec![HIDDEN], 0.1, 1.0, &mut state);
        add(format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN], 0.1, 1.0, &mut state);
    }
    add("model.norm.weight".into(), vec![HIDDEN], 0.1, 1.0, &mut state);

    let mut header = String::from("{");
    let mut offset = 0usize;
    for (k, (name, shape, data)) in tensors.iter().enumerate() {
        let end = offset + data.len() * 4;
        let shape: Vec<String> = shape.iter().map(usize::to_string).collect();
        let sep = if k == 0 { "" } else { "," };
        write!(
            header,
            "{sep}\"{name}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            shape.join(",")
        )
        .expect("write to string");
        offset = end;
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = Vec::with_capacity(8 + header.len() + offset);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for (_, _, data) in &tensors {
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(dir.join("model.safetensors"), bytes).expect("write weights");
    let config = format!(
        r#"{{"model_type":"llama","hidden_size":{HIDDEN},"intermediate_size":{INTERMEDIATE},
        "num_hidden_layers":{LAYERS},"num_attention_heads":{HEADS},"num_key_value_heads":{KV_HEADS},
        "head_dim":{HEAD_DIM},"vocab_size":{VOCAB},"rms_norm_eps":1e-6,"rope_theta":10000.0,
        "max_position_embeddings":4096,"tie_word_embeddings":true,"hidden_act":"silu"}}"#
    );
    std::fs::write(dir.join("config.json"), config).expect("write config");
    let tokenizer = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;
    std::fs::write(dir.join("tokenizer.json"), tokenizer).expect("write tokenizer");
}

fn bench(c: &mut Criterion) {
    probe_benches::keep_freed_memory();
    let dir = tempfile::tempdir().expect("temp dir");
    write_model(dir.path());
    let model = CandleBackend::load(dir.path(), CandleOptions::default()).expect("load the random model");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut state = 7u64;
    let ids: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| {
            random(SEQ, 1.0, &mut state).into_iter().map(|v| ((v + 1.0) * 0.5 * (VOCAB - 1) as f32) as u32).collect()
        })
        .collect();
    let mut group = c.benchmark_group("candle_extract_llama_8x512");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    // capture_1_layer vs capture_all_layers: same depth, capture cost; stop_at_half vs
    // capture_1_layer: early stop.
    let cases: [(&str, Vec<usize>); 3] = [
        ("capture_1_layer", vec![LAYERS]),
        ("capture_all_layers", (0..=LAYERS).collect()),
        ("stop_at_half", vec![LAYERS / 2]),
    ];
    for (name, layers) in cases {
        let req = ActivationRequest::token_ids(ids.clone(), layers).with_batch_size(BATCH);
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(model.extract(req.clone())).expect("extract"));
        });
    }
    group.finish();

    // The same request computed in f32 and in bf16 (weights converted at load).
    let mut group = c.benchmark_group("candle_extract_dtype");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    let req = ActivationRequest::token_ids(ids, (0..=LAYERS).collect()).with_batch_size(BATCH);
    for dtype in ["f32", "bf16"] {
        let options = CandleOptions::default().with_dtype(dtype.parse().expect("dtype"));
        let model = CandleBackend::load(dir.path(), options).expect("load the random model");
        group.bench_function(dtype, |b| {
            b.iter(|| rt.block_on(model.extract(req.clone())).expect("extract"));
        });
    }
    group.finish();

    // The same number of tokens in longer inputs: attention's work grows with the length (the
    // causal half of seq² per input), the projections' does not.
    let mut group = c.benchmark_group("candle_extract_seq_len");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2048));
    for seq in [128usize, 512, 2048] {
        let batch = 2048 / seq;
        let ids: Vec<Vec<u32>> = (0..batch)
            .map(|_| {
                random(seq, 1.0, &mut state)
                    .into_iter()
                    .map(|v| ((v + 1.0) * 0.5 * (VOCAB - 1) as f32) as u32)
                    .collect()
            })
            .collect();
        let req = ActivationRequest::token_ids(ids, (0..=LAYERS).collect()).with_batch_size(batch);
        group.bench_function(format!("{batch}x{seq}"), |b| {
            b.iter(|| rt.block_on(model.extract(req.clone())).expect("extract"));
        });
    }
    group.finish();

    // A templated set: 16 inputs that start with the same 160 ids (one instruction) and end
    // with 24 of their own, every layer: the prefix run once per batch vs every input whole.
    let mut group = c.benchmark_group("candle_extract_templated");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * (160 + 24)) as u64));
    let to_ids =
        |v: Vec<f32>| -> Vec<u32> { v.into_iter().map(|v| ((v + 1.0) * 0.5 * (VOCAB - 1) as f32) as u32).collect() };
    let instruction = to_ids(random(160, 1.0, &mut state));
    let ids: Vec<Vec<u32>> =
        (0..BATCH).map(|_| [instruction.clone(), to_ids(random(24, 1.0, &mut state))].concat()).collect();
    let req = ActivationRequest::token_ids(ids, (0..=LAYERS).collect()).with_batch_size(BATCH);
    for (name, share) in [("shared_prefix", true), ("whole_inputs", false)] {
        let model = CandleBackend::load(dir.path(), CandleOptions::default().with_shared_prefixes(share))
            .expect("load the random model");
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(model.extract(req.clone())).expect("extract"));
        });
    }
    group.finish();

    // Generation: 16 prompts of 8 to 128 tokens, 16 new tokens each (the model has no EOS),
    // decoded one sequence at a time vs 16 together (continuous batching).
    let mut group = c.benchmark_group("candle_generate");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * GEN_TOKENS) as u64));
    let prompts: Vec<String> = (0..BATCH).map(|i| vec!["a"; 8 + i * (SEQ - 8) / (BATCH - 1)].join(" ")).collect();
    for batch in [1, BATCH] {
        let model = CandleBackend::load(dir.path(), CandleOptions::default().with_default_batch_size(batch))
            .expect("load the random model");
        let req = GenerationRequest::new(model.model_id().id, prompts.clone())
            .with_sampling(SamplingParams::greedy(GEN_TOKENS as u32));
        group.bench_function(format!("batch_{batch}"), |b| {
            b.iter(|| rt.block_on(model.generate(req.clone())).expect("generate"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
