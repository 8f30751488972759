//! Hidden-state extraction: the [`ActivationExtractor`] contract and its types.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Capabilities, Error, ModelId, Result, Site};

/// How the token positions of one input are reduced to what is returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// The last real (non-padding) token: `[n, hidden]`.
    #[default]
    Last,
    /// The mean over real tokens: `[n, hidden]`.
    Mean,
    /// Every position: `[n, seq, hidden]`, with [`Activations::mask`].
    All,
}

impl Positions {
    /// The name used on the command line and in cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Positions::Last => "last",
            Positions::Mean => "mean",
            Positions::All => "all",
        }
    }
}

impl std::str::FromStr for Positions {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "last" => Ok(Positions::Last),
            "mean" => Ok(Positions::Mean),
            "all" => Ok(Positions::All),
            other => Err(Error::invalid("positions", format!("{other:?} (expected last, mean or all)"))),
        }
    }
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the tokenizer adds its special tokens (a BOS token …) to a text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialTokens {
    /// The tokenizer adds them as it does by default (`add_special_tokens=True`): plain texts.
    #[default]
    Add,
    /// The text already carries them (a rendered chat template): nothing is added
    /// (`add_special_tokens=False`, as transformers' `apply_chat_template(tokenize=True)`), so
    /// a template that writes the BOS token never gets a second one.
    AsWritten,
}

impl SpecialTokens {
    /// The tokenizer's `add_special_tokens` flag.
    pub fn add(self) -> bool {
        self == SpecialTokens::Add
    }
    /// True for [`SpecialTokens::Add`] (serde's `skip_serializing_if`, so keys of plain texts
    /// keep their digests).
    pub fn is_add(&self) -> bool {
        *self == SpecialTokens::Add
    }
}

/// What goes into the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inputs {
    /// Texts, tokenised by the extractor's tokenizer (special tokens as it adds them by default).
    Texts(Vec<String>),
    /// Token ids, used as they are.
    TokenIds(Vec<Vec<u32>>),
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs::Texts(Vec::new())
    }
}

impl Inputs {
    /// Number of inputs.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::TokenIds(t) => t.len(),
        }
    }
    /// True when there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inputs `[start, end)`, of the same kind.
    ///
    /// # Panics
    /// When the range is out of bounds.
    pub fn slice(&self, start: usize, end: usize) -> Inputs {
        match self {
            Inputs::Texts(t) => Inputs::Texts(t[start..end].to_vec()),
            Inputs::TokenIds(t) => Inputs::TokenIds(t[start..end].to_vec()),
        }
    }
}

/// What to extract.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActivationRequest {
    /// Texts or token ids.
    pub inputs: Inputs,
    /// Layers in Hugging Face `output_hidden_states` numbering (0 = embeddings,
    /// L = after the final norm). Duplicates are ignored; results come sorted.
    pub layers: Vec<usize>,
    /// Position reduction.
    pub positions: Positions,
    /// Largest number of inputs per forward pass; `None` lets the backend choose.
    pub batch_size: Option<usize>,
    /// How texts are tokenised (token ids are used as they are).
    #[serde(default, skip_serializing_if = "SpecialTokens::is_add")]
    pub special_tokens: SpecialTokens,
    /// Per input, the tokens that [`Positions::Last`] and [`Positions::Mean`] read (`Last`
    /// takes the span's last token); `None`: every token. [`Positions::All`] ignores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans: Option<Vec<Span>>,
    /// Where activations are read; sites inside blocks number `layers` by block (`0..L`).
    #[serde(default, skip_serializing_if = "Site::is_resid")]
    pub site: Site,
    /// Further sites read in the same forward pass, each at its own layers (numbered as its
    /// site numbers them); see [`ActivationRequest::reads`]. Empty: `site` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_sites: Vec<(Site, Vec<usize>)>,
}

/// Tokens `[start, end)` of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    /// First token.
    pub start: usize,
    /// One past the last token.
    pub end: usize,
}

impl Span {
    /// Tokens `[start, end)`.
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }
}

