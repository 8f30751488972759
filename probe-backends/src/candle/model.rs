//! The one generic decoder: Llama-family blocks whose differences are data
//! ([`super::config::ArchSpec`]).
//!
//! Shapes: activations are `[batch, seq, hidden]`; weights are kept as stored, `[out, in]`,
//! and used transposed by the matmul (no copy). Grouped-query attention folds the query
//! heads of one key/value head into the sequence axis, so keys and values are never repeated.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::block::{Block, RopeRows, Step};
use super::config::ModelConfig;
use super::kv::{Cache, Kv, LayerKv};
use super::layers::Norm;
use super::placement::Stages;
use super::rope::Rope;

/// Where a checkpoint keeps its language model: the prefix of `embed_tokens`, `layers.N` and
/// `norm`, and the LM head's name. Multimodal checkpoints nest it (`Gemma3ForConditionalGeneration`:
/// `language_model.model.` as transformers 4.x saves it, `model.language_model.` as 5.x does);
/// their other weights (the vision tower) are never read.
static LAYOUTS: &[(&str, &str)] = &[
    ("model", "lm_head.weight"),
    ("language_model.model", "language_model.lm_head.weight"),
    ("model.language_model", "lm_head.weight"),
];

/// Where one checkpoint keeps its tensors (see [`LAYOUTS`] and [`super::config::GptNames`]).
struct Names {
    body: &'static str,
    heads: &'static [&'static str],
    embed: &'static str,
    positions: Option<&'static str>,
    final_norm: &'static str,
}

impl Names {
    /// The first layout whose embedding `vb` holds (the first one when none does, so that the
    /// error names it).
    fn of(vb: &VarBuilder, cfg: &ModelConfig) -> Self {
        let has = |body: &str, name: &str| {
            vb.contains_tensor(&if body.is_empty() {
                format!("{name}.weight")
            } else {
                format!("{body}.{name}.weight")
            })
        };
        if let Some(g) = &cfg.spec.gpt {
            let body = g.bodies.iter().copied().find(|b| has(b, g.embed)).unwrap_or(g.bodies[0]);
            return Self { body, heads: g.heads, embed: g.embed, positions: g.positions, final_norm: g.final_norm };
        }
        let layout = LAYOUTS.iter().find(|l| has(l.0, "embed_tokens")).unwrap_or(&LAYOUTS[0]);
        Self {
            body: layout.0,
            heads: std::slice::from_ref(&layout.1),
            embed: "embed_tokens",
            positions: None,
            final_norm: "norm",
        }
    }
}

/// The decoder: embeddings, blocks, final norm and (only for generation) the LM head.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    pub(crate) cfg: ModelConfig,
    embed: Tensor,
    /// Learned absolute position embeddings (GPT-2), `[max_positions, hidden]`.
    positions: Option<Tensor>,
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

