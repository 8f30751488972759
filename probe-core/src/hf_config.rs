//! The one parse of a Hugging Face `config.json`: [`HfConfig`].
//!
//! Every reader of `config.json` (the planner's [`crate::plan::ModelSpec`], the candle backend)
//! builds from this one parse, so the conventions below live in one place:
//!
//! - **Nested language models.** A multimodal checkpoint (`Gemma3ForConditionalGeneration`,
//!   `model_type: gemma3`) keeps its language model's fields under `text_config`; the parse is
//!   that text config, with the outer `model_type` kept in [`HfConfig::outer_model_type`] and the
//!   outer fields filling what the text config leaves out (dtype, tied embeddings, token ids).
//! - **RoPE, transformers 4.x and 5.x.** 4.x writes `rope_theta` and `rope_scaling` (and Gemma 3's
//!   `rope_local_base_freq`); 5.x writes `rope_parameters`, either one set or one per layer type
//!   (`{"full_attention": {..}, "sliding_attention": {..}}`). [`HfConfig::rope`] resolves both.
//! - **Sliding windows.** `layer_types` (5.x) when present, else each family's convention
//!   (Gemma 2 even layers, Gemma 3 `sliding_window_pattern`, Qwen `use_sliding_window` from
//!   `max_window_layers` on, Mistral every layer): [`HfConfig::layer_windows`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::{Error, Result};

/// One token id or a list of them (`eos_token_id: [1, 106]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(x) => vec![*x],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// One set of rotary-embedding parameters (`rope_scaling` in 4.x, `rope_parameters` in 5.x).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct RopeParams {
    /// `rope_type` (5.x and late 4.x).
    pub rope_type: Option<String>,
    /// `type` (early 4.x spelling of `rope_type`).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The base θ.
    pub rope_theta: Option<f64>,
    /// Scaling factor (linear, dynamic, yarn, llama3, longrope).
    pub factor: Option<f64>,
    /// Llama 3: low-frequency factor.
    pub low_freq_factor: Option<f64>,
    /// Llama 3: high-frequency factor.
    pub high_freq_factor: Option<f64>,
    /// Context length the model was pre-trained for (llama3, yarn, longrope).
    pub original_max_position_embeddings: Option<f64>,
    /// YaRN: fast boundary.
    pub beta_fast: Option<f64>,
    /// YaRN: slow boundary.
    pub beta_slow: Option<f64>,
    /// YaRN / longrope: multiplier of cos and sin.
    pub attention_factor: Option<f64>,
    /// YaRN: `mscale`.
    pub mscale: Option<f64>,
    /// YaRN: `mscale_all_dim`.
    pub mscale_all_dim: Option<f64>,
    /// YaRN: round the correction range to integers (default true).
    pub truncate: Option<bool>,
    /// longrope / su: per-frequency factors for short contexts.
    pub short_factor: Option<Vec<f64>>,
    /// longrope / su: per-frequency factors for long contexts.
    pub long_factor: Option<Vec<f64>>,
    /// Fraction of the head dimension that is rotated (5.x keeps it here for some models).
    pub partial_rotary_factor: Option<f64>,
}

impl RopeParams {
    /// The RoPE type: `rope_type`, else `type`, else `"default"`.
    pub fn kind(&self) -> &str {
        self.rope_type.as_deref().or(self.kind.as_deref()).unwrap_or("default")
    }
}

/// `rope_parameters`: one set for every layer, or one per layer type (Gemma 3 in 5.x).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RopeParameters {
    /// `{"full_attention": {..}, "sliding_attention": {..}}`.
    PerLayerType(BTreeMap<String, RopeParams>),
    /// One set for all layers.
    Flat(Box<RopeParams>),
}

/// A `usize` field that some configs write as `null`, `false` or a string: anything but a
/// non-negative integer reads as absent.
fn lenient_usize<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_u64()).map(|n| n as usize))
}

