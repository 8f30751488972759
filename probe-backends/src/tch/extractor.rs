//! [`TchExtractor`]: [`ActivationExtractor`] over a TorchScript export.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, ModelInfo, Result, Site, SpecialTokens,
};
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::exported::{ExportDir, PaddedBatch};

const BACKEND: &str = "tch";
const SCRIPT: &str = "export_torchscript.py";

/// Where the module runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TchDevice {
    /// CUDA device 0 when libtorch has CUDA, a GPU is present and the module was traced on
    /// CUDA (`--device cuda`); the CPU otherwise.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by index.
    Cuda(usize),
}

/// Options of [`TchExtractor::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TchOptions {
    /// Where the module runs.
    pub device: TchDevice,
    /// Inputs per forward pass when a request does not say (default 8).
    pub default_batch_size: Option<usize>,
}

impl TchOptions {
    /// Sets the device.
    pub fn with_device(mut self, device: TchDevice) -> Self {
        self.device = device;
        self
    }
    /// Sets the batch size used when a request gives none.
    pub fn with_default_batch_size(mut self, n: usize) -> Self {
        self.default_batch_size = Some(n);
        self
    }
}

struct Inner {
    export: ExportDir,
    module: CModule,
    device: Device,
    cuda_available: bool,
    options: TchOptions,
}

/// Extracts hidden states with libtorch from a folder written by
/// `scripts/python/export_torchscript.py`.
///
/// Values and numbering are transformers' `output_hidden_states` (the module is a trace of
/// transformers' own forward pass). Sites inside blocks ([`Site`]) are read from an export made
/// with `--sites`, those its `export.json` lists; another site is refused, naming the folder.
/// The whole stack of hidden states is computed per batch, so [`Capabilities::early_stop`] is
/// false. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TchExtractor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TchExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TchExtractor")
            .field("model", &self.inner.info().id.id)
            .field("revision", &self.inner.info().id.revision)
            .field("device", &self.device())
            .field("cuda_available", &self.inner.cuda_available)
            .finish()
    }
}

impl Inner {
    fn info(&self) -> &ModelInfo {
        &self.export.info
    }
}

fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        _ => "cpu".into(),
    }
}

/// Converts a libtorch error: a device out of memory becomes [`Error::OutOfMemory`].
fn torch_error(e: tch::TchError, device: Device) -> Error {
    let msg = e.to_string();
    if msg.contains("out of memory") || msg.contains("CUDA error: out of memory") {
        Error::OutOfMemory { device: device_name(device), requested_bytes: None }
    } else {
        Error::backend(BACKEND, msg)
    }
}

/// Loads `libtorch_cuda.so` (found through `LD_LIBRARY_PATH`) once per process. libtorch keeps
/// its CUDA backend in that library, and linkers using `--as-needed` drop it from binaries that
/// reference none of its symbols, so without this `tch::Cuda::is_available()` is false even on
/// a GPU machine. Returns whether it is loaded; false (CPU only) is not an error.
fn load_torch_cuda() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        // SAFETY: dlopen with a NUL-terminated name; the handle is kept for the process's life
        // (never closed), as libtorch expects of its CUDA backend.
        let handle = unsafe { libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            tracing::debug!("tch: libtorch_cuda.so not loaded; CUDA unavailable");
        }
        !handle.is_null()
    })
}

impl TchExtractor {
    /// Loads the export folder `dir` (`export.json`, `model.pt`, `tokenizer.json`).
    ///
    /// The model id is `dir` as given; the revision is the sha256 of `export.json`, which
    /// records the source model's revision (its config and safetensors headers), the dtype and
    /// the exporter. Logs (and [`TchExtractor::cuda_available`] returns) whether libtorch sees
    /// a CUDA device.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a folder without an export (naming the script that makes
    /// it) or a bad tokenizer, [`Error::Io`] for unreadable files,
    /// [`Error::DeviceUnavailable`] for a CUDA device that libtorch cannot see, and a
    /// [`Error::Backend`] when libtorch cannot load the module.
    pub fn load(dir: &Path, options: TchOptions) -> Result<TchExtractor> {
        let export = ExportDir::open(dir, "torchscript", SCRIPT)?;
        let cuda_available = options.device != TchDevice::Cpu && load_torch_cuda() && tch::Cuda::is_available();
        let cuda_count = if cuda_available { tch::Cuda::device_count() as usize } else { 0 };
        let device = match options.device {
            TchDevice::Cpu => Device::Cpu,
            TchDevice::Cuda(i) if i < cuda_count => Device::Cuda(i),
            TchDevice::Cuda(i) => {
                return Err(Error::DeviceUnavailable(format!(
                    "cuda:{i}: libtorch sees {cuda_count} CUDA device(s) (CUDA available: {cuda_available})"
                )));
            }
            TchDevice::Auto if cuda_available && export.meta.device == "cuda" => Device::Cuda(0),
            TchDevice::Auto => Device::Cpu,
        };
        tracing::info!(
            model = %dir.display(),
            cuda_available,
            cuda_devices = cuda_count,
            device = %device_name(device),
            "tch: libtorch loaded"
        );
        if cuda_available && device == Device::Cpu && options.device == TchDevice::Auto {
            tracing::warn!(
                "tch: a GPU is available but {} was traced on the CPU; re-export with --device cuda to use it",
                dir.display()
            );
        }
        let mut module = CModule::load_on_device(&export.model_file, device)
            .map_err(|e| Error::backend(BACKEND, format!("cannot load {}: {e}", export.model_file.display())))?;
        module.set_eval();
        Ok(TchExtractor { inner: Arc::new(Inner { export, module, device, cuda_available, options }) })
    }

