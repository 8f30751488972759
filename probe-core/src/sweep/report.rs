//! The result of a sweep: per-layer probe scores, run counts, and their text forms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ProbeConfig;

use crate::plan::{MemoryReport, RunPlan};

/// The cross-validated scores of one layer's probes. Classification fills `accuracy`,
/// `accuracy_std`, `auc`, `control_accuracy` and `dom_accuracy`; numeric labels fill `r2`,
/// `r2_std` and `control_r2` (`accuracy` and `auc` are then NaN and left out of the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LayerScore {
    /// Layer (Hugging Face `output_hidden_states` numbering; a block for a site inside blocks).
    pub layer: usize,
    /// The attention head of block `layer` the probe read (`heads[]` of a `heads` sweep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    /// The site of `layer`, in a sweep of several sites ([`SweepReport::sites`]); absent in a
    /// sweep of one (the report's [`SweepReport::site`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<crate::Site>,
    /// Mean held-out accuracy over the folds.
    #[serde(default = "nan", skip_serializing_if = "is_nan")]
    pub accuracy: f64,
    /// Standard deviation of the fold accuracies (population, numpy's `std`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_std: Option<f64>,
    /// Bootstrap 95 % interval `[lo, hi]` of the held-out accuracy (of R² for numeric
    /// labels), over every prompt's out-of-fold prediction.
    #[serde(default = "nan2")]
    pub ci95: [f64; 2],
    /// Mean held-out ROC AUC over the folds (macro one-vs-rest for more than two classes).
    #[serde(default = "nan", skip_serializing_if = "is_nan")]
    pub auc: f64,
    /// The `C` used: the one inner cross-validation chose most often over the folds (the
    /// smallest on ties), or the single `C` given.
    #[serde(default = "nan")]
    pub c: f64,
    /// Mean held-out accuracy of the same probe on the control task (labels permuted, seeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_accuracy: Option<f64>,
    /// `accuracy − control_accuracy` (`r2 − control_r2` for numeric labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selectivity: Option<f64>,
    /// Mean held-out accuracy of the difference-of-means probe (nearest class mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dom_accuracy: Option<f64>,
    /// Mean held-out R² of ridge regression (numeric labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
    /// Standard deviation of the fold R² values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r2_std: Option<f64>,
    /// Mean held-out R² on the control task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_r2: Option<f64>,
    /// Training rows per fold (mean, rounded).
    pub n_train: usize,
    /// Test rows per fold (`n − n_train`).
    pub n_test: usize,
}

fn nan() -> f64 {
    f64::NAN
}
fn nan2() -> [f64; 2] {
    [f64::NAN; 2]
}
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_nan(v: &f64) -> bool {
    v.is_nan()
}
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl LayerScore {
    /// An empty score of `layer` (every score NaN or absent).
    pub fn new(layer: usize, n_train: usize, n_test: usize) -> Self {
        Self {
            layer,
            head: None,
            site: None,
            accuracy: f64::NAN,
            accuracy_std: None,
            ci95: [f64::NAN; 2],
            auc: f64::NAN,
            c: f64::NAN,
            control_accuracy: None,
            selectivity: None,
            dom_accuracy: None,
            r2: None,
            r2_std: None,
            control_r2: None,
            n_train,
            n_test,
        }
    }

    /// The layer as reports name it: `3`, or `attn_out.3` in a sweep of several sites.
    pub fn name(&self) -> String {
        match self.site {
            Some(site) => format!("{site}.{}", self.layer),
            None => self.layer.to_string(),
        }
    }

    /// The headline score: accuracy, or R² for numeric labels.
    pub fn score(&self) -> f64 {
        self.r2.unwrap_or(self.accuracy)
    }

    /// The headline score's standard deviation over the folds.
    pub fn score_std(&self) -> f64 {
        self.r2_std.or(self.accuracy_std).unwrap_or(f64::NAN)
    }

    /// The control task's score.
    pub fn control(&self) -> f64 {
        self.control_r2.or(self.control_accuracy).unwrap_or(f64::NAN)
    }
}

