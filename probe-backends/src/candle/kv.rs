//! Key/value caches of generation: one per sequence, so that sequences of different lengths
//! decode together (each row attends over its own keys, no padding) and a finished one leaves
//! the batch by dropping its cache.

use candle_core::{Result, Tensor};

/// One layer's keys and values, `[b, kv_heads, t, head_dim]` each (`None` before the first
/// step). Appending concatenates into new tensors, so a clone (the `n` samples of a prompt,
/// after its prefill) never sees another's later tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerKv {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerKv {
    /// Appends `k` and `v` (`[b, kv_heads, s, head_dim]`, contiguous) along the sequence axis;
    /// returns every key and value held (contiguous).
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let kv = match &self.kv {
            Some((k0, v0)) => (Tensor::cat(&[k0, k], 2)?, Tensor::cat(&[v0, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        self.kv = Some(kv.clone());
        Ok(kv)
    }
}

/// The cache a block's attention reads and extends in one forward call.
pub(crate) enum Kv<'a, 'c> {
    /// No cache: the sequence is the whole input (extraction).
    None,
    /// The whole batch's keys and values in one cache (a prefill; rows of equal length).
    Batch(&'a mut LayerKv),
    /// One new token per row, each row with its own cache (batched decoding of sequences of
    /// different lengths).
    Rows(&'a mut [&'c mut LayerKv]),
}

/// Per-layer key/value caches of one sequence (or of the equal-length rows of one prefill).
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    pub(crate) layers: Vec<LayerKv>,
    /// Positions fed so far.
    pub(crate) len: usize,
    /// Of those, the first `dropped` are no longer in `layers` (Phi-3's longrope switch, see
    /// [`super::model::Decoder::next_logits`]).
    pub(crate) dropped: usize,
}

impl Cache {
    /// An empty cache for `layers` layers.
    pub(crate) fn new(layers: usize) -> Self {
        Self { layers: vec![LayerKv::default(); layers], len: 0, dropped: 0 }
    }

    /// Forgets every key and value held (the positions fed so far stay counted, as dropped).
    pub(crate) fn drop_all(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerKv::default());
        self.dropped = self.len;
    }
}
