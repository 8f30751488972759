//! `probe demo`: makes a small fixture model and a labelled prompt set on first use (in Rust,
//! no download), then runs a full sweep on candle with a local cache and says where
//! everything went. A second run reads everything from the cache.

mod fixture;

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use probe_core::sweep::LayerSelection;
use probe_core::{Error, Result};

use probe_backends::registry::Backend;
use probe_backends::session::Settings;
use probe_core::sweep::PromptSet;

pub(crate) use fixture::{SHAPE, write_model, write_prompts};

/// Arguments of `probe demo`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Folder for the model, prompts, cache and report.
    #[arg(long, default_value = "probe-demo")]
    pub(crate) dir: PathBuf,
    /// Number of labelled prompts made on first use.
    #[arg(long, default_value_t = 400)]
    pub(crate) prompts: usize,
    /// Layers to probe.
    #[arg(long, default_value = "all")]
    pub(crate) layers: LayerSelection,
    /// New tokens per completion.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_tokens: u32,
    /// Probe the prompts themselves: no completions.
    #[arg(long)]
    pub(crate) no_generate: bool,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub(crate) batch_size: usize,
    /// Backend (candle; mock for a run without a model).
    #[arg(long, default_value = "candle")]
    pub(crate) backend: Backend,
}

/// `probe demo`.
pub(crate) async fn run(args: DemoArgs, quiet: bool) -> Result<()> {
    let t0 = Instant::now();
    if args.prompts < 10 {
        return Err(Error::invalid("prompts", format!("{} (the demo needs at least 10)", args.prompts)));
    }
    args.backend.check_available()?;
    std::fs::create_dir_all(&args.dir).map_err(|e| Error::io(args.dir.display(), e))?;
    let model_dir = args.dir.join("model");
    if !model_dir.join("config.json").is_file() {
        let t = Instant::now();
        let tmp = args.dir.join("model.partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(tmp.display(), e))?;
        }
        write_model(&tmp, SHAPE, 42)?;
        if model_dir.exists() {
            std::fs::remove_dir_all(&model_dir).map_err(|e| Error::io(model_dir.display(), e))?;
        }
        std::fs::rename(&tmp, &model_dir).map_err(|e| Error::io(model_dir.display(), e))?;
        println!(
            "made a random-weight Llama ({} layers, hidden {}, head_dim 64) in {} ({:.1} s)",
            SHAPE.layers,
            SHAPE.hidden,
            model_dir.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let prompts = args.dir.join("prompts.jsonl");
    if !prompts.is_file() {
        write_prompts(&prompts, args.prompts, 1)?;
        println!("made {} labelled prompts (animal vs tool subjects) in {}", args.prompts, prompts.display());
    }
    let model = if args.backend == Backend::Mock { "demo-mock".into() } else { model_dir.display().to_string() };
    let settings = Settings::default()
        .backend(args.backend)
        .cache(args.dir.join("cache").display().to_string())
        .layers(args.layers.clone())
        .positions(probe_core::Readout::Last)
        .batch_size(args.batch_size)
        .max_tokens(args.max_tokens)
        .temperature(0.0)
        .seed(0)
        .no_generate(args.no_generate)
        .vllm_log_dir(args.dir.join("out").join("vllm-logs"));
    let session = crate::flags::open(&model, settings, quiet).await?;
    let prompt_set = PromptSet::from_jsonl(&prompts)?;
    let report = session.sweep(&prompt_set).await?;
    let written = probe_backends::session::write_report(&report, &args.dir.join("out"))?;
    crate::sweep_cmd::print_report(&report, &written, &session.cache_location()?);
    println!("model: {} · prompts: {}", model_dir.display(), prompts.display());
    let s = &report.summary;
    let all_cached = s.generations_generated == 0 && s.layers_computed == 0;
    println!(
        "demo finished in {:.1} s{}",
        t0.elapsed().as_secs_f64(),
        if all_cached {
            ": everything came from the cache"
        } else {
            "; run it again to see everything come from the cache"
        }
    );
    Ok(())
}
