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
mod oom_injector;

pub use conformance::{cache_conformance, extractor_conformance, generator_conformance};
pub use memory_cache::MemoryCache;
pub use mock_extractor::MockExtractor;
pub use mock_generator::MockGenerator;
pub use oom_injector::OomInjector;

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

/// Reads the address of an outside service a test needs (an S3 server, a vLLM server, a
/// fixture folder) from the environment variable `var`, which the test command sets after
/// starting the service.
///
/// Returns `None` (and says so on stderr) when it is unset in a plain `cargo test`; panics
/// when it is unset under `CI=true` or `PROBE_REQUIRE_SERVICES=1` (set by `scripts/test`),
/// so a missing service is a failure there, never a silent skip.
pub fn require_service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let strict = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
                || std::env::var("PROBE_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(
                !strict,
                "{var} is not set: scripts/test starts the service and sets it; a missing service fails the run"
            );
            eprintln!("SKIPPED: {var} is not set (run scripts/test to start the services this test needs)");
            None
        }
    }
}
