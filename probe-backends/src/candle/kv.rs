//! Key/value caches of generation. A prefill keeps each layer's keys and values of the whole
//! batch; the sequences that decode together then live in one buffer per layer,
//! `[slots, kv_heads, capacity, head_dim]`, row `i` of a decode step in slot `i`, so that a
//! decode step attends for every row in one batched matmul (each row's keys padded to the
//! longest and masked). A finished sequence leaves by moving the last slot into its place.

use candle_core::{Result, Tensor};

/// What one block's attention reads and extends in one forward call.
#[derive(Debug)]
pub(crate) enum Kv<'a> {
    /// No cache: the sequence is the whole input (extraction).
    None,
    /// A prefill: the block leaves its keys and values (`[b, kv_heads, s, head_dim]`) here.
    Keep(&'a mut Option<(Tensor, Tensor)>),
    /// After a prefix every row shares (its keys and values, `[1, kv_heads, p, head_dim]`, see
    /// [`super::model::Prefix`]): each row's queries see the prefix, then their own keys; with
    /// `Some(kept)`, the block leaves the row's keys and values there, prefix first
    /// (`[b, kv_heads, p + s, head_dim]`, as a prefill of the whole input would).
    After(&'a (Tensor, Tensor), Option<&'a mut Option<(Tensor, Tensor)>>),
    /// A decode step: the layer's key and value buffers (see [`DecodeKv`]); the step's
    /// [`super::block::DecodeStep`] says where each row's new key goes and which keys it sees.
    Decode(&'a Tensor, &'a Tensor),
}

/// One decoding sequence's place in the buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowKv {
    /// Positions fed so far.
    pub(crate) len: usize,
    /// Of those, the first `dropped` are no longer held (Phi-3's longrope switch, see
    /// [`super::model::Decoder::next_logits_rows`]); the slot holds positions
    /// `dropped..len` at `0..len - dropped`.
    pub(crate) dropped: usize,
}

impl RowKv {
    /// Keys held.
    pub(crate) fn held(&self) -> usize {
        self.len - self.dropped
    }
}

/// The keys and values of the sequences decoding together (see the module docs).
#[derive(Debug)]
pub(crate) struct DecodeKv {
    /// Per layer: keys and values, `[slots, kv_heads, capacity, head_dim]` (allocated by the
    /// first row, on that layer's device, in its dtype).
    layers: Vec<Option<(Tensor, Tensor)>>,
    rows: Vec<RowKv>,
    /// Slots to allocate at first.
    slots_hint: usize,
}

impl DecodeKv {
    /// Empty buffers for `layers` layers, sized for `slots` sequences at first.
    pub(crate) fn new(layers: usize, slots: usize) -> Self {
        Self { layers: vec![None; layers], rows: Vec::new(), slots_hint: slots.max(1) }
    }

    /// The rows, in slot order.
    pub(crate) fn rows(&self) -> &[RowKv] {
        &self.rows
    }

    /// The rows, in slot order, to update.
    pub(crate) fn rows_mut(&mut self) -> &mut [RowKv] {
        &mut self.rows
    }

    /// Layer `i`'s key and value buffers.
    pub(crate) fn layer(&self, i: usize) -> Result<(&Tensor, &Tensor)> {
        match &self.layers[i] {
            Some((k, v)) => Ok((k, v)),
            None => candle_core::bail!("no decode buffers for layer {i}: no row was added"),
        }
    }

    /// (slots, capacity) of the buffers; (0, 0) before the first row.
    fn size(&self) -> (usize, usize) {
        self.layers.iter().flatten().next().map_or((0, 0), |(k, _)| (k.dims()[0], k.dims()[2]))
    }

    /// Makes room for `slots` rows of `capacity` positions (the buffers grow, never shrink);
    /// `like` gives each layer's shape, dtype and device when nothing is allocated yet.
    fn reserve(&mut self, slots: usize, capacity: usize, like: &[(Tensor, Tensor)]) -> Result<()> {
        let (have_slots, have_cap) = self.size();
        if have_slots >= slots && have_cap >= capacity {
            return Ok(());
        }
        let slots = if have_slots >= slots { have_slots } else { slots.max(2 * have_slots).max(self.slots_hint) };
        let capacity = if have_cap >= capacity { have_cap } else { capacity.max(have_cap + have_cap / 2) };
        for (layer, (lk, _)) in self.layers.iter_mut().zip(like) {
            let (_, nkv, _, d) = lk.dims4()?;
            let alloc = || Tensor::zeros((slots, nkv, capacity, d), lk.dtype(), lk.device());
            let (nk, nv) = (alloc()?, alloc()?);
            if let Some((ok, ov)) = layer.as_ref() {
                // The old buffers fill the first slots, their positions at the start.
                nk.narrow(0, 0, have_slots)?.slice_set(ok, 2, 0)?;
                nv.narrow(0, 0, have_slots)?.slice_set(ov, 2, 0)?;
            }
            *layer = Some((nk, nv));
        }
        Ok(())
    }

