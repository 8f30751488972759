//! Helpers shared by the fault tests (`cli_faults_*.rs`): prompt files, running `probe`,
//! summary lines, and reading a whole cache back through probe-cache.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use probe_core::{CacheStoreExt, ListRequest};

/// Writes `n` labelled prompts (fruit / metal words) to `path`.
pub(crate) fn write_prompts(path: &Path, n: usize) {
    let a = ["apple", "pear", "plum", "fig", "kiwi"];
    let b = ["iron", "steel", "tin", "zinc", "lead"];
    let mut s = String::new();
    for i in 0..n {
        let (w, l) = if i % 2 == 0 { (a[i / 2 % 5], "fruit") } else { (b[i / 2 % 5], "metal") };
        s.push_str(&format!("{{\"id\":\"p{i}\",\"text\":\"item {i} is {w} today\",\"label\":\"{l}\"}}\n"));
    }
    std::fs::write(path, s).unwrap();
}

/// `probe` in `dir` with none of the test knobs inherited from the caller's environment.
pub(crate) fn probe_cmd(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_probe"));
    c.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("PROBE_CACHE")
        .env_remove("PROBE_MOCK_DELAY_MS")
        .env_remove("PROBE_MOCK_GEN_DELAY_MS")
        .env_remove("PROBE_INJECT_OOM");
    c
}

/// stdout of a successful run (panics with stderr otherwise).
pub(crate) fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The summary line of a sweep's stdout.
pub(crate) fn summary_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("generations:"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"))
        .to_owned()
}

/// The report of `out/report.json` without its run counts (`summary`), which differ between
/// a fresh run and a resumed one.
pub(crate) fn report_without_counts(path: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("summary");
    // Measured per run, never equal twice.
    o.remove("memory");
    v
}

/// The `summary` object of `out/report.json`.
pub(crate) fn report_counts(path: &Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["summary"].clone()
}

/// Every committed entry of the cache at `url`, read back through probe-cache (which checks
/// each checksum): key path → payload. Panics when a listed entry does not read back.
pub(crate) fn read_all_entries(url: &str) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let cache = probe_cache::from_url(url).unwrap();
        let before = cache.corrupt_entries();
        let mut out = BTreeMap::new();
        for key in cache.list(ListRequest::all()).await.unwrap() {
            let entry = cache.get_key(&key).await.unwrap().unwrap_or_else(|| panic!("entry {key} does not read back"));
            out.insert(key.path(), entry.payload.to_vec());
        }
        assert_eq!(cache.corrupt_entries(), before, "no corrupt entry in {url}");
        out
    })
}

/// The f32 values of the activations tensor of a cached activation payload.
pub(crate) fn activation_values(payload: &[u8]) -> Vec<f32> {
    let tensors = probe_core::codec::decode_tensors(payload).unwrap();
    let (_, t) = tensors.into_iter().find(|(n, _)| n == probe_core::codec::ACTIVATIONS_TENSOR).unwrap();
    t.data
}
