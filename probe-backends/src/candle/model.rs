//! The one generic decoder: Llama-family blocks whose differences are data
//! ([`super::config::ArchSpec`]).
//!
//! Shapes: activations are `[batch, seq, hidden]`; weights are kept as stored, `[out, in]`,
//! and used transposed by the matmul (no copy). Grouped-query attention folds the query
//! heads of one key/value head into the sequence axis, so keys and values are never repeated.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, kv_cache::KvCache};

use super::block::{Block, RopeRows, Step};
use super::config::ModelConfig;
use super::layers::Norm;
use super::placement::Stages;
use super::rope::Rope;

/// Where a checkpoint keeps its language model: the prefix of `embed_tokens`, `layers.N` and
/// `norm`, and the LM head's name. Multimodal checkpoints nest it (`Gemma3ForConditionalGeneration`:
/// `language_model.model.` as transformers 4.x saves it, `model.language_model.` as 5.x does);
/// their other weights (the vision tower) are never read.
const LAYOUTS: &[(&str, &str)] = &[
    ("model", "lm_head.weight"),
    ("language_model.model", "language_model.lm_head.weight"),
    ("model.language_model", "lm_head.weight"),
];

/// The decoder: embeddings, blocks, final norm and (only for generation) the LM head.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    pub(crate) cfg: ModelConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
    /// Sliding layers' inverse frequencies, where they differ.
    local_inv_freq: Option<Vec<f32>>,
    device: Device,
    dtype: DType,
    /// The blocks' devices (a layer split; one device by default).
    stages: Stages,
}

/// Per-layer key/value caches of one generation.
#[derive(Debug)]
pub(crate) struct Cache {
    layers: Vec<KvCache>,
    len: usize,
}

impl Decoder {
    /// Loads the weights from `vb` (names as transformers saves them, see [`LAYOUTS`]), each
    /// block on its stage's device, the final norm and head on the last block's.
    pub(crate) fn load(vb: &VarBuilder, cfg: ModelConfig, stages: Stages) -> Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let (body, head) = LAYOUTS
            .iter()
            .find(|(body, _)| vb.contains_tensor(&format!("{body}.embed_tokens.weight")))
            .copied()
            .unwrap_or(LAYOUTS[0]);
        let body = vb.pp(body);
        let embed = body.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::load(&stages.block_vb(&body, i), &cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let tail = body.clone().set_device(stages.last().clone());
        let norm = Norm::load(&tail, "norm", cfg.hidden_size, cfg.spec, cfg.rms_norm_eps)?;
        let lm_head = if vb.contains_tensor(head) || !cfg.tie_word_embeddings {
            vb.clone().set_device(stages.last().clone()).get((cfg.vocab_size, cfg.hidden_size), head)?
        } else {
            embed.to_device(stages.last())?
        };
        let inv_freq = cfg.rope.inv_freq();
        let local_inv_freq = cfg.local_rope.as_ref().map(|r| r.inv_freq());
        Ok(Self { cfg, embed, blocks, norm, lm_head, inv_freq, local_inv_freq, device, dtype, stages })
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
        let rows = |rope: &Rope, inv_freq: &[f32]| -> Result<RopeRows> {
            let (cos, sin) = rope.rows(inv_freq, lens, offset, s, &self.device, self.dtype)?;
            Ok(RopeRows { cos, sin })
        };
        let local_rope = match (&self.cfg.local_rope, &self.local_inv_freq) {
            (Some(rope), Some(inv_freq)) => Some(rows(rope, inv_freq)?),
            _ => None,
        };
        Ok(Step {
            cfg: &self.cfg,
            rope: rows(&self.cfg.rope, &self.inv_freq)?,
            local_rope,
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
        let be = super::oom::error;
        let (_, s) = ids.dims2().map_err(be)?;
        let steps = self.step(lens, s, 0).and_then(|step| self.stages.steps(step)).map_err(be)?;
        let mut x = self.embed(ids).map_err(be)?;
        visit(0, &x)?;
        let l = self.cfg.num_layers;
        for (i, block) in self.blocks.iter().enumerate() {
            if i >= last_layer {
                break;
            }
            x = self.stages.enter(i, x).map_err(be)?;
            x = block.forward(&x, self.stages.step_of(&steps, i), None).map_err(be)?;
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
        let steps = self.stages.steps(self.step(&vec![offset + s; b], s, offset)?)?;
        let mut x = self.embed(ids)?;
        for (i, (block, kv)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            x = block.forward(&self.stages.enter(i, x)?, self.stages.step_of(&steps, i), Some(kv))?;
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
