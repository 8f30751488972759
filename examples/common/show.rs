//! What the per-backend examples share: their `DIR`, `LAYERS` and `TEXT` arguments, the
//! model's description, and printing each layer's shape and first values at every position
//! reduction.

use std::path::PathBuf;

use probe_core::{ActivationExtractor, ActivationRequest, Error, ModelInfo, Positions, Result};

/// The first argument, a model or export folder; `usage` is the error when it is missing.
pub(crate) fn dir_arg(args: &mut impl Iterator<Item = String>, usage: &str) -> Result<PathBuf> {
    args.next().map(PathBuf::from).ok_or_else(|| Error::invalid("arguments", format!("usage: {usage}")))
}

/// `"<id>: <architecture> with <n> layers, hidden <h>"`, which each example completes with
/// its backend's details.
pub(crate) fn describe(info: &ModelInfo) -> String {
    format!("{}: {} with {} layers, hidden {}", info.id.id, info.architecture, info.num_layers, info.hidden_size)
}

/// Parses a comma-separated `LAYERS` argument; every layer `0..=num_layers` when absent.
pub(crate) fn layers_arg(arg: Option<String>, num_layers: usize) -> Result<Vec<usize>> {
    match arg {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse().map_err(|_| Error::invalid("layer", format!("{s:?} is not a number"))))
            .collect(),
        None => Ok((0..=num_layers).collect()),
    }
}

/// The remaining arguments as texts, or two default texts.
pub(crate) fn texts_arg(args: impl Iterator<Item = String>) -> Vec<String> {
    let texts: Vec<String> = args.collect();
    if texts.is_empty() { vec!["The cat sat on the mat.".into(), "Paris is the capital of".into()] } else { texts }
}

/// Extracts `layers` of `texts` at `last`, `mean` and `all`, and prints shapes and first values.
pub(crate) async fn print_layers(model: &dyn ActivationExtractor, texts: &[String], layers: &[usize]) -> Result<()> {
    for positions in [Positions::Last, Positions::Mean, Positions::All] {
        let req = ActivationRequest::texts(texts.to_vec(), layers.to_vec()).with_positions(positions);
        let acts = model.extract(req).await?;
        println!("\npositions = {positions} (tokens per text: {:?})", acts.token_counts);
        for la in &acts.layers {
            let first: Vec<String> = la.tensor.data.iter().take(4).map(|v| format!("{v:+.4}")).collect();
            println!("  layer {:>3}: shape {:?}, first values [{}]", la.layer, la.tensor.shape, first.join(", "));
        }
    }
    Ok(())
}
