//! [`ObjectCache`]: the [`CacheStore`] over any `object_store` store.
//!
//! Layout, under the cache root:
//!
//! ```text
//! <model>/<kind>/<prompt-set>/[layer-NNN/]<digest>/
//!     data-<sha256[..16]>.<safetensors|jsonl>   the payload, named by its content
//!     meta.json                                  EntryMeta, written last: the commit record
//! ```
//!
//! A `put` uploads the payload under its content name (in parts above the multipart
//! threshold), then writes `meta.json`. Each object write is atomic on every store (a local
//! file is written to a temporary name and renamed; an S3 PUT or a completed multipart upload
//! appears whole), so an entry becomes visible exactly when its `meta.json` lands, and a
//! reader that finds a `meta.json` reads the immutable payload it names and checks its size
//! and SHA-256. Writers of the same key race only on `meta.json`; whichever lands last wins,
//! and a reader sees one writer's entry or the other's, never a mix. A writer killed before
//! its commit leaves at most an unnamed payload (or a local staging file `…#N`), which no
//! reader looks at; the next `put` of that key deletes such garbage once it is older than
//! the garbage grace period.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use probe_core::{
    CacheEntry, CacheKey, CacheStore, Capabilities, EntryMeta, Error, GetRequest, ListRequest, PutRequest, Result,
};

use crate::builder::{DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE};
use crate::errors::convert;

/// Name of the commit record of an entry.
pub const META_FILE: &str = "meta.json";

/// Payloads at least this large are hashed off the async runtime's threads.
const BLOCKING_HASH_BYTES: usize = 1 << 20;

/// How writes are done.
#[derive(Debug, Clone)]
pub(crate) struct WriteOptions {
    pub(crate) multipart_threshold: usize,
    pub(crate) part_size: usize,
    pub(crate) upload_concurrency: usize,
    pub(crate) garbage_grace: Duration,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: 4,
            garbage_grace: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Memory,
    Persistent,
}

/// The file name of the payload an entry's metadata names: `data-<sha256[..16]>.<format>`.
///
/// Returns `None` when the metadata's checksum or format is not well formed.
pub fn payload_file_name(meta: &EntryMeta) -> Option<String> {
    let sha_ok = meta.sha256.len() == 64 && meta.sha256.bytes().all(|b| b.is_ascii_hexdigit());
    let format_ok = matches!(meta.format.as_str(), "safetensors" | "jsonl");
    (sha_ok && format_ok).then(|| format!("data-{}.{}", &meta.sha256[..16], meta.format))
}

/// A [`CacheStore`] on local disk, in memory or on S3 (any `object_store` store), with
/// atomic commits, checksums verified on every read, and multipart uploads of large entries.
/// Open one with [`crate::from_url`], [`ObjectCache::open`] or [`crate::ObjectCacheBuilder`].
pub struct ObjectCache {
    store: Arc<dyn ObjectStore>,
    root: Path,
    location: String,
    kind: StoreKind,
    local_root: Option<PathBuf>,
    options: WriteOptions,
    corrupt: AtomicU64,
}

impl fmt::Debug for ObjectCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectCache")
            .field("location", &self.location)
            .field("multipart_threshold", &self.options.multipart_threshold)
            .field("part_size", &self.options.part_size)
            .field("corrupt_entries", &self.corrupt_entries())
            .finish_non_exhaustive()
    }
}

enum Read {
    Hit(Box<CacheEntry>),
    Miss,
    Corrupt(String),
    /// The payload the metadata names is gone; the metadata may have been replaced since.
    PayloadGone(String),
}

