//! Cache keys: every field that changes a result changes the key, nothing else does, and
//! the format is pinned by golden keys.

use probe_core::key::{ActivationSource, activation_key, canonical_json, generation_key};
use probe_core::{ModelId, ModelInfo, Readout, SamplingParams};
use proptest::prelude::*;

fn info() -> ModelInfo {
    ModelInfo::new(ModelId::new("org/model", "rev1"), "llama", 8, 64, 1000).with_tokenizer("add_special_tokens=true")
}

fn prompts() -> Vec<String> {
    vec!["The capital of France is".into(), "2 + 2 =".into()]
}

/// Pins the serialisation across platforms and releases: if this fails, every cache in the
/// world is invalidated — bump `KEY_SCHEMA_VERSION` on purpose or revert the change.
#[test]
fn golden_keys() {
    let g = generation_key(&ModelId::new("org/model", "rev1"), "capitals", &SamplingParams::greedy(32), &prompts());
    assert_eq!(g.digest, "2131faeb9a5f2a2b232781b3ef1527865e8f76fa8b127b5feeff060b7eacfbcb");
    assert_eq!(g.path(), format!("org-model/generations/capitals/{}", g.digest));
    let a =
        activation_key(&info(), "capitals", &ActivationSource::Generations(g.digest.clone()), 4, &Readout::Last, None);
    assert_eq!(a.digest, "2e33352f43883f02f577e23f8be3397fbda12c5008c69f7e7dcb1038994953bb");
    assert_eq!(a.path(), format!("org-model/activations/capitals/layer-004/{}", a.digest));
}

#[test]
fn prompt_set_name_is_not_part_of_the_digest() {
    let s = SamplingParams::greedy(32);
    let a = generation_key(&ModelId::new("m", "r"), "one", &s, &prompts());
    let b = generation_key(&ModelId::new("m", "r"), "two", &s, &prompts());
    assert_eq!(a.digest, b.digest);
}

#[test]
fn canonical_form_ignores_field_order() {
    let a: serde_json::Value = serde_json::from_str(r#"{"temperature":0.5,"top_p":1.0,"n":1}"#).unwrap();
    let b: serde_json::Value = serde_json::from_str(r#"{"n":1,"top_p":1.0,"temperature":0.5}"#).unwrap();
    assert_eq!(canonical_json(&a), canonical_json(&b));
}

fn sampling() -> impl Strategy<Value = SamplingParams> {
    (
        0.0f32..2.0,
        0.01f32..=1.0,
        0u32..100,
        1u32..4096,
        any::<u64>(),
        1u32..8,
        proptest::collection::vec("[a-z]{1,4}", 0..3),
    )
        .prop_map(|(t, p, k, m, s, n, stop)| {
            SamplingParams::greedy(m)
                .with_temperature(t)
                .with_top_p(p)
                .with_top_k(k)
                .with_seed(s)
                .with_n(n)
                .with_stop(stop)
        })
}

proptest! {
    #[test]
    fn every_sampling_field_changes_the_generation_key(s in sampling(), which in 0usize..9) {
        let m = ModelId::new("m", "r");
        let base = generation_key(&m, "set", &s, &prompts());
        let mut t = s.clone();
        let mut model = m.clone();
        let mut ps = prompts();
        match which {
            0 => t.temperature += 0.25,
            1 => t.top_p = if t.top_p > 0.5 { t.top_p - 0.25 } else { t.top_p + 0.25 },
            2 => t.top_k += 1,
            3 => t.max_tokens += 1,
            4 => t.seed = t.seed.wrapping_add(1),
            5 => t.n += 1,
            6 => t.stop.push("zz".into()),
            7 => { model.revision.push('x'); }
            _ => ps.swap(0, 1),
        }
        prop_assert_ne!(base.digest, generation_key(&model, "set", &t, &ps).digest);
    }

    #[test]
    fn every_activation_field_changes_the_activation_key(layer in 0usize..9, which in 0usize..8) {
        let i = info();
        let src = ActivationSource::texts(&prompts());
        let base = activation_key(&i, "set", &src, layer, &Readout::Last, None);
        let mut j = i.clone();
        let mut l = layer;
        let mut pos = Readout::Last;
        let mut s2 = src.clone();
        let mut rows = None;
        match which {
            0 => j.id.id.push('x'),
            1 => j.id.revision.push('x'),
            2 => j.dtype = "bf16".into(),
            3 => j.tokenizer.push('x'),
            4 => l += 1,
            5 => pos = if layer % 2 == 0 { Readout::Mean } else { Readout::Marker("A:".into()) },
            6 => s2 = ActivationSource::Generations(match &src { ActivationSource::Texts(d) => d.clone(), ActivationSource::Generations(d) | ActivationSource::GeneratedTokens(d) => d.clone() }),
            _ => rows = Some((0, 2)),
        }
        prop_assert_ne!(base.digest, activation_key(&j, "set", &s2, l, &pos, rows).digest);
    }

    #[test]
    fn keys_are_stable(s in sampling()) {
        let m = ModelId::new("m", "r");
        prop_assert_eq!(generation_key(&m, "a", &s, &prompts()), generation_key(&m, "a", &s.clone(), &prompts()));
    }
}
