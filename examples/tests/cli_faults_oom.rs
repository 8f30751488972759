//! Out-of-memory errors injected at seeded random extraction calls (`PROBE_INJECT_OOM`): the
//! sweep retries with smaller batches, says so in its summary, and caches the same activations
//! as an undisturbed run — on the mock backend, and on the candle fixture model.

mod fault_support;

use std::path::Path;

use fault_support::{
    activation_values, ok, probe_cmd, read_all_entries, report_counts, report_without_counts, summary_line,
    write_prompts,
};

/// Runs the same sweep without and with injection; returns the caches' activation entries
/// (key path → values) of both runs and the injected run's summary line.
type Values = std::collections::BTreeMap<String, Vec<f32>>;
fn sweep_twice(d: &Path, model: &str, backend: &str, inject: &str) -> (Values, Values, String) {
    let run = |name: &str, inject: Option<&str>| {
        let mut c = probe_cmd(d);
        c.args(["sweep", "--model", model, "--backend", backend, "--prompts", "prompts.jsonl", "--layers", "0,1,2"])
            .args(["--batch-size", "8", "--max-tokens", "3", "--quiet", "--positions", "mean"])
            .args(["--cache", name, "--out"])
            .arg(format!("out-{name}"));
        if backend == "candle" {
            // A candle sweep that generates reads its activations while generating: no
            // extraction call to fail.
            c.arg("--no-generate");
        }
        if let Some(spec) = inject {
            c.env("PROBE_INJECT_OOM", spec);
        }
        let line = summary_line(&ok(&c.output().unwrap()));
        let url = d.join(name).display().to_string();
        let values: Values = read_all_entries(&url)
            .into_iter()
            .filter(|(k, _)| k.contains("/activations/"))
            .map(|(k, p)| (k, activation_values(&p)))
            .collect();
        (values, line)
    };
    let (clean, clean_line) = run("clean", None);
    assert!(!clean_line.contains("out-of-memory"), "{clean_line}");
    let (injected, line) = run("injected", Some(inject));
    assert_eq!(
        report_without_counts(&d.join("out-clean/report.json")),
        report_without_counts(&d.join("out-injected/report.json")),
        "same report"
    );
    (clean, injected, line)
}

fn retries(line: &str) -> usize {
    let (_, tail) = line.split_once(" · ").and_then(|(_, t)| t.rsplit_once(") · ")).unwrap_or_else(|| panic!("{line}"));
    tail.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn injected_out_of_memory_errors_give_identical_activations_on_the_mock() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 120);
    for seed in [3, 11] {
        let (clean, injected, line) = sweep_twice(d, "mock-model", "mock", &format!("{seed}:0.35"));
        assert!(line.contains("out-of-memory retr"), "seed {seed}: {line}");
        assert!(retries(&line) >= 1, "{line}");
        assert_eq!(clean.len(), 3, "one whole-layer entry per layer");
        assert_eq!(clean, injected, "seed {seed}: bit-identical activations");
        std::fs::remove_dir_all(d.join("clean")).unwrap();
        std::fs::remove_dir_all(d.join("injected")).unwrap();
    }
}

/// On candle a smaller batch pads differently, and a padded row's hidden states can differ
/// in the last bits from the same row in another batch: compared with a tolerance, and the
/// largest difference is printed.
#[test]
fn injected_out_of_memory_errors_give_the_same_activations_on_candle() {
    let Some(fixtures) = probe_core::testing::require_service("PROBE_FIXTURES") else { return };
    let model = Path::new(&fixtures).join("models/llama");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), 48);
    let (clean, injected, line) = sweep_twice(d, model.to_str().unwrap(), "candle", "5:0.5");
    assert!(retries(&line) >= 1, "{line}");
    assert_eq!(clean.keys().collect::<Vec<_>>(), injected.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (k, a) in &clean {
        let b = &injected[k];
        assert_eq!(a.len(), b.len(), "{k}");
        for (x, y) in a.iter().zip(b) {
            let diff = (x - y).abs() / (1.0 + x.abs());
            worst = worst.max(diff);
        }
    }
    eprintln!("candle: largest relative difference with out-of-memory retries: {worst:e}");
    assert!(worst <= 1e-5, "activations differ by {worst:e}");
    // The size the back-off settled on is kept for the rest of the run and reported.
    let kept = report_counts(&d.join("out-injected/report.json"))["backoff_batch_size"].as_u64();
    assert!(kept.is_some_and(|b| (1..8).contains(&b)), "summary.backoff_batch_size: {kept:?}");
    assert!(report_counts(&d.join("out-clean/report.json")).get("backoff_batch_size").is_none());
}
