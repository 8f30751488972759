//! The generation phase: one cache entry per prompt set and sampling settings.

use crate::key::generation_key;
use crate::{
    CacheStore, CacheStoreExt, Error, Generation, GenerationRequest, Generator, PutRequest, Result, SamplingParams,
    codec,
};

use super::{Phase, PromptSet, SweepEvent, SweepObserver, SweepSummary};

/// The texts to probe (prompt + completion, in prompt order) and the digest of the
/// generation entry they came from.
pub(super) async fn texts_with_completions(
    generator: &dyn Generator,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    prompts: &PromptSet,
    sampling: &SamplingParams,
    summary: &mut SweepSummary,
) -> Result<(Vec<String>, String)> {
    let texts = prompts.texts();
    let model = generator.model_id();
    let key = generation_key(&model, &prompts.name, sampling, &texts);
    observer.on_event(&SweepEvent::PhaseStarted { phase: Phase::Generation, total: texts.len() });

    let cached = match cache.get_key(&key).await? {
        Some(entry) => match codec::decode_generations(&entry.payload) {
            Ok(g) if usable(&g, &texts) => Some(g),
            Ok(g) => {
                tracing::warn!(
                    "cached generations {key} hold {} records for {} prompts; regenerating",
                    g.len(),
                    texts.len()
                );
                None
            }
            Err(e) => {
                tracing::warn!("{e} (entry {key}); regenerating");
                None
            }
        },
        None => None,
    };
    let gens = match cached {
        Some(g) => {
            summary.generations_cached = g.len();
            g
        }
        None => {
            let request = GenerationRequest::new(model.id.clone(), texts.clone()).with_sampling(sampling.clone());
            let mut g = generator.generate(request).await?;
            if !usable(&g, &texts) {
                return Err(Error::backend(
                    "generator",
                    format!("returned {} generations for {} prompts, or out of order", g.len(), texts.len()),
                ));
            }
            g.sort_by_key(|x| x.prompt_index);
            let payload = codec::encode_generations(&g);
            cache
                .put(
                    PutRequest::new(key.clone(), payload)
                        .with_attr("model", model.id.clone())
                        .with_attr("revision", model.revision.clone())
                        .with_attr("prompt_set", prompts.name.clone())
                        .with_attr("prompts", texts.len().to_string()),
                )
                .await?;
            summary.generations_generated = g.len();
            g
        }
    };
    observer.on_event(&SweepEvent::Progress { phase: Phase::Generation, done: texts.len() });
    observer.on_event(&SweepEvent::PhaseFinished { phase: Phase::Generation });
    Ok((gens.iter().map(Generation::full_text).collect(), key.digest))
}

/// One generation per prompt, in order, each carrying its prompt.
fn usable(gens: &[Generation], texts: &[String]) -> bool {
    gens.len() == texts.len()
        && gens.iter().enumerate().all(|(i, g)| g.prompt_index == i && g.sample_index == 0 && g.prompt == texts[i])
}
