//! The one generic decoder: Llama-family blocks whose differences are data
//! ([`super::config::ArchSpec`]).
//!
//! Shapes: activations are `[batch, seq, hidden]`; weights are kept as stored, `[out, in]`,
//! and used transposed by the matmul (no copy). Grouped-query attention folds the query
//! heads of one key/value head into the sequence axis, so keys and values are never repeated.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use probe_core::Site;

use super::attention;
use super::block::{Block, DecodeStep, RopeRows, SharedRows, Step, Tap};
use super::config::ModelConfig;
use super::kv::{DecodeKv, Kv, RowKv, SharedKv};
use super::layers::{Norm, times_transposed};
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

/// What steering adds, per block: to the residual stream entering it (`[hidden]`) and to its
/// output projection's input (`[heads·head_dim]`), each the sum of its interventions' scaled
/// directions, in the weights' dtype.
#[derive(Debug, Default)]
pub(crate) struct Steering {
    resid: Vec<Option<Tensor>>,
    heads: Vec<Option<Tensor>>,
}

impl Steering {
    /// `x` entering block `i`, steered.
    fn enter(&self, i: usize, x: Tensor) -> Result<Tensor> {
        match self.resid.get(i).and_then(Option::as_ref) {
            Some(add) => x.broadcast_add(&add.to_device(x.device())?),
            None => Ok(x),
        }
    }

    fn heads(&self, i: usize) -> Option<&Tensor> {
        self.heads.get(i).and_then(Option::as_ref)
    }
}

/// What a prefill or decode step reads on the way (capture while generating): the residual
/// stream at `resid` (Hugging Face numbering, `L` after the final norm) and, per block, the
/// sites inside it, each handed to `visit(site, layer, value)` as [`Decoder::states`] hands
/// them (`[b, s, width]`, in the weights' dtype).
pub(crate) struct Reader<'a> {
    resid: Vec<usize>,
    taps: Vec<Vec<Site>>,
    visit: &'a mut dyn FnMut(Site, usize, &Tensor) -> Result<()>,
}

impl std::fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader").field("resid", &self.resid).field("taps", &self.taps).finish_non_exhaustive()
    }
}

impl<'a> Reader<'a> {
    /// A reader of `reads` (per site, its layers) over `blocks` blocks.
    pub(crate) fn new(
        reads: &[(Site, Vec<usize>)],
        blocks: usize,
        visit: &'a mut dyn FnMut(Site, usize, &Tensor) -> Result<()>,
    ) -> Self {
        let mut resid = reads.iter().find(|(s, _)| s.is_resid()).map_or_else(Vec::new, |(_, l)| l.clone());
        resid.sort_unstable();
        resid.dedup();
        let mut taps: Vec<Vec<Site>> = vec![Vec::new(); blocks];
        for (site, layers) in reads.iter().filter(|(s, _)| s.in_block()) {
            for &b in layers.iter().filter(|&&b| b < blocks) {
                taps[b].push(*site);
            }
        }
        Self { resid, taps, visit }
    }

    /// The blocks a forward call runs to serve these reads: up to the deepest.
    fn depth(&self) -> usize {
        let tapped = self.taps.iter().rposition(|t| !t.is_empty()).map(|b| b + 1);
        tapped.max(self.resid.last().copied()).unwrap_or(0)
    }

    fn embedded(&mut self, x: &Tensor, prefix: Option<&Prefix>) -> Result<()> {
        if self.resid.first() == Some(&0) {
            (self.visit)(Site::Resid, 0, &Prefix::whole(prefix, Site::Resid, 0, x)?)?;
        }
        Ok(())
    }

    fn tap(&self, i: usize) -> Option<Tap> {
        (!self.taps[i].is_empty()).then(|| Tap::new(self.taps[i].clone()))
    }

