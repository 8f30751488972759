//! `config.json` parsing and the per-architecture specs of the generic decoder.
//!
//! Every difference between the supported architectures is data in an [`ArchSpec`]; the
//! decoder in `model.rs` has no per-model code path beyond reading these fields.

use std::path::Path;

use probe_core::{Error, Result};
use serde::Deserialize;

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `x * sigmoid(x)`.
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// GELU, exact (erf).
    GeluErf,
}

impl Activation {
    fn parse(name: &str, file: &Path) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            other => Err(Error::invalid(
                format!("hidden_act in {}", file.display()),
                format!("{other:?} (supported: silu, gelu, gelu_pytorch_tanh, gelu_new)"),
            )),
        }
    }
}

/// Which layers use sliding-window attention when `config.json` has no `layer_types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlidingDefault {
    /// No layer (unless `use_sliding_window`, Qwen2 style, from `max_window_layers` on).
    Qwen2,
    /// Every layer when `sliding_window` is set (Mistral).
    All,
    /// Even layers 0, 2, 4 … (Gemma 2).
    Even,
    /// Never.
    Never,
}

/// The data that makes the generic decoder one architecture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ArchSpec {
    /// Architecture name reported in `ModelInfo`.
    pub(crate) name: &'static str,
    /// Norms multiply by `offset + weight` (1 for Gemma, 0 otherwise).
    pub(crate) norm_offset: f32,
    /// Embeddings are multiplied by `sqrt(hidden_size)` (Gemma).
    pub(crate) scale_embeddings: bool,
    /// Extra norms after attention and around the MLP (Gemma 2: `post_attention_layernorm`
    /// normalises the attention output, `pre_feedforward_layernorm` / `post_feedforward_layernorm`
    /// wrap the MLP). Without them, `post_attention_layernorm` is the pre-MLP norm.
    pub(crate) sandwich_norms: bool,
    /// q/k/v projections always have biases (Qwen2); otherwise only with `attention_bias`.
    pub(crate) qkv_bias: bool,
    /// Activation when neither `hidden_act` nor `hidden_activation` is given.
    pub(crate) default_activation: Activation,
    /// `tie_word_embeddings` when the config does not say.
    pub(crate) default_tied: bool,
    /// Sliding-window layers when the config has no `layer_types`.
    pub(crate) sliding: SlidingDefault,
    /// Attention scale from `query_pre_attn_scalar` (Gemma 2) rather than `head_dim`.
    pub(crate) query_pre_attn_scalar: bool,
}

const LLAMA: ArchSpec = ArchSpec {
    name: "llama",
    norm_offset: 0.0,
    scale_embeddings: false,
    sandwich_norms: false,
    qkv_bias: false,
    default_activation: Activation::Silu,
    default_tied: false,
    sliding: SlidingDefault::Never,
    query_pre_attn_scalar: false,
};

/// The supported architectures, by `model_type`.
pub(crate) const SPECS: &[ArchSpec] = &[
    LLAMA,
    ArchSpec { name: "mistral", sliding: SlidingDefault::All, ..LLAMA },
    ArchSpec { name: "qwen2", qkv_bias: true, sliding: SlidingDefault::Qwen2, ..LLAMA },
    ArchSpec {
        name: "gemma2",
        norm_offset: 1.0,
        scale_embeddings: true,
        sandwich_norms: true,
        default_activation: Activation::GeluTanh,
        default_tied: true,
        sliding: SlidingDefault::Even,
        query_pre_attn_scalar: true,
        ..LLAMA
    },
];

/// Architectures known to differ from every spec (named in the error).
const KNOWN_UNSUPPORTED: &[&str] =
    &["qwen3", "qwen3_moe", "gemma", "gemma3", "gemma3_text", "phi", "phi3", "mixtral", "qwen2_moe", "olmo2", "cohere"];

/// The spec of a `model_type`.
///
/// # Errors
/// [`Error::NotSupported`] naming the model type and listing the supported ones.
pub(crate) fn spec_for(model_type: &str) -> Result<&'static ArchSpec> {
    SPECS.iter().find(|s| s.name == model_type).ok_or_else(|| {
        let supported: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
        let known = if KNOWN_UNSUPPORTED.contains(&model_type) { " (not yet written as a spec)" } else { "" };
        Error::not_supported(
            format!("model_type {model_type:?}{known}; supported architectures: {}", supported.join(", ")),
            "candle",
        )
    })
}

