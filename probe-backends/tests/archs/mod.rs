//! The fixture architectures the candle tests run on (PROBE_FIXTURES' models), and the error
//! measure of the tests that compare two candle computations.

/// One fixture per architecture (the fidelity tests cover their checkpoint-layout variants).
pub(crate) const ARCHS: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "gemma2",
    "qwen3",
    "gemma3_text",
    "mixtral",
    "qwen3_moe",
    "olmo2",
    "phi3",
    "gpt2",
    "gpt_neox",
];

/// max |a − b| over max(1, max |b|) (`b` the reference), f32.
#[allow(dead_code)] // not every test that lists the architectures compares two computations
pub(crate) fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "same length");
    let num = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    num / b.iter().map(|y| y.abs()).fold(1f32, f32::max)
}
