//! Placement executed: a decoder whose blocks live on several devices (a layer split: GPU i,
//! GPU j, the CPU), the hidden state moved from one to the next, and data-parallel replicas
//! of a model that fits one device ([`CandleReplicas`]). [`open_placement`] builds either
//! from the plan's `extraction.placement` ([`probe_core::plan::Placement`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use probe_core::plan::Placement;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Inputs, LayerActivations, ModelInfo,
    Positions, Result, SpecialTokens,
};

use super::block::{RopeRows, Step};
use super::{CandleBackend, CandleDevice, CandleFolder, CandleOptions};

/// One device's contiguous run of transformer blocks (0-based, `first..=last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockShare {
    /// Where the blocks run.
    pub device: CandleDevice,
    /// First block.
    pub first: usize,
    /// Last block (inclusive).
    pub last: usize,
}

impl BlockShare {
    /// Blocks `first..=last` on `device`.
    pub fn new(device: CandleDevice, first: usize, last: usize) -> Self {
        Self { device, first, last }
    }
}

/// The devices of a decoder's blocks: the embedding on the first, the final norm and the
/// output head on the last block's device.
#[derive(Debug, Clone)]
pub(crate) struct Stages {
    devices: Vec<Device>,
    /// Per block: its index into `devices`.
    of_block: Vec<usize>,
}

impl Stages {
    /// Every block on `device`.
    pub(crate) fn single(device: &Device, blocks: usize) -> Self {
        Self { devices: vec![device.clone()], of_block: vec![0; blocks] }
    }

    /// The stages of `split` (empty: every block on `first`, the device the embedding is on).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the shares do not cover `0..blocks` in order without gaps,
    /// [`Error::DeviceUnavailable`] for a device that cannot be opened.
    pub(crate) fn open(first: &Device, split: &[BlockShare], blocks: usize) -> Result<Self> {
        if split.is_empty() {
            return Ok(Self::single(first, blocks));
        }
        let mut next = 0;
        let mut devices: Vec<Device> = Vec::new();
        let mut of_block = Vec::with_capacity(blocks);
        for s in split {
            if s.first != next || s.last < s.first || s.last >= blocks {
                return Err(Error::invalid(
                    "placement",
                    format!(
                        "blocks {}..={} on {}: the shares must cover blocks 0..={} in order (next expected: {next})",
                        s.first,
                        s.last,
                        s.device,
                        blocks.saturating_sub(1)
                    ),
                ));
            }
            // One stage per share, also for two shares on one device (then nothing moves).
            devices.push(s.device.open()?);
            of_block.extend(std::iter::repeat_n(devices.len() - 1, s.last - s.first + 1));
            next = s.last + 1;
        }
        if next != blocks {
            return Err(Error::invalid(
                "placement",
                format!("the shares end at block {}; the model has blocks 0..={}", next.saturating_sub(1), blocks - 1),
            ));
        }
        Ok(Self { devices, of_block })
    }

    fn of(&self, block: usize) -> &Device {
        &self.devices[self.of_block[block]]
    }

