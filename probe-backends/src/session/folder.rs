//! [`ModelFolder`]: a model folder opened once — its parsed `config.json`, its tokenizer and
//! its chat template — handed to the planner, the prompt renderer and the backends.

use std::path::Path;

use probe_core::hf_config::HfConfig;
use probe_core::plan::ModelSpec;
use probe_core::sweep::PromptSet;
use probe_core::{Error, Result};

use crate::chat::ChatTemplate;
use crate::registry::Backend;

/// What a run reads of its model, read once.
#[derive(Debug)]
pub struct ModelFolder {
    /// The model as given: a folder, or a name a vLLM server serves.
    name: String,
    /// The folder's shape (`None`: no `config.json`: an export folder, a served name).
    spec: Option<ModelSpec>,
    /// Transformer blocks.
    num_layers: Option<usize>,
    /// The chat template (the settings' file, else the folder's), when there is one.
    template: Option<ChatTemplate>,
    #[cfg(any(feature = "candle", feature = "vllm", feature = "tch", feature = "ort"))]
    tokenizer: Option<tokenizers::Tokenizer>,
    /// `config.json` as read (`None` without one), for candle's reading of the folder.
    #[cfg(feature = "candle")]
    config_text: Option<String>,
    /// The folder as candle loads it (candle, and vllm's in-process extraction): read once,
    /// when the folder is opened (candle) or first checked (vllm).
    #[cfg(feature = "candle")]
    candle: std::sync::OnceLock<std::sync::Arc<crate::candle::CandleFolder>>,
}

