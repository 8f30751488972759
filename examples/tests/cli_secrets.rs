//! Secrets never leave the process (issue 9): S3 credentials and vLLM API keys appear nowhere in
//! stdout, stderr at `RUST_LOG=trace` (every dependency's log records included), error messages
//! of failing runs, the report files, any cache object (`meta.json` included), or `Debug` output.
//!
//! Needs the shared S3 server (PROBE_TEST_S3_ENDPOINT, PROBE_TEST_S3_BUCKET) and, for the API
//! key, the venv python (PROBE_PYTHON) to run scripts/python/openai_stand_in.py with `--api-key`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use probe_core::testing::require_service;

/// S3 secrets, with characters that URL encoding would change.
const KEY_ID: &str = "AKIDPROBESECRETID9Q";
const SECRET_KEY: &str = "pRoBe/SeCrEt+AcCeSs=KeY9";
const SESSION_TOKEN: &str = "pRoBe/SeSsIoN+ToKeN=9";
/// vLLM API keys (the right one and a wrong one).
#[cfg(feature = "vllm")]
const API_KEY: &str = "sk-pRoBeApIkEy-0123456789";
#[cfg(feature = "vllm")]
const WRONG_KEY: &str = "sk-WrOnGaPiKeY-9876543210";

/// Every form a secret could take in text: as is, percent-encoded, and base64 of `id:secret`
/// (basic auth) is not used by any client here, so the plain and encoded forms suffice.
fn forms(secret: &str) -> Vec<String> {
    let encoded: String = secret
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let mut v = vec![secret.to_owned(), encoded.clone(), encoded.to_lowercase()];
    // The part of the secret that no encoding changes, long enough to be unique.
    v.push(secret.split(['/', '+', '=']).max_by_key(|s| s.len()).unwrap().to_owned());
    v.dedup();
    v
}

fn assert_clean(what: &str, bytes: &[u8], secrets: &[&str]) {
    let text = String::from_utf8_lossy(bytes);
    for s in secrets {
        for f in forms(s) {
            assert!(!text.contains(&f), "{what} contains the secret {f:?}:\n{}", clip(&text, &f));
        }
    }
}

/// The text around the first occurrence of `needle`.
fn clip(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap_or(0);
    let (mut start, mut end) = (i.saturating_sub(300), (i + 300).min(text.len()));
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    while !text.is_char_boundary(end) {
        end += 1;
    }
    text[start..end].to_owned()
}

fn prompts(dir: &Path) -> PathBuf {
    let p = dir.join("p.jsonl");
    let s: String =
        (0..8).map(|i| format!("{{\"id\":\"q{i}\",\"text\":\"text number {i}\",\"label\":{}}}\n", i % 2)).collect();
    std::fs::write(&p, s).unwrap();
    p
}

/// Runs `probe` at trace level with `env` set (and the test's own AWS settings removed).
fn probe(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_probe"));
    c.args(args).current_dir(dir).env("RUST_LOG", "trace").env("NO_COLOR", "1");
    for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VLLM_API_KEY", "OPENAI_API_KEY"] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Every object under `prefix` in the bucket, with its bytes (read with the server's test
/// credentials, not the secrets).
fn bucket_objects(endpoint: &str, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    use probe_cache::object_store::aws::AmazonS3Builder;
    use probe_cache::object_store::path::Path as ObjectPath;
    use probe_cache::object_store::{ObjectStore, ObjectStoreExt};
    let s3 = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_bucket_name(bucket)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        let mut dirs = vec![ObjectPath::from(prefix)];
        while let Some(d) = dirs.pop() {
            let listed = s3.list_with_delimiter(Some(&d)).await.unwrap();
            dirs.extend(listed.common_prefixes);
            for o in listed.objects {
                let bytes = s3.get(&o.location).await.unwrap().bytes().await.unwrap();
                out.push((o.location.to_string(), bytes.to_vec()));
            }
        }
        out
    })
}