impl ActivationRequest {
    /// A request for `layers` of `texts` at the last token.
    pub fn texts(texts: Vec<String>, layers: Vec<usize>) -> Self {
        Self { inputs: Inputs::Texts(texts), layers, ..Self::default() }
    }
    /// A request for `layers` of pre-tokenised inputs at the last token.
    pub fn token_ids(ids: Vec<Vec<u32>>, layers: Vec<usize>) -> Self {
        Self { inputs: Inputs::TokenIds(ids), layers, ..Self::default() }
    }
    /// A request for `layers` of `inputs` (texts or token ids) at the last token.
    pub fn new(inputs: Inputs, layers: Vec<usize>) -> Self {
        Self { inputs, layers, ..Self::default() }
    }
    /// Sets how texts are tokenised ([`SpecialTokens::AsWritten`] for rendered chat templates).
    pub fn with_special_tokens(mut self, s: SpecialTokens) -> Self {
        self.special_tokens = s;
        self
    }
    /// Sets the position reduction.
    pub fn with_positions(mut self, p: Positions) -> Self {
        self.positions = p;
        self
    }
    /// Sets the batch size.
    pub fn with_batch_size(mut self, b: usize) -> Self {
        self.batch_size = Some(b);
        self
    }
    /// Sets where activations are read (one site: the further sites are dropped).
    pub fn with_site(mut self, site: Site) -> Self {
        self.site = site;
        self.more_sites.clear();
        self
    }
    /// Reads every one of `sites` at [`ActivationRequest::layers`] (set them first), in one
    /// forward pass: the first is [`ActivationRequest::site`], the others
    /// [`ActivationRequest::more_sites`]. No sites: [`Site::Resid`].
    pub fn with_sites(mut self, sites: &[Site]) -> Self {
        self.site = sites.first().copied().unwrap_or_default();
        self.more_sites = sites.iter().skip(1).map(|&s| (s, self.layers.clone())).collect();
        self
    }
    /// Also reads `site` at `layers` in the same forward pass.
    pub fn with_more_site(mut self, site: Site, layers: Vec<usize>) -> Self {
        self.more_sites.push((site, layers));
        self
    }
    /// What is read: `(site, layers)` per site, [`ActivationRequest::site`] first, each site's
    /// layers sorted and deduplicated. Results come in this order.
    pub fn reads(&self) -> Vec<(Site, Vec<usize>)> {
        let sorted = |l: &[usize]| l.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        std::iter::once((self.site, sorted(&self.layers)))
            .chain(self.more_sites.iter().map(|(s, l)| (*s, sorted(l))))
            .collect()
    }
    /// Refuses a site other than [`Site::Resid`] for an extractor that reads only the residual
    /// stream, naming the one that reads the others.
    ///
    /// # Errors
    /// [`Error::NotSupported`] for any other site.
    pub fn require_resid(&self, backend: &str) -> Result<()> {
        match self.reads().into_iter().find(|(s, _)| !s.is_resid()) {
            None => Ok(()),
            Some((site, _)) => Err(Error::not_supported(
                format!(
                    "site {site} (only the residual stream here; the candle extractor reads every site, tch and \
                     ort those of an export made with `--sites`)"
                ),
                backend,
            )),
        }
    }
    /// Sets the token span of every input that `Last` and `Mean` read.
    pub fn with_spans(mut self, spans: Vec<Span>) -> Self {
        self.spans = Some(spans);
        self
    }

    /// The same request for the inputs `rows` (in that order), their spans carried along.
    ///
    /// # Panics
    /// When a row is out of bounds.
    pub fn rows(&self, rows: &[usize]) -> ActivationRequest {
        let inputs = match &self.inputs {
            Inputs::Texts(t) => Inputs::Texts(rows.iter().map(|&i| t[i].clone()).collect()),
            Inputs::TokenIds(t) => Inputs::TokenIds(rows.iter().map(|&i| t[i].clone()).collect()),
        };
        let spans = self.spans.as_ref().map(|s| rows.iter().map(|&i| s[i]).collect());
        ActivationRequest { inputs, spans, batch_size: Some(rows.len()), ..self.clone() }
    }