impl ModelFolder {
    /// Opens `model` for `backend`: a Hugging Face folder is checked as loading would check it
    /// (candle: `config.json`, safetensors headers, tokenizer) and its `config.json`, tokenizer
    /// and chat template are read; a vLLM served name without a folder is allowed when
    /// `folder_optional`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the folder or file.
    pub fn open(model: &str, backend: Backend, template_file: Option<&Path>, folder_optional: bool) -> Result<Self> {
        let dir = Path::new(model);
        if !dir.is_dir() && folder_optional {
            return Ok(Self::bare(model));
        }
        let (spec, num_layers, config_text) = if backend == Backend::Mock {
            (Some(crate::mock::spec()?), crate::mock::MOCK_LAYERS, None)
        } else {
            if !dir.is_dir() {
                return Err(Error::invalid(
                    "model",
                    format!("{model:?} is not a folder (expected a Hugging Face model folder)"),
                ));
            }
            // config.json, read and parsed once for the layer count and the planner's shape.
            let config = dir.join("config.json");
            let text = std::fs::read_to_string(&config)
                .map_err(|e| Error::invalid("model", format!("{}: cannot be read: {e}", config.display())))?;
            let named = |e: Error| match e {
                Error::InvalidInput { what, message } if what == "model" => {
                    Error::invalid("model", format!("{}: {message}", config.display()))
                }
                Error::InvalidInput { what, message } => {
                    Error::invalid(format!("{what} in {}", config.display()), message)
                }
                other => other,
            };
            let hf =
                HfConfig::parse(&text).map_err(|e| Error::invalid("model", format!("{}: {e}", config.display())))?;
            let layers = HfConfig::required(hf.num_hidden_layers, "num_hidden_layers")
                .map_err(|e| Error::invalid("model", format!("{}: {e}", config.display())))?;
            (Some(ModelSpec::from_hf(&hf).map_err(named)?), layers, Some(text))
        };
        let template = match template_file {
            Some(f) => Some(ChatTemplate::from_file(f, dir)?),
            None if dir.is_dir() => ChatTemplate::from_model_dir(dir)?,
            None => None,
        };
        let mut folder = Self {
            name: model.to_owned(),
            spec,
            num_layers: Some(num_layers),
            template,
            #[cfg(any(feature = "candle", feature = "vllm", feature = "tch", feature = "ort"))]
            tokenizer: None,
            #[cfg(feature = "candle")]
            config_text,
            #[cfg(feature = "candle")]
            candle: std::sync::OnceLock::new(),
        };
        #[cfg(not(feature = "candle"))]
        let _ = config_text;
        // vllm: the servers load the model, whatever candle supports; a call that extracts
        // on candle checks the folder then ([`super::Session::prepare`]).
        if backend != Backend::Vllm {
            folder.check(backend)?;
        }
        // The tokenizer candle read, else the folder's own.
        #[cfg(any(feature = "candle", feature = "vllm", feature = "tch", feature = "ort"))]
        {
            #[cfg(feature = "candle")]
            let read = folder.candle.get().map(|c| c.tokenizer().clone());
            #[cfg(not(feature = "candle"))]
            let read = None;
            folder.tokenizer = read.or_else(|| tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).ok());
        }
        Ok(folder)
    }

    /// Checks the folder as `backend` loads it ([`Backend::check_folder`]), once: for candle
    /// and vllm, what it read is kept for loading ([`ModelFolder::candle`]).
    ///
    /// # Errors
    /// As [`Backend::check_folder`].
    pub fn check(&self, backend: Backend) -> Result<()> {
        #[cfg(feature = "candle")]
        if self.candle.get().is_some() {
            return Ok(());
        }
        #[cfg(feature = "candle")]
        if let Some(read) = backend.read_folder(&self.name, self.config_text.clone())? {
            let _ = self.candle.set(std::sync::Arc::new(read));
        }
        #[cfg(not(feature = "candle"))]
        backend.read_folder(&self.name, None)?;
        Ok(())
    }

    /// The folder as candle loads it, when [`ModelFolder::check`] has read it.
    #[cfg(feature = "candle")]
    pub fn candle(&self) -> Option<std::sync::Arc<crate::candle::CandleFolder>> {
        self.candle.get().cloned()
    }

    fn bare(model: &str) -> Self {
        Self {
            name: model.to_owned(),
            spec: None,
            num_layers: None,
            template: None,
            #[cfg(any(feature = "candle", feature = "vllm", feature = "tch", feature = "ort"))]
            tokenizer: None,
            #[cfg(feature = "candle")]
            config_text: None,
            #[cfg(feature = "candle")]
            candle: std::sync::OnceLock::new(),
        }
    }

    /// The model as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape from `config.json` (`None` without one).
    pub fn spec(&self) -> Option<&ModelSpec> {
        self.spec.as_ref()
    }

    /// Transformer blocks (hidden states `0..=L`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a served model name without a folder.
    pub fn num_layers(&self) -> Result<usize> {
        self.num_layers
            .ok_or_else(|| Error::invalid("model", format!("{:?} is not a folder: its layers are unknown", self.name)))
    }

    /// `prompts` with their `messages` rendered by the chat template; plain texts unchanged.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first chat prompt when there is no template
    /// (`chat_template`), and the template's rendering errors.
    pub fn render(&self, prompts: PromptSet) -> Result<PromptSet> {
        crate::chat::render_with(prompts, self.template.as_ref(), &self.name)
    }

    /// Tokens of the longest prompt: counted with the folder's tokenizer when it loads, else
    /// bounded by its bytes (a token covers at least one byte) plus 8 special tokens. Chat
    /// prompts not rendered yet count their messages plus 16 tokens of template per message.
    pub fn longest_prompt_tokens(&self, prompts: &PromptSet) -> u64 {
        let texts: Vec<String> = prompts
            .prompts
            .iter()
            .map(|p| match (&p.messages, p.text.is_empty()) {
                (Some(m), true) => m.iter().map(|m| format!("{}{}{}", m.role, m.content, " ".repeat(16))).collect(),
                _ => p.text.clone(),
            })
            .collect();
        let by_bytes = texts.iter().map(|t| t.len() as u64 + 8).max().unwrap_or(8);
        #[cfg(any(feature = "candle", feature = "vllm", feature = "tch", feature = "ort"))]
        if let Some(tok) = &self.tokenizer
            && let Ok(encs) = tok.encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
        {
            return encs.iter().map(|e| e.get_ids().len() as u64).max().unwrap_or(1);
        }
        by_bytes
    }
}