#[test]
fn s3_credentials_never_appear_in_trace_logs_errors_reports_or_cache_objects() {
    let (Some(endpoint), Some(bucket)) =
        (require_service("PROBE_TEST_S3_ENDPOINT"), require_service("PROBE_TEST_S3_BUCKET"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = prompts(d).display().to_string();
    let prefix = unique("secrets");
    let cache = format!("s3://{bucket}/{prefix}");
    let secrets = [KEY_ID, SECRET_KEY, SESSION_TOKEN];
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
        ("AWS_REGION", "us-east-1"),
        ("PROBE_S3_ENDPOINT", endpoint.as_str()),
    ];
    let sweep = |cache: &str, out: &str, env: &[(&str, &str)]| {
        probe(
            d,
            &["sweep", "--model", "m", "--backend", "mock", "--prompts", &p, "--layers", "1,3"]
                .into_iter()
                .chain(["--max-tokens", "4", "--cache", cache, "--out", out, "--quiet"])
                .collect::<Vec<_>>(),
            env,
        )
    };
    // Twice: the first run writes every entry, the second reads them all back.
    for run in ["first", "second"] {
        let res = sweep(&cache, "out", &env);
        assert!(res.status.success(), "{run} run: {}", String::from_utf8_lossy(&res.stderr));
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(stderr.lines().count() > 20 && stderr.contains("TRACE"), "trace logging is on: {stderr}");
        assert_clean(&format!("{run} run's stdout"), &res.stdout, &secrets);
        assert_clean(&format!("{run} run's stderr"), &res.stderr, &secrets);
    }
    for f in files(&d.join("out")) {
        assert_clean(&f.display().to_string(), &std::fs::read(&f).unwrap(), &secrets);
    }
    let objects = bucket_objects(&endpoint, &bucket, &prefix);
    assert!(objects.iter().any(|(k, _)| k.ends_with("/meta.json")), "cache objects: {:?}", objects.len());
    assert!(objects.len() >= 4, "generations and two layers' activations were cached: {}", objects.len());
    for (key, bytes) in &objects {
        assert_clean(key, bytes, &secrets);
    }

    // Failing runs: a bucket that does not exist, a server that is not there, and the
    // credentials in the URL itself (refused, and redacted in the message).
    let missing_bucket = format!("s3://{}/p", unique("no-such-bucket"));
    let no_server = [("PROBE_S3_ENDPOINT", "http://127.0.0.1:9"), env[0], env[1], env[2], env[3]];
    let in_url = format!("s3://{KEY_ID}:{}@{bucket}/{prefix}", SECRET_KEY.replace('/', "%2F"));
    for (what, cache, env) in [
        ("missing bucket", missing_bucket.as_str(), &env[..]),
        ("unreachable endpoint", cache.as_str(), &no_server[..]),
        ("credentials in the URL", in_url.as_str(), &env[..]),
    ] {
        let res = sweep(cache, "out-failed", env);
        assert!(!res.status.success(), "{what}: the run should fail");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{what}: {stderr}");
        assert_clean(&format!("{what}: stdout"), &res.stdout, &secrets);
        assert_clean(&format!("{what}: stderr"), &res.stderr, &secrets);
    }
}

/// A stand-in vLLM server on a free port, stopped when dropped.
#[cfg(feature = "vllm")]
struct StandIn {
    child: std::process::Child,
    url: String,
}

#[cfg(feature = "vllm")]
impl StandIn {
    fn start(python: &str, api_key: &str) -> StandIn {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/openai_stand_in.py");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(python)
            .arg(script)
            .args(["serve", "tiny", "--port", &port.to_string(), "--api-key", api_key])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        // From here on, dropping the guard stops it.
        let server = StandIn { child, url };
        // Wait until it listens (bounded: a stand-in that never starts fails the test).
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the stand-in server did not start on port {port}");
    }
}

#[cfg(feature = "vllm")]
impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(feature = "vllm")]
#[test]
fn vllm_api_keys_never_appear_in_trace_logs_errors_outputs_or_the_cache() {
    let Some(python) = require_service("PROBE_PYTHON") else {
        return;
    };
    let server = StandIn::start(&python, API_KEY);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let p = prompts(d).display().to_string();
    let secrets = [API_KEY, WRONG_KEY];
    let generate = |url: &str, model: &str, key: &str, cache: &str, out: &str| {
        probe(
            d,
            &["generate", "--backend", "vllm", "--url", url, "--model", model, "--prompts", &p, "--max-tokens", "3"]
                .into_iter()
                .chain(["--cache", cache, "--out", out])
                .collect::<Vec<_>>(),
            &[("VLLM_API_KEY", key)],
        )
    };
    // The right key: the stand-in answers 401 without it, so success proves the key was sent.
    let res = generate(&server.url, "tiny", API_KEY, "cache", "g.jsonl");
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(String::from_utf8_lossy(&res.stderr).contains("TRACE"), "trace logging is on");
    assert_clean("stdout", &res.stdout, &secrets);
    assert_clean("stderr", &res.stderr, &secrets);
    assert_eq!(std::fs::read_to_string(d.join("g.jsonl")).unwrap().lines().count(), 8);
    let cached = files(&d.join("cache"));
    assert!(cached.iter().any(|f| f.ends_with("meta.json")), "{cached:?}");
    for f in cached.iter().chain([&d.join("g.jsonl")]) {
        assert_clean(&f.display().to_string(), &std::fs::read(f).unwrap(), &secrets);
    }

    // Failing runs (on a fresh cache, which would otherwise answer): a wrong key (401), a model
    // the server does not serve, and no server at all (a closed port: retried, then an error).
    let closed = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    );
    for (what, url, model, key) in [
        ("wrong key", server.url.as_str(), "tiny", WRONG_KEY),
        ("wrong model", server.url.as_str(), "other", API_KEY),
        ("no server", closed.as_str(), "tiny", API_KEY),
    ] {
        let res = generate(url, model, key, "cache-failed", "g2.jsonl");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{what}: the run should fail: {stderr}");
        assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{what}: {stderr}");
        assert_clean(&format!("{what}: stdout"), &res.stdout, &secrets);
        assert_clean(&format!("{what}: stderr"), &res.stderr, &secrets);
    }
    assert!(!d.join("g2.jsonl").exists());
    assert!(files(&d.join("cache-failed")).is_empty(), "a failed run cached something");
}

