//! `probe sweep`, `generate` and `extract` with `messages` prompts on the fixture Llama
//! (PROBE_FIXTURES) given a chat template: rendered once, identically for generation and
//! extraction, one BOS; a folder without a template is refused naming the prompt and the folder.
#![cfg(feature = "candle")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use probe_core::testing::require_service;

const TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content | trim }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";

fn probe(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("PROBE_CACHE")
        .output()
        .unwrap()
}

/// A copy of the fixture Llama without a chat template, and a messages prompt file.
fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    let root = PathBuf::from(require_service("PROBE_FIXTURES")?);
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(root.join("models/llama")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let mut lines = String::new();
    for i in 0..8 {
        let (topic, label) = if i % 2 == 0 { ("fruit", "a") } else { ("metal", "b") };
        lines.push_str(&format!(
            "{{\"id\":\"c{i}\",\"messages\":[{{\"role\":\"system\",\"content\":\"Be brief.\"}},{{\"role\":\"user\",\"content\":\"Name a {topic} ({i}).\"}}],\"label\":\"{label}\"}}\n"
        ));
    }
    std::fs::write(tmp.path().join("chat.jsonl"), lines).unwrap();
    Some((tmp, model))
}

#[test]
fn a_chat_prompt_set_sweeps_with_the_models_template() {
    let Some((tmp, model)) = setup() else { return };
    let m = model.to_str().unwrap();
    let sweep = ["sweep", "--model", m, "--prompts", "chat.jsonl", "--layers", "1,2", "--max-tokens", "3"];
    let out = probe(tmp.path(), &[&sweep[..], &["--cache", "cache", "--out", "out"]].concat());
    assert_eq!(out.status.code(), Some(2), "no template: refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"c0\"") && err.contains(m) && err.contains("--chat-template"), "{err}");
    assert!(!tmp.path().join("cache").exists() && !tmp.path().join("out").exists(), "nothing written");

    // --chat-template FILE, then the same template in the model folder: the same run (cached).
    std::fs::write(tmp.path().join("t.jinja"), TEMPLATE).unwrap();
    let out =
        probe(tmp.path(), &[&sweep[..], &["--cache", "cache", "--out", "out", "--chat-template", "t.jinja"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 generated"), "{stdout}");
    std::fs::write(model.join("chat_template.jinja"), TEMPLATE).unwrap();
    let out = probe(tmp.path(), &[&sweep[..], &["--cache", "cache", "--out", "out"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("0 generated, 8 cached"), "{stdout}");
    // A changed template is another prompt set: generated again.
    std::fs::write(model.join("chat_template.jinja"), TEMPLATE.replace("[assistant]", "[bot]")).unwrap();
    let out = probe(tmp.path(), &[&sweep[..], &["--cache", "cache", "--out", "out"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("8 generated"), "{stdout}");

    // probe generate: the prompt ids start with exactly one BOS (the template wrote it).
    let out = probe(
        tmp.path(),
        &["generate", "--model", m, "--prompts", "chat.jsonl", "--max-tokens", "2", "--out", "g.jsonl"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(tmp.path().join("g.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert!(
        first["prompt"].as_str().unwrap().starts_with("<s>[system] Be brief.\n[user] Name a fruit (0).\n[bot]"),
        "{first}"
    );
    let ids: Vec<u64> = first["prompt_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(ids[0], 1, "the BOS <s> first: {ids:?}");
    assert_ne!(ids[1], 1, "and only once: {ids:?}");

    // probe extract renders the same way.
    let out = probe(
        tmp.path(),
        &[
            "extract",
            "--model",
            m,
            "--input",
            "chat.jsonl",
            "--layers",
            "1",
            "--positions",
            "last",
            "--out",
            "x.safetensors",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
