use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{CacheEntry, CacheKey, CacheStore, Capabilities, EntryMeta, GetRequest, ListRequest, PutRequest, Result};

/// An in-memory [`CacheStore`]. `corrupt` flips a byte of a stored payload, for tests;
/// reads of corrupt entries are counted ([`CacheStore::corrupt_entries`]).
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: Mutex<BTreeMap<CacheKey, (EntryMeta, Bytes)>>,
    corrupt: AtomicU64,
}

impl MemoryCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// Flips the first byte of an entry's payload; returns whether the entry existed.
    pub fn corrupt(&self, key: &CacheKey) -> bool {
        let mut map = self.entries.lock().expect("lock");
        match map.get_mut(key) {
            Some((_, payload)) if !payload.is_empty() => {
                let mut v = payload.to_vec();
                v[0] ^= 0xff;
                *payload = Bytes::from(v);
                true
            }
            _ => false,
        }
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("lock").len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, request: GetRequest) -> Result<Option<CacheEntry>> {
        let found = self.entries.lock().expect("lock").get(&request.key).cloned();
        Ok(found.and_then(|(meta, payload)| match meta.verify(&payload) {
            Ok(()) => Some(CacheEntry::new(request.key, meta, payload)),
            Err(e) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("{e}; treating it as a miss");
                None
            }
        }))
    }

    async fn put(&self, request: PutRequest) -> Result<EntryMeta> {
        let meta = EntryMeta::for_payload(&request.key, &request.payload, request.attrs);
        self.entries.lock().expect("lock").insert(request.key, (meta.clone(), request.payload));
        Ok(meta)
    }

    async fn contains(&self, request: GetRequest) -> Result<bool> {
        Ok(self.get(request).await?.is_some())
    }

    async fn list(&self, request: ListRequest) -> Result<Vec<CacheKey>> {
        Ok(self.entries.lock().expect("lock").keys().filter(|k| request.matches(k)).cloned().collect())
    }

    async fn delete(&self, request: GetRequest) -> Result<bool> {
        Ok(self.entries.lock().expect("lock").remove(&request.key).is_some())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { list: true, delete: true, ..Capabilities::none() }
    }

    fn location(&self) -> String {
        "memory://".into()
    }

    fn corrupt_entries(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }
}
