//! The hidden states a generation pass left behind: a server with the hidden-states connector
//! writes, for each generation request asked with `include_output_tokens`, the hidden states
//! of the prompt and of every completion token but the last (that one is sampled, never fed
//! back). [`Captures`] keeps those files, keyed by the generation's token ids, for the
//! extraction of the same sequence: a readout within what the pass computed costs no forward
//! pass of its own ([`probe_core::PassReuse`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use probe_core::PassReuse;

/// Bytes of kept files at most, by default: beyond it a new file is deleted at once and its
/// input takes a forward pass of its own.
pub const DEFAULT_CAPTURE_BYTES: u64 = 8 << 30;

/// A kept file and its size estimate; `None` when it was not kept.
type Kept = Option<(PathBuf, u64)>;

/// The kept files and their bytes, under one lock.
#[derive(Debug, Default)]
struct Held {
    /// Full token ids (prompt + completion) → the file.
    files: HashMap<Vec<u32>, Kept>,
    bytes: u64,
}

/// Files written by generation requests, waiting for the extraction of the same sequence.
#[derive(Debug)]
pub(crate) struct Captures {
    held: Mutex<Held>,
    budget: u64,
    reused: AtomicU64,
    extra: AtomicU64,
    extra_tokens: AtomicU64,
    extra_cached: AtomicU64,
}

impl Captures {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            held: Mutex::default(),
            budget,
            reused: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            extra_tokens: AtomicU64::new(0),
            extra_cached: AtomicU64::new(0),
        }
    }

    /// Keeps `path` (about `bytes` long) as the hidden states of the sequence `ids`, unless
    /// that would pass the budget: then the file is deleted (blocking until the server has
    /// written it) and the sequence recorded as generated without them.
    pub(crate) fn keep(&self, ids: Vec<u32>, path: PathBuf, bytes: u64) {
        let (dropped, replaced) = {
            let mut held = self.held.lock().expect("captures lock");
            let fits = held.bytes + bytes <= self.budget;
            held.bytes += if fits { bytes } else { 0 };
            let (entry, dropped) = if fits { (Some((path, bytes)), None) } else { (None, Some(path)) };
            // The same sequence generated twice (a retried block): the older file goes.
            let replaced = held.files.insert(ids, entry).flatten();
            if let Some((_, b)) = &replaced {
                held.bytes -= b;
            }
            (dropped, replaced.map(|(p, _)| p))
        };
        // Deleting waits for the server's lock: never while holding ours.
        dropped.iter().chain(&replaced).for_each(|p| super::hidden::discard(p));
    }

    /// The file kept for the sequence `ids`: `Some(None)` when it was generated here but
    /// its file was not kept, `None` when it was not generated here.
    pub(crate) fn take(&self, ids: &[u32]) -> Option<Option<PathBuf>> {
        let mut held = self.held.lock().expect("captures lock");
        let entry = held.files.remove(ids)?;
        Some(entry.map(|(path, bytes)| {
            held.bytes -= bytes;
            path
        }))
    }

    /// Counts an input read from its generation pass.
    pub(crate) fn count_reused(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an input generated here that needed a forward pass of its own.
    pub(crate) fn count_extra(&self) {
        self.extra.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an extra pass's prompt tokens and those the server's prefix cache served.
    pub(crate) fn count_extra_tokens(&self, tokens: u64, cached: u64) {
        self.extra_tokens.fetch_add(tokens, Ordering::Relaxed);
        self.extra_cached.fetch_add(cached, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> PassReuse {
        PassReuse {
            reused: self.reused.load(Ordering::Relaxed),
            extra_passes: self.extra.load(Ordering::Relaxed),
            extra_pass_tokens: self.extra_tokens.load(Ordering::Relaxed),
            extra_pass_cached_tokens: self.extra_cached.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Captures {
    /// Files never asked for (their activations were cached) are deleted.
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().expect("captures lock"));
        held.files.into_values().flatten().for_each(|(path, _)| super::hidden::discard(&path));
    }
}

/// Whether hidden states of the tokens `have` serve a readout of `ids` that reads tokens up to
/// `need` (exclusive): the same sequence's prefix, long enough.
pub(crate) fn covers(have: &[u32], ids: &[u32], need: usize) -> bool {
    have.len() >= need && ids.starts_with(have)
}

/// A file's size as the server will write it: `[tokens, layers, hidden]` at 4 bytes at most.
pub(crate) fn estimate(tokens: usize, layers: usize, hidden: usize) -> u64 {
    (tokens * layers * hidden * 4) as u64
}
