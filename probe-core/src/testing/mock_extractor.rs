use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::fnv;
use crate::{
    ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Inputs, LayerActivations, ModelId,
    ModelInfo, Positions, Result, SpecialTokens, Tensor,
};

/// A deterministic extractor: each whitespace-separated word (or token id) has a fixed
/// pseudo-random vector per layer, and a position's hidden state mixes its word's vector
/// with a running mean of the words before it, so `last` and `mean` differ and a label
/// carried by words is linearly readable. Counts forward passes and can inject
/// out-of-memory errors above a batch size.
#[derive(Debug)]
pub struct MockExtractor {
    info: ModelInfo,
    passes: AtomicUsize,
    rows: AtomicUsize,
    oom_above: Option<usize>,
}

impl MockExtractor {
    /// A mock with `num_layers` blocks and `hidden` dimensions.
    pub fn new(model: impl Into<String>, num_layers: usize, hidden: usize) -> Self {
        let model = model.into();
        // Another mock model has other "weights": its revision differs as a content hash would.
        let revision = format!("mock-{:016x}", fnv(&[model.as_bytes()]));
        Self {
            info: ModelInfo::new(ModelId::new(model, revision), "mock", num_layers, hidden, 1 << 16)
                .with_tokenizer("whitespace"),
            passes: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
            oom_above: None,
        }
    }
    /// Batches larger than `n` fail with [`Error::OutOfMemory`].
    pub fn with_oom_above(mut self, n: usize) -> Self {
        self.oom_above = Some(n);
        self
    }
    /// Forward passes run so far (one per batch).
    pub fn passes(&self) -> usize {
        self.passes.load(Ordering::SeqCst)
    }
    /// Input rows run through the model so far.
    pub fn rows(&self) -> usize {
        self.rows.load(Ordering::SeqCst)
    }

    /// A text's tokens: `<bos>`, then its whitespace-separated words.
    fn words(text: &str) -> Vec<Vec<u8>> {
        std::iter::once(b"<bos>".to_vec()).chain(text.split_whitespace().map(|w| w.as_bytes().to_vec())).collect()
    }

    fn token_vec(&self, token: &[u8], layer: usize) -> Vec<f32> {
        (0..self.info.hidden_size)
            .map(|j| {
                let h = fnv(&[token, &layer.to_le_bytes(), &j.to_le_bytes()]);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }
}

#[async_trait]
impl ActivationExtractor for MockExtractor {
    async fn extract(&self, request: ActivationRequest) -> Result<Activations> {
        request.validate(&self.info)?;
        let tokens: Vec<Vec<Vec<u8>>> = match &request.inputs {
            Inputs::Texts(t) => t.iter().map(|s| Self::words(s)).collect(),
            Inputs::TokenIds(ids) => ids.iter().map(|s| s.iter().map(|t| t.to_le_bytes().to_vec()).collect()).collect(),
        };
        let n = tokens.len();
        let batch = request.batch_size.unwrap_or(n).min(n);
        if let Some(limit) = self.oom_above.filter(|&l| batch > l) {
            return Err(Error::OutOfMemory {
                device: "mock:0".into(),
                requested_bytes: Some((batch * 1_000_000) as u64 + limit as u64),
            });
        }
        self.passes.fetch_add(n.div_ceil(batch), Ordering::SeqCst);
        self.rows.fetch_add(n, Ordering::SeqCst);
        let hidden = self.info.hidden_size;
        let seq = tokens.iter().map(Vec::len).max().unwrap_or(0);
        let mut layers = Vec::new();
        // Every site reads the same values (a mock: the site only tags them).
        for (site, layer) in request.reads().into_iter().flat_map(|(s, ls)| ls.into_iter().map(move |l| (s, l))) {
            let mut data = Vec::new();
            for (i, toks) in tokens.iter().enumerate() {
                let span = request.span(i, toks.len())?;
                let mut running = vec![0f32; hidden];
                let mut states = Vec::with_capacity(toks.len());
                for (p, t) in toks.iter().enumerate() {
                    let v = self.token_vec(t, layer);
                    for j in 0..hidden {
                        running[j] += v[j];
                    }
                    states.push(
                        (0..hidden).map(|j| 0.5 * v[j] + 0.5 * running[j] / (p + 1) as f32).collect::<Vec<f32>>(),
                    );
                }
                match request.positions {
                    Positions::Last => data.extend_from_slice(&states[span.end - 1]),
                    Positions::Mean => {
                        let read = &states[span.start..span.end];
                        for j in 0..hidden {
                            data.push(read.iter().map(|s| s[j]).sum::<f32>() / read.len() as f32);
                        }
                    }
                    Positions::All => {
                        for p in 0..seq {
                            match states.get(p) {
                                Some(s) => data.extend_from_slice(s),
                                None => data.extend(std::iter::repeat_n(0.0, hidden)),
                            }
                        }
                    }
                }
            }
            let shape = if request.positions == Positions::All { vec![n, seq, hidden] } else { vec![n, hidden] };
            layers.push(LayerActivations::new(site, layer, Tensor::new(shape, data)));
        }
        let mask = (request.positions == Positions::All).then(|| {
            Tensor::new(
                vec![n, seq],
                tokens.iter().flat_map(|t| (0..seq).map(move |p| if p < t.len() { 1.0 } else { 0.0 })).collect(),
            )
        });
        Ok(Activations::new(layers, request.positions, mask, tokens.iter().map(Vec::len).collect()))
    }

    /// One id per token of [`MockExtractor::extract`]'s texts (`<bos>` and the words), each a
    /// hash of the word: the right count, not ids that extract to the same vectors.
    fn tokenize(&self, text: &str, _special: SpecialTokens) -> Result<Vec<u32>> {
        let vocab = self.info.vocab_size as u64;
        Ok(Self::words(text).iter().map(|w| (fnv(&[w]) % vocab) as u32).collect())
    }

    fn model_info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { token_id_input: true, all_positions: true, early_stop: true, ..Capabilities::none() }
    }
}
