//! [`Session`]: the one entry point of a run, for the `probe` command and for any Rust program.
//!
//! A session opens a model folder once ([`ModelFolder`]: `config.json`, tokenizer, chat
//! template), resolves the device inventory once, and then runs sweeps, generation,
//! extraction, probe application and sharded sweeps over one cache. Every setting comes from
//! [`Settings`] (the type `probe.toml` deserializes into): what it leaves unset is planned
//! ([`Session::plan`]) or takes its one default ([`settings::defaults`]). The vLLM servers a
//! session launches (the vllm backend without `[vllm] urls`) start on first use, are
//! time-shared with extraction where the plan says so, and stop at the end of each call, on
//! an error, and at [`Session::close`].
//!
//! ```no_run
//! use probe_backends::session::{Session, Settings};
//! use probe_core::sweep::PromptSet;
//!
//! # async fn run() -> probe_core::Result<()> {
//! let settings = Settings::default().cache("memory://").layers("1,2".parse()?).max_tokens(4);
//! let session = Session::open("fixtures/models/llama", settings).await?;
//! let prompts = PromptSet::from_jsonl("prompts.jsonl")?;
//! let report = session.sweep(&prompts).await?;
//! println!("{}", report.table());
//! session.close().await?;
//! # Ok(()) }
//! ```

mod folder;
mod outputs;
mod plan;
mod servers;
pub mod settings;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use probe_core::plan::RunPlan;
use probe_core::sweep::{
    self, Applied, NoProgress, PromptSet, SavedProbe, Shard, ShardSummary, SweepConfig, SweepObserver, SweepParts,
    SweepReport, TokenShard, TransferScore,
};
use probe_core::{CacheStore, Error, Generation, Generator, Readout, Result, Site, Tensor};
use tokio::sync::Mutex;

pub use folder::ModelFolder;
pub use outputs::{Written, write_report};
pub use settings::{Settings, Steer};

use crate::device::{Detected, MemorySampler};
use crate::registry::{self, Backend, OpenOptions, Opened};
use servers::Servers;

/// What a call of a session does (its plan differs: a sweep generates and extracts, an
/// extraction only extracts …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Task {
    /// [`Session::sweep`].
    Sweep,
    /// [`Session::shard`] and [`Session::merge`]: every worker keys alike (dtype given or f32).
    Shard,
    /// [`Session::generate`].
    Generate,
    /// [`Session::extract`].
    Extract,
}

/// A run over one model: settings resolved, folder read, devices known.
pub struct Session {
    settings: Settings,
    folder: ModelFolder,
    backend: Backend,
    detected: Detected,
    observer: Arc<dyn SweepObserver>,
    /// Models loaded in process, kept for the session's later calls: one per dtype, with the
    /// blocks it loaded (`None`: all, with the head).
    opened: Mutex<HashMap<String, (Option<usize>, Opened)>>,
    /// The cache store, opened on first use (bad input before it writes nothing).
    cache: std::sync::OnceLock<Arc<dyn CacheStore>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("model", &self.folder.name())
            .field("backend", &self.backend)
            .field("inventory", &self.detected.message)
            .finish_non_exhaustive()
    }
}

/// A call resolved and checked, before anything expensive.
#[derive(Debug)]
pub struct Prepared {
    /// What the call does.
    pub task: Task,
    /// The prompts, chat prompts rendered.
    pub prompts: PromptSet,
    /// The sweep configuration the call runs.
    pub config: SweepConfig,
    /// The plan (`None` for a model without `config.json`).
    pub plan: Option<RunPlan>,
    /// Blocks the in-process model loads: only what the deepest layer needs when it only
    /// extracts (no output head), `None` (the whole model) when it also generates.
    pub blocks: Option<usize>,
    servers: Servers,
}

impl Prepared {
    /// The lines of a dry run: device roles, time-sharing, launch commands, then the plan.
    pub fn dry_run_lines(&self, extraction: bool) -> Vec<String> {
        let mut out = self.servers.dry_run_lines(extraction);
        out.extend(self.plan.iter().flat_map(RunPlan::lines).map(|l| format!("plan: {l}")));
        out
    }

    /// The vLLM server URLs: given, or those the launched servers will have.
    pub fn server_urls(&self) -> Vec<String> {
        self.servers.urls()
    }

    /// Whether the call launches vLLM servers.
    pub fn launches_servers(&self) -> bool {
        self.servers.launches()
    }
}

/// What the cache holds of a sweep split into shards ([`Session::shard_status`]).
#[derive(Debug, Clone)]
pub struct ShardProgress {
    /// Rows of every block of the cache grid.
    pub grid: Vec<(usize, usize)>,
    /// Block index → what it lacks.
    pub missing: BTreeMap<usize, Vec<String>>,
    /// The shard count.
    pub count: usize,
}

