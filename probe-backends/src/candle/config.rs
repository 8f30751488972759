//! `config.json` parsing and the per-architecture specs of the generic decoder.
//!
//! Every difference between the supported architectures is data in an [`ArchSpec`]; the
//! decoder in `model.rs` has no per-model code path beyond reading these fields.

use std::path::Path;

use probe_core::hf_config::{HfConfig, RopeParams};
use probe_core::{Error, Result};

use super::rope::{Rope, RopeScaling};

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

/// Norms applied to the queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QkNorm {
    /// None.
    None,
    /// RMSNorm over each head (`q_norm`, `k_norm` of size `head_dim`: Qwen3, Gemma 3).
    PerHead,
    /// RMSNorm over the whole projection (`heads · head_dim`: OLMo 2).
    Whole,
}

/// Where a block's norms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NormPlacement {
    /// Before attention (`input_layernorm`) and before the MLP (`post_attention_layernorm`).
    Pre,
    /// Gemma 2/3: before and after each (`input_layernorm`, `post_attention_layernorm`,
    /// `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    Sandwich,
    /// OLMo 2: after each only (`post_attention_layernorm`, `post_feedforward_layernorm`).
    Post,
}

/// Where a sparse-MoE block keeps its router and experts (per-expert layout; the fused 3-D
/// layout of transformers 5 is always `mlp.experts.gate_up_proj` / `down_proj`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MoeNames {
    /// The module holding `gate` (the router) and `experts.N` (`block_sparse_moe`, `mlp`).
    pub(crate) block: &'static str,
    /// An expert's gate, up and down projections.
    pub(crate) expert: [&'static str; 3],
    /// Top-k weights always renormalised (Mixtral); otherwise as `norm_topk_prob` says.
    pub(crate) always_renormalise: bool,
}

