//! [`CandleBackend`]: loading a Hugging Face model folder, and the trait implementations.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use candle_nn::VarBuilder;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Generation, GenerationRequest, Generator,
    ModelId, ModelInfo, Result, SpecialTokens, StateCapture,
};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::config::{ModelConfig, generation_eos};
use super::model::Decoder;
use super::options::CandleOptions;
use super::placement::Stages;
use super::weights::WeightIndex;

/// A model loaded in process with candle: extracts hidden states and generates text.
///
/// Cheap to clone (the model is shared). Compute runs on tokio's blocking pool.
#[derive(Clone)]
pub struct CandleBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: ModelId,
    pub(crate) info: ModelInfo,
    pub(crate) decoder: Decoder,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) eos: Vec<u32>,
    pub(crate) options: CandleOptions,
    /// Extraction forward passes run (one per batch, every requested site and layer read in it).
    pub(crate) forward_passes: AtomicU64,
    /// Positions those passes and generation's prefills ran, padding and shared prefixes
    /// (once each) included.
    pub(crate) positions_run: AtomicU64,
}

impl std::fmt::Debug for CandleBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleBackend")
            .field("model", &self.inner.id.id)
            .field("revision", &self.inner.id.revision)
            .field("architecture", &self.inner.info.architecture)
            .field("dtype", &self.inner.info.dtype)
            .field("device", &self.inner.options.device)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path.display(), e))
}

/// The weight files of a folder: those of `model.safetensors.index.json`, else `model.safetensors`,
/// else every `*.safetensors`, sorted.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = read(&index)?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| Error::invalid(format!("{}", index.display()), e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::invalid(format!("weight_map in {}", index.display()), "missing or not an object"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|f| f.as_str())
            .map(|f| dir.join(f))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        files.sort();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir.display(), e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid("model folder", format!("{} has no *.safetensors weights", dir.display())));
    }
    Ok(files)
}

