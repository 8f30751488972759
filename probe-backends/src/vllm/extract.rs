//! [`VllmExtractor`]: hidden states computed by vLLM itself, over the same servers and pool
//! as [`VllmGenerator`].
//!
//! Each input is one `POST /v1/completions` (`max_tokens: 1`, the prompt as token ids, so
//! tokens and positions are exactly the in-process backends'), many in flight over all
//! servers with the generator's retries. The request says what probe wants
//! (`kv_transfer_params["probe"]`: the asked layers, the readout's token span, the final
//! norm): probe's connector on the server reduces there and writes only that
//! (`[1, layers, H]` for `last` and `mean`, `[T, layers, H]` for `all`) to a safetensors file
//! in its shared folder, named in the answer (`kv_transfer_params.hidden_states_path`); the
//! file is read under the server's lock and deleted. The last layer goes through the model's
//! own final norm on the server, read from its checkpoint (vLLM keeps it before that norm).
//!
//! The extractor generates too ([`Generator`]), one prompt per request, asking the servers to
//! keep the completion's hidden states: the extraction of that sequence then reads them
//! instead of a forward pass when its readout lies within what generation computed (the
//! prompt and every completion token but the last), see the `capture` module.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use probe_core::hf_config::HfConfig;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Generation, GenerationRequest, Generator,
    Inputs, ModelId, ModelInfo, PassReuse, Positions, Result, Span, SpecialTokens,
};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::BACKEND;
use super::LazyServers;
use super::capture::{self, Captures, DEFAULT_CAPTURE_BYTES};
use super::client::VllmGenerator;
use super::final_norm::FinalNorm;
use super::hidden::{self, Ask, HiddenStates, extraction_args};
use crate::exported::{Collector, PaddedBatch, encode_inputs};

