//! A layer sweep from a Rust program, through the library's one entry point
//! ([`probe_backends::session::Session`]): the same run as `probe sweep`, with the same cache.
//!
//! ```text
//! cargo run --example sweep -- <model folder> <prompts.jsonl> [cache URL] [probe.toml]
//! ```
//!
//! Prints the plan, then one JSON line per layer (`{"layer":…,"accuracy":…}`).

use probe_backends::session::{Session, Settings};
use probe_core::sweep::PromptSet;

/// Sweeps every layer of `model` on `prompts` (5 greedy new tokens, seed 5); returns each
/// layer's accuracy.
async fn sweep(model: &str, prompts: &str, cache: &str, file: Settings) -> probe_core::Result<Vec<(usize, f64)>> {
    let settings = file.cache(cache).layers("all".parse()?).max_tokens(5).temperature(0.0).seed(5);
    let session = Session::open(model, settings).await?;
    let prompts = PromptSet::from_jsonl(prompts)?;
    for line in session.plan(&prompts)?.iter().flat_map(|p| p.lines()) {
        eprintln!("plan: {line}");
    }
    let report = session.sweep(&prompts).await?;
    eprintln!("{}", report.summary);
    session.close().await?;
    Ok(report.layers.iter().map(|l| (l.layer, l.accuracy)).collect())
}

#[tokio::main]
async fn main() -> probe_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, prompts, rest @ ..] = args.as_slice() else {
        eprintln!("usage: sweep <model folder> <prompts.jsonl> [cache URL] [probe.toml]");
        std::process::exit(2);
    };
    let file = match rest.get(1) {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    let cache = rest.first().map_or("./probe-cache", String::as_str);
    for (layer, accuracy) in sweep(model, prompts, cache, file).await? {
        println!("{}", serde_json::json!({ "layer": layer, "accuracy": accuracy }));
    }
    Ok(())
}
