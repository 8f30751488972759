//! L2-regularised logistic regression, the estimator of scikit-learn's
//! `LogisticRegression(C, penalty="l2")` (lbfgs): binary for two classes, multinomial
//! (softmax, one weight vector per class) for more; objective
//! `mean log-loss + ‖W‖² / (2 C n)`, intercepts not penalised; solved with L-BFGS
//! (history 10, Armijo backtracking) to a max-abs gradient below `tol`.

use super::ProbeConfig;
use super::linalg::{Standardizer, axpy32, dot, dot32};
use crate::{Error, Result, Tensor};

/// A trained logistic probe, everything needed to apply it to new rows.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LogisticProbe {
    /// Standardisation of the training rows.
    pub standardizer: Standardizer,
    /// One weight vector per problem (`[m][hidden]`, on standardised features): one for two
    /// classes (the score of class 1), one per class otherwise.
    pub weights: Vec<Vec<f64>>,
    /// One intercept per problem.
    pub bias: Vec<f64>,
    /// Number of classes.
    pub n_classes: usize,
    /// Inverse regularisation strength it was trained with.
    pub c: f64,
}

/// Solver settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Solver {
    pub(crate) max_iter: usize,
    pub(crate) tol: f64,
    /// Threads per objective evaluation: the cores left to each of the outer folds, which
    /// run in parallel.
    pub(crate) threads: usize,
}

impl Solver {
    pub(crate) fn of(config: &ProbeConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = (cores / config.folds.clamp(1, cores)).max(1);
        Self { max_iter: config.max_iter, tol: config.tol, threads }
    }
}

/// Parameters `θ` laid out as `m` blocks of `d + 1` (weights, then intercept).
struct Problem<'a> {
    x: &'a [f32],
    n: usize,
    d: usize,
    y: &'a [usize],
    m: usize,
    lambda: f64,
    threads: usize,
}

impl Problem<'_> {
    /// Objective and its gradient at `theta`. The rows are split over threads; inside a
    /// thread (at most one per 64k values), products run in `f32` lanes (vectorised) and the gradient is gathered in `f32`
    /// over blocks of [`BLOCK`] rows, then summed in `f64`.
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (n, d, m) = (self.n, self.d, self.m);
        let w32: Vec<f32> = theta.iter().map(|&t| t as f32).collect();
        let threads = self.threads.min((n * d / 65_536).max(1)).min(n.max(1));
        let per = n.div_ceil(threads);
        let parts: Vec<(f64, Vec<f64>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (lo, hi) = (t * per, ((t + 1) * per).min(n));
                    let w32 = &w32;
                    scope.spawn(move || self.partial(w32, lo..hi))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("probe solver thread")).collect()
        });
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for (l, g) in parts {
            loss += l;
            grad.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
        }
        let inv_n = 1.0 / n as f64;
        grad.iter_mut().for_each(|g| *g *= inv_n);
        let mut penalty = 0.0;
        for k in 0..m {
            let b = k * (d + 1);
            for j in b..b + d {
                penalty += theta[j] * theta[j];
                grad[j] += self.lambda * theta[j];
            }
        }
        loss * inv_n + 0.5 * self.lambda * penalty
    }

    /// Summed log-loss and gradient (not divided by `n`) of rows `rows`, at `w32`.
    fn partial(&self, w32: &[f32], rows: std::ops::Range<usize>) -> (f64, Vec<f64>) {
        let (d, m) = (self.d, self.m);
        let mut grad = vec![0.0f64; m * (d + 1)];
        let mut block = vec![0.0f32; m * d];
        let mut z = vec![0.0f64; m];
        let mut loss = 0.0;
        for (k, i) in rows.enumerate() {
            let row = &self.x[i * d..(i + 1) * d];
            for (c, z) in z.iter_mut().enumerate() {
                let b = &w32[c * (d + 1)..(c + 1) * (d + 1)];
                *z = dot32(row, &b[..d]) + f64::from(b[d]);
            }
            loss += residuals(&mut z, self.y[i]);
            for (c, &r) in z.iter().enumerate() {
                axpy32(&mut block[c * d..(c + 1) * d], r as f32, row);
                grad[c * (d + 1) + d] += r;
            }
            if (k + 1) % BLOCK == 0 {
                flush(&mut block, &mut grad, d);
            }
        }
        flush(&mut block, &mut grad, d);
        (loss, grad)
    }
}

