//! Content-addressed cache keys: SHA-256 of a canonical, versioned serialisation of
//! everything that changes a result, plus a readable prefix.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, EntryKind};
use crate::{ModelId, ModelInfo, Readout, SamplingParams, Site, SpecialTokens};

/// Version of the key serialisation; bump it when the canonical form changes.
pub const KEY_SCHEMA_VERSION: u32 = 1;

/// Writes `value` canonically: object keys sorted, no whitespace, numbers as serde_json
/// prints them. Independent of serde_json's `preserve_order` feature.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// SHA-256 (hex) of the canonical form of `spec`, tagged with the schema version and `kind`.
pub fn digest_of<T: Serialize>(kind: &str, spec: &T) -> String {
    let value = serde_json::to_value(spec).expect("key specs serialise to JSON");
    let mut h = Sha256::new();
    h.update(format!("probe-cache-key/v{KEY_SCHEMA_VERSION}/{kind}\n").as_bytes());
    h.update(canonical_json(&value).as_bytes());
    hex::encode(h.finalize())
}

/// Turns a user-given name into one safe path segment: only `[A-Za-z0-9._-]`, no leading
/// dot or dash, never empty, at most 80 bytes. `50/50` → `50-50`, `../../etc` → `etc`.
pub fn slug(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '-' };
        if c == '-' && s.ends_with('-') {
            continue;
        }
        s.push(c);
    }
    let s = s.trim_matches(|c| c == '-' || c == '.');
    let mut s: String = s.chars().take(80).collect();
    while s.ends_with('.') || s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() { "_".to_owned() } else { s }
}

/// The readable slug of a model id: the last path component of a local folder, or the
/// `org-name` form of a hub-style id.
pub fn model_slug(id: &str) -> String {
    let trimmed = id.trim_end_matches('/');
    if trimmed.starts_with('/') || trimmed.starts_with('.') {
        slug(trimmed.rsplit('/').next().unwrap_or(trimmed))
    } else {
        slug(&trimmed.replace('/', "--"))
    }
}

#[derive(Serialize)]
struct GenerationSpec<'a> {
    model: &'a str,
    revision: &'a str,
    sampling: &'a SamplingParams,
    prompts: &'a [String],
    /// Only in block keys: absent (not `null`) in whole-set keys, so their digests are those
    /// of schema v1 before blocks existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<(usize, usize)>,
    /// Only for prompts tokenised as written (rendered chat templates): absent for plain
    /// texts, so their digests are unchanged.
    #[serde(skip_serializing_if = "SpecialTokens::is_add")]
    special_tokens: SpecialTokens,
}

/// The key of a set of generations: model id and revision, every resolved sampling field
/// and the prompts in order. `prompt_set` only names the folder.
pub fn generation_key(model: &ModelId, prompt_set: &str, sampling: &SamplingParams, prompts: &[String]) -> CacheKey {
    generation_key_with(model, prompt_set, sampling, prompts, SpecialTokens::Add)
}

/// [`generation_key`] for prompts tokenised with `special` (a chat template's renderings are
/// [`SpecialTokens::AsWritten`], and the rendered text is in `prompts`, so a changed template
/// changes the key).
pub fn generation_key_with(
    model: &ModelId,
    prompt_set: &str,
    sampling: &SamplingParams,
    prompts: &[String],
    special: SpecialTokens,
) -> CacheKey {
    generations_key(model, prompt_set, sampling, prompts, None, special)
}

/// The key of one block of a set of generations: the completions of prompts `[start, end)`
/// of the set that [`generation_key`] names (same model, sampling and prompts, plus `rows`).
/// A sweep writes block entries as it generates and folds them into the whole-set entry.
pub fn generation_block_key(
    model: &ModelId,
    prompt_set: &str,
    sampling: &SamplingParams,
    prompts: &[String],
    rows: (usize, usize),
) -> CacheKey {
    generation_block_key_with(model, prompt_set, sampling, prompts, rows, SpecialTokens::Add)
}

