//! The [`CacheStore`] contract: immutable, checksummed, atomically committed entries.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::key::slug;
use crate::{Capabilities, Error, Result};

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Completions, as JSON lines.
    Generations,
    /// One layer's hidden states, as safetensors.
    Activations,
}

impl EntryKind {
    /// The folder name of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Generations => "generations",
            EntryKind::Activations => "activations",
        }
    }
    /// The file extension of this kind's payload.
    pub fn extension(self) -> &'static str {
        match self {
            EntryKind::Generations => "jsonl",
            EntryKind::Activations => "safetensors",
        }
    }
}

/// Where an entry lives: a readable prefix (model, kind, prompt set, layer) plus the
/// content digest. Every segment is a slug, so a key never leaves the cache root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CacheKey {
    /// What the entry holds.
    pub kind: EntryKind,
    /// Model slug.
    pub model: String,
    /// Prompt-set slug.
    pub prompt_set: String,
    /// Layer, for activations.
    pub layer: Option<usize>,
    /// SHA-256 hex of everything that changes the result.
    pub digest: String,
}

impl CacheKey {
    /// A key; `model` and `prompt_set` are slugged again, and a digest that is not 64 hex
    /// characters is hashed, so no part can add folders.
    pub fn new(
        kind: EntryKind,
        model: impl AsRef<str>,
        prompt_set: impl AsRef<str>,
        layer: Option<usize>,
        digest: impl Into<String>,
    ) -> Self {
        let mut digest = digest.into();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            digest = hex::encode(Sha256::digest(digest.as_bytes()));
        }
        Self { kind, model: slug(model.as_ref()), prompt_set: slug(prompt_set.as_ref()), layer, digest }
    }

    /// The entry's folder relative to the cache root:
    /// `<model>/<kind>/<prompt-set>/[layer-<L>/]<digest>`.
    pub fn path(&self) -> String {
        match self.layer {
            Some(l) => {
                format!("{}/{}/{}/layer-{l:03}/{}", self.model, self.kind.as_str(), self.prompt_set, self.digest)
            }
            None => format!("{}/{}/{}/{}", self.model, self.kind.as_str(), self.prompt_set, self.digest),
        }
    }

    /// Parses [`CacheKey::path`] back.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `path` is not a key path.
    pub fn from_path(path: &str) -> Result<Self> {
        let bad = || Error::invalid("cache path", format!("{path:?} is not <model>/<kind>/<set>/[layer-N/]<digest>"));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (model, kind, set, layer, digest) = match parts.as_slice() {
            [m, k, s, d] => (*m, *k, *s, None, *d),
            [m, k, s, l, d] => {
                let l = l.strip_prefix("layer-").and_then(|n| n.parse::<usize>().ok()).ok_or_else(bad)?;
                (*m, *k, *s, Some(l), *d)
            }
            _ => return Err(bad()),
        };
        let kind = match kind {
            "generations" => EntryKind::Generations,
            "activations" => EntryKind::Activations,
            _ => return Err(bad()),
        };
        let key = CacheKey::new(kind, model, set, layer, digest);
        if key.path() != path.trim_matches('/') {
            return Err(bad());
        }
        Ok(key)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path())
    }
}

/// Metadata committed with every entry. It never holds secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EntryMeta {
    /// Layout version of the entry.
    pub schema: u32,
    /// The key's path.
    pub key: String,
    /// Payload format (`safetensors`, `jsonl`).
    pub format: String,
    /// SHA-256 hex of the payload, verified on every read.
    pub sha256: String,
    /// Payload size in bytes.
    pub size: u64,
    /// Seconds since the Unix epoch at commit.
    pub created_unix: u64,
    /// Free-form, human-readable attributes (model, layer, positions …).
    pub attrs: BTreeMap<String, String>,
}

