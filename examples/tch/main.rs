//! Extracts chosen layers with the tch backend (libtorch) from a TorchScript export made by
//! `scripts/python/export_torchscript.py`, and prints each layer's shape and first values.
//!
//! ```text
//! python scripts/python/export_torchscript.py fixtures/models/llama /tmp/llama-ts
//! cargo run -p probe-examples --features tch --example tch -- /tmp/llama-ts 0,2,4 "Hello" "Paris is"
//! ```
//! `LAYERS` is a comma-separated list in Hugging Face `output_hidden_states` numbering
//! (0 = embeddings, L = after the final norm); by default every layer.

#[path = "../common/show.rs"]
mod show;

use probe_backends::tch::{TchExtractor, TchOptions};
use probe_core::ActivationExtractor;

#[tokio::main]
async fn main() -> probe_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = show::dir_arg(&mut args, "tch EXPORT_DIR [LAYERS e.g. 0,2,4] [TEXT ...]")?;
    let model = TchExtractor::load(&dir, TchOptions::default())?;
    let info = model.model_info();
    println!(
        "{}, {} on {} (CUDA available: {}, revision {}…)",
        show::describe(&info),
        info.dtype,
        model.device(),
        model.cuda_available(),
        &info.id.revision[..12]
    );
    let layers = show::layers_arg(args.next(), info.num_layers)?;
    let texts = show::texts_arg(args);
    show::print_layers(&model, &texts, &layers).await?;
    Ok(())
}