#[test]
fn debug_output_of_configs_holding_secrets_is_redacted() {
    let builder = probe_cache::ObjectCacheBuilder::new("s3://bucket/p")
        .with_credentials(KEY_ID, SECRET_KEY)
        .with_endpoint(format!("http://{KEY_ID}:{SESSION_TOKEN}@127.0.0.1:9"));
    let shown = format!("{builder:?} {builder:#?}");
    assert!(shown.contains("ObjectCacheBuilder"), "{shown}");
    assert_clean("ObjectCacheBuilder's Debug", shown.as_bytes(), &[KEY_ID, SECRET_KEY, SESSION_TOKEN]);
    if probe_cache::check_url("s3://bucket/p").is_ok() {
        // Building contacts nothing; the cache's Debug and location hold no secret either.
        let cache = builder.build().unwrap();
        let shown = format!("{cache:?} {cache:#?} {}", probe_core::CacheStore::location(&cache));
        assert_clean("ObjectCache's Debug", shown.as_bytes(), &[KEY_ID, SECRET_KEY, SESSION_TOKEN]);
    }
    #[cfg(feature = "vllm")]
    {
        use probe_backends::vllm::{ApiKey, VllmGenerator};
        let b = VllmGenerator::builder().url("http://127.0.0.1:9").model("m").api_key(API_KEY);
        let generator = b.clone().build().unwrap();
        let shown =
            format!("{b:?} {b:#?} {generator:?} {generator:#?} {:?} {}", ApiKey::new(API_KEY), ApiKey::new(API_KEY));
        assert!(shown.contains("VllmGenerator"), "{shown}");
        assert_clean("the vLLM client's Debug", shown.as_bytes(), &[API_KEY]);
    }
}
