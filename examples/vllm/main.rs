//! Generates completions with vLLM servers (any OpenAI-compatible `/v1/completions` server),
//! spreading the prompts over every URL given, or prints the commands that would start
//! servers on GPUs.
//!
//! ```text
//! cargo run -p probe-examples --features vllm --example vllm -- \
//!     --model MODEL --url http://127.0.0.1:8000 --url http://127.0.0.1:8001 "Paris is" "The cat"
//! cargo run -p probe-examples --features vllm --example vllm -- \
//!     --model meta-llama/Llama-3.1-8B --launch-dry-run --gpus 0,1 --servers 3
//! ```
//! The API key, if the servers need one, comes from `VLLM_API_KEY` or `OPENAI_API_KEY`.

use std::time::{Duration, Instant};

use clap::Parser;
use probe_backends::vllm::{ServerSpec, VllmGenerator, VllmLauncher};
use probe_core::{GenerationRequest, Generator, SamplingParams};

/// Generate with vLLM servers, or print the commands that would start them.
#[derive(Debug, Parser)]
struct Args {
    /// The served model name (for a folder served as-is: the folder path as given to vLLM).
    #[arg(long)]
    model: String,
    /// A server's base URL (repeatable).
    #[arg(long = "url")]
    urls: Vec<String>,
    /// New tokens per completion.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompts per request.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print the server commands for --gpus and --servers instead of generating.
    #[arg(long)]
    launch_dry_run: bool,
    /// GPUs for the servers (comma-separated indices).
    #[arg(long, default_value = "0")]
    gpus: String,
    /// Number of servers, cycled over the GPUs.
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// First port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Prompts (a few defaults when none are given).
    prompts: Vec<String>,
}

#[tokio::main]
async fn main() -> probe_core::Result<()> {
    let args = Args::parse();
    if args.launch_dry_run {
        let gpus = args
            .gpus
            .split(',')
            .map(|s| s.trim().parse().map_err(|_| probe_core::Error::invalid("gpus", format!("{s:?}"))))
            .collect::<probe_core::Result<Vec<usize>>>()?;
        let launcher = VllmLauncher::builder(&args.model)
            .servers(ServerSpec::cycle(&gpus, args.servers, args.port, 0.9)?)
            .build()?;
        for cmd in launcher.dry_run() {
            println!("{cmd}");
        }
        return Ok(());
    }
    if args.urls.is_empty() {
        return Err(probe_core::Error::invalid("url", "give at least one --url (or --launch-dry-run)"));
    }
    let env_key = if std::env::var_os("VLLM_API_KEY").is_some() { "VLLM_API_KEY" } else { "OPENAI_API_KEY" };
    let generator = VllmGenerator::builder()
        .urls(args.urls.clone())
        .model(&args.model)
        .api_key_from_env(env_key)
        .batch_size(args.batch_size)
        .request_timeout(Duration::from_secs(600))
        .build()?;
    let up = generator.check_servers().await?;
    println!("{up} of {} servers answer and serve {}", args.urls.len(), args.model);

    let prompts = if args.prompts.is_empty() {
        vec!["The cat sat on the mat.".into(), "Paris is the capital of".into(), "One, two, three,".into()]
    } else {
        args.prompts
    };
    let sampling = SamplingParams::greedy(args.max_tokens).with_temperature(args.temperature).with_seed(args.seed);
    let t0 = Instant::now();
    let gens = generator.generate(GenerationRequest::new(&args.model, prompts).with_sampling(sampling)).await?;
    let secs = t0.elapsed().as_secs_f64();
    for g in &gens {
        let n = g.token_ids.as_ref().map_or(0, Vec::len);
        println!("[{}] {:?} -> {:?} ({n} tokens, {:?})", g.prompt_index, g.prompt, g.completion, g.finish_reason);
    }
    let s = generator.stats();
    println!(
        "{} completions in {secs:.2} s: {} requests, {} retries, {} servers taken out",
        gens.len(),
        s.requests,
        s.retries,
        s.servers_taken_out
    );
    Ok(())
}
