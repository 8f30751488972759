//! Seeded, stratified folds, label permutations and bootstrap intervals.

use crate::{Error, Result};

/// A small deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Fisher–Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The fold (`0..k`) of every row, stratified by `strata` (class index per row; numeric
/// labels pass one stratum per quantile bin): per stratum a seeded shuffle, then the rows are
/// dealt to the folds in turn, continuing where the previous stratum stopped, so fold sizes
/// differ by at most one and every stratum of at least `k` rows is in every fold.
///
/// # Errors
/// [`Error::InvalidInput`] when `k < 2` or there are fewer than `k` rows.
pub fn stratified_folds(strata: &[usize], k: usize, seed: u64) -> Result<Vec<usize>> {
    if k < 2 {
        return Err(Error::invalid("folds", format!("{k} (must be ≥ 2)")));
    }
    if strata.len() < k {
        return Err(Error::invalid("folds", format!("{k} (more folds than the {} rows)", strata.len())));
    }
    let mut rng = SplitMix(seed ^ 0x5eed_0f5b_1175_0000);
    let n_strata = strata.iter().max().map_or(0, |m| m + 1);
    let mut fold = vec![0; strata.len()];
    let mut next = 0;
    for s in 0..n_strata {
        let mut rows: Vec<usize> = (0..strata.len()).filter(|&i| strata[i] == s).collect();
        rng.shuffle(&mut rows);
        for r in rows {
            fold[r] = next;
            next = (next + 1) % k;
        }
    }
    Ok(fold)
}

/// Rows of `subset` in fold `f` (test) and not in it (train), each sorted.
pub(crate) fn train_test(fold: &[usize], subset: &[usize], f: usize) -> (Vec<usize>, Vec<usize>) {
    subset.iter().partition(|&&r| fold[r] != f)
}

/// A seeded permutation of `labels` (the control task's labels).
pub(crate) fn permuted<T: Clone>(labels: &[T], seed: u64) -> Vec<T> {
    let mut v = labels.to_vec();
    SplitMix(seed ^ 0xc0_47_12_01).shuffle(&mut v);
    v
}

/// The 95 % percentile-bootstrap interval of `stat` over `n` rows: `resamples` seeded
/// resamples of the row indices with replacement, `[2.5th, 97.5th]` percentile of `stat`.
pub(crate) fn bootstrap_ci95(n: usize, resamples: usize, seed: u64, stat: impl Fn(&[usize]) -> f64) -> [f64; 2] {
    if n == 0 {
        return [f64::NAN, f64::NAN];
    }
    let mut rng = SplitMix(seed ^ 0xb007_57a9);
    let mut idx = vec![0; n];
    let mut stats: Vec<f64> = (0..resamples.max(1))
        .map(|_| {
            idx.iter_mut().for_each(|i| *i = rng.below(n));
            stat(&idx)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let at = |q: f64| stats[((q * (stats.len() - 1) as f64).round() as usize).min(stats.len() - 1)];
    [at(0.025), at(0.975)]
}

/// Mean and population standard deviation (numpy's default `ddof=0`).
pub(crate) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_balanced_and_seeded() {
        let y: Vec<usize> = (0..103).map(|i| usize::from(i % 4 == 0)).collect();
        let f = stratified_folds(&y, 5, 7).unwrap();
        assert_eq!(f, stratified_folds(&y, 5, 7).unwrap());
        assert_ne!(f, stratified_folds(&y, 5, 8).unwrap());
        for k in 0..5 {
            let size = f.iter().filter(|&&x| x == k).count();
            assert!((20..=21).contains(&size), "fold {k}: {size}");
            let pos = (0..103).filter(|&i| f[i] == k && y[i] == 1).count();
            assert!((5..=6).contains(&pos), "fold {k}: {pos} positives");
        }
        assert!(stratified_folds(&y, 1, 0).unwrap_err().to_string().contains("folds: 1"));
        assert!(stratified_folds(&[0, 1], 3, 0).is_err());
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean() {
        let v: Vec<f64> = (0..200).map(|i| f64::from(u8::from(i % 4 != 0))).collect();
        let mean = |idx: &[usize]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        let [lo, hi] = bootstrap_ci95(v.len(), 1000, 1, mean);
        assert!(lo < 0.75 && 0.75 < hi && hi - lo < 0.15, "[{lo}, {hi}]");
        assert_eq!([lo, hi], bootstrap_ci95(v.len(), 1000, 1, mean));
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
    }
}
