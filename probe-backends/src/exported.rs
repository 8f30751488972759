//! What the `tch` and `ort` backends share: a folder written by `scripts/python/export_torchscript.py`
//! or `scripts/python/export_onnx.py` (`export.json`, the model file, the tokenizer and config
//! files), tokenisation with right padding, the sites an export holds (`--sites`), and the
//! position reductions.
//!
//! Right padding keeps every real token at the positions it has unbatched (positions count from
//! 0 at the first token) and, with a causal mask, no real token sees a padding token: a batched
//! result equals the unbatched one.

// With only `vllm` on, the export folder is unused: the vLLM extractor shares the batch
// and the reductions.
#![cfg_attr(not(any(feature = "tch", feature = "ort")), allow(dead_code))]

use std::path::{Path, PathBuf};

use probe_core::{
    ActivationRequest, Activations, Error, Inputs, LayerActivations, ModelId, ModelInfo, Positions, Result, Site, Span,
    SpecialTokens, Tensor,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

/// The fields of `export.json` the backends read.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ExportMeta {
    /// `torchscript` or `onnx`.
    pub(crate) format: String,
    /// The model file, relative to the folder.
    pub(crate) file: String,
    /// `model_type` of the source config.
    pub(crate) architecture: String,
    pub(crate) num_layers: usize,
    pub(crate) hidden_size: usize,
    pub(crate) vocab_size: usize,
    /// Weights' dtype (`f32`, `bf16`, `f16`); outputs are always f32.
    pub(crate) dtype: String,
    /// The device the export was traced on (`cpu`, `cuda`).
    pub(crate) device: String,
    pub(crate) pad_token_id: Option<u32>,
    /// The sites the export holds (`--sites`), `resid` first; absent: `resid` only.
    #[serde(default)]
    pub(crate) sites: Vec<Site>,
    /// Attention heads per block and their dimension (written with `--sites`).
    #[serde(default)]
    pub(crate) num_heads: usize,
    #[serde(default)]
    pub(crate) head_dim: usize,
    /// Experts of a mixture of experts (written with `--sites`; 0 for a dense model).
    #[serde(default)]
    pub(crate) num_experts: usize,
}

impl ExportMeta {
    /// The sites the export holds: `resid` and those of `--sites`.
    pub(crate) fn sites(&self) -> Vec<Site> {
        if self.sites.is_empty() { vec![Site::Resid] } else { self.sites.clone() }
    }
}

/// An export folder, loaded: metadata, tokenizer and the model's info.
#[derive(Debug)]
pub(crate) struct ExportDir {
    pub(crate) meta: ExportMeta,
    pub(crate) model_file: PathBuf,
    pub(crate) info: ModelInfo,
    tokenizer: Tokenizer,
    dir: PathBuf,
    script: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path.display(), e))
}

