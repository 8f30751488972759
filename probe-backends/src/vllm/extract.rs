//! [`VllmExtractor`]: hidden states computed by vLLM itself, over the same servers and pool
//! as [`VllmGenerator`].
//!
//! Each input is one `POST /v1/completions` (`max_tokens: 1`, the prompt as token ids, so
//! tokens and positions are exactly the in-process backends'), many in flight over all
//! servers with the generator's retries. The server writes the prompt's hidden states of
//! every layer to a safetensors file in its shared folder and names it in the answer
//! (`kv_transfer_params.hidden_states_path`); the file is read under the server's lock and
//! deleted, only the asked layers are kept, positions are reduced here (the reduction the
//! tch and ort backends use), and the last layer goes through the model's own final norm,
//! read from the checkpoint (vLLM writes it before that norm).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, stream};
use probe_core::hf_config::HfConfig;
use probe_core::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Inputs, ModelId, ModelInfo, Result,
    SpecialTokens,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::BACKEND;
use super::client::VllmGenerator;
use super::final_norm::FinalNorm;
use super::hidden::{self, HiddenStates, extraction_args};
use crate::exported::{Collector, PaddedBatch, encode_inputs};

/// Extracts hidden states with vLLM servers started with [`extraction_args`] (the launcher
/// adds them with [`super::VllmLauncherBuilder::hidden_states`]).
///
/// The model folder must be readable here too: its tokenizer, `config.json` and final norm
/// are read from it. A server that does not write hidden states is refused with the flags
/// it needs. Servers probe did not launch must share their storage folder with this
/// machine: see [`VllmExtractor::with_shared_dir`].
#[derive(Debug, Clone)]
pub struct VllmExtractor {
    client: Arc<VllmGenerator>,
    dir: PathBuf,
    info: ModelInfo,
    tokenizer: Tokenizer,
    norm: FinalNorm,
    shared_dir: Option<PathBuf>,
}

/// The part of the answer the extractor reads.
#[derive(Debug, Deserialize)]
struct ExtractResponse {
    #[serde(default)]
    kv_transfer_params: Option<KvParams>,
}

#[derive(Debug, Deserialize)]
struct KvParams {
    #[serde(default)]
    hidden_states_path: Option<String>,
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
        Ok(Self { client, dir: dir.to_owned(), info, tokenizer, norm, shared_dir: None })
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

    /// Where the answer `body` from `server` says the hidden states are.
    fn file_of(&self, server: &str, body: &[u8]) -> Result<PathBuf> {
        let resp: ExtractResponse = serde_json::from_slice(body)
            .map_err(|e| super::wire::bad_response(server, format!("not a completion response ({e})")))?;
        let Some(path) = resp.kv_transfer_params.and_then(|k| k.hidden_states_path) else {
            return Err(Error::invalid(
                "vllm server",
                format!(
                    "{server} does not write hidden states; start it with: {}",
                    extraction_args(self.info.num_layers, Path::new("SHARED_DIR"), false)
                        .iter()
                        .map(|a| crate::shell_quote(a))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ));
        };
        let path = PathBuf::from(path);
        Ok(match (&self.shared_dir, path.file_name()) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => path,
        })
    }

    /// One input on the servers: its index and hidden states, every layer.
    async fn one(&self, i: usize, ids: &[u32]) -> Result<(usize, HiddenStates)> {
        let body = serde_json::json!({
            "model": self.client.served_model(),
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0.0,
            "n": 1,
            "stream": false,
            "add_special_tokens": false,
        });
        let body = serde_json::to_vec(&body).map_err(|e| Error::backend(BACKEND, e))?;
        let want = self.info.num_layers + 1;
        let parse = |server: String, bytes: Vec<u8>| async move {
            let path = self.file_of(&server, &bytes)?;
            let hs = tokio::task::spawn_blocking(move || hidden::take(&path))
                .await
                .map_err(|e| Error::backend(BACKEND, format!("reading hidden states: {e}")))??;
            if hs.layers != want || hs.hidden != self.info.hidden_size {
                return Err(Error::invalid(
                    "vllm server",
                    format!(
                        "{server} wrote {} layers of size {}; {} needs layers 0..={} of size {} \
                         (eagle_aux_hidden_state_layer_ids {:?})",
                        hs.layers,
                        hs.hidden,
                        self.dir.display(),
                        want - 1,
                        self.info.hidden_size,
                        (0..want).collect::<Vec<_>>()
                    ),
                ));
            }
            if hs.token_ids != ids {
                return Err(Error::backend(
                    BACKEND,
                    format!("{server} wrote the hidden states of other tokens than input #{i}'s"),
                ));
            }
            Ok(hs)
        };
        self.client.complete(&format!("input #{i}"), &body, parse).await.map(|hs| (i, hs))
    }
}

#[async_trait]
impl ActivationExtractor for VllmExtractor {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        request.validate(&self.info)?;
        let ids = self.token_ids(&request)?;
        let layers = request.sorted_layers();
        let spans = ids.iter().enumerate().map(|(i, s)| request.span(i, s.len())).collect::<Result<_>>()?;
        let mut out = Collector::new(request.positions, &layers, self.info.hidden_size, &ids, spans);
        let last = self.info.num_layers;
        let in_flight = self.client.max_in_flight();
        let work: Vec<_> = ids.iter().enumerate().map(|(i, seq)| self.one(i, seq)).collect();
        let mut results = stream::iter(work).buffer_unordered(in_flight);
        while let Some(r) = results.next().await {
            let (i, hs) = r?;
            let batch = PaddedBatch::new(std::slice::from_ref(&ids[i]), 0);
            for (k, &l) in layers.iter().enumerate() {
                let mut values = hs.layer(l);
                if l == last {
                    self.norm.apply(&mut values);
                }
                out.push(k, i, &batch, &values)?;
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
}
