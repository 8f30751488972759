//! `probe sweep --shards N --submit slurm`: the sweep handed to SLURM as one job array of `N`
//! shard workers (`probe sweep … --shard $SLURM_ARRAY_TASK_ID/N`, same arguments) and a merge
//! job that runs once every task has ended (`--dependency=afterany:<array>`: a failed task
//! then makes the merge fail naming its shard, instead of leaving it pending forever). The
//! scripts are written beside the logs (`[slurm] log_dir`, default `<out>/slurm`) and submitted
//! with `sbatch --parsable`; `--wait` blocks until the merge ends and exits with its status.
//! A resubmission submits only the shards whose blocks the cache lacks (see
//! [`crate::status_cmd`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Args;
use probe_backends::shell_quote as quote;
use probe_core::{Error, Result};

use crate::sweep_cmd::SweepArgs;

/// `probe sweep`: its arguments, and those that hand it to a scheduler.
#[derive(Debug, Clone, Args)]
pub(crate) struct SweepCmd {
    #[command(flatten)]
    pub(crate) sweep: SweepArgs,
    #[command(flatten)]
    pub(crate) submit: SubmitArgs,
}

/// `--shards N --submit slurm [--wait] [--sbatch-arg ARG]...`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct SubmitArgs {
    /// With --submit: split the sweep into N shards, one array task each, plus a merge job.
    #[arg(long, value_name = "N")]
    pub(crate) shards: Option<usize>,
    /// Submit the shards and their merge to this scheduler (only `slurm`) and return.
    #[arg(long, value_name = "SCHEDULER")]
    pub(crate) submit: Option<String>,
    /// With --submit: wait until the merge job ends and exit with its status.
    #[arg(long)]
    pub(crate) wait: bool,
    /// With --submit: one more `#SBATCH` option of every job, as `--sbatch-arg=--account=abc`
    /// (repeatable; after `[slurm] args`).
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) sbatch_args: Vec<String>,
}

/// The flags above as they appear on the command line: dropped from the workers' arguments.
const OWN_FLAGS: [(&str, bool); 4] =
    [("--shards", true), ("--submit", true), ("--wait", false), ("--sbatch-arg", true)];

/// `probe sweep`: submits with `--submit`, else runs here.
pub(crate) async fn run(cmd: SweepCmd, quiet: bool) -> Result<()> {
    let s = &cmd.submit;
    match (&s.submit, s.shards) {
        (Some(_), _) => submit(&cmd.sweep, s).await,
        (None, Some(n)) => Err(Error::invalid(
            "shards",
            format!("{n}: --shards splits a sweep for --submit slurm (one shard here is --shard k/N)"),
        )),
        (None, None) if s.wait || !s.sbatch_args.is_empty() => {
            Err(Error::invalid("submit", "--wait and --sbatch-arg need --shards N --submit slurm"))
        }
        (None, None) => crate::sweep_cmd::run(cmd.sweep, quiet).await,
    }
}

/// Everything checked before anything is written: what to submit, and with what.
struct Job {
    count: usize,
    sbatch: PathBuf,
    log_dir: PathBuf,
    /// `#SBATCH` options of every job.
    common: Vec<String>,
    /// `#SBATCH` options of the array tasks alone (from the plan).
    per_task: Vec<String>,
    /// `probe sweep` arguments of the workers (and, with `merge`, of the merge).
    args: Vec<String>,
}

