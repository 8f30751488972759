//! More bad input to the `probe` binary (issue 9), beyond `cli_errors.rs`: device lists,
//! probe.toml values, NaN sampling settings, a 100 MB prompt line, lying model folders,
//! prompt-set names and cache URLs. Each case: exit status 2, ONE line on stderr naming the
//! bad value, no cache folder and no report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One bad invocation.
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Texts the one-line message must contain (the bad value, and the file where there is one).
    expect: Vec<String>,
}

fn write(dir: &Path, name: &str, text: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn good_prompts() -> String {
    (0..10).map(|i| format!("{{\"id\":{i},\"text\":\"word{i} here\",\"label\":{}}}\n", i % 2)).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `probe sweep` on the mock backend with `extra` appended.
fn sweep(prompts: &str, extra: &[&str]) -> Vec<String> {
    let mut v = strings(&["sweep", "--model", "m", "--prompts", prompts, "--layers", "1", "--backend", "mock"]);
    v.extend(strings(extra));
    v
}

/// `probe sweep` on candle (the model folder is checked before anything is written).
fn sweep_candle(model: &str, prompts: &str) -> Vec<String> {
    strings(&["sweep", "--model", model, "--prompts", prompts, "--layers", "1", "--backend", "candle"])
}

/// A model folder with a `config.json` and a hand-made safetensors file whose header is `header`.
fn model_dir(root: &Path, name: &str, config: &str, header: &str, data_len: usize) -> String {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    dir.display().to_string()
}

const LLAMA_CONFIG: &str = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
"num_attention_heads":1,"num_key_value_heads":1,"vocab_size":100,"rms_norm_eps":1e-6}"#;

fn run(case_args: &[String], cwd: &Path, cache: &Path, out: &Path) -> Output {
    let mut args = case_args.to_vec();
    if args[0] == "sweep" || args[0] == "generate" {
        if !args.iter().any(|a| a == "--cache") && !args.iter().any(|a| a == "--config") {
            args.extend(["--cache".into(), cache.display().to_string()]);
        }
        args.extend(["--out".into(), out.display().to_string()]);
    }
    Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(&args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("PROBE_CACHE", cache)
        .output()
        .unwrap()
}

fn check(case: &Case, d: &Path) {
    let slug = case.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let cache: PathBuf = d.join(format!("cache-{slug}"));
    let out = d.join(format!("out-{slug}"));
    let res = run(&case.args, d, &cache, &out);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(2), "{}: exit status {:?}, stderr {stderr}", case.name, res.status);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}: one line, got {stderr:?}", case.name);
    assert!(stderr.starts_with("error: "), "{}: {stderr:?}", case.name);
    for want in &case.expect {
        assert!(stderr.contains(want.as_str()), "{}: {stderr:?} should name {want:?}", case.name);
    }
    assert!(!cache.exists(), "{}: the cache folder was created", case.name);
    assert!(!out.exists(), "{}: the report folder was created", case.name);
}