impl ShardProgress {
    /// The shards (1-based) that own at least one missing block, in order.
    pub fn unfinished(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.missing.keys().map(|&b| Shard::owner(b, self.count).index).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One line per shard, then a total.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for k in 1..=self.count {
            let shard = Shard { index: k, count: self.count };
            let mine: Vec<usize> = (0..self.grid.len()).filter(|&b| shard.owns(b)).collect();
            let lacking: Vec<usize> = mine.iter().copied().filter(|b| self.missing.contains_key(b)).collect();
            let done = mine.len() - lacking.len();
            if lacking.is_empty() {
                out.push(format!("shard {shard}: done ({done} of {} blocks: {})", mine.len(), or_none(&join(&mine))));
            } else {
                let what: Vec<String> = lacking
                    .iter()
                    .map(|b| {
                        let (s, e) = self.grid[*b];
                        format!("block {b} (rows {s}..{e}: {})", self.missing[b].join(", "))
                    })
                    .collect();
                out.push(format!("shard {shard}: {done} of {} blocks done; missing {}", mine.len(), what.join(", ")));
            }
        }
        let total = self.grid.len();
        let unfinished = self.unfinished();
        out.push(if unfinished.is_empty() {
            format!(
                "all {total} blocks are in the cache: probe merge (same arguments, --shards {}) writes the report",
                self.count
            )
        } else {
            let list: Vec<String> = unfinished.iter().map(|k| format!("{k}/{}", self.count)).collect();
            format!(
                "{} of {total} blocks done; shard{} with missing blocks: {}",
                total - self.missing.len(),
                if list.len() == 1 { "" } else { "s" },
                list.join(", ")
            )
        });
        out
    }
}