/// GPT-style checkpoints (GPT-2, GPT-NeoX): LayerNorm with bias, a plain (ungated) MLP with
/// biases, one fused q/k/v projection, and their own tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GptNames {
    /// Prefixes of the model body, tried in order (`""`: none, as a bare `GPT2Model` saves).
    pub(crate) bodies: &'static [&'static str],
    /// Names of the LM head, tried in order (the embedding when tied and none is stored).
    pub(crate) heads: &'static [&'static str],
    /// The token embedding.
    pub(crate) embed: &'static str,
    /// Learned absolute position embeddings (GPT-2's `wpe`); `None`: rotary embeddings.
    pub(crate) positions: Option<&'static str>,
    /// The blocks' prefix (`h`, `layers`).
    pub(crate) layers: &'static str,
    pub(crate) final_norm: &'static str,
    /// The norms in front of attention and of the MLP.
    pub(crate) norms: [&'static str; 2],
    /// The fused q/k/v projection and the attention output projection.
    pub(crate) attn: [&'static str; 2],
    /// The MLP's up and down projections.
    pub(crate) mlp: [&'static str; 2],
    /// Conv1D weights, stored `[in, out]` (GPT-2), rather than Linear's `[out, in]`.
    pub(crate) conv1d: bool,
    /// q/k/v interleaved per head (`[heads, 3, head_dim]`, GPT-NeoX) rather than q | k | v.
    pub(crate) per_head_qkv: bool,
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
    /// Where the block's norms sit.
    pub(crate) norms: NormPlacement,
    /// q/k/v projections always have biases (Qwen2); otherwise only with `attention_bias`.
    pub(crate) qkv_bias: bool,
    /// Norms on queries and keys.
    pub(crate) qk_norm: QkNorm,
    /// Activation when neither `hidden_act` nor `hidden_activation` is given.
    pub(crate) default_activation: Activation,
    /// `tie_word_embeddings` when the config does not say.
    pub(crate) default_tied: bool,
    /// Attention scale from `query_pre_attn_scalar` (Gemma 2/3) rather than `head_dim`.
    pub(crate) query_pre_attn_scalar: bool,
    /// RoPE base when the config gives none.
    pub(crate) default_rope_theta: f64,
    /// Sliding layers have their own RoPE (Gemma 3: `rope_local_base_freq`, default 10 000,
    /// never scaled); `None`: every layer uses the same.
    pub(crate) local_rope_theta: Option<f64>,
    /// Sparse mixture-of-experts MLPs (on the layers `config.json` makes sparse).
    pub(crate) moe: Option<MoeNames>,
    /// Phi-3: q/k/v stored as one `qkv_proj`, gate/up as one `gate_up_proj`; a RoPE type
    /// `su` or `yarn` means longrope.
    pub(crate) fused: bool,
    /// GPT-2 / GPT-NeoX blocks and names (see [`GptNames`]).
    pub(crate) gpt: Option<GptNames>,
}

const LLAMA: ArchSpec = ArchSpec {
    name: "llama",
    norm_offset: 0.0,
    scale_embeddings: false,
    norms: NormPlacement::Pre,
    qkv_bias: false,
    qk_norm: QkNorm::None,
    default_activation: Activation::Silu,
    default_tied: false,
    query_pre_attn_scalar: false,
    default_rope_theta: 10_000.0,
    local_rope_theta: None,
    moe: None,
    fused: false,
    gpt: None,
};

const GEMMA2: ArchSpec = ArchSpec {
    name: "gemma2",
    norm_offset: 1.0,
    scale_embeddings: true,
    norms: NormPlacement::Sandwich,
    default_activation: Activation::GeluTanh,
    default_tied: true,
    query_pre_attn_scalar: true,
    ..LLAMA
};

/// The supported architectures, by `model_type`.
pub(crate) const SPECS: &[ArchSpec] = &[
    LLAMA,
    ArchSpec { name: "mistral", ..LLAMA },
    ArchSpec { name: "qwen2", qkv_bias: true, ..LLAMA },
    GEMMA2,
    ArchSpec { name: "qwen3", qk_norm: QkNorm::PerHead, ..LLAMA },
    ArchSpec { name: "phi3", fused: true, ..LLAMA },
    ArchSpec { name: "olmo2", qk_norm: QkNorm::Whole, norms: NormPlacement::Post, ..LLAMA },
    ArchSpec {
        name: "gemma3_text",
        qk_norm: QkNorm::PerHead,
        default_rope_theta: 1_000_000.0,
        local_rope_theta: Some(10_000.0),
        ..GEMMA2
    },
    ArchSpec {
        name: "mixtral",
        moe: Some(MoeNames { block: "block_sparse_moe", expert: ["w1", "w3", "w2"], always_renormalise: true }),
        ..LLAMA
    },
    ArchSpec {
        name: "qwen3_moe",
        qk_norm: QkNorm::PerHead,
        moe: Some(MoeNames { block: "mlp", expert: ["gate_proj", "up_proj", "down_proj"], always_renormalise: false }),
        ..LLAMA
    },
    ArchSpec {
        name: "gpt2",
        default_activation: Activation::GeluTanh,
        default_tied: true,
        gpt: Some(GptNames {
            bodies: &["transformer", ""],
            heads: &["lm_head.weight"],
            embed: "wte",
            positions: Some("wpe"),
            layers: "h",
            final_norm: "ln_f",
            norms: ["ln_1", "ln_2"],
            attn: ["attn.c_attn", "attn.c_proj"],
            mlp: ["mlp.c_fc", "mlp.c_proj"],
            conv1d: true,
            per_head_qkv: false,
        }),
        ..LLAMA
    },
    ArchSpec {
        name: "gpt_neox",
        default_activation: Activation::GeluErf,
        gpt: Some(GptNames {
            bodies: &["gpt_neox"],
            heads: &["embed_out.weight", "lm_head.weight"],
            embed: "embed_in",
            positions: None,
            layers: "layers",
            final_norm: "final_layer_norm",
            norms: ["input_layernorm", "post_attention_layernorm"],
            attn: ["attention.query_key_value", "attention.dense"],
            mlp: ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
            conv1d: false,
            per_head_qkv: true,
        }),
        ..LLAMA
    },
];

/// Architectures known to differ from every spec (named in the error).
const KNOWN_UNSUPPORTED: &[&str] = &["gemma", "gemma3", "phi", "qwen2_moe", "cohere"];

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
    /// The norms' epsilon (`rms_norm_eps`, or `layer_norm_eps` for LayerNorms).
    pub(crate) rms_norm_eps: f64,
    /// The rotary embedding of full-attention layers (of every layer without `local_rope`).
    pub(crate) rope: Rope,
    /// The rotary embedding of sliding layers, where it differs (Gemma 3).
    pub(crate) local_rope: Option<Rope>,
    /// The longest input: `max_position_embeddings`, or `factor` times it with dynamic NTK
    /// scaling (whose point is to run past it).
    pub(crate) max_position_embeddings: usize,
    pub(crate) tie_word_embeddings: bool,
    pub(crate) qkv_bias: bool,
    pub(crate) o_bias: bool,
    pub(crate) mlp_bias: bool,
    /// Attention and MLP both read the block's input, their outputs added to it (GPT-NeoX's
    /// `use_parallel_residual`).
    pub(crate) parallel_residual: bool,
    pub(crate) activation: Activation,
    /// Per layer: the sliding window, if that layer uses one.
    pub(crate) windows: Vec<Option<usize>>,
    /// Multiplier of `q·k`.
    pub(crate) attn_scale: f64,
    pub(crate) attn_softcap: Option<f64>,
    pub(crate) final_softcap: Option<f64>,
    pub(crate) eos_token_ids: Vec<u32>,
    pub(crate) pad_token_id: Option<u32>,
    /// The mixture of experts, for architectures with one.
    pub(crate) moe: Option<MoeConfig>,
}

/// A sparse mixture of experts, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MoeConfig {
    pub(crate) num_experts: usize,
    pub(crate) top_k: usize,
    /// Each expert's intermediate size.
    pub(crate) intermediate_size: usize,
    pub(crate) norm_topk_prob: bool,
    /// Per layer: whether its MLP is sparse.
    pub(crate) sparse_layers: Vec<bool>,
}