async fn submit(sweep: &SweepArgs, s: &SubmitArgs) -> Result<()> {
    let job = prepare(sweep, s).await?;
    let progress = crate::status_cmd::progress(sweep, job.count).await?;
    let shards = progress.unfinished();
    std::fs::create_dir_all(&job.log_dir).map_err(|e| Error::io(job.log_dir.display().to_string(), e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("the probe executable", e))?;
    let cwd = std::env::current_dir().map_err(|e| Error::io("the current folder", e))?;
    let mut dependency = None;
    if shards.is_empty() {
        println!("every block of the {} shards is in the cache: submitting the merge only", job.count);
    } else {
        let script = job.log_dir.join("shards.sbatch");
        write_script(&script, &job.shards_script(&exe, &cwd, &shards))?;
        let id = sbatch(&job.sbatch, &[], &script)?;
        let list = ranges(&shards);
        println!(
            "submitted shards {list} of {}: array job {id} (logs: {})",
            job.count,
            job.log_dir.join(format!("shard-{id}_<k>.out")).display()
        );
        dependency = Some(id);
    }
    let script = job.log_dir.join("merge.sbatch");
    write_script(&script, &job.merge_script(&exe, &cwd))?;
    let after: Vec<String> = dependency.iter().map(|id| format!("--dependency=afterany:{id}")).collect();
    let merge = sbatch(&job.sbatch, &after, &script)?;
    let log = job.log_dir.join(format!("merge-{merge}.out"));
    println!(
        "submitted merge: job {merge}{} (log: {})",
        dependency.map(|d| format!(" after array job {d}")).unwrap_or_default(),
        log.display()
    );
    println!("scripts: {}", job.log_dir.display());
    println!("progress: probe status (same arguments) --shards {}", job.count);
    if s.wait {
        wait(&job.sbatch, &merge, &log).await?;
    }
    Ok(())
}

/// Checks the flags, the settings file, the sweep (planned as a shard) and `sbatch`.
async fn prepare(sweep: &SweepArgs, s: &SubmitArgs) -> Result<Job> {
    let scheduler = s.submit.as_deref().unwrap_or_default();
    if scheduler != "slurm" {
        return Err(Error::invalid("submit", format!("{scheduler:?} (the scheduler supported is slurm)")));
    }
    let count = s.shards.ok_or_else(|| Error::invalid("shards", "--submit needs --shards N (the array's size)"))?;
    if count == 0 {
        return Err(Error::invalid("shards", "0 (must be ≥ 1)"));
    }
    if let Some(k) = sweep.shard {
        return Err(Error::invalid("shard", format!("{:?}: --submit runs every shard of --shards N", k.to_string())));
    }
    if sweep.dry_run {
        return Err(Error::invalid(
            "dry-run",
            "--submit submits jobs; a dry run of one shard is --shard 1/N --dry-run",
        ));
    }
    if let Some(a) = s.sbatch_args.iter().find(|a| !a.starts_with('-') || a.contains('\n')) {
        return Err(Error::invalid(
            "sbatch-arg",
            format!("{a:?} (one sbatch option, such as --sbatch-arg=--account=abc)"),
        ));
    }
    let file = sweep.settings()?;
    let sbatch = find_program(
        file.slurm.sbatch.clone().or_else(|| std::env::var("PROBE_SBATCH").ok().filter(|v| !v.is_empty())),
    )?;
    // Every check of a shard's run, and the plan its resources come from.
    let shard = probe_core::sweep::Shard::new(1, count)?;
    let (session, prompts) = SweepArgs { shard: Some(shard), dry_run: true, ..sweep.clone() }.open(true).await?;
    let plan = session.prepare(probe_backends::session::Task::Shard, &prompts)?;
    let log_dir = absolute(&file.slurm.log_dir.clone().unwrap_or_else(|| sweep.out.join("slurm")))?;
    let mut common = Vec::new();
    common.extend(file.slurm.partition.iter().map(|p| format!("--partition={p}")));
    common.extend(file.slurm.time.iter().map(|t| format!("--time={t}")));
    common.extend(file.slurm.args.iter().flatten().cloned());
    common.extend(s.sbatch_args.iter().cloned());
    Ok(Job { count, sbatch, log_dir, common, per_task: resources(&plan), args: worker_args() })
}

/// `--gres=gpu:K` for the GPUs the plan uses (servers it launches, extraction placement) and
/// `--mem` for its CPU memory plus 1 GiB for the process.
fn resources(plan: &probe_backends::session::Prepared) -> Vec<String> {
    let Some(p) = &plan.plan else { return Vec::new() };
    let mut gpus: Vec<usize> = Vec::new();
    if plan.launches_servers() {
        gpus.extend(p.generation.servers.iter().flat_map(|s| s.gpus.iter().copied()));
    }
    let placed = p.extraction.iter().flat_map(|e| e.placement.iter());
    gpus.extend(placed.filter_map(|pl| pl.device.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok())));
    gpus.sort_unstable();
    gpus.dedup();
    let mut out = Vec::new();
    if !gpus.is_empty() {
        out.push(format!("--gres=gpu:{}", gpus.len()));
    }
    let cpu: u64 =
        p.devices.iter().filter(|d| d.device == "CPU").map(|d| d.generation_bytes + d.extraction_bytes).sum();
    out.push(format!("--mem={}M", cpu.div_ceil(1 << 20) + 1024));
    out
}

/// This process's `probe sweep` arguments without the submit flags, and `--quiet`.
fn worker_args() -> Vec<String> {
    without_submit_flags(&std::env::args().skip(1).collect::<Vec<_>>())
}

/// `args` (a `probe` command line) after `sweep`, without [`OWN_FLAGS`], with `--quiet`.
fn without_submit_flags(all: &[String]) -> Vec<String> {
    let start = all.iter().position(|a| a == "sweep").map_or(0, |i| i + 1);
    let mut out = Vec::new();
    let mut it = all[start..].iter();
    while let Some(a) = it.next() {
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        match OWN_FLAGS.iter().find(|(f, _)| *f == name) {
            Some((_, true)) if !a.contains('=') => {
                it.next();
            }
            Some(_) => {}
            None => out.push(a.clone()),
        }
    }
    if !out.iter().any(|a| a == "--quiet") {
        out.push("--quiet".into());
    }
    out
}

impl Job {
    fn header(&self, name: &str, cwd: &Path, output: &str, extra: &[String]) -> String {
        let mut s = format!(
            "#!/bin/bash\n# Written by `probe sweep --shards {} --submit slurm`. The job inherits the environment of\n\
             # the submitting shell (sbatch's default): credentials come from there, never from here.\n",
            self.count
        );
        s.push_str(&format!("#SBATCH --job-name={name}\n#SBATCH --chdir={}\n", cwd.display()));
        s.push_str(&format!("#SBATCH --output={}\n", self.log_dir.join(output).display()));
        for a in extra.iter().chain(&self.common) {
            s.push_str(&format!("#SBATCH {a}\n"));
        }
        s.push_str("set -euo pipefail\n");
        s
    }

