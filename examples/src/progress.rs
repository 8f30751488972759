//! Progress bars (indicatif) for each phase of a sweep, drawn from the pipeline's events;
//! with `--quiet` only log lines are written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use probe_backends::device::MemorySampler;
use probe_core::sweep::{Phase, SweepEvent, SweepObserver};

/// Draws one bar per phase on stderr (unless quiet) and logs every committed batch; with a
/// [`MemorySampler`], samples the memory as each phase starts and finishes.
#[derive(Debug)]
pub(crate) struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<Phase, ProgressBar>>,
    memory: Option<Arc<MemorySampler>>,
}

impl Bars {
    /// Bars on stderr, or none when `quiet`.
    pub(crate) fn new(quiet: bool) -> Self {
        let multi = (!quiet).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi, bars: Mutex::new(HashMap::new()), memory: None }
    }

    /// Samples memory at each phase's start and end.
    pub(crate) fn with_memory(mut self, sampler: Arc<MemorySampler>) -> Self {
        self.memory = Some(sampler);
        self
    }
}

/// The name of a phase in the memory report (`activations` is the extraction phase).
fn memory_phase(phase: Phase) -> &'static str {
    match phase {
        Phase::Activations => "extraction",
        other => other.as_str(),
    }
}

fn unit(phase: Phase) -> &'static str {
    match phase {
        Phase::Generation => "prompts",
        Phase::Activations => "batches",
        _ => "layers",
    }
}

impl SweepObserver for Bars {
    fn on_event(&self, event: &SweepEvent) {
        let mut bars = self.bars.lock().expect("progress lock");
        match event {
            SweepEvent::PhaseStarted { phase, total } => {
                if let Some(m) = &self.memory {
                    m.phase_started(memory_phase(*phase));
                }
                tracing::info!("{}: {total} {}", phase.as_str(), unit(*phase));
                if let Some(multi) = &self.multi {
                    let bar = multi.add(ProgressBar::new(*total as u64));
                    let template = format!("{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {} {{elapsed}}", unit(*phase));
                    bar.set_style(
                        ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "),
                    );
                    bar.set_prefix(phase.as_str());
                    bars.insert(*phase, bar);
                }
            }
            SweepEvent::Progress { phase, done } => {
                if let Some(bar) = bars.get(phase) {
                    bar.set_position(*done as u64);
                }
            }
            SweepEvent::BatchCommitted { start, end, computed, cached } => {
                tracing::info!("batch rows {start}..{end} committed: computed layers {computed:?}, {cached} cached");
            }
            SweepEvent::BatchShrunk { from, to } => {
                tracing::warn!("out of memory at batch size {from}; retrying with {to}");
            }
            SweepEvent::PhaseFinished { phase } => {
                if let Some(m) = &self.memory {
                    m.phase_finished(memory_phase(*phase));
                }
                if let Some(bar) = bars.get(phase) {
                    bar.finish();
                }
            }
            _ => {}
        }
    }
}
