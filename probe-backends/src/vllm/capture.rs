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

/// Files written by generation requests, waiting for the extraction of the same sequence.
#[derive(Debug)]
pub(crate) struct Captures {
    /// Full token ids (prompt + completion) → the file.
    files: Mutex<HashMap<Vec<u32>, Kept>>,
    budget: u64,
    held: AtomicU64,
    reused: AtomicU64,
    extra: AtomicU64,
}

impl Captures {
    pub(crate) fn new(budget: u64) -> Self {
        let z = || AtomicU64::new(0);
        Self { files: Mutex::default(), budget, held: z(), reused: z(), extra: z() }
    }

    /// Keeps `path` (about `bytes` long) as the hidden states of the sequence `ids`, unless
    /// that would pass the budget: then the file is deleted (blocking until the server has
    /// written it) and the sequence recorded as generated without them.
    pub(crate) fn keep(&self, ids: Vec<u32>, path: PathBuf, bytes: u64) {
        let kept = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes <= self.budget;
        let entry = if kept {
            Some((path, bytes))
        } else {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
            super::hidden::discard(&path);
            None
        };
        if let Some(Some((old, b))) = self.files.lock().expect("captures lock").insert(ids, entry) {
            // The same sequence generated twice (a retried block): the older file goes.
            self.held.fetch_sub(b, Ordering::Relaxed);
            super::hidden::discard(&old);
        }
    }

    /// The file kept for the sequence `ids`: `Some(None)` when it was generated here but
    /// its file was not kept, `None` when it was not generated here.
    pub(crate) fn take(&self, ids: &[u32]) -> Option<Option<PathBuf>> {
        let entry = self.files.lock().expect("captures lock").remove(ids)?;
        Some(entry.map(|(path, bytes)| {
            self.held.fetch_sub(bytes, Ordering::Relaxed);
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

    pub(crate) fn counts(&self) -> PassReuse {
        PassReuse { reused: self.reused.load(Ordering::Relaxed), extra_passes: self.extra.load(Ordering::Relaxed) }
    }
}

impl Drop for Captures {
    /// Files never asked for (their activations were cached) are deleted.
    fn drop(&mut self) {
        let files = std::mem::take(self.files.get_mut().expect("captures lock"));
        files.into_values().flatten().for_each(|(path, _)| super::hidden::discard(&path));
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
