//! The memory model against published figures, and its arithmetic as properties.

use std::path::PathBuf;

use probe_core::Positions;
use probe_core::plan::memory::{
    extraction_working_set, kv_bytes_for_sequence, kv_bytes_per_token, param_count, vllm_activation_peak,
    vllm_kv_cache, weight_bytes,
};
use probe_core::plan::units::GIB;
use probe_core::plan::{Dtype, ExtractionShape, ModelSpec, VllmMemory};
use proptest::prelude::*;

fn spec(name: &str) -> ModelSpec {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs").join(format!("{name}.json"));
    ModelSpec::from_path(&p).expect("fixture config")
}

fn gib(x: f64) -> u64 {
    (x * GIB as f64).round() as u64
}

/// |got / want − 1| ≤ tol.
fn close(what: &str, got: f64, want: f64, tol: f64) {
    let rel = (got / want - 1.0).abs();
    assert!(rel <= tol, "{what}: predicted {got}, published {want} (off by {:.3} %)", rel * 100.0);
}

#[test]
fn llama3_8b_weights_and_kv() {
    let s = spec("llama-3-8b");
    assert_eq!(param_count(&s).total(), 8_030_261_248, "Llama-3-8B has 8,030,261,248 parameters");
    let w = weight_bytes(&s, Dtype::Bf16);
    close("Llama-3-8B bf16 weights (GiB)", w as f64 / GIB as f64, 14.96, 0.005);
    assert_eq!(kv_bytes_per_token(&s, Dtype::Bf16), 128 * 1024, "128 KiB of KV per token");
    assert_eq!(weight_bytes(&s, Dtype::F32), 2 * w, "f32 is twice bf16");
    assert_eq!(weight_bytes(&s, Dtype::F16), w);
    // AWQ/GPTQ int4 checkpoints of Llama-3-8B weigh about 5.73 GB.
    close("Llama-3-8B int4 weights (GB)", weight_bytes(&s, Dtype::Int4) as f64 / 1e9, 5.73, 0.01);
    let int8 = weight_bytes(&s, Dtype::Int8);
    assert!(weight_bytes(&s, Dtype::Int4) < int8 && int8 < w);
}

#[test]
fn vllm_a100_40gb_log() {
    // vLLM on a 40 GiB A100, utilization 0.90: total 39.50 GiB, weights 14.96, non-torch
    // 0.10, activation peak 9.37 → KV 11.12 GiB → 5,691 blocks of 16 tokens.
    let s = spec("llama-3-8b");
    let kv = vllm_kv_cache(&VllmMemory {
        total_bytes: gib(39.50),
        gpu_memory_utilization: 0.90,
        weights_bytes: weight_bytes(&s, Dtype::Bf16),
        non_torch_bytes: gib(0.10),
        activation_peak_bytes: gib(9.37),
        block_size: 16,
        kv_bytes_per_token: kv_bytes_per_token(&s, Dtype::Bf16),
    });
    close("KV cache (GiB)", kv.kv_cache_bytes as f64 / GIB as f64, 11.12, 0.005);
    close("KV blocks", kv.kv_blocks as f64, 5691.0, 0.01);
    assert_eq!(kv.kv_tokens(16), kv.kv_blocks * 16);
}

#[test]
fn vllm_h100_log_and_profile_estimate() {
    // vLLM PR 10511's sanity log, Llama-3-8B on an H100: total 79.22 GiB × 0.90 = 71.29 GiB;
    // weights 14.96, non-torch 1.79, activation peak 1.26 → available KV 53.29 GiB.
    let s = spec("llama-3-8b");
    let kv = vllm_kv_cache(&VllmMemory {
        total_bytes: gib(79.22),
        gpu_memory_utilization: 0.90,
        weights_bytes: weight_bytes(&s, Dtype::Bf16),
        non_torch_bytes: gib(1.79),
        activation_peak_bytes: gib(1.26),
        block_size: 16,
        kv_bytes_per_token: kv_bytes_per_token(&s, Dtype::Bf16),
    });
    close("requested (GiB)", kv.requested_bytes as f64 / GIB as f64, 71.29, 0.005);
    close("KV cache (GiB)", kv.kv_cache_bytes as f64 / GIB as f64, 53.29, 0.005);
    // The estimate of the profile peak (8192 batched tokens, 256 sequences) vs the measured 1.26 GiB.
    let peak = vllm_activation_peak(&s, Dtype::Bf16, 8192, 256);
    close("activation peak estimate (GiB)", peak as f64 / GIB as f64, 1.26, 0.05);
}