impl Decoder {
    /// Loads the weights from `vb` (names as transformers saves them, see [`LAYOUTS`]), each
    /// block on its stage's device, the final norm and head on the last block's.
    pub(crate) fn load(vb: &VarBuilder, cfg: ModelConfig, stages: Stages) -> Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let names = Names::of(vb, &cfg);
        let body = if names.body.is_empty() { vb.clone() } else { vb.pp(names.body) };
        let embed = body.get((cfg.vocab_size, cfg.hidden_size), &format!("{}.weight", names.embed))?;
        let positions = names
            .positions
            .map(|p| body.get((cfg.max_position_embeddings, cfg.hidden_size), &format!("{p}.weight")))
            .transpose()?;
        let blocks = (0..cfg.num_layers)
            .map(|i| Block::load(&stages.block_vb(&body, i), &cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let tail = body.clone().set_device(stages.last().clone());
        let norm = match cfg.spec.gpt {
            Some(_) => Norm::load_layer_norm(&tail, names.final_norm, cfg.hidden_size, cfg.rms_norm_eps)?,
            None => Norm::load(&tail, names.final_norm, cfg.hidden_size, cfg.spec, cfg.rms_norm_eps)?,
        };
        let head = names.heads.iter().copied().find(|h| vb.contains_tensor(h));
        let lm_head = match head {
            Some(head) => vb.clone().set_device(stages.last().clone()).get((cfg.vocab_size, cfg.hidden_size), head)?,
            None if cfg.tie_word_embeddings => embed.to_device(stages.last())?,
            None => vb.get((cfg.vocab_size, cfg.hidden_size), names.heads[0])?,
        };
        let inv_freq = cfg.rope.inv_freq();
        let local_inv_freq = cfg.local_rope.as_ref().map(|r| r.inv_freq());
        Ok(Self { cfg, embed, positions, blocks, norm, lm_head, inv_freq, local_inv_freq, device, dtype, stages })
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The embeddings of `ids` (`[b, s]`) at positions `offset..offset + s`, where `offsets`
    /// holds one offset for every row or (with `s = 1`) one per row.
    fn embed(&self, ids: &Tensor, offsets: &[usize]) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, s, self.cfg.hidden_size))?;
        let x = match (&self.positions, offsets) {
            (None, _) => x,
            (Some(wpe), &[offset]) => x.broadcast_add(&wpe.narrow(0, offset, s)?.unsqueeze(0)?)?,
            (Some(wpe), _) => {
                let at: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();
                let at = Tensor::from_vec(at, b, &self.device)?;
                (x + wpe.index_select(&at, 0)?.unsqueeze(1)?)?
            }
        };
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

