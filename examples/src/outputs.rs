//! Files a sweep writes: `report.json`, `report.md` and `accuracy.svg`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use probe_core::sweep::SweepReport;
use probe_core::{Error, Result};

/// Where the files went.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) json: PathBuf,
    pub(crate) markdown: PathBuf,
    pub(crate) plot: PathBuf,
}

/// Writes the three files into `out` (created if needed). Each is written under a temporary
/// name and renamed into place, `report.json` last: a run killed while writing leaves either
/// no file or a whole one, never a cut-short report.
pub(crate) fn write_all(report: &SweepReport, out: &Path) -> Result<Written> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    let markdown = out.join("report.md");
    write_atomically(&markdown, |tmp| {
        std::fs::write(tmp, report.to_markdown()).map_err(|e| Error::io(tmp.display(), e))
    })?;
    let plot = out.join("accuracy.svg");
    write_atomically(&plot, |tmp| plot_accuracy(report, tmp))?;
    let json = out.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::backend("json", e))?;
    write_atomically(&json, |tmp| std::fs::write(tmp, text + "\n").map_err(|e| Error::io(tmp.display(), e)))?;
    Ok(Written { json, markdown, plot })
}

/// Runs `write` on a temporary file next to `path`, then renames it to `path`.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display(), e))
}

/// Accuracy and AUC per layer, with the chance level.
fn plot_accuracy(report: &SweepReport, path: &Path) -> Result<()> {
    let err = |e: String| Error::backend("plotters", e);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let max_layer = report.layers.iter().map(|l| l.layer).max().unwrap_or(1).max(1);
    let min_layer = report.layers.iter().map(|l| l.layer).min().unwrap_or(0).min(max_layer - 1);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Probe accuracy per layer — {}", report.prompt_set), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(min_layer as f64..max_layer as f64, 0.0f64..1.0f64)
        .map_err(|e| err(e.to_string()))?;
    chart.configure_mesh().x_desc("layer").y_desc("held-out score").draw().map_err(|e| err(e.to_string()))?;
    let chance = 1.0 / report.classes.len().max(1) as f64;
    chart
        .draw_series(LineSeries::new([(min_layer as f64, chance), (max_layer as f64, chance)], BLACK.mix(0.3)))
        .map_err(|e| err(e.to_string()))?
        .label("chance");
    let acc: Vec<(f64, f64)> = report.layers.iter().map(|l| (l.layer as f64, l.accuracy)).collect();
    let auc: Vec<(f64, f64)> =
        report.layers.iter().filter(|l| l.auc.is_finite()).map(|l| (l.layer as f64, l.auc)).collect();
    chart
        .draw_series(LineSeries::new(acc.clone(), BLUE.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?
        .label("accuracy")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart.draw_series(acc.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(|e| err(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(auc, RED.stroke_width(1)))
        .map_err(|e| err(e.to_string()))?
        .label("ROC AUC")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