impl ObjectCache {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        root: Path,
        location: String,
        kind: StoreKind,
        local_root: Option<PathBuf>,
        options: WriteOptions,
    ) -> Self {
        Self { store, root, location, kind, local_root, options, corrupt: AtomicU64::new(0) }
    }

    /// Opens the cache at `url` with default settings (see [`crate::ObjectCacheBuilder`]).
    ///
    /// # Errors
    /// As [`crate::ObjectCacheBuilder::build`].
    pub fn open(url: &str) -> Result<Self> {
        crate::ObjectCacheBuilder::new(url).build()
    }

    /// Where this cache is (`file:///…`, `memory://`, `s3://bucket/prefix`); no secrets.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The local folder of a `file://` cache.
    pub fn local_root(&self) -> Option<&std::path::Path> {
        self.local_root.as_deref()
    }

    /// Corrupt or truncated entries that `get` has met (and treated as misses) since this
    /// store was opened, for a run's summary.
    pub fn corrupt_entries(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    fn dir(&self, key: &CacheKey) -> Result<Path> {
        let rel = key.path();
        // A key built by hand (its fields are public) must still be a slugged key path.
        match CacheKey::from_path(&rel) {
            Ok(k) if k == *key => {}
            _ => return Err(Error::invalid("cache key", format!("{rel:?} is not a slugged key path"))),
        }
        let mut dir = self.root.clone();
        for part in rel.split('/') {
            dir = dir.join(part);
        }
        Ok(dir)
    }

    async fn read_bytes(&self, path: &Path) -> Result<Option<Bytes>> {
        let got = match self.store.get(path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match got {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.convert(e)),
        }
    }

    async fn read_meta(&self, key: &CacheKey, dir: &Path) -> Result<std::result::Result<Option<EntryMeta>, String>> {
        let Some(raw) = self.read_bytes(&dir.clone().join(META_FILE)).await? else {
            return Ok(Ok(None));
        };
        let meta: EntryMeta = match serde_json::from_slice(&raw) {
            Ok(m) => m,
            Err(e) => return Ok(Err(format!("{META_FILE} does not parse: {e}"))),
        };
        if meta.key != key.path() || meta.format != key.kind.extension() {
            return Ok(Err(format!("{META_FILE} is for {:?} ({}), not this key", meta.key, meta.format)));
        }
        if payload_file_name(&meta).is_none() {
            return Ok(Err(format!("{META_FILE} holds a malformed checksum {:?}", meta.sha256)));
        }
        Ok(Ok(Some(meta)))
    }

    async fn read_once(&self, key: &CacheKey, dir: &Path) -> Result<(Read, Option<String>)> {
        let meta = match self.read_meta(key, dir).await? {
            Ok(Some(m)) => m,
            Ok(None) => return Ok((Read::Miss, None)),
            Err(why) => return Ok((Read::Corrupt(why), None)),
        };
        let name = payload_file_name(&meta).expect("checked in read_meta");
        let sha = Some(meta.sha256.clone());
        let Some(payload) = self.read_bytes(&dir.clone().join(name.as_str())).await? else {
            return Ok((Read::PayloadGone(format!("payload {name} is missing")), sha));
        };
        let checked = if payload.len() >= BLOCKING_HASH_BYTES {
            let (m, p) = (meta.clone(), payload.clone());
            tokio::task::spawn_blocking(move || m.verify(&p)).await.map_err(|e| Error::backend("probe-cache", e))?
        } else {
            meta.verify(&payload)
        };
        Ok(match checked {
            Ok(()) => (Read::Hit(Box::new(CacheEntry::new(key.clone(), meta, payload))), sha),
            Err(e) => (Read::Corrupt(e.to_string()), sha),
        })
    }

    /// Converts a store error, naming this cache's location (no secrets) in temporary and
    /// backend errors, so a failure after the retries says which cache it was.
    fn convert(&self, e: object_store::Error) -> Error {
        match convert(e) {
            Error::Temporary { backend, message } => {
                Error::Temporary { backend: format!("{backend} (cache {})", self.location), message }
            }
            Error::Backend { backend, source } => {
                Error::Backend { backend: format!("{backend} (cache {})", self.location), source }
            }
            other => other,
        }
    }

    /// [`Self::convert`] for a write: a 404 on a put means the place to write to does not
    /// exist (on S3: the bucket), which a user fixes; it is not an entry that is missing.
    fn convert_write(&self, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { path, .. } => Error::invalid(
                "cache",
                format!("{}: writing {path} answered \"not found\" (does the bucket exist?)", self.location),
            ),
            other => self.convert(other),
        }
    }

    fn count_corrupt(&self, key: &CacheKey, why: &str) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(location = %self.location, key = %key, "corrupt cache entry ({why}); treating it as a miss");
    }

    async fn write_payload(&self, path: &Path, payload: Bytes) -> Result<()> {
        let o = &self.options;
        if payload.len() < o.multipart_threshold {
            self.store.put(path, PutPayload::from_bytes(payload)).await.map_err(|e| self.convert_write(e))?;
            return Ok(());
        }
        let upload = self.store.put_multipart(path).await.map_err(|e| self.convert_write(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, o.part_size);
        let mut offset = 0;
        while offset < payload.len() {
            if let Err(e) = writer.wait_for_capacity(o.upload_concurrency).await {
                // Best effort: the upload failed anyway, and nothing was committed.
                let _ = writer.abort().await;
                return Err(self.convert_write(e));
            }
            let end = (offset + o.part_size).min(payload.len());
            writer.put(payload.slice(offset..end));
            offset = end;
        }
        writer.finish().await.map_err(|e| self.convert_write(e))?;
        Ok(())
    }

    /// Deletes payload files of `dir` other than `keep` older than the grace period, and
    /// (on local disk) staging files of killed writers. Best effort: failures are logged.
    async fn collect_garbage(&self, dir: &Path, keep: &str) {
        let grace = self.options.garbage_grace;
        let now = SystemTime::now();
        let old = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age >= grace);
        let listed: Vec<_> = match self.store.list(Some(dir)).try_collect().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("listing {dir} for garbage failed: {e}");
                return;
            }
        };
        for obj in listed {
            let Some(name) = obj.location.filename() else { continue };
            let is_payload =
                name.starts_with("data-") && obj.location.prefix_match(dir).is_some_and(|p| p.count() == 1);
            if is_payload && name != keep && old(obj.last_modified.into()) {
                match self.store.delete(&obj.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                        tracing::debug!("deleted unreferenced payload {}", obj.location)
                    }
                    Err(e) => tracing::debug!("deleting {} failed: {e}", obj.location),
                }
            }
        }
        if let Some(folder) = self.local_dir(dir) {
            remove_staging_files(&folder, old);
        }
    }

    fn local_dir(&self, dir: &Path) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        Some(dir.parts().fold(root.clone(), |p, part| p.join(part.as_ref())))
    }
}

