//! Every token's hidden states (`--positions all`), streamed batch by batch into row shards
//! of bounded size, never held whole in memory. A shard is one safetensors file that stock
//! numpy/safetensors read: `layer.<L>` f32 `[tokens, width]` (the shard's rows one after
//! another, no padding; `[tokens, heads, head_dim]` at site `heads`; `<site>.layer.<L>` when
//! several sites are read, all in the same forward passes), `token_ids` u32 `[tokens]`, `row_offsets` i64 `[rows + 1]` (row `r`
//! is tokens `row_offsets[r]..row_offsets[r + 1]`), and metadata `first_row`, `ids` (JSON
//! list of the rows' prompt ids), `model`, `revision`, `dtype`, `positions` = `all`.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, TensorView};

use super::{Phase, PromptSet, SweepEvent, SweepObserver};
use crate::plan::Backoff;
use crate::{ActivationExtractor, Error, Inputs, ModelInfo, Positions, Result, Site};

/// Bytes per shard at most, by default (2 GiB).
pub const DEFAULT_SHARD_BYTES: u64 = 2 << 30;

/// One shard of rows `[first_row, first_row + rows)`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenShard {
    /// Shard number (0, 1, …).
    pub index: usize,
    /// First row.
    pub first_row: usize,
    /// Prompt ids of the rows.
    pub ids: Vec<String>,
    /// Token ids of every row, concatenated.
    pub token_ids: Vec<u32>,
    /// `rows + 1` offsets into the tokens.
    pub row_offsets: Vec<u64>,
    /// Per (site, layer), `[tokens, width]` values.
    pub layers: BTreeMap<(Site, usize), Vec<f32>>,
    /// Per site, the shape of one token's values (`[hidden]`; `[heads, head_dim]` for
    /// [`Site::Heads`]).
    pub token_shapes: BTreeMap<Site, Vec<usize>>,
}

/// The shape of one token's values at `site`.
fn token_shape(info: &ModelInfo, site: Site) -> Vec<usize> {
    match site {
        Site::Heads => vec![info.num_heads, info.head_dim],
        _ => vec![info.width(site)],
    }
}

impl TokenShard {
    fn new(index: usize, first_row: usize, slots: &[(Site, usize)], token_shapes: &BTreeMap<Site, Vec<usize>>) -> Self {
        Self {
            index,
            first_row,
            ids: Vec::new(),
            token_ids: Vec::new(),
            row_offsets: vec![0],
            layers: slots.iter().map(|&l| (l, Vec::new())).collect(),
            token_shapes: token_shapes.clone(),
        }
    }

    /// Values per token over every (site, layer).
    fn token_width(&self) -> usize {
        self.layers.keys().map(|(site, _)| self.token_shapes[site].iter().product::<usize>()).sum()
    }

    /// Bytes of its tensors.
    pub fn bytes(&self) -> u64 {
        row_bytes(self.token_ids.len(), self.token_width()) + 8 * self.row_offsets.len() as u64
    }

    /// The safetensors file, with `meta` added to its metadata.
    ///
    /// # Errors
    /// A safetensors error (never for shards built here).
    pub fn to_safetensors(&self, meta: &HashMap<String, String>) -> Result<Vec<u8>> {
        let tokens = self.token_ids.len();
        let le = |v: &mut dyn Iterator<Item = [u8; 4]>| v.flatten().collect::<Vec<u8>>();
        let several = self.token_shapes.len() > 1;
        let layer_bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .layers
            .iter()
            .map(|((site, l), v)| {
                let name = if several { format!("{site}.layer.{l}") } else { format!("layer.{l}") };
                let shape = [vec![tokens], self.token_shapes[site].clone()].concat();
                (name, shape, le(&mut v.iter().map(|x| x.to_le_bytes())))
            })
            .collect();
        let ids = le(&mut self.token_ids.iter().map(|x| x.to_le_bytes()));
        let offsets: Vec<u8> = self.row_offsets.iter().flat_map(|&o| (o as i64).to_le_bytes()).collect();
        let st = |e: safetensors::SafeTensorError| Error::backend("safetensors", e);
        let mut views = vec![
            ("token_ids".to_owned(), TensorView::new(Dtype::U32, vec![tokens], &ids).map_err(st)?),
            (
                "row_offsets".to_owned(),
                TensorView::new(Dtype::I64, vec![self.row_offsets.len()], &offsets).map_err(st)?,
            ),
        ];
        for (name, shape, b) in &layer_bytes {
            views.push((name.clone(), TensorView::new(Dtype::F32, shape.clone(), b).map_err(st)?));
        }
        let mut meta = meta.clone();
        meta.insert("first_row".into(), self.first_row.to_string());
        meta.insert("ids".into(), serde_json::to_string(&self.ids).unwrap_or_default());
        meta.insert("positions".into(), "all".into());
        safetensors::serialize(views, Some(meta)).map_err(st)
    }
}

