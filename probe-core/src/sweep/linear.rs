//! Linear probes: a stratified train/test split, L2-regularised logistic regression on
//! standardised features (accelerated full-batch gradient descent, deterministic), accuracy
//! and ROC AUC. Several classes are handled one-vs-rest.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Tensor};

/// How probes are trained and scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// Fraction of each class held out for testing, in (0, 1).
    pub test_fraction: f64,
    /// Seed of the split.
    pub seed: u64,
    /// Inverse regularisation strength, as scikit-learn's `C` (objective: mean log-loss +
    /// `‖w‖² / (2 C n_train)`).
    pub c: f64,
    /// Gradient steps at most.
    pub max_iter: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { test_fraction: 0.2, seed: 0, c: 1.0, max_iter: 1000 }
    }
}

impl ProbeConfig {
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets the test fraction.
    pub fn with_test_fraction(mut self, f: f64) -> Self {
        self.test_fraction = f;
        self
    }
    /// Sets `C`.
    pub fn with_c(mut self, c: f64) -> Self {
        self.c = c;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if !(self.test_fraction > 0.0 && self.test_fraction < 1.0) {
            return Err(Error::invalid("test_fraction", format!("{} (must be in (0, 1))", self.test_fraction)));
        }
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(Error::invalid("C", format!("{} (must be a finite number > 0)", self.c)));
        }
        if self.max_iter == 0 {
            return Err(Error::invalid("max_iter", "0 (must be ≥ 1)"));
        }
        Ok(())
    }
}