/// Rows whose gradient is gathered in `f32` before it is added to the `f64` total.
const BLOCK: usize = 64;

/// Replaces the scores `z` of a row of class `y` by the loss gradient in them; returns the
/// row's log-loss (binary: `z` holds one logit).
fn residuals(z: &mut [f64], y: usize) -> f64 {
    if z.len() == 1 {
        let t = if y == 1 { 1.0 } else { 0.0 };
        let zi = z[0];
        // log(1 + e^z) − t z, stably.
        z[0] = sigmoid(zi) - t;
        return zi.max(0.0) + (-zi.abs()).exp().ln_1p() - t * zi;
    }
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
    let loss = max + sum.ln() - z[y];
    for (k, v) in z.iter_mut().enumerate() {
        *v = (*v - max).exp() / sum - if k == y { 1.0 } else { 0.0 };
    }
    loss
}

/// Adds the `f32` block of per-class gradients into `grad` (blocks of `d + 1`) and zeroes it.
fn flush(block: &mut [f32], grad: &mut [f64], d: usize) {
    for (c, part) in block.chunks_mut(d).enumerate() {
        for (g, b) in grad[c * (d + 1)..c * (d + 1) + d].iter_mut().zip(part.iter_mut()) {
            *g += f64::from(*b);
            *b = 0.0;
        }
    }
}

pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Minimises `problem` from `theta` with L-BFGS.
fn lbfgs(problem: &Problem<'_>, mut theta: Vec<f64>, solver: Solver) -> Vec<f64> {
    const HISTORY: usize = 10;
    let p = theta.len();
    let mut grad = vec![0.0; p];
    let mut f = problem.eval(&theta, &mut grad);
    let mut hist: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = std::collections::VecDeque::new();
    let mut next = vec![0.0; p];
    let mut next_grad = vec![0.0; p];
    for _ in 0..solver.max_iter {
        if grad.iter().fold(0.0f64, |a, g| a.max(g.abs())) < solver.tol {
            break;
        }
        // Two-loop recursion: direction = −H g.
        let mut q = grad.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * s.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>();
            q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
            alphas.push(a);
        }
        let gamma = hist.back().map_or(1.0 / grad.iter().map(|g| g * g).sum::<f64>().sqrt(), |(s, y, _)| {
            s.iter().zip(y).map(|(a, b)| a * b).sum::<f64>() / y.iter().map(|v| v * v).sum::<f64>()
        });
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * y.iter().zip(&q).map(|(a, b)| a * b).sum::<f64>();
            q.iter_mut().zip(s).for_each(|(q, s)| *q += (a - b) * s);
        }
        let slope: f64 = -q.iter().zip(&grad).map(|(a, b)| a * b).sum::<f64>();
        if slope >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            hist.clear();
            continue;
        }
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..40 {
            next.iter_mut().zip(&theta).zip(&q).for_each(|((n, t), d)| *n = t - step * d);
            let f_next = problem.eval(&next, &mut next_grad);
            if f_next <= f + 1e-4 * step * slope {
                accepted = true;
                let s: Vec<f64> = next.iter().zip(&theta).map(|(a, b)| a - b).collect();
                let y: Vec<f64> = next_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
                let sy: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
                if sy > 1e-12 {
                    if hist.len() == HISTORY {
                        hist.pop_front();
                    }
                    hist.push_back((s, y, 1.0 / sy));
                }
                let decrease = f - f_next;
                std::mem::swap(&mut theta, &mut next);
                std::mem::swap(&mut grad, &mut next_grad);
                f = f_next;
                if decrease <= 1e-15 * f.abs().max(1.0) {
                    return theta;
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    theta
}

impl LogisticProbe {
    /// Trains on `rows` of `features` (`[n, hidden]`) with class indices `labels[row]`,
    /// standardising on those rows, with `config`'s solver settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a tensor that is not 2-D, no rows, fewer than two classes,
    /// a class index ≥ `n_classes`, or `C` not a finite number > 0.
    pub fn fit(
        features: &Tensor,
        labels: &[usize],
        rows: &[usize],
        n_classes: usize,
        c: f64,
        config: &ProbeConfig,
    ) -> Result<Self> {
        config.validate()?;
        if features.shape.len() != 2 || labels.len() != features.shape[0] {
            return Err(Error::invalid(
                "features",
                format!("shape {:?} for {} labels (expected [n, hidden])", features.shape, labels.len()),
            ));
        }
        if rows.is_empty() || n_classes < 2 {
            return Err(Error::invalid("training set", format!("{} rows, {n_classes} classes", rows.len())));
        }
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::invalid("C", format!("{c} (must be a finite number > 0)")));
        }
        if let Some(&bad) = rows.iter().map(|&r| &labels[r]).find(|&&l| l >= n_classes) {
            return Err(Error::invalid("label", format!("class index {bad} ≥ {n_classes}")));
        }
        let (st, x) = Standardizer::fit(features, rows);
        let y: Vec<usize> = rows.iter().map(|&r| labels[r]).collect();
        Ok(Self::fit_standardized(st, &x, &y, n_classes, c, Solver::of(config), None))
    }

    /// Trains on standardised rows `x` (`n × d`, row-major) with classes `y`; `init` (from
    /// [`Self::theta`] of a probe of the same shape) warm-starts the solver.
    pub(crate) fn fit_standardized(
        standardizer: Standardizer,
        x: &[f32],
        y: &[usize],
        n_classes: usize,
        c: f64,
        solver: Solver,
        init: Option<Vec<f64>>,
    ) -> Self {
        let n = y.len();
        let d = standardizer.mean.len();
        let m = if n_classes == 2 { 1 } else { n_classes };
        let problem = Problem { x, n, d, y, m, lambda: 1.0 / (c * n as f64), threads: solver.threads };
        let theta = init.filter(|t| t.len() == m * (d + 1)).unwrap_or_else(|| vec![0.0; m * (d + 1)]);
        let theta = lbfgs(&problem, theta, solver);
        let weights = (0..m).map(|k| theta[k * (d + 1)..k * (d + 1) + d].to_vec()).collect();
        let bias = (0..m).map(|k| theta[k * (d + 1) + d]).collect();
        Self { standardizer, weights, bias, n_classes, c }
    }

    /// The solver's parameter vector (for warm starts).
    pub(crate) fn theta(&self) -> Vec<f64> {
        self.weights.iter().zip(&self.bias).flat_map(|(w, b)| w.iter().copied().chain([*b])).collect()
    }

    /// Decision scores of one standardised row: one per class (for two classes `[-z, z]`).
    pub(crate) fn scores_standardized(&self, row: &[f32]) -> Vec<f64> {
        let z: Vec<f64> = self.weights.iter().zip(&self.bias).map(|(w, b)| dot(row, w) + b).collect();
        if self.n_classes == 2 { vec![-z[0], z[0]] } else { z }
    }

    /// Decision scores of one raw row (standardised first).
    pub fn scores(&self, row: &[f32]) -> Vec<f64> {
        self.scores_standardized(&self.standardizer.apply(row))
    }

    /// The predicted class of one raw row.
    pub fn predict(&self, row: &[f32]) -> usize {
        argmax(&self.scores(row))
    }
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(s: &[f64]) -> usize {
    (0..s.len()).fold(0, |best, i| if s[i] > s[best] { i } else { best })
}