    /// After block `i` (of `l`): its tap's sites, then the residual stream it leaves (each
    /// with the prefix's positions in front, where `prefix` holds them).
    fn after(
        &mut self,
        i: usize,
        l: usize,
        tap: Option<Tap>,
        x: &Tensor,
        norm: Option<&Norm>,
        prefix: Option<&Prefix>,
    ) -> Result<()> {
        for (site, value) in tap.into_iter().flat_map(Tap::into_values) {
            let value = value.ok_or_else(|| candle_core::Error::Msg(format!("block {i} has no site {site}")))?;
            (self.visit)(site, i, &Prefix::whole(prefix, site, i, &value)?)?;
        }
        if self.resid.binary_search(&(i + 1)).is_ok() {
            let x = if i + 1 < l {
                x.clone()
            } else {
                norm.ok_or_else(|| candle_core::Error::Msg("no final norm".into()))?.forward(x)?
            };
            (self.visit)(Site::Resid, i + 1, &Prefix::whole(prefix, Site::Resid, i + 1, &x)?)?;
        }
        Ok(())
    }
}

/// Token ids that every row of a forward call starts with, run once (one row): each block's
/// keys and values, and the values read at its positions (`[1, p, width]`) where the run
/// asked for them ([`Decoder::prefix`]). The rows then run only what follows it
/// ([`Decoder::states`], [`Decoder::prefill`]), their queries attending to its keys: the same
/// arithmetic as running every row whole.
#[derive(Debug)]
pub(crate) struct Prefix {
    len: usize,
    kv: Arc<[(Tensor, Tensor)]>,
    states: Vec<((Site, usize), Tensor)>,
}

impl Prefix {
    /// Its positions.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Its keys and values, for the rows that decode after it.
    pub(crate) fn shared_kv(&self) -> SharedKv {
        SharedKv { len: self.len, layers: Arc::clone(&self.kv) }
    }

    /// `h` (`[b, s, width]`: positions after the prefix) with the prefix's values at `site`,
    /// `layer` in front (`[b, p + s, width]`), where it holds them; else `h`.
    fn whole(prefix: Option<&Self>, site: Site, layer: usize, h: &Tensor) -> Result<Tensor> {
        let Some(held) = prefix.and_then(|p| p.states.iter().find(|(at, _)| *at == (site, layer))) else {
            return Ok(h.clone());
        };
        let (b, _, w) = h.dims3()?;
        Tensor::cat(&[&held.1.broadcast_as((b, held.1.dim(1)?, w))?, h], 1)
    }
}

/// The token embedding: the table, or (a model that only extracts) its rows read per batch.
#[derive(Debug, Clone)]
enum Embedding {
    Table(Tensor),
    Rows(Arc<super::weights::Rows>),
}

/// The decoder: embeddings, blocks, final norm and (only for generation) the LM head.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    pub(crate) cfg: ModelConfig,
    embed: Embedding,
    /// Learned absolute position embeddings (GPT-2), `[max_positions, hidden]`.
    positions: Option<Tensor>,
    /// The blocks loaded: every block, or the first ones (extraction only).
    blocks: Vec<Block>,
    /// The final norm, when every block is loaded.
    norm: Option<Norm>,
    /// The LM head, when the whole model is loaded (it generates).
    lm_head: Option<Tensor>,
    inv_freq: Vec<f32>,
    /// Sliding layers' inverse frequencies, where they differ.
    local_inv_freq: Option<Vec<f32>>,
    device: Device,
    dtype: DType,
    /// The blocks' devices (a layer split; one device by default).
    stages: Stages,
    /// Attention's chunk budget (`None`: the device's default).
    chunk_bytes: Option<u64>,
}

