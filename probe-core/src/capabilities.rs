//! What an implementation can do, as a flat set of flags (as in OpenDAL's `Capability`).

use serde::{Deserialize, Serialize};

/// Flags an implementation reports through `capabilities()`. Callers and the
/// conformance suites use them to pick what to ask for; asking for something
/// unsupported is [`crate::Error::NotSupported`], never a panic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// Generator: temperature / top-p / top-k sampling (not only greedy).
    pub sampling: bool,
    /// Generator: a seed makes sampling reproducible.
    pub seeded_sampling: bool,
    /// Generator: stop strings are honoured.
    pub stop_strings: bool,
    /// Generator: completion token ids are returned.
    pub token_ids: bool,
    /// Generator: `n > 1` completions per prompt.
    pub multiple_samples: bool,
    /// Generator: reads hidden states while it generates
    /// ([`crate::Generator::generate_capturing`]), as an extraction pass over prompt +
    /// completion would.
    #[serde(default)]
    pub capture_states: bool,
    /// Extractor: accepts token ids as input (not only texts).
    pub token_id_input: bool,
    /// Extractor: `Positions::All` (every token, with a mask).
    pub all_positions: bool,
    /// Extractor: the forward pass stops after the deepest requested layer.
    pub early_stop: bool,
    /// Cache: `list` is supported.
    pub list: bool,
    /// Cache: `delete` is supported.
    pub delete: bool,
    /// Cache: entries persist across processes.
    pub persistent: bool,
}

impl Capabilities {
    /// No capability at all; start from here and set what you have.
    pub fn none() -> Self {
        Self::default()
    }
}