/// Bytes of `tokens` tokens of `width` values each (over every layer), and their ids.
fn row_bytes(tokens: usize, width: usize) -> u64 {
    tokens as u64 * (4 * width as u64 + 4)
}

/// Extracts every token of every prompt at `reads` (per site, its layers; every site read in
/// the same forward passes), in batches of `batch_size` through the out-of-memory back-off,
/// and hands `sink` one [`TokenShard`] at a time, each at most `max_shard_bytes`; returns the
/// number of shards.
///
/// # Errors
/// [`Error::InvalidInput`] for no prompts or layers, a site twice, a batch size or shard limit
/// of 0, or one prompt larger than a shard (naming it); the extractor's errors (it must
/// support `Positions::All` and tokenise texts), and `sink`'s.
pub async fn stream_all_tokens(
    extractor: &dyn ActivationExtractor,
    observer: &dyn SweepObserver,
    prompts: &PromptSet,
    reads: &[(Site, Vec<usize>)],
    (batch_size, max_shard_bytes): (usize, u64),
    sink: &mut dyn FnMut(TokenShard) -> Result<()>,
) -> Result<usize> {
    if batch_size == 0 || max_shard_bytes == 0 {
        return Err(Error::invalid("batch size / shard size", "0 (must be ≥ 1)"));
    }
    let info = extractor.model_info();
    let special = prompts.special_tokens;
    let ids: Vec<Vec<u32>> =
        prompts.prompts.iter().map(|p| extractor.tokenize(&p.text, special)).collect::<Result<_>>()?;
    let request = super::activations::request_for(&Inputs::TokenIds(ids.clone()), reads).with_positions(Positions::All);
    request.validate(&info)?;
    let reads = request.reads();
    let slots = super::activations::slots(&reads);
    let shapes: BTreeMap<Site, Vec<usize>> = reads.iter().map(|&(site, _)| (site, token_shape(&info, site))).collect();
    let width = |site: Site| shapes[&site].iter().product::<usize>();
    let token_width: usize = slots.iter().map(|&(site, _)| width(site)).sum();
    for (p, seq) in prompts.prompts.iter().zip(&ids) {
        let need = row_bytes(seq.len(), token_width) + 16;
        if need > max_shard_bytes {
            return Err(Error::invalid(
                "shard size",
                format!("{max_shard_bytes} bytes: prompt {:?} alone needs {need}", p.id),
            ));
        }
    }
    let batches = super::blocks(ids.len(), batch_size);
    observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Activations, total: batches.len() });
    let backoff = Backoff::halving();
    let mut shard = TokenShard::new(0, 0, &slots, &shapes);
    let mut shards = 0;
    for (b, &(start, end)) in batches.iter().enumerate() {
        let request = super::activations::request_for(&Inputs::TokenIds(ids[start..end].to_vec()), &reads)
            .with_positions(Positions::All)
            .with_batch_size(end - start);
        let acts = backoff.extract(extractor, request, &|_, _| {}).await?;
        for r in 0..end - start {
            let row = start + r;
            let len = ids[row].len();
            if shard.bytes() + row_bytes(len, token_width) + 8 > max_shard_bytes {
                let next = TokenShard::new(shard.index + 1, row, &slots, &shapes);
                sink(std::mem::replace(&mut shard, next))?;
                shards += 1;
            }
            for (&(site, layer), out) in shard.layers.iter_mut() {
                let t = acts
                    .at(site, layer)
                    .ok_or_else(|| Error::backend("extractor", format!("no layer {layer} of site {site}")))?;
                let (seq, w) = (t.shape[1], width(site));
                out.extend_from_slice(&t.data[r * seq * w..(r * seq + len) * w]);
            }
            shard.token_ids.extend_from_slice(&ids[row]);
            shard.row_offsets.push(shard.token_ids.len() as u64);
            shard.ids.push(prompts.prompts[row].id.clone());
        }
        observer.on_event(&SweepEvent::Progress { phase: Phase::Activations, done: b + 1 });
    }
    if !shard.ids.is_empty() {
        sink(shard)?;
        shards += 1;
    }
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Activations });
    Ok(shards)
}
