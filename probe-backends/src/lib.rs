//! # probe-backends
//!
//! Implementations of probe-core's traits, one module per backend, each behind a cargo
//! feature of the same name: `candle` (in-process, the default), `vllm` (OpenAI-compatible
//! HTTP servers), `tch` (libtorch) and `ort` (ONNX Runtime). A backend whose feature is off
//! is reported at run time as [`probe_core::Error::FeatureDisabled`] by [`require_feature`].
//!
//! ## A tour
//!
//! - **[`session`]**: the front door. [`session::Settings`] holds every setting (it is what
//!   `probe.toml` deserializes into); [`session::Session::open`] reads a model folder once and
//!   finds the devices; its calls — `sweep`, `generate`, `extract`, `apply`, `shard`, `merge` —
//!   plan the run, launch and stop vLLM servers where needed, and share one cache. The `probe`
//!   command is a thin shell over it.
//! - **[`registry`]**: a [`registry::Backend`] and a model to an opened extractor and generator,
//!   placed where the plan says.
//! - **[`device`]**: the device inventory (declared, or NVML under `cuda`) and the memory
//!   sampler behind `report.json`'s `memory`.
//! - **[`chat`]**: chat templates, rendered as transformers renders them.
//! - The backends: `candle`, `vllm`, `tch`, `ort` (one module each, behind their features), and
//!   [`mock`], the test doubles of `testing` builds.
//!
//! Settings from a file, a flag laid over them, and the plan of a sweep before anything runs:
//!
//! ```no_run
//! use probe_backends::registry::Backend;
//! use probe_backends::session::{Session, Settings, Task};
//! use probe_core::sweep::PromptSet;
//!
//! # async fn demo() -> probe_core::Result<()> {
//! let settings = Settings::from_toml("[extraction]\nlayers = \"0..4\"\n[generation]\nmax_tokens = 8\n", "inline")?
//!     .backend(Backend::Candle)
//!     .gpus("2x80GiB")       // plan for GPUs this machine lacks
//!     .dry_run(true);
//! let session = Session::open("fixtures/models/llama", settings).await?;
//! let prompts = PromptSet::from_jsonl("prompts.jsonl")?;
//! for line in session.prepare(Task::Sweep, &prompts)?.dry_run_lines(true) {
//!     println!("{line}");
//! }
//! # Ok(()) }
//! ```

// The README's library example is compiled as a doctest of this crate.
#![cfg_attr(all(doctest, feature = "candle"), doc = include_str!("../../README.md"))]

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(any(feature = "tch", feature = "ort", feature = "vllm"))]
mod exported;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tch")]
pub mod tch;
#[cfg(feature = "vllm")]
pub mod vllm;

pub mod chat;
pub mod device;
pub mod mock;
pub mod registry;
pub mod roles;
pub mod session;

/// The backend features compiled into this build.
pub const COMPILED_FEATURES: &[&str] = &[
    #[cfg(feature = "candle")]
    "candle",
    #[cfg(feature = "vllm")]
    "vllm",
    #[cfg(feature = "tch")]
    "tch",
    #[cfg(feature = "ort")]
    "ort",
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "testing")]
    "testing",
];

/// Fails with [`probe_core::Error::FeatureDisabled`] when `feature` was not compiled in.
///
/// # Errors
/// [`probe_core::Error::FeatureDisabled`] naming the feature.
pub fn require_feature(feature: &str) -> probe_core::Result<()> {
    let on = COMPILED_FEATURES.contains(&feature);
    if on { Ok(()) } else { Err(probe_core::Error::FeatureDisabled { feature: feature.to_owned() }) }
}

/// An error and its causes, `": "`-joined (the first line of a template or HTTP error rarely
/// says enough).
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// `s` as one POSIX shell word: unchanged when it holds only safe characters, else in single
/// quotes (for the commands the launchers print and the job scripts they write).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
