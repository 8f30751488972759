//! Times extraction on a model folder with random token ids and prints one JSON line
//! `{"tokens_per_s": …, "load_s": …}`: the probe side of `benches/peer/run`.
//!
//! `probe-extract-bench --backend candle --model DIR --layers all|a..=b|a..b|3,5,7 --batch 16 --seq 128 --iters 3 --threads 2`
//! `probe-extract-bench --backend vllm --url http://127.0.0.1:PORT --model DIR …`: the same inputs
//! through vLLM's own hidden states (a server started with probe's extraction flags, e.g.
//! `PROBE_VLLM_HIDDEN_STATES_DIR=DIR scripts/start-vllm MODEL PORT LOG`).
//! `probe-extract-bench --model DIR --ids FILE --batch 4`: one pass over the token ids in FILE (a
//! JSON list of lists; rows of different lengths are padded per batch), no warm-up, and
//! `"pass_s"` in the JSON line too (the probe side of `benches/peer/long.py`, whole processes).
//! `probe-extract-bench --vllm-server-command --model DIR --gpu 0 --port P --hidden-states-dir D`:
//! prints, without starting it, the command of a vLLM server on GPU 0 (or the CPU without
//! `--gpu`) that writes those hidden states (probe's launcher builds it).

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
    /// Backend: candle, tch, ort, or vllm (extraction on the vLLM server at `--url`).
    #[arg(long, default_value = "candle")]
    backend: String,
    /// Model (or export) folder.
    #[arg(long)]
    model: PathBuf,
    /// The vLLM server (`--backend vllm`), started with probe's hidden-states flags.
    #[arg(long)]
    url: Option<String>,
    /// Runs on this GPU (candle built with the `candle-cuda` feature, tch); default the CPU.
    #[arg(long)]
    gpu: Option<usize>,
    /// Compute dtype (candle: f32, bf16, f16); default f32.
    #[arg(long)]
    dtype: Option<String>,
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
    /// Token ids to extract once (a JSON list of lists) instead of random ones.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prints the command of a hidden-states vLLM server for `--model` (on `--gpu`, else the
    /// CPU) and exits.
    #[arg(long, requires_all = ["port", "hidden_states_dir"])]
    vllm_server_command: bool,
    /// `--vllm-server-command`: its port.
    #[arg(long)]
    port: Option<u16>,
    /// `--vllm-server-command`: where it writes the hidden states.
    #[arg(long)]
    hidden_states_dir: Option<PathBuf>,
    /// `--vllm-server-command`: its Python (runs `python -m vllm.entrypoints.openai.api_server`).
    #[arg(long, default_value = "python")]
    python: String,
}

fn model_str(a: &Args) -> Result<&str> {
    a.model.to_str().ok_or_else(|| Error::invalid("model", format!("{:?} is not UTF-8", a.model)))
}

fn load(a: &Args) -> Result<Arc<dyn ActivationExtractor>> {
    use probe_backends::registry::{self, Backend, OpenOptions};
    let backend: Backend = a.backend.parse()?;
    let mut options = OpenOptions::default();
    if let Some(d) = &a.dtype {
        options = options.with_dtype(d);
    }
    match (backend, &a.url) {
        (Backend::Vllm, Some(url)) => options = options.with_urls(vec![url.clone()]).with_vllm_extraction(true, None),
        (Backend::Vllm, None) => return Err(Error::invalid("url", "--backend vllm needs --url URL")),
        (_, Some(url)) => return Err(Error::invalid("url", format!("{url}: --url is for --backend vllm only"))),
        (_, None) if a.gpu.is_some() => options = options.on(a.gpu),
        (_, None) => {}
    }
    Ok(registry::open(backend, model_str(a)?, &options)?.extractor)
}

/// The server command of `--vllm-server-command`: probe's launcher in a dry run.
#[cfg(feature = "vllm")]
fn server_command(a: &Args) -> Result<String> {
    use probe_backends::vllm::{ServerSpec, VllmLauncher};
    let (Some(port), Some(dir)) = (a.port, &a.hidden_states_dir) else {
        return Err(Error::invalid("vllm-server-command", "needs --port and --hidden-states-dir"));
    };
    let layers = probe_backends::registry::config_layers(model_str(a)?)?;
    let (spec, dtype) = match a.gpu {
        // 30 % of the GPU: transformers and candle run on the same one.
        Some(g) => {
            (ServerSpec::gpu(g, port).with_gpu_memory_utilization(0.3), a.dtype.as_deref().unwrap_or("bfloat16"))
        }
        None => (ServerSpec::cpu(port), a.dtype.as_deref().unwrap_or("float32")),
    };
    let launcher = VllmLauncher::builder(model_str(a)?)
        .python_module(&a.python)
        .servers(vec![spec.with_max_model_len(512)])
        .args(["--dtype", dtype, "--seed", "0"])
        .hidden_states(dir, &(0..=layers).collect::<Vec<_>>())
        .log_dir(dir.parent().unwrap_or(dir))
        .build()?;
    // The command names probe's connector on PYTHONPATH=<log dir>/python: write it there (a
    // launch would; this prints the command for a shell to start).
    probe_backends::vllm::hidden::write_connector(&dir.parent().unwrap_or(dir).join("python"))?;
    Ok(launcher.dry_run().remove(0).to_string())
}

#[cfg(not(feature = "vllm"))]
fn server_command(_a: &Args) -> Result<String> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
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
    if a.vllm_server_command {
        println!("{}", server_command(&a)?);
        return Ok(());
    }
    // SAFETY: set before any thread of the engines starts.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
        std::env::set_var("OMP_NUM_THREADS", a.threads.to_string());
    }
    let t = Instant::now();
    let e = load(&a)?;
    let load_s = t.elapsed().as_secs_f64();
    let info = e.model_info();
    let layers = a.layers.parse::<probe_core::sweep::LayerSelection>()?.resolve(info.num_layers)?;
    if let Some(file) = &a.ids {
        let text = std::fs::read(file).map_err(|e| Error::invalid("ids", format!("{}: {e}", file.display())))?;
        let ids: Vec<Vec<u32>> =
            serde_json::from_slice(&text).map_err(|e| Error::invalid("ids", format!("{}: {e}", file.display())))?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let t = Instant::now();
        let acts = e.extract(ActivationRequest::token_ids(ids, layers).with_batch_size(a.batch)).await?;
        std::hint::black_box(&acts);
        let pass_s = t.elapsed().as_secs_f64();
        println!(
            "{{\"backend\":\"{}\",\"layers\":\"{}\",\"tokens\":{tokens},\"pass_s\":{pass_s:.2},\"tokens_per_s\":{:.1},\"load_s\":{load_s:.2}}}",
            a.backend,
            a.layers,
            tokens as f64 / pass_s
        );
        return Ok(());
    }
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
    println!(
        "{{\"backend\":\"{}\",\"layers\":\"{}\",\"tokens_per_s\":{tps:.1},\"load_s\":{load_s:.2}}}",
        a.backend, a.layers
    );
    Ok(())
}
