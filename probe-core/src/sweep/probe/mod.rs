//! Probes as papers report them: stratified, seeded K-fold cross-validation of an
//! L2-regularised logistic probe (scikit-learn's `LogisticRegression(C, penalty="l2")` on
//! features standardised on the training folds), `C` chosen from a grid by inner
//! cross-validation, a bootstrap 95 % interval, a control task with permuted labels
//! (Hewitt & Liang, 2019) and a difference-of-means probe beside it; numeric labels get ridge
//! regression scored by R².
//!
//! The solver is this crate's own (L-BFGS on the exact scikit-learn objective, f64
//! parameters over f32 standardised rows): no new dependency tree, deterministic, and
//! checked against scikit-learn by `probe-core/tests/probe_sklearn.rs`.

mod cv;
mod folds;
mod linalg;
mod logistic;
mod saved;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use cv::{evaluate_heads, evaluate_layer, roc_auc};
pub use folds::stratified_folds;
pub use linalg::Standardizer;
pub use logistic::LogisticProbe;
pub use saved::{Applied, ProbeMeta, SavedProbe};

use cv::choose_c_all;

/// How the labels are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LabelKind {
    /// Numeric when every label is a number and either one is not an integer or there are
    /// more than [`AUTO_NUMERIC_DISTINCT`] distinct values; classes otherwise.
    #[default]
    Auto,
    /// Each distinct label is a class.
    Classes,
    /// Each label is a number (ridge regression, R²).
    Numeric,
}

/// [`LabelKind::Auto`] reads integer labels with more distinct values than this as numbers.
pub const AUTO_NUMERIC_DISTINCT: usize = 20;

impl std::str::FromStr for LabelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "classes" => Ok(Self::Classes),
            "numeric" => Ok(Self::Numeric),
            other => Err(Error::invalid("labels", format!("{other:?} (expected auto, classes or numeric)"))),
        }
    }
}

/// What the probes predict, per row.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Targets {
    /// Class indices below `n_classes`.
    Classes {
        /// Class index per row.
        labels: Vec<usize>,
        /// Number of classes.
        n_classes: usize,
    },
    /// A number per row.
    Numeric(Vec<f64>),
}

