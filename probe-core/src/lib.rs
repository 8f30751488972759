//! # probe-core
//!
//! The contracts of probe — [`Generator`], [`ActivationExtractor`], [`CacheStore`] and
//! [`DevicePolicy`] — with their request and response types, the one [`Error`], cache
//! keys ([`key`]), payload formats ([`codec`]), the memory planner ([`plan`]) and the
//! test doubles and conformance suites ([`testing`]).
//!
//! probe-core builds with no native library, no GPU and no network.
//!
//! ## A tour
//!
//! - **The pipeline** ([`sweep`]): [`sweep::run`] takes [`sweep::SweepParts`] (an extractor, a
//!   cache, optionally a generator and an observer), a [`sweep::PromptSet`] and a
//!   [`sweep::SweepConfig`], and returns a [`sweep::SweepReport`]: completions generated once
//!   and cached, activations of every layer computed once and cached in blocks of
//!   [`sweep::CACHE_BLOCK_ROWS`] prompts (whatever the batch size), one probe per layer.
//! - **The plan** ([`plan`]): a [`plan::ModelSpec`] from `config.json` and a
//!   [`plan::DeviceInventory`] give a [`plan::RunPlan`] — which GPUs generate and which
//!   extract, the vLLM servers' arguments, the largest batch that fits — before anything starts;
//!   [`plan::Backoff`] halves a batch that ran out of memory anyway.
//! - **Backends** implement the traits in `probe-backends`, whose `session::Session` runs all of
//!   this from settings and a model folder.
//!
//! The whole pipeline on the test doubles:
//!
//! ```
//! use probe_core::sweep::{self, Prompt, PromptSet, SweepConfig, SweepParts};
//! use probe_core::testing::{MemoryCache, MockExtractor, MockGenerator};
//!
//! # tokio_test_block_on(async {
//! let prompts = PromptSet::new(
//!     "colours",
//!     (0..12).map(|i| Prompt::new(format!("p{i}"), format!("colour {i}"), Some((i % 2).to_string()))).collect(),
//! );
//! let (extractor, generator, cache) = (MockExtractor::new("m", 4, 8), MockGenerator::new("m"), MemoryCache::new());
//! let parts = SweepParts::new(&extractor, &cache).with_generator(&generator);
//! let report = sweep::run(parts, &prompts, &SweepConfig::new(vec![1, 2])).await?;
//! assert_eq!(report.layers.len(), 2);
//! // A second run computes nothing: everything is in the cache.
//! let again = sweep::run(parts, &prompts, &SweepConfig::new(vec![1, 2]).with_batch_size(4)).await?;
//! assert_eq!((again.summary.generations_generated, again.summary.layers_computed), (0, 0));
//! # Ok::<(), probe_core::Error>(()) }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod activation;
pub mod cache;
mod capabilities;
pub mod codec;

mod error;
mod generation;
pub mod hf_config;
pub mod key;
pub mod plan;
mod readout;
mod site;
mod steer;
pub mod sweep;
pub mod testing;

pub use activation::{
    ActivationExtractor, ActivationRequest, Activations, Inputs, LayerActivations, ModelInfo, PassReuse, Positions,
    Span, SpecialTokens, Tensor,
};
pub use cache::{
    CacheEntry, CacheKey, CacheStore, CacheStoreExt, EntryKind, EntryMeta, GetRequest, ListRequest, PutRequest,
};
pub use capabilities::Capabilities;
pub use plan::DevicePolicy;

/// Inputs per forward pass (and sequences decoded together) when neither the settings nor the
/// plan give a batch size: the one default, used by every backend and the sweep.
pub const DEFAULT_BATCH_SIZE: usize = 16;
pub use error::{BoxError, Error, Result};
pub use generation::{FinishReason, Generation, GenerationRequest, Generator, ModelId, SamplingParams, StateCapture};
pub use readout::Readout;
pub use site::{Site, Sites};
pub use steer::{DIRECTION_TENSOR, Intervention};
