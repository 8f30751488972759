//! Extraction placement: the batch size that fits with a reserve, a layer split over
//! several GPUs when the weights do not fit one, then CPU offload (like accelerate's
//! `infer_auto_device_map`, GPU 0 kept lighter).

use super::config::ModelSpec;
use super::memory::{ExtractionShape, edge_weight_bytes, extraction_working_set, layer_weight_bytes};
use super::request::{ExtractionPlan, ExtractionWorker, ExtractionWorkload, LayerShare, ModelMemory, PlanRequest};
use super::units::{MIB, gib};
use crate::{Error, Result};

/// Bytes kept free on a device of `total` bytes: max(2 %, 512 MiB).
pub fn reserve(total: u64) -> u64 {
    (total / 50).max(512 * MIB)
}

/// A device extraction layers may go to.
#[derive(Debug, Clone)]
struct Slot {
    label: String,
    gpu: Option<usize>,
    /// Bytes usable (after the reserve and caps).
    cap: u64,
}

/// Items placed in order: embedding, blocks, head (final norm and output projection). With
/// `blocks = Some(n)` (extraction only): no embedding table (its rows are read per batch),
/// blocks `0..n`, and a head of only the final norm when `n` is every block, else of nothing.
fn items(spec: &ModelSpec, m: &ModelMemory, blocks: Option<u64>) -> Vec<u64> {
    let layer = layer_weight_bytes(spec, m.dtype);
    let b = m.dtype.activation_bytes();
    let table = spec.vocab_size as u64 * spec.hidden_size as u64 * b;
    let emb = if blocks.is_some() { 0 } else { table };
    let n = blocks.map_or(spec.num_layers, |n| (n as usize).min(spec.num_layers));
    let head = match blocks {
        None => edge_weight_bytes(spec, m.dtype) - table,
        Some(_) if n == spec.num_layers => spec.hidden_size as u64 * b,
        Some(_) => 0,
    };
    let mut v = Vec::with_capacity(n + 2);
    v.push(emb);
    v.extend(std::iter::repeat_n(layer, n));
    v.push(head);
    v
}

/// Greedy in-order assignment; `None` when the items do not fit the slots.
fn assign(
    spec: &ModelSpec,
    m: &ModelMemory,
    w: &ExtractionWorkload,
    slots: &[Slot],
    ws: u64,
) -> Option<Vec<LayerShare>> {
    let items = items(spec, m, w.blocks);
    let layer = layer_weight_bytes(spec, m.dtype);
    let mut shares: Vec<LayerShare> = Vec::new();
    let mut slot = 0usize;
    let mut used = 0u64;
    let budget = |s: usize| {
        // GPU 0 of a split keeps room for one more block (accelerate keeps the main device lighter).
        let lighter = if s == 0 && slots.len() > 1 { layer } else { 0 };
        slots[s].cap.saturating_sub(ws + lighter)
    };
    for (idx, &bytes) in items.iter().enumerate() {
        while used + bytes > budget(slot) {
            slot += 1;
            used = 0;
            if slot >= slots.len() {
                return None;
            }
        }
        if shares.last().is_none_or(|sh| sh.device != slots[slot].label) {
            shares.push(LayerShare {
                device: slots[slot].label.clone(),
                gpu: slots[slot].gpu,
                first_layer: idx.saturating_sub(1).min(spec.num_layers),
                num_layers: 0,
                embedding: false,
                head: false,
                weights_bytes: 0,
                working_set_bytes: ws,
            });
        }
        let sh = shares.last_mut().expect("pushed");
        used += bytes;
        sh.weights_bytes += bytes;
        match idx {
            0 => sh.embedding = true,
            // An extraction-only load below the last block has no head at all.
            i if i == items.len() - 1 => sh.head = bytes > 0,
            _ => sh.num_layers += 1,
        }
    }
    Some(shares)
}

/// Largest `b` in `1..=max` with `ok(b)`, for `ok` true up to some point; `None` if `ok(1)` is false.
fn largest(max: u64, ok: impl Fn(u64) -> bool) -> Option<u64> {
    if !ok(1) {
        return None;
    }
    let (mut lo, mut hi) = (1u64, max.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if ok(mid) { lo = mid } else { hi = mid - 1 }
    }
    Some(lo)
}

