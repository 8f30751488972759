//! Extraction: tokenise, form batches (by length, or by shared prefix: [`super::batches`]),
//! right-pad each, one forward pass per batch (after its shared prefix's, run once) that reads
//! every requested (site, layer) and stops at the deepest, reduce each captured tensor on the
//! device.

use std::sync::atomic::Ordering;

use candle_core::{DType, Tensor};
use probe_core::{ActivationRequest, Activations, Error, Inputs, LayerActivations, Positions, Result, Site};

use super::backend::Inner;
use super::config::ModelConfig;

fn be(e: candle_core::Error) -> Error {
    super::oom::error(e)
}

/// Refuses a site that blocks of `cfg` (a model of architecture `arch`) lack where `reads`
/// reads it, naming it: before any work (also before loading weights: [`super::CandleFolder::check_sites`]).
pub(crate) fn check_sites(cfg: &ModelConfig, arch: &str, reads: &[(Site, Vec<usize>)]) -> Result<()> {
    for (site, layers) in reads {
        for &b in layers.iter().filter(|&&b| site.in_block() && b < cfg.num_layers) {
            match site {
                Site::Router if !(0..cfg.num_layers).any(|i| cfg.sparse(i)) => {
                    return Err(Error::invalid(
                        "site",
                        format!("router: {arch} is not a mixture of experts (its MLPs have no router)"),
                    ));
                }
                Site::Router if !cfg.sparse(b) => {
                    return Err(Error::invalid(
                        "site",
                        format!("router: block {b} of {arch} has a dense MLP, no router"),
                    ));
                }
                Site::ResidMid if cfg.parallel_residual => {
                    return Err(Error::invalid(
                        "site",
                        format!(
                            "resid_mid: {arch}'s blocks add attention and MLP to the same input (parallel \
                             residual), so there is no residual stream between them; read attn_out and mlp_out"
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

impl Inner {
    /// What one position holds at `site`: its width and the shape of one position's values.
    pub(crate) fn site_shape(&self, site: Site) -> (usize, Vec<usize>) {
        let cfg = &self.decoder.cfg;
        match site {
            Site::Heads => (cfg.num_heads * cfg.head_dim, vec![cfg.num_heads, cfg.head_dim]),
            Site::Router => {
                let e = cfg.moe.as_ref().map_or(0, |m| m.num_experts);
                (e, vec![e])
            }
            Site::Resid | Site::ResidMid | Site::AttnOut | Site::MlpOut => (cfg.hidden_size, vec![cfg.hidden_size]),
        }
    }

    pub(crate) fn extract(&self, request: &ActivationRequest) -> Result<Activations> {
        let reads = request.reads();
        check_sites(&self.decoder.cfg, &self.info.architecture, &reads)?;
        let ids: Vec<Vec<u32>> = match &request.inputs {
            Inputs::Texts(texts) => {
                texts.iter().map(|t| self.tokenize_with(t, request.special_tokens)).collect::<Result<_>>()?
            }
            Inputs::TokenIds(ids) => ids.clone(),
        };
        let mut spans = Vec::with_capacity(ids.len());
        for (i, seq) in ids.iter().enumerate() {
            self.check_length(i, seq.len())?;
            spans.push(request.span(i, seq.len())?);
        }
        if reads.iter().any(|(_, layers)| layers.is_empty()) {
            return Err(Error::invalid("layers", "no layers requested"));
        }
        self.decoder.check_loaded(Some(Site::blocks_for(&reads)))?;
        let n = ids.len();
        let positions = request.positions;
        let max_len = ids.iter().map(Vec::len).max().unwrap_or(0);
        // One output per (site, layer), in the order of `reads`.
        let slots: Vec<(Site, usize)> =
            reads.iter().flat_map(|(site, layers)| layers.iter().map(move |&l| (*site, l))).collect();
        let row_width = |site: Site| match positions {
            Positions::All => max_len * self.site_shape(site).0,
            Positions::Last | Positions::Mean => self.site_shape(site).0,
        };
        let mut out: Vec<Vec<f32>> = slots.iter().map(|&(site, _)| vec![0f32; n * row_width(site)]).collect();

        let batch = request.batch_size.unwrap_or(self.options.default_batch_size).max(1);
        let device = self.decoder.device().clone();
        let pad = self.decoder.cfg.pad_token_id.filter(|&p| (p as usize) < self.decoder.cfg.vocab_size).unwrap_or(0);
        let depth = self.decoder.depth(&reads);

        for super::batches::Batch { rows: chunk, prefix: shared } in
            super::batches::plan(&ids, batch, self.options.shared_prefixes)
        {
            let lens: Vec<usize> = chunk.iter().map(|&i| ids[i].len()).collect();
            let s = lens.iter().copied().max().unwrap_or(1);
            let b = chunk.len();
            let sp: Vec<probe_core::Span> = chunk.iter().map(|&i| spans[i]).collect();
            let shared = if self.decoder.can_share(shared, &lens) { shared } else { 0 };
            // The readouts that cover a prefix position read the prefix's values too; the
            // others read the rows' own positions, `base..s`.
            let covered = match positions {
                Positions::All => shared > 0,
                Positions::Last => sp.iter().any(|p| p.end <= shared),
                Positions::Mean => sp.iter().any(|p| p.start < shared),
            };
            let base = if covered { 0 } else { shared };
            if shared > 0 {
                tracing::debug!("candle: {b} inputs share their first {shared} tokens, run once");
            }
            let prefix = (shared > 0)
                .then(|| {
                    let reads: &[(Site, Vec<usize>)] = if covered { &reads } else { &[] };
                    let none = super::model::Steering::default();
                    self.decoder.prefix(&ids[chunk[0]][..shared], depth, reads, &none).map_err(be)
                })
                .transpose()?;
            let mut flat = Vec::with_capacity(b * (s - shared));
            for &i in &chunk {
                flat.extend_from_slice(&ids[i][shared..]);
                flat.extend(std::iter::repeat_n(pad, s - ids[i].len()));
            }
            let input = Tensor::from_vec(flat, (b, s - shared), &device).map_err(be)?;
            let own: Vec<usize> = lens.iter().map(|&l| l - shared).collect();
            // Reduction helpers on the device, from each input's span: the row index of its
            // last token and a 0/1 mask over its tokens, over the positions `base..s` read.
            let w = s - base;
            let last_idx: Vec<u32> = sp.iter().enumerate().map(|(r, p)| (r * w + p.end - 1 - base) as u32).collect();
            let last_idx = Tensor::from_vec(last_idx, b, &device).map_err(be)?;
            let mask01: Vec<f32> = sp
                .iter()
                .flat_map(|p| (base..s).map(move |j| if (p.start..p.end).contains(&j) { 1.0 } else { 0.0 }))
                .collect();
            let mask01 = Tensor::from_vec(mask01, (b, w, 1), &device).map_err(be)?;
            let counts: Vec<f32> = sp.iter().map(|p| (p.end - p.start) as f32).collect();
            let counts = Tensor::from_vec(counts, (b, 1), &device).map_err(be)?;

            let mut visit = |site: Site, layer: usize, h: &Tensor| -> Result<()> {
                let Some(k) = slots.iter().position(|&s| s == (site, layer)) else { return Ok(()) };
                let (hidden, row_width) = (self.site_shape(site).0, row_width(site));
                // A split model's later blocks run elsewhere: reduce on the first device.
                let h = h.to_device(&device).and_then(|h| h.to_dtype(DType::F32)).map_err(be)?;
                let rows: Vec<f32> = match positions {
                    Positions::Last => h
                        .reshape((b * w, hidden))
                        .and_then(|h| h.index_select(&last_idx, 0))
                        .and_then(|t| t.flatten_all()?.to_vec1())
                        .map_err(be)?,
                    Positions::Mean => h
                        .broadcast_mul(&mask01)
                        .and_then(|t| t.sum(1))
                        .and_then(|t| t.broadcast_div(&counts))
                        .and_then(|t| t.flatten_all()?.to_vec1())
                        .map_err(be)?,
                    Positions::All => h.flatten_all().and_then(|t| t.to_vec1()).map_err(be)?,
                };
                let width = rows.len() / b;
                for (r, &i) in chunk.iter().enumerate() {
                    let dst = &mut out[k][i * row_width..i * row_width + width];
                    dst.copy_from_slice(&rows[r * width..(r + 1) * width]);
                    if positions == Positions::All {
                        // Padding positions of this row are zero, whatever the model computed there.
                        let real = lens[r] * hidden;
                        dst[real..].fill(0.0);
                    }
                }
                Ok(())
            };
            // One pass per batch, its prefix's included.
            self.forward_passes.fetch_add(1, Ordering::Relaxed);
            self.positions_run.fetch_add((shared + b * (s - shared)) as u64, Ordering::Relaxed);
            self.decoder.states(&input, &own, prefix.as_ref(), &reads, &mut visit)?;
        }

        let tensors = slots
            .iter()
            .zip(out)
            .map(|(&(site, layer), data)| {
                let per_position = self.site_shape(site).1;
                let shape = match positions {
                    Positions::All => [vec![n, max_len], per_position].concat(),
                    Positions::Last | Positions::Mean => [vec![n], per_position].concat(),
                };
                LayerActivations::new(site, layer, probe_core::Tensor::new(shape, data))
            })
            .collect();
        let token_counts: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mask = (positions == Positions::All).then(|| {
            let data =
                token_counts.iter().flat_map(|&l| (0..max_len).map(move |j| if j < l { 1.0 } else { 0.0 })).collect();
            probe_core::Tensor::new(vec![n, max_len], data)
        });
        Ok(Activations::new(tensors, positions, mask, token_counts))
    }
}
