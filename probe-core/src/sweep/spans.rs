//! Where a [`Readout`] reads each input: the token spans of an [`ActivationRequest`],
//! from the prompt boundary (the prompt's token ids as generated, else the prompt re-tokenised
//! by the extractor) and, for a marker, the token count of the text up to its last occurrence.
//!
//! [`ActivationRequest`]: crate::ActivationRequest

use crate::{ActivationExtractor, Error, Generation, Inputs, Readout, Result, Span, SpecialTokens};

use super::PromptSet;

/// Checks that `readout` can be read from these inputs at all, before any work.
///
/// # Errors
/// [`Error::InvalidInput`] for `mean-completion` without completions and for `all`, which
/// gives no single vector per prompt.
pub(super) fn check(readout: &Readout, completions: bool) -> Result<()> {
    match readout {
        Readout::MeanCompletion if !completions => Err(Error::invalid(
            "positions",
            "mean-completion reads the completion, but this run generates none (sampling is off)",
        )),
        Readout::All => Err(Error::invalid(
            "positions",
            "\"all\" (a probe needs one vector per prompt: use last, last-prompt, mean, mean-completion or \
             marker:TEXT; `probe extract --positions all` writes every token)",
        )),
        _ => Ok(()),
    }
}

/// The span of every input in `rows` (`[start, end)` of `prompts`), or `None` when the
/// readout reads every token. `gens` are the rows' completions (none: the inputs are the
/// prompts), `inputs` what the extractor gets for these rows.
///
/// # Errors
/// [`Error::InvalidInput`] naming the prompt whose text lacks the marker or whose completion
/// is empty (`mean-completion`), or when the extractor has no tokenizer and one is needed.
pub(super) fn resolve(
    extractor: &dyn ActivationExtractor,
    readout: &Readout,
    special: SpecialTokens,
    (prompts, rows): (&PromptSet, (usize, usize)),
    gens: Option<&[Generation]>,
    inputs: &Inputs,
) -> Result<Option<Vec<Span>>> {
    if readout.is_whole() || (gens.is_none() && *readout == Readout::LastPrompt) {
        // Without completions the whole input is the prompt.
        return Ok(None);
    }
    let tokens = |text: &str| {
        extractor.tokenize(text, special).map_err(|e| match e {
            Error::NotSupported { backend, .. } => Error::invalid(
                "positions",
                format!("{readout} needs the extractor's tokenizer, and the {backend} extractor has none"),
            ),
            e => e,
        })
    };
    let (start, end) = rows;
    let mut spans = Vec::with_capacity(end - start);
    for (k, prompt) in prompts.prompts[start..end].iter().enumerate() {
        let generation = gens.map(|g| &g[k]);
        let text = generation.map_or_else(|| prompt.text.clone(), Generation::full_text);
        if let Readout::Marker(_) = readout {
            let prefix = readout.marker_prefix(&prompt.id, &text)?;
            spans.push(Span::new(0, tokens(prefix)?.len()));
            continue;
        }
        let generation = generation.expect("whole-input readouts returned above");
        let prompt_len = match &generation.prompt_token_ids {
            Some(ids) => ids.len(),
            None => tokens(&generation.prompt)?.len(),
        };
        let len = match inputs {
            Inputs::TokenIds(ids) => ids[k].len(),
            Inputs::Texts(_) => tokens(&text)?.len(),
        };
        spans.push(readout.span(&prompt.id, len, prompt_len)?);
    }
    Ok(Some(spans))
}
