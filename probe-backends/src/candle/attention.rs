//! Exact softmax attention without a `[batch, heads, queries, keys]` score matrix.
//!
//! - [`causal`] (prefill and extraction): the queries go in chunks of rows; each chunk attends
//!   over the keys its rows can see (none after its last query: the causal upper triangle is
//!   skipped; none before the first query's window on a sliding layer), so one chunk's scores,
//!   `[batch, heads, rows, keys seen]` in f32, are the most that is held. The rows per chunk keep
//!   that within a byte budget ([`probe_core::plan::memory::ATTENTION_CHUNK_BYTES_CPU`], or
//!   `_GPU`), which the planner counts too. Each query row's softmax runs over all its keys at
//!   once: the same arithmetic as a full score matrix, row by row (exact, no online rescaling).
//!   On the CPU a fused kernel ([`super::attention_cpu`]) runs each chunk as per-head tasks with
//!   an L2-sized score tile per thread; on a GPU candle's ops run each chunk as a few batched
//!   matmuls and element-wise kernels (no `candle-flash-attn`: its nvcc build of flash-attention
//!   v2 is long, and this path needs no extra CUDA code).
//! - [`rows`] (batched decoding): one new query per row over that row's own keys, every row in
//!   one matmul; rows with fewer keys are padded and masked.
//!
//! Grouped-query attention folds the `rep` query heads of a key/value head into the rows of
//! one matmul, so keys and values are never repeated. Soft-capping (Gemma 2) applies to the
//! scores before the mask, as transformers does. Scores and softmax are f32 in every dtype;
//! on the CPU q, k and v are widened to f32 first (candle's CPU matmul multiplies bf16 and f16
//! in f32 anyway), on a GPU the matmuls take the compute dtype and accumulate in f32.
//! Rows are right-padded: a real query never sees a padding key (it comes after it), and a
//! padding query's output is never read.

use candle_core::{D, DType, Device, Result, Tensor};
use probe_core::plan::memory::{ATTENTION_CHUNK_BYTES_CPU, ATTENTION_CHUNK_BYTES_GPU, attention_chunk_rows};

/// What differs between attention layers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// A query at position `p` sees keys `p - window + 1 ..= p` (`None`: all of `0..=p`).
    pub(crate) window: Option<usize>,
    /// `cap · tanh(scores / cap)` before the mask (Gemma 2).
    pub(crate) softcap: Option<f64>,
    /// The f32 score bytes one chunk may hold (`None`: the device's default).
    pub(crate) chunk_bytes: Option<u64>,
}

/// The dtype the matmuls run in: f32 on the CPU, the compute dtype on a GPU.
fn work_dtype(device: &Device, dtype: DType) -> DType {
    if device.is_cpu() { DType::F32 } else { dtype }
}

/// The f32 score bytes one chunk may hold on `device`.
fn budget(device: &Device) -> u64 {
    if device.is_cpu() { ATTENTION_CHUNK_BYTES_CPU } else { ATTENTION_CHUNK_BYTES_GPU }
}

/// Causal attention of `q` (`[b, heads, s, d]`, contiguous) over `k` and `v` (`[b, kv_heads,
/// t, d]`, `t ≥ s`; views of a larger buffer are fine), query `i` at key position
/// `t - s + i`. Returns `[b, s, heads · d]` in `q`'s dtype.
pub(crate) fn causal(q: &Tensor, k: &Tensor, v: &Tensor, shape: Shape) -> Result<Tensor> {
    causal_within(q, k, v, shape, shape.chunk_bytes.unwrap_or_else(|| budget(q.device())))
}

/// [`causal`] in chunks of at most `budget` bytes of scores.
fn causal_within(q: &Tensor, k: &Tensor, v: &Tensor, shape: Shape, budget: u64) -> Result<Tensor> {
    let (b, nh, s, _) = q.dims4()?;
    let t = k.dim(2)?;
    let (dtype, device) = (q.dtype(), q.device());
    let work = work_dtype(device, dtype);
    let (q, k, v) = (q.to_dtype(work)?, k.to_dtype(work)?, v.to_dtype(work)?);
    let chunk = attention_chunk_rows(b as u64, nh as u64, s as u64, t as u64, budget) as usize;
    let out = if device.is_cpu() {
        super::attention_cpu::causal(&q, &k, &v, shape.window, shape.softcap, chunk)?
    } else {
        causal_ops(&q, &k, &v, shape, chunk)?
    };
    out.to_dtype(dtype)
}