/// The fields of a Hugging Face `config.json` that probe reads, raw (no defaults applied);
/// everything else is ignored. Built by [`HfConfig::parse`].
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct HfConfig {
    /// `model_type` of the language model (the text config's when nested).
    pub model_type: Option<String>,
    /// `model_type` of the outer config when the language model is nested in `text_config`
    /// (`gemma3` for `Gemma3ForConditionalGeneration`).
    #[serde(skip)]
    pub outer_model_type: Option<String>,
    /// `architectures` (class names), the outer config's when nested.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Hidden size.
    pub hidden_size: Option<usize>,
    /// MLP intermediate size (the dense MLP's for Qwen3-MoE; each expert's for Mixtral).
    pub intermediate_size: Option<usize>,
    /// Number of transformer blocks.
    pub num_hidden_layers: Option<usize>,
    /// Query heads.
    pub num_attention_heads: Option<usize>,
    /// Key/value heads.
    pub num_key_value_heads: Option<usize>,
    /// Head dimension.
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: Option<f64>,
    /// `hidden_act`.
    pub hidden_act: Option<String>,
    /// `hidden_activation` (Gemma; preferred over `hidden_act`).
    pub hidden_activation: Option<String>,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: Option<bool>,
    /// Biases on the attention projections.
    pub attention_bias: Option<bool>,
    /// Biases on the MLP projections.
    pub mlp_bias: Option<bool>,
    /// `torch_dtype` (4.x).
    pub torch_dtype: Option<String>,
    /// `dtype` (5.x).
    pub dtype: Option<String>,
    /// The sliding window.
    #[serde(default, deserialize_with = "lenient_usize")]
    pub sliding_window: Option<usize>,
    /// Qwen: whether the window is used at all.
    pub use_sliding_window: Option<bool>,
    /// Qwen: layers from this one on slide.
    pub max_window_layers: Option<usize>,
    /// Gemma 3 (4.x): every `sliding_window_pattern`-th layer is global.
    pub sliding_window_pattern: Option<usize>,
    /// 5.x: `full_attention` / `sliding_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    /// Gemma: the attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: tanh soft-capping of the attention scores.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: tanh soft-capping of the logits.
    pub final_logit_softcapping: Option<f64>,
    /// 4.x: the RoPE base.
    pub rope_theta: Option<f64>,
    /// 4.x Gemma 3: the RoPE base of sliding layers.
    pub rope_local_base_freq: Option<f64>,
    /// 4.x: RoPE scaling.
    pub rope_scaling: Option<RopeParams>,
    /// 5.x: RoPE parameters.
    pub rope_parameters: Option<RopeParameters>,
    /// Fraction of the head dimension that is rotated.
    pub partial_rotary_factor: Option<f64>,
    /// Phi-3: the pre-training context, outside the RoPE parameters (takes precedence there).
    pub original_max_position_embeddings: Option<f64>,
    /// End-of-sequence token id(s).
    pub eos_token_id: Option<TokenIds>,
    /// Beginning-of-sequence token id(s).
    pub bos_token_id: Option<TokenIds>,
    /// Padding token id(s).
    pub pad_token_id: Option<TokenIds>,
    /// MoE: number of experts (`num_local_experts` in Mixtral).
    #[serde(alias = "num_local_experts")]
    pub num_experts: Option<usize>,
    /// MoE: experts per token.
    pub num_experts_per_tok: Option<usize>,
    /// MoE: renormalise the top-k routing weights.
    pub norm_topk_prob: Option<bool>,
    /// MoE: every `decoder_sparse_step`-th layer is sparse (Qwen).
    pub decoder_sparse_step: Option<usize>,
    /// MoE: layers with a dense MLP (Qwen).
    pub mlp_only_layers: Option<Vec<usize>>,
    /// MoE: each expert's intermediate size (Qwen).
    pub moe_intermediate_size: Option<usize>,
    /// LayerNorm epsilon (`layer_norm_eps` in GPT-NeoX, `layer_norm_epsilon` in GPT-2).
    #[serde(alias = "layer_norm_epsilon")]
    pub layer_norm_eps: Option<f64>,
    /// GPT-NeoX: attention and MLP both read the block's input (default true).
    pub use_parallel_residual: Option<bool>,
    /// GPT-2: scale attention scores by `head_dim^-0.5` (default true).
    pub scale_attn_weights: Option<bool>,
    /// GPT-2: also divide attention scores by the layer number (default false).
    pub scale_attn_by_inverse_layer_idx: Option<bool>,
    #[serde(default)]
    text_config: Option<Box<HfConfig>>,
    /// GPT-NeoX (transformers 4.x): `rotary_pct` and `rotary_emb_base`.
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    // GPT-2's spelling of the common fields; its config class maps them onto the usual names,
    // and so does [`HfConfig::parse`].
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_positions: Option<usize>,
    /// `None` in GPT-2's config means `4 · n_embd`.
    n_inner: Option<usize>,
    activation_function: Option<String>,
}

