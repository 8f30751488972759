//! The S3 server of the cache stopped mid-sweep: the sweep fails after bounded retries (each
//! request has a timeout, and object_store retries at most 5 times within 60 s) with an
//! error naming the cache; once the server runs again, a rerun resumes and computes only
//! what is missing, with the same report. Then the server is killed and a new, empty one
//! started: the rerun computes everything again, same report.
//!
//! The test runs its own `moto_server` (from the venv of `PROBE_PYTHON`) on a free port, so
//! it can stop it (SIGSTOP: connections hang, as with a frozen or partitioned server) without
//! touching the shared one. `AWS_TIMEOUT=3s` (object_store's per-request timeout, read from
//! the environment) keeps the retries short: 5 retries of 3 s each, instead of the default
//! 30 s per request within a 60 s retry window.

mod fault_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fault_support::{ok, probe_cmd, report_without_counts, summary_line, write_prompts};

const BUCKET: &str = "faults";

/// A private moto server, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(bin: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Self { child, port };
        let start = Instant::now();
        loop {
            if http_put(port, &format!("/{BUCKET}")).is_some_and(|s| s == 200) {
                return moto;
            }
            assert!(start.elapsed() < Duration::from_secs(90), "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {sig}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of an unsigned `PUT path` (moto accepts it: creates a bucket), or `None`
/// when the server is not answering.
fn http_put(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn sweep(d: &Path, moto: &Moto, out: &str) -> Command {
    let mut c = probe_cmd(d);
    c.args(["sweep", "--model", "mock-model", "--backend", "mock", "--prompts", "prompts.jsonl"])
        .args(["--layers", "1,3", "--batch-size", "8", "--max-tokens", "4", "--quiet", "--positions", "mean"])
        .args(["--cache", &format!("s3://{BUCKET}/run"), "--out", out])
        .env("PROBE_S3_ENDPOINT", moto.endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_TIMEOUT", "3s");
    c
}

/// `(computed, cached)` batches of a summary line.
fn batches(line: &str) -> (usize, usize) {
    let inner = line.split_once('(').and_then(|(_, r)| r.split_once(')')).map(|(i, _)| i).unwrap();
    let n: Vec<usize> =
        inner.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    (n[0], n[1])
}

#[test]
fn a_stopped_s3_server_fails_the_sweep_after_bounded_retries_and_a_rerun_resumes() {
    let Some(python) = probe_core::testing::require_service("PROBE_PYTHON") else { return };
    let moto_bin: PathBuf = Path::new(&python).parent().unwrap().join("moto_server");
    assert!(moto_bin.exists(), "{} is missing (the venv installs moto[server])", moto_bin.display());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 80);

    // The report of an undisturbed run (on disk).
    let mut baseline = probe_cmd(d);
    baseline
        .args(["sweep", "--model", "mock-model", "--backend", "mock", "--prompts", "prompts.jsonl"])
        .args(["--layers", "1,3", "--batch-size", "8", "--max-tokens", "4", "--quiet", "--positions", "mean"])
        .args(["--cache", "disk-cache", "--out", "out-baseline"]);
    ok(&baseline.output().unwrap());
    let want = report_without_counts(&d.join("out-baseline/report.json"));

    let moto = Moto::start(&moto_bin);
    let mut child = sweep(d, &moto, "out-stopped")
        .env("RUST_LOG", "info")
        .env("PROBE_MOCK_DELAY_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut committed = 0;
    for line in lines.by_ref() {
        if line.unwrap().contains("committed: computed layers") {
            committed += 1;
            if committed == 4 {
                break;
            }
        }
    }
    assert_eq!(committed, 4, "the sweep reached extraction");
    moto.signal("-STOP");
    let stopped_at = Instant::now();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    let took = stopped_at.elapsed();
    assert!(!status.success(), "the sweep cannot finish against a stopped server");
    let error = rest.iter().rev().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("{rest:#?}"));
    eprintln!("failed {took:?} after the server stopped: {error}");
    assert!(error.contains(&format!("cache s3://{BUCKET}/run")), "the error names the cache: {error}");
    // A request sent to the stopped server times out (3 s) and is retried with back-off
    // until object_store's retry budget is spent; a response cut off mid-body fails at its
    // timeout without a retry. Either way the run ends.
    let retries = rest.iter().filter(|l| l.contains("backing off")).count();
    eprintln!("{retries} retries were logged before the error");
    assert!(error.contains(&moto.endpoint()), "the error names the endpoint: {error}");
    assert!(!d.join("out-stopped/report.json").exists());

    // Restarted: the rerun keeps what was committed before the stop.
    moto.signal("-CONT");
    let resumed = summary_line(&ok(&sweep(d, &moto, "out-resumed").output().unwrap()));
    assert!(resumed.starts_with("generations: 0 generated, 80 cached · activations: 2 layers computed"), "{resumed}");
    let (computed, cached) = batches(&resumed);
    assert!(cached >= 4, "the batches committed before the stop are reused: {resumed}");
    // 80 prompts are 5 cache blocks of 16 (`sweep::CACHE_BLOCK_ROWS`), whatever --batch-size 8.
    assert_eq!(computed + cached, 5, "{resumed}");
    assert_eq!(report_without_counts(&d.join("out-resumed/report.json")), want, "same report");

    // Killed and replaced by a new, empty server: everything is computed again.
    drop(moto);
    let moto = Moto::start(&moto_bin);
    let fresh = summary_line(&ok(&sweep(d, &moto, "out-fresh").output().unwrap()));
    assert_eq!(
        fresh,
        "generations: 80 generated, 0 cached · activations: 2 layers computed, 0 cached (5 batches computed, 0 cached)"
    );
    assert_eq!(report_without_counts(&d.join("out-fresh/report.json")), want, "same report");
}