#[test]
fn device_lists_and_probe_toml_values_are_refused_with_one_line_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = write(d, "good.jsonl", good_prompts().as_bytes());
    let toml = |name: &str, text: &str| write(d, name, text.as_bytes());
    let no_gpu = toml("no-gpu.toml", "[devices]\nextraction_gpus = [99]\n");
    let overlap =
        toml("overlap.toml", "[devices]\nmode = \"exclusive\"\ngeneration_gpus = [0, 2]\nextraction_gpus = [3, 2]\n");
    let zero_servers = toml("zero-servers.toml", "[vllm]\nservers = 0\n");
    let nan = toml("nan.toml", "[generation]\ntemperature = nan\n");
    let batch0 = toml("batch0.toml", "[extraction]\nbatch_size = 0\n");
    let util = toml("util.toml", "[vllm]\ngpu_memory_utilization = 1.5\n");
    let syntax = toml("syntax.toml", "[generation]\nmax_tokens = = 3\n");
    let config = write(d, "config.json", LLAMA_CONFIG.as_bytes());
    let ftp_in_toml = toml("ftp.toml", "[cache]\nurl = \"ftp://cache.example/x\"\n");
    let cases = vec![
        Case {
            name: "GPU index that does not exist",
            args: sweep(&good, &["--config", &no_gpu]),
            expect: strings(&["extraction_gpus", "GPU 99 does not exist"]),
        },
        Case {
            name: "overlapping GPU sets in exclusive mode",
            args: sweep(&good, &["--config", &overlap]),
            expect: strings(&["exclusive", "GPU 2 is in both"]),
        },
        Case {
            name: "zero servers",
            args: sweep(&good, &["--config", &zero_servers]),
            expect: strings(&["zero-servers.toml", "servers = 0"]),
        },
        Case {
            name: "NaN temperature in probe.toml",
            args: sweep(&good, &["--config", &nan]),
            expect: strings(&["nan.toml: [generation] temperature = NaN"]),
        },
        Case {
            name: "batch_size 0 in probe.toml",
            args: sweep(&good, &["--config", &batch0]),
            expect: strings(&["batch0.toml", "batch_size = 0"]),
        },
        Case {
            name: "gpu_memory_utilization above 1",
            args: sweep(&good, &["--config", &util]),
            expect: strings(&["util.toml", "gpu_memory_utilization = 1.5"]),
        },
        Case {
            name: "probe.toml syntax error",
            args: sweep(&good, &["--config", &syntax]),
            expect: strings(&["syntax.toml:2"]),
        },
        Case {
            name: "malformed cache URL in probe.toml",
            args: sweep(&good, &["--config", &ftp_in_toml]),
            expect: strings(&["ftp://cache.example/x", "ftp"]),
        },
        Case {
            name: "plan: a generation GPU the declared machine lacks",
            args: strings(&["plan", "--model", &config, "--gpus", "2x80GiB", "--generation-gpus", "0,5"]),
            expect: strings(&["generation GPUs", "GPU 5 does not exist"]),
        },
        Case {
            name: "plan: a GPU count of zero",
            args: strings(&["plan", "--model", &config, "--gpus", "0x80GiB"]),
            expect: strings(&["0x80GiB"]),
        },
        Case {
            name: "plan: a model config that does not exist",
            args: strings(&["plan", "--model", "no-such-config.json", "--gpus", "1x80GiB"]),
            expect: strings(&["no-such-config.json", "cannot be read"]),
        },
        Case {
            name: "sweep: the vllm extractor without the vllm backend",
            args: sweep(&good, &["--extractor", "vllm"]),
            expect: strings(&["extractor", "\"vllm\" needs the vllm backend, not mock"]),
        },
        Case {
            name: "sweep: an unknown extractor",
            args: sweep(&good, &["--extractor", "onnx"]),
            expect: strings(&["extractor", "\"onnx\" (expected candle or vllm)"]),
        },
    ];
    for case in &cases {
        check(case, d);
    }
}

