//! Extracts chosen layers with the tch backend (libtorch) from a TorchScript export made by
//! `scripts/python/export_torchscript.py`, and prints each layer's shape and first values.
//!
//! ```text
//! python scripts/python/export_torchscript.py fixtures/models/llama /tmp/llama-ts
//! cargo run -p probe-examples --features tch --example tch -- /tmp/llama-ts 0,2,4 "Hello" "Paris is"
//! ```
//! `LAYERS` is a comma-separated list in Hugging Face `output_hidden_states` numbering
//! (0 = embeddings, L = after the final norm); by default every layer.

use std::path::PathBuf;

use probe_backends::tch::{TchExtractor, TchOptions};
use probe_core::{ActivationExtractor, ActivationRequest, Error, Positions};

#[tokio::main]
async fn main() -> probe_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| Error::invalid("arguments", "usage: tch EXPORT_DIR [LAYERS e.g. 0,2,4] [TEXT ...]"))?,
    );
    let model = TchExtractor::load(&dir, TchOptions::default())?;
    let info = model.model_info();
    println!(
        "{}: {} with {} layers, hidden {}, {} on {} (CUDA available: {}, revision {}…)",
        info.id.id,
        info.architecture,
        info.num_layers,
        info.hidden_size,
        info.dtype,
        model.device(),
        model.cuda_available(),
        &info.id.revision[..12]
    );
    let layers: Vec<usize> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().parse().map_err(|_| Error::invalid("layer", format!("{s:?} is not a number"))))
            .collect::<probe_core::Result<_>>()?,
        None => (0..=info.num_layers).collect(),
    };
    let mut texts: Vec<String> = args.collect();
    if texts.is_empty() {
        texts = vec!["The cat sat on the mat.".into(), "Paris is the capital of".into()];
    }
    for positions in [Positions::Last, Positions::Mean, Positions::All] {
        let acts =
            model.extract(ActivationRequest::texts(texts.clone(), layers.clone()).with_positions(positions)).await?;
        println!("\npositions = {positions} (tokens per text: {:?})", acts.token_counts);
        for la in &acts.layers {
            let first: Vec<String> = la.tensor.data.iter().take(4).map(|v| format!("{v:+.4}")).collect();
            println!("  layer {:>3}: shape {:?}, first values [{}]", la.layer, la.tensor.shape, first.join(", "));
        }
    }
    Ok(())
}
