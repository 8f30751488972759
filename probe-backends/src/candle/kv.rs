//! Key/value caches of generation: one per sequence, so that sequences of different lengths
//! decode together (each row attends over its own keys, no padding) and a finished one leaves
//! the batch by dropping its cache.

use candle_core::{Result, Tensor};

/// One layer's keys and values: buffers `[b, kv_heads, capacity, head_dim]` (allocated at the
/// first step, grown when full) of which the first `len` positions are held. Appending copies
/// only the new positions; a single row's keys are read in place (a narrowed view: candle's
/// matmul takes its strides), several rows' as one contiguous copy.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerKv {
    buf: Option<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
}

impl LayerKv {
    /// An empty cache with room for `capacity` positions before it grows.
    fn with_capacity(capacity: usize) -> Self {
        Self { buf: None, len: 0, capacity }
    }

    /// Appends `k` and `v` (`[b, kv_heads, s, head_dim]`, contiguous) along the sequence axis;
    /// returns every key and value held.
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = k.dim(2)?;
        let room = self.buf.as_ref().map_or(0, |(k, _)| k.dims()[2]);
        if self.len + s > room {
            let grown = (self.len + s).max(self.capacity).max(2 * room);
            let alloc = |t: &Tensor| {
                let mut shape = t.dims().to_vec();
                shape[2] = grown;
                Tensor::zeros(shape, t.dtype(), t.device())
            };
            let (nk, nv) = (alloc(k)?, alloc(v)?);
            if let Some((ok, ov)) = &self.buf {
                nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            self.buf = Some((nk, nv));
        }
        let (bk, bv) = self.buf.as_ref().expect("allocated above");
        bk.slice_set(k, 2, self.len)?;
        bv.slice_set(v, 2, self.len)?;
        self.len += s;
        let (k, v) = (bk.narrow(2, 0, self.len)?, bv.narrow(2, 0, self.len)?);
        if k.dim(0)? == 1 { Ok((k, v)) } else { Ok((k.contiguous()?, v.contiguous()?)) }
    }

    /// Row `r`'s first `len` positions as a cache of its own, with room for `capacity`.
    pub(crate) fn row(&self, r: usize, len: usize, capacity: usize) -> Result<Self> {
        let mut out = Self::with_capacity(capacity);
        if let Some((k, v)) = &self.buf {
            let part = |t: &Tensor| t.narrow(0, r, 1)?.narrow(2, 0, len)?.contiguous();
            out.append(&part(k)?, &part(v)?)?;
        }
        Ok(out)
    }

    /// A copy that shares no buffer with `self` (appending to one never writes into the other).
    fn fork(&self) -> Result<Self> {
        let buf = match &self.buf {
            Some((k, v)) => Some((k.copy()?, v.copy()?)),
            None => None,
        };
        Ok(Self { buf, len: self.len, capacity: self.capacity })
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
/// Not `Clone`: the buffers are written in place, so a copy is a [`Cache::fork`].
#[derive(Debug)]
pub(crate) struct Cache {
    pub(crate) layers: Vec<LayerKv>,
    /// Positions fed so far.
    pub(crate) len: usize,
    /// Of those, the first `dropped` are no longer in `layers` (Phi-3's longrope switch, see
    /// [`super::model::Decoder::next_logits_rows`]).
    pub(crate) dropped: usize,
}

impl Cache {
    /// An empty cache for `layers` layers, with room for `capacity` positions.
    pub(crate) fn new(layers: usize, capacity: usize) -> Self {
        Self { layers: vec![LayerKv::with_capacity(capacity); layers], len: 0, dropped: 0 }
    }

    /// Forgets every key and value held (the positions fed so far stay counted, as dropped).
    pub(crate) fn drop_all(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerKv::with_capacity(l.capacity));
        self.dropped = self.len;
    }

    /// A copy that shares no buffer with `self`: one sample's cache after a shared prefill.
    pub(crate) fn fork(&self) -> Result<Self> {
        let layers = self.layers.iter().map(LayerKv::fork).collect::<Result<_>>()?;
        Ok(Self { layers, len: self.len, dropped: self.dropped })
    }
}