#[test]
fn command_line_values_prompt_files_and_cache_urls_are_refused_with_one_line_and_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = write(d, "good.jsonl", good_prompts().as_bytes());
    let not_object = write(d, "array.jsonl", b"{\"id\":1,\"text\":\"a\",\"label\":0}\n[1,2]\n");
    let dup = write(
        d,
        "dup3.jsonl",
        b"{\"id\":\"a\",\"text\":\"x\",\"label\":0}\n{\"id\":\"b\",\"text\":\"y\",\"label\":1}\n{\"id\":\"a\",\"text\":\"z\",\"label\":1}\n",
    );
    let bad_utf8 = write(
        d,
        "latin1.jsonl",
        b"{\"id\":1,\"text\":\"ok\",\"label\":0}\n{\"id\":2,\"text\":\"caf\xe9\",\"label\":1}\n",
    );
    // A 100 MB line, written without holding it in memory.
    let huge = d.join("huge.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&huge).unwrap());
        f.write_all(b"{\"id\":1,\"text\":\"a\",\"label\":0}\n{\"id\":2,\"label\":1,\"text\":\"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\"}\n").unwrap();
    }
    let huge = huge.display().to_string();
    let cases = vec![
        Case {
            name: "NaN temperature flag",
            args: sweep(&good, &["--temperature", "NaN"]),
            expect: strings(&["temperature", "NaN"]),
        },
        Case {
            name: "infinite temperature on generate",
            args: strings(&[
                "generate",
                "--model",
                "m",
                "--backend",
                "mock",
                "--prompts",
                &good,
                "--temperature",
                "inf",
            ]),
            expect: strings(&["temperature", "inf"]),
        },
        Case {
            name: "empty layer range",
            args: {
                let mut a = sweep(&good, &[]);
                a[6] = "5..2".into();
                a
            },
            expect: strings(&["\"5..2\"", "empty range"]),
        },
        Case {
            name: "prompt line that is not an object",
            args: sweep(&not_object, &[]),
            expect: strings(&["array.jsonl:2", "expected a JSON object"]),
        },
        Case {
            name: "duplicate id names both lines",
            args: sweep(&dup, &[]),
            expect: strings(&["dup3.jsonl:3", "duplicate id \"a\"", "first on line 1"]),
        },
        Case {
            name: "invalid UTF-8 on line 2",
            args: sweep(&bad_utf8, &[]),
            expect: strings(&["latin1.jsonl:2", "invalid UTF-8"]),
        },
        Case {
            name: "a 100 MB line",
            args: sweep(&huge, &[]),
            expect: strings(&["huge.jsonl:2", "over the limit of 4194304 bytes"]),
        },
        Case {
            name: "prompt-set name with ../",
            args: sweep(&good, &["--prompt-set", "../../outside"]),
            expect: strings(&["prompt set name", "\"../../outside\""]),
        },
        Case {
            name: "prompt-set name with a slash",
            args: sweep(&good, &["--prompt-set", "a/b"]),
            expect: strings(&["\"a/b\""]),
        },
        Case {
            name: "s3 URL without a bucket",
            args: sweep(&good, &["--cache", "s3://"]),
            expect: strings(&["cache URL", "s3://", "bucket"]),
        },
        Case {
            name: "ftp cache URL",
            args: sweep(&good, &["--cache", "ftp://x"]),
            expect: strings(&["ftp://x", "unsupported scheme"]),
        },
        Case {
            name: "s3 URL with a .. segment",
            args: sweep(&good, &["--cache", "s3://bucket/run/../../other"]),
            expect: strings(&["s3://bucket/run/../../other", "\"..\""]),
        },
        Case {
            name: "cache URL with credentials (redacted)",
            args: sweep(&good, &["--cache", "s3://AKIDEXAMPLE:wJalrXUtnFEMI@bucket/p"]),
            expect: strings(&["s3://***@bucket/p", "credentials in the URL"]),
        },
        Case {
            name: "--url without --backend vllm",
            args: sweep(&good, &["--url", "http://127.0.0.1:1"]),
            expect: strings(&["\"http://127.0.0.1:1\"", "vllm backend"]),
        },
    ];
    let mut cases = cases;
    if cfg!(feature = "vllm") {
        cases.push(Case {
            name: "vLLM URL with user info (never echoed)",
            args: strings(&["generate", "--backend", "vllm", "--model", "m", "--prompts", &good])
                .into_iter()
                .chain(strings(&["--url", "http://user:wJalrXUtnFEMI/x@127.0.0.1:1"]))
                .collect(),
            expect: strings(&["vllm url", "not shown"]),
        });
    }
    for case in &cases {
        check(case, d);
    }
    if let Some(case) = cases.iter().find(|c| c.name.starts_with("vLLM URL")) {
        let stderr = String::from_utf8_lossy(&run(&case.args, d, &d.join("c"), &d.join("o")).stderr).to_string();
        assert!(!stderr.contains("wJalrXUtnFEMI"), "a secret in {stderr:?}");
    }
    let creds = cases.iter().find(|c| c.name.contains("credentials")).unwrap();
    let stderr = String::from_utf8_lossy(&run(&creds.args, d, &d.join("c"), &d.join("o")).stderr).to_string();
    assert!(!stderr.contains("wJalrXUtnFEMI") && !stderr.contains("AKIDEXAMPLE"), "a secret in {stderr:?}");
}

