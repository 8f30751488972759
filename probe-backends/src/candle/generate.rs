//! Generation with continuous batching: up to the batch size of sequences (every sample of
//! the prompts admitted so far) decode together, one token each per step, each at its own
//! positions over its own keys. Prompts are prefilled together (right-padded, as extraction
//! runs them) when there is room for their samples; the samples then join the batch (their
//! keys copied into the decode buffers, [`super::kv::DecodeKv`]), every step attends for all
//! rows in one batched operation (keys padded to the longest row and masked), and a finished
//! sequence leaves (the last row moves into its slot) so that the next prompts can join.

use candle_core::{DType, Tensor};
use probe_core::{
    Activations, Error, FinishReason, Generation, GenerationRequest, LayerActivations, Readout, Result, SamplingParams,
    Site, StateCapture,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::backend::Inner;
use super::kv::DecodeKv;
use super::kv::SharedKv;
use super::model::{Prefix, Reader, Steering};

fn be(e: candle_core::Error) -> Error {
    super::oom::error(e)
}

/// The sampler's seed for one (prompt, sample): distinct streams, fixed by the request seed.
fn stream_seed(seed: u64, prompt: usize, sample: u32) -> u64 {
    let mut z = seed
        ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(sample).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The first index of the largest logit (ties go to the lowest id, as `torch.argmax`).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Samples one token: temperature, then top-k, then top-p (the smallest set of most likely
/// tokens whose mass reaches `top_p`), then a draw from the renormalised distribution.
pub(crate) fn sample(logits: &[f32], p: &SamplingParams, rng: &mut StdRng) -> u32 {
    if p.is_greedy() {
        return argmax(logits);
    }
    let t = p.temperature;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if p.top_k > 0 {
        idx.truncate((p.top_k as usize).max(1));
    }
    let max = logits[idx[0]];
    let weights: Vec<f64> = idx.iter().map(|&i| f64::from((logits[i] - max) / t).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = weights.len();
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        for (j, w) in weights.iter().enumerate() {
            acc += w / total;
            if acc >= f64::from(p.top_p) {
                keep = j + 1;
                break;
            }
        }
    }
    let kept: f64 = weights[..keep].iter().sum();
    let mut u = rng.random::<f64>() * kept;
    for (j, w) in weights[..keep].iter().enumerate() {
        if u < *w {
            return idx[j] as u32;
        }
        u -= w;
    }
    idx[keep - 1] as u32
}

/// The earliest occurrence of any stop string in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Drops the replacement characters that end `text` when its last tokens stop in the middle of
/// a multi-byte character (as vLLM does: an incomplete character is never emitted). The token
/// ids are unchanged.
fn drop_incomplete_tail(mut text: String) -> String {
    while text.ends_with('\u{FFFD}') {
        text.pop();
    }
    text
}

/// One sequence being decoded: a sample of a prompt.
struct Row {
    prompt: usize,
    sample: usize,
    ids: Vec<u32>,
    /// Set once its last token is drawn; while capturing, the row then decodes one more step
    /// (feeding that token, its logits unused) before it leaves.
    done: Option<FinishReason>,
    text: Option<String>,
    rng: StdRng,
    /// While capturing, per slot: the sum (mean) or the latest value (last) of the tokens fed.
    states: Vec<Vec<f32>>,
    /// Tokens fed (prompt included) while capturing.
    fed: usize,
}

/// Per (site, layer) slot of a [`Capturing`], one row's values in f32.
type States = Vec<Vec<f32>>;

/// A finished completion: (token ids, finish reason, text, captured states).
type Completion = (Vec<u32>, FinishReason, String, Option<States>);

/// A prefill's logits, every layer's keys and values, and (capturing) per slot `[b · width]`.
type Prefilled = (Tensor, Vec<(Tensor, Tensor)>, States);

/// What a generation reads while it decodes ([`StateCapture`], checked): per (site, layer)
/// slot, the last read token's value or the mean of every read token's, in f32; the prompt's
/// tokens are read in the prefill, the completion's in the decode steps that feed them.
#[derive(Debug)]
struct Capturing {
    reads: Vec<(Site, Vec<usize>)>,
    slots: Vec<(Site, usize)>,
    /// The mean of the tokens read, else the last one's value.
    mean: bool,
    /// The prompt's tokens are read.
    prompt: bool,
    /// The completion's tokens are read.
    completion: bool,
}

impl Capturing {
    fn slot(&self, site: Site, layer: usize) -> Option<usize> {
        self.slots.iter().position(|&s| s == (site, layer))
    }

    /// Adds (mean) or sets (last) the values `step` (per slot, `[b · width]`, row `r` of it
    /// `rows[r]`'s) into the rows; each row has fed `tokens[r]` more tokens.
    fn absorb(&self, rows: &mut [Row], step: &[Option<Vec<f32>>], tokens: &[usize]) -> Result<()> {
        let b = rows.len();
        for (k, values) in step.iter().enumerate() {
            let values = values.as_ref().ok_or_else(|| {
                Error::backend("candle", format!("no states of {:?} were read while generating", self.slots[k]))
            })?;
            let width = values.len() / b.max(1);
            for (r, row) in rows.iter_mut().enumerate() {
                let v = &values[r * width..(r + 1) * width];
                let acc = &mut row.states[k];
                if acc.is_empty() || !self.mean {
                    acc.clear();
                    acc.extend_from_slice(v);
                } else {
                    acc.iter_mut().zip(v).for_each(|(a, x)| *a += x);
                }
            }
        }
        for (row, t) in rows.iter_mut().zip(tokens) {
            row.fed += t;
        }
        Ok(())
    }

    /// Per slot, the `[b, width]` values read in one step, in f32 on the host (`[b · width]`),
    /// copied in one transfer.
    fn to_host(&self, parts: Vec<Option<Tensor>>) -> Result<Vec<Option<Vec<f32>>>> {
        let parts: Vec<Tensor> = parts
            .into_iter()
            .enumerate()
            .map(|(k, t)| {
                t.ok_or_else(|| {
                    Error::backend("candle", format!("no states of {:?} were read while generating", self.slots[k]))
                })
            })
            .collect::<Result<_>>()?;
        let widths: Vec<usize> = parts.iter().map(|t| t.dim(1)).collect::<candle_core::Result<_>>().map_err(be)?;
        let all = Tensor::cat(&parts, 1).and_then(|t| t.to_dtype(DType::F32)).and_then(|t| t.to_vec2::<f32>());
        let all = all.map_err(be)?;
        let mut out: Vec<Vec<f32>> = widths.iter().map(|w| Vec::with_capacity(w * all.len())).collect();
        for row in &all {
            let mut at = 0;
            for (o, &w) in out.iter_mut().zip(&widths) {
                o.extend_from_slice(&row[at..at + w]);
                at += w;
            }
        }
        Ok(out.into_iter().map(Some).collect())
    }

    /// A row's states once it is done.
    fn finish(&self, row: &mut Row) -> Vec<Vec<f32>> {
        let mut states = std::mem::take(&mut row.states);
        if self.mean {
            let n = row.fed.max(1) as f32;
            states.iter_mut().flatten().for_each(|v| *v /= n);
        }
        states
    }
}

/// All of row `r`'s prompt keys (`len` positions) as one shared prefix: `shared`'s, then the
/// row's own from a prefill's `kept` (`[b, kv_heads, s, head_dim]` per layer).
fn prompt_kv(
    kept: &[(Tensor, Tensor)],
    r: usize,
    len: usize,
    shared: Option<&SharedKv>,
) -> candle_core::Result<SharedKv> {
    let before = shared.map_or(0, |s| s.len);
    let layers = kept
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let own = |t: &Tensor| t.narrow(0, r, 1)?.narrow(2, 0, len - before);
            let whole = |prefix: Option<&Tensor>, t: &Tensor| match prefix {
                Some(p) => Tensor::cat(&[p, &own(t)?], 2),
                None => own(t)?.contiguous(),
            };
            let at = shared.map(|s| &s.layers[i]);
            Ok((whole(at.map(|l| &l.0), k)?, whole(at.map(|l| &l.1), v)?))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(SharedKv { len, layers: layers.into() })
}

impl Inner {
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::backend("candle", e))
    }

    pub(crate) fn generate(&self, request: &GenerationRequest) -> Result<Vec<Generation>> {
        self.generate_with(request, None).map(|(g, _)| g)
    }

    /// [`Self::generate`], reading `capture`'s states on the way: the generations and, per
    /// (site, layer), `[prompts, width]` (`[prompts, heads, head_dim]` for [`Site::Heads`]).
    pub(crate) fn generate_capturing(
        &self,
        request: &GenerationRequest,
        capture: &StateCapture,
    ) -> Result<(Vec<Generation>, Activations)> {
        capture.validate(request)?;
        if capture.model != self.info {
            return Err(Error::invalid(
                "model",
                format!(
                    "states of {:?} ({}) were asked for; this generator runs {:?} ({})",
                    capture.model.id.id, capture.model.dtype, self.info.id.id, self.info.dtype
                ),
            ));
        }
        super::extract::check_sites(&self.decoder.cfg, &self.info.architecture, &capture.reads)?;
        let slots: Vec<(Site, usize)> =
            capture.reads.iter().flat_map(|(site, layers)| layers.iter().map(move |&l| (*site, l))).collect();
        let (mean, prompt, completion) = match capture.readout {
            Readout::Last => (false, false, true),
            Readout::Mean => (true, true, true),
            Readout::LastPrompt => (false, true, false),
            _ => (true, false, true),
        };
        let capturing = Capturing { reads: capture.reads.clone(), slots, mean, prompt, completion };
        let (gens, states) = self.generate_with(request, Some(&capturing))?;
        let n = states.len();
        let mut layers = Vec::with_capacity(capturing.slots.len());
        for (k, &(site, layer)) in capturing.slots.iter().enumerate() {
            let (width, per_position) = self.site_shape(site);
            let mut data = Vec::with_capacity(n * width);
            for row in &states {
                let v = row.as_ref().map(|r| &r[k]).filter(|v| v.len() == width).ok_or_else(|| {
                    Error::backend("candle", format!("layer {layer} of site {site}: no states of width {width}"))
                })?;
                data.extend_from_slice(v);
            }
            let shape = [vec![n], per_position].concat();
            layers.push(LayerActivations::new(site, layer, probe_core::Tensor::new(shape, data)));
        }
        let counts = gens.iter().map(|g| g.full_token_ids().map_or(0, |ids| ids.len())).collect();
        Ok((gens, Activations::new(layers, capture.readout.positions(), None, counts)))
    }

    /// The generations of `request`, and per prompt (first sample) the states `capture` read.
    fn generate_with(
        &self,
        request: &GenerationRequest,
        capture: Option<&Capturing>,
    ) -> Result<(Vec<Generation>, Vec<Option<States>>)> {
        self.decoder.check_loaded(None)?;
        let p = &request.sampling;
        for i in &p.steering {
            i.validate(&self.info)?;
        }
        let prompts: Vec<Vec<u32>> =
            request.prompts.iter().map(|t| self.tokenize_with(t, request.special_tokens)).collect::<Result<_>>()?;
        for (i, ids) in prompts.iter().enumerate() {
            self.check_length(i, ids.len() + p.max_tokens as usize)?;
        }
        let done = self.decode_batched(&prompts, p, self.options.default_batch_size, capture)?;
        let mut out = Vec::with_capacity(prompts.len() * p.n as usize);
        let mut states = Vec::with_capacity(prompts.len());
        for (pi, completions) in done.into_iter().enumerate() {
            for (si, (ids, reason, text, captured)) in completions.into_iter().enumerate() {
                if si == 0 {
                    states.push(captured);
                }
                let prompt = request.prompts[pi].clone();
                let g = Generation::new(pi, si as u32, prompt, text, reason, Some(ids));
                out.push(g.with_prompt_token_ids(Some(prompts[pi].clone())));
            }
        }
        Ok((out, states))
    }

    /// The `n` completions of every prompt, decoding up to `batch` sequences at once (a
    /// prompt's samples always join together, so a prompt with more samples than `batch`
    /// decodes alone). Greedy samples are identical: one row per prompt, copied.
    ///
    /// With `capture`, every token of prompt + completion is read: the prompt in the prefill,
    /// each completion token in the decode step that feeds it, the final one in one more
    /// step, batched with the rows still decoding (its logits unused).
    fn decode_batched(
        &self,
        prompts: &[Vec<u32>],
        p: &SamplingParams,
        batch: usize,
        capture: Option<&Capturing>,
    ) -> Result<Vec<Vec<Completion>>> {
        let per_prompt = if p.is_greedy() { 1 } else { p.n as usize };
        let steer = self.decoder.steering(&p.steering)?;
        let mut done: Vec<Vec<Option<Completion>>> = vec![vec![None; per_prompt]; prompts.len()];
        // Row `i` of `active` decodes in slot `i` of `kv`.
        let mut active: Vec<Row> = Vec::new();
        let mut kv = DecodeKv::new(self.decoder.cfg.num_layers, batch.min(prompts.len() * per_prompt));
        let mut next_prompt = 0;
        loop {
            // Admit the next prompts while their samples fit (one alone into an empty batch),
            // prefilled together.
            let mut group = Vec::new();
            let mut rows = active.len();
            while next_prompt < prompts.len() && ((rows == 0 && group.is_empty()) || rows + per_prompt <= batch) {
                group.push(next_prompt);
                rows += per_prompt;
                next_prompt += 1;
            }
            if !group.is_empty() {
                let how = (p, &steer, capture);
                self.prefill(&group, prompts, how, per_prompt, &mut active, &mut kv, &mut done)?;
            }
            if active.is_empty() {
                // Every admitted sequence finished at its first token: admit more, or stop.
                if next_prompt == prompts.len() {
                    break;
                }
                continue;
            }
            let ids: Vec<u32> = active.iter().map(|r| *r.ids.last().unwrap_or(&0)).collect();
            let logits = match capture {
                // `last` reads only the steps that feed some row's final token.
                Some(c) if c.completion && (c.mean || active.iter().any(|r| r.done.is_some())) => {
                    let mut parts: Vec<Option<Tensor>> = vec![None; c.slots.len()];
                    let mut visit = |site: Site, layer: usize, h: &Tensor| -> candle_core::Result<()> {
                        if let Some(k) = c.slot(site, layer) {
                            parts[k] = Some(h.to_device(self.decoder.device())?.flatten_from(1)?);
                        }
                        Ok(())
                    };
                    let mut reader = Reader::new(&c.reads, self.decoder.cfg.num_layers, &mut visit);
                    let logits = self.decoder.next_logits_rows(&ids, &mut kv, &steer, Some(&mut reader)).map_err(be)?;
                    let ones = vec![1; active.len()];
                    c.absorb(&mut active, &c.to_host(parts)?, &ones)?;
                    logits
                }
                _ => self.decoder.next_logits_rows(&ids, &mut kv, &steer, None).map_err(be)?,
            };
            let logits: Vec<Vec<f32>> = logits.to_vec2().map_err(be)?;
            let mut finished = Vec::new();
            for (i, (row, l)) in active.iter_mut().zip(&logits).enumerate() {
                if row.done.is_some() {
                    // Capturing: its final token was fed in this step.
                    finished.push(i);
                    continue;
                }
                self.push_token(row, l, p)?;
                if row.done.is_some() && capture.is_none() {
                    finished.push(i);
                }
            }
            // From the last: a swap-removal only moves rows that stay.
            for &i in finished.iter().rev() {
                kv.swap_remove(i).map_err(be)?;
                self.finish(active.swap_remove(i), capture, &mut done)?;
            }
        }
        let mut out = Vec::with_capacity(prompts.len());
        for completions in done {
            let mut c: Vec<Completion> = completions.into_iter().flatten().collect();
            while c.len() < p.n as usize {
                c.push(c[0].clone());
            }
            out.push(c);
        }
        Ok(out)
    }

    /// Runs prompts `group` (indices into `prompts`) as one right-padded batch, draws the
    /// first token of each of their `rows` samples, and adds the samples that go on to
    /// `active` and `kv` (the others to `done`).
    #[allow(clippy::too_many_arguments)]
    fn prefill(
        &self,
        group: &[usize],
        prompts: &[Vec<u32>],
        (p, steer, capture): (&SamplingParams, &Steering, Option<&Capturing>),
        rows: usize,
        active: &mut Vec<Row>,
        kv: &mut DecodeKv,
        done: &mut [Vec<Option<Completion>>],
    ) -> Result<()> {
        let lens: Vec<usize> = group.iter().map(|&pi| prompts[pi].len()).collect();
        // The prompts' common prefix runs once (see [`super::batches::shared_prefix`]).
        let shared = match self.options.shared_prefixes {
            true => {
                let ids: Vec<&[u32]> = group.iter().map(|&pi| prompts[pi].as_slice()).collect();
                super::batches::shared_prefix(&ids)
            }
            false => 0,
        };
        // A row that may drop its cache keeps every key in its slot.
        let shared = if self.decoder.can_share(shared, &lens) && !self.decoder.drops_cache() { shared } else { 0 };
        let prefix = (shared > 0)
            .then(|| {
                // Means over the prompt read the prefix's positions too.
                let reads = capture.filter(|c| c.prompt && c.mean).map_or(&[][..], |c| &c.reads[..]);
                let blocks = self.decoder.cfg.num_layers;
                self.decoder.prefix(&prompts[group[0]][..shared], blocks, reads, steer).map_err(be)
            })
            .transpose()?;
        let shared_kv = prefix.as_ref().map(Prefix::shared_kv);
        let own: Vec<usize> = lens.iter().map(|&l| l - shared).collect();
        let width = own.iter().copied().max().unwrap_or(1);
        let mut ids = Vec::with_capacity(group.len() * width);
        for &pi in group {
            ids.extend_from_slice(&prompts[pi][shared..]);
            ids.resize(ids.len() + width - (prompts[pi].len() - shared), 0);
        }
        let device = self.decoder.device().clone();
        let input = Tensor::from_vec(ids, (group.len(), width), &device).map_err(be)?;
        self.positions_run.fetch_add((shared + group.len() * width) as u64, std::sync::atomic::Ordering::Relaxed);
        let (logits, kept, step) = match capture {
            Some(c) if c.prompt => self.prefill_capturing(c, &input, &own, prefix.as_ref(), steer)?,
            _ => {
                let (logits, kept) = self.decoder.prefill(&input, &own, prefix.as_ref(), steer, None).map_err(be)?;
                (logits, kept, Vec::new())
            }
        };
        let logits: Vec<Vec<f32>> = logits.to_vec2().map_err(be)?;
        let mut joined = Vec::with_capacity(group.len() * rows);
        // The samples of one prompt share all of its keys (held once) when there are several.
        let share_prompts = rows > 1 && self.options.shared_prefixes && !self.decoder.drops_cache();
        for (r, (&pi, logits)) in group.iter().zip(&logits).enumerate() {
            let prompt_kv =
                share_prompts.then(|| prompt_kv(&kept, r, lens[r], shared_kv.as_ref())).transpose().map_err(be)?;
            let shared_kv = prompt_kv.as_ref().or(shared_kv.as_ref());
            for s in 0..rows {
                let rng = StdRng::seed_from_u64(stream_seed(p.seed, pi, s as u32));
                let states = vec![Vec::new(); capture.map_or(0, |c| c.slots.len())];
                let mut row =
                    Row { prompt: pi, sample: s, ids: Vec::new(), done: None, text: None, rng, states, fed: 0 };
                if let Some(c) = capture.filter(|_| !step.is_empty()) {
                    // This prompt's row of the prefill's reduced values.
                    let mine: Vec<Option<Vec<f32>>> = step
                        .iter()
                        .map(|v: &Vec<f32>| {
                            let w = v.len() / group.len();
                            Some(v[r * w..(r + 1) * w].to_vec())
                        })
                        .collect();
                    c.absorb(std::slice::from_mut(&mut row), &mine, &[lens[r]])?;
                }
                self.push_token(&mut row, logits, p)?;
                if row.done.is_some() && capture.is_none() {
                    self.finish(row, None, done)?;
                } else {
                    // Each sample its own copy of the keys after the shared prefix (held once).
                    let room = lens[r] + p.max_tokens as usize;
                    kv.push(&kept, r, lens[r], room, shared_kv).map_err(be)?;
                    joined.push(row);
                }
            }
        }
        active.extend(joined);
        Ok(())
    }

    /// [`super::model::Decoder::prefill`] (after `prefix`) reading `capture`'s slots, each
    /// reduced on the device over every row's real tokens (the last one's value, or the sum);
    /// returns the logits, the keys and, per slot, `[b · width]` in f32.
    fn prefill_capturing(
        &self,
        capture: &Capturing,
        input: &Tensor,
        lens: &[usize],
        prefix: Option<&Prefix>,
        steer: &Steering,
    ) -> Result<Prefilled> {
        let b = input.dim(0).map_err(be)?;
        let device = self.decoder.device().clone();
        let mut parts: Vec<Option<Tensor>> = vec![None; capture.slots.len()];
        let mut visit = |site: Site, layer: usize, h: &Tensor| -> candle_core::Result<()> {
            let Some(k) = capture.slot(site, layer) else { return Ok(()) };
            let h = h.to_device(&device)?.to_dtype(DType::F32)?;
            // `[b, s, width]`: the rows' own positions, after the prefix's where it kept them.
            let (_, s, width) = h.dims3()?;
            let before = s - input.dim(1)?;
            parts[k] = Some(if capture.mean {
                let mask = lens.iter().flat_map(|&l| (0..s).map(move |j| if j < before + l { 1f32 } else { 0.0 }));
                let mask = Tensor::from_iter(mask, &device)?.reshape((b, s, 1))?;
                h.broadcast_mul(&mask)?.sum(1)?
            } else {
                let last = lens.iter().enumerate().map(|(r, &l)| (r * s + before + l - 1) as u32);
                h.reshape((b * s, width))?.index_select(&Tensor::from_iter(last, &device)?, 0)?
            });
            Ok(())
        };
        let mut reader = Reader::new(&capture.reads, self.decoder.cfg.num_layers, &mut visit);
        let (logits, kept) = self.decoder.prefill(input, lens, prefix, steer, Some(&mut reader)).map_err(be)?;
        let step = capture.to_host(parts)?.into_iter().flatten().collect();
        Ok((logits, kept, step))
    }

    /// Draws `row`'s next token from `logits` and marks it done at an end-of-sequence token,
    /// a stop string or `max_tokens` tokens.
    fn push_token(&self, row: &mut Row, logits: &[f32], p: &SamplingParams) -> Result<()> {
        let tok = sample(logits, p, &mut row.rng);
        row.ids.push(tok);
        if self.eos.contains(&tok) {
            row.done = Some(FinishReason::Stop);
        } else if !p.stop.is_empty() {
            let text = self.decode(&row.ids)?;
            if let Some(at) = find_stop(&text, &p.stop) {
                row.text = Some(text[..at].to_owned());
                row.done = Some(FinishReason::Stop);
            }
        }
        if row.done.is_none() && row.ids.len() >= p.max_tokens as usize {
            row.done = Some(FinishReason::Length);
        }
        Ok(())
    }

    /// Files a finished `row` under its prompt's completions (with its captured states).
    fn finish(&self, mut row: Row, capture: Option<&Capturing>, done: &mut [Vec<Option<Completion>>]) -> Result<()> {
        let reason = row.done.unwrap_or(FinishReason::Length);
        let states = capture.map(|c| c.finish(&mut row));
        let text = match row.text {
            Some(t) => t,
            None => drop_incomplete_tail(self.decode(&row.ids)?),
        };
        done[row.prompt][row.sample] = Some((row.ids, reason, text, states));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn sampling_respects_top_k_and_seed() {
        let logits = [0.0f32, 5.0, 4.9, -3.0, 1.0];
        let p = SamplingParams::greedy(1).with_temperature(1.0).with_top_k(2);
        let mut a = StdRng::seed_from_u64(3);
        let mut b = StdRng::seed_from_u64(3);
        let xs: Vec<u32> = (0..200).map(|_| sample(&logits, &p, &mut a)).collect();
        let ys: Vec<u32> = (0..200).map(|_| sample(&logits, &p, &mut b)).collect();
        assert_eq!(xs, ys, "same seed, same draws");
        assert!(xs.iter().all(|&t| t == 1 || t == 2), "top-k = 2 keeps the two best");
        assert!(xs.contains(&1) && xs.contains(&2), "both kept tokens are drawn");
        let p = SamplingParams::greedy(1).with_temperature(1.0).with_top_p(0.5);
        assert!((0..100).all(|_| sample(&logits, &p, &mut a) == 1), "top-p 0.5 keeps only the best here");
    }

    #[test]
    fn an_incomplete_final_character_is_dropped() {
        // "é" is two bytes; a decoder that saw only the first one renders it as U+FFFD.
        let cut = String::from_utf8_lossy(&"caf\u{e9}".as_bytes()[..4]).into_owned();
        assert_eq!(cut, "caf\u{FFFD}");
        assert_eq!(drop_incomplete_tail(cut), "caf");
        assert_eq!(drop_incomplete_tail("a\u{FFFD}b".into()), "a\u{FFFD}b", "only the tail is dropped");
        assert_eq!(drop_incomplete_tail("caf\u{e9}".into()), "caf\u{e9}");
    }

    #[test]
    fn stop_strings_cut_at_the_earliest() {
        assert_eq!(find_stop("abc. def\nx", &[".".into(), "\n".into()]), Some(3));
        assert_eq!(find_stop("abc", &["z".into()]), None);
        assert_ne!(stream_seed(1, 0, 0), stream_seed(1, 0, 1));
    }
}