/// Rotary embedding scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3's frequency-dependent scaling.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// A resolved model configuration: every field the decoder needs, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelConfig {
    pub(crate) spec: &'static ArchSpec,
    pub(crate) hidden_size: usize,
    pub(crate) intermediate_size: usize,
    pub(crate) num_layers: usize,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) vocab_size: usize,
    pub(crate) rms_norm_eps: f64,
    pub(crate) rope_theta: f64,
    pub(crate) rope_scaling: RopeScaling,
    pub(crate) max_position_embeddings: usize,
    pub(crate) tie_word_embeddings: bool,
    pub(crate) qkv_bias: bool,
    pub(crate) o_bias: bool,
    pub(crate) mlp_bias: bool,
    pub(crate) activation: Activation,
    /// Per layer: the sliding window, if that layer uses one.
    pub(crate) windows: Vec<Option<usize>>,
    /// Multiplier of `q·k`.
    pub(crate) attn_scale: f64,
    pub(crate) attn_softcap: Option<f64>,
    pub(crate) final_softcap: Option<f64>,
    pub(crate) eos_token_ids: Vec<u32>,
    pub(crate) pad_token_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    vocab_size: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RawRope>,
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<OneOrMany>,
}

/// The `eos_token_id` of a `generation_config.json`, if it has one.
pub(crate) fn generation_eos(text: &str) -> Vec<u32> {
    #[derive(Deserialize)]
    struct G {
        eos_token_id: Option<OneOrMany>,
    }
    serde_json::from_str::<G>(text).ok().and_then(|g| g.eos_token_id).map(OneOrMany::into_vec).unwrap_or_default()
}