impl ExportDir {
    /// Reads `dir/export.json` and `dir/tokenizer.json`; `format` is the one the backend runs
    /// and `script` the export script to name in errors.
    pub(crate) fn open(dir: &Path, format: &str, script: &str) -> Result<ExportDir> {
        let meta_path = dir.join("export.json");
        if !meta_path.exists() {
            return Err(Error::invalid(
                "model folder",
                format!(
                    "{} has no export.json: make it with `python scripts/python/{script} MODEL_DIR {}`",
                    dir.display(),
                    dir.display()
                ),
            ));
        }
        let meta_bytes = read(&meta_path)?;
        let meta: ExportMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| Error::invalid(format!("{}", meta_path.display()), e.to_string()))?;
        if meta.format != format {
            return Err(Error::invalid(
                format!("{}", meta_path.display()),
                format!("format {:?}, expected {format:?} (made by scripts/python/{script})", meta.format),
            ));
        }
        let model_file = dir.join(&meta.file);
        if !model_file.is_file() {
            return Err(Error::invalid("model folder", format!("{} is missing", model_file.display())));
        }
        let tok_path = dir.join("tokenizer.json");
        let tok_bytes = read(&tok_path)?;
        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| Error::invalid(format!("tokenizer {}", tok_path.display()), e))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| Error::invalid(format!("tokenizer {}", tok_path.display()), e))?;
        let tokenizer_desc = format!("add_special_tokens=true;sha256={}", hex(&Sha256::digest(&tok_bytes)));
        let revision = hex(&Sha256::digest(&meta_bytes));
        let info = ModelInfo::new(
            ModelId::new(dir.to_string_lossy(), revision),
            meta.architecture.clone(),
            meta.num_layers,
            meta.hidden_size,
            meta.vocab_size,
        )
        .with_dtype(meta.dtype.clone())
        .with_tokenizer(tokenizer_desc)
        .with_heads(meta.num_heads, meta.head_dim)
        .with_experts(meta.num_experts);
        Ok(ExportDir { meta, model_file, info, tokenizer, dir: dir.to_owned(), script: script.to_owned() })
    }

    /// Refuses a site the export does not hold, naming the folder, the sites it holds and how
    /// to export the site.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a site missing from `export.json`'s `sites`.
    pub(crate) fn require_site(&self, site: Site) -> Result<()> {
        let sites = self.meta.sites();
        if sites.contains(&site) {
            return Ok(());
        }
        let names: Vec<&str> = sites.iter().map(|s| s.as_str()).collect();
        let wanted: Vec<&str> =
            Site::ALL.iter().filter(|s| sites.contains(s) || **s == site).map(|s| s.as_str()).collect();
        Err(Error::invalid(
            "site",
            format!(
                "{site}: the export {dir} holds only {}; re-export it with `python scripts/python/{} MODEL_DIR {dir} \
                 --sites {}`",
                names.join(", "),
                self.script,
                wanted.join(","),
                dir = self.dir.display(),
            ),
        ))
    }

    /// The token ids of one text (the extractors' `tokenize`).
    pub(crate) fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let mut ids = self.token_ids(&Inputs::Texts(vec![text.to_owned()]), special)?;
        Ok(ids.remove(0))
    }

    /// The token ids of every input (texts tokenised with special tokens unless `special` says
    /// they are written in), checked non-empty and inside the vocabulary.
    pub(crate) fn token_ids(&self, inputs: &Inputs, special: SpecialTokens) -> Result<Vec<Vec<u32>>> {
        let ids = encode_inputs(&self.tokenizer, inputs, special)?;
        for (i, seq) in ids.iter().enumerate() {
            if let Some(&t) = seq.iter().find(|&&t| t as usize >= self.info.vocab_size) {
                return Err(Error::invalid(
                    "token id",
                    format!("{t} in input #{i} is outside the vocabulary of {}", self.info.vocab_size),
                ));
            }
        }
        Ok(ids)
    }

    /// Validates `request` (its sites among those the export holds), tokenises it, runs
    /// `forward` once per batch and reduces what it returns. `forward(batch, reads)` gets the
    /// padded batch and the request's reads (per site, its sorted layers; blocks for a site
    /// inside blocks) and returns, per site and per layer of it, the `[batch, seq, width]` f32
    /// values in row-major order (width: [`ModelInfo::width`]): one run serves every site.
    pub(crate) fn extract<F>(
        &self,
        request: &ActivationRequest,
        default_batch: usize,
        mut forward: F,
    ) -> Result<Activations>
    where
        F: FnMut(&PaddedBatch, &[(Site, Vec<usize>)]) -> Result<Vec<Vec<Vec<f32>>>>,
    {
        request.validate(&self.info)?;
        let reads = request.reads();
        for (site, _) in &reads {
            self.require_site(*site)?;
        }
        let ids = self.token_ids(&request.inputs, request.special_tokens)?;
        let batch_size = request.batch_size.unwrap_or(default_batch).max(1);
        let spans: Vec<_> = ids.iter().enumerate().map(|(i, s)| request.span(i, s.len())).collect::<Result<_>>()?;
        let pad = self.meta.pad_token_id.unwrap_or(0);
        let mut outs: Vec<Collector> = reads
            .iter()
            .map(|(site, layers)| {
                let shape = match site {
                    Site::Heads => vec![self.info.num_heads, self.info.head_dim],
                    site => vec![self.info.width(*site)],
                };
                Collector::new(request.positions, layers, &shape, &ids, spans.clone())
            })
            .collect();
        for (start, chunk) in (0..ids.len()).step_by(batch_size).map(|s| (s, &ids[s..(s + batch_size).min(ids.len())]))
        {
            let batch = PaddedBatch::new(chunk, pad);
            let values = forward(&batch, &reads)?;
            for (((site, layers), out), values) in reads.iter().zip(&mut outs).zip(&values) {
                if values.len() != layers.len() {
                    return Err(Error::backend(
                        "exported model",
                        format!("returned {} {site} values for {} requested layers", values.len(), layers.len()),
                    ));
                }
                for (k, v) in values.iter().enumerate() {
                    out.push(k, start, &batch, v)?;
                }
            }
        }
        let mut all: Option<Activations> = None;
        for ((site, _), out) in reads.iter().zip(outs) {
            let mut acts = out.finish();
            acts.layers.iter_mut().for_each(|l| l.site = *site);
            match &mut all {
                Some(a) => a.layers.append(&mut acts.layers),
                None => all = Some(acts),
            }
        }
        all.ok_or_else(|| Error::invalid("layers", "no layers requested"))
    }
}

