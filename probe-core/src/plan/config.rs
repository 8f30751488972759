//! A model's shape, read from its Hugging Face `config.json`.
//!
//! Tolerant of missing optional fields; a missing required field is
//! [`Error::InvalidInput`] naming it. Multimodal configs with a nested `text_config`
//! (Gemma 3, …) are read through it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::memory::Dtype;
use crate::{Error, Result};

/// The fields of `config.json` the memory model reads; everything else is ignored.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    sliding_window_pattern: Option<usize>,
    layer_types: Option<Vec<String>>,
    text_config: Option<Box<RawConfig>>,
}

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
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::invalid("config.json", format!("not valid: {e}")))?;
        Self::from_raw(raw)
    }

    fn from_raw(outer: RawConfig) -> Result<Self> {
        let raw = match outer.text_config.clone() {
            Some(inner) => merge(*inner, &outer),
            None => outer,
        };
        let need = |v: Option<usize>, name: &str| {
            v.ok_or_else(|| Error::invalid("config.json", format!("missing required field `{name}`")))
        };
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        for (name, v) in [
            ("hidden_size", hidden_size),
            ("num_hidden_layers", num_layers),
            ("num_attention_heads", num_heads),
            ("vocab_size", vocab_size),
        ] {
            if v == 0 {
                return Err(Error::invalid("config.json", format!("`{name}` is 0")));
            }
        }
        let architecture = raw.model_type.clone().unwrap_or_else(|| "unknown".into());
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
        let layer_windows = windows(&raw, arch, num_layers);
        let torch_dtype = raw.torch_dtype.as_deref().or(raw.dtype.as_deref()).and_then(|s| s.parse::<Dtype>().ok());
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

/// Fields of the outer config fill what a nested `text_config` leaves out.
fn merge(mut inner: RawConfig, outer: &RawConfig) -> RawConfig {
    if inner.model_type.is_none() {
        inner.model_type = outer.model_type.clone();
    }
    if inner.tie_word_embeddings.is_none() {
        inner.tie_word_embeddings = outer.tie_word_embeddings;
    }
    if inner.torch_dtype.is_none() {
        inner.torch_dtype = outer.torch_dtype.clone().or(outer.dtype.clone());
    }
    inner
}

/// The sliding window of each layer, following each family's convention.
fn windows(raw: &RawConfig, arch: &str, layers: usize) -> Vec<Option<usize>> {
    let window = raw.sliding_window.as_ref().and_then(serde_json::Value::as_u64).map(|w| w as usize);
    let Some(w) = window.filter(|&w| w > 0) else { return vec![None; layers] };
    if let Some(types) = &raw.layer_types {
        return (0..layers).map(|i| types.get(i).filter(|t| t.as_str() == "sliding_attention").map(|_| w)).collect();
    }
    if arch.starts_with("gemma2") {
        // Gemma 2: even layers slide, odd layers attend globally.
        return (0..layers).map(|i| (i % 2 == 0).then_some(w)).collect();
    }
    if arch.starts_with("gemma3") {
        // Gemma 3: every `sliding_window_pattern`-th layer (default 6) is global.
        let p = raw.sliding_window_pattern.unwrap_or(6).max(1);
        return (0..layers).map(|i| ((i + 1) % p != 0).then_some(w)).collect();
    }
    if arch.starts_with("qwen") {
        // Qwen2/3: only with `use_sliding_window`, on layers from `max_window_layers` on.
        if !raw.use_sliding_window.unwrap_or(false) {
            return vec![None; layers];
        }
        let from = raw.max_window_layers.unwrap_or(layers);
        return (0..layers).map(|i| (i >= from).then_some(w)).collect();
    }
    // Mistral and others: a window on every layer.
    vec![Some(w); layers]
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