    /// The tokens of input `i` (of `len` tokens) that `Last` and `Mean` read.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the input when its span is empty or runs past its tokens.
    pub fn span(&self, i: usize, len: usize) -> Result<Span> {
        let Some(spans) = &self.spans else { return Ok(Span::new(0, len)) };
        let s = spans.get(i).copied().ok_or_else(|| {
            Error::invalid("spans", format!("{} spans for {} inputs", spans.len(), self.inputs.len()))
        })?;
        if s.start >= s.end || s.end > len {
            return Err(Error::invalid(
                "span",
                format!("tokens [{}, {}) of input #{i}, which has {len} tokens", s.start, s.end),
            ));
        }
        Ok(s)
    }

    /// The requested layers of [`ActivationRequest::site`], sorted and deduplicated.
    pub fn sorted_layers(&self) -> Vec<usize> {
        self.layers.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// Checks the request against a model's shape before any work.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no inputs, an empty input, a site requested twice, a site
    /// without layers, a layer above `info.num_layers` (a block from it on, for sites inside
    /// blocks), a batch size of 0, or a token id outside the vocabulary.
    pub fn validate(&self, info: &ModelInfo) -> Result<()> {
        if self.inputs.is_empty() {
            return Err(Error::invalid("inputs", "no inputs given"));
        }
        check_reads(&self.reads(), info)?;
        if self.batch_size == Some(0) {
            return Err(Error::invalid("batch_size", "0 (must be ≥ 1)"));
        }
        if let Some(spans) = &self.spans {
            if spans.len() != self.inputs.len() {
                return Err(Error::invalid("spans", format!("{} spans for {} inputs", spans.len(), self.inputs.len())));
            }
            if let Inputs::TokenIds(ids) = &self.inputs {
                for (i, seq) in ids.iter().enumerate() {
                    self.span(i, seq.len())?;
                }
            }
        }
        if let Inputs::TokenIds(ids) = &self.inputs {
            for (i, seq) in ids.iter().enumerate() {
                if seq.is_empty() {
                    return Err(Error::invalid("inputs", format!("input #{i} has no tokens")));
                }
                if let Some(&t) = seq.iter().find(|&&t| t as usize >= info.vocab_size) {
                    return Err(Error::invalid(
                        "token id",
                        format!("{t} in input #{i} is outside the vocabulary of {}", info.vocab_size),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Refuses a site read twice, a site without layers, or a layer out of its site's range on
/// the model `info`.
pub(crate) fn check_reads(reads: &[(Site, Vec<usize>)], info: &ModelInfo) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (site, layers) in reads {
        if !seen.insert(*site) {
            return Err(Error::invalid("site", format!("{site} is requested twice")));
        }
        check_layers(*site, layers, info)?;
    }
    Ok(())
}

/// Refuses no layers, or a layer out of `site`'s range on the model `info`.
fn check_layers(site: Site, layers: &[usize], info: &ModelInfo) -> Result<()> {
    if layers.is_empty() {
        return Err(Error::invalid("layers", "no layers requested"));
    }
    if let Some(&bad) = layers.iter().find(|&&l| site.in_block() && l >= info.num_layers) {
        return Err(Error::invalid(
            "block",
            format!("{bad} is out of range for site {site}: the model has blocks 0..{}", info.num_layers),
        ));
    }
    if let Some(&bad) = layers.iter().find(|&&l| l > info.num_layers) {
        return Err(Error::invalid(
            "layer",
            format!("{bad} is out of range: the model has layers 0..={}", info.num_layers),
        ));
    }
    Ok(())
}

/// A dense f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor; panics in debug builds if `data` does not match `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?}");
        Self { shape, data }
    }
    /// Row `i` of a tensor whose first axis is the input index.
    pub fn row(&self, i: usize) -> &[f32] {
        let w: usize = self.shape[1..].iter().product();
        &self.data[i * w..(i + 1) * w]
    }
    /// Number of rows (first dimension).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

/// The hidden states of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerActivations {
    /// Layer number (Hugging Face numbering; the block for sites inside blocks).
    pub layer: usize,
    /// `[n, hidden]` for `last`/`mean`, `[n, seq, hidden]` for `all`.
    pub tensor: Tensor,
    /// Where they were read.
    #[serde(default, skip_serializing_if = "Site::is_resid")]
    pub site: Site,
}

impl LayerActivations {
    /// The values of `layer` at `site`.
    pub fn new(site: Site, layer: usize, tensor: Tensor) -> Self {
        Self { layer, tensor, site }
    }
}

/// What an extractor returns: one tensor per requested (site, layer), rows in input order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Activations {
    /// One entry per requested (site, layer), in [`ActivationRequest::reads`]' order: by site
    /// as requested, then by layer.
    pub layers: Vec<LayerActivations>,
    /// The reduction used.
    pub positions: Positions,
    /// For `Positions::All`: `[n, seq]`, 1 for real tokens, 0 for padding.
    pub mask: Option<Tensor>,
    /// Number of real tokens of each input.
    pub token_counts: Vec<usize>,
}

impl Activations {
    /// Activations from parts.
    pub fn new(
        layers: Vec<LayerActivations>,
        positions: Positions,
        mask: Option<Tensor>,
        token_counts: Vec<usize>,
    ) -> Self {
        Self { layers, positions, mask, token_counts }
    }
    /// The tensor of one layer of the first site read (the request's
    /// [`ActivationRequest::site`]).
    pub fn layer(&self, layer: usize) -> Option<&Tensor> {
        self.layers.first().and_then(|first| self.at(first.site, layer))
    }
    /// The tensor of `layer` at `site`.
    pub fn at(&self, site: Site, layer: usize) -> Option<&Tensor> {
        self.layers.iter().find(|l| l.site == site && l.layer == layer).map(|l| &l.tensor)
    }
}

/// Shape and type of the model behind an extractor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModelInfo {
    /// Identity, for cache keys.
    pub id: ModelId,
    /// Architecture name (`llama`, `qwen2` …).
    pub architecture: String,
    /// Number of transformer blocks L; valid layers are `0..=L`.
    pub num_layers: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Compute dtype (`f32`, `bf16` …).
    pub dtype: String,
    /// Tokenizer settings that change the tokens (e.g. `add_special_tokens=true`),
    /// part of activation cache keys.
    pub tokenizer: String,
    /// Attention heads per block (0: not reported; [`Site::Heads`] then unavailable).
    #[serde(default)]
    pub num_heads: usize,
    /// Dimension of one head.
    #[serde(default)]
    pub head_dim: usize,
    /// Experts of a mixture-of-experts MLP (0 for a dense model; the width of [`Site::Router`]).
    #[serde(default)]
    pub num_experts: usize,
}

impl ModelInfo {
    /// Model info from its parts.
    pub fn new(
        id: ModelId,
        architecture: impl Into<String>,
        num_layers: usize,
        hidden_size: usize,
        vocab_size: usize,
    ) -> Self {
        Self {
            id,
            architecture: architecture.into(),
            num_layers,
            hidden_size,
            vocab_size,
            dtype: "f32".into(),
            tokenizer: String::new(),
            num_heads: 0,
            head_dim: 0,
            num_experts: 0,
        }
    }
    /// Sets the attention heads per block and their dimension.
    pub fn with_heads(mut self, num_heads: usize, head_dim: usize) -> Self {
        self.num_heads = num_heads;
        self.head_dim = head_dim;
        self
    }
    /// Sets the number of experts (a mixture of experts).
    pub fn with_experts(mut self, num_experts: usize) -> Self {
        self.num_experts = num_experts;
        self
    }
    /// The values one token holds at `site`: `hidden_size`, `num_heads · head_dim` for
    /// [`Site::Heads`], `num_experts` for [`Site::Router`].
    pub fn width(&self, site: Site) -> usize {
        match site {
            Site::Heads => self.num_heads * self.head_dim,
            Site::Router => self.num_experts,
            Site::Resid | Site::ResidMid | Site::AttnOut | Site::MlpOut => self.hidden_size,
        }
    }
    /// Sets the dtype.
    pub fn with_dtype(mut self, dtype: impl Into<String>) -> Self {
        self.dtype = dtype.into();
        self
    }
    /// Sets the tokenizer description.
    pub fn with_tokenizer(mut self, t: impl Into<String>) -> Self {
        self.tokenizer = t.into();
        self
    }
}

/// Produces hidden states.
///
/// # Contract
/// - One forward pass per batch captures every requested (site, layer); when
///   `capabilities().early_stop`, it stops after the deepest one and never computes logits.
/// - Numbering and values are those of Hugging Face `output_hidden_states`: 0 is the
///   embedding output, `i < L` the residual stream after block `i`, `L` after the final norm.
/// - Results are per requested layer, sorted by layer, rows in input order; a batched
///   result equals the unbatched one (padding never leaks into real positions).
/// - The request is validated against [`ActivationExtractor::model_info`] before any work.
/// - On a device out of memory the error is [`Error::OutOfMemory`] and nothing is lost:
///   the caller may retry with a smaller batch.
#[async_trait]
pub trait ActivationExtractor: Send + Sync + std::fmt::Debug {
    /// Runs the model and returns the requested layers.
    ///
    /// # Errors
    /// [`Error::InvalidInput`], [`Error::NotSupported`], [`Error::OutOfMemory`], or a backend error.
    async fn extract(&self, request: ActivationRequest) -> Result<Activations>;

    /// The model's shape, dtype and identity.
    fn model_info(&self) -> ModelInfo;

    /// What this extractor supports.
    fn capabilities(&self) -> Capabilities;

    /// The token ids of `text` as this extractor tokenises its text inputs (used to place
    /// [`crate::Readout::Marker`] and the prompt boundary of re-tokenised completions).
    ///
    /// # Errors
    /// [`Error::NotSupported`] (the default) for an extractor without a tokenizer.
    fn tokenize(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let _ = (text, special);
        Err(Error::not_supported("tokenize", self.model_info().architecture))
    }

    /// Gives cached device memory back to the device; called between out-of-memory retries
    /// ([`crate::plan::Backoff`]). Wrappers forward it. Default: nothing to give back.
    fn release_memory(&self) {}

    /// For an extractor that also generates and keeps the hidden states of that pass (vLLM's):
    /// how many inputs were read from it and how many needed a pass of their own, counted
    /// since it was made. `None` (the default): every input is a forward pass.
    fn pass_reuse(&self) -> Option<PassReuse> {
        None
    }
}

/// What [`ActivationExtractor::pass_reuse`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReuse {
    /// Inputs whose hidden states came from the generation pass: no forward pass of their own.
    pub reused: u64,
    /// Inputs generated by this extractor whose readout reaches past what that pass computed
    /// (its last sampled token is never fed back) or whose hidden states were not kept: each
    /// cost one more forward pass.
    pub extra_passes: u64,
    /// Prompt tokens of the extra passes.
    #[serde(default)]
    pub extra_pass_tokens: u64,
    /// Of those, tokens the server did not compute again: their states (KV and hidden states)
    /// came from its prefix cache, left there by the generation pass (vLLM extraction).
    #[serde(default)]
    pub extra_pass_cached_tokens: u64,
}

impl PassReuse {
    /// The counts from `before` to `self`.
    pub fn since(self, before: PassReuse) -> PassReuse {
        PassReuse {
            reused: self.reused.saturating_sub(before.reused),
            extra_passes: self.extra_passes.saturating_sub(before.extra_passes),
            extra_pass_tokens: self.extra_pass_tokens.saturating_sub(before.extra_pass_tokens),
            extra_pass_cached_tokens: self.extra_pass_cached_tokens.saturating_sub(before.extra_pass_cached_tokens),
        }
    }
}