/// Extracts hidden states with vLLM servers started with [`extraction_args`] (the launcher
/// adds them with [`super::VllmLauncherBuilder::hidden_states`]).
///
/// The model folder must be readable here too: its tokenizer, `config.json` and final norm
/// are read from it. A server that does not write hidden states is refused with the flags
/// it needs. Servers probe did not launch must share their storage folder with this
/// machine: see [`VllmExtractor::with_shared_dir`]. Servers this run launches are started
/// on first use: [`VllmExtractor::with_servers`].
#[derive(Debug)]
pub struct VllmExtractor {
    client: Arc<VllmGenerator>,
    dir: PathBuf,
    info: ModelInfo,
    tokenizer: Tokenizer,
    norm: FinalNorm,
    shared_dir: Option<PathBuf>,
    servers: Option<Arc<LazyServers>>,
    captures: Arc<Captures>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl VllmExtractor {
    /// An extractor for the model folder `dir`, served by `client`'s servers (serving it
    /// under the name `client` was built with).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file for an unreadable or bad `config.json` or
    /// `tokenizer.json`, or a folder without the final norm's weight.
    pub fn new(client: Arc<VllmGenerator>, dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config_bytes = std::fs::read(&config_path).map_err(|e| Error::io(config_path.display(), e))?;
        let named = |e: Error| Error::invalid("model", format!("{}: {e}", config_path.display()));
        let cfg = HfConfig::parse(&String::from_utf8_lossy(&config_bytes)).map_err(named)?;
        let layers = HfConfig::required(cfg.num_hidden_layers, "num_hidden_layers").map_err(named)?;
        let hidden = HfConfig::required(cfg.hidden_size, "hidden_size").map_err(named)?;
        let vocab = HfConfig::required(cfg.vocab_size, "vocab_size").map_err(named)?;
        let tok_path = dir.join("tokenizer.json");
        let tok_bytes = std::fs::read(&tok_path).map_err(|e| Error::io(tok_path.display(), e))?;
        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| Error::invalid(format!("tokenizer {}", tok_path.display()), e))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| Error::invalid(format!("tokenizer {}", tok_path.display()), e))?;
        let norm = FinalNorm::load(dir, &cfg, hidden)?;
        tracing::debug!("vllm extractor: layer {layers} goes through {} from {}", norm.name, dir.display());
        // The served weights are the folder's: its config, this backend, the tokenizer.
        let mut rev = Sha256::new();
        rev.update(&config_bytes);
        rev.update(b"vllm-hidden-states");
        let info = ModelInfo::new(
            ModelId::new(dir.to_string_lossy(), hex(&rev.finalize())),
            cfg.model_type().to_owned(),
            layers,
            hidden,
            vocab,
        )
        .with_dtype("f32")
        .with_tokenizer(format!("add_special_tokens=true;sha256={}", hex(&Sha256::digest(&tok_bytes))));
        let captures = Arc::new(Captures::new(DEFAULT_CAPTURE_BYTES));
        Ok(Self { client, dir: dir.to_owned(), info, tokenizer, norm, shared_dir: None, servers: None, captures })
    }

    /// Servers this run launched, started on the extractor's (or generator's) first request.
    pub fn with_servers(mut self, servers: Arc<LazyServers>) -> Self {
        self.servers = Some(servers);
        self
    }

    /// Bytes of generation-pass files kept for extraction at most (default
    /// [`DEFAULT_CAPTURE_BYTES`]); beyond it an input takes a forward pass of its own.
    pub fn with_capture_budget(mut self, bytes: u64) -> Self {
        self.captures = Arc::new(Captures::new(bytes));
        self
    }

    async fn started(&self) -> Result<()> {
        match &self.servers {
            Some(s) => s.ensure_started().await,
            None => Ok(()),
        }
    }

    /// The servers' storage folder as this machine sees it (a shared mount of a remote
    /// server's `shared_storage_path`): files are read here by their name. Default: the
    /// path the server answers, as it is.
    pub fn with_shared_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.shared_dir = Some(dir.into());
        self
    }

    /// The generator whose servers and pool this extractor uses.
    pub fn client(&self) -> &Arc<VllmGenerator> {
        &self.client
    }

    /// The token ids of every input, as the in-process backends tokenise them.
    fn token_ids(&self, request: &ActivationRequest) -> Result<Vec<Vec<u32>>> {
        encode_inputs(&self.tokenizer, &request.inputs, request.special_tokens)
    }

    /// The error for a server that does not run probe's connector, with the flags it needs
    /// to keep `layers`.
    fn refusal(&self, server: &str, layers: &[usize]) -> Error {
        Error::invalid(
            "vllm server",
            format!(
                "{server} does not write hidden states with probe's connector; start it with `probe vllm-args` \
                 (the flags: {}, and probe's scripts/python on PYTHONPATH)",
                extraction_args(layers, Path::new("SHARED_DIR"))
                    .iter()
                    .map(|a| crate::shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        )
    }

    /// Where the answer `body` from `server` says the hidden states are, and the layers the
    /// server keeps. A server without probe's connector, or one that refused the request (a
    /// layer it does not keep), is an error naming what it needs; a file it wrote anyway is
    /// deleted.
    async fn file_of(&self, server: &str, body: &[u8], layers: &[usize]) -> Result<(PathBuf, Vec<usize>)> {
        let a = hidden::answered(server, body)?;
        let path = a.path.map(|path| match (&self.shared_dir, path.file_name()) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => path,
        });
        let refused = match (&a.error, a.format, &path) {
            (Some(e), _, _) => Some(Error::invalid("vllm server", format!("{server}: {e}"))),
            (None, Some(_), Some(_)) => None,
            _ => Some(self.refusal(server, layers)),
        };
        if let Some(e) = refused {
            if let Some(p) = path {
                let _ = tokio::task::spawn_blocking(move || hidden::discard(&p)).await;
            }
            return Err(e);
        }
        Ok((path.expect("checked above"), a.kept.unwrap_or_default()))
    }

    /// Checks a file against the model and the layers it must hold.
    fn check_shape(&self, server: &str, hs: &HiddenStates, layers: &[usize]) -> Result<()> {
        let missing: Vec<usize> = layers.iter().copied().filter(|&l| hs.index_of(l).is_none()).collect();
        if hs.hidden != self.info.hidden_size || !missing.is_empty() {
            return Err(Error::invalid(
                "vllm server",
                format!(
                    "{server} wrote layers {:?} of size {}; {} needs layers {layers:?} of size {} \
                     (eagle_aux_hidden_state_layer_ids)",
                    hs.layer_ids.clone().unwrap_or_else(|| (0..hs.layers).collect()),
                    hs.hidden,
                    self.dir.display(),
                    self.info.hidden_size,
                ),
            ));
        }
        Ok(())
    }

    /// The generation pass's hidden states of input `ids` when they serve a readout of
    /// `layers` up to token `need` (counted as reused), else `None` (counted as an extra pass
    /// when the input was generated here).
    async fn captured(&self, ids: &[u32], need: usize, layers: &[usize]) -> Captured {
        let path = match self.captures.take(ids) {
            None => return Captured::NotGenerated,
            Some(Some(path)) => path,
            Some(None) => {
                self.captures.count_extra();
                return Captured::Generated;
            }
        };
        match read(path).await {
            Ok(hs) if capture::covers(&hs.token_ids, ids, need) && self.check_shape("", &hs, layers).is_ok() => {
                self.captures.count_reused();
                Captured::Hit(hs)
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!("vllm: the generation pass's hidden states are unusable ({e}); extracting again");
                }
                self.captures.count_extra();
                Captured::Generated
            }
        }
    }

    /// One input on the servers: its index and what the server wrote for `ask` (the asked
    /// layers, reduced to the asked spans on the server).
    /// Also returns the request's prompt tokens and those the server's prefix cache served.
    async fn one(&self, i: usize, ids: &[u32], ask: &Ask) -> Result<(usize, HiddenStates, (u64, u64))> {
        let body = serde_json::json!({
            "model": self.client.served_model(),
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "n": 1,
            "stream": false,
            "add_special_tokens": false,
            "kv_transfer_params": {"probe": ask},
        });
        let body = serde_json::to_vec(&body).map_err(|e| Error::backend(BACKEND, e))?;
        let parse = |server: String, bytes: Vec<u8>| async move {
            let (path, _) = self.file_of(&server, &bytes, &ask.layers).await?;
            let hs = read(path).await?;
            self.check_shape(&server, &hs, &ask.layers)?;
            if hs.token_ids != ids {
                return Err(Error::backend(
                    BACKEND,
                    format!("{server} wrote the hidden states of other tokens than input #{i}'s"),
                ));
            }
            if hs.spans != ask.spans {
                return Err(Error::backend(
                    BACKEND,
                    format!("{server} wrote spans {:?} for input #{i}, asked {:?}", hs.spans, ask.spans),
                ));
            }
            Ok((hs, hidden::prompt_tokens(&bytes)))
        };
        self.client.complete(&format!("input #{i}"), &body, parse).await.map(|(hs, t)| (i, hs, t))
    }
}