/// The token ids of every input (texts tokenised by `tokenizer`, with its special tokens unless
/// `special` says they are written in), checked non-empty: the one tokenisation of the
/// extractors that hold a `tokenizer.json` (TorchScript, ONNX, vLLM).
pub(crate) fn encode_inputs(tokenizer: &Tokenizer, inputs: &Inputs, special: SpecialTokens) -> Result<Vec<Vec<u32>>> {
    let ids = match inputs {
        Inputs::TokenIds(ids) => ids.clone(),
        Inputs::Texts(texts) => texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                tokenizer
                    .encode(t.as_str(), special.add())
                    .map(|enc| enc.get_ids().to_vec())
                    .map_err(|e| Error::invalid(format!("text #{i}"), format!("tokenizer failed: {e}")))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        return Err(Error::invalid("inputs", format!("input #{i} has no tokens")));
    }
    Ok(ids)
}

/// Token ids padded on the right into a `[batch, seq]` block, with the attention mask.
#[derive(Debug, Clone)]
pub(crate) struct PaddedBatch {
    /// `[batch, seq]` token ids, padding filled with the pad id.
    pub(crate) ids: Vec<i64>,
    /// `[batch, seq]`: 1 for real tokens, 0 for padding.
    pub(crate) mask: Vec<i64>,
    /// Real tokens per row.
    pub(crate) lens: Vec<usize>,
    pub(crate) batch: usize,
    pub(crate) seq: usize,
}