#[test]
fn tied_embeddings_counted_once() {
    let s = spec("llama-3.2-1b");
    assert!(s.tie_word_embeddings);
    assert_eq!(param_count(&s).total(), 1_235_814_400, "Llama-3.2-1B has 1.24 B parameters");
    assert_eq!(param_count(&s).lm_head, 0);
    close("Llama-3.2-1B bf16 weights (GB)", weight_bytes(&s, Dtype::Bf16) as f64 / 1e9, 2.47, 0.005);
    assert_eq!(kv_bytes_per_token(&s, Dtype::Bf16), 32 * 1024);
}

#[test]
fn qwen_models_in_bf16() {
    let q72 = spec("qwen2.5-72b-instruct");
    assert!(q72.qkv_bias && !q72.o_bias && q72.sliding_layers() == 0);
    assert_eq!(param_count(&q72).total(), 72_706_203_648, "Qwen2.5-72B has 72.7 B parameters");
    let w72 = weight_bytes(&q72, Dtype::Bf16);
    close("Qwen2.5-72B bf16 checkpoint (GB)", w72 as f64 / 1e9, 145.41, 0.005);
    assert!(w72 > 80 * GIB, "72B in bf16 does not fit one 80 GiB card");
    assert_eq!(kv_bytes_per_token(&q72, Dtype::Bf16), 320 * 1024, "80 layers × 8 × 128 × 2 × 2");

    let q32 = spec("qwen3-32b");
    assert!(q32.qk_norm && !q32.qkv_bias);
    assert_eq!(param_count(&q32).total(), 32_762_123_264, "Qwen3-32B has 32.8 B parameters");
    let w32 = weight_bytes(&q32, Dtype::Bf16);
    close("Qwen3-32B bf16 weights (GiB)", w32 as f64 / GIB as f64, 61.03, 0.005);
    assert!(w32 > 40 * GIB && w32 < 80 * GIB, "fits an 80 GB card, not a 40 GB one");
    assert_eq!(kv_bytes_per_token(&q32, Dtype::Bf16), 256 * 1024);
}

#[test]
fn sliding_windows_cap_the_kv_cache() {
    let g = spec("gemma-2-9b");
    assert_eq!(param_count(&g).total(), 9_241_705_984, "Gemma-2-9B has 9.24 B parameters");
    assert_eq!(g.sliding_layers(), 21, "Gemma 2 alternates sliding and global layers");
    assert_eq!(g.layer_windows[0], Some(4096));
    assert_eq!(g.layer_windows[1], None);
    let per = kv_bytes_per_token(&g, Dtype::Bf16);
    assert_eq!(per, 336 * 1024, "42 layers × 8 × 256 × 2 × 2");
    assert_eq!(kv_bytes_for_sequence(&g, Dtype::Bf16, 4096), 4096 * per, "within the window nothing is capped");
    assert_eq!(kv_bytes_for_sequence(&g, Dtype::Bf16, 8192), 8192 * per / 2 + 4096 * per / 2);

    let m = spec("mistral-7b-v0.1");
    assert_eq!(param_count(&m).total(), 7_241_732_096, "Mistral-7B has 7.24 B parameters");
    let per = kv_bytes_per_token(&m, Dtype::Bf16);
    assert_eq!(kv_bytes_for_sequence(&m, Dtype::Bf16, 32768), 4096 * per, "every layer capped at 4096");
}