/// What the generation pass left for an input.
enum Captured {
    /// Hidden states that serve the readout.
    Hit(HiddenStates),
    /// Generated here, but its hidden states do not serve the readout (or were not kept).
    Generated,
    /// Not generated here.
    NotGenerated,
}

/// [`hidden::take`] off the async runtime's threads.
async fn read(path: PathBuf) -> Result<HiddenStates> {
    tokio::task::spawn_blocking(move || hidden::take(&path))
        .await
        .map_err(|e| Error::backend(BACKEND, format!("reading hidden states: {e}")))?
}

#[async_trait]
impl ActivationExtractor for VllmExtractor {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        request.validate(&self.info)?;
        request.require_resid(BACKEND)?;
        let ids = self.token_ids(&request)?;
        let layers = request.sorted_layers();
        let spans: Vec<Span> = ids.iter().enumerate().map(|(i, s)| request.span(i, s.len())).collect::<Result<_>>()?;
        let mut out = Collector::new(request.positions, &layers, &[self.info.hidden_size], &ids, spans.clone());
        let last = self.info.num_layers;
        let norm = layers.contains(&last).then(|| self.norm.spec(last));
        let ask = |span: Span| Ask {
            layers: layers.clone(),
            spans: match request.positions {
                Positions::Last => Some(vec![[span.end - 1, span.end]]),
                Positions::Mean => Some(vec![[span.start, span.end]]),
                Positions::All => None,
            },
            dtype: if request.positions == Positions::All { "model" } else { "float32" },
            norm: norm.clone(),
        };
        self.started().await?;
        let in_flight = self.client.max_in_flight();
        let work: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                let need = if request.positions == Positions::All { seq.len() } else { out.span_end(i) };
                let (ask, layers) = (ask(spans[i]), &layers);
                async move {
                    let generated = match self.captured(seq, need, layers).await {
                        Captured::Hit(hs) => return Ok((i, hs)),
                        Captured::Generated => true,
                        Captured::NotGenerated => false,
                    };
                    let (i, hs, (tokens, cached)) = self.one(i, seq, &ask).await?;
                    if generated {
                        self.captures.count_extra_tokens(tokens, cached);
                    }
                    Ok((i, hs))
                }
            })
            .collect();
        let mut results = stream::iter(work).buffer_unordered(in_flight);
        while let Some(r) = results.next().await {
            let (i, hs) = r?;
            let batch = PaddedBatch::new(std::slice::from_ref(&hs.token_ids), 0);
            for (k, &l) in layers.iter().enumerate() {
                let at =
                    hs.index_of(l).ok_or_else(|| Error::backend(BACKEND, format!("layer {l} is not in the file")))?;
                let mut values = hs.layer(at);
                if l == last && hs.normed != Some(last) {
                    if hs.spans.as_ref().is_some_and(|s| s.iter().any(|[a, b]| b - a > 1)) {
                        return Err(Error::backend(
                            BACKEND,
                            format!("the server reduced layer {l} without the final norm it was asked to apply"),
                        ));
                    }
                    self.norm.apply(&mut values);
                }
                if hs.spans.is_some() {
                    out.set_reduced(k, i, &values)?;
                } else {
                    out.push(k, i, &batch, &values)?;
                }
            }
        }
        Ok(out.finish())
    }

    fn model_info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.token_id_input = true;
        c.all_positions = true;
        c
    }

    fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let mut ids = encode_inputs(&self.tokenizer, &Inputs::Texts(vec![text.to_owned()]), special)?;
        Ok(ids.remove(0))
    }

    fn pass_reuse(&self) -> Option<PassReuse> {
        Some(self.captures.counts())
    }
}