impl PaddedBatch {
    pub(crate) fn new(seqs: &[Vec<u32>], pad: u32) -> PaddedBatch {
        let seq = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let batch = seqs.len();
        let mut ids = vec![i64::from(pad); batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (r, s) in seqs.iter().enumerate() {
            for (c, &t) in s.iter().enumerate() {
                ids[r * seq + c] = i64::from(t);
                mask[r * seq + c] = 1;
            }
        }
        PaddedBatch { ids, mask, lens: seqs.iter().map(Vec::len).collect(), batch, seq }
    }
}

/// Accumulates the reduced rows of every requested layer across batches.
pub(crate) struct Collector {
    positions: Positions,
    layers: Vec<usize>,
    /// The shape of one position's values (`[hidden]`, `[heads, head_dim]` …).
    per_position: Vec<usize>,
    /// Values per position.
    hidden: usize,
    /// For `All`: the longest input, every row is padded to it.
    width: usize,
    counts: Vec<usize>,
    /// Per input, the tokens `Last` and `Mean` read.
    spans: Vec<Span>,
    data: Vec<Vec<f32>>,
}

impl Collector {
    /// Collects `layers` of the inputs `ids`, each position holding values of shape
    /// `per_position` (`[hidden]` for the residual stream).
    pub(crate) fn new(
        positions: Positions,
        layers: &[usize],
        per_position: &[usize],
        ids: &[Vec<u32>],
        spans: Vec<Span>,
    ) -> Collector {
        let n = ids.len();
        let hidden = per_position.iter().product();
        let width = ids.iter().map(Vec::len).max().unwrap_or(0);
        let per_layer = match positions {
            Positions::Last | Positions::Mean => n * hidden,
            Positions::All => n * width * hidden,
        };
        Collector {
            positions,
            layers: layers.to_vec(),
            per_position: per_position.to_vec(),
            hidden,
            width,
            counts: ids.iter().map(Vec::len).collect(),
            spans,
            data: layers.iter().map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    /// The end (exclusive) of the tokens input `i`'s `Last` or `Mean` reads.
    pub(crate) fn span_end(&self, i: usize) -> usize {
        self.spans[i].end
    }

    /// Adds layer `k`'s `[batch, seq, hidden]` values for the inputs starting at `start`.
    pub(crate) fn push(&mut self, k: usize, start: usize, batch: &PaddedBatch, values: &[f32]) -> Result<()> {
        let (h, seq) = (self.hidden, batch.seq);
        if values.len() != batch.batch * seq * h {
            return Err(Error::backend(
                "exported model",
                format!(
                    "hidden state {} has {} values, expected [{}, {seq}, {h}]",
                    self.layers[k],
                    values.len(),
                    batch.batch
                ),
            ));
        }
        let dst = &mut self.data[k];
        for (r, &len) in batch.lens.iter().enumerate() {
            let row = &values[r * seq * h..(r + 1) * seq * h];
            let i = start + r;
            let span = self.spans[i];
            match self.positions {
                Positions::Last => dst[i * h..(i + 1) * h].copy_from_slice(&row[(span.end - 1) * h..span.end * h]),
                Positions::Mean => {
                    let mut acc = vec![0f64; h];
                    for t in span.start..span.end {
                        for (a, &v) in acc.iter_mut().zip(&row[t * h..(t + 1) * h]) {
                            *a += f64::from(v);
                        }
                    }
                    for (d, a) in dst[i * h..(i + 1) * h].iter_mut().zip(acc) {
                        *d = (a / (span.end - span.start) as f64) as f32;
                    }
                }
                Positions::All => {
                    let w = self.width;
                    dst[i * w * h..i * w * h + len * h].copy_from_slice(&row[..len * h]);
                }
            }
        }
        Ok(())
    }

    /// Sets input `i`'s `Last` or `Mean` row of layer `k` to `row`, reduced elsewhere (a vLLM
    /// server that reduces before it writes).
    pub(crate) fn set_reduced(&mut self, k: usize, i: usize, row: &[f32]) -> Result<()> {
        let h = self.hidden;
        if self.positions == Positions::All || row.len() != h {
            return Err(Error::backend(
                "exported model",
                format!("a reduced row of {} values for {} positions of hidden size {h}", row.len(), self.positions),
            ));
        }
        self.data[k][i * h..(i + 1) * h].copy_from_slice(row);
        Ok(())
    }

    pub(crate) fn finish(self) -> Activations {
        let n = self.counts.len();
        let w = self.width;
        let shape = match self.positions {
            Positions::Last | Positions::Mean => [vec![n], self.per_position].concat(),
            Positions::All => [vec![n, w], self.per_position].concat(),
        };
        let layers = self
            .layers
            .iter()
            .zip(self.data)
            .map(|(&layer, data)| {
                LayerActivations::new(probe_core::Site::Resid, layer, Tensor::new(shape.clone(), data))
            })
            .collect();
        let mask = (self.positions == Positions::All).then(|| {
            let mut m = vec![0f32; n * w];
            for (i, &c) in self.counts.iter().enumerate() {
                m[i * w..i * w + c].fill(1.0);
            }
            Tensor::new(vec![n, w], m)
        });
        Activations::new(layers, self.positions, mask, self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(ids: &[Vec<u32>]) -> Vec<Span> {
        ids.iter().map(|s| Span::new(0, s.len())).collect()
    }

    #[test]
    fn padding_is_on_the_right_with_a_mask() {
        let b = PaddedBatch::new(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!((b.batch, b.seq), (2, 3));
        assert_eq!(b.ids, vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(b.mask, vec![1, 1, 1, 1, 0, 0]);
        assert_eq!(b.lens, vec![3, 1]);
    }

    #[test]
    fn reductions_ignore_padding() {
        let ids = vec![vec![1, 2], vec![3]];
        let batch = PaddedBatch::new(&ids, 0);
        // [2, 2, 1]: row 0 = [1, 3], row 1 = [10, 99 (padding)].
        let values = [1.0, 3.0, 10.0, 99.0];
        for (positions, want) in [(Positions::Last, vec![3.0, 10.0]), (Positions::Mean, vec![2.0, 10.0])] {
            let mut c = Collector::new(positions, &[4], &[1], &ids, whole(&ids));
            c.push(0, 0, &batch, &values).unwrap();
            let acts = c.finish();
            assert_eq!(acts.layer(4).unwrap().data, want, "{positions}");
            assert_eq!(acts.token_counts, vec![2, 1]);
        }
        let mut c = Collector::new(Positions::All, &[4], &[1], &ids, whole(&ids));
        c.push(0, 0, &batch, &values).unwrap();
        let acts = c.finish();
        assert_eq!(acts.layer(4).unwrap().data, vec![1.0, 3.0, 10.0, 0.0]);
        assert_eq!(acts.mask.unwrap().data, vec![1.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn a_site_keeps_the_shape_of_one_position() {
        // Heads: 2 heads of 2 per position, read as [n, heads, head_dim].
        let ids = vec![vec![1, 2], vec![3]];
        let batch = PaddedBatch::new(&ids, 0);
        let values: Vec<f32> = (0..2 * 2 * 4).map(|v| v as f32).collect();
        let mut c = Collector::new(Positions::Last, &[1], &[2, 2], &ids, whole(&ids));
        c.push(0, 0, &batch, &values).unwrap();
        let t = &c.finish().layers[0].tensor;
        assert_eq!(t.shape, vec![2, 2, 2]);
        assert_eq!(t.data, vec![4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        let mut c = Collector::new(Positions::All, &[1], &[2, 2], &ids, whole(&ids));
        c.push(0, 0, &batch, &values).unwrap();
        assert_eq!(c.finish().layers[0].tensor.shape, vec![2, 2, 2, 2]);
    }

    #[test]
    fn a_short_hidden_state_is_an_error_not_a_panic() {
        let ids = vec![vec![1, 2]];
        let batch = PaddedBatch::new(&ids, 0);
        let mut c = Collector::new(Positions::Last, &[0], &[4], &ids, whole(&ids));
        assert!(c.push(0, 0, &batch, &[0.0; 3]).is_err());
    }
}
