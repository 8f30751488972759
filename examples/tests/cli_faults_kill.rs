//! `probe sweep` killed with SIGKILL at ≥ 20 seeded random points and rerun each time: the
//! final report equals an uninterrupted run's, every cache entry reads back (checksums
//! verified), and no committed work is redone — over a series of runs on one cache, the
//! generation and extraction blocks committed add up to at most the total plus one per kill
//! (the block in flight).
//!
//! The mock backend is slowed so every phase takes measurable time: 25 ms per generate call
//! (`PROBE_MOCK_GEN_DELAY_MS`) and per forward pass (`PROBE_MOCK_DELAY_MS`), 8 prompts each; probe
//! training of 4 layers takes its own time. Each round starts on an empty cache: its first
//! run is killed at a time drawn over the duration of an uninterrupted run, the rerun is
//! killed too in about a third of the rounds (a resumed run killed again), and the next
//! run finishes. The phase each kill hit is read from the run's log.

mod fault_support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fault_support::{ok, probe_cmd, read_all_entries, report_without_counts, summary_line, write_prompts};

const PROMPTS: usize = 160;
/// Blocks of the cache grid (generation and activation block entries); `--batch-size 8`
/// computes each in 2 passes.
const BLOCKS: usize = PROMPTS / probe_core::sweep::CACHE_BLOCK_ROWS;
const LAYERS: usize = 4;
const KILLS: usize = 24;

/// splitmix64: a seeded source of kill times.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn sweep(d: &Path, cache: &str, out: &str) -> std::process::Command {
    let mut c = probe_cmd(d);
    c.args(["sweep", "--model", "mock-model", "--backend", "mock", "--prompts", "prompts.jsonl"])
        .args(["--layers", "0,2,4,6", "--batch-size", "8", "--max-tokens", "4", "--quiet", "--positions", "mean"])
        .args(["--cache", cache, "--out", out])
        .env("RUST_LOG", "info,probe_core=debug")
        .env("PROBE_MOCK_GEN_DELAY_MS", "25")
        .env("PROBE_MOCK_DELAY_MS", "25");
    c
}

/// What one run's log says it did.
#[derive(Debug, Default)]
struct Log {
    /// Generation blocks committed.
    blocks: usize,
    /// Extraction blocks committed with at least one layer computed.
    batches: usize,
    /// The phase the run was in when its log ends.
    phase: &'static str,
}

fn read_log(text: &str) -> Log {
    let mut log = Log { phase: "start-up", ..Log::default() };
    let mut batches_in_phase = usize::MAX;
    let mut committed_in_phase = 0;
    for line in text.lines() {
        if line.contains("generations of prompts") && line.ends_with("committed") {
            log.blocks += 1;
        } else if line.contains("INFO") && line.contains(" generation: ") && line.ends_with(" prompts") {
            log.phase = "generation";
        } else if let Some(rest) = line.split_once(" activations: ").map(|(_, r)| r).filter(|r| r.ends_with(" batches"))
        {
            log.phase = "extraction";
            batches_in_phase = rest.trim_end_matches(" batches").trim().parse().unwrap_or(usize::MAX);
        } else if line.contains("batch rows") && line.contains("committed: computed layers") {
            committed_in_phase += 1;
            if !line.contains("computed layers []") {
                log.batches += 1;
            }
            if committed_in_phase == batches_in_phase {
                log.phase = "layer entries (cache writes)";
            }
        } else if line.contains(" probes: ") && line.ends_with(" layers") {
            log.phase = "probe training";
        } else if line.contains("generations: ") && line.contains(" · activations: ") {
            log.phase = "finished";
        }
    }
    log
}

