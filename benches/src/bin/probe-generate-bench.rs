//! Times greedy generation with candle on a model folder and prints one JSON line
//! `{"new_tokens": …, "generate_s": …, "tokens_per_s": …}`: the probe side of the generation
//! row of `benches/peer/run` (which also times the whole process).
//!
//! `probe-generate-bench --model DIR --prompts FILE (one prompt a line) --max-tokens 32 --batch 16 --threads 2`

use std::path::PathBuf;
use std::time::Instant;

use probe_backends::candle::{CandleBackend, CandleOptions};
use probe_core::{Error, GenerationRequest, Generator, Result, SamplingParams};

/// As `probe-extract-bench`: large buffers reused rather than mapped per op.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    model: PathBuf,
    prompts: PathBuf,
    max_tokens: u32,
    batch: usize,
    threads: usize,
}

fn parse() -> Result<Args> {
    let mut a = Args { model: PathBuf::new(), prompts: PathBuf::new(), max_tokens: 32, batch: 16, threads: 2 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| Error::invalid("argument", format!("{flag} needs a value")))?;
        let num =
            |v: &str| v.parse::<usize>().map_err(|_| Error::invalid(flag.clone(), format!("{v:?} is not a number")));
        match flag.as_str() {
            "--model" => a.model = v.into(),
            "--prompts" => a.prompts = v.into(),
            "--max-tokens" => a.max_tokens = num(&v)? as u32,
            "--batch" => a.batch = num(&v)?,
            "--threads" => a.threads = num(&v)?,
            other => return Err(Error::invalid("argument", format!("unknown flag {other}"))),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<()> {
    let a = parse()?;
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
