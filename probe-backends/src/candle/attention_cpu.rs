//! The CPU kernel of [`super::attention::causal`]: the same chunks of query rows, each chunk
//! split into one task per (row of the batch, query head), run on rayon's pool (candle's own
//! threads). A task multiplies its queries by the keys they see into a score tile of its
//! thread (`rows × keys`, reused from task to task, small enough for the core's L2 cache),
//! soft-caps, takes each query's softmax over exactly its visible keys (so no mask is built
//! and the hidden scores are zeros), and multiplies by the values straight into the output,
//! laid out `[b, s, heads, d]` as the output projection reads it. Nothing of size
//! `[b, heads, s, t]` is allocated, nothing is written twice. The matmuls are `gemm`'s, the
//! kernels candle's CPU matmul runs.

use candle_core::{CpuStorage, Result, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Largest score tile per thread, in f32 values (512 KiB: an L2 cache's share).
const TILE_VALUES: usize = 128 * 1024;

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes its own rows of the output (disjoint), and the buffer outlives the
// parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The address `i` values in (a method: a closure then captures the whole `Out`).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Contiguous f32 data of a CPU tensor with a contiguous last axis, with its strides.
fn f32_view<R>(t: &Tensor, f: impl FnOnce(&[f32], &[usize]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("the CPU attention kernel takes f32 CPU tensors");
    };
    if layout.stride().last() != Some(&1) {
        candle_core::bail!("the CPU attention kernel needs a contiguous last axis");
    }
    f(&data[layout.start_offset()..], layout.stride())
}

/// Causal attention on the CPU, in f32: `q` `[b, heads, s, d]`, `k` and `v` `[b, kv_heads, t, d]`
/// (last axis contiguous), query `i` at key position `t - s + i`, queries in chunks of
/// `chunk` rows; see [`super::attention::causal`]. Returns `[b, s, heads · d]`.
pub(crate) fn causal(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
    softcap: Option<f64>,
    chunk: usize,
) -> Result<Tensor> {
    let q = q.contiguous()?;
    let (b, nh, s, d) = q.dims4()?;
    let (_, nkv, t, _) = k.dims4()?;
    let rep = nh / nkv;
    let offset = t - s;
    // Rows per task: the chunk, or fewer when a tile of that many rows would not fit.
    let rows = chunk.min(TILE_VALUES / t.max(1)).clamp(1, s.max(1));
    let blocks = s.div_ceil(rows);
    let mut out = vec![0f32; b * s * nh * d];
    let dst = Out(out.as_mut_ptr());
    f32_view(&q, |qd, _| {
        f32_view(k, |kd, ks| {
            f32_view(v, |vd, vs| {
                (0..b * nh * blocks).into_par_iter().for_each_init(Vec::new, |tile: &mut Vec<f32>, task| {
                    let (rh, block) = (task / blocks, task % blocks);
                    let (r, h) = (rh / nh, rh % nh);
                    let g = h / rep;
                    let c0 = block * rows;
                    let n = rows.min(s - c0);
                    let first = offset + c0;
                    let hi = first + n;
                    let lo = window.map_or(0, |w| (first + 1).saturating_sub(w));
                    let keys = hi - lo;
                    tile.resize(n * keys, 0.0);
                    let qp = qd[((r * nh + h) * s + c0) * d..].as_ptr();
                    let kp = kd[r * ks[0] + g * ks[1] + lo * ks[2]..].as_ptr();
                    let vp = vd[r * vs[0] + g * vs[1] + lo * vs[2]..].as_ptr();
                    // SAFETY: the pointers address `n` query rows, `keys` key and value rows (strides
                    // from the layouts) and `n` output rows of this (r, h), inside their buffers.
                    unsafe {
                        gemm::gemm(
                            n,
                            keys,
                            d,
                            tile.as_mut_ptr(),
                            1,
                            keys as isize,
                            false,
                            qp,
                            1,
                            d as isize,
                            kp,
                            ks[2] as isize,
                            1,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    for (i, row) in tile.chunks_mut(keys).enumerate() {
                        // Query at position first + i sees keys from..=to (indices into the tile).
                        let to = first + i - lo;
                        let from = window.map_or(0, |w| (first + i + 1).saturating_sub(w).max(lo) - lo);
                        softmax(&mut row[from..=to], softcap);
                        row[..from].fill(0.0);
                        row[to + 1..].fill(0.0);
                    }
                    let op = dst.at(((r * s + c0) * nh + h) * d);
                    // SAFETY: as above; this task's output rows are its own.
                    unsafe {
                        gemm::gemm(
                            n,
                            d,
                            keys,
                            op,
                            1,
                            (nh * d) as isize,
                            false,
                            tile.as_ptr(),
                            1,
                            keys as isize,
                            vp,
                            1,
                            vs[2] as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                });
                Ok(())
            })
        })
    })?;
    Tensor::from_vec(out, (b, s, nh * d), q.device())
}

/// In place: `cap · tanh(x / cap)` when soft-capped, then the softmax (as candle's: max,
/// `exp(x - max)`, sum, divide).
fn softmax(row: &mut [f32], softcap: Option<f64>) {
    if let Some(cap) = softcap {
        // As candle's `(scores / cap).tanh() * cap`: multiplications by f32 factors.
        let (inv, cap) = ((1.0 / cap) as f32, cap as f32);
        row.iter_mut().for_each(|x| *x = (*x * inv).tanh() * cap);
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}
