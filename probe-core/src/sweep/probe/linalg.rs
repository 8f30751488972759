//! Standardisation, the inner loops, ridge regression and the difference-of-means probe.

use crate::Tensor;

/// Per-feature standardisation fitted on training rows (scikit-learn's `StandardScaler`:
/// population standard deviation, 1 for a constant feature).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Standardizer {
    /// Mean per feature.
    pub mean: Vec<f64>,
    /// Scale per feature.
    pub scale: Vec<f64>,
}

impl Standardizer {
    /// Fits on `rows` of `features` and returns the standardised rows (row-major, `f32`).
    pub(crate) fn fit(features: &Tensor, rows: &[usize]) -> (Self, Vec<f32>) {
        let d = features.shape[1];
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for &r in rows {
            axpy(&mut mean, 1.0, features.row(r));
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; d];
        for &r in rows {
            for ((s, v), m) in var.iter_mut().zip(features.row(r)).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2);
            }
        }
        let scale = var.iter().map(|s| (s / n).sqrt()).map(|s| if s > 1e-12 { s } else { 1.0 }).collect();
        let this = Self { mean, scale };
        let mut x = Vec::with_capacity(rows.len() * d);
        rows.iter().for_each(|&r| x.extend(this.apply(features.row(r))));
        (this, x)
    }

    /// One row, standardised.
    pub fn apply(&self, row: &[f32]) -> Vec<f32> {
        row.iter().zip(&self.mean).zip(&self.scale).map(|((v, m), s)| ((f64::from(*v) - m) / s) as f32).collect()
    }
}

/// `Σ a[i] b[i]` with four accumulators (vectorises).
pub(crate) fn dot(a: &[f32], b: &[f64]) -> f64 {
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| f64::from(*x) * y).sum();
    let mut acc = [0.0f64; 4];
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += f64::from(x[k]) * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ a[i] b[i]` in sixteen `f32` lanes (vectorises), summed in `f64`.
pub(crate) fn dot32(a: &[f32], b: &[f32]) -> f64 {
    const L: usize = 16;
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let mut acc = [0.0f32; L];
    for (x, y) in ca.zip(cb) {
        for k in 0..L {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// `y += a x` in `f32`.
pub(crate) fn axpy32(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// `y += a x`.
pub(crate) fn axpy(y: &mut [f64], a: f64, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * f64::from(*x));
}

/// Ridge regression on standardised rows `x` (`n × d`): minimises
/// `‖y − X w − b‖² + alpha ‖w‖²` (scikit-learn's `Ridge(alpha)`); the intercept is the mean
/// of `y` (the rows are centred), `w` from conjugate gradients on `(XᵀX + alpha I) w = Xᵀ(y − ȳ)`.
pub(crate) fn ridge(x: &[f32], d: usize, y: &[f64], alpha: f64, max_iter: usize) -> (Vec<f64>, f64) {
    let n = y.len();
    let bias = y.iter().sum::<f64>() / n.max(1) as f64;
    let apply = |v: &[f64]| {
        let mut out: Vec<f64> = v.iter().map(|v| alpha * v).collect();
        for i in 0..n {
            let row = &x[i * d..(i + 1) * d];
            axpy(&mut out, dot(row, v), row);
        }
        out
    };
    let mut rhs = vec![0.0; d];
    for i in 0..n {
        axpy(&mut rhs, y[i] - bias, &x[i * d..(i + 1) * d]);
    }
    let mut w = vec![0.0; d];
    let mut r = rhs.clone();
    let mut p = r.clone();
    let mut rr: f64 = r.iter().map(|v| v * v).sum();
    let stop = 1e-20 * rr.max(1e-300);
    for _ in 0..max_iter.min(d.max(1) * 2) {
        if rr <= stop {
            break;
        }
        let ap = apply(&p);
        let step = rr / p.iter().zip(&ap).map(|(a, b)| a * b).sum::<f64>();
        w.iter_mut().zip(&p).for_each(|(w, p)| *w += step * p);
        r.iter_mut().zip(&ap).for_each(|(r, a)| *r -= step * a);
        let rr_next: f64 = r.iter().map(|v| v * v).sum();
        p.iter_mut().zip(&r).for_each(|(p, r)| *p = r + rr_next / rr * *p);
        rr = rr_next;
    }
    (w, bias)
}

/// `1 − SS_res / SS_tot` (scikit-learn's `r2_score`; 0 when `y` is constant and predicted
/// exactly, −∞ avoided by returning 0 for a constant `y`).
pub(crate) fn r2(y: &[f64], pred: &[f64]) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len().max(1) as f64;
    let ss_tot: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    let ss_res: f64 = y.iter().zip(pred).map(|(a, b)| (a - b).powi(2)).sum();
    if ss_tot == 0.0 { 0.0 } else { 1.0 - ss_res / ss_tot }
}

/// The difference-of-means probe (nearest class mean on standardised features; for two
/// classes the direction `μ₁ − μ₀` with the threshold half-way): the class means.
pub(crate) fn class_means(x: &[f32], d: usize, y: &[usize], n_classes: usize) -> Vec<Vec<f64>> {
    let mut means = vec![vec![0.0; d]; n_classes];
    let mut counts = vec![0usize; n_classes];
    for (i, &c) in y.iter().enumerate() {
        axpy(&mut means[c], 1.0, &x[i * d..(i + 1) * d]);
        counts[c] += 1;
    }
    for (m, &k) in means.iter_mut().zip(&counts) {
        m.iter_mut().for_each(|v| *v /= k.max(1) as f64);
    }
    means
}

/// The class whose mean is nearest to the standardised `row`.
pub(crate) fn nearest_mean(means: &[Vec<f64>], row: &[f32]) -> usize {
    let dist = |m: &Vec<f64>| m.iter().zip(row).map(|(a, b)| (a - f64::from(*b)).powi(2)).sum::<f64>();
    (0..means.len()).fold(0, |best, c| if dist(&means[c]) < dist(&means[best]) { c } else { best })
}