impl MoeConfig {
    /// The MoE of `raw` for `spec` (Mixtral: every layer sparse, each expert `intermediate_size`;
    /// Qwen: `moe_intermediate_size`, dense on `mlp_only_layers` and off `decoder_sparse_step`).
    fn resolve(raw: &HfConfig, names: &MoeNames, layers: usize, intermediate: usize) -> Result<Self> {
        let need = HfConfig::required;
        let num_experts = need(raw.num_experts, "num_experts")?;
        let top_k = need(raw.num_experts_per_tok, "num_experts_per_tok")?;
        if top_k > num_experts {
            return Err(Error::invalid(
                "num_experts_per_tok in config.json",
                format!("{top_k} is more than the {num_experts} experts"),
            ));
        }
        let step = raw.decoder_sparse_step.unwrap_or(1).max(1);
        let dense = raw.mlp_only_layers.clone().unwrap_or_default();
        Ok(Self {
            num_experts,
            top_k,
            intermediate_size: raw.moe_intermediate_size.unwrap_or(intermediate),
            norm_topk_prob: names.always_renormalise || raw.norm_topk_prob.unwrap_or(false),
            sparse_layers: (0..layers).map(|i| !dense.contains(&i) && (i + 1) % step == 0).collect(),
        })
    }
}

/// The `eos_token_id` of a `generation_config.json`, if it has one.
pub(crate) fn generation_eos(text: &str) -> Vec<u32> {
    HfConfig::parse(text).map(|g| g.eos_token_ids()).unwrap_or_default()
}

impl ModelConfig {
    /// Whether block `i`'s MLP is a mixture of experts (has router logits).
    pub(crate) fn sparse(&self, i: usize) -> bool {
        self.spec.gpt.is_none()
            && self.spec.moe.is_some()
            && self.moe.as_ref().is_some_and(|m| m.sparse_layers.get(i).copied().unwrap_or(false))
    }

    /// Parses the text of `file` (a `config.json`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file and the missing or bad field;
    /// [`Error::NotSupported`] for an architecture or RoPE type without a spec.
    pub(crate) fn parse(text: &str, file: &Path) -> Result<Self> {
        let in_file = |e: Error| match e {
            Error::InvalidInput { what, message } => {
                let what = match what.trim_end_matches("config.json").trim_end_matches(" in ") {
                    "" => "config",
                    field => field,
                };
                Error::invalid(format!("{what} in {}", file.display()), message)
            }
            other => other,
        };
        let raw = HfConfig::parse(text).map_err(in_file)?;
        Self::from_hf(&raw, file).map_err(in_file)
    }