/// Row indices of the training and test sets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Split {
    /// Training rows, sorted.
    pub train: Vec<usize>,
    /// Test rows, sorted.
    pub test: Vec<usize>,
}

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Splits rows by class so each class keeps its share in both sets: per class, a seeded
/// shuffle, then `round(count × test_fraction)` rows (at least 1, at most count − 1) to test.
///
/// # Errors
/// [`Error::InvalidInput`] when a class has fewer than two rows or `test_fraction` is outside (0, 1).
pub fn stratified_split(labels: &[usize], n_classes: usize, test_fraction: f64, seed: u64) -> Result<Split> {
    if !(test_fraction > 0.0 && test_fraction < 1.0) {
        return Err(Error::invalid("test_fraction", format!("{test_fraction} (must be in (0, 1))")));
    }
    let mut rng = SplitMix(seed ^ 0x5eed_0f5b_1175_0000);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in 0..n_classes {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if rows.len() < 2 {
            return Err(Error::invalid(
                "labels",
                format!("class #{class} has {} example(s); a train/test split needs at least 2", rows.len()),
            ));
        }
        for i in (1..rows.len()).rev() {
            let j = rng.below(i + 1);
            rows.swap(i, j);
        }
        let k = ((rows.len() as f64 * test_fraction).round() as usize).clamp(1, rows.len() - 1);
        test.extend_from_slice(&rows[..k]);
        train.extend_from_slice(&rows[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok(Split { train, test })
}

/// A trained probe: standardisation plus one weight vector per one-vs-rest problem
/// (one for two classes).
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticProbe {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// `(weights, bias)` per problem.
    models: Vec<(Vec<f64>, f64)>,
    n_classes: usize,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Binary logistic regression on standardised rows `x` (n × d, row-major) with targets in
/// {0, 1}: FISTA with step 1/L, L from a power iteration.
fn fit_binary(x: &[f64], n: usize, d: usize, y: &[f64], lambda: f64, max_iter: usize) -> (Vec<f64>, f64) {
    // Largest eigenvalue of [X 1]ᵀ[X 1] / n by power iteration.
    let mut v = vec![1.0 / ((d + 1) as f64).sqrt(); d + 1];
    let mut eig = 1.0;
    for _ in 0..30 {
        let mut u = vec![0.0; n];
        for i in 0..n {
            let row = &x[i * d..(i + 1) * d];
            u[i] = row.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() + v[d];
        }
        let mut w = vec![0.0; d + 1];
        for i in 0..n {
            let row = &x[i * d..(i + 1) * d];
            for j in 0..d {
                w[j] += row[j] * u[i];
            }
            w[d] += u[i];
        }
        let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt() / n as f64;
        if norm == 0.0 {
            break;
        }
        eig = norm;
        v = w.iter().map(|a| a / (norm * n as f64)).collect();
    }
    let lipschitz = 0.25 * eig + lambda;
    let step = 1.0 / lipschitz;
    let mut w = vec![0.0; d + 1];
    let mut prev = w.clone();
    let mut t = 1.0f64;
    let mut z = vec![0.0; n];
    for _ in 0..max_iter {
        let t_next = (1.0 + (1.0 + 4.0 * t * t).sqrt()) / 2.0;
        let beta = (t - 1.0) / t_next;
        let look: Vec<f64> = w.iter().zip(&prev).map(|(a, b)| a + beta * (a - b)).collect();
        for i in 0..n {
            let row = &x[i * d..(i + 1) * d];
            z[i] = row.iter().zip(&look).map(|(a, b)| a * b).sum::<f64>() + look[d];
        }
        let mut grad = vec![0.0; d + 1];
        for i in 0..n {
            let r = (sigmoid(z[i]) - y[i]) / n as f64;
            let row = &x[i * d..(i + 1) * d];
            for j in 0..d {
                grad[j] += r * row[j];
            }
            grad[d] += r;
        }
        for j in 0..d {
            grad[j] += lambda * look[j];
        }
        let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        prev = std::mem::replace(&mut w, look.iter().zip(&grad).map(|(a, g)| a - step * g).collect());
        t = t_next;
        if gnorm < 1e-7 {
            break;
        }
    }
    let bias = w.pop().expect("bias term");
    (w, bias)
}

impl LogisticProbe {
    /// Trains on `rows` of `features` (`[n, hidden]`) with class indices `labels[row]`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the tensor is not 2-D, `rows` is empty, or a class
    /// index is ≥ `n_classes`.
    pub fn fit(
        features: &Tensor,
        labels: &[usize],
        rows: &[usize],
        n_classes: usize,
        config: &ProbeConfig,
    ) -> Result<Self> {
        config.validate()?;
        if features.shape.len() != 2 {
            return Err(Error::invalid("features", format!("shape {:?} (expected [n, hidden])", features.shape)));
        }
        if rows.is_empty() || n_classes < 2 {
            return Err(Error::invalid("training set", format!("{} rows, {n_classes} classes", rows.len())));
        }
        if let Some(&bad) = rows.iter().map(|&r| &labels[r]).find(|&&c| c >= n_classes) {
            return Err(Error::invalid("label", format!("class index {bad} ≥ {n_classes}")));
        }
        let d = features.shape[1];
        let n = rows.len();
        let mut mean = vec![0.0; d];
        for &r in rows {
            for (m, v) in mean.iter_mut().zip(features.row(r)) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0; d];
        for &r in rows {
            for ((s, v), m) in var.iter_mut().zip(features.row(r)).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2);
            }
        }
        let scale: Vec<f64> =
            var.iter().map(|s| (s / n as f64).sqrt()).map(|s| if s > 1e-12 { s } else { 1.0 }).collect();
        let mut x = Vec::with_capacity(n * d);
        for &r in rows {
            x.extend(features.row(r).iter().zip(&mean).zip(&scale).map(|((v, m), s)| (f64::from(*v) - m) / s));
        }
        let lambda = 1.0 / (config.c * n as f64);
        let problems = if n_classes == 2 { vec![1] } else { (0..n_classes).collect() };
        let models = problems
            .into_iter()
            .map(|class| {
                let y: Vec<f64> = rows.iter().map(|&r| if labels[r] == class { 1.0 } else { 0.0 }).collect();
                fit_binary(&x, n, d, &y, lambda, config.max_iter)
            })
            .collect();
        Ok(Self { mean, scale, models, n_classes })
    }

    /// Decision scores of one row: one per class (for two classes, `[-z, z]`).
    pub fn scores(&self, row: &[f32]) -> Vec<f64> {
        let z: Vec<f64> = self
            .models
            .iter()
            .map(|(w, b)| {
                row.iter()
                    .zip(&self.mean)
                    .zip(&self.scale)
                    .zip(w)
                    .map(|(((v, m), s), w)| (f64::from(*v) - m) / s * w)
                    .sum::<f64>()
                    + b
            })
            .collect();
        if self.n_classes == 2 { vec![-z[0], z[0]] } else { z }
    }

    /// The predicted class of one row.
    pub fn predict(&self, row: &[f32]) -> usize {
        let s = self.scores(row);
        (0..s.len()).fold(0, |best, i| if s[i] > s[best] { i } else { best })
    }
}

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
        for k in i..=j {
            ranks[idx[k]] = rank;
        }
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

/// Held-out scores of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProbeScore {
    /// Test accuracy.
    pub accuracy: f64,
    /// Test ROC AUC (macro-averaged one-vs-rest for more than two classes).
    pub auc: f64,
    /// Training rows.
    pub n_train: usize,
    /// Test rows.
    pub n_test: usize,
}

/// Trains a probe on `split.train` and scores it on `split.test`.
///
/// # Errors
/// As [`LogisticProbe::fit`].
pub fn evaluate(
    features: &Tensor,
    labels: &[usize],
    n_classes: usize,
    split: &Split,
    config: &ProbeConfig,
) -> Result<ProbeScore> {
    let probe = LogisticProbe::fit(features, labels, &split.train, n_classes, config)?;
    let scores: Vec<Vec<f64>> = split.test.iter().map(|&r| probe.scores(features.row(r))).collect();
    let correct = split
        .test
        .iter()
        .zip(&scores)
        .filter(|(r, s)| (0..s.len()).fold(0, |b, i| if s[i] > s[b] { i } else { b }) == labels[**r])
        .count();
    let aucs: Vec<f64> = (if n_classes == 2 { 1..2 } else { 0..n_classes })
        .map(|c| {
            let pos: Vec<bool> = split.test.iter().map(|&r| labels[r] == c).collect();
            let s: Vec<f64> = scores.iter().map(|s| s[c]).collect();
            roc_auc(&s, &pos)
        })
        .collect();
    Ok(ProbeScore {
        accuracy: correct as f64 / split.test.len() as f64,
        auc: aucs.iter().sum::<f64>() / aucs.len() as f64,
        n_train: split.train.len(),
        n_test: split.test.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n: usize, d: usize, sep: f32, seed: u64) -> (Tensor, Vec<usize>) {
        let mut rng = SplitMix(seed);
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let c = i % 2;
            for j in 0..d {
                let noise = (rng.next() % 10_000) as f32 / 10_000.0 - 0.5;
                data.push(noise + if j == 0 && c == 1 { sep } else { 0.0 });
            }
            labels.push(c);
        }
        (Tensor::new(vec![n, d], data), labels)
    }

    #[test]
    fn separable_data_is_perfect() {
        let (x, y) = blobs(200, 16, 3.0, 1);
        let split = stratified_split(&y, 2, 0.2, 0).unwrap();
        let s = evaluate(&x, &y, 2, &split, &ProbeConfig::default()).unwrap();
        assert_eq!(s.accuracy, 1.0);
        assert_eq!(s.auc, 1.0);
        assert_eq!((s.n_train, s.n_test), (160, 40));
    }

    #[test]
    fn random_labels_are_near_chance() {
        let (x, _) = blobs(1000, 8, 0.0, 2);
        let mut rng = SplitMix(99);
        let y: Vec<usize> = (0..1000).map(|_| (rng.next() % 2) as usize).collect();
        let split = stratified_split(&y, 2, 0.3, 0).unwrap();
        let s = evaluate(&x, &y, 2, &split, &ProbeConfig::default()).unwrap();
        assert!((s.accuracy - 0.5).abs() < 0.1, "accuracy {}", s.accuracy);
        assert!((s.auc - 0.5).abs() < 0.1, "auc {}", s.auc);
    }

    #[test]
    fn split_is_stratified_and_deterministic() {
        let y: Vec<usize> = (0..100).map(|i| usize::from(i % 4 == 0)).collect();
        let a = stratified_split(&y, 2, 0.2, 7).unwrap();
        assert_eq!(a, stratified_split(&y, 2, 0.2, 7).unwrap());
        assert_ne!(a, stratified_split(&y, 2, 0.2, 8).unwrap());
        assert_eq!(a.test.iter().filter(|&&r| y[r] == 1).count(), 5);
        assert_eq!(a.test.iter().filter(|&&r| y[r] == 0).count(), 15);
        assert_eq!(a.train.len() + a.test.len(), 100);
        let e = stratified_split(&[0, 0, 1], 2, 0.2, 0).unwrap_err();
        assert!(e.to_string().contains("class #1 has 1 example"), "{e}");
    }

    #[test]
    fn auc_handles_ties_and_order() {
        assert_eq!(roc_auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]), 1.0);
        assert_eq!(roc_auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert!(roc_auc(&[0.5], &[true]).is_nan());
    }

    #[test]
    fn three_classes_one_vs_rest() {
        let mut data = Vec::new();
        let mut y = Vec::new();
        let mut rng = SplitMix(3);
        for i in 0..150 {
            let c = i % 3;
            for j in 0..3 {
                let noise = (rng.next() % 1000) as f32 / 1000.0 - 0.5;
                data.push(noise + if j == c { 4.0 } else { 0.0 });
            }
            y.push(c);
        }
        let x = Tensor::new(vec![150, 3], data);
        let split = stratified_split(&y, 3, 0.2, 0).unwrap();
        let s = evaluate(&x, &y, 3, &split, &ProbeConfig::default()).unwrap();
        assert_eq!(s.accuracy, 1.0);
        assert_eq!(s.auc, 1.0);
    }
}
