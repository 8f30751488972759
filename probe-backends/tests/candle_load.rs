//! Loading errors of the candle backend, on hand-written model folders (no fixtures needed).
#![cfg(feature = "candle")]

use std::path::Path;

use probe_backends::candle::{CandleBackend, CandleOptions, supported_architectures};
use probe_core::Error;

const TOKENIZER: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
    "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
    "model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;

fn config(model_type: &str) -> String {
    format!(
        r#"{{"model_type":"{model_type}","hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
        "num_attention_heads":2,"num_key_value_heads":1,"vocab_size":4,"max_position_embeddings":32}}"#
    )
}

/// A safetensors file holding only `model.embed_tokens.weight` ([4, 8] zeros).
fn embeddings_only(dir: &Path) {
    let mut header =
        r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[4,8],"data_offsets":[0,128]}}"#.to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 128]);
    std::fs::write(dir.join("model.safetensors"), bytes).expect("write weights");
}

fn folder(model_type: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), config(model_type)).expect("config");
    std::fs::write(dir.path().join("tokenizer.json"), TOKENIZER).expect("tokenizer");
    embeddings_only(dir.path());
    dir
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let dir = folder("phi");
    let err = CandleBackend::load(dir.path(), CandleOptions::default()).expect_err("phi");
    assert!(matches!(err, Error::NotSupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("\"phi\""), "{msg}");
    for arch in supported_architectures() {
        assert!(msg.contains(arch), "the error lists {arch}: {msg}");
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = folder("llama");
    let err = CandleBackend::load(dir.path(), CandleOptions::default()).expect_err("no layers in the weights");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("model.layers.0"), "the error names the tensor: {err}");
}

#[test]
fn a_missing_config_is_an_io_error_naming_the_file() {
    let dir = folder("llama");
    std::fs::remove_file(dir.path().join("config.json")).expect("remove");
    let err = CandleBackend::load(dir.path(), CandleOptions::default()).expect_err("no config");
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("config.json"), "{err}");
}

#[test]
fn a_config_missing_a_field_names_it_and_the_file() {
    let dir = folder("llama");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type":"mistral","hidden_size":8}"#).expect("config");
    let err = CandleBackend::load(dir.path(), CandleOptions::default()).expect_err("incomplete config");
    let msg = err.to_string();
    assert!(matches!(err, Error::InvalidInput { .. }), "{msg}");
    assert!(msg.contains("config.json") && msg.contains("intermediate_size"), "{msg}");
}

/// `--backend vllm` checks the folder with the extractor that will run (candle): a model only
/// vLLM could serve is refused naming both phases.
#[cfg(feature = "vllm")]
#[test]
fn vllm_refuses_a_model_its_extractor_cannot_read_naming_the_phase() {
    use probe_backends::registry::Backend;
    let dir = folder("phi");
    let model = dir.path().display().to_string();
    let err = Backend::Vllm.model_layers(&model).expect_err("phi on candle");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let msg = err.to_string();
    for part in ["extraction (candle) does not support", "generation (vllm) would serve it", "\"phi\"", &model] {
        assert!(msg.contains(part), "{part:?} in: {msg}");
    }
    // candle alone refuses it as unsupported, without the phases.
    let err = Backend::Candle.model_layers(&model).expect_err("phi");
    assert!(matches!(err, Error::NotSupported { .. }), "{err}");
}