#[test]
fn model_folders_that_lie_are_refused_before_loading_weights() {
    if !cfg!(feature = "candle") {
        eprintln!("SKIPPED: the candle feature is off (the model-folder checks are candle's)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = write(d, "good.jsonl", good_prompts().as_bytes());
    let header_ok = r#"{"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}"#;
    let no_hidden = model_dir(d, "no-hidden", &LLAMA_CONFIG.replace("\"hidden_size\":64,", ""), header_ok, 256);
    let bad_type = model_dir(d, "cohere", &LLAMA_CONFIG.replace("llama", "cohere"), header_ok, 256);
    let past_end = model_dir(
        d,
        "past-end",
        LLAMA_CONFIG,
        r#"{"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[1000000000,1000000256]}}"#,
        256,
    );
    let wrong_shape = model_dir(
        d,
        "wrong-shape",
        LLAMA_CONFIG,
        r#"{"model.norm.weight":{"dtype":"F32","shape":[4096,64],"data_offsets":[0,256]}}"#,
        256,
    );
    let long_header = d.join("long-header");
    std::fs::create_dir_all(&long_header).unwrap();
    std::fs::write(long_header.join("config.json"), LLAMA_CONFIG).unwrap();
    let mut bytes = 50_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(long_header.join("model.safetensors"), bytes).unwrap();
    let long_header = long_header.display().to_string();
    let not_json = model_dir(d, "not-json", "{\"model_type\": \"llama\",", header_ok, 256);

    let cases = vec![
        Case {
            name: "config.json without hidden_size",
            args: sweep_candle(&no_hidden, &good),
            expect: strings(&["no-hidden/config.json", "hidden_size"]),
        },
        Case {
            name: "config.json of an unsupported architecture",
            args: sweep_candle(&bad_type, &good),
            expect: strings(&["\"cohere\"", "supported architectures"]),
        },
        Case {
            name: "config.json that is not JSON",
            args: sweep_candle(&not_json, &good),
            expect: strings(&["not-json/config.json"]),
        },
        Case {
            name: "safetensors offsets past the end of the file",
            args: sweep_candle(&past_end, &good),
            expect: strings(&["past-end/model.safetensors", "model.norm.weight", "past the end"]),
        },
        Case {
            name: "safetensors shape that disagrees with its offsets",
            args: sweep_candle(&wrong_shape, &good),
            expect: strings(&["wrong-shape/model.safetensors", "[4096, 64]"]),
        },
        Case {
            name: "safetensors header longer than its file",
            args: sweep_candle(&long_header, &good),
            expect: strings(&["long-header/model.safetensors", "50000000 header bytes"]),
        },
        Case {
            name: "generate: model folder with a lying header",
            args: strings(&["generate", "--model", &past_end, "--backend", "candle", "--prompts", &good, "--cache"])
                .into_iter()
                .chain([d.join("cache-generate").display().to_string()])
                .collect(),
            expect: strings(&["past-end/model.safetensors"]),
        },
    ];
    for case in &cases {
        check(case, d);
    }
    assert!(!d.join("cache-generate").exists(), "generate created its cache before refusing the model");
}

#[test]
fn a_prompt_file_named_like_a_path_stays_inside_the_cache_root() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A file name (one path component) full of dots and backslashes: its stem is the default
    // prompt-set name, slugged so that it can never leave the cache's root.
    let sneaky = write(d, "..\\..\\escape.jsonl", good_prompts().as_bytes());
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cache = root.join("cache");
    let out = root.join("out");
    let res = Command::new(env!("CARGO_BIN_EXE_probe"))
        .args(["sweep", "--model", "m", "--backend", "mock", "--layers", "1,2", "--prompts", &sneaky, "--quiet"])
        .arg("--cache")
        .arg(&cache)
        .arg("--out")
        .arg(&out)
        .current_dir(&root)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    let mut top: Vec<String> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, vec!["..\\..\\escape.jsonl".to_owned(), "root".to_owned()], "something was written outside");
    let mut names = Vec::new();
    let mut stack = vec![cache.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(&cache).unwrap().display().to_string();
            assert!(!rel.contains(".."), "{rel}");
            names.push(rel);
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    assert!(names.iter().any(|n| n.contains("escape")), "the slugged set name names an entry: {names:?}");
    let report = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(!report.contains("..\\\\"), "the report carries the slugged name");
}