    /// Adds a row (the last slot): the first `len` positions of row `r` of a prefill's keys and
    /// values (`prefill[layer]`: `[b, kv_heads, s, head_dim]`), with room for `room` positions.
    pub(crate) fn push(&mut self, prefill: &[(Tensor, Tensor)], r: usize, len: usize, room: usize) -> Result<()> {
        let slot = self.rows.len();
        self.reserve(slot + 1, room.max(len), prefill)?;
        for (layer, (pk, pv)) in self.layers.iter().zip(prefill) {
            let (bk, bv) = layer.as_ref().expect("reserved above");
            let part = |t: &Tensor| t.narrow(0, r, 1)?.narrow(2, 0, len)?.contiguous();
            bk.narrow(0, slot, 1)?.slice_set(&part(pk)?, 2, 0)?;
            bv.narrow(0, slot, 1)?.slice_set(&part(pv)?, 2, 0)?;
        }
        self.rows.push(RowKv { len, dropped: 0 });
        Ok(())
    }

    /// Removes row `i`: the last row moves into its slot (as [`Vec::swap_remove`]).
    pub(crate) fn swap_remove(&mut self, i: usize) -> Result<()> {
        let last = self.rows.len() - 1;
        if i != last {
            let held = self.rows[last].held();
            for (bk, bv) in self.layers.iter().flatten() {
                // A copy first (source and destination share the buffer), contiguous (as
                // `slice_set` takes it; with several key/value heads the slot's first `held`
                // positions are not).
                let part = |t: &Tensor| {
                    let part = t.narrow(0, last, 1)?.narrow(2, 0, held)?;
                    if part.is_contiguous() { part.copy() } else { part.contiguous() }
                };
                bk.narrow(0, i, 1)?.slice_set(&part(bk)?, 2, 0)?;
                bv.narrow(0, i, 1)?.slice_set(&part(bv)?, 2, 0)?;
            }
        }
        self.rows.swap_remove(i);
        Ok(())
    }

    /// Makes room for `held` keys in every row (before a step that would exceed the capacity).
    pub(crate) fn reserve_positions(&mut self, held: usize) -> Result<()> {
        let (slots, cap) = self.size();
        if held <= cap {
            return Ok(());
        }
        let like: Vec<(Tensor, Tensor)> = self.layers.iter().flatten().cloned().collect();
        self.reserve(slots, held, &like)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    /// One layer's prefill of `b` rows of `s` positions whose values name (row, position).
    fn prefill(b: usize, s: usize) -> Vec<(Tensor, Tensor)> {
        let t = Tensor::arange(0f32, (b * s) as f32, &Device::Cpu).unwrap().reshape((b, 1, s, 1)).unwrap();
        vec![(t.clone(), (t * 10.0).unwrap())]
    }

    fn keys(kv: &DecodeKv, slot: usize, n: usize) -> Vec<f32> {
        let (k, _) = kv.layer(0).unwrap();
        k.narrow(0, slot, 1).unwrap().narrow(2, 0, n).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn rows_join_grow_and_leave() {
        let p = prefill(3, 4);
        let mut kv = DecodeKv::new(1, 1);
        kv.push(&p, 0, 2, 3).unwrap();
        kv.push(&p, 2, 4, 6).unwrap(); // more slots and positions than allocated
        kv.push(&p, 1, 3, 3).unwrap();
        assert_eq!(kv.size(), (4, 6));
        assert_eq!(keys(&kv, 0, 2), [0.0, 1.0]);
        assert_eq!(keys(&kv, 1, 4), [8.0, 9.0, 10.0, 11.0]);
        kv.swap_remove(0).unwrap();
        assert_eq!(kv.rows().iter().map(|r| r.len).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(keys(&kv, 0, 3), [4.0, 5.0, 6.0]);
        kv.reserve_positions(20).unwrap();
        assert_eq!(keys(&kv, 1, 4), [8.0, 9.0, 10.0, 11.0]);
        let (_, v) = kv.layer(0).unwrap();
        assert_eq!(v.dims(), [4, 1, 20, 1]);
        assert_eq!(v.dtype(), DType::F32);
    }

    #[test]
    fn a_row_leaves_with_several_key_value_heads() {
        // 2 kv heads: a slot's first positions are not contiguous in a larger buffer.
        let t = Tensor::arange(0f32, 2. * 2. * 3., &Device::Cpu).unwrap().reshape((2, 2, 3, 1)).unwrap();
        let p = vec![(t.clone(), t.clone())];
        let mut kv = DecodeKv::new(1, 2);
        kv.push(&p, 0, 3, 8).unwrap();
        kv.push(&p, 1, 2, 8).unwrap();
        kv.swap_remove(0).unwrap();
        let (k, _) = kv.layer(0).unwrap();
        let slot: Vec<f32> =
            k.narrow(0, 0, 1).unwrap().narrow(2, 0, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(slot, [6.0, 7.0, 9.0, 10.0]);
    }
}
