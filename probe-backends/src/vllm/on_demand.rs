//! [`LazyServers`]: servers launched when first needed; [`OnDemand`]: a vLLM generator over
//! them (a run whose completions are all cached starts nothing), stopped by
//! [`OnDemand::stop`] or when dropped; and the time-shared order of a sweep
//! ([`generation_first`], [`after_sweep`]).

use std::sync::Arc;

use async_trait::async_trait;
use probe_core::sweep::{self, PromptSet, SweepConfig, SweepObserver, SweepReport, SweepSummary};
use probe_core::{CacheStore, Capabilities, Error, Generation, GenerationRequest, Generator, ModelId, Result};
use tokio::sync::Mutex;

use super::{ServerGroup, VllmLauncher};
use crate::roles::Mode;

#[derive(Debug)]
enum State {
    NotStarted(Box<VllmLauncher>),
    Running(ServerGroup),
    /// The launch failed (its error, for the calls still waiting).
    Failed(String),
    Stopped,
}

/// Servers this run launches when they are first needed ([`LazyServers::ensure_started`]):
/// a run whose completions (and, for vLLM extraction, activations) are all cached starts
/// nothing. Stopped by [`LazyServers::stop`] or when dropped; a call after the stop is an
/// error, never a second launch.
#[derive(Debug)]
pub struct LazyServers {
    mode: Mode,
    state: Mutex<State>,
    /// The servers' hidden-states folder, emptied when they stop.
    hidden_states: Option<std::path::PathBuf>,
}

impl LazyServers {
    /// `launcher`'s servers, not started yet, on devices shared as `mode` says.
    pub fn new(launcher: VllmLauncher, mode: Mode) -> Self {
        let hidden_states = launcher.hidden_states_dir().map(ToOwned::to_owned);
        Self { mode, state: Mutex::new(State::NotStarted(Box::new(launcher))), hidden_states }
    }

    /// How the servers' devices are shared with extraction.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Starts the servers on the first call and waits until they are healthy.
    ///
    /// # Errors
    /// The launch's errors (also for the calls that waited on it), or a backend error after
    /// [`LazyServers::stop`].
    pub async fn ensure_started(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        match &*state {
            State::Running(_) => Ok(()),
            State::NotStarted(l) => match start(l, self.mode).await {
                Ok(group) => {
                    *state = State::Running(group);
                    Ok(())
                }
                Err(e) => {
                    // Calls waiting on the lock (blocks in flight) fail at once, not launch again.
                    *state = State::Failed(e.to_string());
                    Err(e)
                }
            },
            State::Failed(e) => Err(Error::backend("vllm", format!("the launched servers did not start: {e}"))),
            State::Stopped => {
                Err(Error::backend("vllm", "the launched servers were asked for work after they were stopped"))
            }
        }
    }

    /// Stops the servers if they were started (logging `vllm: stopped N servers <why>`).
    ///
    /// # Errors
    /// When stopping fails.
    pub async fn stop(&self, why: &str) -> Result<()> {
        let state = std::mem::replace(&mut *self.state.lock().await, State::Stopped);
        match state {
            State::Running(group) => {
                let n = group.servers().len();
                group.stop().await?;
                tracing::info!("vllm: stopped {n} servers {why}");
                if let Some(dir) = &self.hidden_states {
                    // What no answer named: the files and locks of requests in flight on a
                    // server that died (its answer never came), now that no server writes.
                    let left = remove_files(dir);
                    if left > 0 {
                        tracing::info!("vllm: removed {left} files left in {} by servers that died", dir.display());
                    }
                }
                Ok(())
            }
            State::NotStarted(_) => {
                tracing::info!("vllm: no server was launched: everything was cached");
                Ok(())
            }
            State::Failed(_) | State::Stopped => Ok(()),
        }
    }
}

/// Removes the files directly in `dir` (not folders); returns how many.
fn remove_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// A generator over [`LazyServers`]: the first call starts them.
#[derive(Debug)]
pub struct OnDemand {
    inner: Arc<dyn Generator>,
    servers: Arc<LazyServers>,
}

impl OnDemand {
    /// `inner` (a client of the servers' URLs) in front of `launcher`'s servers, on devices
    /// shared as `mode` says.
    pub fn new(launcher: VllmLauncher, inner: Arc<dyn Generator>, mode: Mode) -> Self {
        Self::over(Arc::new(LazyServers::new(launcher, mode)), inner)
    }

    /// `inner` in front of `servers` (shared with an extractor on the same servers).
    pub fn over(servers: Arc<LazyServers>, inner: Arc<dyn Generator>) -> Self {
        Self { inner, servers }
    }

    /// How the servers' devices are shared with extraction.
    pub fn mode(&self) -> Mode {
        self.servers.mode
    }

    /// [`LazyServers::stop`].
    ///
    /// # Errors
    /// When stopping fails.
    pub async fn stop(&self, why: &str) -> Result<()> {
        self.servers.stop(why).await
    }
}

async fn start(l: &VllmLauncher, mode: Mode) -> Result<ServerGroup> {
    let n = l.dry_run().len();
    let how = if mode == Mode::TimeShared { "time-shared" } else { "exclusive" };
    tracing::info!("vllm: launching {n} servers ({how} devices)");
    let group = l.launch().await?;
    tracing::info!("vllm: {n} servers healthy at {}", group.urls().join(", "));
    Ok(group)
}

#[async_trait]
impl Generator for OnDemand {
    /// Starts the servers on the first call and waits until they are healthy, then generates
    /// through them.
    async fn generate(&self, request: GenerationRequest) -> Result<Vec<Generation>> {
        self.servers.ensure_started().await?;
        self.inner.generate(request).await
    }
    fn model_id(&self) -> ModelId {
        self.inner.model_id()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// For a sweep (or, with `shard`, one shard) on time-shared devices: runs the generation
/// phase through the launched servers, then stops them; returns its counts. Does nothing
/// (`None`) otherwise.
///
/// # Errors
/// The launcher's and the generation phase's errors.
pub async fn generation_first(
    launched: Option<&OnDemand>,
    prompts: &PromptSet,
    config: &SweepConfig,
    cache: &dyn CacheStore,
    observer: &dyn SweepObserver,
    shard: Option<sweep::Shard>,
) -> Result<Option<SweepSummary>> {
    let Some(g) = launched else { return Ok(None) };
    if g.mode() != Mode::TimeShared || config.sampling.is_none() {
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
pub async fn after_sweep(
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
