//! One decoder block: attention (grouped-query, RoPE, optional q/k norms, sliding window) and
//! the MLP, with the architecture's norm placement.

use candle_core::{D, Result, Tensor};
use candle_nn::VarBuilder;
use probe_core::Site;

use super::attention;
use super::config::{GptNames, ModelConfig, NormPlacement, QkNorm};
use super::kv::Kv;
use super::layers::{Linear, Norm};
use super::moe::Mlp;

/// One decoder block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    /// q, k and v stacked (`[nh·d + 2·nkv·d, h]`), the attention scale folded into q (or
    /// into `q_norm` when there is one).
    qkv: Linear,
    o: Linear,
    /// Per-head RMSNorms of queries and keys before RoPE (Qwen3, Gemma 3).
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    /// Dense or mixture of experts.
    mlp: Mlp,
    /// The norm in front of attention (none with post-norms only).
    input_norm: Option<Norm>,
    /// Gemma 2/3, OLMo 2: normalises the attention output before the residual add.
    post_attn_norm: Option<Norm>,
    /// The norm in front of the MLP (`post_attention_layernorm` in Llama's naming).
    pre_mlp_norm: Option<Norm>,
    /// Gemma 2/3: normalises the MLP output before the residual add.
    post_mlp_norm: Option<Norm>,
    window: Option<usize>,
    /// Queries and keys are rotated (every architecture but GPT-2's learned positions).
    rotary: bool,
    /// Attention and MLP read the same input (GPT-NeoX `use_parallel_residual`).
    parallel: bool,
}

/// The cos and sin rows (`[s, rotary_dim / 2]`, or `[b, s, rotary_dim / 2]` when rows
/// differ) of one forward step.
#[derive(Debug)]
pub(crate) struct RopeRows {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

/// What every block of one forward call shares.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    pub(crate) cfg: &'a ModelConfig,
    /// RoPE of full-attention layers (of every layer without a local rope).
    pub(crate) rope: RopeRows,
    /// RoPE of sliding layers, where it differs (Gemma 3).
    pub(crate) local_rope: Option<RopeRows>,
    /// Batched decoding (one new token per row): where the new keys go, which keys each row
    /// sees. `None` for a prefill or an extraction (causal over the input).
    pub(crate) decode: Option<DecodeStep>,
    /// Attention's chunk budget (`None`: the device's default).
    pub(crate) chunk_bytes: Option<u64>,
}

/// What the blocks of one batched decode step share (see [`super::kv::DecodeKv`]).
#[derive(Debug)]
pub(crate) struct DecodeStep {
    /// The buffer position of each row's new key and value, as `scatter_set` indices:
    /// `[b, kv_heads, 1, head_dim]` (u32).
    pub(crate) at: Tensor,
    /// Keys attended to: the most any row holds after this step's.
    pub(crate) keys: usize,
    /// Additive masks `[b, 1, 1, keys]` of full and sliding layers (a row's own keys, the last
    /// `window` of them); `None` = nothing masked.
    pub(crate) full_mask: Option<Tensor>,
    pub(crate) sliding_mask: Option<Tensor>,
    /// The prefixes rows share, each with its rows; `restore` (u32 `[b]`) puts values stacked
    /// group by group (then the rows without one) back in row order. Empty: none shared.
    pub(crate) shared: Vec<SharedRows>,
    pub(crate) restore: Option<Tensor>,
}

/// The rows of a decode step that attend to one shared prefix first.
#[derive(Debug)]
pub(crate) struct SharedRows {
    /// Their slots, u32 `[n]`.
    pub(crate) rows: Tensor,
    pub(crate) kv: super::kv::SharedKv,
    /// Additive masks `[n, 1, 1, p]` of sliding layers: a prefix key older than a row's window
    /// is hidden (`None`: every key visible; full layers see all of the prefix).
    pub(crate) sliding_mask: Option<Tensor>,
}

impl DecodeStep {
    /// The step with its tensors on `device` (a later stage of a layer split; the prefixes'
    /// keys already live with their layers).
    pub(crate) fn to_device(&self, device: &candle_core::Device) -> Result<Self> {
        let mv = |t: &Tensor| t.to_device(device);
        Ok(Self {
            at: mv(&self.at)?,
            keys: self.keys,
            full_mask: self.full_mask.as_ref().map(mv).transpose()?,
            sliding_mask: self.sliding_mask.as_ref().map(mv).transpose()?,
            shared: self
                .shared
                .iter()
                .map(|g| {
                    Ok(SharedRows {
                        rows: mv(&g.rows)?,
                        kv: g.kv.clone(),
                        sliding_mask: g.sliding_mask.as_ref().map(mv).transpose()?,
                    })
                })
                .collect::<Result<_>>()?,
            restore: self.restore.as_ref().map(mv).transpose()?,
        })
    }
}

