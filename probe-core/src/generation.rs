//! Text generation: the [`Generator`] contract and its request and response types.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Activations, Capabilities, Error, ModelInfo, Readout, Result, Site, SpecialTokens};

/// Every sampling field, resolved: nothing is left to a server's defaults, so a cached
/// result can never change silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables it.
    pub top_k: u32,
    /// Maximum number of new tokens per completion (≥ 1).
    pub max_tokens: u32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Completions per prompt (≥ 1).
    pub n: u32,
    /// Generation stops before any of these strings; they are not part of the completion.
    pub stop: Vec<String>,
    /// Steering applied while generating (absent when none, so plain keys keep their digests).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steering: Vec<crate::Intervention>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 64,
            seed: 0,
            n: 1,
            stop: Vec::new(),
            steering: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with `max_tokens` new tokens.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { max_tokens, ..Self::default() }
    }
    /// Sets the temperature.
    pub fn with_temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }
    /// Sets top-p.
    pub fn with_top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }
    /// Sets top-k (0 disables it).
    pub fn with_top_k(mut self, k: u32) -> Self {
        self.top_k = k;
        self
    }
    /// Sets max_tokens.
    pub fn with_max_tokens(mut self, m: u32) -> Self {
        self.max_tokens = m;
        self
    }
    /// Sets the seed.
    pub fn with_seed(mut self, s: u64) -> Self {
        self.seed = s;
        self
    }
    /// Sets n.
    pub fn with_n(mut self, n: u32) -> Self {
        self.n = n;
        self
    }
    /// Sets the stop strings.
    pub fn with_stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }
    /// Sets the steering applied while generating.
    pub fn with_steering(mut self, steering: Vec<crate::Intervention>) -> Self {
        self.steering = steering;
        self
    }

    /// True when decoding is greedy (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field; the error names the bad value.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a negative, NaN or infinite temperature, top_p outside
    /// (0, 1], max_tokens or n of 0, or an empty stop string.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid("temperature", format!("{} (must be a finite number ≥ 0)", self.temperature)));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(Error::invalid("top_p", format!("{} (must be in (0, 1])", self.top_p)));
        }
        if self.max_tokens == 0 {
            return Err(Error::invalid("max_tokens", "0 (must be ≥ 1)"));
        }
        if self.n == 0 {
            return Err(Error::invalid("n", "0 (must be ≥ 1)"));
        }
        if let Some(i) = self.stop.iter().position(String::is_empty) {
            return Err(Error::invalid("stop", format!("stop string #{i} is empty")));
        }
        Ok(())
    }
}

/// What to generate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GenerationRequest {
    /// The model id the generator must serve (a folder for in-process backends, the served
    /// name for servers); generators check it and refuse a mismatch.
    pub model: String,
    /// Prompts, in order.
    pub prompts: Vec<String>,
    /// Resolved sampling fields.
    pub sampling: SamplingParams,
    /// How the prompts are tokenised: [`SpecialTokens::AsWritten`] for prompts rendered with a
    /// chat template (they carry their BOS token themselves).
    #[serde(default, skip_serializing_if = "SpecialTokens::is_add")]
    pub special_tokens: SpecialTokens,
}

impl GenerationRequest {
    /// A request for `prompts` on `model` with default (greedy) sampling.
    pub fn new(model: impl Into<String>, prompts: Vec<String>) -> Self {
        Self { model: model.into(), prompts, sampling: SamplingParams::default(), special_tokens: SpecialTokens::Add }
    }
    /// Sets the sampling fields.
    pub fn with_sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }
    /// Sets how the prompts are tokenised.
    pub fn with_special_tokens(mut self, s: SpecialTokens) -> Self {
        self.special_tokens = s;
        self
    }

    /// Validates the sampling fields and the prompts.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        self.sampling.validate()?;
        if self.prompts.is_empty() {
            return Err(Error::invalid("prompts", "no prompts given"));
        }
        Ok(())
    }
}

/// Hidden states to read while generating ([`Generator::generate_capturing`]): what an
/// extraction pass over each prompt + completion (token ids exactly as generated, no steering)
/// would return at `readout`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StateCapture {
    /// The model whose states are wanted (an extractor's [`ModelInfo`]); a generator serving
    /// another model (or another dtype) refuses the request.
    pub model: ModelInfo,
    /// Per site, its layers (as [`crate::ActivationRequest::reads`]).
    pub reads: Vec<(Site, Vec<usize>)>,
    /// [`Readout::Last`] (the last token of prompt + completion), [`Readout::Mean`] (every
    /// token of both), [`Readout::LastPrompt`] or [`Readout::MeanCompletion`]; markers and
    /// `all` are read by extraction.
    pub readout: Readout,
}

impl StateCapture {
    /// A capture of `reads` of `model` at `readout`.
    pub fn new(model: ModelInfo, reads: Vec<(Site, Vec<usize>)>, readout: impl Into<Readout>) -> Self {
        Self { model, reads, readout: readout.into() }
    }

    /// Whether `readout` can be captured while generating (`last`, `mean`, `last-prompt`,
    /// `mean-completion`).
    pub fn can_read(readout: &Readout) -> bool {
        matches!(readout, Readout::Last | Readout::Mean | Readout::LastPrompt | Readout::MeanCompletion)
    }

