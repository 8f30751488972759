//! Times extraction on a model folder with random token ids and prints one JSON line
//! `{"tokens_per_s": …}`: the probe side of `benches/peer/run`.
//!
//! `probe-extract-bench --backend candle --model DIR --layers all|a..=b|a..b|3,5,7 --batch 16 --seq 128 --iters 3 --threads 2`

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use probe_core::{ActivationExtractor, ActivationRequest, Error, Result};

/// mimalloc keeps the forward's large intermediate buffers for reuse, where glibc's malloc
/// maps and unmaps them on every op (page faults and zeroing in the profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags (`--backend candle --model DIR --layers all --batch 16 --seq 128 --iters 3 --threads 2`).
#[derive(Parser)]
struct Args {
    /// Backend: candle, tch or ort.
    #[arg(long, default_value = "candle")]
    backend: String,
    /// Model (or export) folder.
    #[arg(long)]
    model: PathBuf,
    /// Layers, as `probe --layers`.
    #[arg(long, default_value = "all")]
    layers: String,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per input.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Timed passes.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn load(a: &Args) -> Result<Arc<dyn ActivationExtractor>> {
    use probe_backends::registry::{self, OpenOptions};
    let model = a.model.to_str().ok_or_else(|| Error::invalid("model", format!("{:?} is not UTF-8", a.model)))?;
    Ok(registry::open(a.backend.parse()?, model, &OpenOptions::default())?.extractor)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<()> {
    let a = Args::parse();
    // SAFETY: set before any thread of the engines starts.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
        std::env::set_var("OMP_NUM_THREADS", a.threads.to_string());
    }
    let e = load(&a)?;
    let info = e.model_info();
    let layers = a.layers.parse::<probe_core::sweep::LayerSelection>()?.resolve(info.num_layers)?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let ids: Vec<Vec<u32>> = (0..a.batch)
        .map(|_| {
            (0..a.seq)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    3 + (state % (info.vocab_size as u64 - 3)) as u32
                })
                .collect()
        })
        .collect();
    let req = ActivationRequest::token_ids(ids, layers).with_batch_size(a.batch);
    e.extract(req.clone()).await?;
    let t = Instant::now();
    for _ in 0..a.iters {
        let acts = e.extract(req.clone()).await?;
        std::hint::black_box(&acts);
    }
    let tps = (a.batch * a.seq * a.iters) as f64 / t.elapsed().as_secs_f64();
    println!("{{\"backend\":\"{}\",\"layers\":\"{}\",\"tokens_per_s\":{tps:.1}}}", a.backend, a.layers);
    Ok(())
}