/// Generation on the same servers, one prompt per request, each completion's hidden states
/// kept for its extraction (the `capture` module). The completions are the model's, but not
/// token for token a plain server's: seeded sampling draws from the same distribution with
/// other numbers (the speculative path samples differently), and batched greedy decoding
/// has been seen to part from a plain server's after a few tokens on near-ties.
#[async_trait]
impl Generator for VllmExtractor {
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        self.started().await?;
        let keep = |server: String, body: Vec<u8>, g: &Generation| {
            let ids = g.full_token_ids();
            async move {
                let (path, kept) = self.file_of(&server, &body, &[]).await?;
                let ids = ids.ok_or_else(|| {
                    super::wire::bad_response(&server, "no token ids in the answer (vLLM ≥ 0.10 returns them)")
                })?;
                let bytes = capture::estimate(ids.len(), kept.len().max(1), self.info.hidden_size);
                let captures = self.captures.clone();
                tokio::task::spawn_blocking(move || captures.keep(ids, path, bytes))
                    .await
                    .map_err(|e| Error::backend(BACKEND, format!("keeping hidden states: {e}")))
            }
        };
        self.client.generate_each(&request, keep).await
    }

    fn model_id(&self) -> ModelId {
        self.client.model_id()
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = self.client.capabilities();
        c.multiple_samples = false;
        c.token_ids = true;
        c
    }
}