/// The header of a safetensors file (8-byte length + JSON), read without the tensors.
fn safetensors_header(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let size = f.metadata().map_err(|e| Error::io(path.display(), e))?.len();
    if size < 8 {
        return Err(Error::invalid("safetensors file", format!("{} has {size} bytes, too short", path.display())));
    }
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path.display(), e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || n > size.saturating_sub(8) {
        return Err(Error::invalid(
            "safetensors header",
            format!("{} declares {n} header bytes; the file has {size} bytes", path.display()),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path.display(), e))?;
    Ok([len.to_vec(), header].concat())
}

/// Checks a safetensors header against its file: every tensor's `data_offsets` within the
/// data and, for the common dtypes, matching its shape. Returns the header (its length prefix
/// and JSON).
fn check_safetensors(path: &Path) -> Result<Vec<u8>> {
    let header = safetensors_header(path)?;
    let size = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?.len();
    let data_len = size - header.len() as u64;
    let bad = |why: String| Error::invalid("safetensors header", format!("{}: {why}", path.display()));
    let v: serde_json::Value = serde_json::from_slice(&header[8..]).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    for (name, t) in map.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let offsets: Option<Vec<u64>> =
            t.get("data_offsets").and_then(|o| o.as_array()).map(|a| a.iter().filter_map(|x| x.as_u64()).collect());
        let [start, end] = offsets.as_deref().unwrap_or_default() else {
            return Err(bad(format!("tensor {name:?} has no valid data_offsets")));
        };
        if start > end || *end > data_len {
            return Err(bad(format!(
                "tensor {name:?} has data_offsets [{start}, {end}], past the end of the {data_len} data bytes"
            )));
        }
        let elem = match t.get("dtype").and_then(|d| d.as_str()) {
            Some("F64" | "I64" | "U64") => Some(8),
            Some("F32" | "I32" | "U32") => Some(4),
            Some("F16" | "BF16" | "I16" | "U16") => Some(2),
            Some("U8" | "I8" | "BOOL" | "F8_E4M3" | "F8_E5M2") => Some(1),
            _ => None,
        };
        let shape: Option<Vec<u64>> =
            t.get("shape").and_then(|s| s.as_array()).map(|a| a.iter().filter_map(|x| x.as_u64()).collect());
        if let (Some(elem), Some(shape)) = (elem, shape) {
            let want = shape.iter().try_fold(elem, |acc: u64, &d| acc.checked_mul(d));
            if want != Some(end - start) {
                return Err(bad(format!(
                    "tensor {name:?} of shape {shape:?} needs {} bytes, its data_offsets span {}",
                    want.map_or("too many".to_owned(), |w| w.to_string()),
                    end - start
                )));
            }
        }
    }
    Ok(header)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl CandleBackend {
    /// Loads the model folder `dir` (`config.json`, `model.safetensors` or shards with
    /// `model.safetensors.index.json`, `tokenizer.json`).
    ///
    /// The model id is `dir` as given; the revision is the sha256 of `config.json` and the
    /// safetensors headers (names, dtypes, shapes and offsets of every tensor).
    ///
    /// # Errors
    /// [`Error::Io`] for unreadable files, [`Error::InvalidInput`] for a bad `config.json`,
    /// tokenizer or missing tensor (named), [`Error::NotSupported`] for an architecture
    /// without a spec, [`Error::DeviceUnavailable`] for a device that cannot be opened.
    pub fn load(dir: &Path, options: CandleOptions) -> Result<CandleBackend> {
        Self::load_folder(&CandleFolder::read(dir)?, options)
    }

    /// Loads the weights of a folder already read ([`CandleFolder`]): its config, headers and
    /// tokenizer are not read again.
    ///
    /// # Errors
    /// As [`CandleBackend::load`] for the weights and the device.
    pub fn load_folder(folder: &CandleFolder, options: CandleOptions) -> Result<CandleBackend> {
        let CandleFolder { dir, cfg, weights, revision, tokenizer, eos, .. } = folder;
        let (dir, cfg, tokenizer, eos) = (dir.as_path(), cfg.clone(), tokenizer.clone(), eos.clone());
        let device = options.device.open()?;
        let dtype = options.dtype.to_candle();
        // Only the tensors the decoder asks for are read (a partial load reads a part).
        let vb = VarBuilder::from_backend(Box::new(weights.reader()?), dtype, device.clone());
        let info = folder.model_info(&options);
        let stages =
            Stages::open(&device, &options.split, options.blocks.map_or(cfg.num_layers, |n| n.min(cfg.num_layers)))?;
        let decoder = Decoder::load(&vb, weights, cfg, stages, options.blocks)
            .map_err(|e| Error::invalid(format!("weights in {}", dir.display()), e))?
            .with_attention_chunk_bytes(options.attention_chunk_bytes);
        let id = ModelId::new(dir.to_string_lossy(), revision.clone());
        Ok(CandleBackend {
            inner: Arc::new(Inner {
                id,
                info,
                decoder,
                tokenizer,
                eos,
                options,
                forward_passes: AtomicU64::new(0),
                positions_run: AtomicU64::new(0),
            }),
        })
    }

    /// The [`ModelInfo`] that [`CandleBackend::load`] with `options` reports, reading only
    /// `config.json`, the safetensors headers and `tokenizer.json` (no weights, no device):
    /// the cache keys of a model without loading it (`probe merge`).
    ///
    /// # Errors
    /// As [`CandleBackend::load`] for the files it reads.
    pub fn model_info_of(dir: &Path, options: &CandleOptions) -> Result<ModelInfo> {
        Ok(CandleFolder::read(dir)?.model_info(options))
    }

    /// Checks the model folder `dir` as [`CandleBackend::load`] would, reading only
    /// `config.json`, the safetensors headers and the tokenizer (no weights): for refusing a
    /// bad folder before any work starts.
    ///
    /// # Errors
    /// [`Error::Io`] naming an unreadable `config.json`; [`Error::InvalidInput`] naming the
    /// file: a missing `tokenizer.json`, a missing or bad field of `config.json`, no weights, a safetensors
    /// header that is too long for its file or whose offsets lie past its end or disagree with
    /// a tensor's shape; [`Error::NotSupported`] for an architecture without a spec.
    pub fn check(dir: &Path) -> Result<()> {
        CandleFolder::read(dir).map(drop)
    }

    /// The extraction forward passes run since loading: one per batch, whatever the number of
    /// sites and layers it reads (for checks that they share a pass).
    pub fn forward_passes(&self) -> u64 {
        self.inner.forward_passes.load(Ordering::Relaxed)
    }

    /// The positions extraction passes and generation's prefills ran since loading: each
    /// batch's rows times its longest input (padding included), each shared prefix once (what
    /// sharing saves shows here).
    pub fn positions_run(&self) -> u64 {
        self.inner.positions_run.load(Ordering::Relaxed)
    }

    /// The options the backend was loaded with.
    pub fn options(&self) -> &CandleOptions {
        &self.inner.options
    }

    /// Tokenises `text` as extraction and generation do (special tokens added).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the tokenizer fails on `text`.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.inner.tokenize(text)
    }
}