/// What a run computed and what it found in the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SweepSummary {
    /// Whether completions were part of the run (`--no-generate` turns them off).
    pub generation: bool,
    /// Completions generated now.
    pub generations_generated: usize,
    /// Completions read from the cache.
    pub generations_cached: usize,
    /// Layers with at least one block computed now.
    pub layers_computed: usize,
    /// Layers read whole from the cache.
    pub layers_cached: usize,
    /// Blocks of the cache grid ([`super::CACHE_BLOCK_ROWS`] prompts each) that needed a
    /// forward pass ("batches computed" in the summary line).
    pub batches_computed: usize,
    /// Blocks of the cache grid whose every needed layer was in the cache.
    pub batches_cached: usize,
    /// Calls to the extractor: one per forward pass of up to `batch_size` rows (a pass may
    /// span several blocks, a block may take several passes), plus out-of-memory retries.
    pub extract_calls: usize,
    /// (layer, block) entries written.
    pub entries_written: usize,
    /// Out-of-memory retries of the extractor (counted in `extract_calls`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub oom_retries: usize,
    /// Corrupt or truncated cache entries met (failed checksum: treated as misses and
    /// recomputed), as counted by [`crate::CacheStore::corrupt_entries`] over the run.
    #[serde(default)]
    pub corrupt_entries: u64,
    /// The extraction batch size the out-of-memory back-off settled on and kept for the rest
    /// of the run; absent when no batch ran out of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_batch_size: Option<usize>,
    /// Inputs read from the generation pass and extra forward passes: of an extractor that
    /// generated too (vLLM's, [`crate::ActivationExtractor::pass_reuse`]), and of a generator
    /// that read the states while generating (candle's, [`crate::Generator::generate_capturing`]:
    /// every input of the blocks it generated, no extra pass); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_reuse: Option<crate::PassReuse>,
}

impl std::fmt::Display for SweepSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.generation {
            write!(f, "generations: {} generated, {} cached", self.generations_generated, self.generations_cached)?;
        } else {
            f.write_str("generations: off")?;
        }
        write!(
            f,
            " · activations: {} layers computed, {} cached ({} batches computed, {} cached)",
            self.layers_computed, self.layers_cached, self.batches_computed, self.batches_cached
        )?;
        let oom_retries = self.oom_retries;
        if oom_retries > 0 {
            write!(f, " · {oom_retries} out-of-memory retr{}", if oom_retries == 1 { "y" } else { "ies" })?;
        }
        if self.corrupt_entries > 0 {
            let s = if self.corrupt_entries == 1 { "y" } else { "ies" };
            write!(f, " · {} corrupt cache entr{s} recomputed", self.corrupt_entries)?;
        }
        if let Some(r) = self.pass_reuse.filter(|r| r.reused + r.extra_passes > 0) {
            write!(f, " · {} inputs read from the generation pass, {} extra passes", r.reused, r.extra_passes)?;
            if r.extra_pass_tokens > 0 {
                write!(
                    f,
                    " ({} of their {} prompt tokens from the servers' prefix cache)",
                    r.extra_pass_cached_tokens, r.extra_pass_tokens
                )?;
            }
        }
        Ok(())
    }
}