    /// The weights of `block` on its device.
    pub(crate) fn block_vb<'a>(&self, body: &VarBuilder<'a>, block: usize) -> VarBuilder<'a> {
        body.clone().set_device(self.of(block).clone())
    }

    /// The device of the last block (the final norm and the output head live there).
    pub(crate) fn last(&self) -> &Device {
        self.devices.last().expect("at least one stage")
    }

    /// Moves the hidden state `x` onto `block`'s device when it is elsewhere.
    pub(crate) fn enter(&self, block: usize, x: Tensor) -> candle_core::Result<Tensor> {
        let d = self.of(block);
        if x.device().same_device(d) { Ok(x) } else { x.to_device(d) }
    }

    /// `step` (built on the first device) copied to every stage's device.
    pub(crate) fn steps<'a>(&self, step: Step<'a>) -> candle_core::Result<Vec<Step<'a>>> {
        let mut out = Vec::with_capacity(self.devices.len());
        for d in &self.devices[1..] {
            let mv = |t: &Tensor| t.to_device(d);
            let rows =
                |r: &RopeRows| -> candle_core::Result<RopeRows> { Ok(RopeRows { cos: mv(&r.cos)?, sin: mv(&r.sin)? }) };
            out.push(Step {
                cfg: step.cfg,
                rope: rows(&step.rope)?,
                local_rope: step.local_rope.as_ref().map(rows).transpose()?,
                decode: step.decode.as_ref().map(|s| s.to_device(d)).transpose()?,
                chunk_bytes: step.chunk_bytes,
            });
        }
        out.insert(0, step);
        Ok(out)
    }

    /// The step of `block`'s device among [`Stages::steps`].
    pub(crate) fn step_of<'s, 'a>(&self, steps: &'s [Step<'a>], block: usize) -> &'s Step<'a> {
        &steps[self.of_block[block]]
    }
}

/// `"cuda:N"` or `"cpu"` as a candle device.
///
/// # Errors
/// [`Error::InvalidInput`] for another name.
pub fn device_of(name: &str) -> Result<CandleDevice> {
    name.parse()
}

/// One worker's options: its first share's device, its shares as the split.
fn worker_options(
    base: &CandleOptions,
    shares: &[&Placement],
    map: &dyn Fn(&str) -> Result<CandleDevice>,
) -> Result<CandleOptions> {
    let split = shares
        .iter()
        .map(|p| Ok(BlockShare::new(map(&p.device)?, p.layers[0], p.layers[1])))
        .collect::<Result<Vec<_>>>()?;
    let first = split.first().ok_or_else(|| Error::invalid("placement", "a worker without devices"))?.device;
    Ok(base.clone().with_device(first).with_split(split))
}

/// Opens the model of `folder` as the plan places it: each worker (its shares in layer order)
/// is one [`CandleBackend`] whose blocks live on the shares' devices; several workers are
/// data-parallel replicas. `map` turns a plan device name into a candle device
/// ([`device_of`]; a test may map every name to the CPU).
///
/// # Errors
/// [`Error::InvalidInput`] for an empty placement or shares that do not cover the model's
/// blocks; [`CandleBackend::load`]'s errors.
pub fn open_placement(
    folder: &CandleFolder,
    base: &CandleOptions,
    placement: &[Placement],
    map: &dyn Fn(&str) -> Result<CandleDevice>,
) -> Result<CandleReplicas> {
    let mut workers: BTreeMap<usize, Vec<&Placement>> = BTreeMap::new();
    for p in placement {
        workers.entry(p.worker).or_default().push(p);
    }
    if workers.is_empty() {
        return Err(Error::invalid("placement", "no device to extract on"));
    }
    let replicas = workers
        .values()
        .map(|shares| CandleBackend::load_folder(folder, worker_options(base, shares, map)?))
        .collect::<Result<Vec<_>>>()?;
    CandleReplicas::new(replicas)
}

/// Data-parallel replicas of one model (each maybe split over devices): a request's inputs
/// are sorted by length as one backend sorts them, cut into micro-batches of
/// `min(batch_size, ⌈n / replicas⌉)` and spread round-robin over the replicas, which run at
/// once. Each micro-batch is exactly what one backend would run at that batch size, so the
/// values are those of one device at that batch size, bit for bit. Generation uses the first
/// replica.
#[derive(Debug, Clone)]
pub struct CandleReplicas {
    replicas: Vec<CandleBackend>,
}

