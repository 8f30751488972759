//! Times greedy generation with candle on a model folder and prints one JSON line
//! `{"new_tokens": …, "generate_s": …, "tokens_per_s": …}`: the probe side of the generation
//! row of `benches/peer/run` (which also times the whole process).
//!
//! `probe-generate-bench --model DIR --prompts FILE (one prompt a line) --max-tokens 32 --batch 16 --threads 2`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::{Error, GenerationRequest, Generator, Result, SamplingParams};

/// As `probe-extract-bench`: large buffers reused rather than mapped per op.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags (`--model DIR --prompts FILE --max-tokens 32 --batch 16 --threads 2`).
#[derive(Parser)]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Prompts, one a line.
    #[arg(long)]
    prompts: PathBuf,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    probe_benches::keep_freed_memory();
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<()> {
    let a = Args::parse();
    // SAFETY: set before any thread of the engine starts.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string()) };
    let text = std::fs::read_to_string(&a.prompts).map_err(|e| Error::io(a.prompts.display(), e))?;
    let prompts: Vec<String> = text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
    let model = CandleBackend::load(&a.model, CandleOptions::default().with_default_batch_size(a.batch))?;
    let req =
        GenerationRequest::new(a.model.to_string_lossy(), prompts).with_sampling(SamplingParams::greedy(a.max_tokens));
    let t = Instant::now();
    let out = model.generate(req).await?;
    let secs = t.elapsed().as_secs_f64();
    let new: usize = out.iter().map(|g| g.token_ids.as_ref().map_or(0, Vec::len)).sum();
    println!("{{\"new_tokens\":{new},\"generate_s\":{secs:.3},\"tokens_per_s\":{:.1}}}", new as f64 / secs);
    Ok(())
}
