//! Progress of a sweep, reported to an observer (the CLI draws progress bars from it;
//! probe-core itself draws nothing).

/// A phase of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Completions.
    Generation,
    /// Hidden states.
    Activations,
    /// Probe training and scoring.
    Probes,
}

impl Phase {
    /// A short lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Generation => "generation",
            Phase::Activations => "activations",
            Phase::Probes => "probes",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SweepEvent {
    /// A phase begins with `total` units of work (prompts, batches, layers).
    PhaseStarted {
        /// The phase.
        phase: Phase,
        /// Units of work in it.
        total: usize,
    },
    /// `done` of the phase's units are finished.
    Progress {
        /// The phase.
        phase: Phase,
        /// Units finished so far.
        done: usize,
    },
    /// One batch of rows `[start, end)` is committed to the cache: `computed` layers were run
    /// now, `cached` were already there.
    BatchCommitted {
        /// First row.
        start: usize,
        /// One past the last row.
        end: usize,
        /// Layers computed by this batch's forward pass.
        computed: Vec<usize>,
        /// Layers of this batch found in the cache.
        cached: usize,
    },
    /// The extractor ran out of memory; the batch is retried with a smaller batch size.
    BatchShrunk {
        /// The batch size that failed.
        from: usize,
        /// The batch size tried next.
        to: usize,
    },
    /// A phase is finished.
    PhaseFinished {
        /// The phase.
        phase: Phase,
    },
}

/// Receives [`SweepEvent`]s as the sweep runs. Implementations must be cheap: they are
/// called from the pipeline's task.
pub trait SweepObserver: Send + Sync {
    /// Called for every event.
    fn on_event(&self, event: &SweepEvent);
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl SweepObserver for NoProgress {
    fn on_event(&self, _event: &SweepEvent) {}
}