/// Plans the extraction phase on `gpus` (the CPU when there are none).
///
/// # Errors
/// [`Error::InvalidInput`] for a zero batch or sequence length, or when the weights and one
/// input do not fit the GPUs (and the CPU, when offload is allowed), with the numbers.
pub(super) fn plan_extraction(
    req: &PlanRequest,
    spec: &ModelSpec,
    m: &ModelMemory,
    w: &ExtractionWorkload,
    gpus: &[usize],
    notes: &mut Vec<String>,
) -> Result<ExtractionPlan> {
    if w.seq_len == 0 {
        return Err(Error::invalid("extraction sequence length", "0 tokens (must be ≥ 1)"));
    }
    if w.max_batch_size == 0 {
        return Err(Error::invalid("extraction batch size", "0 (must be ≥ 1)"));
    }
    let layers = w.layers.unwrap_or(spec.num_layers as u64 + 1);
    // Several sites read in one pass capture one tensor per (site, layer): at most every site at
    // every layer.
    let most = (spec.num_layers as u64 + 1) * crate::Site::ALL.len() as u64;
    if layers == 0 || layers > most {
        return Err(Error::invalid(
            "captured layers",
            format!(
                "{layers} (the model has {} hidden states, 0..={}, at {} sites at most)",
                spec.num_layers + 1,
                spec.num_layers,
                crate::Site::ALL.len()
            ),
        ));
    }
    let ws_at = |b: u64, seq: u64| {
        extraction_working_set(
            spec,
            &ExtractionShape::new(b, seq, layers, w.positions, m.dtype).with_attention(w.attention),
        )
    };
    let ws = |b: u64| ws_at(b, w.seq_len);
    let context = spec.max_position_embeddings.map_or(1 << 20, |c| c as u64);
    // Longest input that fits one at a time with the same placement.
    let longest = |ok: &dyn Fn(u64) -> bool| largest(context, ok).unwrap_or(0);
    let inv = &req.inventory;
    let gpu_slots: Vec<Slot> = gpus
        .iter()
        .map(|&i| {
            let d = inv.gpu(i)?;
            let free = d.free_bytes.min(req.gpu_max_memory.unwrap_or(u64::MAX));
            Ok(Slot { label: d.label(), gpu: Some(i), cap: free.saturating_sub(reserve(d.total_bytes)) })
        })
        .collect::<Result<_>>()?;
    let cpu_cap = req.cpu_max_memory.unwrap_or(inv.cpu_bytes / 10 * 9);
    let cpu_slot = Slot { label: "CPU".into(), gpu: None, cap: cpu_cap };
    // The weights the extractor holds (fewer than the model's when it loads only some blocks).
    let weights: u64 = items(spec, m, w.blocks).iter().sum();
    let plan = |workers: Vec<ExtractionWorker>, b: u64, offload: bool, max_seq_len: u64| ExtractionPlan {
        gpus: gpus.to_vec(),
        workers,
        batch_size: b,
        seq_len: w.seq_len,
        max_seq_len,
        layers,
        working_set_bytes: ws(b),
        reserve_bytes: gpus.first().and_then(|&i| inv.gpu(i).ok()).map_or(0, |d| reserve(d.total_bytes)),
        cpu_offload: offload,
        dtype: m.dtype,
    };

    // 1. The whole model on each GPU: one worker per GPU, chunks round-robin over them.
    if !gpu_slots.is_empty() {
        let min_cap = gpu_slots.iter().map(|s| s.cap).min().expect("non-empty");
        if let Some(b) = largest(w.max_batch_size, |b| weights + ws(b) <= min_cap) {
            let workers = gpu_slots
                .iter()
                .map(|s| ExtractionWorker { shares: assign(spec, m, w, std::slice::from_ref(s), ws(b)).expect("fits") })
                .collect::<Vec<_>>();
            if workers.len() > 1 {
                notes.push(format!("extraction chunks go round-robin over {} GPUs", workers.len()));
            }
            let max_len = longest(&|seq| weights + ws_at(1, seq) <= min_cap);
            return Ok(plan(workers, b, false, max_len));
        }
    }
    // 2. A layer split over the GPUs.
    if gpu_slots.len() > 1
        && let Some(b) = largest(w.max_batch_size, |b| assign(spec, m, w, &gpu_slots, ws(b)).is_some())
    {
        let shares = assign(spec, m, w, &gpu_slots, ws(b)).expect("fits");
        notes.push(format!(
            "the weights ({}) do not fit one GPU: layers split over {} GPUs",
            gib(weights),
            shares.len()
        ));
        let max_len = longest(&|seq| assign(spec, m, w, &gpu_slots, ws_at(1, seq)).is_some());
        return Ok(plan(vec![ExtractionWorker { shares }], b, false, max_len));
    }
    // 3. CPU offload for what the GPUs cannot hold (or the CPU alone without GPUs).
    let mut slots = gpu_slots.clone();
    slots.push(cpu_slot);
    let offload_ok = req.cpu_offload || gpu_slots.is_empty();
    // Blocks (and edges) the GPUs hold at batch `b`: a larger batch must not push weights off them.
    let on_gpus = |b: u64| {
        assign(spec, m, w, &slots, ws(b)).map(|sh| {
            sh.iter().filter(|s| s.gpu.is_some()).map(|s| s.num_layers + usize::from(s.embedding)).sum::<usize>()
        })
    };
    let most = on_gpus(1);
    if offload_ok && let Some(b) = largest(w.max_batch_size, |b| on_gpus(b).is_some_and(|n| Some(n) >= most)) {
        let shares = assign(spec, m, w, &slots, ws(b)).expect("fits");
        let cpu = shares.iter().find(|s| s.gpu.is_none());
        if let (Some(cpu), false) = (cpu, gpu_slots.is_empty()) {
            notes.push(format!(
                "{} of {} layers{} offloaded to the CPU for extraction ({})",
                cpu.num_layers,
                spec.num_layers,
                if cpu.head { " and the output head" } else { "" },
                gib(cpu.weights_bytes)
            ));
        }
        let max_len = longest(&|seq| assign(spec, m, w, &slots, ws_at(1, seq)).is_some());
        return Ok(plan(vec![ExtractionWorker { shares }], b, !gpu_slots.is_empty(), max_len));
    }
    let need = weights + ws(1);
    let have: Vec<String> = gpu_slots.iter().map(|s| format!("{} has {}", s.label, gib(s.cap))).collect();
    Err(Error::invalid(
        "plan",
        format!(
            "extraction needs {} (weights {} + working set {} for one input of {} tokens), {}{}",
            gib(need),
            gib(weights),
            gib(ws(1)),
            w.seq_len,
            if have.is_empty() { "no GPU".to_string() } else { have.join(", ") },
            if offload_ok {
                format!(" and the CPU has {}", gib(cpu_cap))
            } else {
                " (after the reserve; CPU offload is off)".to_string()
            }
        ),
    ))
}