#[test]
fn a_sweep_killed_at_random_points_ends_with_the_same_report_and_redoes_no_committed_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("prompts.jsonl"), PROMPTS);

    let start = Instant::now();
    let baseline = sweep(d, "cache-baseline", "out-baseline").output().unwrap();
    let full = start.elapsed();
    assert_eq!(
        summary_line(&ok(&baseline)),
        format!(
            "generations: {PROMPTS} generated, 0 cached · activations: {LAYERS} layers computed, 0 cached ({BLOCKS} batches computed, 0 cached)"
        )
    );
    let want = report_without_counts(&d.join("out-baseline/report.json"));

    let mut rng = Rng(0x5eed_0009);
    let mut kills: Vec<(usize, u128, &'static str)> = Vec::new();
    let mut round = 0;
    let mut attempts = 0;
    while kills.len() < KILLS {
        round += 1;
        let cache = format!("cache-{round}");
        let (mut blocks, mut batches, mut round_kills) = (0, 0, 0);
        for attempt in 0.. {
            attempts += 1;
            let kill = kills.len() < KILLS && (attempt == 0 || (attempt == 1 && rng.fraction() < 0.35));
            let log_path = d.join(format!("log-{attempts}.txt"));
            let out = format!("out-{attempts}");
            let mut child = sweep(d, &cache, &out)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .unwrap();
            let at = full.mul_f64(1.05 * rng.fraction());
            let deadline = Instant::now() + at;
            let killed = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "run {attempts} failed: {}", std::fs::read_to_string(&log_path).unwrap());
                    break false;
                }
                if kill && Instant::now() >= deadline {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    break true;
                }
                std::thread::sleep(Duration::from_millis(2));
            };
            let log = read_log(&std::fs::read_to_string(&log_path).unwrap());
            blocks += log.blocks;
            batches += log.batches;
            if killed {
                round_kills += 1;
                kills.push((round, at.as_millis(), log.phase));
                // Killed after its report was written but before it exited: the report is
                // whole (written under a temporary name, then renamed), and right.
                let report = d.join(&out).join("report.json");
                if report.exists() {
                    assert_eq!(report_without_counts(&report), want, "round {round}: a killed run's report");
                }
                continue;
            }
            assert_eq!(report_without_counts(&d.join(&out).join("report.json")), want, "round {round}: same report");
            break;
        }
        assert!(
            blocks <= BLOCKS + round_kills,
            "round {round}: {blocks} generation blocks committed for {BLOCKS} blocks and {round_kills} kills"
        );
        assert!(
            batches <= BLOCKS + round_kills,
            "round {round}: {batches} extraction blocks computed for {BLOCKS} blocks and {round_kills} kills"
        );
        let entries = read_all_entries(&d.join(&cache).display().to_string());
        assert_eq!(
            entries.len(),
            1 + LAYERS,
            "one generations entry and one entry per layer, block and batch entries folded in: {:?}",
            entries.keys().collect::<Vec<_>>()
        );
        eprintln!(
            "round {round}: {round_kills} kills; {blocks} generation blocks and {batches} batches committed over its runs"
        );
    }
    let entries = read_all_entries(&d.join("cache-baseline").display().to_string());
    assert_eq!(entries.len(), 1 + LAYERS);
    // The same caches through the stock-Python reader (checksums, safetensors, JSON lines).
    match std::env::var("PROBE_PYTHON") {
        Ok(python) if !python.is_empty() => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/read_cache.py");
            let check = "import sys, runpy\nm = runpy.run_path(sys.argv[1])\n\
                         sys.exit(max(m['main']([sys.argv[1], root]) for root in sys.argv[2:]))";
            let mut c = std::process::Command::new(python);
            c.args(["-c", check]).arg(&script).arg(d.join("cache-baseline"));
            for r in 1..=round {
                c.arg(d.join(format!("cache-{r}")));
            }
            let out = c.output().unwrap();
            assert!(out.status.success(), "read_cache.py: {}", String::from_utf8_lossy(&out.stderr));
        }
        _ => eprintln!("read_cache.py not run: PROBE_PYTHON is not set (scripts/test sets it)"),
    }

    let mut by_phase = std::collections::BTreeMap::<&str, usize>::new();
    for (round, ms, phase) in &kills {
        eprintln!("kill: round {round}, after {ms} ms, in {phase}");
        *by_phase.entry(phase).or_default() += 1;
    }
    eprintln!("{} kills over {attempts} runs (uninterrupted run: {full:?}); by phase: {by_phase:?}", kills.len());
    assert!(kills.len() >= 20);
    for phase in ["generation", "extraction"] {
        assert!(by_phase.get(phase).copied().unwrap_or(0) >= 1, "no kill hit {phase}: {by_phase:?}");
    }
}