    fn shards_script(&self, exe: &Path, cwd: &Path, shards: &[usize]) -> String {
        let mut extra = vec![format!("--array={}", ranges(shards))];
        extra.extend(self.per_task.iter().cloned());
        let mut s = self.header("probe-shard", cwd, "shard-%A_%a.out", &extra);
        let shard = format!("\"$SLURM_ARRAY_TASK_ID/{}\"", self.count);
        s.push_str(&format!(
            "exec {} sweep {} --shard {shard}\n",
            quote(&exe.display().to_string()),
            quoted(&self.args)
        ));
        s
    }

    fn merge_script(&self, exe: &Path, cwd: &Path) -> String {
        let mut s = self.header("probe-merge", cwd, "merge-%j.out", &[]);
        s.push_str(&format!(
            "exec {} merge {} --shards {}\n",
            quote(&exe.display().to_string()),
            quoted(&self.args),
            self.count
        ));
        s
    }
}

/// `1-3`, `2,5`, `1-3,7`.
fn ranges(v: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        parts.push(if j > i { format!("{}-{}", v[i], v[j]) } else { v[i].to_string() });
        i = j + 1;
    }
    parts.join(",")
}

fn quoted(args: &[String]) -> String {
    args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().map_err(|e| Error::io("the current folder", e))?.join(p))
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path.display().to_string(), e))
}

/// The submitting program: a path, or a name on the PATH.
fn find_program(given: Option<String>) -> Result<PathBuf> {
    let name = given.unwrap_or_else(|| "sbatch".into());
    let missing = || {
        Error::invalid(
            "sbatch",
            format!("{name:?} is not found (install SLURM's client commands, or set [slurm] sbatch or $PROBE_SBATCH)"),
        )
    };
    if name.contains('/') {
        let p = PathBuf::from(&name);
        return if p.is_file() { Ok(p) } else { Err(missing()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(&name)).find(|p| p.is_file()).ok_or_else(missing)
}

/// `sbatch --parsable [extra] script`: the job id.
fn sbatch(program: &Path, extra: &[String], script: &Path) -> Result<String> {
    let out = Command::new(program)
        .arg("--parsable")
        .args(extra)
        .arg(script)
        .output()
        .map_err(|e| Error::io(program.display().to_string(), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout.trim().split(';').next().unwrap_or_default().to_owned();
    if !out.status.success() || id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::backend(
            "sbatch",
            format!(
                "{} {}: {} {}",
                program.display(),
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
            ),
        ));
    }
    Ok(id)
}

/// `scontrol` beside the `sbatch` in use (or on the PATH).
fn scontrol(sbatch: &Path) -> PathBuf {
    match sbatch.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) if d.join("scontrol").is_file() => d.join("scontrol"),
        _ => PathBuf::from("scontrol"),
    }
}

/// Polls the merge job until it ends; prints its state and exits with its status (its log's
/// error line on stderr when it failed).
async fn wait(sbatch: &Path, id: &str, log: &Path) -> Result<()> {
    let program = scontrol(sbatch);
    loop {
        let out = Command::new(&program)
            .args(["show", "job", "-o", id])
            .output()
            .map_err(|e| Error::io(program.display().to_string(), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |k: &str| {
            text.split_whitespace().find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('='))).map(str::to_owned)
        };
        if !out.status.success() {
            return Err(Error::backend(
                "scontrol",
                format!("job {id}: {}", String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")),
            ));
        }
        let state = field("JobState").unwrap_or_default();
        if !matches!(
            state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED" | ""
        ) {
            let code: i32 = field("ExitCode").and_then(|c| c.split(':').next()?.parse().ok()).unwrap_or(1);
            let code = if state == "COMPLETED" { code } else { code.max(1) };
            println!("merge job {id}: {state} (exit {code}); log: {}", log.display());
            if code != 0 {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if let Some(line) = text.lines().rev().find(|l| l.starts_with("error:")) {
                    eprintln!("{line}");
                }
                std::process::exit(code);
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[1, 2, 3]), "1-3");
        assert_eq!(ranges(&[2, 5]), "2,5");
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
    }

    #[test]
    fn the_submit_flags_are_dropped_from_the_workers_arguments() {
        let all: Vec<String> = [
            "--quiet",
            "sweep",
            "--model",
            "m",
            "--shards",
            "3",
            "--submit=slurm",
            "--wait",
            "--sbatch-arg",
            "--hold",
            "--sbatch-arg=--qos=x",
            "--layers",
            "all",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(without_submit_flags(&all), ["--model", "m", "--layers", "all", "--quiet"]);
    }

    #[test]
    fn quoting_keeps_plain_words_and_escapes_the_rest() {
        assert_eq!(quote("--layers"), "--layers");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }
}
