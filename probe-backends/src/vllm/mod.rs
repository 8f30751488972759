//! The vLLM backend: a [`probe_core::Generator`] over many OpenAI-compatible servers
//! ([`VllmGenerator`]), an [`probe_core::ActivationExtractor`] on the hidden states vLLM
//! writes itself ([`VllmExtractor`], servers started with [`hidden::extraction_args`]) and a
//! launcher that starts and stops vLLM server processes ([`VllmLauncher`]).
//!
//! ```no_run
//! # async fn demo() -> probe_core::Result<()> {
//! use probe_backends::vllm::VllmGenerator;
//! use probe_core::{GenerationRequest, Generator, SamplingParams};
//!
//! let g = VllmGenerator::builder()
//!     .urls(["http://127.0.0.1:8000", "http://127.0.0.1:8001"])
//!     .model("my-model")
//!     .api_key_from_env("VLLM_API_KEY")
//!     .build()?;
//! let req = GenerationRequest::new("my-model", vec!["Paris is".into()]).with_sampling(SamplingParams::greedy(16));
//! for g in g.generate(req).await? {
//!     println!("{} -> {}", g.prompt, g.completion);
//! }
//! # Ok(()) }
//! ```

mod capture;
mod client;
mod config;
mod extract;
mod final_norm;
mod group;
pub mod hidden;
mod launcher;
mod on_demand;
mod pool;
mod process;
mod spec;
mod wire;

pub use capture::DEFAULT_CAPTURE_BYTES;
pub use client::{ClientStats, VllmGenerator};
pub use config::{ApiKey, RetryPolicy, VllmGeneratorBuilder};
pub use extract::VllmExtractor;
pub use group::{LaunchedServer, ServerGroup};
pub use launcher::{LaunchCommand, VllmLauncher, VllmLauncherBuilder};
pub use on_demand::{LazyServers, OnDemand, after_sweep, generation_first};
pub use spec::{ServerDevice, ServerSpec};

/// The backend name used in errors.
pub(crate) const BACKEND: &str = "vllm";
