//! Times extraction on a model folder with random token ids and prints one JSON line
//! `{"tokens_per_s": …}`: the probe side of `benches/peer/run`.
//!
//! `probe-extract-bench --backend candle --model DIR --layers all|a..=b|a..b|3,5,7 --batch 16 --seq 128 --iters 3 --threads 2`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use probe_core::{ActivationExtractor, ActivationRequest, Error, Result};

/// mimalloc keeps the forward's large intermediate buffers for reuse, where glibc's malloc
/// maps and unmaps them on every op (page faults and zeroing in the profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Args {
    backend: String,
    model: PathBuf,
    layers: String,
    batch: usize,
    seq: usize,
    iters: usize,
    threads: usize,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        backend: "candle".into(),
        model: PathBuf::new(),
        layers: "all".into(),
        batch: 16,
        seq: 128,
        iters: 3,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| Error::invalid("argument", format!("{flag} needs a value")))?;
        let num =
            |v: &str| v.parse::<usize>().map_err(|_| Error::invalid(flag.clone(), format!("{v:?} is not a number")));
        match flag.as_str() {
            "--backend" => a.backend = v,
            "--model" => a.model = v.into(),
            "--layers" => a.layers = v,
            "--batch" => a.batch = num(&v)?,
            "--seq" => a.seq = num(&v)?,
            "--iters" => a.iters = num(&v)?,
            "--threads" => a.threads = num(&v)?,
            other => return Err(Error::invalid("argument", format!("unknown flag {other}"))),
        }
    }
    Ok(a)
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
    let a = parse()?;
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
