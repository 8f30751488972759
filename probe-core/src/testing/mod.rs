//! Test doubles and conformance suites.
//!
//! Every implementation's tests call the suite of its trait: [`generator_conformance`],
//! [`extractor_conformance`], [`cache_conformance`]. The doubles ([`MockGenerator`],
//! [`MockExtractor`], [`MemoryCache`]) are always built, so other crates' unit tests can
//! use them without a model, a server or a disk.

mod conformance;
mod memory_cache;
mod mock_extractor;
mod mock_generator;

pub use conformance::{cache_conformance, extractor_conformance, generator_conformance};
pub use memory_cache::MemoryCache;
pub use mock_extractor::MockExtractor;
pub use mock_generator::MockGenerator;

/// A 64-bit FNV-1a hash: a stable, dependency-free source of deterministic values.
pub(crate) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