impl EntryMeta {
    /// Metadata for `payload` under `key`, with its checksum.
    pub fn for_payload(key: &CacheKey, payload: &[u8], attrs: BTreeMap<String, String>) -> Self {
        Self {
            schema: 1,
            key: key.path(),
            format: key.kind.extension().to_owned(),
            sha256: sha256_hex(payload),
            size: payload.len() as u64,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            attrs,
        }
    }

    /// Checks `payload` against the size and checksum.
    ///
    /// # Errors
    /// [`Error::Corrupt`] on a mismatch.
    pub fn verify(&self, payload: &[u8]) -> Result<()> {
        if payload.len() as u64 != self.size {
            return Err(Error::Corrupt {
                key: self.key.clone(),
                message: format!("size {} differs from the recorded {}", payload.len(), self.size),
            });
        }
        let sum = sha256_hex(payload);
        if sum != self.sha256 {
            return Err(Error::Corrupt {
                key: self.key.clone(),
                message: format!("checksum {sum} differs from the recorded {}", self.sha256),
            });
        }
        Ok(())
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An entry read back, verified.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CacheEntry {
    /// Its key.
    pub key: CacheKey,
    /// Its metadata.
    pub meta: EntryMeta,
    /// Its payload (safetensors or JSON lines).
    pub payload: Bytes,
}

impl CacheEntry {
    /// An entry from parts.
    pub fn new(key: CacheKey, meta: EntryMeta, payload: Bytes) -> Self {
        Self { key, meta, payload }
    }
}

/// Read one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GetRequest {
    /// The key.
    pub key: CacheKey,
}

/// Commit one entry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PutRequest {
    /// The key.
    pub key: CacheKey,
    /// The payload.
    pub payload: Bytes,
    /// Readable attributes stored in the metadata (never secrets).
    pub attrs: BTreeMap<String, String>,
}

impl PutRequest {
    /// A put of `payload` under `key`.
    pub fn new(key: CacheKey, payload: impl Into<Bytes>) -> Self {
        Self { key, payload: payload.into(), attrs: BTreeMap::new() }
    }
    /// Adds a readable attribute.
    pub fn with_attr(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.attrs.insert(k.into(), v.into());
        self
    }
}

/// List the keys under a prefix; unset fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListRequest {
    /// Model slug.
    pub model: Option<String>,
    /// Kind.
    pub kind: Option<EntryKind>,
    /// Prompt-set slug.
    pub prompt_set: Option<String>,
}

impl ListRequest {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }
    /// Keys of one model.
    pub fn model(model: impl AsRef<str>) -> Self {
        Self { model: Some(slug(model.as_ref())), ..Self::default() }
    }
    /// Narrows to a kind.
    pub fn with_kind(mut self, kind: EntryKind) -> Self {
        self.kind = Some(kind);
        self
    }
    /// Narrows to a prompt set.
    pub fn with_prompt_set(mut self, set: impl AsRef<str>) -> Self {
        self.prompt_set = Some(slug(set.as_ref()));
        self
    }
    /// True when `key` matches.
    pub fn matches(&self, key: &CacheKey) -> bool {
        self.model.as_ref().is_none_or(|m| *m == key.model)
            && self.kind.is_none_or(|k| k == key.kind)
            && self.prompt_set.as_ref().is_none_or(|s| *s == key.prompt_set)
    }
}