impl HfConfig {
    /// Parses the text of a `config.json`; a nested `text_config` becomes the parse (see the
    /// module documentation).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] (`config.json`) when the text is not valid JSON or a field has
    /// the wrong type, naming it.
    pub fn parse(text: &str) -> Result<Self> {
        let outer: HfConfig =
            serde_json::from_str(text).map_err(|e| Error::invalid("config.json", format!("not valid: {e}")))?;
        Ok(outer.unnest().with_defaults())
    }

    /// Fills what transformers' config class supplies when `config.json` leaves it out:
    /// gemma-3-12b-it's published `text_config` names only what differs from
    /// `Gemma3TextConfig`'s defaults (transformers 4.50), not `vocab_size` or `head_dim`.
    fn with_defaults(mut self) -> Self {
        self.hidden_size = self.hidden_size.or(self.n_embd);
        self.num_hidden_layers = self.num_hidden_layers.or(self.n_layer);
        self.num_attention_heads = self.num_attention_heads.or(self.n_head);
        self.max_position_embeddings = self.max_position_embeddings.or(self.n_positions);
        self.intermediate_size = self.intermediate_size.or(self.n_inner);
        self.hidden_act = self.hidden_act.take().or(self.activation_function.take());
        match self.model_type() {
            "gpt2" => {
                self.intermediate_size = self.intermediate_size.or(self.hidden_size.map(|h| 4 * h));
                self.hidden_act = self.hidden_act.take().or(Some("gelu_new".into()));
                self.tie_word_embeddings = self.tie_word_embeddings.or(Some(true));
                self.max_position_embeddings = self.max_position_embeddings.or(Some(1024));
                self.layer_norm_eps = self.layer_norm_eps.or(Some(1e-5));
                // Conv1D layers, all with biases.
                self.attention_bias = Some(true);
                self.mlp_bias = Some(true);
            }
            "gpt_neox" => {
                // GPTNeoXConfig: rotary_pct 0.25 and rotary_emb_base 10 000 unless given (4.x
                // top level, 5.x inside rope_parameters).
                let in_params = |f: fn(&RopeParams) -> Option<f64>| match &self.rope_parameters {
                    Some(RopeParameters::Flat(p)) => f(p),
                    _ => None,
                };
                if in_params(|p| p.partial_rotary_factor).is_none() {
                    self.partial_rotary_factor = self.partial_rotary_factor.or(self.rotary_pct).or(Some(0.25));
                }
                if in_params(|p| p.rope_theta).is_none() {
                    self.rope_theta = self.rope_theta.or(self.rotary_emb_base).or(Some(10_000.0));
                }
                self.hidden_act = self.hidden_act.take().or(Some("gelu".into()));
                self.layer_norm_eps = self.layer_norm_eps.or(Some(1e-5));
                self.attention_bias = self.attention_bias.or(Some(true));
                self.use_parallel_residual = self.use_parallel_residual.or(Some(true));
                self.mlp_bias = Some(true);
            }
            _ => {}
        }
        if self.model_type() == "gemma3_text" {
            self.vocab_size = self.vocab_size.or(Some(262_208));
            self.head_dim = self.head_dim.or(Some(256));
            self.max_position_embeddings = self.max_position_embeddings.or(Some(131_072));
            self.query_pre_attn_scalar = self.query_pre_attn_scalar.or(Some(256.0));
            self.rms_norm_eps = self.rms_norm_eps.or(Some(1e-6));
            self.num_key_value_heads = self.num_key_value_heads.or(Some(4));
            self.sliding_window = self.sliding_window.or(Some(4096));
            if self.layer_types.is_none() {
                self.sliding_window_pattern = self.sliding_window_pattern.or(Some(6));
            }
            if self.rope_parameters.is_none() {
                self.rope_theta = self.rope_theta.or(Some(1_000_000.0));
                self.rope_local_base_freq = self.rope_local_base_freq.or(Some(10_000.0));
            }
            if self.hidden_act.is_none() {
                self.hidden_activation = self.hidden_activation.or(Some("gelu_pytorch_tanh".into()));
            }
        }
        self
    }

