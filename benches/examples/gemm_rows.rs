//! Why candle's CPU decode step multiplies as `(w · xᵀ)ᵀ` (`probe-backends`'
//! `layers::times_transposed`): gemm (the crate under candle's CPU matmul), 2 threads, on the
//! projections of the random 168 M Llama of `benches/peer` (hidden 1,024, MLP 4,096, vocab
//! 32,000), for a few rows (a decode step) and many (a prefill, an extraction), three ways:
//!
//! - `x · wᵀ`: the weight as stored (`[out, in]`), what candle's `x.matmul(&w.t())` runs;
//! - `x · w`, the weight transposed to `[in, out]` once (what probe did before);
//! - `(w · xᵀ)ᵀ`: the weight as stored, the output `[out, rows]` transposed after (what probe does
//!   up to 128 rows).
//!
//! Then one decode step of 16 rows over every weight of the model (8 blocks and the LM head,
//! 536 MB, each read once, as in generation) with `(w · xᵀ)`.
//!
//! `cargo run --release -p probe-benches --example gemm_rows` (prints ms per product, and for
//! `(w · xᵀ)ᵀ` the weight's bytes over the time: the memory's speed bounds it at a few rows).

use std::time::Instant;

use gemm::{Parallelism, gemm};

/// Seconds per call of `f`, over at least 0.3 s after one warm-up call.
fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < 0.3 {
        f();
        n += 1;
    }
    t.elapsed().as_secs_f64() / n as f64
}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]`, each given by its row and column strides.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: every index the strides reach is inside the slices (checked above for the dense
    // layouts used here), and `dst` does not overlap `lhs` or `rhs`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(2),
        )
    }
}

/// `dst` (`[cols, rows]`) = `src` (`[rows, cols]`) transposed, in 32 × 32 blocks (as
/// `layers::transposed_copy`).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const B: usize = 32;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed) % 101) as f32 * 0.01 - 0.5).collect()
}

fn main() {
    println!("| weight [out, in] | rows | x · wᵀ ms | x · w ([in, out]) ms | (w · xᵀ)ᵀ ms | (w · xᵀ)ᵀ weight GB/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (out, inp) in [(4096, 1024), (1024, 4096), (32000, 1024)] {
        let w = values(out * inp, 1);
        let mut w_t = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                w_t[i * out + o] = w[o * inp + i];
            }
        }
        for rows in [1, 16, 64, 128, 256, 2048] {
            let x = values(rows * inp, 2);
            let (mut y, mut y_t) = (vec![0f32; rows * out], vec![0f32; rows * out]);
            let stored = time(&mut || product((rows, out, inp), &mut y, (out, 1), &x, (inp, 1), &w, (1, inp)));
            let ready = time(&mut || product((rows, out, inp), &mut y, (out, 1), &x, (inp, 1), &w_t, (out, 1)));
            let few = time(&mut || {
                product((out, rows, inp), &mut y_t, (rows, 1), &w, (inp, 1), &x, (1, inp));
                transpose(&y_t, out, rows, &mut y);
            });
            let gbs = (out * inp * 4) as f64 / few / 1e9;
            println!(
                "| {out} × {inp} | {rows} | {:.2} | {:.2} | {:.2} | {gbs:.1} |",
                stored * 1e3,
                ready * 1e3,
                few * 1e3
            );
        }
    }
    // One decode step: every projection of 8 blocks and the LM head, each read once.
    let mut shapes = Vec::new();
    for _ in 0..8 {
        shapes.extend([(3072, 1024), (1024, 1024), (8192, 1024), (1024, 4096)]);
    }
    shapes.push((32000, 1024));
    let weights: Vec<Vec<f32>> = shapes.iter().map(|&(o, i)| values(o * i, 3)).collect();
    let bytes: usize = shapes.iter().map(|(o, i)| o * i * 4).sum();
    let rows = 16;
    let x = values(rows * 8192, 4);
    let mut y = vec![0f32; rows * 32000];
    let step = time(&mut || {
        for (w, &(out, inp)) in weights.iter().zip(&shapes) {
            product((out, rows, inp), &mut y, (rows, 1), w, (inp, 1), &x, (1, inp));
        }
    });
    println!(
        "\none decode step of {rows} rows over all {} MB of weights, (w · xᵀ): {:.1} ms, {:.1} GB/s",
        bytes / 1_000_000,
        step * 1e3,
        bytes as f64 / step / 1e9
    );
}