/// The report of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// Model id of the extractor.
    pub model: String,
    /// Model revision of the extractor.
    pub revision: String,
    /// Prompt set name.
    pub prompt_set: String,
    /// Position reduction.
    pub positions: String,
    /// Where activations were read (absent: the residual stream); `layers[].layer` are blocks
    /// for a site inside blocks.
    #[serde(default, skip_serializing_if = "crate::Site::is_resid")]
    pub site: crate::Site,
    /// A sweep of several sites (read in the same forward passes): every site, `site` first;
    /// each entry of `layers` then names its site. Absent for one site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<crate::Site>,
    /// The steering the completions were generated with (none: absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steering: Vec<crate::Intervention>,
    /// A `heads` sweep: one probe per (block, head), each on that head's `head_dim` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<LayerScore>,
    /// Class labels; class `i` is `classes[i]` (empty for numeric labels).
    pub classes: Vec<String>,
    /// Number of prompts.
    pub n_prompts: usize,
    /// Seed of the folds, the control permutation and the bootstrap.
    pub seed: u64,
    /// `classification` (logistic probes) or `regression` (numeric labels: ridge, R²).
    #[serde(default = "classification")]
    pub task: String,
    /// The probe settings (folds, `C` grid, inner folds, solver, bootstrap, label kind).
    #[serde(default)]
    pub probe: ProbeConfig,
    /// The outer fold (`0..folds`) of every prompt id.
    #[serde(default)]
    pub folds: BTreeMap<String, usize>,
    /// One entry per layer, sorted by layer; a sweep of several sites has one per (site, layer),
    /// by site as in `sites`, then by layer.
    pub layers: Vec<LayerScore>,
    /// Counts of the run.
    pub summary: SweepSummary,
    /// The plan the run used (extraction batch size, dtype and placement, launched servers),
    /// when it was resolved ([`crate::sweep::SweepConfig::with_plan`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RunPlan>,
    /// Memory measured during the run, beside the plan's prediction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    /// Per layer, the logistic probe trained on every prompt (classification only), to save
    /// ([`crate::sweep::SavedProbe::save`]) and apply to new text; not part of `report.json`.
    #[serde(skip)]
    pub probes: Vec<super::SavedProbe>,
    /// The probes scored on other prompt sets (`--test-on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfer: Vec<super::TransferScore>,
}

fn classification() -> String {
    "classification".into()
}

impl SweepReport {
    /// The layer with the highest score (accuracy, or R² for numeric labels; the first on ties).
    pub fn best(&self) -> Option<&LayerScore> {
        self.layers.iter().fold(None, |best: Option<&LayerScore>, l| match best {
            Some(b) if b.score() >= l.score() => Some(b),
            _ => Some(l),
        })
    }

    fn regression(&self) -> bool {
        self.task == "regression"
    }

    /// The part of a sweep of several sites that read `site`: its layers, probes and heads, as
    /// the report of a sweep of that site alone would hold them.
    pub fn for_site(&self, site: crate::Site) -> SweepReport {
        let mine = |l: &LayerScore| l.site.is_none_or(|s| s == site);
        let mut layers: Vec<LayerScore> = self.layers.iter().filter(|l| mine(l)).copied().collect();
        layers.iter_mut().for_each(|l| l.site = None);
        SweepReport {
            site,
            sites: Vec::new(),
            layers,
            heads: if site == crate::Site::Heads { self.heads.clone() } else { Vec::new() },
            probes: self.probes.iter().filter(|p| p.meta.site == site).cloned().collect(),
            ..self.clone()
        }
    }