    /// What the blocks share when `s` positions from `offset` run over rows of lengths `lens`,
    /// the first `dropped` positions missing from the key/value cache.
    fn step(&self, lens: &[usize], s: usize, offset: usize, dropped: usize) -> Result<Step<'_>> {
        let window = self.cfg.windows.iter().flatten().copied().min();
        let rows = |rope: &Rope, inv_freq: &[f32]| -> Result<RopeRows> {
            let (cos, sin) = rope.rows(inv_freq, lens, offset, s, &self.device, self.dtype)?;
            Ok(RopeRows { cos, sin })
        };
        let kv_lens: Vec<usize> = lens.iter().map(|l| l - dropped).collect();
        let local_rope = match (&self.cfg.local_rope, &self.local_inv_freq) {
            (Some(rope), Some(inv_freq)) => Some(rows(rope, inv_freq)?),
            _ => None,
        };
        Ok(Step {
            cfg: &self.cfg,
            rope: rows(&self.cfg.rope, &self.inv_freq)?,
            local_rope,
            full_mask: self.mask(&kv_lens, s, offset - dropped, None)?,
            sliding_mask: if window.is_some() { self.mask(&kv_lens, s, offset - dropped, window)? } else { None },
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
        let steps = self.step(lens, s, 0, 0).and_then(|step| self.stages.steps(step)).map_err(be)?;
        let mut x = self.embed(ids, &[0]).map_err(be)?;
        visit(0, &x)?;
        let l = self.cfg.num_layers;
        for (i, block) in self.blocks.iter().enumerate() {
            if i >= last_layer {
                break;
            }
            x = self.stages.enter(i, x).map_err(be)?;
            x = block.forward(&x, self.stages.step_of(&steps, i), Kv::None).map_err(be)?;
            if i + 1 < l {
                visit(i + 1, &x)?;
            } else {
                visit(l, &self.norm.forward(&x).map_err(be)?)?;
            }
        }
        Ok(())
    }

    /// Fresh key/value caches for one sequence (or the equal rows of one prefill) of up to
    /// `capacity` positions (more grow the buffers).
    pub(crate) fn new_cache(&self, capacity: usize) -> Cache {
        Cache::new(self.cfg.num_layers, capacity)
    }

    /// Phi-3 with longrope, as transformers 5.19 generates (`Phi3ForCausalLM.
    /// prepare_inputs_for_generation`): when the sequence grows past the longrope threshold
    /// while the cache holds no more positions than that, the cache is dropped and the new
    /// tokens run without the earlier ones (at their positions, on the long factors). Once
    /// dropped, the cache stays that short, so every later step runs alone too. Each sequence
    /// of a batched decode has its own cache, so this happens per sequence, as it would alone.
    fn drop_cache_at_longrope_switch(&self, cache: &mut Cache, s: usize) {
        let Some(threshold) = self.cfg.rope.longrope_threshold().filter(|_| self.cfg.spec.fused) else { return };
        let held = cache.len - cache.dropped;
        if held > 0 && cache.len + s > threshold && held <= threshold {
            cache.drop_all();
        }
    }

    /// Runs prompts `ids` (`[b, s]`, right-padded; `lens` the real lengths) from empty
    /// caches; returns the logits at each row's last real token (`[b, vocab]` in f32,
    /// soft-capped where the architecture does so) and each row's own cache, with room for
    /// `capacity[r]` positions.
    pub(crate) fn prefill(&self, ids: &Tensor, lens: &[usize], capacity: &[usize]) -> Result<(Tensor, Vec<Cache>)> {
        let (b, s) = ids.dims2()?;
        let steps = self.stages.steps(self.step(lens, s, 0, 0)?)?;
        let mut x = self.embed(ids, &[0])?;
        let mut batch = self.new_cache(s);
        for (i, (block, kv)) in self.blocks.iter().zip(batch.layers.iter_mut()).enumerate() {
            x = block.forward(&self.stages.enter(i, x)?, self.stages.step_of(&steps, i), Kv::Batch(kv))?;
        }
        let mut last = Vec::with_capacity(b);
        let mut caches = Vec::with_capacity(b);
        for (r, (&len, &room)) in lens.iter().zip(capacity).enumerate() {
            last.push(x.narrow(0, r, 1)?.narrow(1, len - 1, 1)?);
            let layers = batch.layers.iter().map(|l| l.row(r, len, room)).collect::<Result<_>>()?;
            caches.push(Cache { layers, len, dropped: 0 });
        }
        let last = Tensor::cat(&last, 0)?.squeeze(1)?.contiguous()?;
        Ok((self.logits(&last)?, caches))
    }

    /// One decode step of sequences of different lengths: `ids[r]` is fed after what
    /// `caches[r]` holds, at that sequence's own position (its RoPE frequencies, learned
    /// position and sliding window as if it ran alone); returns the logits, `[b, vocab]` in f32.
    /// The projections and MLPs run on all rows at once, attention row by row.
    pub(crate) fn next_logits_rows(&self, ids: &[u32], caches: &mut [&mut Cache]) -> Result<Tensor> {
        let b = ids.len();
        caches.iter_mut().for_each(|c| self.drop_cache_at_longrope_switch(c, 1));
        let offsets: Vec<usize> = caches.iter().map(|c| c.len).collect();
        let rows = |rope: &Rope, inv_freq: &[f32]| -> Result<RopeRows> {
            let (cos, sin) = rope.at_positions(inv_freq, &offsets, &self.device, self.dtype)?;
            Ok(RopeRows { cos, sin })
        };
        let local_rope = match (&self.cfg.local_rope, &self.local_inv_freq) {
            (Some(rope), Some(inv_freq)) => Some(rows(rope, inv_freq)?),
            _ => None,
        };
        let step = Step {
            cfg: &self.cfg,
            rope: rows(&self.cfg.rope, &self.inv_freq)?,
            local_rope,
            full_mask: None,
            sliding_mask: None,
        };
        let steps = self.stages.steps(step)?;
        let mut x = self.embed(&Tensor::from_vec(ids.to_vec(), (b, 1), &self.device)?, &offsets)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let mut kvs: Vec<&mut LayerKv> = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            x = block.forward(&self.stages.enter(i, x)?, self.stages.step_of(&steps, i), Kv::Rows(&mut kvs))?;
        }
        caches.iter_mut().for_each(|c| c.len += 1);
        self.logits(&x.squeeze(1)?)
    }

    /// The logits of hidden states `[b, hidden]` (final norm, LM head, soft-capping), in f32.
    fn logits(&self, last: &Tensor) -> Result<Tensor> {
        let last = self.norm.forward(last)?;
        let logits = last.matmul(&self.lm_head.t()?)?.to_dtype(DType::F32)?;
        match self.cfg.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}