/// [`causal`] in candle's tensor ops (any device; the GPU's path), chunks of `chunk` rows, in
/// `q`'s dtype (scores and softmax in f32).
fn causal_ops(q: &Tensor, k: &Tensor, v: &Tensor, shape: Shape, chunk: usize) -> Result<Tensor> {
    let (b, nh, s, d) = q.dims4()?;
    let (_, nkv, t, _) = k.dims4()?;
    let rep = nh / nkv;
    let offset = t - s;
    let (work, device) = (q.dtype(), q.device());
    // [b, nkv, rep, s, d]: a chunk of rows of every query head of a kv head.
    let q = q.reshape((b, nkv, rep, s, d))?;
    let mut outs = Vec::with_capacity(s.div_ceil(chunk));
    let mut c0 = 0;
    while c0 < s {
        let n = chunk.min(s - c0);
        // Keys `lo..hi` are the ones rows `c0..c0 + n` see (at positions offset + c0 ..).
        let first = offset + c0;
        let hi = first + n;
        let lo = shape.window.map_or(0, |w| (first + 1).saturating_sub(w));
        let qc = if n == s { q.clone() } else { q.narrow(3, c0, n)?.contiguous()? };
        let qc = qc.reshape((b, nkv, rep * n, d))?;
        let (kc, vc) = (k.narrow(2, lo, hi - lo)?, v.narrow(2, lo, hi - lo)?);
        let scores = qc.matmul(&kc.t()?)?.to_dtype(DType::F32)?;
        let scores = match shape.softcap {
            Some(cap) => ((scores / cap)?.tanh()? * cap)?,
            None => scores,
        };
        let scores = match chunk_mask(first, n, lo, hi - lo, shape.window, device)? {
            Some(m) => {
                scores.reshape((b, nkv, rep, n, hi - lo))?.broadcast_add(&m)?.reshape((b, nkv, rep * n, hi - lo))?
            }
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(work)?;
        outs.push(probs.matmul(&vc)?.reshape((b, nkv, rep, n, d))?);
        c0 += n;
    }
    let out = if outs.len() == 1 { outs.pop().expect("one chunk") } else { Tensor::cat(&outs, 3)? };
    // [b, nkv, rep, s, d] → [b, s, nkv · rep · d]
    out.permute((0, 3, 1, 2, 4))?.contiguous()?.reshape((b, s, nh * d))
}

/// The additive mask (`[n, keys]`, f32: 0 or −∞) of queries at positions `first..first + n`
/// over keys at positions `lo..lo + keys`; `None` when every key is visible to every query.
fn chunk_mask(
    first: usize,
    n: usize,
    lo: usize,
    keys: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let future = lo + keys > first + 1;
    let past = window.is_some_and(|w| lo + w < first + n);
    if !future && !past {
        return Ok(None);
    }
    // Positions as f32 are exact below 2²⁴.
    let qp = Tensor::arange(first as f32, (first + n) as f32, device)?.reshape((n, 1))?;
    let kp = Tensor::arange(lo as f32, (lo + keys) as f32, device)?.reshape((1, keys))?;
    // age = query − key position: hidden when negative (future) or at least the window.
    let age = qp.broadcast_sub(&kp)?;
    let mut hidden = age.lt(0f64)?;
    if let Some(w) = window {
        hidden = hidden.maximum(&age.ge(w as f64)?)?;
    }
    let zero = Tensor::zeros((n, keys), DType::F32, device)?;
    let ninf = Tensor::full(f32::NEG_INFINITY, (n, keys), device)?;
    hidden.where_cond(&ninf, &zero).map(Some)
}

/// The additive decode masks of one step (`[b, 1, 1, keys]`, f32), built once for every layer:
/// row `r` sees its first `lens[r]` keys, the last `window` of them on a sliding layer.
pub(crate) fn rows_mask(lens: &[usize], keys: usize, window: Option<usize>, device: &Device) -> Result<Option<Tensor>> {
    let windowed = window.is_some_and(|w| lens.iter().any(|&l| l > w));
    if lens.iter().all(|&l| l == keys) && !windowed {
        return Ok(None);
    }
    let mut m = vec![0f32; lens.len() * keys];
    for (row, &len) in m.chunks_mut(keys).zip(lens) {
        let from = window.map_or(0, |w| len.saturating_sub(w));
        row[..from].fill(f32::NEG_INFINITY);
        row[len..].fill(f32::NEG_INFINITY);
    }
    Tensor::from_vec(m, (lens.len(), 1, 1, keys), device).map(Some)
}

/// A prefix that some rows of a decode step attend to before their own keys (see
/// [`super::kv::SharedKv`]): its keys and values (`[1, kv_heads, p, d]`), the rows (u32
/// `[n]`) and their additive mask over its keys (`[n, 1, 1, p]`; `None`: all visible).
#[derive(Debug)]
pub(crate) struct SharedKeys<'a> {
    pub(crate) rows: &'a Tensor,
    pub(crate) k: &'a Tensor,
    pub(crate) v: &'a Tensor,
    pub(crate) mask: Option<&'a Tensor>,
}

