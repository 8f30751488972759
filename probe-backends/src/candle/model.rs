//! The one generic decoder: Llama-family blocks whose differences are data ([`ArchSpec`]).
//!
//! Shapes: activations are `[batch, seq, hidden]`; weights are kept as stored, `[out, in]`,
//! and used transposed by the matmul (no copy). Grouped-query attention folds the query
//! heads of one key/value head into the sequence axis, so keys and values are never repeated.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, kv_cache::KvCache};

use super::config::{Activation, ArchSpec, ModelConfig};

/// A linear layer: `x · wᵀ + b` with `w` as stored (`[out, in]`).
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(vb: &VarBuilder, name: &str, out: usize, inp: usize, bias_required: bool) -> Result<Self> {
        let weight = vb.get((out, inp), &format!("{name}.weight"))?;
        let bias_name = format!("{name}.bias");
        let bias = if bias_required || vb.contains_tensor(&bias_name) { Some(vb.get(out, &bias_name)?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `x`: `[.., in]` → `[.., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp;
        let y = x.reshape((rows, inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.weight.dim(0)?;
        y.reshape(out)
    }

    /// Stacks `parts` along the output axis: one matmul instead of several (a missing bias
    /// counts as zeros).
    fn fuse(parts: &[Linear]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|p| &p.weight).collect();
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if parts.iter().any(|p| p.bias.is_some()) {
            let biases = parts
                .iter()
                .map(|p| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(p.weight.dim(0)?, p.weight.dtype(), p.weight.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Multiplies the layer's output by `k` (folded into the weights).
    fn scaled(self, k: f64) -> Result<Self> {
        Ok(Self { weight: (self.weight * k)?, bias: self.bias.map(|b| b * k).transpose()? })
    }
}

/// RMSNorm with the architecture's weight offset folded into `alpha` at load time.
#[derive(Debug, Clone)]
struct Norm {
    alpha: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: &VarBuilder, name: &str, size: usize, spec: &ArchSpec, eps: f64) -> Result<Self> {
        // Loaded in f32 so that `1 + w` is exact before any cast to the compute dtype.
        let w = vb.get_with_hints_dtype(size, &format!("{name}.weight"), Default::default(), DType::F32)?;
        let alpha = if spec.norm_offset != 0.0 { (w + f64::from(spec.norm_offset))? } else { w };
        Ok(Self { alpha: alpha.to_dtype(vb.dtype())?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.alpha, self.eps)
    }
}

/// One decoder block.
#[derive(Debug, Clone)]
struct Block {
    /// q, k and v stacked (`[nh·d + 2·nkv·d, h]`), the attention scale folded into q.
    qkv: Linear,
    o: Linear,
    /// gate and up stacked (`[2·intermediate, h]`).
    gate_up: Linear,
    down: Linear,
    input_norm: Norm,
    /// Gemma 2: normalises the attention output before the residual add.
    post_attn_norm: Option<Norm>,
    /// The norm in front of the MLP (`post_attention_layernorm` in Llama's naming).
    pre_mlp_norm: Norm,
    /// Gemma 2: normalises the MLP output before the residual add.
    post_mlp_norm: Option<Norm>,
    window: Option<usize>,
}

/// What every block of one forward call shares.
struct Step<'a> {
    cfg: &'a ModelConfig,
    cos: Tensor,
    sin: Tensor,
    /// Additive masks `[b or 1, 1, s, t]` for full and sliding layers; `None` = nothing masked.
    full_mask: Option<Tensor>,
    sliding_mask: Option<Tensor>,
}

impl Block {
    fn load(vb: &VarBuilder, cfg: &ModelConfig, i: usize) -> Result<Self> {
        let (h, d, nh, nkv, im) =
            (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
        let p = format!("model.layers.{i}");
        let spec = cfg.spec;
        let eps = cfg.rms_norm_eps;
        let norm = |n: &str| Norm::load(vb, &format!("{p}.{n}"), h, spec, eps);
        let (post_attn_norm, pre_mlp_norm, post_mlp_norm) = if spec.sandwich_norms {
            (
                Some(norm("post_attention_layernorm")?),
                norm("pre_feedforward_layernorm")?,
                Some(norm("post_feedforward_layernorm")?),
            )
        } else {
            (None, norm("post_attention_layernorm")?, None)
        };
        let q = Linear::load(vb, &format!("{p}.self_attn.q_proj"), nh * d, h, cfg.qkv_bias)?.scaled(cfg.attn_scale)?;
        let k = Linear::load(vb, &format!("{p}.self_attn.k_proj"), nkv * d, h, cfg.qkv_bias)?;
        let v = Linear::load(vb, &format!("{p}.self_attn.v_proj"), nkv * d, h, cfg.qkv_bias)?;
        let gate = Linear::load(vb, &format!("{p}.mlp.gate_proj"), im, h, cfg.mlp_bias)?;
        let up = Linear::load(vb, &format!("{p}.mlp.up_proj"), im, h, cfg.mlp_bias)?;
        Ok(Self {
            qkv: Linear::fuse(&[q, k, v])?,
            o: Linear::load(vb, &format!("{p}.self_attn.o_proj"), h, nh * d, cfg.o_bias)?,
            gate_up: Linear::fuse(&[gate, up])?,
            down: Linear::load(vb, &format!("{p}.mlp.down_proj"), h, im, cfg.mlp_bias)?,
            input_norm: norm("input_layernorm")?,
            post_attn_norm,
            pre_mlp_norm,
            post_mlp_norm,
            window: cfg.windows[i],
        })
    }

    fn attention(&self, x: &Tensor, step: &Step, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let cfg = step.cfg;
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        // One matmul for q, k and v; each head group is copied once into `[b, heads, s, d]`.
        let qkv = self.qkv.forward(x)?.reshape((b, s, nh + 2 * nkv, d))?;
        let heads = |at: usize, n: usize| qkv.narrow(2, at, n)?.transpose(1, 2)?.contiguous();
        let q = heads(0, nh)?;
        let k = heads(nh, nkv)?;
        let v = heads(nh + nkv, nkv)?;
        let q = candle_nn::rotary_emb::rope(&q, &step.cos, &step.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &step.cos, &step.sin)?;
        let (k, v) = match cache {
            Some(c) => {
                let (k, v) = c.append(&k, &v)?;
                (k.contiguous()?, v.contiguous()?)
            }
            None => (k, v),
        };
        let t = k.dim(2)?;
        let rep = nh / nkv;
        // [b, nkv, rep·s, d] · [b, nkv, d, t]: the `rep` query heads of a kv head share its keys.
        let scores = q.reshape((b, nkv, rep * s, d))?.matmul(&k.t()?)?;
        // The attention scale is folded into q's weights.
        let mut scores = scores.reshape((b, nh, s, t))?;
        if let Some(cap) = cfg.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let mask = if self.window.is_some() { &step.sliding_mask } else { &step.full_mask };
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let in_dtype = scores.dtype();
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?;
        let out = probs.reshape((b, nkv, rep * s, t))?.matmul(&v)?;
        let out = out.reshape((b, nh, s, d))?.transpose(1, 2)?.contiguous()?.reshape((b, s, nh * d))?;
        self.o.forward(&out)
    }

    fn mlp(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let gu = self.gate_up.forward(x)?;
        let im = gu.dim(D::Minus1)? / 2;
        let (g, u) = (gu.narrow(D::Minus1, 0, im)?, gu.narrow(D::Minus1, im, im)?);
        let g = match act {
            Activation::Silu => candle_nn::ops::silu(&g)?,
            Activation::GeluTanh => g.gelu()?,
            Activation::GeluErf => g.gelu_erf()?,
        };
        self.down.forward(&(g * u)?)
    }

    fn forward(&self, x: &Tensor, step: &Step, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let a = self.attention(&self.input_norm.forward(x)?, step, cache)?;
        let a = match &self.post_attn_norm {
            Some(n) => n.forward(&a)?,
            None => a,
        };
        let x = (x + a)?;
        let m = self.mlp(&self.pre_mlp_norm.forward(&x)?, step.cfg.activation)?;
        let m = match &self.post_mlp_norm {
            Some(n) => n.forward(&m)?,
            None => m,
        };
        x + m
    }
}

/// The decoder: embeddings, blocks, final norm and (only for generation) the LM head.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    pub(crate) cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    dtype: DType,
}

/// Per-layer key/value caches of one generation.
#[derive(Debug)]
pub(crate) struct Cache {
    layers: Vec<KvCache>,
    len: usize,
}

impl Decoder {
    /// Loads the weights from `vb` (names as transformers saves them).
    pub(crate) fn load(vb: &VarBuilder, cfg: ModelConfig) -> Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let embed = vb.get((cfg.vocab_size, cfg.hidden_size), "model.embed_tokens.weight")?;
        let blocks = (0..cfg.num_layers).map(|i| Block::load(vb, &cfg, i)).collect::<Result<Vec<_>>>()?;
        let norm = Norm::load(vb, "model.norm", cfg.hidden_size, cfg.spec, cfg.rms_norm_eps)?;
        let lm_head = if vb.contains_tensor("lm_head.weight") || !cfg.tie_word_embeddings {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        } else {
            embed.clone()
        };
        let inv_freq = cfg.inv_freq();
        let half = inv_freq.len();
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), &device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), &device)?.to_dtype(dtype)?;
        Ok(Self { cfg, embed, blocks, norm, lm_head, cos, sin, device, dtype })
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, s, self.cfg.hidden_size))?;
        if self.cfg.spec.scale_embeddings {
            // transformers multiplies by sqrt(hidden) rounded to the weights' dtype.
            let scale = Tensor::new(&[(self.cfg.hidden_size as f32).sqrt()], &self.device)?.to_dtype(self.dtype)?;
            x.broadcast_mul(&scale)
        } else {
            Ok(x)
        }
    }

    /// An additive mask `[rows, 1, s, offset + s]`: query `i` (at position `offset + i`) sees
    /// key `j` when `j ≤ offset + i`, `j < lens[row]` and, with a window, `offset + i - j < window`
    /// (a padding query sees only itself).
    /// `None` when nothing would be masked.
    fn mask(&self, lens: &[usize], s: usize, offset: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        let t = offset + s;
        let padded = lens.iter().any(|&l| l < t);
        let windowed = window.is_some_and(|w| t > w);
        if s == 1 && !padded && !windowed {
            return Ok(None);
        }
        let rows = if padded { lens.len() } else { 1 };
        let mut m = vec![0f32; rows * s * t];
        for r in 0..rows {
            let len = if padded { lens[r] } else { t };
            for i in 0..s {
                let qpos = offset + i;
                let row = &mut m[(r * s + i) * t..(r * s + i + 1) * t];
                for (j, v) in row.iter_mut().enumerate() {
                    // A padding query sees only itself: its output is never used, but it
                    // must stay finite (a NaN there would reach real rows through `0 · NaN`).
                    let visible = if qpos >= len {
                        j == qpos
                    } else {
                        j <= qpos && j < len && window.is_none_or(|w| qpos - j < w)
                    };
                    if !visible {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (rows, 1, s, t), &self.device)?.to_dtype(self.dtype)?))
    }

    fn step(&self, lens: &[usize], s: usize, offset: usize) -> Result<Step<'_>> {
        let window = self.cfg.windows.iter().flatten().copied().min();
        Ok(Step {
            cfg: &self.cfg,
            cos: self.cos.narrow(0, offset, s)?,
            sin: self.sin.narrow(0, offset, s)?,
            full_mask: self.mask(lens, s, offset, None)?,
            sliding_mask: if window.is_some() { self.mask(lens, s, offset, window)? } else { None },
        })
    }

    /// Runs `ids` (`[b, s]`, right-padded; `lens` the real lengths) up to `last_layer`
    /// (Hugging Face numbering) and calls `visit(layer, hidden)` for every layer in
    /// `0..=last_layer`, in order. Stops after `last_layer`; never computes logits.
    pub(crate) fn hidden_states(
        &self,
        ids: &Tensor,
        lens: &[usize],
        last_layer: usize,
        visit: &mut dyn FnMut(usize, &Tensor) -> probe_core::Result<()>,
    ) -> probe_core::Result<()> {
        let be = |e: candle_core::Error| probe_core::Error::backend("candle", e);
        let (_, s) = ids.dims2().map_err(be)?;
        let step = self.step(lens, s, 0).map_err(be)?;
        let mut x = self.embed(ids).map_err(be)?;
        visit(0, &x)?;
        let l = self.cfg.num_layers;
        for (i, block) in self.blocks.iter().enumerate() {
            if i >= last_layer {
                break;
            }
            x = block.forward(&x, &step, None).map_err(be)?;
            if i + 1 < l {
                visit(i + 1, &x)?;
            } else {
                visit(l, &self.norm.forward(&x).map_err(be)?)?;
            }
        }
        Ok(())
    }

    /// Fresh key/value caches for sequences of up to `capacity` tokens.
    pub(crate) fn new_cache(&self, capacity: usize) -> Cache {
        Cache { layers: (0..self.cfg.num_layers).map(|_| KvCache::new(2, capacity)).collect(), len: 0 }
    }

    /// Feeds `ids` (`[b, s]`, no padding) after what `cache` holds; returns the logits of the
    /// last position, `[b, vocab]` in f32 (soft-capped where the architecture does so).
    pub(crate) fn next_logits(&self, ids: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let offset = cache.len;
        let step = self.step(&vec![offset + s; b], s, offset)?;
        let mut x = self.embed(ids)?;
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, &step, Some(kv))?;
        }
        cache.len += s;
        let last = self.norm.forward(&x.narrow(1, s - 1, 1)?.squeeze(1)?.contiguous()?)?;
        let logits = last.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
        match self.cfg.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}
