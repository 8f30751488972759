//! Extraction: tokenise, sort by length, right-pad into batches, one forward pass per batch
//! that stops at the deepest requested layer, reduce each captured layer on the device.

use candle_core::{DType, Tensor};
use probe_core::{ActivationRequest, Activations, Error, Inputs, LayerActivations, Positions, Result, Site};

use super::backend::Inner;

fn be(e: candle_core::Error) -> Error {
    super::oom::error(e)
}

impl Inner {
    /// Refuses a site the requested blocks lack, naming it (before any work).
    fn check_site(&self, request: &ActivationRequest) -> Result<()> {
        let blocks = self.decoder.blocks();
        let arch = &self.info.architecture;
        for &b in &request.layers {
            let Some(block) = blocks.get(b).filter(|_| request.site.in_block()) else { continue };
            match request.site {
                Site::Router if !blocks.iter().any(|b| b.sparse()) => {
                    return Err(Error::invalid(
                        "site",
                        format!("router: {arch} is not a mixture of experts (its MLPs have no router)"),
                    ));
                }
                Site::Router if !block.sparse() => {
                    return Err(Error::invalid(
                        "site",
                        format!("router: block {b} of {arch} has a dense MLP, no router"),
                    ));
                }
                Site::ResidMid if block.parallel() => {
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
        Ok(())
    }

    /// What one position holds at `site`: its width and the shape of one position's values.
    fn site_shape(&self, site: Site) -> (usize, Vec<usize>) {
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
        self.check_site(request)?;
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
        let layers = request.sorted_layers();
        let deepest = *layers.last().ok_or_else(|| Error::invalid("layers", "no layers requested"))?;
        // Hidden state `d` is block `d - 1`'s output; a site inside block `b` needs `b + 1` blocks.
        self.decoder.check_loaded(Some(if request.site.in_block() { deepest + 1 } else { deepest }))?;
        let n = ids.len();
        let site = request.site;
        let (hidden, per_position) = self.site_shape(site);
        let positions = request.positions;
        let max_len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let row_width = match positions {
            Positions::All => max_len * hidden,
            Positions::Last | Positions::Mean => hidden,
        };
        let mut out: Vec<Vec<f32>> = layers.iter().map(|_| vec![0f32; n * row_width]).collect();
        let slot = |layer: usize| layers.binary_search(&layer).ok();

        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let batch = request.batch_size.unwrap_or(self.options.default_batch_size).max(1);
        let device = self.decoder.device().clone();
        let pad = self.decoder.cfg.pad_token_id.filter(|&p| (p as usize) < self.decoder.cfg.vocab_size).unwrap_or(0);

        for chunk in order.chunks(batch) {
            let lens: Vec<usize> = chunk.iter().map(|&i| ids[i].len()).collect();
            let s = lens.iter().copied().max().unwrap_or(1);
            let b = chunk.len();
            let mut flat = Vec::with_capacity(b * s);
            for &i in chunk {
                flat.extend_from_slice(&ids[i]);
                flat.extend(std::iter::repeat_n(pad, s - ids[i].len()));
            }
            let input = Tensor::from_vec(flat, (b, s), &device).map_err(be)?;
            // Reduction helpers on the device, from each input's span: the row index of its
            // last token and a 0/1 mask over its tokens.
            let sp: Vec<probe_core::Span> = chunk.iter().map(|&i| spans[i]).collect();
            let last_idx: Vec<u32> = sp.iter().enumerate().map(|(r, p)| (r * s + p.end - 1) as u32).collect();
            let last_idx = Tensor::from_vec(last_idx, b, &device).map_err(be)?;
            let mask01: Vec<f32> = sp
                .iter()
                .flat_map(|p| (0..s).map(move |j| if (p.start..p.end).contains(&j) { 1.0 } else { 0.0 }))
                .collect();
            let mask01 = Tensor::from_vec(mask01, (b, s, 1), &device).map_err(be)?;
            let counts: Vec<f32> = sp.iter().map(|p| (p.end - p.start) as f32).collect();
            let counts = Tensor::from_vec(counts, (b, 1), &device).map_err(be)?;

            let mut visit = |layer: usize, h: &Tensor| -> Result<()> {
                let Some(k) = slot(layer) else { return Ok(()) };
                // A split model's later blocks run elsewhere: reduce on the first device.
                let h = h.to_device(&device).and_then(|h| h.to_dtype(DType::F32)).map_err(be)?;
                let rows: Vec<f32> = match positions {
                    Positions::Last => h
                        .reshape((b * s, hidden))
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
            if site.in_block() {
                self.decoder.block_states(&input, &lens, site, &layers, &mut visit)?;
            } else {
                self.decoder.hidden_states(&input, &lens, deepest, &mut visit)?;
            }
        }

        let shape = match positions {
            Positions::All => [vec![n, max_len], per_position].concat(),
            Positions::Last | Positions::Mean => [vec![n], per_position].concat(),
        };
        let tensors = layers
            .iter()
            .zip(out)
            .map(|(&layer, data)| LayerActivations { layer, tensor: probe_core::Tensor::new(shape.clone(), data) })
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
