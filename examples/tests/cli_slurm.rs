//! `probe sweep --shards N --submit slurm` and `probe status`: bad input is refused before
//! anything is written; the scripts and the sbatch calls are checked with a stand-in `sbatch`
//! (runs everywhere); against the real single-node SLURM that scripts/test starts
//! (`scripts/start-slurm`, `PROBE_TEST_SLURM=1`, `SLURM_CONF`), 3 array tasks and the merge
//! give the single worker's report with every block computed once, a cancelled task is named
//! by the merge and by `probe status`, and a resubmission runs only that shard and completes.
#![cfg(feature = "testing")]

mod fault_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fault_support::{read_all_entries, write_prompts};

fn probe(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = fault_support::probe_cmd(dir);
    c.args(args).env_remove("PROBE_SBATCH").envs(env.iter().copied());
    c.output().unwrap()
}

fn ok(args: &[&str], out: &Output) -> String {
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    fault_support::ok(out)
}

fn sweep_args<'a>(cmd: &'a str, cache: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        cmd,
        "--model",
        "mock-model",
        "--backend",
        "mock",
        "--prompts",
        "p.jsonl",
        "--layers",
        "1,3",
        "--batch-size",
        "4",
        "--max-tokens",
        "4",
        "--cache",
        cache,
        "--out",
        out,
    ]
}

