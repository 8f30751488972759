//! A model's shape, read from its Hugging Face `config.json`.
//!
//! Tolerant of missing optional fields; a missing required field is
//! [`Error::InvalidInput`] naming it. Multimodal configs with a nested `text_config`
//! (Gemma 3, …) are read through it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::memory::Dtype;
use crate::hf_config::HfConfig;
use crate::{Error, Result};

/// A decoder-only transformer's shape: everything the memory model needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelSpec {
    /// `model_type` (`llama`, `qwen2`, `gemma2` …).
    pub architecture: String,
    /// Hidden size H.
    pub hidden_size: usize,
    /// MLP intermediate size I (gated MLP: gate, up and down projections).
    pub intermediate_size: usize,
    /// Number of transformer blocks L.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA); equal to `num_heads` when absent.
    pub num_kv_heads: usize,
    /// Head dimension; `hidden_size / num_heads` when absent.
    pub head_dim: usize,
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Whether the output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k, v projections (Qwen2, or Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// RMS norms on q and k per head (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norm vectors per block (2, or 4 for Gemma 2/3's sandwich norms).
    pub norms_per_layer: usize,
    /// Sliding window of each layer, `None` for full attention.
    pub layer_windows: Vec<Option<usize>>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: Option<usize>,
    /// The dtype the checkpoint is stored in.
    pub torch_dtype: Option<Dtype>,
}

impl ModelSpec {
    /// Reads `config.json` from a file, or from a folder holding one.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file when it cannot be read, is not valid JSON or
    /// lacks a required field.
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::invalid("model", format!("{}: cannot be read: {e}", file.display())))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidInput { what, message } => Error::invalid(format!("{what} in {}", file.display()), message),
            other => other,
        })
    }

    /// Parses the text of a `config.json`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it is not valid JSON or lacks a required field
    /// (`hidden_size`, `num_hidden_layers`, `num_attention_heads`, `vocab_size`,
    /// `intermediate_size`), naming the field.
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_hf(&HfConfig::parse(text)?)
    }

    /// Builds the shape from a parsed `config.json`.
    ///
    /// # Errors
    /// As [`ModelSpec::from_json`], and for a bad `layer_types` or `sliding_window`.
    pub fn from_hf(raw: &HfConfig) -> Result<Self> {
        let need = HfConfig::required;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let architecture = raw.model_type().to_owned();
        let arch = architecture.as_str();
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads).max(1);
        let head_dim = raw.head_dim.unwrap_or(hidden_size / num_heads).max(1);
        let gemma = arch.starts_with("gemma");
        let tie_word_embeddings = raw.tie_word_embeddings.unwrap_or(gemma);
        let qwen2 = arch == "qwen2" || arch == "qwen2_moe";
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let qkv_bias = qwen2 || attention_bias;
        let o_bias = !qwen2 && attention_bias;
        let qk_norm = arch.starts_with("qwen3") || arch.starts_with("gemma3") || arch.starts_with("olmo2");
        let norms_per_layer = if arch.starts_with("gemma2") || arch.starts_with("gemma3") { 4 } else { 2 };
        let layer_windows = raw.layer_windows(num_layers)?;
        let torch_dtype = raw.dtype_name().and_then(|s| s.parse::<Dtype>().ok());
        Ok(Self {
            architecture,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            qk_norm,
            norms_per_layer,
            layer_windows,
            max_position_embeddings: raw.max_position_embeddings,
            torch_dtype,
        })
    }

    /// Number of layers with a sliding window.
    pub fn sliding_layers(&self) -> usize {
        self.layer_windows.iter().filter(|w| w.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_field_is_named() {
        let e = ModelSpec::from_json(r#"{"hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10}"#).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }));
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
        let e = ModelSpec::from_json("{").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn defaults_and_windows() {
        let s = ModelSpec::from_json(
            r#"{"model_type":"mistral","hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,
                "num_attention_heads":4,"vocab_size":100,"sliding_window":16}"#,
        )
        .unwrap();
        assert_eq!((s.num_kv_heads, s.head_dim, s.tie_word_embeddings), (4, 16, false));
        assert_eq!(s.layer_windows, vec![Some(16); 3]);
        let s = ModelSpec::from_json(
            r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":128,"num_hidden_layers":3,
                "num_attention_heads":4,"vocab_size":100,"sliding_window":16,"use_sliding_window":false}"#,
        )
        .unwrap();
        assert_eq!(s.sliding_layers(), 0);
        assert!(s.qkv_bias && !s.o_bias);
        let s = ModelSpec::from_json(
            r#"{"model_type":"gemma3","text_config":{"hidden_size":64,"intermediate_size":128,
                "num_hidden_layers":12,"num_attention_heads":4,"vocab_size":100,"sliding_window":8}}"#,
        )
        .unwrap();
        assert_eq!(s.sliding_layers(), 10);
        assert!(s.tie_word_embeddings && s.qk_norm);
    }
}
