//! Generalisation across prompt sets: the probes a sweep trained on every prompt of its set,
//! scored on another set's activations (`probe sweep --test-on`).

use serde::{Deserialize, Serialize};

use super::{Applied, PromptSet, SweepReport};
use crate::{Error, Result};

/// The probes' accuracy on another prompt set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransferScore {
    /// The other set's name.
    pub prompt_set: String,
    /// Its number of prompts.
    pub n_prompts: usize,
    /// Per layer: the accuracy of the probe trained on the sweep's set (`None` when the set
    /// has no labels).
    pub layers: Vec<(usize, Option<f64>)>,
    /// A sweep of several sites: the site of each of `layers` (absent for one site).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<crate::Site>,
}

/// Per layer, every prompt's result.
pub type LayerResults = Vec<(usize, Vec<Applied>)>;

/// Scores every saved probe of `report` on `features` (by site and layer) of `set`; returns the
/// score and, per layer, every prompt's result.
///
/// # Errors
/// [`Error::InvalidInput`] naming a label of `set` the probes were not trained on, or a layer
/// without features.
pub fn transfer(
    report: &SweepReport,
    set: &PromptSet,
    features: &super::Features,
) -> Result<(TransferScore, LayerResults)> {
    let labelled = set.prompts.iter().all(|p| p.label.is_some());
    let truth: Option<Vec<usize>> = labelled
        .then(|| {
            set.prompts
                .iter()
                .map(|p| {
                    let l = p.label.as_deref().unwrap_or_default();
                    report.classes.iter().position(|c| c == l).ok_or_else(|| {
                        Error::invalid(
                            "label",
                            format!(
                                "{l:?} of {:?} in {} is not a class the probes know ({:?})",
                                p.id, set.name, report.classes
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()
        })
        .transpose()?;
    let mut layers = Vec::new();
    let mut applied = Vec::new();
    for probe in &report.probes {
        let (site, layer) = (probe.meta.site, probe.meta.layer);
        let t = features
            .get(&(site, layer))
            .ok_or_else(|| Error::invalid("layer", format!("{layer} (site {site}) has no features")))?;
        let results = probe.apply(t)?;
        let accuracy = truth
            .as_ref()
            .map(|y| results.iter().zip(y).filter(|(a, y)| a.class == **y).count() as f64 / y.len().max(1) as f64);
        layers.push((layer, accuracy));
        applied.push((layer, results));
    }
    let sites = if report.sites.is_empty() { Vec::new() } else { report.probes.iter().map(|p| p.meta.site).collect() };
    Ok((TransferScore { prompt_set: set.name.clone(), n_prompts: set.len(), layers, sites }, applied))
}