/// The sites inside a block that an extraction reads, and what the block found there.
#[derive(Debug)]
pub(crate) struct Tap {
    sites: Vec<Site>,
    /// Per site of `sites`: `[b, s, width]` (`[b, s, heads·head_dim]` for [`Site::Heads`]), in
    /// the block's dtype.
    values: Vec<Option<Tensor>>,
}

impl Tap {
    /// A tap of `sites` (ones inside a block: not [`Site::Resid`]).
    pub(crate) fn new(sites: Vec<Site>) -> Self {
        let values = sites.iter().map(|_| None).collect();
        Self { sites, values }
    }

    /// What the block held at each site, in the order of [`Tap::new`]'s (`None`: it has no
    /// such site).
    pub(crate) fn into_values(self) -> impl Iterator<Item = (Site, Option<Tensor>)> {
        self.sites.into_iter().zip(self.values)
    }

    fn slot(&mut self, site: Site) -> Option<&mut Option<Tensor>> {
        let i = self.sites.iter().position(|&s| s == site)?;
        Some(&mut self.values[i])
    }
}

/// Keeps `t` when `tap` reads `site`.
fn put(tap: &mut Option<&mut Tap>, site: Site, t: &Tensor) {
    if let Some(slot) = tap.as_deref_mut().and_then(|tap| tap.slot(site)) {
        *slot = Some(t.clone());
    }
}

/// Where the MLP keeps its router logits, when `tap` reads them.
fn router<'a>(tap: &'a mut Option<&mut Tap>) -> Option<&'a mut Option<Tensor>> {
    tap.as_deref_mut().and_then(|t| t.slot(Site::Router))
}

/// Rotates the first `2 · cos.dim(1)` dimensions of `x` (`[b, heads, s, d]`), rotate-half style;
/// the rest pass through (partial rotary).
fn rope(x: &Tensor, rows: &RopeRows) -> Result<Tensor> {
    let rot = 2 * rows.cos.dim(D::Minus1)?;
    let d = x.dim(D::Minus1)?;
    if rot == d {
        return candle_nn::rotary_emb::rope(x, &rows.cos, &rows.sin);
    }
    let head = candle_nn::rotary_emb::rope(&x.narrow(D::Minus1, 0, rot)?.contiguous()?, &rows.cos, &rows.sin)?;
    Tensor::cat(&[&head, &x.narrow(D::Minus1, rot, d - rot)?], D::Minus1)?.contiguous()
}

impl Block {
    /// Loads block `i` from `vb` (the model body: names relative to `model.`).
    pub(crate) fn load(vb: &VarBuilder, cfg: &ModelConfig, i: usize) -> Result<Self> {
        if let Some(g) = &cfg.spec.gpt {
            return Self::load_gpt(vb, cfg, i, g);
        }
        let (h, d, nh, nkv) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let p = format!("layers.{i}");
        let spec = cfg.spec;
        let eps = cfg.rms_norm_eps;
        let norm = |n: &str| Norm::load(vb, &format!("{p}.{n}"), h, spec, eps);
        let (input_norm, post_attn_norm, pre_mlp_norm, post_mlp_norm) = match spec.norms {
            NormPlacement::Pre => (Some(norm("input_layernorm")?), None, Some(norm("post_attention_layernorm")?), None),
            NormPlacement::Sandwich => (
                Some(norm("input_layernorm")?),
                Some(norm("post_attention_layernorm")?),
                Some(norm("pre_feedforward_layernorm")?),
                Some(norm("post_feedforward_layernorm")?),
            ),
            NormPlacement::Post => {
                (None, Some(norm("post_attention_layernorm")?), None, Some(norm("post_feedforward_layernorm")?))
            }
        };
        let (q, k, v) = if spec.fused {
            // Phi-3: one `qkv_proj`, q then k then v along the output axis.
            let qkv = Linear::load(vb, &format!("{p}.self_attn.qkv_proj"), (nh + 2 * nkv) * d, h, cfg.qkv_bias)?;
            (qkv.rows(0, nh * d)?, qkv.rows(nh * d, nkv * d)?, qkv.rows((nh + nkv) * d, nkv * d)?)
        } else {
            let load = |n: &str, out| Linear::load(vb, &format!("{p}.self_attn.{n}"), out, h, cfg.qkv_bias);
            (load("q_proj", nh * d)?, load("k_proj", nkv * d)?, load("v_proj", nkv * d)?)
        };
        let (q, q_norm, k_norm) = match spec.qk_norm {
            QkNorm::None => (q.scaled(cfg.attn_scale)?, None, None),
            QkNorm::PerHead | QkNorm::Whole => {
                let (qs, ks) = if spec.qk_norm == QkNorm::Whole { (nh * d, nkv * d) } else { (d, d) };
                let qk_norm =
                    |n: &str, size, k| Norm::load_scaled(vb, &format!("{p}.self_attn.{n}"), size, spec, eps, k);
                (q, Some(qk_norm("q_norm", qs, cfg.attn_scale)?), Some(qk_norm("k_norm", ks, 1.0)?))
            }
        };
        Ok(Self {
            qkv: Linear::fuse(&[q, k, v])?,
            o: Linear::load(vb, &format!("{p}.self_attn.o_proj"), h, nh * d, cfg.o_bias)?,
            q_norm,
            k_norm,
            mlp: Mlp::load(vb, cfg, i)?,
            input_norm,
            post_attn_norm,
            pre_mlp_norm,
            post_mlp_norm,
            window: cfg.windows[i],
            rotary: true,
            parallel: cfg.parallel_residual,
        })
    }

