//! Chat templates rendered by probe (minijinja) are byte-identical to transformers'
//! `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)` on three
//! templates as published: Llama 3 (`chat_template.jinja`), Gemma 3 (`chat_template.jinja`) and
//! Qwen3 (ChatML with thinking, in `tokenizer_config.json`), each with its tokenizer config's
//! special tokens (tests/data/chat/). Needs PROBE_PYTHON (transformers) for the comparison.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use probe_backends::chat::ChatTemplate;
use probe_core::sweep::ChatMessage;
use probe_core::testing::require_service;
use serde_json::{Value, json};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat")
}

const STYLES: [&str; 3] = ["llama3", "gemma3", "qwen3"];

/// Conversations that exercise each template's branches: a lone user turn, a system prompt
/// (Gemma folds it into the first user turn), whitespace that `| trim` removes, non-ASCII text,
/// several turns, an assistant turn with Qwen3's `<think>` block (split/rstrip/lstrip/strip),
/// and turns that do not alternate (Gemma refuses them with `raise_exception`).
fn conversations() -> Vec<Vec<ChatMessage>> {
    let m = ChatMessage::new;
    vec![
        vec![m("user", "What is the capital of France?")],
        vec![m("system", "You are terse."), m("user", "  Hi there \n")],
        vec![
            m("system", "Answer in French."),
            m("user", "Émile's café — 2+2?"),
            m("assistant", "Quatre."),
            m("user", "And 3+3?\n\n"),
        ],
        vec![m("user", "q"), m("assistant", "<think>\nhmm\n</think>\n\nA."), m("user", "again")],
        vec![m("user", "q"), m("assistant", "\n<think>\nhmm\n</think>\n\nA.")],
        vec![m("user", "one"), m("user", "two")],
    ]
}

fn render_with_transformers(python: &str, dirs: &[PathBuf], convs: &[Vec<ChatMessage>]) -> Value {
    let req = json!({"dirs": dirs, "conversations": convs});
    let mut child = Command::new(python)
        .arg(data().join("render.py"))
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start PROBE_PYTHON");
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "render.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("render.py prints JSON")
}

#[test]
fn renderings_are_byte_identical_to_transformers() {
    let Some(python) = require_service("PROBE_PYTHON") else { return };
    let dirs: Vec<PathBuf> = STYLES.iter().map(|s| data().join(s)).collect();
    let convs = conversations();
    let want = render_with_transformers(&python, &dirs, &convs);
    let mut compared = 0;
    for dir in &dirs {
        let template = ChatTemplate::from_model_dir(dir).unwrap().expect("the fixture has a chat template");
        let rows = want[dir.to_str().unwrap()].as_array().expect("one row per conversation");
        for (conv, expected) in convs.iter().zip(rows) {
            let got = template.render(conv);
            match expected {
                Value::String(s) => {
                    assert_eq!(got.as_ref().ok(), Some(s), "{}: {conv:?}", dir.display());
                    compared += 1;
                }
                other => {
                    let msg = other["error"].as_str().unwrap();
                    let e = got.expect_err("transformers refused this conversation").to_string();
                    assert!(e.contains(msg), "{}: transformers said {msg:?}, probe {e:?}", dir.display());
                }
            }
        }
    }
    assert!(compared >= 15, "only {compared} renderings compared");
}

#[test]
fn each_style_writes_its_bos_once_and_ends_with_the_generation_prompt() {
    let conv = &conversations()[1];
    let expect = [
        ("llama3", "<|begin_of_text|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("gemma3", "<bos>", "<start_of_turn>model\n"),
        ("qwen3", "<|im_start|>system\n", "<|im_start|>assistant\n"),
    ];
    for (style, start, end) in expect {
        let t = ChatTemplate::from_model_dir(&data().join(style)).unwrap().unwrap();
        let text = t.render(conv).unwrap();
        assert!(text.starts_with(start) && text.ends_with(end), "{style}: {text:?}");
        if let Some(bos) = t.bos_token() {
            assert_eq!(text.matches(bos).count(), 1, "{style}: one BOS in {text:?}");
        }
    }
}
