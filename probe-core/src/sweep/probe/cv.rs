//! Cross-validation of one layer: outer folds (in parallel), inner folds choosing `C`, the
//! control task, the difference-of-means probe, the bootstrap interval.

use super::folds::{bootstrap_ci95, mean_std, permuted, stratified_folds, train_test};
use super::linalg::{Standardizer, class_means, dot, nearest_mean, r2, ridge};
use super::logistic::{LogisticProbe, Solver, argmax};
use super::{ProbeConfig, Targets};
use crate::sweep::LayerScore;
use crate::{Error, Result, Tensor};

/// Area under the ROC curve of `scores` for `positive` examples (Mann–Whitney, ties
/// counted half). NaN when one side is empty.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        idx[i..=j].iter().for_each(|&k| ranks[k] = rank);
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let sum_pos: f64 = ranks.iter().zip(positive).filter(|(_, p)| **p).map(|(r, _)| r).sum();
    (sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// What one outer fold found.
struct Fold {
    /// Held-out accuracy (R² for numbers).
    score: f64,
    auc: f64,
    c: f64,
    control: f64,
    /// Difference-of-means accuracy (classes only).
    dom: f64,
    /// `(row, correct or prediction)` per test row.
    held_out: Vec<(usize, f64)>,
    n_train: usize,
}

/// One model fitted on training rows, scoring test rows.
enum Fitted {
    Logistic(LogisticProbe),
    Ridge(Standardizer, Vec<f64>, f64),
}

/// Fits on `rows` already standardised (`x`, row-major `rows.len() × d`, by `st`): one
/// standardisation of a fold's training rows serves the probe, its control, the difference of
/// means and every C of the grid.
fn fit_standardized(
    st: Standardizer,
    x: &[f32],
    d: usize,
    t: &Targets,
    rows: &[usize],
    c: f64,
    solver: Solver,
) -> Fitted {
    match t {
        Targets::Classes { labels, n_classes } => {
            let y: Vec<usize> = rows.iter().map(|&r| labels[r]).collect();
            Fitted::Logistic(LogisticProbe::fit_standardized(st, x, &y, *n_classes, c, solver, None))
        }
        Targets::Numeric(v) => {
            let y: Vec<f64> = rows.iter().map(|&r| v[r]).collect();
            let (w, b) = ridge(x, d, &y, 1.0 / c, solver.max_iter);
            Fitted::Ridge(st, w, b)
        }
    }
}

impl Fitted {
    /// Accuracy (or R²) on `rows`.
    fn score(&self, features: &Tensor, t: &Targets, rows: &[usize]) -> f64 {
        match (self, t) {
            (Self::Logistic(p), Targets::Classes { labels, .. }) => {
                rows.iter().filter(|&&r| p.predict(features.row(r)) == labels[r]).count() as f64 / rows.len() as f64
            }
            (Self::Ridge(..), Targets::Numeric(v)) => {
                let y: Vec<f64> = rows.iter().map(|&r| v[r]).collect();
                r2(&y, &self.predictions(features, rows))
            }
            _ => unreachable!("model and targets are of the same kind"),
        }
    }

    fn predictions(&self, features: &Tensor, rows: &[usize]) -> Vec<f64> {
        match self {
            Self::Ridge(st, w, b) => rows.iter().map(|&r| dot(&st.apply(features.row(r)), w) + b).collect(),
            Self::Logistic(p) => rows.iter().map(|&r| p.predict(features.row(r)) as f64).collect(),
        }
    }
}

/// The `C` of `grid` with the best mean inner-fold score on `train` (the smallest on ties).
fn choose_c(
    features: &Tensor,
    t: &Targets,
    train: &[usize],
    grid: &[f64],
    cfg: &ProbeConfig,
    salt: u64,
) -> Result<f64> {
    if grid.len() == 1 {
        return Ok(grid[0]);
    }
    let strata: Vec<usize> = t.strata(cfg.inner_folds);
    let sub: Vec<usize> = train.iter().map(|&r| strata[r]).collect();
    let inner = stratified_folds(&sub, cfg.inner_folds, cfg.seed.wrapping_add(salt))?;
    let mut totals = vec![0.0; grid.len()];
    for f in 0..cfg.inner_folds {
        let local: Vec<usize> = (0..train.len()).collect();
        let (itr, ite) = train_test(&inner, &local, f);
        let (itr, ite): (Vec<usize>, Vec<usize>) =
            (itr.iter().map(|&i| train[i]).collect(), ite.iter().map(|&i| train[i]).collect());
        let solver = Solver::of(cfg);
        // One standardisation of the inner training rows for every C of the grid.
        let (st, x) = Standardizer::fit(features, &itr);
        match t {
            Targets::Classes { labels, n_classes } => {
                // Warm start along the ascending grid.
                let y: Vec<usize> = itr.iter().map(|&r| labels[r]).collect();
                let mut init = None;
                for (total, &c) in totals.iter_mut().zip(grid) {
                    let p = LogisticProbe::fit_standardized(st.clone(), &x, &y, *n_classes, c, solver, init);
                    *total += Fitted::Logistic(p.clone()).score(features, t, &ite);
                    init = Some(p.theta());
                }
            }
            Targets::Numeric(_) => {
                for (total, &c) in totals.iter_mut().zip(grid) {
                    let d = features.shape[1];
                    *total += fit_standardized(st.clone(), &x, d, t, &itr, c, solver).score(features, t, &ite);
                }
            }
        }
    }
    Ok((0..grid.len()).fold(0, |b, i| if totals[i] > totals[b] + 1e-12 { i } else { b })).map(|i| grid[i])
}

/// The `C` of `cfg`'s grid for a probe trained on `rows` (inner cross-validation when the
/// grid has several values).
pub(super) fn choose_c_all(features: &Tensor, t: &Targets, rows: &[usize], cfg: &ProbeConfig) -> Result<f64> {
    choose_c(features, t, rows, &cfg.grid(), cfg, 0)
}

fn run_fold(
    features: &Tensor,
    t: &Targets,
    control: &Targets,
    fold: &[usize],
    f: usize,
    cfg: &ProbeConfig,
) -> Result<Fold> {
    let all: Vec<usize> = (0..fold.len()).collect();
    let (train, test) = train_test(fold, &all, f);
    let solver = Solver::of(cfg);
    let c = choose_c(features, t, &train, &cfg.grid(), cfg, 1 + f as u64)?;
    let d = features.shape[1];
    let (st, x) = Standardizer::fit(features, &train);
    let model = fit_standardized(st.clone(), &x, d, t, &train, c, solver);
    let score = model.score(features, t, &test);
    let control = fit_standardized(st.clone(), &x, d, control, &train, c, solver).score(features, control, &test);
    let (auc, dom, held_out) = match (&model, t) {
        (Fitted::Logistic(p), Targets::Classes { labels, n_classes }) => {
            let scores: Vec<Vec<f64>> = test.iter().map(|&r| p.scores(features.row(r))).collect();
            let problems = if *n_classes == 2 { 1..2 } else { 0..*n_classes };
            let aucs: Vec<f64> = problems
                .map(|c| {
                    let pos: Vec<bool> = test.iter().map(|&r| labels[r] == c).collect();
                    roc_auc(&scores.iter().map(|s| s[c]).collect::<Vec<_>>(), &pos)
                })
                .collect();
            let held_out =
                test.iter().zip(&scores).map(|(&r, s)| (r, f64::from(u8::from(argmax(s) == labels[r])))).collect();
            let y: Vec<usize> = train.iter().map(|&r| labels[r]).collect();
            let means = class_means(&x, d, &y, *n_classes);
            let dom = test.iter().filter(|&&r| nearest_mean(&means, &st.apply(features.row(r))) == labels[r]).count()
                as f64
                / test.len() as f64;
            (aucs.iter().sum::<f64>() / aucs.len() as f64, dom, held_out)
        }
        _ => (f64::NAN, f64::NAN, test.iter().copied().zip(model.predictions(features, &test)).collect()),
    };
    Ok(Fold { score, auc, c, control, dom, held_out, n_train: train.len() })
}

/// Cross-validates one probe per attention head of block `layer` (a `heads` sweep): `features`
/// `[n, heads·head_dim]` (each position's heads side by side), `shape` = `(heads, head_dim)`;
/// each head's `[n, head_dim]` columns go through [`evaluate_layer`]. Scores in head order,
/// each with its `head`. Heads run in parallel (up to the available cores), each head's folds
/// on its thread: a block has more heads than a probe has folds, and each head's bootstrap
/// runs alongside the others'.
///
/// # Errors
/// [`Error::InvalidInput`] for a tensor that is not `[n, heads·head_dim]` (or no heads), and
/// [`evaluate_layer`]'s errors.
pub fn evaluate_heads(
    layer: usize,
    features: &Tensor,
    shape: (usize, usize),
    targets: &Targets,
    fold: &[usize],
    cfg: &ProbeConfig,
) -> Result<Vec<LayerScore>> {
    let (nh, d) = shape;
    if nh == 0 || d == 0 || features.shape.len() != 2 || features.shape[1] != nh * d {
        return Err(Error::invalid(
            "site",
            format!("heads: block {layer} has shape {:?}, not [n, {nh} heads × {d}]", features.shape),
        ));
    }
    let n = features.rows();
    in_parallel(nh, cores(), |h| {
        let data = (0..n).flat_map(|r| features.row(r)[h * d..(h + 1) * d].iter().copied()).collect();
        let mut score = evaluate_layer_on(layer, &Tensor::new(vec![n, d], data), targets, fold, cfg, 1)?;
        score.head = Some(h);
        Ok(score)
    })
    .into_iter()
    .collect()
}

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `f(0) .. f(count - 1)` in order, computed on up to `threads` scoped threads (task `i` on
/// thread `i mod threads`); on the calling thread when there is one.
fn in_parallel<T: Send>(count: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.min(count).max(1);
    if threads == 1 {
        return (0..count).map(f).collect();
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| s.spawn(move || (t..count).step_by(threads).map(|i| (i, f(i))).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            for (i, r) in h.join().expect("a probe thread panicked") {
                results[i] = Some(r);
            }
        }
    });
    results.into_iter().map(|r| r.expect("every task ran")).collect()
}

/// Cross-validates the probes of one layer: `features` `[n, hidden]`, `targets` per row,
/// `fold` the outer fold of every row (from [`stratified_folds`] over
/// [`Targets::strata`]). Outer folds run in parallel (up to the available cores).
///
/// # Errors
/// [`Error::InvalidInput`] for a tensor that is not `[n, hidden]` with `n` = the targets'
/// rows, bad settings, or an inner training set too small for the inner folds.
pub fn evaluate_layer(
    layer: usize,
    features: &Tensor,
    targets: &Targets,
    fold: &[usize],
    cfg: &ProbeConfig,
) -> Result<LayerScore> {
    evaluate_layer_on(layer, features, targets, fold, cfg, cores())
}

/// [`evaluate_layer`] with its outer folds on up to `threads` threads.
fn evaluate_layer_on(
    layer: usize,
    features: &Tensor,
    targets: &Targets,
    fold: &[usize],
    cfg: &ProbeConfig,
    threads: usize,
) -> Result<LayerScore> {
    cfg.validate()?;
    if features.shape.len() != 2 || features.shape[0] != targets.len() || fold.len() != targets.len() {
        return Err(Error::invalid(
            "features",
            format!(
                "shape {:?} for {} labels and {} folds (expected [n, hidden])",
                features.shape,
                targets.len(),
                fold.len()
            ),
        ));
    }
    let k = fold.iter().max().map_or(0, |m| m + 1);
    let control = match targets {
        Targets::Classes { labels, n_classes } => {
            Targets::Classes { labels: permuted(labels, cfg.seed), n_classes: *n_classes }
        }
        Targets::Numeric(v) => Targets::Numeric(permuted(v, cfg.seed)),
    };
    let folds: Vec<Fold> = in_parallel(k, threads, |f| run_fold(features, targets, &control, fold, f, cfg))
        .into_iter()
        .collect::<Result<_>>()?;
    let (score, score_std) = mean_std(&folds.iter().map(|f| f.score).collect::<Vec<_>>());
    let control = folds.iter().map(|f| f.control).sum::<f64>() / k as f64;
    let mut held_out: Vec<(usize, f64)> = folds.iter().flat_map(|f| f.held_out.iter().copied()).collect();
    held_out.sort_by_key(|h| h.0);
    let ci95 = match targets {
        Targets::Classes { .. } => bootstrap_ci95(held_out.len(), cfg.bootstrap, cfg.seed, |idx| {
            idx.iter().map(|&i| held_out[i].1).sum::<f64>() / idx.len() as f64
        }),
        Targets::Numeric(v) => bootstrap_ci95(held_out.len(), cfg.bootstrap, cfg.seed, |idx| {
            let y: Vec<f64> = idx.iter().map(|&i| v[held_out[i].0]).collect();
            r2(&y, &idx.iter().map(|&i| held_out[i].1).collect::<Vec<_>>())
        }),
    };
    // The C chosen most often (the smallest on ties).
    let mut cs: Vec<f64> = folds.iter().map(|f| f.c).collect();
    cs.sort_by(f64::total_cmp);
    let c = cs.iter().fold((cs[0], 0), |(best, n), &c| {
        let count = cs.iter().filter(|&&x| x == c).count();
        if count > n { (c, count) } else { (best, n) }
    });
    let n = targets.len();
    let n_train = (folds.iter().map(|f| f.n_train).sum::<usize>() as f64 / k as f64).round() as usize;
    let mut s = LayerScore::new(layer, n_train, n - n_train);
    s.ci95 = ci95;
    s.c = c.0;
    s.selectivity = Some(score - control);
    match targets {
        Targets::Classes { .. } => {
            s.accuracy = score;
            s.accuracy_std = Some(score_std);
            s.auc = folds.iter().map(|f| f.auc).sum::<f64>() / k as f64;
            s.control_accuracy = Some(control);
            s.dom_accuracy = Some(folds.iter().map(|f| f.dom).sum::<f64>() / k as f64);
        }
        Targets::Numeric(_) => {
            s.r2 = Some(score);
            s.r2_std = Some(score_std);
            s.control_r2 = Some(control);
        }
    }
    Ok(s)
}
