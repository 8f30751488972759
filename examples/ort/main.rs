//! Extracts chosen layers with the ort backend (ONNX Runtime) from an ONNX export made by
//! `scripts/python/export_onnx.py`, and prints each layer's shape and first values.
//!
//! ```text
//! python scripts/python/export_onnx.py fixtures/models/llama /tmp/llama-onnx
//! ORT_DYLIB_PATH=$(scripts/venv)/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 \
//!   cargo run -p probe-examples --features ort --example ort -- /tmp/llama-onnx 0,2,4 "Hello" "Paris is"
//! ```
//! `LAYERS` is a comma-separated list in Hugging Face `output_hidden_states` numbering
//! (0 = embeddings, L = after the final norm); by default every layer.

#[path = "../common/show.rs"]
mod show;

use probe_backends::ort::{OrtExtractor, OrtOptions};
use probe_core::ActivationExtractor;

#[tokio::main]
async fn main() -> probe_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = show::dir_arg(&mut args, "ort EXPORT_DIR [LAYERS e.g. 0,2,4] [TEXT ...]")?;
    let model = OrtExtractor::load(&dir, OrtOptions::default())?;
    let info = model.model_info();
    println!(
        "{}, {} with {} (revision {}…)",
        show::describe(&info),
        info.dtype,
        model.provider(),
        &info.id.revision[..12]
    );
    let layers = show::layers_arg(args.next(), info.num_layers)?;
    let texts = show::texts_arg(args);
    show::print_layers(&model, &texts, &layers).await?;
    Ok(())
}
