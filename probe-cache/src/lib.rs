#![doc = include_str!("../README.md")]

mod builder;
mod errors;
mod location;
mod store;

use std::sync::Arc;

pub use builder::{DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, ENDPOINT_ENV, MIN_PART_SIZE, ObjectCacheBuilder};
/// The `object_store` crate this one is built on, for [`ObjectCacheBuilder::from_store`].
pub use object_store;
use probe_core::{CacheStore, Result};
pub use store::{META_FILE, ObjectCache, payload_file_name};

/// Opens the cache at `url`: `file:///abs/path` or a plain path (local disk), `memory://`,
/// or `s3://bucket/prefix` (feature `s3`), with default settings.
///
/// # Errors
/// [`probe_core::Error::InvalidInput`] naming the URL (credentials redacted) for an unknown
/// scheme or a malformed URL; [`probe_core::Error::FeatureDisabled`] for `s3://` without the
/// `s3` feature; [`probe_core::Error::Io`] when a local folder cannot be created.
pub fn from_url(url: &str) -> Result<Arc<dyn CacheStore>> {
    Ok(Arc::new(ObjectCache::open(url)?))
}

/// Checks a cache URL as [`from_url`] would, without opening, creating or contacting anything:
/// for refusing bad input before any work starts.
///
/// # Errors
/// As [`from_url`] for the URL itself (not for the store behind it).
pub fn check_url(url: &str) -> Result<()> {
    location::parse(url).map(|_| ())
}
