//! The result of a sweep: per-layer probe scores, run counts, and their text forms.

use serde::{Deserialize, Serialize};

use crate::plan::{MemoryReport, RunPlan};

/// The held-out score of one layer's probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LayerScore {
    /// Layer (Hugging Face `output_hidden_states` numbering).
    pub layer: usize,
    /// Test accuracy.
    pub accuracy: f64,
    /// Test ROC AUC.
    pub auc: f64,
    /// Training rows.
    pub n_train: usize,
    /// Test rows.
    pub n_test: usize,
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
    /// Layers with at least one batch computed now.
    pub layers_computed: usize,
    /// Layers read whole from the cache.
    pub layers_cached: usize,
    /// Batches that needed a forward pass.
    pub batches_computed: usize,
    /// Batches whose every needed layer was in the cache.
    pub batches_cached: usize,
    /// Calls to the extractor (one per computed batch, plus out-of-memory retries).
    pub extract_calls: usize,
    /// (layer, batch) entries written.
    pub entries_written: usize,
    /// Corrupt or truncated cache entries met (failed checksum: treated as misses and
    /// recomputed), as counted by [`crate::CacheStore::corrupt_entries`] over the run.
    #[serde(default)]
    pub corrupt_entries: u64,
    /// The extraction batch size the out-of-memory back-off settled on and kept for the rest
    /// of the run; absent when no batch ran out of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_batch_size: Option<usize>,
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
        let oom_retries = self.extract_calls.saturating_sub(self.batches_computed);
        if oom_retries > 0 {
            write!(f, " · {oom_retries} out-of-memory retr{}", if oom_retries == 1 { "y" } else { "ies" })?;
        }
        if self.corrupt_entries > 0 {
            let s = if self.corrupt_entries == 1 { "y" } else { "ies" };
            write!(f, " · {} corrupt cache entr{s} recomputed", self.corrupt_entries)?;
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
    /// Class labels; class `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Number of prompts.
    pub n_prompts: usize,
    /// Seed of the split.
    pub seed: u64,
    /// One entry per layer, sorted by layer.
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
}

impl SweepReport {
    /// The layer with the highest accuracy (the first on ties).
    pub fn best(&self) -> Option<&LayerScore> {
        self.layers.iter().fold(None, |best: Option<&LayerScore>, l| match best {
            Some(b) if b.accuracy >= l.accuracy => Some(b),
            _ => Some(l),
        })
    }

    /// The per-layer table as plain text (what the CLI prints).
    pub fn table(&self) -> String {
        let mut s = format!("{:>5}  {:>8}  {:>6}  {:>7}  {:>6}\n", "layer", "accuracy", "auc", "n_train", "n_test");
        for l in &self.layers {
            s.push_str(&format!(
                "{:>5}  {:>8.3}  {:>6.3}  {:>7}  {:>6}\n",
                l.layer, l.accuracy, l.auc, l.n_train, l.n_test
            ));
        }
        s
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# Probe sweep: {}\n\n- model: `{}` (revision `{}`)\n- prompt set: `{}` ({} prompts, classes {})\n\
             - positions: `{}`, split seed {}\n- {}\n\n| layer | accuracy | auc | n_train | n_test |\n| ---: | ---: | ---: | ---: | ---: |\n",
            self.prompt_set,
            self.model,
            self.revision,
            self.prompt_set,
            self.n_prompts,
            self.classes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
            self.positions,
            self.seed,
            self.summary
        );
        for l in &self.layers {
            s.push_str(&format!("| {} | {:.3} | {:.3} | {} | {} |\n", l.layer, l.accuracy, l.auc, l.n_train, l.n_test));
        }
        if let Some(b) = self.best() {
            s.push_str(&format!("\nBest layer: {} (accuracy {:.3}, AUC {:.3}).\n", b.layer, b.accuracy, b.auc));
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