fn plus<'a>(mut v: Vec<&'a str>, more: &[&'a str]) -> Vec<&'a str> {
    v.extend_from_slice(more);
    v
}

/// A report.json without its `memory` (measured per run; a merge runs no model).
fn unmeasured(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("memory");
    v
}

/// Extra arguments, environment variables, and what the error must name.
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_submit_input_is_refused_naming_the_value_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 8);
    let cases: [BadCase; 6] = [
        (&["--shards", "3", "--submit", "pbs"], &[], "\"pbs\""),
        (&["--shards", "0", "--submit", "slurm"], &[], "shards"),
        (
            &["--shards", "3", "--submit", "slurm"],
            &[("PROBE_SBATCH", "/no/such/sbatch")],
            "\"/no/such/sbatch\" is not found",
        ),
        (&["--shards", "3"], &[], "--submit slurm"),
        (&["--shards", "2", "--submit", "slurm", "--shard", "1/2"], &[], "\"1/2\""),
        (&["--shards", "2", "--submit", "slurm", "--sbatch-arg", "hold"], &[("PROBE_SBATCH", "/bin/true")], "\"hold\""),
    ];
    for (extra, env, want) in cases {
        let args = plus(sweep_args("sweep", "c", "o"), extra);
        let out = probe(d, &args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(!d.join("o").exists() && !d.join("c").exists(), "{extra:?}: nothing written");
    }
    let out = probe(d, &plus(sweep_args("status", "c", "o"), &["--shards", "0"]), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A stand-in `sbatch` that records its arguments and prints the next job id.
fn fake_sbatch(dir: &Path) -> String {
    let path = dir.join("fake-sbatch");
    let log = dir.join("sbatch-calls");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\nn=$(wc -l < '{}')\necho $((100 + n))\n", log.display(), log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
fn the_scripts_carry_the_arguments_and_the_merge_depends_on_the_array() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 98); // 7 blocks of 16: every shard of 3 has some
    std::fs::write(
        d.join("probe.toml"),
        "[slurm]\npartition = \"gpu\"\ntime = \"1:00:00\"\nargs = [\"--account=lab\"]\n",
    )
    .unwrap();
    let sbatch = fake_sbatch(d);
    let args = plus(
        sweep_args("sweep", "c", "o"),
        &["--shards", "3", "--submit", "slurm", "--sbatch-arg=--qos=high", "--sbatch-arg", "--nice=5"],
    );
    let out = ok(&args, &probe(d, &args, &[("PROBE_SBATCH", sbatch.as_str())]));
    assert!(out.contains("submitted shards 1-3 of 3: array job 101"), "{out}");
    assert!(out.contains("submitted merge: job 102 after array job 101"), "{out}");
    let logs = d.join("o/slurm");
    assert!(out.contains(&logs.join("shard-101_<k>.out").display().to_string()), "{out}");
    assert!(out.contains(&logs.join("merge-102.out").display().to_string()), "{out}");
    let calls = std::fs::read_to_string(d.join("sbatch-calls")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls[0], format!("--parsable {}", logs.join("shards.sbatch").display()));
    assert_eq!(calls[1], format!("--parsable --dependency=afterany:101 {}", logs.join("merge.sbatch").display()));

    let shards = std::fs::read_to_string(logs.join("shards.sbatch")).unwrap();
    for want in [
        "#SBATCH --array=1-3\n",
        &format!("#SBATCH --chdir={}\n", d.display()),
        &format!("#SBATCH --output={}\n", logs.join("shard-%A_%a.out").display()),
        "#SBATCH --partition=gpu\n#SBATCH --time=1:00:00\n#SBATCH --account=lab\n#SBATCH --qos=high\n#SBATCH --nice=5\n",
        "#SBATCH --mem=",
        " sweep --model mock-model --backend mock --prompts p.jsonl --layers 1,3 --batch-size 4 --max-tokens 4 --cache c --out o --quiet --shard \"$SLURM_ARRAY_TASK_ID/3\"\n",
    ] {
        assert!(shards.contains(want), "{want:?} not in\n{shards}");
    }
    let exec = shards.lines().find(|l| l.starts_with("exec ")).unwrap_or_else(|| panic!("{shards}"));
    assert!(!exec.contains("--submit") && !exec.contains("--shards") && !shards.contains("gres"), "{shards}");
    let merge = std::fs::read_to_string(logs.join("merge.sbatch")).unwrap();
    assert!(merge.contains(" merge --model mock-model ") && merge.ends_with(" --quiet --shards 3\n"), "{merge}");
    assert!(merge.contains("#SBATCH --partition=gpu\n") && !merge.contains("--array"), "{merge}");
}

fn scontrol_field(job: &str, key: &str) -> String {
    let out = Command::new("scontrol").args(["show", "job", "-o", job]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_default()
        .to_owned()
}

fn wait_until_ended(job: &str) -> String {
    let t0 = Instant::now();
    loop {
        let state = scontrol_field(job, "JobState");
        if !matches!(state.as_str(), "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "") {
            return state;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "job {job} still {state}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The job id after `marker` in `probe sweep --submit`'s output.
fn job_id(out: &str, marker: &str) -> String {
    let rest = &out[out.find(marker).unwrap_or_else(|| panic!("{marker:?} not in {out}")) + marker.len()..];
    rest.chars().take_while(char::is_ascii_digit).collect()
}

/// `(batches computed, generations generated)` summed over the shard logs of array `id`.
fn shard_work(logs: &Path, id: &str) -> (usize, usize) {
    let mut total = (0, 0);
    for e in std::fs::read_dir(logs).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("shard-{id}_")) {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let line = text.lines().find(|l| l.starts_with("shard ")).unwrap_or_else(|| panic!("{name}: {text}"));
        let before = |marker: &str| -> usize {
            let head = &line[..line.find(marker).unwrap_or_else(|| panic!("{marker:?} not in {line}"))];
            head.rsplit(|c: char| !c.is_ascii_digit()).find(|s| !s.is_empty()).unwrap().parse().unwrap()
        };
        total.0 += before(" batches computed");
        total.1 += before(" generated");
    }
    total
}

fn slurm() -> bool {
    probe_core::testing::require_service("PROBE_TEST_SLURM").is_some()
}

#[test]
fn three_array_tasks_and_the_merge_give_the_single_worker_report() {
    if !slurm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 98); // 7 blocks of 16
    let args = plus(sweep_args("sweep", "shared", "merged"), &["--shards", "3", "--submit", "slurm", "--wait"]);
    let out = ok(&args, &probe(d, &args, &[]));
    assert!(out.contains("submitted shards 1-3 of 3"), "{out}");
    let array = job_id(&out, "array job ");
    let merge = job_id(&out, "submitted merge: job ");
    assert!(out.contains(&format!("merge job {merge}: COMPLETED (exit 0)")), "{out}");
    let logs = d.join("merged/slurm");
    assert_eq!(shard_work(&logs, &array), (7, 98), "every block computed and generated exactly once");
    let merge_log = std::fs::read_to_string(logs.join(format!("merge-{merge}.out"))).unwrap();
    assert!(merge_log.contains("7 batches computed"), "{merge_log}");

    let single = sweep_args("sweep", "alone", "single");
    ok(&single, &probe(d, &single, &[]));
    assert_eq!(unmeasured(&d.join("merged/report.json")), unmeasured(&d.join("single/report.json")));
    // The same cache entries as one worker's, none written twice.
    let url = |name: &str| d.join(name).display().to_string();
    let (shared, alone) = (read_all_entries(&url("shared")), read_all_entries(&url("alone")));
    assert_eq!(shared.keys().collect::<Vec<_>>(), alone.keys().collect::<Vec<_>>());
    let status = ok(&[], &probe(d, &plus(sweep_args("status", "shared", "merged"), &["--shards", "3"]), &[]));
    assert!(status.contains("all 7 blocks are in the cache"), "{status}");
}

#[test]
fn a_cancelled_task_is_named_by_the_merge_and_status_then_a_resubmission_completes() {
    if !slurm() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_prompts(&d.join("p.jsonl"), 96); // 6 blocks of 16: shard 2/3 owns blocks 1 and 4
    // Held at submission, so that task 2 is cancelled before it can run.
    let args = plus(sweep_args("sweep", "c", "o"), &["--shards", "3", "--submit", "slurm", "--sbatch-arg=--hold"]);
    let out = ok(&args, &probe(d, &args, &[]));
    let array = job_id(&out, "array job ");
    let merge = job_id(&out, "submitted merge: job ");
    let run = |args: &[&str]| assert!(Command::new(args[0]).args(&args[1..]).status().unwrap().success(), "{args:?}");
    run(&["scancel", &format!("{array}_2")]);
    run(&["scontrol", "release", &array]);
    run(&["scontrol", "release", &merge]);
    assert_eq!(wait_until_ended(&merge), "FAILED");
    assert_eq!(scontrol_field(&merge, "ExitCode"), "1:0");
    let log = std::fs::read_to_string(d.join(format!("o/slurm/merge-{merge}.out"))).unwrap();
    assert!(log.contains("2 of 6 blocks are missing"), "{log}");
    assert!(log.contains("block 1 (rows 16..32: generations, layers 1,3; shard 2/3)"), "{log}");
    assert!(log.contains("run shard 2/3"), "{log}");
    assert!(!d.join("o/report.json").exists());

    let status_args = plus(sweep_args("status", "c", "o"), &["--shards", "3"]);
    let status = ok(&status_args, &probe(d, &status_args, &[]));
    assert!(status.contains("shard 1/3: done (2 of 2 blocks: 0,3)"), "{status}");
    assert!(status.contains("shard 2/3: 0 of 2 blocks done; missing block 1 (rows 16..32"), "{status}");
    assert!(status.contains("4 of 6 blocks done; shard with missing blocks: 2/3"), "{status}");

    let args = plus(sweep_args("sweep", "c", "o"), &["--shards", "3", "--submit", "slurm", "--wait"]);
    let out = ok(&args, &probe(d, &args, &[]));
    assert!(out.contains("submitted shards 2 of 3"), "only the missing shard: {out}");
    let again = job_id(&out, "array job ");
    assert_eq!(shard_work(&d.join("o/slurm"), &again), (2, 32), "shard 2's blocks only");
    let single = sweep_args("sweep", "alone", "single");
    ok(&single, &probe(d, &single, &[]));
    assert_eq!(unmeasured(&d.join("o/report.json")), unmeasured(&d.join("single/report.json")));
}