fn join(v: &[usize]) -> String {
    v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

/// A prompt set tested with a sweep's probes ([`Session::sweep_prepared`]).
#[derive(Debug, Clone)]
pub struct Tested {
    /// The set, chat prompts rendered.
    pub set: PromptSet,
    /// Accuracy per layer, when the set is labelled.
    pub score: TransferScore,
    /// Per probe's layer (in the report's order), per prompt: the probe's output.
    pub applied: sweep::LayerResults,
}

/// Receives every token's hidden states, shard by shard, with the model that made them
/// ([`Session::extract_all_tokens`]).
pub type TokenSink<'a> = dyn FnMut(&probe_core::ModelInfo, TokenShard) -> Result<()> + Send + 'a;

/// Hidden states of inputs ([`Session::extract`]).
#[derive(Debug, Clone)]
pub struct Extracted {
    /// Per (site, layer), `[n_inputs, width]` (heads flattened), rows in input order.
    pub sites: BTreeMap<(Site, usize), Tensor>,
    /// The model that made them (identity, dtype, hidden size).
    pub model: probe_core::ModelInfo,
}

/// Milliseconds between memory samples during a sweep.
const MEMORY_INTERVAL: Duration = Duration::from_millis(100);

impl Session {
    /// Opens `model` (a Hugging Face folder; for vllm generation also a served model name)
    /// with `settings`: checks every setting, reads the folder once and finds the devices.
    /// Nothing is loaded or launched yet.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad setting or file; [`Error::FeatureDisabled`] for a
    /// backend this build lacks.
    pub async fn open(model: impl Into<String>, settings: Settings) -> Result<Self> {
        let model = model.into();
        settings.validate()?;
        let backend = settings.backend_or_default();
        backend.check_available()?;
        if settings.vllm.urls.as_ref().is_some_and(|u| !u.is_empty()) && backend != Backend::Vllm {
            let url = &settings.server_urls()[0];
            return Err(Error::invalid("urls", format!("{url:?} is only used with the vllm backend")));
        }
        if settings.extracts_on_servers() && backend != Backend::Vllm {
            return Err(Error::invalid(
                "extractor",
                format!("\"vllm\" needs the vllm backend, not {}", backend.name()),
            ));
        }
        probe_cache::check_url(&settings.cache_url())?;
        let template = settings.run.chat_template.as_deref();
        // A vLLM server may serve a model by name: generation needs no folder.
        let optional = backend == Backend::Vllm && !settings.extracts_on_servers();
        let folder = ModelFolder::open(&model, backend, template, optional)?;
        let detected = plan::inventory(&settings)?;
        Ok(Self {
            settings,
            folder,
            backend,
            detected,
            observer: Arc::new(NoProgress),
            opened: Mutex::new(HashMap::new()),
            cache: std::sync::OnceLock::new(),
        })
    }

    /// Reports every event of the session's sweeps to `observer` (progress bars, logs).
    pub fn with_observer(mut self, observer: Arc<dyn SweepObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The model folder.
    pub fn folder(&self) -> &ModelFolder {
        &self.folder
    }

    /// Where the cache is, as its store prints it (credentials never shown).
    ///
    /// # Errors
    /// The store's errors for a URL it cannot open.
    pub fn cache_location(&self) -> Result<String> {
        Ok(self.cache()?.location())
    }

    /// The cache store, opened once.
    fn cache(&self) -> Result<Arc<dyn CacheStore>> {
        if let Some(c) = self.cache.get() {
            return Ok(c.clone());
        }
        let opened = probe_cache::from_url(&self.settings.cache_url())?;
        Ok(self.cache.get_or_init(|| opened).clone())
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The plan a sweep of `prompts` runs with (`None`: the model has no `config.json`).
    ///
    /// # Errors
    /// As [`Session::prepare`].
    pub fn plan(&self, prompts: &PromptSet) -> Result<Option<RunPlan>> {
        Ok(self.prepare(Task::Sweep, prompts)?.plan)
    }

    /// Resolves and checks a call of `task` on `prompts`: renders chat prompts, resolves the
    /// layers, the readout, the sampling, the plan and the servers. Starts nothing.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the bad value; an impossible plan with its numbers.
    pub fn prepare(&self, task: Task, prompts: &PromptSet) -> Result<Prepared> {
        self.prepare_with(task, prompts, self.settings.dry_run)
    }

    /// [`Session::prepare`]; with `dry_run`, GPUs named by `[devices]` need not exist here.
    fn prepare_with(&self, task: Task, prompts: &PromptSet, dry_run: bool) -> Result<Prepared> {
        let s = &self.settings;
        let mut prompts = prompts.clone();
        if let Some(name) = &s.run.prompt_set {
            prompts = prompts.with_name(name)?;
        }
        let sweeps = matches!(task, Task::Sweep | Task::Shard);
        if sweeps {
            check_classes(&prompts)?;
        }
        let readout = s.readout();
        let generates = match task {
            Task::Sweep | Task::Shard => s.generates(),
            Task::Generate => true,
            Task::Extract => false,
        };
        match (task, &readout) {
            (Task::Sweep | Task::Shard, Readout::All) => {
                return Err(Error::invalid(
                    "positions",
                    "\"all\" (a probe needs one vector per prompt: use last, last-prompt, mean, mean-completion \
                     or marker:TEXT; extraction with positions all writes every token)",
                ));
            }
            (Task::Extract, Readout::MeanCompletion) => {
                return Err(Error::invalid(
                    "positions",
                    "mean-completion: extraction reads prompts, which have no completion",
                ));
            }
            (Task::Sweep | Task::Shard, Readout::MeanCompletion) if !generates => {
                return Err(Error::invalid(
                    "positions",
                    "mean-completion reads completions, and no_generate asks for none",
                ));
            }
            _ => {}
        }
        if task == Task::Generate {
            self.backend.check_generates()?;
        }
        let on_servers = s.extracts_on_servers() && task != Task::Generate;
        if self.backend == Backend::Vllm && !on_servers && task != Task::Generate {
            // Generation on the servers, extraction on candle from the same folder.
            self.folder.check(self.backend)?;
        }
        let sites = s.read_sites();
        if let Some(site) = sites.iter().find(|s| !s.is_resid()).filter(|_| on_servers) {
            return Err(Error::invalid(
                "site",
                format!("{site}: the vllm extractor reads only the residual stream (resid); candle reads every site"),
            ));
        }
        let prompts = self.folder.render(prompts)?;
        // Per site, its layers; sites inside blocks are numbered by block: `0..L`.
        let reads: Vec<(Site, Vec<usize>)> = match task {
            Task::Generate => vec![(sites[0], Vec::new())],
            _ => {
                let (selection, l) =
                    (s.extraction.layers.clone().unwrap_or(sweep::LayerSelection::All), self.folder.num_layers()?);
                let layers =
                    |site: Site| if site.in_block() { selection.resolve_blocks(l) } else { selection.resolve(l) };
                sites.iter().map(|&site| Ok((site, layers(site)?))).collect::<Result<_>>()?
            }
        };
        // A site the model lacks is refused from config.json, before anything runs.
        #[cfg(feature = "candle")]
        if let Some(folder) = self.folder.candle().filter(|_| task != Task::Generate && !on_servers) {
            folder.check_sites(&reads)?;
        }
        let layers = reads[0].1.clone();
        let sampling = s.sampling()?;
        if generates && !sampling.steering.is_empty() && self.backend == Backend::Vllm {
            return Err(Error::not_supported(
                "steering (--steer-*): candle steers in process (--backend candle); vLLM has no steering plugin yet",
                "vllm",
            ));
        }
        let urls = s.server_urls();
        let mut servers = Servers::plan(s, self.backend, self.folder.name(), &urls, generates, s.log_dir(), dry_run)?;
        if on_servers {
            servers.extract_on_servers(s, self.folder.name(), &layers, s.log_dir())?;
        }
        let tokens = u64::from(sampling.max_tokens);
        let in_process_generation = generates && self.backend != Backend::Vllm;
        let blocks = (!in_process_generation && !on_servers && task != Task::Generate)
            .then(|| self.extraction_blocks(&reads))
            .flatten();
        let work = plan::Workload {
            prompts: &prompts,
            // vLLM extraction: one-token requests to the servers (the extraction request of
            // prompt + completion asks one token more); nothing extracted in process.
            max_new_tokens: match (generates, on_servers) {
                (true, false) => Some(tokens),
                (true, true) => Some(tokens + 1),
                (false, true) => Some(1),
                (false, false) => None,
            },
            launches: servers.launches(),
            in_process: !on_servers && (task != Task::Generate || self.backend != Backend::Vllm),
            hidden_states_on_servers: on_servers,
            layers: reads.iter().map(|(_, l)| l.len()).sum::<usize>().max(1) as u64,
            blocks,
            positions: readout.positions(),
            fixed_dtype: task == Task::Shard,
        };
        let run_plan = plan::resolve(s, &self.folder, &self.detected, self.backend, &work)?;
        servers.use_plan(run_plan.as_ref())?;
        let in_flight = if self.backend == Backend::Vllm { 4 * servers.urls().len().max(1) } else { 1 };
        let mut config = SweepConfig::new(layers)
            .with_positions(readout)
            .with_batch_size(s.extraction.batch_size.unwrap_or(settings::defaults::BATCH_SIZE))
            .with_sampling(generates.then_some(sampling))
            .with_probe(s.probe_config()?)
            .with_site(reads[0].0)
            .with_generation_in_flight(in_flight);
        for (site, layers) in reads.into_iter().skip(1) {
            config = config.with_more_site(site, layers);
        }
        if let Some(p) = &run_plan {
            config = config.with_plan(p.clone());
        }
        Ok(Prepared { task, prompts, config, plan: run_plan, blocks, servers })
    }

    /// Blocks a model that only extracts `reads` (per site, its layers) loads (candle, and
    /// vllm's in-process candle extraction): what the deepest read needs
    /// ([`Site::blocks_for`]), at least one. `None` for the other backends (exports load whole).
    fn extraction_blocks(&self, reads: &[(Site, Vec<usize>)]) -> Option<usize> {
        matches!(self.backend, Backend::Candle | Backend::Vllm).then(|| Site::blocks_for(reads).max(1))
    }

    /// The model loaded in process where `plan` places it (the CPU, or `[devices]
    /// extraction_gpus`, without a plan), computing in `dtype`, generating (vllm) on the servers
    /// at `urls`, loading `blocks` blocks (`None`: the whole model; see [`Prepared::blocks`]);
    /// kept for the session's later calls (a whole model serves any); OOM injection applied in
    /// `testing` builds.
    async fn model(
        &self,
        plan: Option<&RunPlan>,
        urls: Vec<String>,
        batch_size: usize,
        (dtype, blocks): (&str, Option<usize>),
    ) -> Result<Opened> {
        let mut opened = self.opened.lock().await;
        // A model that holds at least the blocks asked for serves; a smaller one is replaced.
        let covers = |have: Option<usize>| match (have, blocks) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(h), Some(w)) => h >= w,
        };
        if let Some((_, m)) = opened.get(dtype).filter(|(have, _)| covers(*have)) {
            return Ok(m.clone());
        }
        opened.remove(dtype);
        tracing::info!("loading {} with {}", self.folder.name(), self.backend.name());
        let gpu = plan.map_or(self.settings.first_extraction_gpu(), RunPlan::first_extraction_gpu);
        let mut options = OpenOptions::default()
            .on(gpu)
            .with_dtype(dtype)
            .with_urls(urls)
            .with_gpus_as_cpu(crate::mock::gpus_as_cpu())
            .with_batch_size(Some(batch_size));
        if let Some(e) = plan.and_then(|p| p.extraction.as_ref()).filter(|e| !e.placement.is_empty()) {
            options = options.with_placement(e.placement.clone());
        }
        #[cfg(feature = "candle")]
        {
            options = options.with_candle_folder(self.folder.candle());
        }
        let model =
            crate::mock::inject(registry::open(self.backend, self.folder.name(), &options.with_blocks(blocks))?)?;
        opened.insert(dtype.to_owned(), (blocks, model.clone()));
        Ok(model)
    }

    /// [`Session::model`] as `prepared` plans it.
    async fn planned_model(&self, prepared: &Prepared) -> Result<Opened> {
        let plan = prepared.plan.as_ref();
        self.model(plan, prepared.servers.urls(), prepared.config.batch_size, (plan::dtype_name(plan), prepared.blocks))
            .await
    }

    /// A sweep: completions (generated once, cached), activations of every layer (computed
    /// once, cached), one probe per layer, the report (with the run's memory).
    ///
    /// # Errors
    /// As [`Session::prepare`], the backends' and the cache's errors.
    pub async fn sweep(&self, prompts: &PromptSet) -> Result<SweepReport> {
        Ok(self.sweep_prepared(&self.prepare(Task::Sweep, prompts)?, &[]).await?.0)
    }

    /// [`Session::sweep`], then the probes tested on each of `tests` (generalisation across
    /// sets, in the report's `transfer`), with the same loaded model.
    ///
    /// # Errors
    /// As [`Session::sweep`]; a test set named like the training set.
    pub async fn sweep_prepared(&self, prepared: &Prepared, tests: &[PromptSet]) -> Result<(SweepReport, Vec<Tested>)> {
        expect_task(prepared, Task::Sweep)?;
        for t in tests {
            if t.name == prepared.prompts.name {
                return Err(Error::invalid("test-on", format!("the prompt set {:?} is the training set", t.name)));
            }
        }
        let cache = self.cache()?;
        let memory = MemorySampler::start(MEMORY_INTERVAL);
        let observer = Sampled { inner: self.observer.as_ref(), memory: &memory };
        let launched = prepared.servers.on_demand(self.folder.name())?;
        let ld = launched.as_deref();
        let generated =
            servers::generation_first(ld, &prepared.prompts, &prepared.config, cache.as_ref(), &observer, None).await?;
        memory.phase_started("load");
        let (model, extracting) = if self.settings.extracts_on_servers() {
            let (m, l) = prepared.servers.open_extraction(self.folder.name())?;
            (crate::mock::inject(m)?, l)
        } else {
            (self.planned_model(prepared).await?, None)
        };
        memory.phase_finished("load");
        let parts = parts(&model, cache.as_ref(), &observer, ld.map(|g| g as &dyn Generator));
        let mut report = sweep::run(parts, &prepared.prompts, &prepared.config).await?;
        let mut tested = Vec::new();
        for set in tests {
            let set = self.folder.render(set.clone())?;
            let (features, _) = sweep::features(parts, &set, &prepared.config).await?;
            let (score, applied) = sweep::transfer(&report, &set, &features)?;
            report.transfer.push(score.clone());
            tested.push(Tested { set, score, applied });
        }
        servers::after_sweep(ld, generated, &mut report).await?;
        if let Some(s) = extracting {
            s.stop("after the sweep").await?;
        }
        report.memory = Some(memory.finish(prepared.plan.as_ref()));
        Ok((report, tested))
    }

    /// Shard `shard` of a sweep (`k/N`): its blocks of prompts generated and extracted into the
    /// shared cache; no report ([`Session::merge`] makes it once every shard is done).
    ///
    /// # Errors
    /// As [`Session::sweep`].
    pub async fn shard(&self, prompts: &PromptSet, shard: Shard) -> Result<ShardSummary> {
        self.shard_prepared(&self.prepare(Task::Shard, prompts)?, shard).await
    }

    /// [`Session::shard`] of a call prepared with [`Task::Shard`] (no second preparation).
    ///
    /// # Errors
    /// As [`Session::shard`]; a call prepared for another task.
    pub async fn shard_prepared(&self, prepared: &Prepared, shard: Shard) -> Result<ShardSummary> {
        expect_task(prepared, Task::Shard)?;
        let cache = self.cache()?;
        let observer = self.observer.as_ref();
        let launched = prepared.servers.on_demand(self.folder.name())?;
        let ld = launched.as_deref();
        let generated =
            servers::generation_first(ld, &prepared.prompts, &prepared.config, cache.as_ref(), observer, Some(shard))
                .await?;
        // `--extractor vllm`: this task's own servers (given, or launched for it) extract.
        let (model, extracting) = if self.settings.extracts_on_servers() {
            let (m, l) = prepared.servers.open_extraction(self.folder.name())?;
            (crate::mock::inject(m)?, l)
        } else {
            (self.planned_model(prepared).await?, None)
        };
        let parts = parts(&model, cache.as_ref(), observer, ld.map(|g| g as &dyn Generator));
        let result = sweep::run_shard(parts, &prepared.prompts, &prepared.config, shard).await;
        if let Some(g) = ld {
            g.stop("after the shard").await?;
        }
        if let Some(s) = extracting {
            s.stop("after the shard").await?;
        }
        let mut summary = result?;
        if let Some(g) = generated {
            // The shard found the completions of its time-shared generation phase cached.
            summary.work.generations_generated = g.generations_generated;
            summary.work.generations_cached = g.generations_cached;
        }
        Ok(summary)
    }

    /// Finishes a sharded sweep: folds the shards' blocks, trains the probes, reports. Loads no
    /// model and contacts no server (`shards`: the count, to name missing shards).
    ///
    /// # Errors
    /// As [`probe_core::sweep::merge`]: a missing block names its shard.
    pub async fn merge(&self, prompts: &PromptSet, shards: Option<usize>) -> Result<SweepReport> {
        if shards == Some(0) {
            return Err(Error::invalid("shards", "0 (must be ≥ 1)"));
        }
        let (prepared, cache, model) = self.identities(prompts)?;
        let parts = parts(&model, cache.as_ref(), self.observer.as_ref(), None);
        sweep::merge(parts, &prepared.prompts, &prepared.config, shards).await
    }

    /// Which blocks of a sweep split into `count` shards the cache holds (nothing loaded,
    /// generated, extracted or written).
    ///
    /// # Errors
    /// `count` = 0, the errors of planning the sweep, the store's errors.
    pub async fn shard_status(&self, prompts: &PromptSet, count: usize) -> Result<ShardProgress> {
        if count == 0 {
            return Err(Error::invalid("shards", "0 (must be ≥ 1)"));
        }
        let (prepared, cache, model) = self.identities(prompts)?;
        let parts = parts(&model, cache.as_ref(), &NoProgress, None);
        let missing = sweep::missing_blocks(parts, &prepared.prompts, &prepared.config).await?;
        Ok(ShardProgress { grid: sweep::cache_blocks(prepared.prompts.len()), missing, count })
    }

    /// The shards' plan and stand-ins for the model that name it without loading it.
    fn identities(&self, prompts: &PromptSet) -> Result<(Prepared, Arc<dyn CacheStore>, Opened)> {
        // Runs nothing on a device: the GPUs of `[devices]` need not exist here.
        let prepared = self.prepare_with(Task::Shard, prompts, true)?;
        let cache = self.cache()?;
        let dtype = plan::dtype_name(prepared.plan.as_ref());
        let on_servers = self.settings.extracts_on_servers();
        let model = identity::opened(self.backend, &self.folder, dtype, &prepared.servers.urls(), on_servers)?;
        Ok((prepared, cache, model))
    }

    /// Completions of `prompts`, in input order, through the cache (one generation per prompt
    /// and sampling, ever).
    ///
    /// # Errors
    /// As [`Session::prepare`]; a backend that cannot generate; the generator's errors.
    pub async fn generate(&self, prompts: &PromptSet) -> Result<Vec<Generation>> {
        let prepared = self.prepare(Task::Generate, prompts)?;
        let launched = prepared.servers.on_demand(self.folder.name())?;
        let generator: Arc<dyn Generator> = match &launched {
            Some(g) => g.clone(),
            None if self.backend == Backend::Vllm => {
                let options = OpenOptions::default().with_urls(prepared.servers.urls());
                registry::open_generator(self.backend, self.folder.name(), &options)?
            }
            None => {
                let model = self.planned_model(&prepared).await?;
                model.generator.ok_or_else(|| Error::not_supported("generation", self.backend.name()))?
            }
        };
        let cache = self.cache()?;
        let (gens, counts) = sweep::completions(
            generator.as_ref(),
            cache.as_ref(),
            self.observer.as_ref(),
            &prepared.prompts,
            &prepared.config,
        )
        .await?;
        tracing::info!(
            "{} completions generated, {} read from the cache",
            counts.generations_generated,
            counts.generations_cached
        );
        if let Some(g) = &launched {
            g.stop("after generation").await?;
        }
        Ok(gens)
    }

    /// Hidden states of `inputs` (texts as they are) at the settings' sites, layers and readout,
    /// every site read in the same forward passes: one `[n_inputs, width]` tensor per (site,
    /// layer), rows in input order. Not cached.
    ///
    /// # Errors
    /// As [`Session::prepare`] (`positions` all: use [`Session::extract_all_tokens`]).
    pub async fn extract(&self, inputs: &PromptSet) -> Result<Extracted> {
        let (prepared, model, launched) = self.extraction(inputs).await?;
        if prepared.config.positions == Readout::All {
            return Err(Error::invalid("positions", "all: every token is streamed by extract_all_tokens"));
        }
        let c = &prepared.config;
        let out = sweep::extract_prompts(
            model.extractor.as_ref(),
            self.observer.as_ref(),
            &prepared.prompts,
            &c.reads(),
            &c.positions,
            c.batch_size,
        )
        .await;
        if let Some(l) = launched {
            l.stop("after extraction").await?;
        }
        Ok(Extracted { sites: out?, model: model.extractor.model_info() })
    }

    /// Every token's hidden states of `inputs` at the settings' sites and layers (every site
    /// read in the same forward passes), streamed to `sink` in shards of at most
    /// `max_shard_bytes`; returns the number of shards.
    ///
    /// # Errors
    /// As [`Session::extract`], and `sink`'s errors.
    pub async fn extract_all_tokens(
        &self,
        inputs: &PromptSet,
        max_shard_bytes: u64,
        sink: &mut TokenSink<'_>,
    ) -> Result<usize> {
        let (prepared, model, launched) = self.extraction(inputs).await?;
        let c = &prepared.config;
        let info = model.extractor.model_info();
        let out = sweep::stream_all_tokens(
            model.extractor.as_ref(),
            self.observer.as_ref(),
            &prepared.prompts,
            &c.reads(),
            (c.batch_size, max_shard_bytes),
            &mut |s| sink(&info, s),
        )
        .await;
        if let Some(l) = launched {
            l.stop("after extraction").await?;
        }
        out
    }

    /// The extractor of an extraction call: in process, or on the given or launched servers.
    async fn extraction(&self, inputs: &PromptSet) -> Result<(Prepared, Opened, Option<Arc<servers::Lazy>>)> {
        let prepared = self.prepare(Task::Extract, inputs)?;
        if self.backend == Backend::Vllm {
            let (m, l) = prepared.servers.open_extraction(self.folder.name())?;
            return Ok((prepared, crate::mock::inject(m)?, l));
        }
        let model = self.planned_model(&prepared).await?;
        Ok((prepared, model, None))
    }

    /// Scores `inputs` with a probe saved by a sweep: what it needs is made as the sweep made
    /// it, through the same cache (the completions, when the probe read them, with the same
    /// sampling; the layer's activations at the same readout). Activations of another model,
    /// dtype, tokenizer or layer are refused.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a probe of another model or layer; vllm (apply with the
    /// in-process backend the probe was trained with).
    pub async fn apply(&self, probe: &SavedProbe, inputs: &PromptSet) -> Result<Vec<Applied>> {
        if self.backend == Backend::Vllm {
            return Err(Error::not_supported(
                "applying a probe (use the in-process backend it was trained with)",
                "vllm",
            ));
        }
        let num_layers = self.folder.num_layers()?;
        if probe.meta.layer > num_layers {
            return Err(Error::invalid(
                "layer",
                format!(
                    "the probe reads layer {}; {} has layers 0..={num_layers}",
                    probe.meta.layer,
                    self.folder.name()
                ),
            ));
        }
        let prompts = self.folder.render(inputs.clone())?;
        let config = SweepConfig::new(vec![probe.meta.layer])
            .with_positions(probe.meta.positions.clone())
            .with_site(probe.meta.site)
            .with_batch_size(self.settings.extraction.batch_size.unwrap_or(settings::defaults::BATCH_SIZE))
            .with_sampling(probe.meta.sampling.clone());
        let blocks = match config.sampling {
            Some(_) => None,
            None => self.extraction_blocks(&[(probe.meta.site, vec![probe.meta.layer])]),
        };
        let model = self.model(None, Vec::new(), config.batch_size, (&probe.meta.dtype, blocks)).await?;
        probe.check(&model.extractor.model_info())?;
        let cache = self.cache()?;
        let mut parts = SweepParts::new(model.extractor.as_ref(), cache.as_ref()).with_observer(self.observer.as_ref());
        if config.sampling.is_some() {
            let g = model.generator.as_deref().ok_or_else(|| {
                Error::invalid(
                    "backend",
                    format!("the probe reads completions, and {} cannot generate", self.backend.name()),
                )
            })?;
            parts = parts.with_generator(g);
        }
        let (features, _) = sweep::features(parts, &prompts, &config).await?;
        probe.apply(&features[&(probe.meta.site, probe.meta.layer)])
    }

    /// Ends the session: drops the loaded models. The servers a call launched were stopped
    /// at its end (also on an error); this is the place a later version keeps them up to.
    ///
    /// # Errors
    /// None yet; kept fallible for servers kept across calls.
    pub async fn close(self) -> Result<()> {
        self.opened.lock().await.clear();
        Ok(())
    }
}

/// The parts of a sweep: `model`'s extractor, the cache, the observer, and the launched servers'
/// generator or else the model's own.
fn parts<'a>(
    model: &'a Opened,
    cache: &'a dyn CacheStore,
    observer: &'a dyn SweepObserver,
    launched: Option<&'a dyn Generator>,
) -> SweepParts<'a> {
    let parts = SweepParts::new(model.extractor.as_ref(), cache).with_observer(observer);
    match launched.or(model.generator.as_deref()) {
        Some(g) => parts.with_generator(g),
        None => parts,
    }
}

