//! Key/value caches of generation. A prefill keeps each layer's keys and values of the whole
//! batch; the sequences that decode together then live in one buffer per layer,
//! `[slots, kv_heads, capacity, head_dim]`, row `i` of a decode step in slot `i`, so that a
//! decode step attends for every row in one batched matmul (each row's keys padded to the
//! longest and masked). A finished sequence leaves by moving the last slot into its place.

use std::sync::Arc;

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
    /// `Some(kept)`, the block leaves the rows' own keys and values there (`[b, kv_heads, s,
    /// head_dim]`: decoding reads the prefix's from [`SharedKv`]).
    After(&'a (Tensor, Tensor), Option<&'a mut Option<(Tensor, Tensor)>>),
    /// A decode step of layer `.2`: its key and value buffers (see [`DecodeKv`]); the step's
    /// [`super::block::DecodeStep`] says where each row's new key goes, which keys it sees and
    /// the shared prefixes rows attend to first.
    Decode(&'a Tensor, &'a Tensor, usize),
}

/// Keys and values of a prompt prefix that decoding rows share (run once, see
/// [`super::model::Prefix`]): per layer `[1, kv_heads, p, head_dim]`, held once however many
/// rows attend to it, and dropped with the last of them.
#[derive(Debug, Clone)]
pub(crate) struct SharedKv {
    /// Its positions.
    pub(crate) len: usize,
    pub(crate) layers: Arc<[(Tensor, Tensor)]>,
}

impl SharedKv {
    /// Whether `self` and `other` are the same prefix (not merely equal).
    pub(crate) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layers, &other.layers)
    }
}

/// One decoding sequence's place in the buffers.
#[derive(Debug, Clone)]
pub(crate) struct RowKv {
    /// Positions fed so far.
    pub(crate) len: usize,
    /// Of those, the first `dropped` are no longer held (Phi-3's longrope switch, see
    /// [`super::model::Decoder::next_logits_rows`]); the slot holds positions
    /// `dropped..len` at `0..len - dropped`.
    pub(crate) dropped: usize,
    /// The prefix it shares with other rows: its first `shared.len` positions are there, the
    /// slot holds the positions after them (`shared.len..len` at `0..`). Never with `dropped`.
    pub(crate) shared: Option<SharedKv>,
}

impl RowKv {
    /// Keys held in its slot.
    pub(crate) fn held(&self) -> usize {
        self.len - self.dropped - self.shared_len()
    }

    /// Positions its shared prefix holds (0: none).
    pub(crate) fn shared_len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.len)
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

    /// Adds a row (the last slot) of `len` positions: after `shared` (its first positions,
    /// held there; possibly all of them), the rest are the first positions of row `r` of a
    /// prefill's keys and values (`prefill[layer]`: `[b, kv_heads, s, head_dim]`), with room for
    /// `room` positions in all.
    pub(crate) fn push(
        &mut self,
        prefill: &[(Tensor, Tensor)],
        r: usize,
        len: usize,
        room: usize,
        shared: Option<&SharedKv>,
    ) -> Result<()> {
        let slot = self.rows.len();
        let row = RowKv { len, dropped: 0, shared: shared.cloned() };
        let own = row.held();
        self.reserve(slot + 1, room.max(len) - row.shared_len(), prefill)?;
        for (layer, (pk, pv)) in self.layers.iter().zip(prefill).filter(|_| own > 0) {
            let (bk, bv) = layer.as_ref().expect("reserved above");
            let part = |t: &Tensor| t.narrow(0, r, 1)?.narrow(2, 0, own)?.contiguous();
            bk.narrow(0, slot, 1)?.slice_set(&part(pk)?, 2, 0)?;
            bv.narrow(0, slot, 1)?.slice_set(&part(pv)?, 2, 0)?;
        }
        self.rows.push(row);
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
        kv.push(&p, 0, 2, 3, None).unwrap();
        kv.push(&p, 2, 4, 6, None).unwrap(); // more slots and positions than allocated
        kv.push(&p, 1, 3, 3, None).unwrap();
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
        kv.push(&p, 0, 3, 8, None).unwrap();
        kv.push(&p, 1, 2, 8, None).unwrap();
        kv.swap_remove(0).unwrap();
        let (k, _) = kv.layer(0).unwrap();
        let slot: Vec<f32> =
            k.narrow(0, 0, 1).unwrap().narrow(2, 0, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(slot, [6.0, 7.0, 9.0, 10.0]);
    }

    #[test]
    fn rows_after_a_shared_prefix_hold_only_their_own_keys() {
        // Prefill keys of the rows' own positions (3 each); a 40-position prefix held once.
        let own = prefill(2, 3);
        let prefix = Tensor::zeros((1, 1, 40, 1), DType::F32, &Device::Cpu).unwrap();
        let shared = SharedKv { len: 40, layers: vec![(prefix.clone(), prefix)].into() };
        let mut kv = DecodeKv::new(1, 2);
        kv.push(&own, 0, 43, 50, Some(&shared)).unwrap();
        kv.push(&own, 1, 42, 50, Some(&shared)).unwrap();
        assert_eq!(kv.size(), (2, 10), "slots of the positions after the prefix");
        assert_eq!(kv.rows().iter().map(RowKv::held).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(keys(&kv, 1, 2), [3.0, 4.0]);
        assert!(kv.rows()[0].shared.as_ref().unwrap().same(&shared));
    }
}