/// [`generation_block_key`] for prompts tokenised with `special` (see [`generation_key_with`]).
pub fn generation_block_key_with(
    model: &ModelId,
    prompt_set: &str,
    sampling: &SamplingParams,
    prompts: &[String],
    rows: (usize, usize),
    special: SpecialTokens,
) -> CacheKey {
    generations_key(model, prompt_set, sampling, prompts, Some(rows), special)
}

/// The one place a generation key is made: the whole set (`rows: None`) or one block.
fn generations_key(
    model: &ModelId,
    prompt_set: &str,
    sampling: &SamplingParams,
    prompts: &[String],
    rows: Option<(usize, usize)>,
    special: SpecialTokens,
) -> CacheKey {
    let spec = GenerationSpec {
        model: &model.id,
        revision: &model.revision,
        sampling,
        prompts,
        rows,
        special_tokens: special,
    };
    CacheKey::new(
        EntryKind::Generations,
        model_slug(&model.id),
        slug(prompt_set),
        None,
        digest_of("generations", &spec),
    )
}

/// What the activations were computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationSource {
    /// The texts themselves (digest of the texts in order).
    Texts(String),
    /// The texts (prompt + completion) of a cached generation set, by its digest: generators
    /// that give no token ids.
    Generations(String),
    /// The token ids (prompt ids + completion ids) of a cached generation set, by its digest:
    /// exactly the sequences that were generated.
    GeneratedTokens(String),
}

impl ActivationSource {
    /// The source for raw texts.
    pub fn texts(texts: &[String]) -> Self {
        ActivationSource::Texts(digest_of("texts", &texts))
    }
    /// The source for texts tokenised with `special` (chat renderings are tokenised as written).
    pub fn texts_with(texts: &[String], special: SpecialTokens) -> Self {
        match special {
            SpecialTokens::Add => Self::texts(texts),
            SpecialTokens::AsWritten => ActivationSource::Texts(digest_of("texts-as-written", &texts)),
        }
    }
}

#[derive(Serialize)]
struct ActivationSpec<'a> {
    source: &'a ActivationSource,
    model: &'a str,
    revision: &'a str,
    dtype: &'a str,
    tokenizer: &'a str,
    layer: usize,
    positions: &'a Readout,
    rows: Option<(usize, usize)>,
    /// Absent for the residual stream, so its keys keep their digests.
    #[serde(skip_serializing_if = "Site::is_resid")]
    site: Site,
}

/// The key of one layer's activations. `rows` narrows it to a slice `[start, end)` of the
/// inputs (one batch of a sharded run); `None` is the whole set.
pub fn activation_key(
    info: &ModelInfo,
    prompt_set: &str,
    source: &ActivationSource,
    layer: usize,
    positions: &Readout,
    rows: Option<(usize, usize)>,
) -> CacheKey {
    activation_key_at(info, prompt_set, source, (Site::Resid, layer), positions, rows)
}