impl Targets {
    /// Reads `labels` (the prompts' labels as text) as `kind` says; `classes` are the
    /// distinct labels, sorted (class `i` is `classes[i]`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming a label that is not a finite number when numeric labels
    /// were declared.
    pub fn from_labels(labels: &[&str], classes: &[String], kind: LabelKind) -> Result<Self> {
        let numbers: Vec<Option<f64>> =
            labels.iter().map(|l| l.trim().parse::<f64>().ok().filter(|v| v.is_finite())).collect();
        let numeric = match kind {
            LabelKind::Numeric => {
                if let Some(i) = numbers.iter().position(Option::is_none) {
                    return Err(Error::invalid("label", format!("{:?} is not a number (labels: numeric)", labels[i])));
                }
                true
            }
            LabelKind::Classes => false,
            LabelKind::Auto => {
                numbers.iter().all(Option::is_some)
                    && (numbers.iter().flatten().any(|v| v.fract() != 0.0) || classes.len() > AUTO_NUMERIC_DISTINCT)
            }
        };
        if numeric {
            return Ok(Self::Numeric(numbers.into_iter().flatten().collect()));
        }
        let labels = labels
            .iter()
            .map(|l| {
                classes.binary_search_by(|c| c.as_str().cmp(l)).map_err(|_| Error::invalid("label", format!("{l:?}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self::Classes { labels, n_classes: classes.len() })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Self::Classes { labels, .. } => labels.len(),
            Self::Numeric(v) => v.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strata of stratified folds: the class, or for numbers the quantile bin of `k` bins.
    pub fn strata(&self, k: usize) -> Vec<usize> {
        match self {
            Self::Classes { labels, .. } => labels.clone(),
            Self::Numeric(v) => {
                let mut order: Vec<usize> = (0..v.len()).collect();
                order.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
                let mut bins = vec![0; v.len()];
                order.iter().enumerate().for_each(|(rank, &i)| bins[i] = rank * k.max(1) / v.len());
                bins
            }
        }
    }

    /// `"classification"` or `"regression"`.
    pub fn task(&self) -> &'static str {
        match self {
            Self::Classes { .. } => "classification",
            Self::Numeric(_) => "regression",
        }
    }
}

/// How probes are trained and scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// Outer cross-validation folds (≥ 2).
    pub folds: usize,
    /// Seed of the folds, the inner folds, the control permutation and the bootstrap.
    pub seed: u64,
    /// Inverse regularisation strengths, as scikit-learn's `C` (objective: mean log-loss +
    /// `‖w‖² / (2 C n_train)`; ridge uses `alpha = 1 / C`). One value is used as is; several
    /// are chosen between by inner cross-validation on each outer training set.
    pub c: Vec<f64>,
    /// Inner cross-validation folds when `c` has several values (≥ 2).
    pub inner_folds: usize,
    /// Solver iterations at most.
    pub max_iter: usize,
    /// The solver stops when the largest gradient component is below this.
    pub tol: f64,
    /// Bootstrap resamples of the 95 % interval.
    pub bootstrap: usize,
    /// How labels are read.
    pub labels: LabelKind,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            folds: 5,
            seed: 0,
            c: vec![1.0],
            inner_folds: 3,
            max_iter: 100,
            tol: 1e-4,
            bootstrap: 1000,
            labels: LabelKind::Auto,
        }
    }
}

impl ProbeConfig {
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets the number of folds.
    pub fn with_folds(mut self, k: usize) -> Self {
        self.folds = k;
        self
    }
    /// Sets one `C`.
    pub fn with_c(mut self, c: f64) -> Self {
        self.c = vec![c];
        self
    }
    /// Sets the grid of `C` (chosen by inner cross-validation).
    pub fn with_c_grid(mut self, grid: Vec<f64>) -> Self {
        self.c = grid;
        self
    }
    /// Sets how labels are read.
    pub fn with_labels(mut self, kind: LabelKind) -> Self {
        self.labels = kind;
        self
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.folds < 2 {
            return Err(Error::invalid("folds", format!("{} (must be ≥ 2)", self.folds)));
        }
        if self.c.is_empty() {
            return Err(Error::invalid("C", "no value given"));
        }
        if let Some(bad) = self.c.iter().find(|c| !(c.is_finite() && **c > 0.0)) {
            return Err(Error::invalid("C", format!("{bad} (must be a finite number > 0)")));
        }
        if self.c.len() > 1 && self.inner_folds < 2 {
            return Err(Error::invalid("inner_folds", format!("{} (must be ≥ 2)", self.inner_folds)));
        }
        if self.max_iter == 0 {
            return Err(Error::invalid("max_iter", "0 (must be ≥ 1)"));
        }
        if !(self.tol.is_finite() && self.tol > 0.0) {
            return Err(Error::invalid("tol", format!("{} (must be a finite number > 0)", self.tol)));
        }
        Ok(())
    }

    /// The `C` grid sorted ascending, duplicates removed.
    pub(crate) fn grid(&self) -> Vec<f64> {
        let mut g = self.c.clone();
        g.sort_by(f64::total_cmp);
        g.dedup();
        g
    }
}

/// Parses `--probe-c`: one number or a comma-separated grid (`0.01,0.1,1,10`).
///
/// # Errors
/// [`Error::InvalidInput`] naming the value that is not a number > 0.
pub fn parse_c_grid(s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|v| match v.trim().parse::<f64>() {
            Ok(c) if c.is_finite() && c > 0.0 => Ok(c),
            _ => Err(Error::invalid("probe-c", format!("{v:?} in {s:?} (expected numbers > 0, comma-separated)"))),
        })
        .collect()
}