/// One query per row (`q`: `[b, heads, 1, d]`) over that row's keys (`k`, `v`: `[b, kv_heads,
/// keys, d]`, views of the decode buffers; positions past a row's length hold anything) under
/// `mask` (from [`rows_mask`]), after the keys of the prefix it shares, if any (`shared`: each
/// prefix with its rows; `restore` puts values stacked group by group, then the rows of no
/// group, back in row order). One softmax per row over its prefix's keys and its own.
/// Returns `[b, 1, heads · d]` in `q`'s dtype.
pub(crate) fn rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    shape: Shape,
    shared: &[SharedKeys],
    restore: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, nh, _, d) = q.dims4()?;
    let (_, nkv, keys, _) = k.dims4()?;
    let rep = nh / nkv;
    let (dtype, device) = (q.dtype(), q.device());
    let work = work_dtype(device, dtype);
    let (q, k, v) = (q.to_dtype(work)?, k.to_dtype(work)?, v.to_dtype(work)?);
    let q = q.reshape((b, nkv, rep, d))?;
    let softcap = |scores: Tensor| match shape.softcap {
        Some(cap) => (scores / cap)?.tanh()? * cap,
        None => Ok(scores),
    };
    let scores = softcap(q.matmul(&k.t()?)?.to_dtype(DType::F32)?)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    debug_assert_eq!(scores.dim(D::Minus1)?, keys);
    let (Some(restore), false) = (restore, shared.is_empty()) else {
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(work)?;
        return probs.matmul(&v)?.reshape((b, 1, nh * d))?.to_dtype(dtype);
    };
    // The prefixes' scores, `[b, kv_heads, rep, longest prefix]` (−∞ past a row's prefix),
    // before the rows' own, under one softmax.
    let longest = shared.iter().map(|g| g.k.dim(2)).collect::<Result<Vec<_>>>()?.into_iter().max().unwrap_or(0);
    let in_groups: usize = shared.iter().map(|g| g.rows.dim(0)).sum::<Result<usize>>()?;
    let hidden = |n: usize, width: usize| Tensor::full(f32::NEG_INFINITY, (n, nkv, rep, width), device);
    let mut parts = Vec::with_capacity(shared.len() + 1);
    for g in shared {
        let (n, p) = (g.rows.dim(0)?, g.k.dim(2)?);
        // The group's queries of a kv head as the rows of one matmul: `[kv_heads, n · rep, d]`.
        let qg = q.index_select(g.rows, 0)?.transpose(0, 1)?.contiguous()?.reshape((nkv, n * rep, d))?;
        let kg = g.k.to_dtype(work)?.squeeze(0)?;
        let s = qg.matmul(&kg.t()?)?.to_dtype(DType::F32)?.reshape((nkv, n, rep, p))?.transpose(0, 1)?;
        let s = softcap(s.contiguous()?)?;
        let s = match g.mask {
            Some(m) => s.broadcast_add(m)?,
            None => s,
        };
        parts.push(if p < longest { Tensor::cat(&[&s, &hidden(n, longest - p)?], 3)? } else { s });
    }
    if in_groups < b {
        parts.push(hidden(b - in_groups, longest)?);
    }
    let prefix_scores = Tensor::cat(&parts, 0)?.contiguous()?.index_select(restore, 0)?;
    let probs = candle_nn::ops::softmax_last_dim(&Tensor::cat(&[&prefix_scores, &scores], 3)?)?.to_dtype(work)?;
    let own = probs.narrow(3, longest, keys)?.contiguous()?.matmul(&v)?;
    let prefix_probs = probs.narrow(3, 0, longest)?.contiguous()?;
    let mut parts = Vec::with_capacity(shared.len() + 1);
    for g in shared {
        let (n, p) = (g.rows.dim(0)?, g.k.dim(2)?);
        let pg = prefix_probs.index_select(g.rows, 0)?.narrow(3, 0, p)?;
        let pg = pg.transpose(0, 1)?.contiguous()?.reshape((nkv, n * rep, p))?;
        let vg = g.v.to_dtype(work)?.squeeze(0)?;
        parts.push(pg.matmul(&vg)?.reshape((nkv, n, rep, d))?.transpose(0, 1)?);
    }
    if in_groups < b {
        parts.push(Tensor::zeros((b - in_groups, nkv, rep, d), work, device)?);
    }
    let from_prefix = Tensor::cat(&parts, 0)?.contiguous()?.index_select(restore, 0)?;
    (own + from_prefix)?.reshape((b, 1, nh * d))?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition: the whole score matrix, masked.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, shape: Shape) -> Result<Tensor> {
        let (b, nh, s, d) = q.dims4()?;
        let (_, nkv, t, _) = k.dims4()?;
        let rep = nh / nkv;
        let k = k.unsqueeze(2)?.repeat((1, 1, rep, 1, 1))?.reshape((b, nh, t, d))?;
        let v = v.unsqueeze(2)?.repeat((1, 1, rep, 1, 1))?.reshape((b, nh, t, d))?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(cap) = shape.softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let mask = chunk_mask(t - s, s, 0, t, shape.window, q.device())?.expect("masked");
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, s, nh * d))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    #[test]
    fn chunks_agree_with_the_whole_matrix() -> Result<()> {
        let dev = Device::Cpu;
        // 2 rows, 4 query heads over 2 kv heads, 300 queries after 20 cached keys.
        let (b, nh, nkv, s, t, d) = (2, 4, 2, 300, 320, 8);
        let q = Tensor::randn(0f32, 1.0, (b, nh, s, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, nkv, t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, nkv, t, d), &dev)?;
        for window in [None, Some(7), Some(100), Some(1000)] {
            for softcap in [None, Some(1.5)] {
                let shape = Shape { window, softcap, chunk_bytes: None };
                let want = reference(&q, &k, &v, shape)?;
                // Chunks of 7 rows, and all rows at once; the CPU kernel and candle's ops.
                for chunk in [7, s] {
                    let budget = (4 * b * nh * t * chunk) as u64;
                    let kernel = causal_within(&q, &k, &v, shape, budget)?;
                    let ops = causal_ops(&q, &k, &v, shape, chunk)?;
                    for (what, got) in [("kernel", kernel), ("ops", ops)] {
                        let e = max_diff(&got, &want);
                        assert!(e < 1e-5, "{what}: window {window:?}, softcap {softcap:?}, chunk {chunk}: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn chunk_rows_follow_the_budget() {
        // 4 × 16 heads × 2,000 keys × 4 bytes = 512,000 bytes per query row.
        assert_eq!(attention_chunk_rows(4, 16, 1900, 2000, 32 << 20), 65);
        assert_eq!(attention_chunk_rows(1, 1, 10, 10, ATTENTION_CHUNK_BYTES_CPU), 10);
        assert_eq!(attention_chunk_rows(64, 64, 100_000, 100_000, ATTENTION_CHUNK_BYTES_CPU), 1);
    }

    #[test]
    fn rows_see_their_own_keys() -> Result<()> {
        let dev = Device::Cpu;
        let (nh, nkv, d, keys) = (4, 2, 8, 12);
        let lens = [12usize, 5, 1];
        let q = Tensor::randn(0f32, 1.0, (3, nh, 1, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (3, nkv, keys, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (3, nkv, keys, d), &dev)?;
        for window in [None, Some(3)] {
            let shape = Shape { window, softcap: None, chunk_bytes: None };
            let mask = rows_mask(&lens, keys, window, &dev)?;
            let got = rows(&q, &k, &v, mask.as_ref(), shape, &[], None)?;
            for (r, &len) in lens.iter().enumerate() {
                // The last query of a causal pass over exactly this row's visible keys.
                let (kr, vr) = (k.narrow(0, r, 1)?.narrow(2, 0, len)?, v.narrow(0, r, 1)?.narrow(2, 0, len)?);
                let want = causal(&q.narrow(0, r, 1)?.contiguous()?, &kr, &vr, shape)?;
                assert!(max_diff(&got.narrow(0, r, 1)?, &want) < 1e-6, "row {r}, window {window:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn rows_see_their_shared_prefix_then_their_own_keys() -> Result<()> {
        let dev = Device::Cpu;
        let (nh, nkv, d, keys) = (4, 2, 8, 6);
        // Rows 0 and 2 share prefix A (5 keys), row 3 prefix B (3 keys), row 1 none.
        let own = [4usize, 6, 2, 5];
        let q = Tensor::randn(0f32, 1.0, (4, nh, 1, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (4, nkv, keys, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (4, nkv, keys, d), &dev)?;
        let (ka, va) =
            (Tensor::randn(0f32, 1.0, (1, nkv, 5, d), &dev)?, Tensor::randn(0f32, 1.0, (1, nkv, 5, d), &dev)?);
        let (kb, vb) =
            (Tensor::randn(0f32, 1.0, (1, nkv, 3, d), &dev)?, Tensor::randn(0f32, 1.0, (1, nkv, 3, d), &dev)?);
        let prefix = [Some((&ka, &va)), None, Some((&ka, &va)), Some((&kb, &vb))];
        let a_rows = Tensor::new(&[0u32, 2], &dev)?;
        let b_rows = Tensor::new(&[3u32], &dev)?;
        // Stacked A's rows (0, 2), B's (3), then row 1.
        let restore = Tensor::new(&[0u32, 3, 1, 2], &dev)?;
        for softcap in [None, Some(2.0)] {
            let shape = Shape { window: None, softcap, chunk_bytes: None };
            let shared = [
                SharedKeys { rows: &a_rows, k: &ka, v: &va, mask: None },
                SharedKeys { rows: &b_rows, k: &kb, v: &vb, mask: None },
            ];
            let mask = rows_mask(&own, keys, None, &dev)?;
            let got = rows(&q, &k, &v, mask.as_ref(), shape, &shared, Some(&restore))?;
            for r in 0..4 {
                // The last query of a causal pass over the prefix's keys then the row's own.
                let (kr, vr) = (k.narrow(0, r, 1)?.narrow(2, 0, own[r])?, v.narrow(0, r, 1)?.narrow(2, 0, own[r])?);
                let (kr, vr) = match prefix[r] {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &kr], 2)?, Tensor::cat(&[pv, &vr], 2)?),
                    None => (kr, vr),
                };
                let want = causal(&q.narrow(0, r, 1)?.contiguous()?, &kr, &vr, shape)?;
                let e = max_diff(&got.narrow(0, r, 1)?, &want);
                assert!(e < 1e-5, "row {r}, softcap {softcap:?}: {e}");
            }
        }
        Ok(())
    }
}
