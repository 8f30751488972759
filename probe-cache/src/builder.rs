//! [`ObjectCacheBuilder`]: settings of an [`ObjectCache`] and the stores it opens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use probe_core::{Error, Result};

use crate::errors;
use crate::location::{self, Target};
use crate::store::{ObjectCache, StoreKind, WriteOptions};

/// Environment variable that overrides the S3 endpoint (after `AWS_ENDPOINT_URL`).
pub const ENDPOINT_ENV: &str = "PROBE_S3_ENDPOINT";
/// Default size from which a payload is uploaded in parts: 16 MiB.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 16 << 20;
/// Default part size of multipart uploads: 8 MiB (S3 needs at least 5 MiB).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Smallest allowed part size (S3's minimum for every part but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

enum Source {
    Url(String),
    Store { store: Arc<dyn ObjectStore>, location: String, persistent: bool },
}

/// Builds an [`ObjectCache`] from a URL (`file:///abs/path`, a plain path, `memory://`,
/// `s3://bucket/prefix`) or from any `object_store` store.
///
/// S3 settings come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, …);
/// the endpoint can be overridden by [`ENDPOINT_ENV`] or [`ObjectCacheBuilder::with_endpoint`].
/// With an endpoint set (an S3-compatible server), requests use path-style addressing, and
/// plain `http://` is allowed when the endpoint is `http://`.
///
/// ```
/// # tokio_test_block_on(async {
/// let cache = probe_cache::ObjectCacheBuilder::new("memory://")
///     .with_multipart_threshold(32 << 20)
///     .build()?;
/// assert_eq!(cache.location(), "memory://");
/// # Ok::<(), probe_core::Error>(()) });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub struct ObjectCacheBuilder {
    source: Source,
    endpoint: Option<String>,
    region: Option<String>,
    credentials: Option<(String, String)>,
    max_retries: usize,
    retry_timeout: Duration,
    options: WriteOptions,
}

impl fmt::Debug for ObjectCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Url(u) => location::redact(u),
            Source::Store { location, .. } => location.clone(),
        };
        f.debug_struct("ObjectCacheBuilder")
            .field("source", &source)
            .field("endpoint", &self.endpoint.as_deref().map(location::redact))
            .field("region", &self.region)
            .field("credentials", &self.credentials.as_ref().map(|_| "******"))
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .field("options", &self.options)
            .finish()
    }
}

