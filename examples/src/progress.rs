//! Progress bars (indicatif) for each phase of a sweep, drawn from the pipeline's events;
//! with `--quiet` only log lines are written.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use probe_core::sweep::{Phase, SweepEvent, SweepObserver};

/// Draws one bar per phase on stderr (unless quiet) and logs every committed batch.
#[derive(Debug)]
pub(crate) struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<Phase, ProgressBar>>,
}

impl Bars {
    /// Bars on stderr, or none when `quiet`.
    pub(crate) fn new(quiet: bool) -> Self {
        let multi = (!quiet).then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self { multi, bars: Mutex::new(HashMap::new()) }
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
                if let Some(bar) = bars.get(phase) {
                    bar.finish();
                }
            }
            _ => {}
        }
    }
}