/// [`activation_key`] of one layer (block) of `site`; the residual stream's keys are those of
/// [`activation_key`].
pub fn activation_key_at(
    info: &ModelInfo,
    prompt_set: &str,
    source: &ActivationSource,
    (site, layer): (Site, usize),
    positions: &Readout,
    rows: Option<(usize, usize)>,
) -> CacheKey {
    let digest = digest_of(
        "activations",
        &ActivationSpec {
            source,
            model: &info.id.id,
            revision: &info.id.revision,
            dtype: &info.dtype,
            tokenizer: &info.tokenizer,
            layer,
            positions,
            rows,
            site,
        },
    );
    CacheKey::new(EntryKind::Activations, model_slug(&info.id.id), slug(prompt_set), Some(layer), digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_never_escape() {
        assert_eq!(slug("50/50"), "50-50");
        assert_eq!(slug("../../etc"), "etc");
        assert_eq!(slug(""), "_");
        assert_eq!(slug(".."), "_");
        assert_eq!(slug("a b\0c"), "a-b-c");
        assert_eq!(model_slug("/tmp/models/tiny-llama/"), "tiny-llama");
        assert_eq!(model_slug("meta-llama/Llama-3-8B"), "meta-llama-Llama-3-8B");
    }

    #[test]
    fn generation_block_keys_differ_by_rows_and_from_the_whole_set() {
        let (m, s) = (ModelId::new("m", "r"), SamplingParams::greedy(4));
        let prompts = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let whole = generation_key(&m, "set", &s, &prompts);
        let b0 = generation_block_key(&m, "set", &s, &prompts, (0, 2));
        let b1 = generation_block_key(&m, "set", &s, &prompts, (2, 3));
        assert_ne!(b0.digest, whole.digest);
        assert_ne!(b0.digest, b1.digest);
        assert_eq!(b0, generation_block_key(&m, "set", &s, &prompts, (0, 2)));
        assert_eq!(b0.path().rsplit_once('/').unwrap().0, whole.path().rsplit_once('/').unwrap().0);
    }

    #[test]
    fn chat_renderings_and_generated_tokens_have_their_own_keys() {
        let (m, s) = (ModelId::new("m", "r"), SamplingParams::greedy(4));
        let prompts = vec!["<s>a".to_owned()];
        let plain = generation_key(&m, "set", &s, &prompts);
        assert_eq!(plain, generation_key_with(&m, "set", &s, &prompts, SpecialTokens::Add));
        let chat = generation_key_with(&m, "set", &s, &prompts, SpecialTokens::AsWritten);
        assert_ne!(plain.digest, chat.digest, "the same text tokenised as written is another generation");
        assert_ne!(
            generation_block_key(&m, "set", &s, &prompts, (0, 1)).digest,
            generation_block_key_with(&m, "set", &s, &prompts, (0, 1), SpecialTokens::AsWritten).digest
        );
        assert_eq!(ActivationSource::texts(&prompts), ActivationSource::texts_with(&prompts, SpecialTokens::Add));
        assert_ne!(ActivationSource::texts(&prompts), ActivationSource::texts_with(&prompts, SpecialTokens::AsWritten));
        let info = ModelInfo::new(m.clone(), "llama", 2, 4, 10);
        let by_text =
            activation_key(&info, "set", &ActivationSource::Generations(plain.digest.clone()), 1, &Readout::Last, None);
        let by_ids = activation_key(
            &info,
            "set",
            &ActivationSource::GeneratedTokens(plain.digest.clone()),
            1,
            &Readout::Last,
            None,
        );
        assert_ne!(
            by_text.digest, by_ids.digest,
            "activations of generated ids never reuse those of re-tokenised text"
        );
    }

    #[test]
    fn every_site_has_its_own_activation_keys_and_resid_keeps_its_digest() {
        let info = ModelInfo::new(ModelId::new("m", "r"), "llama", 2, 4, 10);
        let src = ActivationSource::texts(&["a".to_owned()]);
        let resid = activation_key(&info, "set", &src, 1, &Readout::Last, None);
        assert_eq!(resid, activation_key_at(&info, "set", &src, (Site::Resid, 1), &Readout::Last, None));
        // The digest of schema v1 before sites existed.
        let before = digest_of(
            "activations",
            &serde_json::json!({"source": src, "model": "m", "revision": "r", "dtype": "f32", "tokenizer": "",
                "layer": 1, "positions": "last", "rows": null}),
        );
        assert_eq!(resid.digest, before);
        let digests: std::collections::BTreeSet<String> = Site::ALL
            .into_iter()
            .map(|site| activation_key_at(&info, "set", &src, (site, 1), &Readout::Last, None).digest)
            .collect();
        assert_eq!(digests.len(), Site::ALL.len());
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }
}
