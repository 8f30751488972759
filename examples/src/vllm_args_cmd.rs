//! `probe vllm-args`: the flags that make a vLLM server probe's extractor (`--extractor vllm
//! --url …`), for a server started by hand: the hidden states to keep, probe's connector (which
//! reduces in the server and writes only what each request asks), and the folder it writes to.
//! The connector's Python package is written to `--python-dir`, to put on the server's
//! `PYTHONPATH`.

use std::path::PathBuf;

use clap::Args;
use probe_core::sweep::LayerSelection;
use probe_core::{Error, Result};

/// Arguments of `probe vllm-args`.
#[derive(Debug, Clone, Args)]
pub(crate) struct VllmArgsArgs {
    /// The model folder (its config.json names the layers).
    #[arg(long)]
    pub(crate) model: String,
    /// Hidden states the server keeps: "all", "4,8,12", "0-31" (those the sweeps will ask for).
    #[arg(long, default_value = "all")]
    pub(crate) layers: LayerSelection,
    /// The folder the server writes its files to (this machine must read it by the same path).
    #[arg(long)]
    pub(crate) hidden_states_dir: PathBuf,
    /// Where to write probe's connector package (put it on the server's PYTHONPATH).
    #[arg(long)]
    pub(crate) python_dir: PathBuf,
}

#[cfg(feature = "vllm")]
pub(crate) fn run(a: VllmArgsArgs) -> Result<()> {
    use probe_backends::vllm::hidden::{extraction_args, write_connector};
    let layers = a.layers.resolve(probe_backends::registry::config_layers(&a.model)?)?;
    let python = std::path::absolute(&a.python_dir).map_err(|e| Error::io(a.python_dir.display(), e))?;
    let dir = std::path::absolute(&a.hidden_states_dir).map_err(|e| Error::io(a.hidden_states_dir.display(), e))?;
    write_connector(&python)?;
    let args: Vec<String> = extraction_args(&layers, &dir).iter().map(|s| probe_backends::shell_quote(s)).collect();
    println!("# probe's connector is in {}: put it on the server's PYTHONPATH", python.display());
    println!(
        "PYTHONPATH={} vllm serve {} {}",
        probe_backends::shell_quote(&python.display().to_string()),
        probe_backends::shell_quote(&a.model),
        args.join(" ")
    );
    Ok(())
}

#[cfg(not(feature = "vllm"))]
pub(crate) fn run(_a: VllmArgsArgs) -> Result<()> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}