#[test]
fn extraction_working_set_has_no_logits() {
    let s = spec("llama-3-8b");
    let last = extraction_working_set(&s, &ExtractionShape::new(8, 512, 33, Positions::Last, Dtype::Bf16));
    let all = extraction_working_set(&s, &ExtractionShape::new(8, 512, 33, Positions::All, Dtype::Bf16));
    // 33 layers × 8 × 512 × 4096 × 4 bytes more for every position.
    assert_eq!(all - last, 33 * 8 * 512 * 4096 * 4 - 33 * 8 * 4096 * 4);
    // No logits: far below 8 × 512 × 128256 × 4 bytes (2 GiB of f32 logits).
    assert!(last < 8 * 512 * 128_256 * 4, "{last}");
}

fn arb_spec() -> impl Strategy<Value = ModelSpec> {
    (1usize..8, 1usize..5, 1usize..64, 1usize..4000, 1usize..40, any::<bool>(), prop::option::of(1usize..512)).prop_map(
        |(heads_per_kv, kv, layers, vocab, mult, tie, window)| {
            let heads = heads_per_kv * kv;
            let hd = 16;
            let json = serde_json::json!({
                "model_type": "mistral", "hidden_size": heads * hd, "intermediate_size": mult * 32,
                "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
                "vocab_size": vocab, "tie_word_embeddings": tie, "sliding_window": window,
            });
            ModelSpec::from_json(&json.to_string()).expect("valid")
        },
    )
}

proptest! {
    #[test]
    fn more_tokens_never_need_less_kv(s in arb_spec(), a in 0u64..100_000, b in 0u64..100_000) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(kv_bytes_for_sequence(&s, Dtype::Bf16, lo) <= kv_bytes_for_sequence(&s, Dtype::Bf16, hi));
        prop_assert!(kv_bytes_for_sequence(&s, Dtype::Bf16, hi) <= hi * kv_bytes_per_token(&s, Dtype::Bf16));
    }

    #[test]
    fn bigger_batches_never_need_less(s in arb_spec(), b in 1u64..64, seq in 1u64..2048, extra in 1u64..8, all in any::<bool>()) {
        let p = if all { Positions::All } else { Positions::Last };
        let layers = s.num_layers as u64 + 1;
        let small = extraction_working_set(&s, &ExtractionShape::new(b, seq, layers, p, Dtype::Bf16));
        prop_assert!(small < extraction_working_set(&s, &ExtractionShape::new(b + extra, seq, layers, p, Dtype::Bf16)));
        prop_assert!(small < extraction_working_set(&s, &ExtractionShape::new(b, seq + extra, layers, p, Dtype::Bf16)));
    }

    #[test]
    fn narrower_dtypes_weigh_less(s in arb_spec()) {
        let f32 = weight_bytes(&s, Dtype::F32);
        let bf16 = weight_bytes(&s, Dtype::Bf16);
        prop_assert_eq!(f32, 2 * bf16);
        prop_assert!(weight_bytes(&s, Dtype::Int8) < bf16);
        prop_assert!(weight_bytes(&s, Dtype::Int4) < weight_bytes(&s, Dtype::Int8));
        prop_assert_eq!(bf16, 2 * param_count(&s).total());
    }

    #[test]
    fn kv_blocks_fit_and_grow_with_utilization(total in 1u64..200, u1 in 0.05f64..1.0, u2 in 0.05f64..1.0, w in 0u64..100, peak in 0u64..10) {
        let m = |u| VllmMemory {
            total_bytes: total * GIB, gpu_memory_utilization: u, weights_bytes: w * GIB / 2,
            non_torch_bytes: GIB / 10, activation_peak_bytes: peak * GIB / 4, block_size: 16, kv_bytes_per_token: 131_072,
        };
        let (lo, hi) = (vllm_kv_cache(&m(u1.min(u2))), vllm_kv_cache(&m(u1.max(u2))));
        prop_assert!(lo.kv_blocks <= hi.kv_blocks);
        prop_assert!((hi.kv_blocks * 16 * 131_072) as i128 <= hi.kv_cache_bytes.max(0));
    }
}
