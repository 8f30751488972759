//! Bad input to the `probe` binary: one line on stderr naming the value, exit status 2, and
//! nothing written to the cache.

use std::path::Path;
use std::process::Command;

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Text the one-line message must contain (the bad value).
    expect: String,
}

fn write(dir: &Path, name: &str, text: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn good_prompts() -> String {
    (0..10).map(|i| format!("{{\"id\":{i},\"text\":\"word{i} here\",\"label\":{}}}\n", i % 2)).collect()
}

fn sweep(model: &str, prompts: &str, layers: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["sweep", "--model", model, "--prompts", prompts, "--layers", layers, "--backend", "mock"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn bad_inputs_get_one_line_naming_the_value_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = write(d, "good.jsonl", good_prompts().as_bytes());
    let empty = write(d, "empty.jsonl", b"");
    let no_text = write(d, "no_text.jsonl", b"{\"id\":1,\"text\":\"a\",\"label\":0}\n{\"id\":2,\"label\":1}\n");
    let one_class = write(
        d,
        "one_class.jsonl",
        b"{\"id\":1,\"text\":\"a\",\"label\":\"same\"}\n{\"id\":2,\"text\":\"b\",\"label\":\"same\"}\n",
    );
    let dup = write(d, "dup.jsonl", b"{\"id\":1,\"text\":\"a\",\"label\":0}\n{\"id\":1,\"text\":\"b\",\"label\":1}\n");
    let utf8 = write(d, "utf8.jsonl", b"{\"id\":1,\"text\":\"a\xff\",\"label\":0}\n");
    let bad_toml = write(d, "bad.toml", b"[extraction]\nbacth_size = 4\n");
    let no_config = d.join("model-without-config");
    std::fs::create_dir_all(&no_config).unwrap();
    let no_config = no_config.display().to_string();
    let missing_model = d.join("no-such-model").display().to_string();

    let mut cases = vec![
        Case { name: "layer out of range", args: sweep("m", &good, "1,9", &[]), expect: "9 is out of range".into() },
        Case {
            name: "empty prompt file",
            args: sweep("m", &empty, "1", &[]),
            expect: "empty.jsonl: the file has no prompts".into(),
        },
        Case {
            name: "line without text",
            args: sweep("m", &no_text, "1", &[]),
            expect: "no_text.jsonl:2: missing field \"text\"".into(),
        },
        Case { name: "single class", args: sweep("m", &one_class, "1", &[]), expect: "\"same\"".into() },
        Case {
            name: "duplicate id",
            args: sweep("m", &dup, "1", &[]),
            expect: "dup.jsonl:2: duplicate id \"1\" (first on line 1)".into(),
        },
        Case { name: "invalid UTF-8", args: sweep("m", &utf8, "1", &[]), expect: "utf8.jsonl:1: invalid UTF-8".into() },
        Case { name: "missing prompt file", args: sweep("m", "nope.jsonl", "1", &[]), expect: "nope.jsonl".into() },
        Case {
            name: "unknown backend",
            args: {
                let mut a = sweep("m", &good, "1", &[]);
                let i = a.iter().position(|x| x == "mock").unwrap();
                a[i] = "bogus".into();
                a
            },
            expect: "bogus".into(),
        },
        Case { name: "bad layer list", args: sweep("m", &good, "1,x", &[]), expect: "\"x\"".into() },
        Case {
            name: "batch size 0",
            args: sweep("m", &good, "1", &["--batch-size", "0"]),
            expect: "--batch-size: 0".into(),
        },
        Case {
            name: "negative temperature",
            args: sweep("m", &good, "1", &["--temperature", "-1"]),
            expect: "temperature: -1".into(),
        },
        Case {
            name: "max tokens 0",
            args: sweep("m", &good, "1", &["--max-tokens", "0"]),
            expect: "--max-tokens: 0".into(),
        },
        Case { name: "positions all", args: sweep("m", &good, "1", &["--positions", "all"]), expect: "\"all\"".into() },
        Case {
            name: "unknown positions",
            args: sweep("m", &good, "1", &["--positions", "first"]),
            expect: "first".into(),
        },
        Case {
            name: "unknown config key",
            args: sweep("m", &good, "1", &["--config", &bad_toml]),
            expect: "bacth_size".into(),
        },
    ];
    if cfg!(feature = "candle") {
        let candle = |model: &str| {
            let mut a = sweep(model, &good, "1", &[]);
            let i = a.iter().position(|x| x == "mock").unwrap();
            a[i] = "candle".into();
            a
        };
        cases.push(Case { name: "missing model folder", args: candle(&missing_model), expect: "no-such-model".into() });
        cases.push(Case { name: "model without config.json", args: candle(&no_config), expect: "config.json".into() });
    }
    assert!(cases.len() >= 15);

    for case in cases {
        let cache = d.join(format!("cache-{}", case.name.replace(' ', "-")));
        let out = d.join(format!("out-{}", case.name.replace(' ', "-")));
        let mut args = case.args.clone();
        args.extend(["--cache".into(), cache.display().to_string(), "--out".into(), out.display().to_string()]);
        let res = Command::new(env!("CARGO_BIN_EXE_probe"))
            .args(&args)
            .current_dir(d)
            .env_remove("RUST_LOG")
            .env_remove("PROBE_CACHE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{}: exit status {:?}, stderr {stderr}", case.name, res.status);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{}: one line, got {stderr:?}", case.name);
        assert!(stderr.contains(&case.expect), "{}: {stderr:?} should name {:?}", case.name, case.expect);
        assert!(!cache.exists(), "{}: the cache was created", case.name);
        assert!(!out.exists(), "{}: the output folder was created", case.name);
    }
}

#[test]
fn extract_and_generate_refuse_bad_input_too() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = write(d, "good.jsonl", good_prompts().as_bytes());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "extract",
                "--model",
                "m",
                "--backend",
                "mock",
                "--input",
                &good,
                "--layers",
                "7",
                "--positions",
                "last",
                "--out",
                "x.safetensors",
            ],
            "7 is out of range",
        ),
        (
            vec![
                "extract",
                "--model",
                "m",
                "--backend",
                "mock",
                "--input",
                &good,
                "--layers",
                "1",
                "--positions",
                "last",
                "--out",
                "x.bin",
            ],
            "x.bin",
        ),
        (
            vec![
                "generate",
                "--model",
                "m",
                "--backend",
                "mock",
                "--prompts",
                &good,
                "--max-tokens",
                "0",
                "--out",
                "g.jsonl",
            ],
            "--max-tokens: 0",
        ),
        (vec!["generate", "--model", "m", "--backend", "tch", "--prompts", &good, "--out", "g.jsonl"], "tch"),
    ];
    for (args, want) in cases {
        let res = Command::new(env!("CARGO_BIN_EXE_probe")).args(&args).current_dir(d).output().unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr:?} should contain {want:?}");
    }
    assert!(!d.join("x.safetensors").exists() && !d.join("g.jsonl").exists());
}