    /// Checks what any generator can check: the readout ([`StateCapture::can_read`]), the
    /// layers, and that the request asks for one completion per prompt without steering
    /// (steered states are not what an extraction pass reads).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad value.
    pub fn validate(&self, request: &GenerationRequest) -> Result<()> {
        if !Self::can_read(&self.readout) {
            return Err(Error::invalid(
                "positions",
                format!("{} cannot be captured while generating: extract it", self.readout),
            ));
        }
        if self.reads.is_empty() || self.reads.iter().any(|(_, l)| l.is_empty()) {
            return Err(Error::invalid("layers", "no layers requested"));
        }
        crate::activation::check_reads(&self.reads, &self.model)?;
        if request.sampling.n != 1 {
            return Err(Error::invalid(
                "n",
                format!("{} (states are captured for one completion per prompt)", request.sampling.n),
            ));
        }
        if !request.sampling.steering.is_empty() {
            return Err(Error::invalid(
                "steering",
                "states captured while steering are not those of an extraction pass; extract them separately",
            ));
        }
        Ok(())
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// One completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Generation {
    /// Index of the prompt in the request.
    pub prompt_index: usize,
    /// Which of the `n` samples this is.
    pub sample_index: u32,
    /// The prompt, verbatim.
    pub prompt: String,
    /// The generated text only (special tokens skipped, stop string excluded).
    pub completion: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token ids of the completion, when the backend gives them: every generated token, the
    /// end-of-sequence token or the token that completed a stop string included.
    pub token_ids: Option<Vec<u32>>,
    /// Token ids of the prompt as the generator tokenised it, when the backend gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

impl Generation {
    /// A generation record.
    pub fn new(
        prompt_index: usize,
        sample_index: u32,
        prompt: impl Into<String>,
        completion: impl Into<String>,
        finish_reason: FinishReason,
        token_ids: Option<Vec<u32>>,
    ) -> Self {
        Self {
            prompt_index,
            sample_index,
            prompt: prompt.into(),
            completion: completion.into(),
            finish_reason,
            token_ids,
            prompt_token_ids: None,
        }
    }

    /// Sets the prompt's token ids.
    pub fn with_prompt_token_ids(mut self, ids: Option<Vec<u32>>) -> Self {
        self.prompt_token_ids = ids;
        self
    }

    /// Prompt followed by completion, as text: what a sweep probes when the generator gave no
    /// token ids (re-tokenised, which is not always the sequence that was generated).
    pub fn full_text(&self) -> String {
        format!("{}{}", self.prompt, self.completion)
    }

    /// The prompt's token ids followed by the completion's: exactly the sequence the model
    /// generated, which a sweep probes. `None` unless the generator gave both.
    pub fn full_token_ids(&self) -> Option<Vec<u32>> {
        let (p, c) = (self.prompt_token_ids.as_ref()?, self.token_ids.as_ref()?);
        Some(p.iter().chain(c).copied().collect())
    }
}

/// Produces completions.
///
/// # Contract
/// - `generate` returns `prompts.len() × n` generations ordered by prompt, then sample
///   (`prompt_index`, `sample_index`), whatever order the work finished in.
/// - The request is validated before any work; bad input is [`Error::InvalidInput`].
/// - A model id other than the one served is [`Error::InvalidInput`].
/// - Greedy decoding (temperature 0) is deterministic; sampling with the same seed is
///   deterministic when `capabilities().seeded_sampling`.
/// - Asking for a capability the backend lacks is [`Error::NotSupported`].
#[async_trait]
pub trait Generator: Send + Sync + std::fmt::Debug {
    /// Generates completions for every prompt.
    ///
    /// # Errors
    /// [`Error::InvalidInput`], [`Error::NotSupported`], [`Error::OutOfMemory`], or a
    /// backend error.
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>>;

    /// The model id and revision this generator serves, for cache keys.
    fn model_id(&self) -> ModelId;

    /// What this generator supports.
    fn capabilities(&self) -> Capabilities;

    /// [`Generator::generate`] that also reads hidden states while it generates: per (site,
    /// layer) of `capture`, `[prompts, width]` in prompt order (a site of several values per
    /// token, [`Site::Heads`], `[prompts, heads, head_dim]`), equal (to rounding) to what an
    /// extraction pass over each prompt's token ids followed by its completion's would return.
    /// Only where `capabilities().capture_states` (then [`Generator::states_model`] is the
    /// model read).
    ///
    /// # Errors
    /// As [`Generator::generate`]; [`Error::InvalidInput`] for a capture another model's,
    /// [`StateCapture::validate`]'s; [`Error::NotSupported`] (the default) for a generator
    /// that cannot capture.
    async fn generate_capturing(
        &self,
        request: GenerationRequest,
        capture: StateCapture,
    ) -> Result<(Vec<Generation>, Activations)> {
        let _ = (request, capture);
        Err(Error::not_supported("capturing hidden states while generating", self.model_id().id))
    }

    /// The model whose hidden states [`Generator::generate_capturing`] reads (compare it with
    /// an extractor's [`crate::ActivationExtractor::model_info`]); `None` (the default)
    /// without `capabilities().capture_states`.
    fn states_model(&self) -> Option<ModelInfo> {
        None
    }
}

/// A model's identity for cache keys: id and a revision (a content hash of the weights'
/// metadata for local folders, a server-reported revision, or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelId {
    /// The model's name or path.
    pub id: String,
    /// Revision: anything that changes when the weights change.
    pub revision: String,
}

impl ModelId {
    /// A model id with a revision.
    pub fn new(id: impl Into<String>, revision: impl Into<String>) -> Self {
        Self { id: id.into(), revision: revision.into() }
    }
}