/// Stores immutable entries by [`CacheKey`].
///
/// # Contract
/// - `put` is atomic: a reader, concurrent or after a crash, sees the whole entry or none.
///   Putting a key that exists replaces it atomically.
/// - `get` verifies the checksum: a corrupt or truncated entry is `Ok(None)` (a miss,
///   logged as a warning), never wrong bytes; a later `put` overwrites it.
/// - `contains` is true only for an entry `get` would return (it may skip the checksum).
/// - `list` returns the keys of committed entries matching the request, sorted.
/// - `delete` returns whether something was removed.
/// - Temporary failures are [`Error::Temporary`] (see [`Error::is_retryable`]).
/// - [`CacheStore::corrupt_entries`] counts the corrupt or truncated entries `get` has met
///   (and turned into misses) since the store was opened; it never decreases. A store that
///   cannot tell keeps the provided `0`.
#[async_trait]
pub trait CacheStore: Send + Sync + std::fmt::Debug {
    /// Reads an entry.
    ///
    /// # Errors
    /// Store errors; a missing or corrupt entry is `Ok(None)`.
    async fn get(&self, request: GetRequest) -> Result<Option<CacheEntry>>;
    /// Commits an entry atomically and returns its metadata.
    ///
    /// # Errors
    /// Store errors.
    async fn put(&self, request: PutRequest) -> Result<EntryMeta>;
    /// Whether a committed entry exists.
    ///
    /// # Errors
    /// Store errors.
    async fn contains(&self, request: GetRequest) -> Result<bool>;
    /// Keys of committed entries, sorted.
    ///
    /// # Errors
    /// Store errors, or [`Error::NotSupported`].
    async fn list(&self, request: ListRequest) -> Result<Vec<CacheKey>>;
    /// Removes an entry.
    ///
    /// # Errors
    /// Store errors, or [`Error::NotSupported`].
    async fn delete(&self, request: GetRequest) -> Result<bool>;
    /// What this store supports.
    fn capabilities(&self) -> Capabilities;
    /// Where this store is, for messages (credentials never included).
    fn location(&self) -> String;
    /// Corrupt or truncated entries met by `get` so far (each read of a bad entry counts
    /// once); a sweep reports the difference over its run. Default: `0` (not counted).
    fn corrupt_entries(&self) -> u64 {
        0
    }
}

/// Conveniences over [`CacheStore`], for every store.
#[async_trait]
pub trait CacheStoreExt: CacheStore {
    /// `get` by key.
    ///
    /// # Errors
    /// As [`CacheStore::get`].
    async fn get_key(&self, key: &CacheKey) -> Result<Option<CacheEntry>> {
        self.get(GetRequest { key: key.clone() }).await
    }
    /// `contains` by key.
    ///
    /// # Errors
    /// As [`CacheStore::contains`].
    async fn contains_key(&self, key: &CacheKey) -> Result<bool> {
        self.contains(GetRequest { key: key.clone() }).await
    }
    /// `put` of bytes.
    ///
    /// # Errors
    /// As [`CacheStore::put`].
    async fn put_bytes(&self, key: &CacheKey, payload: Bytes) -> Result<EntryMeta> {
        self.put(PutRequest::new(key.clone(), payload)).await
    }
    /// `delete` by key.
    ///
    /// # Errors
    /// As [`CacheStore::delete`].
    async fn delete_key(&self, key: &CacheKey) -> Result<bool> {
        self.delete(GetRequest { key: key.clone() }).await
    }
}

impl<T: CacheStore + ?Sized> CacheStoreExt for T {}

impl GetRequest {
    /// A request for `key`.
    pub fn new(key: CacheKey) -> Self {
        Self { key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_round_trip_and_slugging() {
        let d = "a".repeat(64);
        let k = CacheKey::new(EntryKind::Activations, "../../m", "50/50", Some(3), d.clone());
        assert_eq!(k.path(), format!("m/activations/50-50/layer-003/{d}"));
        assert_eq!(CacheKey::from_path(&k.path()).unwrap(), k);
        let k = CacheKey::new(EntryKind::Generations, "m", "", None, "../x");
        assert!(!k.path().contains(".."));
        assert_eq!(k.path().split('/').count(), 4);
        assert!(CacheKey::from_path("a/b").is_err());
    }

    #[test]
    fn meta_detects_corruption() {
        let k = CacheKey::new(EntryKind::Generations, "m", "s", None, "x");
        let meta = EntryMeta::for_payload(&k, b"hello", BTreeMap::new());
        meta.verify(b"hello").unwrap();
        assert!(matches!(meta.verify(b"hellp"), Err(Error::Corrupt { .. })));
        assert!(matches!(meta.verify(b"hell"), Err(Error::Corrupt { .. })));
    }
}