    fn unnest(mut self) -> Self {
        let Some(inner) = self.text_config.take() else { return self };
        let mut inner = *inner;
        inner.outer_model_type = self.model_type.clone();
        if inner.model_type.is_none() {
            inner.model_type = self.model_type.as_deref().map(|t| format!("{t}_text"));
        }
        if inner.architectures.is_empty() {
            inner.architectures = std::mem::take(&mut self.architectures);
        }
        inner.tie_word_embeddings = inner.tie_word_embeddings.or(self.tie_word_embeddings);
        inner.torch_dtype = inner.torch_dtype.or(self.torch_dtype);
        inner.dtype = inner.dtype.or(self.dtype);
        inner.eos_token_id = inner.eos_token_id.or(self.eos_token_id);
        inner.bos_token_id = inner.bos_token_id.or(self.bos_token_id);
        inner.pad_token_id = inner.pad_token_id.or(self.pad_token_id);
        inner
    }

    /// `model_type`, or `"unknown"`.
    pub fn model_type(&self) -> &str {
        self.model_type.as_deref().unwrap_or("unknown")
    }

    /// A required field, or [`Error::InvalidInput`] naming it.
    ///
    /// # Errors
    /// When `value` is `None` or 0.
    pub fn required(value: Option<usize>, name: &str) -> Result<usize> {
        match value {
            None => Err(Error::invalid("config.json", format!("missing required field `{name}`"))),
            Some(0) => Err(Error::invalid("config.json", format!("`{name}` is 0 (must be ≥ 1)"))),
            Some(v) => Ok(v),
        }
    }

