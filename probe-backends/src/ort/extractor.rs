//! [`OrtExtractor`]: [`ActivationExtractor`] over an ONNX export.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::Tensor as OrtTensor;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, ModelInfo, Result, Site, SpecialTokens,
};

use super::runtime::{self, BACKEND};
use crate::exported::{ExportDir, PaddedBatch};

const SCRIPT: &str = "export_onnx.py";

/// Options of [`OrtExtractor::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OrtOptions {
    /// The `libonnxruntime` to load; `None` reads `ORT_DYLIB_PATH`. The first library loaded
    /// in a process is the one every session uses.
    pub library: Option<PathBuf>,
    /// Threads ONNX Runtime uses inside one operator; `None` lets it choose (one per core).
    pub intra_threads: Option<usize>,
    /// Inputs per forward pass when a request does not say (default 8).
    pub default_batch_size: Option<usize>,
}

impl OrtOptions {
    /// Sets the ONNX Runtime library to load.
    pub fn with_library(mut self, path: impl Into<PathBuf>) -> Self {
        self.library = Some(path.into());
        self
    }
    /// Sets the number of intra-operator threads.
    pub fn with_intra_threads(mut self, n: usize) -> Self {
        self.intra_threads = Some(n);
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
    session: Mutex<Session>,
    provider: &'static str,
    library: PathBuf,
    options: OrtOptions,
}

/// Extracts hidden states with ONNX Runtime from a folder written by
/// `scripts/python/export_onnx.py`.
///
/// Values and numbering are transformers' `output_hidden_states` (the graph is an export of
/// transformers' own forward pass). Sites inside blocks ([`Site`]) are read from an export made
/// with `--sites` (outputs `<site>_<block>`), those its `export.json` lists; another site is
/// refused, naming the folder. Only the requested outputs are fetched, but ONNX Runtime may still run the whole graph, so [`Capabilities::early_stop`] is
/// false. Cheap to clone (shared state); runs are serialised on one session.
#[derive(Clone)]
pub struct OrtExtractor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OrtExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtExtractor")
            .field("model", &self.inner.export.info.id.id)
            .field("revision", &self.inner.export.info.id.revision)
            .field("provider", &self.inner.provider)
            .field("library", &self.inner.library)
            .finish()
    }
}

impl OrtExtractor {
    /// Loads the export folder `dir` (`export.json`, `model.onnx`, `tokenizer.json`), loading
    /// ONNX Runtime first if this process has not yet.
    ///
    /// The model id is `dir` as given; the revision is the sha256 of `export.json`, which
    /// records the source model's revision (its config and safetensors headers), the dtype and
    /// the exporter. The execution provider in use is logged and returned by
    /// [`OrtExtractor::provider`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a folder without an export (naming the script that makes
    /// it) or a bad tokenizer, [`Error::Io`] for unreadable files, [`Error::Backend`] when the
    /// ONNX Runtime library is not given, missing or unloadable (the message says where to
    /// find it), or the model does not open.
    pub fn load(dir: &Path, options: OrtOptions) -> Result<OrtExtractor> {
        let (env, library) = runtime::environment(options.library.as_deref())?;
        let export = ExportDir::open(dir, "onnx", SCRIPT)?;
        let (session, provider) =
            runtime::open_session(&env, &export.model_file, options.intra_threads, cfg!(feature = "cuda"))?;
        let l = export.info.num_layers;
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let expected = export.meta.sites().into_iter().flat_map(|site| {
            let count = if site.in_block() { l } else { l + 1 };
            (0..count).map(move |layer| output_name(site, layer))
        });
        if let Some(missing) = expected.into_iter().find(|w| !names.contains(&w.as_str())) {
            return Err(Error::invalid(
                "model folder",
                format!(
                    "{} has no output {missing} (outputs: {names:?}); re-export with scripts/python/{SCRIPT}",
                    export.model_file.display()
                ),
            ));
        }
        tracing::info!(
            model = %dir.display(),
            provider,
            library = %library.display(),
            exported_on = %export.meta.device,
            "ort: session ready"
        );
        Ok(OrtExtractor { inner: Arc::new(Inner { export, session: Mutex::new(session), provider, library, options }) })
    }

    /// The execution provider in use: `CUDAExecutionProvider` or `CPUExecutionProvider`.
    pub fn provider(&self) -> &str {
        self.inner.provider
    }

    /// The ONNX Runtime library this process loaded.
    pub fn library(&self) -> &Path {
        &self.inner.library
    }

    /// The options the extractor was loaded with.
    pub fn options(&self) -> &OrtOptions {
        &self.inner.options
    }
}

/// The ONNX output of `site` at `layer` (a block for a site inside blocks).
fn output_name(site: Site, layer: usize) -> String {
    match site {
        Site::Resid => format!("hidden_state_{layer}"),
        site => format!("{site}_{layer}"),
    }
}

fn run_error(e: ort::Error, provider: &str) -> Error {
    let msg = e.to_string();
    if msg.contains("out of memory") || msg.contains("Failed to allocate memory") {
        let device = if provider.starts_with("CUDA") { "cuda:0" } else { "cpu" };
        Error::OutOfMemory { device: device.into(), requested_bytes: None }
    } else {
        Error::backend(BACKEND, msg)
    }
}

impl Inner {
    /// One run: each site of `reads` at its layers (blocks for a site inside blocks), per site
    /// and layer `[batch, seq, width]` f32.
    fn forward(&self, batch: &PaddedBatch, reads: &[(Site, Vec<usize>)]) -> Result<Vec<Vec<Vec<f32>>>> {
        let err = |e: ort::Error| run_error(e, self.provider);
        let shape = [batch.batch, batch.seq];
        let ids = OrtTensor::from_array((shape, batch.ids.clone())).map_err(err)?;
        let mask = OrtTensor::from_array((shape, batch.mask.clone())).map_err(err)?;
        let names: Vec<Vec<String>> =
            reads.iter().map(|(site, layers)| layers.iter().map(|&l| output_name(*site, l)).collect()).collect();
        let selector = names.iter().flatten().fold(OutputSelector::no_default(), |s, n| s.with(n.as_str()));
        let options = RunOptions::new().map_err(err)?.with_outputs(selector);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run_with_options(ort::inputs!["input_ids" => ids, "attention_mask" => mask], &options)
            .map_err(err)?;
        reads
            .iter()
            .zip(&names)
            .map(|((site, _), names)| {
                let want = [batch.batch as i64, batch.seq as i64, self.export.info.width(*site) as i64];
                names
                    .iter()
                    .map(|name| {
                        let value = outputs
                            .get(name)
                            .ok_or_else(|| Error::backend(BACKEND, format!("ONNX Runtime returned no {name}")))?;
                        let (got, data) = value.try_extract_tensor::<f32>().map_err(err)?;
                        if **got != want {
                            return Err(Error::backend(
                                BACKEND,
                                format!("{name} has shape {got:?}, expected {want:?}"),
                            ));
                        }
                        Ok(data.to_vec())
                    })
                    .collect()
            })
            .collect()
    }
}

#[async_trait]
impl ActivationExtractor for OrtExtractor {
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
        self.inner.export.info.clone()
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