impl CandleReplicas {
    /// Replicas of one model.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for none, or replicas of different models.
    pub fn new(replicas: Vec<CandleBackend>) -> Result<Self> {
        let first = replicas.first().ok_or_else(|| Error::invalid("replicas", "none"))?;
        let id = first.inner.id.clone();
        if let Some(other) = replicas.iter().find(|r| r.inner.id != id) {
            return Err(Error::invalid("replicas", format!("{} is not {}", other.inner.id.id, id.id)));
        }
        Ok(Self { replicas })
    }
    /// The replicas.
    pub fn replicas(&self) -> &[CandleBackend] {
        &self.replicas
    }
    /// The first replica (generation runs there).
    pub fn first(&self) -> &CandleBackend {
        &self.replicas[0]
    }
}

#[async_trait]
impl ActivationExtractor for CandleReplicas {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        let first = self.first();
        if self.replicas.len() == 1 || request.positions == Positions::All {
            return first.extract(request).await;
        }
        request.validate(&first.inner.info)?;
        let ids: Vec<Vec<u32>> = match &request.inputs {
            Inputs::Texts(t) => {
                t.iter().map(|t| first.inner.tokenize_with(t, request.special_tokens)).collect::<Result<_>>()?
            }
            Inputs::TokenIds(ids) => ids.clone(),
        };
        let n = ids.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let batch = request.batch_size.unwrap_or(first.inner.options.default_batch_size).max(1);
        let micro = batch.min(n.div_ceil(self.replicas.len())).max(1);
        let chunks: Vec<&[usize]> = order.chunks(micro).collect();
        let runs = self.replicas.iter().enumerate().map(|(r, replica)| {
            let mine: Vec<(usize, &[usize])> =
                chunks.iter().copied().enumerate().skip(r).step_by(self.replicas.len()).collect();
            let (ids, request) = (&ids, &request);
            async move {
                let mut out = Vec::with_capacity(mine.len());
                for (k, rows) in mine {
                    let mut part = request.rows(rows);
                    part.inputs = Inputs::TokenIds(rows.iter().map(|&i| ids[i].clone()).collect());
                    out.push((k, replica.extract(part).await?));
                }
                Ok::<_, Error>(out)
            }
        });
        let mut parts: Vec<(usize, Activations)> = Vec::with_capacity(chunks.len());
        for r in futures::future::join_all(runs).await {
            parts.extend(r?);
        }
        parts.sort_by_key(|(k, _)| *k);
        Ok(scatter(&parts, &chunks, n, request.positions))
    }

    fn model_info(&self) -> ModelInfo {
        self.first().model_info()
    }

    fn capabilities(&self) -> Capabilities {
        self.first().capabilities()
    }

    fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        ActivationExtractor::tokenize(self.first(), text, special)
    }

    fn release_memory(&self) {
        self.replicas.iter().for_each(ActivationExtractor::release_memory);
    }
}

/// The micro-batches' rows (`chunks[k]` lists the input rows of `parts[k]`) back in input order.
fn scatter(parts: &[(usize, Activations)], chunks: &[&[usize]], n: usize, positions: Positions) -> Activations {
    let first = &parts[0].1.layers;
    let widths: Vec<usize> = first.iter().map(|l| l.tensor.shape[1..].iter().product()).collect();
    let mut data: Vec<Vec<f32>> = widths.iter().map(|w| vec![0f32; n * w]).collect();
    let mut token_counts = vec![0; n];
    for ((_, acts), rows) in parts.iter().zip(chunks) {
        for (j, l) in acts.layers.iter().enumerate() {
            let w = widths[j];
            for (r, &i) in rows.iter().enumerate() {
                data[j][i * w..(i + 1) * w].copy_from_slice(&l.tensor.data[r * w..(r + 1) * w]);
            }
        }
        for (r, &i) in rows.iter().enumerate() {
            token_counts[i] = acts.token_counts[r];
        }
    }
    let tensors = first
        .iter()
        .zip(data)
        .map(|(l, d)| {
            let shape = [vec![n], l.tensor.shape[1..].to_vec()].concat();
            LayerActivations::new(l.site, l.layer, probe_core::Tensor::new(shape, d))
        })
        .collect();
    Activations::new(tensors, positions, None, token_counts)
}