/// Removes `name#<digits>` staging files (left by killed local writers) that `old` accepts.
fn remove_staging_files(folder: &std::path::Path, old: impl Fn(SystemTime) -> bool) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let staging =
            name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        if staging && modified.is_some_and(&old) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[async_trait]
impl CacheStore for ObjectCache {
    async fn get(&self, request: GetRequest) -> Result<Option<CacheEntry>> {
        let key = &request.key;
        let dir = self.dir(key)?;
        let mut previous_sha: Option<String> = None;
        // A concurrent overwrite can replace meta.json (and, after the grace period, delete
        // the payload it named) between our two reads: read again while the metadata moves.
        for _ in 0..4 {
            let (read, sha) = self.read_once(key, &dir).await?;
            match read {
                Read::Hit(entry) => return Ok(Some(*entry)),
                Read::Miss => return Ok(None),
                Read::Corrupt(why) => {
                    self.count_corrupt(key, &why);
                    return Ok(None);
                }
                Read::PayloadGone(why) => {
                    if sha.is_some() && sha == previous_sha {
                        self.count_corrupt(key, &why);
                        return Ok(None);
                    }
                    previous_sha = sha;
                }
            }
        }
        self.count_corrupt(key, "its metadata kept changing while it was read");
        Ok(None)
    }

    async fn put(&self, request: PutRequest) -> Result<EntryMeta> {
        let PutRequest { key, payload, attrs, .. } = request;
        let dir = self.dir(&key)?;
        let meta = if payload.len() >= BLOCKING_HASH_BYTES {
            let (k, p) = (key.clone(), payload.clone());
            tokio::task::spawn_blocking(move || EntryMeta::for_payload(&k, &p, attrs))
                .await
                .map_err(|e| Error::backend("probe-cache", e))?
        } else {
            EntryMeta::for_payload(&key, &payload, attrs)
        };
        let name = payload_file_name(&meta).expect("EntryMeta::for_payload writes a SHA-256 and a known format");
        self.write_payload(&dir.clone().join(name.as_str()), payload).await?;
        let mut json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::backend("probe-cache", e))?;
        json.push(b'\n');
        self.store
            .put(&dir.clone().join(META_FILE), PutPayload::from(json))
            .await
            .map_err(|e| self.convert_write(e))?;
        self.collect_garbage(&dir, &name).await;
        Ok(meta)
    }

    async fn contains(&self, request: GetRequest) -> Result<bool> {
        let dir = self.dir(&request.key)?;
        let Ok(Some(meta)) = self.read_meta(&request.key, &dir).await? else {
            return Ok(false);
        };
        let name = payload_file_name(&meta).expect("checked in read_meta");
        match self.store.head(&dir.clone().join(name.as_str())).await {
            Ok(obj) => Ok(obj.size == meta.size),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.convert(e)),
        }
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<CacheKey>> {
        let mut prefix = self.root.clone();
        if let Some(model) = &request.model {
            prefix = prefix.join(model.as_str());
            if let Some(kind) = request.kind {
                prefix = prefix.join(kind.as_str());
                if let Some(set) = &request.prompt_set {
                    prefix = prefix.join(set.as_str());
                }
            }
        }
        let objects: Vec<_> = match self.store.list(Some(&prefix)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.convert(e)),
        };
        let mut keys: Vec<CacheKey> = objects
            .iter()
            .filter(|o| o.location.filename() == Some(META_FILE))
            .filter_map(|o| {
                let parts: Vec<String> = o.location.prefix_match(&self.root)?.map(|p| p.as_ref().to_owned()).collect();
                let (_, dir) = parts.split_last()?;
                CacheKey::from_path(&dir.join("/")).ok()
            })
            .filter(|k| request.matches(k))
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn delete(&self, request: GetRequest) -> Result<bool> {
        let dir = self.dir(&request.key)?;
        // S3 deletes succeed on missing objects, so ask first.
        let meta_path = dir.clone().join(META_FILE);
        let existed = match self.store.head(&meta_path).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(self.convert(e)),
        };
        // Uncommit first, so no reader finds a meta.json whose payload is being deleted.
        match self.store.delete(&meta_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.convert(e)),
        }
        let objects: Vec<_> = match self.store.list(Some(&dir)).try_collect().await {
            Ok(v) => v,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(self.convert(e)),
        };
        for obj in objects {
            match self.store.delete(&obj.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.convert(e)),
            }
        }
        if let Some(folder) = self.local_dir(&dir) {
            remove_staging_files(&folder, |_| true);
            let _ = std::fs::remove_dir(&folder);
        }
        Ok(existed)
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::none();
        caps.list = true;
        caps.delete = true;
        caps.persistent = self.kind == StoreKind::Persistent;
        caps
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn corrupt_entries(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }
}