impl ModelConfig {
    /// Parses the text of `file` (a `config.json`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file and the missing or bad field;
    /// [`Error::NotSupported`] for an architecture or RoPE type without a spec.
    pub(crate) fn parse(text: &str, file: &Path) -> Result<Self> {
        let bad = |what: &str, why: String| Error::invalid(format!("{what} in {}", file.display()), why);
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad("JSON", e.to_string()))?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("model_type", "missing (expected e.g. \"llama\")".into()))?;
        let spec = spec_for(model_type)?;
        let raw: RawConfig = serde_json::from_value(value.clone()).map_err(|e| bad("config", e.to_string()))?;
        for (name, v) in [
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("vocab_size", raw.vocab_size),
            ("intermediate_size", raw.intermediate_size),
        ] {
            if v == 0 {
                return Err(bad(name, "0 (must be ≥ 1)".into()));
            }
        }
        let num_heads = raw.num_attention_heads;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
            None => return Err(bad("head_dim", "missing, and hidden_size is not a multiple of the heads".into())),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("{head_dim} (must be even and ≥ 2 for rotary embeddings)")));
        }
        let rope = raw.rope_parameters.or(raw.rope_scaling).unwrap_or_default();
        let rope_theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(10_000.0);
        let rope_kind = rope.rope_type.clone().or(rope.kind.clone()).unwrap_or_else(|| "default".into());
        let need = |field: Option<f64>, name: &str| {
            field.ok_or_else(|| bad(&format!("rope {name}"), format!("missing for rope_type {rope_kind:?}")))
        };
        let rope_scaling = match rope_kind.as_str() {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: need(rope.factor, "factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: need(rope.factor, "factor")?,
                low_freq_factor: need(rope.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(rope.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: need(
                    rope.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )?,
            },
            other => {
                return Err(Error::not_supported(
                    format!("rope_type {other:?} in {} (supported: default, linear, llama3)", file.display()),
                    "candle",
                ));
            }
        };
        let activation = match raw.hidden_activation.as_deref().or(raw.hidden_act.as_deref()) {
            Some(name) => Activation::parse(name, file)?,
            None => spec.default_activation,
        };
        let layers = raw.num_hidden_layers;
        let windows = match (&raw.layer_types, raw.sliding_window) {
            (Some(types), window) => {
                if types.len() != layers {
                    return Err(bad("layer_types", format!("{} entries for {layers} layers", types.len())));
                }
                let mut out = Vec::with_capacity(layers);
                for (i, t) in types.iter().enumerate() {
                    out.push(match t.as_str() {
                        "full_attention" => None,
                        "sliding_attention" => Some(window.ok_or_else(|| {
                            bad("sliding_window", format!("missing, but layer {i} is sliding_attention"))
                        })?),
                        other => return Err(bad("layer_types", format!("{other:?} at layer {i}"))),
                    });
                }
                out
            }
            (None, None) => vec![None; layers],
            (None, Some(w)) => (0..layers)
                .map(|i| match spec.sliding {
                    SlidingDefault::All => Some(w),
                    SlidingDefault::Even => (i % 2 == 0).then_some(w),
                    SlidingDefault::Qwen2 => (raw.use_sliding_window == Some(true)
                        && i >= raw.max_window_layers.unwrap_or(layers))
                    .then_some(w),
                    SlidingDefault::Never => None,
                })
                .collect(),
        };
        if windows.contains(&Some(0)) {
            return Err(bad("sliding_window", "0 (must be ≥ 1)".into()));
        }
        let attn_scale = if spec.query_pre_attn_scalar {
            raw.query_pre_attn_scalar.unwrap_or(head_dim as f64).powf(-0.5)
        } else {
            (head_dim as f64).powf(-0.5)
        };
        let qkv_bias = spec.qkv_bias || raw.attention_bias.unwrap_or(false);
        Ok(Self {
            spec,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(spec.default_tied),
            qkv_bias,
            // Llama's attention_bias also covers o_proj; Qwen2's q/k/v bias does not.
            o_bias: raw.attention_bias.unwrap_or(false),
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            activation,
            windows,
            attn_scale,
            attn_softcap: raw.attn_logit_softcapping,
            final_softcap: raw.final_logit_softcapping,
            eos_token_ids: raw.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
            pad_token_id: raw.pad_token_id.and_then(|p| p.into_vec().first().copied()),
        })
    }

    /// The inverse frequencies of the rotary embedding, as transformers computes them in f32.
    pub(crate) fn inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim;
        let base = self.rope_theta as f32;
        let plain: Vec<f32> = (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32)).collect();
        match self.rope_scaling {
            RopeScaling::None => plain,
            RopeScaling::Linear { factor } => plain.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, low, high, old) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    original_max_position_embeddings as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                plain
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_JSON: &str = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
        "rope_theta":10000.0,"eos_token_id":[2,3]}"#;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::parse(s, Path::new("/m/config.json"))
    }

    #[test]
    fn llama_defaults_come_from_the_spec() {
        let c = parse(LLAMA_JSON).expect("parses");
        assert_eq!(c.spec.name, "llama");
        assert_eq!((c.head_dim, c.num_kv_heads), (16, 2));
        assert!(!c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.windows, vec![None, None]);
        assert_eq!(c.eos_token_ids, vec![2, 3]);
        assert!((c.attn_scale - 0.25).abs() < 1e-12);
    }

    #[test]
    fn spec_selection() {
        assert!(spec_for("qwen2").expect("qwen2").qkv_bias);
        assert_eq!(spec_for("gemma2").expect("gemma2").norm_offset, 1.0);
        assert_eq!(spec_for("mistral").expect("mistral").sliding, SlidingDefault::All);
        let err = spec_for("qwen3").expect_err("qwen3 has no spec").to_string();
        assert!(err.contains("qwen3") && err.contains("llama, mistral, qwen2, gemma2"), "{err}");
    }

    #[test]
    fn missing_field_is_named_with_the_file() {
        let err = parse(r#"{"model_type":"llama","hidden_size":64}"#).expect_err("incomplete").to_string();
        assert!(err.contains("/m/config.json") && err.contains("intermediate_size"), "{err}");
        let err = parse(r#"{"hidden_size":64}"#).expect_err("no model_type").to_string();
        assert!(err.contains("model_type"), "{err}");
        let err = parse(&LLAMA_JSON.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3"))
            .expect_err("bad kv heads")
            .to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        let bad_rope = LLAMA_JSON.replace("\"rope_theta\":10000.0", "\"rope_scaling\":{\"rope_type\":\"yarn\"}");
        let err = parse(&bad_rope).expect_err("yarn").to_string();
        assert!(err.contains("yarn"), "{err}");
    }

    #[test]
    fn gemma2_windows_alternate_and_mistral_slides_everywhere() {
        let g = LLAMA_JSON
            .replace("\"llama\"", "\"gemma2\"")
            .replace("\"vocab_size\"", "\"sliding_window\":4,\"vocab_size\"");
        let c = parse(&g).expect("gemma2");
        assert_eq!(c.windows, vec![Some(4), None]);
        assert!(c.tie_word_embeddings);
        let m = g.replace("\"gemma2\"", "\"mistral\"");
        assert_eq!(parse(&m).expect("mistral").windows, vec![Some(4), Some(4)]);
        let typed =
            g.replace("\"vocab_size\"", "\"layer_types\":[\"full_attention\",\"sliding_attention\"],\"vocab_size\"");
        assert_eq!(parse(&typed).expect("layer types").windows, vec![None, Some(4)]);
    }

    #[test]
    fn llama3_rope_scales_low_frequencies_only() {
        let j = LLAMA_JSON.replace(
            "\"rope_theta\":10000.0",
            "\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,\"factor\":8.0,\
             \"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":64}",
        );
        let c = parse(&j).expect("llama3");
        let plain = ModelConfig { rope_scaling: RopeScaling::None, ..c.clone() }.inv_freq();
        let scaled = c.inv_freq();
        assert_eq!(plain[0], scaled[0], "the highest frequency is kept");
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-12, "the lowest frequency is divided by the factor");
    }
}
