//! Generation with a KV cache: prompts one after another; the `n` samples of a prompt
//! decode together as one batch (they share the prompt's length, so no padding).

use candle_core::Tensor;
use probe_core::{Error, FinishReason, Generation, GenerationRequest, Result, SamplingParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::backend::Inner;

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

struct Row {
    ids: Vec<u32>,
    done: Option<FinishReason>,
    text: Option<String>,
    rng: StdRng,
}

impl Inner {
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| Error::backend("candle", e))
    }

    pub(crate) fn generate(&self, request: &GenerationRequest) -> Result<Vec<Generation>> {
        let p = &request.sampling;
        let prompts: Vec<Vec<u32>> =
            request.prompts.iter().map(|t| self.tokenize_with(t, request.special_tokens)).collect::<Result<_>>()?;
        for (i, ids) in prompts.iter().enumerate() {
            self.check_length(i, ids.len() + p.max_tokens as usize)?;
        }
        let mut out = Vec::with_capacity(prompts.len() * p.n as usize);
        for (pi, p_ids) in prompts.iter().enumerate() {
            for (si, (ids, reason, text)) in self.generate_one(pi, p_ids, p)?.into_iter().enumerate() {
                let prompt = request.prompts[pi].clone();
                let g = Generation::new(pi, si as u32, prompt, text, reason, Some(ids));
                out.push(g.with_prompt_token_ids(Some(p_ids.clone())));
            }
        }
        Ok(out)
    }

    /// The `n` completions of one prompt: (token ids, finish reason, text).
    fn generate_one(
        &self,
        pi: usize,
        prompt: &[u32],
        p: &SamplingParams,
    ) -> Result<Vec<(Vec<u32>, FinishReason, String)>> {
        // Greedy samples are identical: decode one row and copy it.
        let rows_n = if p.is_greedy() { 1 } else { p.n as usize };
        let mut rows: Vec<Row> = (0..rows_n)
            .map(|s| Row {
                ids: Vec::new(),
                done: None,
                text: None,
                rng: StdRng::seed_from_u64(stream_seed(p.seed, pi, s as u32)),
            })
            .collect();
        let device = self.decoder.device().clone();
        let mut cache = self.decoder.new_cache(prompt.len() + p.max_tokens as usize);
        let input: Vec<u32> = prompt.iter().copied().cycle().take(prompt.len() * rows_n).collect();
        let mut input = Tensor::from_vec(input, (rows_n, prompt.len()), &device).map_err(be)?;
        for step in 0..p.max_tokens as usize {
            let logits = self.decoder.next_logits(&input, &mut cache).map_err(be)?;
            let logits: Vec<Vec<f32>> = logits.to_vec2().map_err(be)?;
            let mut next = Vec::with_capacity(rows_n);
            for (row, l) in rows.iter_mut().zip(&logits) {
                if row.done.is_some() {
                    next.push(*row.ids.last().unwrap_or(&0));
                    continue;
                }
                let tok = sample(l, p, &mut row.rng);
                row.ids.push(tok);
                next.push(tok);
                if self.eos.contains(&tok) {
                    row.done = Some(FinishReason::Stop);
                } else if !p.stop.is_empty() {
                    let text = self.decode(&row.ids)?;
                    if let Some(at) = find_stop(&text, &p.stop) {
                        row.text = Some(text[..at].to_owned());
                        row.done = Some(FinishReason::Stop);
                    }
                }
            }
            if rows.iter().all(|r| r.done.is_some()) || step + 1 == p.max_tokens as usize {
                break;
            }
            input = Tensor::from_vec(next, (rows_n, 1), &device).map_err(be)?;
        }
        let mut done = Vec::with_capacity(p.n as usize);
        for row in rows {
            let text = match row.text {
                Some(t) => t,
                None => drop_incomplete_tail(self.decode(&row.ids)?),
            };
            done.push((row.ids, row.done.unwrap_or(FinishReason::Length), text));
        }
        while done.len() < p.n as usize {
            done.push(done[0].clone());
        }
        Ok(done)
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