    /// The end-of-sequence ids (empty when not given).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id.as_ref().map(TokenIds::to_vec).unwrap_or_default()
    }

    /// The padding id (the first, when a list).
    pub fn pad_token(&self) -> Option<u32> {
        self.pad_token_id.as_ref().and_then(|p| p.to_vec().first().copied())
    }

    /// The checkpoint's dtype name (`torch_dtype`, else `dtype`).
    pub fn dtype_name(&self) -> Option<&str> {
        self.torch_dtype.as_deref().or(self.dtype.as_deref())
    }

    /// The RoPE parameters of full-attention layers (`sliding = false`) or of sliding layers,
    /// from `rope_parameters` (5.x, flat or per layer type) or `rope_theta` / `rope_scaling` /
    /// `rope_local_base_freq` (4.x: the scaling applies to global layers only when a local base
    /// is given). The base θ is `None` when the config does not give one.
    pub fn rope(&self, sliding: bool) -> RopeParams {
        let with_theta = |mut p: RopeParams| {
            p.rope_theta = p.rope_theta.or(self.rope_theta);
            p.partial_rotary_factor = p.partial_rotary_factor.or(self.partial_rotary_factor);
            if matches!(p.kind(), "llama3" | "yarn" | "longrope" | "su")
                && self.original_max_position_embeddings.is_some()
            {
                p.original_max_position_embeddings = self.original_max_position_embeddings;
            }
            p
        };
        match &self.rope_parameters {
            Some(RopeParameters::PerLayerType(m)) if !m.is_empty() => {
                let key = if sliding { "sliding_attention" } else { "full_attention" };
                with_theta(m.get(key).or_else(|| m.get("full_attention")).cloned().unwrap_or_default())
            }
            Some(RopeParameters::Flat(p)) => with_theta((**p).clone()),
            _ => match self.rope_local_base_freq {
                Some(local) if sliding => with_theta(RopeParams { rope_theta: Some(local), ..RopeParams::default() }),
                _ => with_theta(self.rope_scaling.clone().unwrap_or_default()),
            },
        }
    }

    /// The sliding window of each of `layers` layers (`None`: full attention), from
    /// `layer_types` when present, else the family's convention.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `layer_types` has another length than `layers`, an unknown
    /// entry, a sliding layer without `sliding_window`, or the window is 0.
    pub fn layer_windows(&self, layers: usize) -> Result<Vec<Option<usize>>> {
        let bad = |what: &str, why: String| Error::invalid(format!("{what} in config.json"), why);
        let window = self.sliding_window;
        if window == Some(0) {
            return Err(bad("sliding_window", "0 (must be ≥ 1)".into()));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != layers {
                return Err(bad("layer_types", format!("{} entries for {layers} layers", types.len())));
            }
            return types
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    "full_attention" => Ok(None),
                    "sliding_attention" => window
                        .map(Some)
                        .ok_or_else(|| bad("sliding_window", format!("missing, but layer {i} is sliding_attention"))),
                    other => Err(bad("layer_types", format!("{other:?} at layer {i}"))),
                })
                .collect();
        }
        let Some(w) = window else { return Ok(vec![None; layers]) };
        let arch = self.model_type();
        Ok((0..layers)
            .map(|i| {
                let slides = match arch {
                    "gemma2" => i % 2 == 0,
                    "gemma3" | "gemma3_text" => (i + 1) % self.sliding_window_pattern.unwrap_or(6).max(1) != 0,
                    "qwen2" | "qwen2_moe" | "qwen3" | "qwen3_moe" => {
                        self.use_sliding_window == Some(true) && i >= self.max_window_layers.unwrap_or(layers)
                    }
                    "llama" | "olmo2" | "gpt_neox" | "gpt2" => false,
                    // Mistral, Mixtral, Phi-3 and the rest: every layer.
                    _ => true,
                };
                slides.then_some(w)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_text_config_is_the_parse() {
        let c = HfConfig::parse(
            r#"{"model_type":"gemma3","architectures":["Gemma3ForConditionalGeneration"],"torch_dtype":"bfloat16",
                "eos_token_id":[1,106],"text_config":{"model_type":"gemma3_text","hidden_size":64,
                "num_hidden_layers":12,"sliding_window":8,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
                "rope_scaling":{"rope_type":"linear","factor":8.0}},"vision_config":{"hidden_size":32}}"#,
        )
        .expect("parses");
        assert_eq!(c.model_type(), "gemma3_text");
        assert_eq!(c.outer_model_type.as_deref(), Some("gemma3"));
        assert_eq!(c.architectures, vec!["Gemma3ForConditionalGeneration".to_string()]);
        assert_eq!((c.hidden_size, c.dtype_name()), (Some(64), Some("bfloat16")));
        assert_eq!(c.eos_token_ids(), vec![1, 106]);
        let w = c.layer_windows(12).expect("windows");
        assert_eq!(w.iter().filter(|w| w.is_none()).count(), 2, "layers 5 and 11 are global: {w:?}");
        assert_eq!((w[5], w[11], w[0]), (None, None, Some(8)));
        let global = c.rope(false);
        assert_eq!((global.kind(), global.rope_theta, global.factor), ("linear", Some(1e6), Some(8.0)));
        let local = c.rope(true);
        assert_eq!((local.kind(), local.rope_theta, local.factor), ("default", Some(1e4), None));
    }

    #[test]
    fn rope_parameters_per_layer_type_and_flat() {
        let c = HfConfig::parse(
            r#"{"model_type":"gemma3_text","rope_parameters":{
                "full_attention":{"rope_type":"linear","factor":8.0,"rope_theta":1000000.0},
                "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}}"#,
        )
        .expect("parses");
        assert_eq!((c.rope(false).kind(), c.rope(false).rope_theta), ("linear", Some(1e6)));
        assert_eq!((c.rope(true).kind(), c.rope(true).rope_theta), ("default", Some(1e4)));
        let c = HfConfig::parse(r#"{"model_type":"qwen3","rope_parameters":{"rope_type":"default","rope_theta":5.0}}"#)
            .expect("flat");
        assert_eq!(c.rope(true), c.rope(false));
        assert_eq!(c.rope(false).rope_theta, Some(5.0));
        let c = HfConfig::parse(r#"{"rope_theta":7.0,"rope_scaling":{"type":"dynamic","factor":2.0}}"#).expect("4.x");
        assert_eq!((c.rope(false).kind(), c.rope(false).rope_theta), ("dynamic", Some(7.0)));
    }

    #[test]
    fn windows_by_layer_types_and_by_family() {
        let c = HfConfig::parse(
            r#"{"model_type":"qwen3","sliding_window":4,"layer_types":["full_attention","sliding_attention"]}"#,
        )
        .expect("parses");
        assert_eq!(c.layer_windows(2).expect("windows"), vec![None, Some(4)]);
        assert!(c.layer_windows(3).expect_err("length").to_string().contains("layer_types"));
        let c = HfConfig::parse(r#"{"model_type":"qwen3","sliding_window":null,"layer_types":["sliding_attention"]}"#)
            .expect("parses");
        assert!(c.layer_windows(1).expect_err("no window").to_string().contains("sliding_window"));
        let c = HfConfig::parse(r#"{"model_type":"gemma2","sliding_window":4}"#).expect("gemma2");
        assert_eq!(c.layer_windows(3).expect("windows"), vec![Some(4), None, Some(4)]);
        let c = HfConfig::parse(r#"{"model_type":"mistral","sliding_window":4}"#).expect("mistral");
        assert_eq!(c.layer_windows(2).expect("windows"), vec![Some(4), Some(4)]);
        let c = HfConfig::parse(
            r#"{"model_type":"qwen2","sliding_window":4,"use_sliding_window":true,"max_window_layers":1}"#,
        )
        .expect("qwen2");
        assert_eq!(c.layer_windows(2).expect("windows"), vec![None, Some(4)]);
        let c = HfConfig::parse(r#"{"model_type":"mistral","sliding_window":false}"#).expect("lenient window");
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn gpt2_names_and_gpt_neox_rotary_fields_read_as_the_usual_ones() {
        let c = HfConfig::parse(r#"{"model_type":"gpt2","n_embd":64,"n_layer":3,"n_head":4,"n_positions":32}"#)
            .expect("gpt2");
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads), (Some(64), Some(3), Some(4)));
        assert_eq!((c.max_position_embeddings, c.intermediate_size), (Some(32), Some(256)));
        assert_eq!((c.hidden_act.as_deref(), c.tie_word_embeddings), (Some("gelu_new"), Some(true)));
        let c = HfConfig::parse(r#"{"model_type":"gpt_neox","rotary_pct":0.5,"rotary_emb_base":500}"#).expect("4.x");
        assert_eq!((c.rope(false).partial_rotary_factor, c.rope(false).rope_theta), (Some(0.5), Some(500.0)));
        let c = HfConfig::parse(r#"{"model_type":"gpt_neox"}"#).expect("defaults");
        assert_eq!((c.rope(false).partial_rotary_factor, c.rope(false).rope_theta), (Some(0.25), Some(10_000.0)));
        assert_eq!((c.use_parallel_residual, c.attention_bias, c.layer_norm_eps), (Some(true), Some(true), Some(1e-5)));
    }

    #[test]
    fn bad_json_and_missing_fields_are_named() {
        assert!(HfConfig::parse("{").expect_err("json").to_string().contains("config.json"));
        let e = HfConfig::parse(r#"{"hidden_size":"big"}"#).expect_err("type").to_string();
        assert!(e.contains("config.json"), "{e}");
        let e = HfConfig::required(None, "vocab_size").expect_err("missing").to_string();
        assert!(e.contains("vocab_size"), "{e}");
        let c = HfConfig::parse(r#"{"num_local_experts":8,"eos_token_id":2,"pad_token_id":[0,1]}"#).expect("aliases");
        assert_eq!((c.num_experts, c.eos_token_ids(), c.pad_token()), (Some(8), vec![2], Some(0)));
    }
}