/// A prepared call of another task is a caller's mistake, named.
fn expect_task(prepared: &Prepared, task: Task) -> Result<()> {
    if prepared.task == task {
        Ok(())
    } else {
        Err(Error::invalid("prepared call", format!("prepared for {:?}, run as {task:?}", prepared.task)))
    }
}

/// Every prompt class needs two prompts for a train/test split.
fn check_classes(prompts: &PromptSet) -> Result<()> {
    for (label, count) in prompts.class_counts() {
        if count < 2 {
            return Err(Error::invalid(
                "prompt file",
                format!(
                    "{}: label {label:?} has {count} prompt; a train/test split needs at least 2 per class",
                    prompts.name
                ),
            ));
        }
    }
    Ok(())
}

/// Forwards events, sampling the memory as each phase starts and finishes.
struct Sampled<'a> {
    inner: &'a dyn SweepObserver,
    memory: &'a MemorySampler,
}

impl SweepObserver for Sampled<'_> {
    fn on_event(&self, event: &sweep::SweepEvent) {
        // The memory report calls the activation phase `extraction`.
        let name = |p: sweep::Phase| if p == sweep::Phase::Activations { "extraction" } else { p.as_str() };
        match event {
            sweep::SweepEvent::PhaseStarted { phase, .. } => self.memory.phase_started(name(*phase)),
            sweep::SweepEvent::PhaseFinished { phase } => self.memory.phase_finished(name(*phase)),
            _ => {}
        }
        self.inner.on_event(event);
    }
}

