//! Bit flips and truncation in a disk cache between two `probe sweep` runs: the rerun detects
//! them by checksum, recomputes those entries, counts them in its summary line and
//! report.json, and reports the same scores.

mod fault_support;

use std::path::{Path, PathBuf};

use fault_support::{
    ok, probe_cmd, read_all_entries, report_counts, report_without_counts, summary_line, write_prompts,
};

fn sweep(d: &Path, out: &str) -> String {
    let mut c = probe_cmd(d);
    c.args(["sweep", "--model", "mock-model", "--backend", "mock", "--prompts", "prompts.jsonl"])
        .args(["--layers", "1,3,5", "--batch-size", "8", "--max-tokens", "4", "--quiet", "--cache", "cache", "--out"])
        .arg(out);
    summary_line(&ok(&c.output().unwrap()))
}

/// The single file of `dir` (an entry's folder) whose name starts with `prefix`.
fn file_in(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

/// The folder of the one entry under `cache/<rel>` (a layer or the generations folder).
fn entry_dir(cache: &Path, rel: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join(rel)).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn flipped_and_truncated_entries_are_recomputed_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 80);
    let first = sweep(d, "out-1");
    assert!(!first.contains("corrupt"), "{first}");
    let want = report_without_counts(&d.join("out-1/report.json"));
    assert_eq!(report_counts(&d.join("out-1/report.json"))["corrupt_entries"], 0);
    let cache = d.join("cache");
    let acts = cache.join("mock-model/activations/prompts");

    // One bit in the middle of layer 3's tensor data, and layer 5's payload cut in half.
    let l3 = file_in(&entry_dir(&acts, "layer-003"), "data-");
    flip_byte(&l3, std::fs::metadata(&l3).unwrap().len() as usize / 2);
    truncate(&file_in(&entry_dir(&acts, "layer-005"), "data-"));
    let second = sweep(d, "out-2");
    assert_eq!(
        second,
        "generations: 0 generated, 80 cached · activations: 2 layers computed, 1 cached (5 batches computed, 0 cached) \
         · 2 corrupt cache entries recomputed"
    );
    assert_eq!(report_without_counts(&d.join("out-2/report.json")), want, "same report");
    assert_eq!(report_counts(&d.join("out-2/report.json"))["corrupt_entries"], 2);

    // The generations payload's last byte, and layer 1's commit record cut short.
    let g = file_in(&entry_dir(&cache, "mock-model/generations/prompts"), "data-");
    flip_byte(&g, usize::MAX);
    truncate(&entry_dir(&acts, "layer-001").join("meta.json"));
    let third = sweep(d, "out-3");
    assert!(
        third.starts_with("generations: 80 generated, 0 cached · activations: 1 layers computed, 2 cached"),
        "{third}"
    );
    assert!(third.ends_with(" · 2 corrupt cache entries recomputed"), "{third}");
    assert_eq!(report_without_counts(&d.join("out-3/report.json")), want, "same report");

    let fourth = sweep(d, "out-4");
    assert_eq!(
        fourth,
        "generations: 0 generated, 80 cached · activations: 0 layers computed, 3 cached (0 batches computed, 0 cached)",
        "the recomputed entries are good"
    );
    assert_eq!(read_all_entries(&cache.display().to_string()).len(), 4);
}