    /// Resolves a parsed `config.json` (`file` names it in errors).
    fn from_hf(raw: &HfConfig, file: &Path) -> Result<Self> {
        let bad = |what: &str, why: String| Error::invalid(format!("{what} in {}", file.display()), why);
        let model_type =
            raw.model_type.as_deref().ok_or_else(|| bad("model_type", "missing (expected e.g. \"llama\")".into()))?;
        let spec = spec_for(model_type)?;
        let need = HfConfig::required;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let layers = need(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads = {num_heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => return Err(bad("head_dim", "missing, and hidden_size is not a multiple of the heads".into())),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("{head_dim} (must be even and ≥ 2 for rotary embeddings)")));
        }
        let max_position_embeddings = raw.max_position_embeddings.unwrap_or(4096);
        let rope_of = |mut params: RopeParams, theta| {
            if spec.fused && matches!(params.kind(), "su" | "yarn") {
                params.rope_type = Some("longrope".into());
            }
            Rope::new(&params, head_dim, theta, max_position_embeddings, file)
        };
        let rope = rope_of(raw.rope(false), spec.default_rope_theta)?;
        let local_rope = match spec.local_rope_theta {
            Some(theta) => {
                let mut local = raw.clone();
                local.rope_local_base_freq = local.rope_local_base_freq.or(Some(theta));
                Some(rope_of(local.rope(true), theta)?).filter(|l| *l != rope)
            }
            None => None,
        };
        let max_position_embeddings = match rope.scaling {
            RopeScaling::Dynamic { factor, .. } if factor > 1.0 => (max_position_embeddings as f64 * factor) as usize,
            _ => max_position_embeddings,
        };
        let activation = match raw.hidden_activation.as_deref().or(raw.hidden_act.as_deref()) {
            Some(name) => Activation::parse(name, file)?,
            None => spec.default_activation,
        };
        let windows = raw.layer_windows(layers)?;
        if raw.scale_attn_by_inverse_layer_idx == Some(true) {
            return Err(Error::not_supported(
                format!("scale_attn_by_inverse_layer_idx = true in {}", file.display()),
                "candle",
            ));
        }
        let attn_scale = if raw.scale_attn_weights == Some(false) {
            1.0
        } else if spec.query_pre_attn_scalar {
            raw.query_pre_attn_scalar.unwrap_or(head_dim as f64).powf(-0.5)
        } else {
            (head_dim as f64).powf(-0.5)
        };
        let qkv_bias = spec.qkv_bias || raw.attention_bias.unwrap_or(false);
        Ok(Self {
            spec,
            hidden_size,
            intermediate_size,
            num_layers: layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: raw.rms_norm_eps.or(raw.layer_norm_eps).unwrap_or(1e-6),
            rope,
            local_rope,
            max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(spec.default_tied),
            qkv_bias,
            // Llama's attention_bias also covers o_proj; Qwen2's q/k/v bias does not.
            o_bias: raw.attention_bias.unwrap_or(false),
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            parallel_residual: raw.use_parallel_residual.unwrap_or(false),
            activation,
            windows,
            attn_scale,
            attn_softcap: raw.attn_logit_softcapping,
            final_softcap: raw.final_logit_softcapping,
            eos_token_ids: raw.eos_token_ids(),
            pad_token_id: raw.pad_token(),
            moe: spec.moe.as_ref().map(|n| MoeConfig::resolve(raw, n, layers, intermediate_size)).transpose()?,
        })
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
        assert_eq!(spec_for("qwen3").expect("qwen3").qk_norm, QkNorm::PerHead);
        let err = spec_for("phi").expect_err("phi has no spec").to_string();
        assert!(err.contains("phi") && err.contains("llama, mistral, qwen2, gemma2, qwen3"), "{err}");
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
        let bad_rope = LLAMA_JSON.replace("\"rope_theta\":10000.0", "\"rope_scaling\":{\"rope_type\":\"mrope\"}");
        let err = parse(&bad_rope).expect_err("mrope").to_string();
        assert!(err.contains("mrope"), "{err}");
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
    fn moe_layers_follow_sparse_step_and_mlp_only_layers() {
        let q = LLAMA_JSON.replace("\"llama\"", "\"qwen3_moe\"").replace(
            "\"vocab_size\"",
            "\"num_experts\":4,\"num_experts_per_tok\":2,\"moe_intermediate_size\":8,\"decoder_sparse_step\":1,\
             \"mlp_only_layers\":[1],\"norm_topk_prob\":true,\"vocab_size\"",
        );
        let moe = parse(&q).expect("qwen3_moe").moe.expect("moe");
        assert_eq!((moe.num_experts, moe.top_k, moe.intermediate_size, moe.norm_topk_prob), (4, 2, 8, true));
        assert_eq!(moe.sparse_layers, vec![true, false]);
        let stepped = q.replace("\"decoder_sparse_step\":1", "\"decoder_sparse_step\":2").replace("[1]", "[]");
        assert_eq!(parse(&stepped).expect("step 2").moe.expect("moe").sparse_layers, vec![false, true]);
        let m = LLAMA_JSON
            .replace("\"llama\"", "\"mixtral\"")
            .replace("\"vocab_size\"", "\"num_local_experts\":4,\"num_experts_per_tok\":2,\"vocab_size\"");
        let moe = parse(&m).expect("mixtral").moe.expect("moe");
        assert!(moe.norm_topk_prob, "Mixtral always renormalises");
        assert_eq!((moe.intermediate_size, moe.sparse_layers), (128, vec![true, true]));
        let err = parse(&m.replace("\"num_experts_per_tok\":2", "\"num_experts_per_tok\":5")).expect_err("k > n");
        assert!(err.to_string().contains("num_experts_per_tok"), "{err}");
    }

