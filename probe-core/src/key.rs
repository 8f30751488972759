//! Content-addressed cache keys: SHA-256 of a canonical, versioned serialisation of
//! everything that changes a result, plus a readable prefix.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cache::{CacheKey, EntryKind};
use crate::{ModelId, ModelInfo, Positions, SamplingParams};

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
}

/// The key of a set of generations: model id and revision, every resolved sampling field
/// and the prompts in order. `prompt_set` only names the folder.
pub fn generation_key(model: &ModelId, prompt_set: &str, sampling: &SamplingParams, prompts: &[String]) -> CacheKey {
    let digest = digest_of(
        "generations",
        &GenerationSpec { model: &model.id, revision: &model.revision, sampling, prompts, rows: None },
    );
    CacheKey::new(EntryKind::Generations, model_slug(&model.id), slug(prompt_set), None, digest)
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
    let digest = digest_of(
        "generations",
        &GenerationSpec { model: &model.id, revision: &model.revision, sampling, prompts, rows: Some(rows) },
    );
    CacheKey::new(EntryKind::Generations, model_slug(&model.id), slug(prompt_set), None, digest)
}

/// What the activations were computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationSource {
    /// The texts themselves (digest of the texts in order).
    Texts(String),
    /// The texts of a cached generation set, by its digest.
    Generations(String),
}

impl ActivationSource {
    /// The source for raw texts.
    pub fn texts(texts: &[String]) -> Self {
        ActivationSource::Texts(digest_of("texts", &texts))
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
    positions: Positions,
    rows: Option<(usize, usize)>,
}

/// The key of one layer's activations. `rows` narrows it to a slice `[start, end)` of the
/// inputs (one batch of a sharded run); `None` is the whole set.
pub fn activation_key(
    info: &ModelInfo,
    prompt_set: &str,
    source: &ActivationSource,
    layer: usize,
    positions: Positions,
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
    fn canonical_json_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,2],"c":"x"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[1,2]},"b":1}"#);
    }
}