mod identity {
    //! Stand-ins that name the model (id, revision, dtype, hidden size) without loading it:
    //! a merge and a shard status read the cache only.

    use std::sync::Arc;

    use async_trait::async_trait;
    use probe_core::{
        ActivationExtractor, ActivationRequest, Activations, Capabilities, Error, Generation, GenerationRequest,
        Generator, ModelId, ModelInfo, Result,
    };

    use crate::registry::{self, Backend, OpenOptions, Opened};

    /// The identities of `model` as `backend` would load it in `dtype`.
    /// `on_servers` (`--extractor vllm`): the vLLM extractor's identity (its client is built,
    /// no server is contacted).
    pub(super) fn opened(
        backend: Backend,
        folder: &super::ModelFolder,
        dtype: &str,
        urls: &[String],
        on_servers: bool,
    ) -> Result<Opened> {
        let model = folder.name();
        if on_servers && backend == Backend::Vllm {
            let options = OpenOptions::default().with_urls(urls.to_vec()).with_vllm_extraction(true, None);
            return registry::open(backend, model, &options);
        }
        #[cfg(feature = "candle")]
        if matches!(backend, Backend::Candle | Backend::Vllm) {
            use crate::candle::CandleOptions;
            folder.check(backend)?;
            let read = folder.candle().ok_or_else(|| Error::invalid("model", format!("{model}: not read")))?;
            let info = read.model_info(&CandleOptions::default().with_dtype(dtype.parse()?));
            let generator: Arc<dyn Generator> = if backend == Backend::Vllm {
                // Builds the client only: no server is contacted.
                registry::open_generator(backend, model, &OpenOptions::default().with_urls(urls.to_vec()))?
            } else {
                Arc::new(Identity(info.clone()))
            };
            return Ok(Opened { extractor: Arc::new(Identity(info)), generator: Some(generator) });
        }
        let _ = dtype;
        registry::open(backend, model, &OpenOptions::default().with_urls(urls.to_vec()))
    }

