//! Helpers shared by probe-cache's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use probe_cache::{ObjectCache, ObjectCacheBuilder};
use probe_core::testing::require_service;

/// A name unique to this test run (process id and time), for namespaces on a shared server.
pub fn unique(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// A builder for a fresh prefix on the S3 server of `PROBE_TEST_S3_ENDPOINT` /
/// `PROBE_TEST_S3_BUCKET`, or `None` (test skipped) when they are unset outside CI.
pub fn s3_builder(tag: &str) -> Option<ObjectCacheBuilder> {
    let endpoint = require_service("PROBE_TEST_S3_ENDPOINT")?;
    let bucket = require_service("PROBE_TEST_S3_BUCKET")?;
    let url = format!("s3://{bucket}/probe-cache-tests/{}", unique(tag));
    Some(ObjectCacheBuilder::new(url).with_endpoint(endpoint).with_retry(3, std::time::Duration::from_secs(30)))
}

/// An S3 cache as [`s3_builder`], built.
pub fn s3_cache(tag: &str) -> Option<Arc<ObjectCache>> {
    Some(Arc::new(s3_builder(tag)?.build().expect("S3 cache builds")))
}

/// `len` bytes that differ for every `seed` and every position.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
