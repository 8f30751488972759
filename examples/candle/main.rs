//! Extracts chosen layers of a Hugging Face model folder with the candle backend and prints
//! each layer's shape and first values.
//!
//! ```text
//! cargo run -p probe-examples --example candle -- MODEL_DIR [LAYERS] [TEXT ...]
//! cargo run -p probe-examples --example candle -- fixtures/models/llama 0,2,4 "Hello" "Paris is"
//! ```
//! `LAYERS` is a comma-separated list in Hugging Face `output_hidden_states` numbering
//! (0 = embeddings, L = after the final norm); by default every layer.

#[path = "../common/show.rs"]
mod show;

use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::{ActivationExtractor, GenerationRequest, Generator, SamplingParams};

#[tokio::main]
async fn main() -> probe_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = show::dir_arg(&mut args, "candle MODEL_DIR [LAYERS e.g. 0,2,4] [TEXT ...]")?;
    let model = CandleBackend::load(&dir, CandleOptions::default())?;
    let info = model.model_info();
    println!(
        "{}, vocab {}, {} (revision {}…)",
        show::describe(&info),
        info.vocab_size,
        info.dtype,
        &info.id.revision[..12]
    );
    let layers = show::layers_arg(args.next(), info.num_layers)?;
    let texts = show::texts_arg(args);
    show::print_layers(&model, &texts, &layers).await?;

    let gens = model
        .generate(GenerationRequest::new(info.id.id.clone(), texts).with_sampling(SamplingParams::greedy(8)))
        .await?;
    println!();
    for g in gens {
        println!("greedy: {:?} → {:?} ({:?})", g.prompt, g.completion, g.finish_reason);
    }
    Ok(())
}