    #[derive(Debug)]
    struct Identity(ModelInfo);

    #[async_trait]
    impl ActivationExtractor for Identity {
        async fn extract(&self, _request: ActivationRequest) -> Result<Activations> {
            Err(Error::not_supported("extraction during a merge", "identity-only"))
        }
        fn model_info(&self) -> ModelInfo {
            self.0.clone()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
        }
    }

    #[async_trait]
    impl Generator for Identity {
        async fn generate(&self, _request: GenerationRequest) -> Result<Vec<Generation>> {
            Err(Error::not_supported("generation during a merge", "identity-only"))
        }
        fn model_id(&self) -> ModelId {
            self.0.id.clone()
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::none()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_each_shards_blocks_and_the_unfinished_shards() {
        let grid = sweep::blocks(26, 4);
        let mut missing = BTreeMap::new();
        missing.insert(1, vec!["generations".to_owned(), "layers 1,3".to_owned()]);
        missing.insert(4, vec!["layer 3".to_owned()]);
        let p = ShardProgress { grid, missing, count: 3 };
        assert_eq!(p.unfinished(), vec![2]);
        let lines = p.lines();
        assert_eq!(lines[0], "shard 1/3: done (3 of 3 blocks: 0,3,6)");
        assert_eq!(
            lines[1],
            "shard 2/3: 0 of 2 blocks done; missing block 1 (rows 4..8: generations, layers 1,3), block 4 (rows 16..20: layer 3)"
        );
        assert_eq!(lines[3], "5 of 7 blocks done; shard with missing blocks: 2/3");
        let p = ShardProgress { missing: BTreeMap::new(), ..p };
        assert!(p.lines()[3].starts_with("all 7 blocks are in the cache"), "{:?}", p.lines());
    }
}