impl ObjectCacheBuilder {
    /// A builder for the cache at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_source(Source::Url(url.into()))
    }

    /// A builder over an existing `object_store` store (GCS, Azure, a throttled or prefixed
    /// store …). `location` names it in messages and must hold no secret; `persistent` says
    /// whether entries outlive the process.
    pub fn from_store(store: Arc<dyn ObjectStore>, location: impl Into<String>, persistent: bool) -> Self {
        Self::with_source(Source::Store { store, location: location.into(), persistent })
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            endpoint: None,
            region: None,
            credentials: None,
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            options: WriteOptions::default(),
        }
    }

    /// S3 endpoint of an S3-compatible server (`http://127.0.0.1:9000`); overrides the
    /// environment.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// S3 region; overrides `AWS_REGION` (default `us-east-1`).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// S3 credentials; override the environment. Never printed.
    pub fn with_credentials(mut self, access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        self.credentials = Some((access_key_id.into(), secret_access_key.into()));
        self
    }

    /// Bounded retries of S3 requests (object_store's own retry with exponential back-off):
    /// at most `max_retries` retries, none started after `timeout`. Default 5 and 60 s.
    pub fn with_retry(mut self, max_retries: usize, timeout: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_timeout = timeout;
        self
    }

    /// Payloads of at least `bytes` are uploaded in parts (multipart upload), on every store.
    /// Default [`DEFAULT_MULTIPART_THRESHOLD`].
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.options.multipart_threshold = bytes;
        self
    }

    /// Size of each uploaded part; at least [`MIN_PART_SIZE`]. Default [`DEFAULT_PART_SIZE`].
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.options.part_size = bytes;
        self
    }

    /// Parts uploaded at once. Default 4.
    pub fn with_upload_concurrency(mut self, parts: usize) -> Self {
        self.options.upload_concurrency = parts;
        self
    }

    /// A payload file of an entry that its `meta.json` no longer names (left by an overwrite
    /// or by a writer that died before committing) is deleted by the next `put` of that key
    /// once it is older than `grace`. Default 15 minutes, long enough that no live writer
    /// between its payload and its commit is ever affected.
    pub fn with_garbage_grace(mut self, grace: Duration) -> Self {
        self.options.garbage_grace = grace;
        self
    }

    /// Opens the store.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad URL or setting (naming the URL, secrets redacted),
    /// [`Error::FeatureDisabled`] for `s3://` without the `s3` feature, [`Error::Io`] when
    /// a local folder cannot be created, store errors from building the S3 client.
    pub fn build(self) -> Result<ObjectCache> {
        let o = &self.options;
        if o.part_size < MIN_PART_SIZE {
            return Err(Error::invalid(
                "part size",
                format!("{} bytes is below the {MIN_PART_SIZE}-byte minimum", o.part_size),
            ));
        }
        if o.upload_concurrency == 0 {
            return Err(Error::invalid("upload concurrency", "0; use at least 1"));
        }
        let url = match &self.source {
            Source::Store { store, location, persistent } => {
                let kind = if *persistent { StoreKind::Persistent } else { StoreKind::Memory };
                return Ok(ObjectCache::new(
                    store.clone(),
                    Path::default(),
                    location.clone(),
                    kind,
                    None,
                    self.options,
                ));
            }
            Source::Url(url) => url.clone(),
        };
        match location::parse(&url)? {
            Target::Memory => Ok(ObjectCache::new(
                Arc::new(InMemory::new()),
                Path::default(),
                "memory://".into(),
                StoreKind::Memory,
                None,
                self.options,
            )),
            Target::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
                let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(dir.display(), e))?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(errors::convert)?.with_automatic_cleanup(true);
                let location = format!("file://{}", dir.display());
                Ok(ObjectCache::new(
                    Arc::new(fs),
                    Path::default(),
                    location,
                    StoreKind::Persistent,
                    Some(dir),
                    self.options,
                ))
            }
            Target::S3 { bucket, prefix } => self.build_s3(&bucket, &prefix),
        }
    }

    #[cfg(feature = "s3")]
    fn build_s3(self, bucket: &str, prefix: &str) -> Result<ObjectCache> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        use object_store::{BackoffConfig, RetryConfig};

        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty()))
            .or_else(|| b.get_config_value(&AmazonS3ConfigKey::S3Endpoint))
            .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
        if let Some(ep) = &endpoint {
            b = b
                .with_endpoint(ep)
                .with_config(AmazonS3ConfigKey::S3Endpoint, ep)
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let region = self.region.clone().or_else(|| b.get_config_value(&AmazonS3ConfigKey::Region));
        b = b.with_region(region.unwrap_or_else(|| "us-east-1".into()));
        if let Some((id, secret)) = &self.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        b = b.with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        });
        let s3 = b.build().map_err(|e| {
            Error::invalid("S3 settings", format!("s3://{bucket}/{prefix}: {}", location::redact(&e.to_string())))
        })?;
        let mut location = format!("s3://{bucket}/{prefix}");
        if let Some(ep) = &endpoint {
            location.push_str(&format!(" (endpoint {})", location::redact(ep)));
        }
        let root = if prefix.is_empty() { Path::default() } else { Path::from(prefix) };
        Ok(ObjectCache::new(Arc::new(s3), root, location, StoreKind::Persistent, None, self.options))
    }

    #[cfg(not(feature = "s3"))]
    fn build_s3(self, _bucket: &str, _prefix: &str) -> Result<ObjectCache> {
        Err(Error::FeatureDisabled { feature: "s3".into() })
    }
}
