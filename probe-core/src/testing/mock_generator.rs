use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::fnv;
use crate::{Capabilities, Error, FinishReason, Generation, GenerationRequest, Generator, ModelId, Result};

const WORDS: &[&str] = &["alpha", "beta", "gamma", "delta", "yes", "no", "maybe", "the", "end", "."];

/// A deterministic generator: each "token" is a word picked by a hash of the prompt, the
/// position, the seed (when sampling) and the sample index. Counts its calls.
#[derive(Debug)]
pub struct MockGenerator {
    model: ModelId,
    calls: AtomicUsize,
    generated: AtomicUsize,
}

impl MockGenerator {
    /// A mock serving `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self { model: ModelId::new(model, "mock"), calls: AtomicUsize::new(0), generated: AtomicUsize::new(0) }
    }
    /// Number of `generate` calls that did work.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    /// Number of completions produced so far.
    pub fn generated(&self) -> usize {
        self.generated.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Generator for MockGenerator {
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        request.validate()?;
        if request.model != self.model.id {
            return Err(Error::invalid(
                "model",
                format!("{:?} is not served here (serving {:?})", request.model, self.model.id),
            ));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        let s = &request.sampling;
        let mut out = Vec::new();
        for (i, prompt) in request.prompts.iter().enumerate() {
            for k in 0..s.n {
                let mut text = String::new();
                let mut ids = Vec::new();
                let mut finish = FinishReason::Length;
                for pos in 0..s.max_tokens {
                    let seed = if s.is_greedy() { 0 } else { s.seed.wrapping_add(u64::from(k)) };
                    let h = fnv(&[prompt.as_bytes(), &pos.to_le_bytes(), &seed.to_le_bytes()]);
                    let id = (h % WORDS.len() as u64) as u32;
                    let candidate = format!("{text} {}", WORDS[id as usize]);
                    if let Some(cut) = s.stop.iter().filter_map(|st| candidate.find(st.as_str())).min() {
                        text = candidate[..cut].to_owned();
                        finish = FinishReason::Stop;
                        break;
                    }
                    text = candidate;
                    ids.push(id);
                    if WORDS[id as usize] == "." {
                        finish = FinishReason::Stop;
                        break;
                    }
                }
                out.push(Generation::new(i, k, prompt.clone(), text, finish, Some(ids)));
            }
        }
        self.generated.fetch_add(out.len(), Ordering::SeqCst);
        Ok(out)
    }

    fn model_id(&self) -> ModelId {
        self.model.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            sampling: true,
            seeded_sampling: true,
            stop_strings: true,
            token_ids: true,
            multiple_samples: true,
            ..Capabilities::none()
        }
    }
}
