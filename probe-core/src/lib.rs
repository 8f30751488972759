//! # probe-core
//!
//! The contracts of probe — [`Generator`], [`ActivationExtractor`], [`CacheStore`] and
//! [`DevicePolicy`] — with their request and response types, the one [`Error`], cache
//! keys ([`key`]), payload formats ([`codec`]), the memory planner ([`plan`]) and the
//! test doubles and conformance suites ([`testing`]).
//!
//! probe-core builds with no native library, no GPU and no network.

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
pub use generation::{FinishReason, Generation, GenerationRequest, Generator, ModelId, SamplingParams};
pub use readout::Readout;
