//! Long test inputs of a given token count, shared by the long-input tests.

/// Words drawn from a fixed seed: the shortest prefix of the stream that `count` (a tokenizer's
/// token count) puts at `tokens` or more.
pub(crate) fn text_of(tokens: usize, seed: u64, count: impl Fn(&str) -> usize) -> String {
    const WORDS: &[&str] = &[
        "the", "farmer", "counted", "seven", "apples", "in", "garden", "while", "old", "man", "painted", "bridge",
        "river", "ran", "past", "barn", "at", "noon", "on", "Monday", "quick", "brown", "fox", "jumps", "over", "lazy",
        "dog", "Paris", "is", "capital", "of", "France", "numbers", "like", "12345", "and", "symbols",
    ];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut text = String::new();
    while count(&text) < tokens {
        for _ in 0..50 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        }
    }
    // Back off word by word to the first prefix that still has `tokens` tokens or more.
    while let Some(cut) = text.rfind(' ') {
        if count(&text[..cut]) < tokens {
            break;
        }
        text.truncate(cut);
    }
    text
}
