//! The cache grid does not depend on the batch size (issue #25): after `probe sweep --shard k/3`
//! workers at `--batch-size 16` fill a cache, a plain `probe sweep` with the same arguments and
//! no batch size (the plan picks another one) generates and computes nothing; block entries
//! written at batch 8 serve a sweep at batch 32. Mock backend: runs everywhere.

mod fault_support;

use std::path::Path;

use fault_support::write_prompts;

/// Runs `probe sweep` with the mock arguments, then `extra`; returns stdout (it must succeed).
fn sweep(dir: &Path, cache: &str, out: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "sweep",
        "--model",
        "mock-model",
        "--backend",
        "mock",
        "--prompts",
        "p.jsonl",
        "--layers",
        "1,3",
        "--max-tokens",
        "4",
        "--quiet",
        "--cache",
        cache,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    fault_support::ok(&fault_support::probe_cmd(dir).args(&args).output().unwrap())
}

/// The summary line of a sweep's stdout.
fn summary(stdout: &str) -> &str {
    stdout.lines().find(|l| l.starts_with("generations:")).unwrap_or_else(|| panic!("no summary in {stdout}"))
}

/// The extraction batch size a sweep's report.json records.
fn batch_size(dir: &Path, out: &str) -> u64 {
    let text = std::fs::read_to_string(dir.join(out).join("report.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["plan"]["extraction"]["batch_size"].as_u64().unwrap_or_else(|| panic!("no planned batch size: {v}"))
}

#[test]
fn a_plain_sweep_after_shards_at_batch_16_generates_and_computes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 90); // 6 blocks of 16, the last of 10
    for k in 1..=3 {
        let out = sweep(d, "shared", "unused", &["--batch-size", "16", "--shard", &format!("{k}/3")]);
        let line = out.lines().find(|l| l.starts_with("shard ")).unwrap_or_else(|| panic!("no shard line: {out}"));
        assert!(line.contains("2 of 6 blocks"), "{line}");
        assert!(line.contains("(2 batches computed, 0 cached)"), "{line}");
    }
    let plain = sweep(d, "shared", "plain", &[]);
    assert_eq!(
        summary(&plain),
        "generations: 0 generated, 90 cached · activations: 2 layers computed, 0 cached (0 batches computed, 6 cached)"
    );
    assert_ne!(batch_size(d, "plain"), 16, "the plain sweep planned another batch size");
}

#[test]
fn block_entries_written_at_batch_8_serve_a_sweep_at_batch_32() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 90);
    // A whole sweep at batch 8, then at 32: the whole entries are read.
    let first = sweep(d, "c", "o8", &["--batch-size", "8"]);
    assert_eq!(
        summary(&first),
        "generations: 90 generated, 0 cached · activations: 2 layers computed, 0 cached (6 batches computed, 0 cached)"
    );
    let again = sweep(d, "c", "o32", &["--batch-size", "32"]);
    assert_eq!(
        summary(&again),
        "generations: 0 generated, 90 cached · activations: 0 layers computed, 2 cached (0 batches computed, 0 cached)"
    );
    // Block entries only (one shard of one at batch 8 writes no whole entry): batch 32 reads
    // every block.
    sweep(d, "blocks", "unused", &["--batch-size", "8", "--shard", "1/1"]);
    let from_blocks = sweep(d, "blocks", "b32", &["--batch-size", "32"]);
    assert_eq!(
        summary(&from_blocks),
        "generations: 0 generated, 90 cached · activations: 2 layers computed, 0 cached (0 batches computed, 6 cached)"
    );
    let layers = |out: &str| {
        let text = std::fs::read_to_string(d.join(out).join("report.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["layers"].clone()
    };
    assert_eq!(layers("b32"), layers("o8"), "the same scores");
}