impl Decoder {
    /// Loads the weights from `vb` (names as transformers saves them, see [`LAYOUTS`]), each
    /// block on its stage's device, the final norm and head on the last block's. With
    /// `blocks = Some(n)` (extraction only): blocks `0..n`, the final norm when `n` is every
    /// block, no head, and the embedding's rows read per batch from `weights` (where it stores
    /// them in f32, bf16 or f16).
    pub(crate) fn load(
        vb: &VarBuilder,
        weights: &super::weights::WeightIndex,
        cfg: ModelConfig,
        stages: Stages,
        blocks: Option<usize>,
    ) -> Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let names = Names::of(vb, &cfg);
        let body = if names.body.is_empty() { vb.clone() } else { vb.pp(names.body) };
        let embed_name = format!("{}.weight", names.embed);
        let rows = match blocks {
            Some(_) => {
                weights.rows(&body.pp(&embed_name).prefix()).map_err(|e| candle_core::Error::Msg(e.to_string()))?
            }
            None => None,
        };
        let embed = match rows {
            Some(rows) if rows.shape() == (cfg.vocab_size, cfg.hidden_size) => Embedding::Rows(Arc::new(rows)),
            _ => Embedding::Table(body.get((cfg.vocab_size, cfg.hidden_size), &embed_name)?),
        };
        let positions = names
            .positions
            .map(|p| body.get((cfg.max_position_embeddings, cfg.hidden_size), &format!("{p}.weight")))
            .transpose()?;
        let loaded = blocks.unwrap_or(cfg.num_layers).min(cfg.num_layers);
        let blocks_vec =
            (0..loaded).map(|i| Block::load(&stages.block_vb(&body, i), &cfg, i)).collect::<Result<Vec<_>>>()?;
        let tail = body.clone().set_device(stages.last().clone());
        let norm = match cfg.spec.gpt {
            _ if loaded < cfg.num_layers => None,
            Some(_) => Some(Norm::load_layer_norm(&tail, names.final_norm, cfg.hidden_size, cfg.rms_norm_eps)?),
            None => Some(Norm::load(&tail, names.final_norm, cfg.hidden_size, cfg.spec, cfg.rms_norm_eps)?),
        };
        let head = names.heads.iter().copied().find(|h| vb.contains_tensor(h));
        let lm_head = match head {
            _ if blocks.is_some() => None,
            Some(head) => {
                Some(vb.clone().set_device(stages.last().clone()).get((cfg.vocab_size, cfg.hidden_size), head)?)
            }
            None if cfg.tie_word_embeddings => match &embed {
                Embedding::Table(t) => Some(t.to_device(stages.last())?),
                Embedding::Rows(_) => None,
            },
            None => Some(vb.get((cfg.vocab_size, cfg.hidden_size), names.heads[0])?),
        };
        let blocks = blocks_vec;
        let inv_freq = cfg.rope.inv_freq();
        let local_inv_freq = cfg.local_rope.as_ref().map(|r| r.inv_freq());
        Ok(Self {
            cfg,
            embed,
            positions,
            blocks,
            norm,
            lm_head,
            inv_freq,
            local_inv_freq,
            device,
            dtype,
            stages,
            chunk_bytes: None,
        })
    }

    /// The steering of `interventions` (each checked with [`probe_core::Intervention::validate`]).
    pub(crate) fn steering(&self, interventions: &[probe_core::Intervention]) -> probe_core::Result<Steering> {
        let be = super::oom::error;
        let (l, h) = (self.cfg.num_layers, self.cfg.hidden_size);
        let (nh, d) = (self.cfg.num_heads, self.cfg.head_dim);
        let mut resid: Vec<Option<Vec<f32>>> = vec![None; l];
        let mut heads: Vec<Option<Vec<f32>>> = vec![None; l];
        for i in interventions {
            let add = i.scaled()?;
            let (slot, at, width) = match i.head {
                None => (&mut resid[i.layer], 0, h),
                Some(head) => (&mut heads[i.layer], head * d, nh * d),
            };
            let v = slot.get_or_insert_with(|| vec![0f32; width]);
            v[at..at + add.len()].iter_mut().zip(&add).for_each(|(v, a)| *v += a);
        }
        let tensors = |v: Vec<Option<Vec<f32>>>| -> probe_core::Result<Vec<Option<Tensor>>> {
            v.into_iter()
                .map(|v| {
                    v.map(|v| {
                        let n = v.len();
                        Tensor::from_vec(v, n, &self.device).and_then(|t| t.to_dtype(self.dtype))
                    })
                    .transpose()
                    .map_err(be)
                })
                .collect()
        };
        Ok(Steering { resid: tensors(resid)?, heads: tensors(heads)? })
    }

    /// Sets attention's chunk budget (`None`: the device's default).
    pub(crate) fn with_attention_chunk_bytes(mut self, bytes: Option<u64>) -> Self {
        self.chunk_bytes = bytes;
        self
    }

    /// The device the weights live on.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The embeddings of `ids` (`[b, s]`) at positions `offset..offset + s`, where `offsets`
    /// holds one offset for every row or (with `s = 1`) one per row.
    fn embed(&self, ids: &Tensor, offsets: &[usize]) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let x = match &self.embed {
            Embedding::Table(t) => t.index_select(&ids.flatten_all()?, 0)?,
            Embedding::Rows(rows) => rows.read(&ids.flatten_all()?.to_vec1()?, self.dtype, &self.device)?,
        };
        let x = x.reshape((b, s, self.cfg.hidden_size))?;
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

    /// What the blocks share when positions `offset..offset + s` run over rows of lengths
    /// `lens` (a prefill or an extraction: attention is causal over the input, see
    /// [`super::attention`]).
    fn step(&self, lens: &[usize], offset: usize, s: usize) -> Result<Step<'_>> {
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
            decode: None,
            chunk_bytes: self.chunk_bytes,
        })
    }

    /// Whether rows of total lengths `lens` can share a prefix of `p` positions: RoPE turns it
    /// the same way alone as inside each of them (longrope and dynamic NTK switch frequencies
    /// with the length).
    pub(crate) fn can_share(&self, p: usize, lens: &[usize]) -> bool {
        let same = |rope: &Rope| lens.iter().all(|&l| rope.same_frequencies(p, l));
        p > 0 && same(&self.cfg.rope) && self.cfg.local_rope.as_ref().is_none_or(same)
    }

    /// Runs `ids` (one sequence) once through blocks `0..blocks`, steered, keeping every
    /// block's keys and values and what `reads` read at its positions, for the calls that go
    /// on from it ([`Decoder::states`] and [`Decoder::prefill`] with `prefix`).
    pub(crate) fn prefix(
        &self,
        ids: &[u32],
        blocks: usize,
        reads: &[(Site, Vec<usize>)],
        steer: &Steering,
    ) -> Result<Prefix> {
        let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &self.device)?;
        let mut states = Vec::new();
        let mut keep = |site: Site, layer: usize, h: &Tensor| -> Result<()> {
            states.push(((site, layer), h.clone()));
            Ok(())
        };
        let mut reader = Reader::new(reads, self.blocks.len(), &mut keep);
        let (_, kv) = self.run(&input, &[ids.len()], None, blocks, true, steer, Some(&mut reader))?;
        Ok(Prefix { len: ids.len(), kv: kv.into(), states })
    }

    /// One forward call: `ids` (`[b, s]`, right-padded; `lens` the real lengths) after
    /// `prefix` (at positions `0..p` of every row), through blocks `0..blocks`, steered,
    /// handing `reader` what it reads on the way. Returns the residual stream after the last
    /// block run (`[b, s, hidden]`) and, with `keep`, every block's keys and values of the
    /// rows' own positions (`[b, kv_heads, s, head_dim]`).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ids: &Tensor,
        lens: &[usize],
        prefix: Option<&Prefix>,
        blocks: usize,
        keep: bool,
        steer: &Steering,
        mut reader: Option<&mut Reader<'_>>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (_, s) = ids.dims2()?;
        let p = prefix.map_or(0, Prefix::len);
        let whole: Vec<usize> = lens.iter().map(|&len| p + len).collect();
        let steps = self.stages.steps(self.step(&whole, p, s)?)?;
        let mut x = self.embed(ids, &[p])?;
        if let Some(r) = reader.as_deref_mut() {
            r.embedded(&x, prefix)?;
        }
        let mut kept = Vec::with_capacity(if keep { blocks } else { 0 });
        let l = self.cfg.num_layers;
        for (i, block) in self.blocks.iter().enumerate().take(blocks) {
            let mut kv = None;
            let input = steer.enter(i, self.stages.enter(i, x)?)?;
            let mut tap = reader.as_deref().and_then(|r| r.tap(i));
            let step = self.stages.step_of(&steps, i);
            let cache = match (prefix, keep) {
                (Some(pre), true) => Kv::After(&pre.kv[i], Some(&mut kv)),
                (Some(pre), false) => Kv::After(&pre.kv[i], None),
                (None, true) => Kv::Keep(&mut kv),
                (None, false) => Kv::None,
            };
            x = block.forward_tap(&input, step, cache, tap.as_mut(), steer.heads(i))?;
            if let Some(r) = reader.as_deref_mut() {
                r.after(i, l, tap, &x, self.norm.as_ref(), prefix)?;
            }
            if keep {
                kept.push(kv.ok_or_else(|| candle_core::Error::Msg(format!("block {i} kept no keys")))?);
            }
        }
        Ok((x, kept))
    }

    /// Runs `ids` (`[b, s]`, right-padded; `lens` the real lengths) once, after `prefix` when
    /// there is one, through the blocks up to the deepest of `reads` (per site, its sorted
    /// layers), and calls `visit(site, layer, value)` for each of them on the way: the
    /// residual stream in Hugging Face numbering (`[b, s, hidden]`; `L` after the final norm),
    /// every other site at its blocks, as the block's [`Tap`] holds it (`[b, s, width]`); with
    /// the prefix's positions in front (`[b, p + s, width]`) where the prefix kept them.
    /// Stops after the deepest; never computes logits.
    pub(crate) fn states(
        &self,
        ids: &Tensor,
        lens: &[usize],
        prefix: Option<&Prefix>,
        reads: &[(Site, Vec<usize>)],
        visit: &mut dyn FnMut(Site, usize, &Tensor) -> probe_core::Result<()>,
    ) -> probe_core::Result<()> {
        // The reader's calls return candle's errors: keep visit's own to return it as it is.
        let mut failed = None;
        let mut each = |site: Site, layer: usize, h: &Tensor| -> Result<()> {
            visit(site, layer, h).map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                candle_core::Error::Msg(msg)
            })
        };
        let mut reader = Reader::new(reads, self.blocks.len(), &mut each);
        let blocks = reader.depth();
        let ran = self.run(ids, lens, prefix, blocks, false, &Steering::default(), Some(&mut reader));
        drop(reader);
        match ran {
            Ok(_) => Ok(()),
            Err(e) => Err(failed.unwrap_or_else(|| super::oom::error(e))),
        }
    }

    /// The blocks a call reading `reads` runs (see [`Decoder::states`]).
    pub(crate) fn depth(&self, reads: &[(Site, Vec<usize>)]) -> usize {
        let mut none = |_: Site, _: usize, _: &Tensor| -> Result<()> { Ok(()) };
        Reader::new(reads, self.blocks.len(), &mut none).depth()
    }

    /// Refuses what the loaded part of the model cannot run, before any work: generation
    /// (`blocks = None`) without the LM head; hidden states that need `blocks` blocks (and,
    /// at every block, the final norm).
    pub(crate) fn check_loaded(&self, blocks: Option<usize>) -> probe_core::Result<()> {
        match blocks {
            None if self.lm_head.is_none() => Err(probe_core::Error::invalid(
                "blocks",
                format!(
                    "generation needs the whole model; this one was loaded for extraction up to block {} \
                     (CandleOptions::blocks)",
                    self.blocks.len()
                ),
            )),
            Some(n) if n > self.blocks.len() || (n == self.cfg.num_layers && self.norm.is_none()) => {
                Err(self.not_loaded(n))
            }
            _ => Ok(()),
        }
    }

    fn not_loaded(&self, needed: usize) -> probe_core::Error {
        probe_core::Error::invalid(
            "layers",
            format!(
                "reading them needs {needed} blocks; this model was loaded with blocks 0..{} of {} \
                 (CandleOptions::blocks)",
                self.blocks.len(),
                self.cfg.num_layers
            ),
        )
    }

    /// Phi-3 with longrope, as transformers 5.19 generates (`Phi3ForCausalLM.
    /// prepare_inputs_for_generation`): when the sequence grows past the longrope threshold
    /// while the cache holds no more positions than that, the cache is dropped and the new
    /// tokens run without the earlier ones (at their positions, on the long factors). Once
    /// dropped, the cache stays that short, so every later step runs alone too. Each sequence
    /// of a batched decode has its own keys, so this happens per sequence, as it would alone.
    fn drop_cache_at_longrope_switch(&self, row: &mut RowKv, s: usize) {
        let Some(threshold) = self.cfg.rope.longrope_threshold().filter(|_| self.drops_cache()) else { return };
        let held = row.held();
        if held > 0 && row.len + s > threshold && held <= threshold {
            row.dropped = row.len;
        }
    }

    /// Runs prompts `ids` (`[b, s]`, right-padded; `lens` the real lengths) after `prefix`
    /// when there is one; returns the logits at each row's last real token (`[b, vocab]` in
    /// f32, soft-capped where the architecture does so) and every layer's keys and values of
    /// the rows' own positions (`[b, kv_heads, s, head_dim]`, for [`DecodeKv::push`] with the
    /// prefix's [`Prefix::shared_kv`]).
    pub(crate) fn prefill(
        &self,
        ids: &Tensor,
        lens: &[usize],
        prefix: Option<&Prefix>,
        steer: &Steering,
        reader: Option<&mut Reader<'_>>,
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let (x, kept) = self.run(ids, lens, prefix, self.blocks.len(), true, steer, reader)?;
        let mut last = Vec::with_capacity(lens.len());
        for (r, &len) in lens.iter().enumerate() {
            last.push(x.narrow(0, r, 1)?.narrow(1, len - 1, 1)?);
        }
        let last = Tensor::cat(&last, 0)?.squeeze(1)?.contiguous()?;
        Ok((self.logits(&last)?, kept))
    }

    /// One decode step of the sequences in `kv` (row `r` in slot `r`): `ids[r]` is fed after
    /// what row `r` holds, at that sequence's own position (its RoPE frequencies, learned
    /// position and sliding window as if it ran alone); returns the logits, `[b, vocab]` in f32.
    /// Every row runs at once, attention included: each row's keys padded to the longest
    /// and masked ([`super::attention::rows`]).
    ///
    /// With `reader`, also hands it what it reads of this step's tokens (`[b, 1, width]`).
    pub(crate) fn next_logits_rows(
        &self,
        ids: &[u32],
        kv: &mut DecodeKv,
        steer: &Steering,
        mut reader: Option<&mut Reader<'_>>,
    ) -> Result<Tensor> {
        let b = ids.len();
        if kv.rows().len() != b {
            candle_core::bail!("{b} tokens for {} decoding rows", kv.rows().len());
        }
        kv.rows_mut().iter_mut().for_each(|r| self.drop_cache_at_longrope_switch(r, 1));
        let offsets: Vec<usize> = kv.rows().iter().map(|r| r.len).collect();
        // Keys held after this step's, and where this step's go.
        let held: Vec<usize> = kv.rows().iter().map(|r| r.held() + 1).collect();
        let keys = held.iter().copied().max().unwrap_or(1);
        kv.reserve_positions(keys)?;
        let per_row = self.cfg.num_kv_heads * self.cfg.head_dim;
        let at: Vec<u32> = held.iter().flat_map(|&h| std::iter::repeat_n((h - 1) as u32, per_row)).collect();
        let at = Tensor::from_vec(at, (b, self.cfg.num_kv_heads, 1, self.cfg.head_dim), &self.device)?;
        let window = self.cfg.windows.iter().flatten().copied().min();
        let rows = |rope: &Rope, inv_freq: &[f32]| -> Result<RopeRows> {
            let (cos, sin) = rope.at_positions(inv_freq, &offsets, &self.device, self.dtype)?;
            Ok(RopeRows { cos, sin })
        };
        let local_rope = match (&self.cfg.local_rope, &self.local_inv_freq) {
            (Some(rope), Some(inv_freq)) => Some(rows(rope, inv_freq)?),
            _ => None,
        };
        let (shared, restore) = self.shared_rows(kv.rows(), window)?;
        let decode = DecodeStep {
            at,
            keys,
            full_mask: attention::rows_mask(&held, keys, None, &self.device)?,
            sliding_mask: match window {
                Some(_) => attention::rows_mask(&held, keys, window, &self.device)?,
                None => None,
            },
            shared,
            restore,
        };
        let step = Step {
            cfg: &self.cfg,
            rope: rows(&self.cfg.rope, &self.inv_freq)?,
            local_rope,
            decode: Some(decode),
            chunk_bytes: self.chunk_bytes,
        };
        let steps = self.stages.steps(step)?;
        let mut x = self.embed(&Tensor::from_vec(ids.to_vec(), (b, 1), &self.device)?, &offsets)?;
        if let Some(r) = reader.as_deref_mut() {
            r.embedded(&x, None)?;
        }
        let l = self.cfg.num_layers;
        for (i, block) in self.blocks.iter().enumerate() {
            let (kb, vb) = kv.layer(i)?;
            let input = steer.enter(i, self.stages.enter(i, x)?)?;
            let mut tap = reader.as_deref().and_then(|r| r.tap(i));
            let step = self.stages.step_of(&steps, i);
            x = block.forward_tap(&input, step, Kv::Decode(kb, vb, i), tap.as_mut(), steer.heads(i))?;
            if let Some(r) = reader.as_deref_mut() {
                r.after(i, l, tap, &x, self.norm.as_ref(), None)?;
            }
        }
        kv.rows_mut().iter_mut().for_each(|r| r.len += 1);
        self.logits(&x.squeeze(1)?)
    }

    /// The rows of a decode step grouped by the prefix they share (rows in slot order, each
    /// about to feed position `len`), with their masks over its keys on sliding layers of
    /// `window`, and the order that puts values stacked group by group (then the rows of no
    /// group) back in slot order (`None` when no row shares a prefix).
    fn shared_rows(&self, rows: &[RowKv], window: Option<usize>) -> Result<(Vec<SharedRows>, Option<Tensor>)> {
        let mut groups: Vec<(&SharedKv, Vec<usize>)> = Vec::new();
        for (r, row) in rows.iter().enumerate() {
            let Some(kv) = &row.shared else { continue };
            match groups.iter_mut().find(|(g, _)| g.same(kv)) {
                Some((_, members)) => members.push(r),
                None => groups.push((kv, vec![r])),
            }
        }
        if groups.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut stacked: Vec<usize> = groups.iter().flat_map(|(_, m)| m.iter().copied()).collect();
        stacked.extend((0..rows.len()).filter(|&r| rows[r].shared.is_none()));
        let mut restore = vec![0u32; rows.len()];
        for (at, &r) in stacked.iter().enumerate() {
            restore[r] = at as u32;
        }
        let shared = groups
            .into_iter()
            .map(|(kv, members)| {
                // After this step a row holds len + 1 positions and sees the last `window`.
                let hidden: Vec<usize> =
                    members.iter().map(|&r| window.map_or(0, |w| (rows[r].len + 1).saturating_sub(w))).collect();
                let sliding_mask = match hidden.iter().any(|&h| h > 0) {
                    true => {
                        let mask = hidden
                            .iter()
                            .flat_map(|&h| (0..kv.len).map(move |j| if j < h { f32::NEG_INFINITY } else { 0.0 }));
                        Some(Tensor::from_iter(mask, &self.device)?.reshape((members.len(), 1, 1, kv.len))?)
                    }
                    false => None,
                };
                let ids: Vec<u32> = members.iter().map(|&r| r as u32).collect();
                let n = ids.len();
                Ok(SharedRows { rows: Tensor::from_vec(ids, n, &self.device)?, kv: kv.clone(), sliding_mask })
            })
            .collect::<Result<_>>()?;
        Ok((shared, Some(Tensor::from_vec(restore, rows.len(), &self.device)?)))
    }

    /// Whether a decoding sequence may drop its cache (Phi-3's longrope switch, see
    /// [`Decoder::drop_cache_at_longrope_switch`]): then its prompt keeps every key in its own
    /// slot, sharing none.
    pub(crate) fn drops_cache(&self) -> bool {
        self.cfg.rope.longrope_threshold().is_some() && self.cfg.spec.fused
    }

    /// The logits of hidden states `[b, hidden]` (final norm, LM head, soft-capping), in f32.
    fn logits(&self, last: &Tensor) -> Result<Tensor> {
        let (Some(norm), Some(lm_head)) = (&self.norm, &self.lm_head) else {
            candle_core::bail!("the model was loaded for extraction only (no LM head)")
        };
        let last = norm.forward(last)?;
        let logits = times_transposed(&last, lm_head)?.to_dtype(DType::F32)?;
        match self.cfg.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}