impl Inner {
    pub(crate) fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenize_with(text, SpecialTokens::Add)
    }

    /// Tokenises `text`, adding the special tokens or not (a chat template's rendering).
    pub(crate) fn tokenize_with(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let enc =
            self.tokenizer.encode(text, special.add()).map_err(|e| Error::invalid("text", format!("{text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Refuses sequences longer than the rotary table.
    pub(crate) fn check_length(&self, i: usize, len: usize) -> Result<()> {
        let max = self.decoder.cfg.max_position_embeddings;
        if len == 0 {
            return Err(Error::invalid("inputs", format!("input #{i} has no tokens")));
        }
        if len > max {
            return Err(Error::invalid(
                "inputs",
                format!("input #{i} needs {len} positions, more than the model's max_position_embeddings = {max}"),
            ));
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::backend("candle", e))?
}

#[async_trait]
impl ActivationExtractor for CandleBackend {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        request.validate(&self.inner.info)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.extract(&request)).await
    }

    fn model_info(&self) -> ModelInfo {
        self.inner.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.token_id_input = true;
        c.all_positions = true;
        c.early_stop = true;
        c
    }

    fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        self.inner.tokenize_with(text, special)
    }

    fn release_memory(&self) {
        super::oom::release(self.inner.decoder.device());
    }
}

impl CandleBackend {
    /// A generation request this backend serves: valid, and for this model.
    fn check_request(&self, request: &GenerationRequest) -> Result<()> {
        request.validate()?;
        if request.model != self.inner.id.id {
            return Err(Error::invalid(
                "model",
                format!("{:?} is not served here (this backend serves {:?})", request.model, self.inner.id.id),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Generator for CandleBackend {
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        self.check_request(&request)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.generate(&request)).await
    }

    /// The model and its weights' revision, with the compute dtype: completions generated in
    /// bf16 are not those of f32, so their cache entries differ (`<revision>+bf16`; f32 keeps
    /// the bare revision).
    fn model_id(&self) -> ModelId {
        generation_id(&self.inner.id, self.inner.options.dtype.as_str())
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.sampling = true;
        c.seeded_sampling = true;
        c.stop_strings = true;
        c.token_ids = true;
        c.multiple_samples = true;
        c.capture_states = self.inner.decoder.check_loaded(None).is_ok();
        c
    }

    /// Reads the states in the same prefill and decode steps (one more batched step feeds
    /// each completion's final token).
    async fn generate_capturing(
        &self,
        request: GenerationRequest,
        capture: StateCapture,
    ) -> Result<(Vec<Generation>, Activations)> {
        self.check_request(&request)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.generate_capturing(&request, &capture)).await
    }

    /// This model (as its extractor reports it), when it was loaded whole.
    fn states_model(&self) -> Option<ModelInfo> {
        self.inner.decoder.check_loaded(None).is_ok().then(|| self.inner.info.clone())
    }
}

/// A model folder as candle reads it before loading weights: `config.json` (parsed), the
/// weight files and their checked safetensors headers, the revision they make, the tokenizer
/// and the end-of-sequence ids. Read once ([`CandleFolder::read`]) and handed to
/// [`CandleBackend::load_folder`] for every worker a plan places, and to the session's
/// planner and prompt renderer.
#[derive(Clone)]
pub struct CandleFolder {
    dir: PathBuf,
    config_text: String,
    cfg: ModelConfig,
    /// Every tensor of the weight files, from their checked headers.
    weights: Arc<WeightIndex>,
    revision: String,
    tokenizer: Tokenizer,
    tokenizer_desc: String,
    eos: Vec<u32>,
}

impl std::fmt::Debug for CandleFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleFolder")
            .field("dir", &self.dir)
            .field("architecture", &self.cfg.spec.name)
            .field("revision", &self.revision)
            .field("tensors", &self.weights)
            .finish_non_exhaustive()
    }
}

impl CandleFolder {
    /// Reads `dir`: `config.json`, the safetensors headers (checked against their files: see
    /// [`CandleBackend::check`]), `tokenizer.json` and `generation_config.json`'s extra
    /// end-of-sequence ids. No weights.
    ///
    /// # Errors
    /// As [`CandleBackend::check`]; a tokenizer that cannot be parsed.
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_bytes = std::fs::read(&config_path).map_err(|e| Error::io(config_path.display(), e))?;
        Self::with_config(dir, String::from_utf8_lossy(&config_bytes).into_owned())
    }

    /// As [`CandleFolder::read`], with `config.json`'s text already read.
    ///
    /// # Errors
    /// As [`CandleFolder::read`].
    pub fn with_config(dir: &Path, config_text: String) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg = ModelConfig::parse(&config_text, &config_path)?;
        let mut weights = WeightIndex::default();
        let mut rev = Sha256::new();
        rev.update(config_text.as_bytes());
        for f in weight_files(dir)? {
            rev.update(f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
            let header = check_safetensors(&f)?;
            rev.update(&header);
            weights.add(&f, &header)?;
        }
        let weights = Arc::new(weights);
        let revision = hex(&rev.finalize());

        let tok_path = dir.join("tokenizer.json");
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::invalid("model", format!("{}: missing", tok_path.display())),
            _ => Error::io(tok_path.display(), e),
        })?;
        let tokenizer = Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| Error::invalid(format!("tokenizer {}", tok_path.display()), e))?;
        let tokenizer_desc = format!("add_special_tokens=true;sha256={}", hex(&Sha256::digest(&tok_bytes)));

        let mut eos = cfg.eos_token_ids.clone();
        if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
            for id in generation_eos(&text) {
                if !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        Ok(Self { dir: dir.to_path_buf(), config_text, cfg, weights, revision, tokenizer, tokenizer_desc, eos })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json` as read.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// The tokenizer of `tokenizer.json`.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Refuses a site the model lacks at a block `reads` (per site, its layers) reads it (a
    /// router of a dense model or block, `resid_mid` of parallel blocks), naming it, from
    /// `config.json` alone: before anything is generated or loaded. Extraction checks the same.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the site.
    pub fn check_sites(&self, reads: &[(probe_core::Site, Vec<usize>)]) -> Result<()> {
        super::extract::check_sites(&self.cfg, self.cfg.spec.name, reads)
    }

    /// The [`ModelInfo`] that [`CandleBackend::load_folder`] with `options` reports.
    pub fn model_info(&self, options: &CandleOptions) -> ModelInfo {
        let cfg = &self.cfg;
        ModelInfo::new(
            ModelId::new(self.dir.to_string_lossy(), self.revision.clone()),
            cfg.spec.name,
            cfg.num_layers,
            cfg.hidden_size,
            cfg.vocab_size,
        )
        .with_dtype(options.dtype.as_str())
        .with_tokenizer(self.tokenizer_desc.clone())
        .with_heads(cfg.num_heads, cfg.head_dim)
        .with_experts(cfg.moe.as_ref().map_or(0, |m| m.num_experts))
    }
}

/// The generator's identity for cache keys: the weights' revision, plus the compute dtype
/// when it is not f32.
fn generation_id(id: &ModelId, dtype: &str) -> ModelId {
    let mut id = id.clone();
    if dtype != "f32" {
        id.revision = format!("{}+{dtype}", id.revision);
    }
    id
}