    #[test]
    fn gpt2_and_gpt_neox_read_their_own_field_names() {
        let gpt2 = parse(
            r#"{"model_type":"gpt2","n_embd":64,"n_layer":2,"n_head":4,"n_positions":32,"n_inner":null,
                "vocab_size":100,"layer_norm_epsilon":1e-5,"activation_function":"gelu_new"}"#,
        )
        .expect("gpt2");
        assert_eq!((gpt2.hidden_size, gpt2.num_layers, gpt2.intermediate_size), (64, 2, 256));
        assert_eq!(
            (gpt2.max_position_embeddings, gpt2.activation, gpt2.rms_norm_eps),
            (32, Activation::GeluTanh, 1e-5)
        );
        assert!(gpt2.tie_word_embeddings && gpt2.qkv_bias && gpt2.o_bias && gpt2.mlp_bias && !gpt2.parallel_residual);
        let v4 = r#"{"model_type":"gpt_neox","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":100,"rotary_pct":0.25,"rotary_emb_base":10000,
            "use_parallel_residual":true,"layer_norm_eps":1e-5}"#;
        let v5 = r#"{"model_type":"gpt_neox","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":100,"layer_norm_eps":1e-5,
            "rope_parameters":{"rope_type":"default","rope_theta":10000.0,"partial_rotary_factor":0.25}}"#;
        let (a, b) = (parse(v4).expect("4.x"), parse(v5).expect("5.x"));
        assert_eq!(a, b, "both styles resolve alike");
        assert_eq!((a.rope.dim, a.rope.theta, a.activation), (4, 1e4, Activation::GeluErf));
        assert!(a.parallel_residual && a.qkv_bias && a.o_bias && !a.tie_word_embeddings);
        let err = parse(
            &v4.replace("\"gpt_neox\"", "\"gpt2\"")
                .replace("\"vocab_size\"", "\"scale_attn_by_inverse_layer_idx\":true,\"vocab_size\""),
        )
        .expect_err("inverse layer scaling")
        .to_string();
        assert!(err.contains("scale_attn_by_inverse_layer_idx"), "{err}");
    }

    #[test]
    fn dynamic_ntk_accepts_factor_times_the_context() {
        let d = LLAMA_JSON.replace(
            "\"rope_theta\":10000.0",
            "\"rope_theta\":10000.0,\"max_position_embeddings\":16,\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":8.0}",
        );
        let c = parse(&d).expect("dynamic");
        assert_eq!(c.rope.scaling, RopeScaling::Dynamic { factor: 8.0, max_positions: 16 });
        assert_eq!(c.max_position_embeddings, 128);
    }

    #[test]
    fn gemma3_text_rope_local_and_global_in_both_config_styles() {
        let v4 = LLAMA_JSON.replace("\"llama\"", "\"gemma3_text\"").replace(
            "\"rope_theta\":10000.0",
            "\"rope_theta\":1000000.0,\"rope_local_base_freq\":10000.0,\"sliding_window\":4,\
             \"sliding_window_pattern\":2,\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":8.0}",
        );
        let v5 = LLAMA_JSON.replace("\"llama\"", "\"gemma3_text\"").replace(
            "\"rope_theta\":10000.0",
            "\"sliding_window\":4,\"layer_types\":[\"sliding_attention\",\"full_attention\"],\
             \"rope_parameters\":{\"full_attention\":{\"rope_type\":\"linear\",\"factor\":8.0,\"rope_theta\":1000000.0},\
             \"sliding_attention\":{\"rope_type\":\"default\",\"rope_theta\":10000.0}}",
        );
        let (a, b) = (parse(&v4).expect("4.x"), parse(&v5).expect("5.x"));
        assert_eq!(a, b, "both styles resolve alike");
        assert_eq!(a.windows, vec![Some(4), None]);
        assert_eq!((a.rope.theta, a.rope.scaling), (1e6, crate::candle::rope::RopeScaling::Linear { factor: 8.0 }));
        let local = a.local_rope.expect("sliding layers have their own rope");
        assert_eq!((local.theta, local.scaling), (1e4, crate::candle::rope::RopeScaling::None));
        let nested = format!("{{\"model_type\":\"gemma3\",\"text_config\":{v5}}}");
        assert_eq!(parse(&nested).expect("nested"), b, "a nested text_config reads as its language model");
    }
}
