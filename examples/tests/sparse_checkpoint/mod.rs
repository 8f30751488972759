//! Sparse copies of published checkpoints: the real `config.json`, safetensors shards whose
//! headers list the real tensor names, shapes and dtypes with their data offsets, and no
//! weight bytes (each file is extended to its full length as a sparse file: nothing is
//! written or read past the header), an index, and a tiny `tokenizer.json`. The planner and
//! the folder checks read only `config.json` and the headers.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// One tensor: name, shape (dtype BF16).
type Spec = (String, Vec<u64>);

/// Writes `tensors` as `shards` safetensors files (filled in order, about equal in bytes)
/// plus `model.safetensors.index.json`.
fn write_shards(dir: &Path, tensors: &[Spec], shards: usize) {
    let bytes = |s: &[u64]| s.iter().product::<u64>() * 2;
    let total: u64 = tensors.iter().map(|(_, s)| bytes(s)).sum();
    let per = total.div_ceil(shards as u64);
    let mut groups: Vec<Vec<&Spec>> = vec![Vec::new()];
    let mut size = 0;
    for t in tensors {
        if size >= per && groups.len() < shards {
            groups.push(Vec::new());
            size = 0;
        }
        size += bytes(&t.1);
        groups.last_mut().unwrap().push(t);
    }
    let n = groups.len();
    let mut weight_map = serde_json::Map::new();
    for (i, group) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
        let mut offset = 0u64;
        for (t, shape) in group {
            let end = offset + bytes(shape);
            header.insert(
                t.clone(),
                serde_json::json!({ "dtype": "BF16", "shape": shape, "data_offsets": [offset, end] }),
            );
            weight_map.insert(t.clone(), name.clone().into());
            offset = end;
        }
        let mut text = serde_json::to_string(&header).unwrap();
        while !text.len().is_multiple_of(8) {
            text.push(' ');
        }
        let mut f = File::create(dir.join(&name)).unwrap();
        f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        // The data: a hole of the right length.
        f.set_len(8 + text.len() as u64 + offset).unwrap();
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
    let tokenizer = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
        "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"[UNK]":0,"the":1},"unk_token":"[UNK]"}}"#;
    std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap();
}

fn config(name: &str) -> String {
    let path = format!("{}/../probe-core/tests/fixtures/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The decoder blocks of a Llama-style model under `prefix` (`model.layers`).
#[allow(clippy::too_many_arguments)]
fn blocks(prefix: &str, layers: usize, h: u64, i: u64, heads: u64, kv: u64, d: u64, gemma: bool) -> Vec<Spec> {
    let mut out = Vec::new();
    for l in 0..layers {
        let p = |n: &str| format!("{prefix}.{l}.{n}");
        out.push((p("input_layernorm.weight"), vec![h]));
        out.push((p("mlp.down_proj.weight"), vec![h, i]));
        out.push((p("mlp.gate_proj.weight"), vec![i, h]));
        out.push((p("mlp.up_proj.weight"), vec![i, h]));
        out.push((p("post_attention_layernorm.weight"), vec![h]));
        if gemma {
            out.push((p("post_feedforward_layernorm.weight"), vec![h]));
            out.push((p("pre_feedforward_layernorm.weight"), vec![h]));
        }
        out.push((p("self_attn.k_norm.weight"), vec![d]));
        out.push((p("self_attn.k_proj.weight"), vec![kv * d, h]));
        out.push((p("self_attn.o_proj.weight"), vec![h, heads * d]));
        out.push((p("self_attn.q_norm.weight"), vec![d]));
        out.push((p("self_attn.q_proj.weight"), vec![heads * d, h]));
        out.push((p("self_attn.v_proj.weight"), vec![kv * d, h]));
    }
    out
}

/// `Qwen/Qwen3-32B` as published: 64 blocks, hidden 5120, 17 shards (65.5 GB of bf16).
pub(crate) fn qwen3_32b(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config("qwen3-32b.json")).unwrap();
    let (h, v) = (5120, 151_936);
    let mut t = vec![("model.embed_tokens.weight".to_owned(), vec![v, h])];
    t.extend(blocks("model.layers", 64, h, 25_600, 64, 8, 128, false));
    t.push(("model.norm.weight".to_owned(), vec![h]));
    t.push(("lm_head.weight".to_owned(), vec![v, h]));
    write_shards(dir, &t, 17);
}

/// `google/gemma-3-12b-it` as published: `Gemma3ForConditionalGeneration`, the language
/// model under `language_model.model.*` (48 blocks, hidden 3840, tied embeddings), the
/// SigLIP vision tower and the projector beside it, 5 shards.
pub(crate) fn gemma3_12b_it(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config("gemma-3-12b-it.json")).unwrap();
    let (h, v) = (3840, 262_208);
    let mut t = vec![("language_model.model.embed_tokens.weight".to_owned(), vec![v, h])];
    t.extend(blocks("language_model.model.layers", 48, h, 15_360, 16, 8, 256, true));
    t.push(("language_model.model.norm.weight".to_owned(), vec![h]));
    t.push(("multi_modal_projector.mm_input_projection_weight".to_owned(), vec![1152, h]));
    t.push(("multi_modal_projector.mm_soft_emb_norm.weight".to_owned(), vec![1152]));
    let vt = "vision_tower.vision_model";
    t.push((format!("{vt}.embeddings.patch_embedding.weight"), vec![1152, 3, 14, 14]));
    t.push((format!("{vt}.embeddings.patch_embedding.bias"), vec![1152]));
    t.push((format!("{vt}.embeddings.position_embedding.weight"), vec![4096, 1152]));
    for l in 0..27 {
        let p = |n: &str| format!("{vt}.encoder.layers.{l}.{n}");
        for n in ["layer_norm1", "layer_norm2"] {
            t.push((p(&format!("{n}.weight")), vec![1152]));
            t.push((p(&format!("{n}.bias")), vec![1152]));
        }
        t.push((p("mlp.fc1.weight"), vec![4304, 1152]));
        t.push((p("mlp.fc1.bias"), vec![4304]));
        t.push((p("mlp.fc2.weight"), vec![1152, 4304]));
        t.push((p("mlp.fc2.bias"), vec![1152]));
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.push((p(&format!("self_attn.{n}.weight")), vec![1152, 1152]));
            t.push((p(&format!("self_attn.{n}.bias")), vec![1152]));
        }
    }
    t.push((format!("{vt}.post_layernorm.weight"), vec![1152]));
    t.push((format!("{vt}.post_layernorm.bias"), vec![1152]));
    write_shards(dir, &t, 5);
}