    /// True when libtorch reported a usable CUDA device at load (not probed, so false, when
    /// loaded with [`TchDevice::Cpu`]).
    pub fn cuda_available(&self) -> bool {
        self.inner.cuda_available
    }

    /// The device the module runs on (`cpu`, `cuda:0` …).
    pub fn device(&self) -> String {
        device_name(self.inner.device)
    }

    /// The options the extractor was loaded with.
    pub fn options(&self) -> &TchOptions {
        &self.inner.options
    }
}

impl Inner {
    /// One forward pass: each site of `reads` at its layers (blocks for a site inside blocks),
    /// per site and layer `[batch, seq, width]` f32. The module returns the hidden states
    /// stacked, or, exported with `--sites`, a tuple of them and each further site's blocks
    /// stacked, in `export.json`'s `sites` order.
    fn forward(&self, batch: &PaddedBatch, reads: &[(Site, Vec<usize>)]) -> Result<Vec<Vec<Vec<f32>>>> {
        let _guard = tch::no_grad_guard();
        let shape = [batch.batch as i64, batch.seq as i64];
        let err = |e| torch_error(e, self.device);
        let ids = Tensor::from_slice(&batch.ids).view(shape).to_device(self.device);
        let mask = Tensor::from_slice(&batch.mask).view(shape).to_device(self.device);
        let output = self.module.forward_is(&[IValue::Tensor(ids), IValue::Tensor(mask)]).map_err(err)?;
        let sites = self.export.meta.sites();
        let info = self.info();
        let mut out = Vec::with_capacity(reads.len());
        for (site, layers) in reads {
            let index = sites.iter().position(|s| s == site).unwrap_or(0);
            let stacked = match &output {
                IValue::Tensor(t) if index == 0 => t,
                IValue::Tuple(items) if index < items.len() => match &items[index] {
                    IValue::Tensor(t) => t,
                    other => return Err(Error::backend(BACKEND, format!("output {index} of the module is {other:?}"))),
                },
                _ => {
                    return Err(Error::backend(
                        BACKEND,
                        format!("the module returned no output for site {site} (export.json lists it at {index})"),
                    ));
                }
            };
            let count = if site.in_block() { info.num_layers } else { info.num_layers + 1 };
            let width = info.width(*site);
            let want = [count as i64, shape[0], shape[1], width as i64];
            if stacked.size() != want {
                return Err(Error::backend(
                    BACKEND,
                    format!("the module returned {site} of shape {:?}, expected {want:?}", stacked.size()),
                ));
            }
            let index =
                Tensor::from_slice(&layers.iter().map(|&l| l as i64).collect::<Vec<_>>()).to_device(self.device);
            let picked = stacked
                .f_index_select(0, &index)
                .and_then(|t| t.f_to_kind(Kind::Float))
                .and_then(|t| t.f_to_device(Device::Cpu))
                .map_err(err)?
                .contiguous();
            let per = batch.batch * batch.seq * width;
            let mut flat = vec![0f32; per * layers.len()];
            picked.f_copy_data(&mut flat, per * layers.len()).map_err(err)?;
            out.push(flat.chunks_exact(per).map(<[f32]>::to_vec).collect());
        }
        Ok(out)
    }
}

#[async_trait]
impl ActivationExtractor for TchExtractor {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        let inner = Arc::clone(&self.inner);
        let default_batch = inner.options.default_batch_size.unwrap_or(8);
        tokio::task::spawn_blocking(move || {
            inner.export.extract(&request, default_batch, |batch, reads| inner.forward(batch, reads))
        })
        .await
        .map_err(|e| Error::backend(BACKEND, format!("extraction task failed: {e}")))?
    }

    fn model_info(&self) -> ModelInfo {
        self.inner.info().clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.token_id_input = true;
        c.all_positions = true;
        c
    }

    fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        self.inner.export.tokenize(text, special)
    }
}