    /// Loads GPT-2 / GPT-NeoX block `i`: LayerNorms, one fused q/k/v projection (reordered to
    /// q | k | v), a plain MLP.
    fn load_gpt(vb: &VarBuilder, cfg: &ModelConfig, i: usize, g: &GptNames) -> Result<Self> {
        let (h, d, nh) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads);
        let p = format!("{}.{i}", g.layers);
        let norm = |n: &str| Norm::load_layer_norm(vb, &format!("{p}.{n}"), h, cfg.rms_norm_eps);
        let linear = |n: &str, out, inp, bias| Linear::load_gpt(vb, &format!("{p}.{n}"), out, inp, g.conv1d, bias);
        let mut qkv = linear(g.attn[0], 3 * nh * d, h, cfg.qkv_bias)?;
        if g.per_head_qkv {
            qkv = qkv.per_head_to_stacked(nh, d)?;
        }
        let q = qkv.rows(0, nh * d)?.scaled(cfg.attn_scale)?;
        Ok(Self {
            qkv: Linear::fuse(&[q, qkv.rows(nh * d, 2 * nh * d)?])?,
            o: linear(g.attn[1], h, nh * d, cfg.o_bias)?,
            q_norm: None,
            k_norm: None,
            mlp: Mlp::load(vb, cfg, i)?,
            input_norm: Some(norm(g.norms[0])?),
            post_attn_norm: None,
            pre_mlp_norm: Some(norm(g.norms[1])?),
            post_mlp_norm: None,
            window: cfg.windows[i],
            rotary: g.positions.is_none(),
            parallel: cfg.parallel_residual,
        })
    }

    fn attention(
        &self,
        x: &Tensor,
        step: &Step,
        kv: Kv,
        tap: &mut Option<&mut Tap>,
        heads_add: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = step.cfg;
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, d) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        // One matmul for q, k and v; each head group is copied once into `[b, heads, s, d]`.
        let qkv = self.qkv.forward(x)?.reshape((b, s, nh + 2 * nkv, d))?;
        let whole = cfg.spec.qk_norm == QkNorm::Whole;
        let heads = |at: usize, n: usize, norm: &Option<Norm>| {
            let t = qkv.narrow(2, at, n)?;
            let t = match norm {
                // Over the whole projection: `[b, s, n·d]`, back to heads after.
                Some(norm) if whole => norm.forward(&t.reshape((b, s, n * d))?)?.reshape((b, s, n, d))?,
                Some(norm) => norm.forward(&t.contiguous()?)?,
                None => t,
            };
            t.transpose(1, 2)?.contiguous()
        };
        let q = heads(0, nh, &self.q_norm)?;
        let k = heads(nh, nkv, &self.k_norm)?;
        let v = heads(nh + nkv, nkv, &None)?;
        let rows = match (&step.local_rope, self.window) {
            (Some(local), Some(_)) => local,
            _ => &step.rope,
        };
        // Rows of a batched decode step rotate at their own positions (`cos`: `[b, 1, ·]`).
        let (q, k) = if self.rotary { (rope(&q, rows)?, rope(&k, rows)?) } else { (q, k) };
        let shape = attention::Shape { window: self.window, softcap: cfg.attn_softcap, chunk_bytes: step.chunk_bytes };
        let out = match kv {
            Kv::None => attention::causal(&q, &k, &v, shape)?,
            Kv::Keep(kept) => {
                let out = attention::causal(&q, &k, &v, shape)?;
                *kept = Some((k, v));
                out
            }
            Kv::After((pk, pv), kept) => {
                // The prefix's keys at positions 0..p of every row, the row's own after them.
                let whole = |prefix: &Tensor, own: &Tensor| -> Result<Tensor> {
                    let (_, nkv, p, d) = prefix.dims4()?;
                    Tensor::cat(&[&prefix.broadcast_as((b, nkv, p, d))?, own], 2)
                };
                let out = attention::causal(&q, &whole(pk, &k)?, &whole(pv, &v)?, shape)?;
                if let Some(kept) = kept {
                    *kept = Some((k, v));
                }
                out
            }
            Kv::Decode(kb, vb, layer) => {
                let Some(d) = &step.decode else { candle_core::bail!("a decode step without its DecodeStep") };
                let (kb, vb) = (kb.narrow(0, 0, b)?, vb.narrow(0, 0, b)?);
                kb.scatter_set(&d.at, &k, 2)?;
                vb.scatter_set(&d.at, &v, 2)?;
                let (k, v) = (kb.narrow(2, 0, d.keys)?, vb.narrow(2, 0, d.keys)?);
                let mask = if self.window.is_some() { &d.sliding_mask } else { &d.full_mask };
                let shared: Vec<attention::SharedKeys> = d
                    .shared
                    .iter()
                    .map(|g| attention::SharedKeys {
                        rows: &g.rows,
                        k: &g.kv.layers[layer].0,
                        v: &g.kv.layers[layer].1,
                        mask: g.sliding_mask.as_ref().filter(|_| self.window.is_some()),
                    })
                    .collect();
                attention::rows(&q, &k, &v, mask.as_ref(), shape, &shared, d.restore.as_ref())?
            }
        };
        // Steering of heads (`[heads·head_dim]`, zero outside the steered heads).
        let out = match heads_add {
            Some(add) => out.broadcast_add(&add.to_device(out.device())?.to_dtype(out.dtype())?)?,
            None => out,
        };
        put(tap, Site::Heads, &out);
        self.o.forward(&out)
    }

    /// `x` (`[b, s, h]`) through the block, `cache` holding earlier keys and values
    /// (generation, a shared prefix), keeping what `tap` reads on the way (nothing more is computed: the
    /// tapped tensor is one the block makes anyway), and adding `heads_add` (`[heads·head_dim]`)
    /// to the output projection's input (steering of heads).
    pub(crate) fn forward_tap(
        &self,
        x: &Tensor,
        step: &Step,
        cache: Kv,
        mut tap: Option<&mut Tap>,
        heads_add: Option<&Tensor>,
    ) -> Result<Tensor> {
        let tap = &mut tap;
        if self.parallel {
            // x + attn(norm₁(x)) + mlp(norm₂(x)), both norms present in such blocks.
            let norm = |n: &Option<Norm>| n.as_ref().map_or_else(|| Ok(x.clone()), |n| n.forward(x));
            let a = self.attention(&norm(&self.input_norm)?, step, cache, tap, heads_add)?;
            put(tap, Site::AttnOut, &a);
            let m = self.mlp.forward(&norm(&self.pre_mlp_norm)?, step.cfg.activation, router(tap))?;
            put(tap, Site::MlpOut, &m);
            return (m + a)? + x;
        }
        let a = match &self.input_norm {
            Some(n) => self.attention(&n.forward(x)?, step, cache, tap, heads_add)?,
            None => self.attention(x, step, cache, tap, heads_add)?,
        };
        let a = match &self.post_attn_norm {
            Some(n) => n.forward(&a)?,
            None => a,
        };
        put(tap, Site::AttnOut, &a);
        let x = (x + a)?;
        put(tap, Site::ResidMid, &x);
        let m = match &self.pre_mlp_norm {
            Some(n) => self.mlp.forward(&n.forward(&x)?, step.cfg.activation, router(tap))?,
            None => self.mlp.forward(&x, step.cfg.activation, router(tap))?,
        };
        let m = match &self.post_mlp_norm {
            Some(n) => n.forward(&m)?,
            None => m,
        };
        put(tap, Site::MlpOut, &m);
        x + m
    }
}