    /// The per-layer table as plain text (what the CLI prints); a sweep of several sites names
    /// each layer's site (`attn_out.3`).
    pub fn table(&self) -> String {
        let name = if self.regression() { "r2" } else { "accuracy" };
        let mut s = format!(
            "{:>5}  {name:>8}  {:>6}  {:>15}  {:>6}  {:>7}  {:>8}  {:>7}  {:>6}  {:>7}  {:>6}\n",
            "layer", "±std", "ci95", "auc", "control", "select.", "diffmean", "C", "n_train", "n_test"
        );
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        for l in &self.layers {
            s.push_str(&format!(
                "{:>5}  {:>8.3}  {:>6.3}  {:>15}  {:>6}  {:>7.3}  {:>8}  {:>7}  {:>6}  {:>7}  {:>6}\n",
                l.name(),
                l.score(),
                l.score_std(),
                format!("[{:.3}, {:.3}]", l.ci95[0], l.ci95[1]),
                if l.auc.is_nan() { "-".to_owned() } else { format!("{:.3}", l.auc) },
                l.control(),
                opt(l.selectivity),
                opt(l.dom_accuracy),
                format!("{}", l.c),
                l.n_train,
                l.n_test
            ));
        }
        s
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let name = if self.regression() { "r2" } else { "accuracy" };
        let control = if self.regression() { "control r2" } else { "control accuracy" };
        let c = if self.probe.c.len() > 1 {
            format!("C chosen from {:?} by {}-fold inner cross-validation", self.probe.c, self.probe.inner_folds)
        } else {
            format!("C = {}", self.probe.c.first().copied().unwrap_or(f64::NAN))
        };
        let mut s = format!(
            "# Probe sweep: {}\n\n- model: `{}` (revision `{}`)\n- prompt set: `{}` ({} prompts, {})\n\
             - positions: `{}`{}; {}-fold stratified cross-validation, seed {}; {c}\n- {}\n\n\
             | layer | {name} | ± std | ci95 | auc | {control} | selectivity | diff-of-means | C | n_train | n_test |\n\
             | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            self.prompt_set,
            self.model,
            self.revision,
            self.prompt_set,
            self.n_prompts,
            if self.regression() {
                "numeric labels: ridge regression".to_owned()
            } else {
                format!("classes {}", self.classes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "))
            },
            self.positions,
            match (self.sites.is_empty(), self.site.is_resid()) {
                (false, _) => format!(
                    ", sites {} (read in one pass; `site.layer`, layers of sites but resid are blocks)",
                    self.sites.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                ),
                (true, true) => String::new(),
                (true, false) => format!(", site `{}` (layers are blocks)", self.site),
            },
            self.probe.folds,
            self.seed,
            self.summary
        );
        let num = |v: f64| if v.is_nan() { "-".to_owned() } else { format!("{v:.3}") };
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), num);
        for l in &self.layers {
            s.push_str(&format!(
                "| {} | {} | {} | [{}, {}] | {} | {} | {} | {} | {} | {} | {} |\n",
                l.name(),
                num(l.score()),
                num(l.score_std()),
                num(l.ci95[0]),
                num(l.ci95[1]),
                num(l.auc),
                num(l.control()),
                opt(l.selectivity),
                opt(l.dom_accuracy),
                l.c,
                l.n_train,
                l.n_test
            ));
        }
        if let Some(b) = self.best() {
            s.push_str(&format!(
                "\nBest layer: {} ({name} {:.3}, 95 % interval [{:.3}, {:.3}], selectivity {}).\n",
                b.name(),
                b.score(),
                b.ci95[0],
                b.ci95[1],
                opt(b.selectivity)
            ));
        }
        if !self.heads.is_empty() {
            let mut top: Vec<&LayerScore> = self.heads.iter().collect();
            top.sort_by(|a, b| b.score().total_cmp(&a.score()));
            s.push_str(&format!(
                "
## Top heads

One probe per (block, head) on its `head_dim` values ({} probes; `heads.svg`):

                 | block | head | {name} | ci95 | {control} | selectivity |
| ---: | ---: | ---: | :---: | ---: | ---: |
",
                self.heads.len()
            ));
            for h in top.into_iter().take(10) {
                s.push_str(&format!(
                    "| {} | {} | {} | [{}, {}] | {} | {} |
",
                    h.layer,
                    h.head.map_or("-".to_owned(), |h| h.to_string()),
                    num(h.score()),
                    num(h.ci95[0]),
                    num(h.ci95[1]),
                    num(h.control()),
                    opt(h.selectivity)
                ));
            }
        }
        for t in &self.transfer {
            s.push_str(&format!(
                "\nTrained on all of `{}`, tested on `{}` ({} prompts):\n\n| layer | accuracy |\n|---|---|\n",
                self.prompt_set, t.prompt_set, t.n_prompts
            ));
            for (i, (layer, acc)) in t.layers.iter().enumerate() {
                let site = t.sites.get(i).map_or(String::new(), |s| format!("{s}."));
                s.push_str(&format!("| {site}{layer} | {} |\n", opt(*acc)));
            }
        }
        let sections = [
            ("Plan", self.plan.as_ref().map(RunPlan::lines)),
            ("Memory", self.memory.as_ref().map(MemoryReport::lines)),
        ];
        for (title, lines) in sections {
            if let Some(lines) = lines.filter(|l| !l.is_empty()) {
                s.push_str(&format!("\n## {title}\n\n"));
                lines.iter().for_each(|l| s.push_str(&format!("- {}\n", l.trim_start())));
            }
        }
        s
    }
}
