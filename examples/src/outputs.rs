//! Files a sweep writes: `report.json`, `report.md` and `accuracy.svg`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use probe_core::sweep::{LayerScore, SweepReport};
use probe_core::{Error, Result};

/// Where the files went.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) json: PathBuf,
    pub(crate) markdown: PathBuf,
    pub(crate) plot: PathBuf,
    /// The saved probes' folder, when there are probes.
    pub(crate) probes: Option<PathBuf>,
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
    let probes = (!report.probes.is_empty()).then(|| out.join("probes"));
    for (p, dir) in report.probes.iter().zip(std::iter::repeat(&probes).flatten()) {
        p.save(dir)?;
    }
    let json = out.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::backend("json", e))?;
    write_atomically(&json, |tmp| std::fs::write(tmp, text + "\n").map_err(|e| Error::io(tmp.display(), e)))?;
    Ok(Written { json, markdown, plot, probes })
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

/// A line of the accuracy plot: its points, colour and legend.
type Line = (Vec<(f64, f64)>, RGBColor, &'static str);

/// The held-out score per layer (accuracy, or R² for numeric labels) with its bootstrap 95 %
/// interval as a band, the control task's score, the difference-of-means probe, AUC, and the
/// chance level.
fn plot_accuracy(report: &SweepReport, path: &Path) -> Result<()> {
    let err = |e: String| Error::backend("plotters", e);
    let regression = report.task == "regression";
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let max_layer = report.layers.iter().map(|l| l.layer).max().unwrap_or(1).max(1);
    let min_layer = report.layers.iter().map(|l| l.layer).min().unwrap_or(0).min(max_layer - 1);
    // R² can be negative: show down to the lowest value (not below −1).
    let lowest = report.layers.iter().flat_map(|l| [l.score(), l.ci95[0], l.control()]).filter(|v| v.is_finite());
    let y_min = lowest.fold(0.0f64, f64::min).max(-1.0);
    let (x_range, what) = (min_layer as f64..max_layer as f64, if regression { "R²" } else { "accuracy" });
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Probe {what} per layer — {}", report.prompt_set), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x_range, y_min..1.0f64)
        .map_err(|e| err(e.to_string()))?;
    let y_desc = format!("held-out score ({}-fold)", report.probe.folds);
    chart.configure_mesh().x_desc("layer").y_desc(y_desc).draw().map_err(|e| err(e.to_string()))?;
    let series = |f: &dyn Fn(&LayerScore) -> Option<f64>| -> Vec<(f64, f64)> {
        report.layers.iter().filter_map(|l| f(l).filter(|v| v.is_finite()).map(|v| (l.layer as f64, v))).collect()
    };
    let band_lo = series(&|l| Some(l.ci95[0].max(y_min)));
    let band_hi = series(&|l| Some(l.ci95[1]));
    if !band_lo.is_empty() && band_lo.len() == band_hi.len() {
        let polygon: Vec<(f64, f64)> = band_hi.iter().copied().chain(band_lo.iter().rev().copied()).collect();
        chart
            .draw_series([Polygon::new(polygon, BLUE.mix(0.15).filled())])
            .map_err(|e| err(e.to_string()))?
            .label("95 % interval")
            .legend(|(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], BLUE.mix(0.15).filled()));
    }
    if !regression {
        let chance = 1.0 / report.classes.len().max(1) as f64;
        chart
            .draw_series(LineSeries::new([(min_layer as f64, chance), (max_layer as f64, chance)], BLACK.mix(0.3)))
            .map_err(|e| err(e.to_string()))?
            .label("chance");
    }
    let score = series(&|l| Some(l.score()));
    chart
        .draw_series(LineSeries::new(score.clone(), BLUE.stroke_width(2)))
        .map_err(|e| err(e.to_string()))?
        .label(what)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    chart.draw_series(score.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(|e| err(e.to_string()))?;
    let lines: [Line; 3] = [
        (series(&|l| Some(l.control())), BLACK, "control (permuted labels)"),
        (series(&|l| l.dom_accuracy), GREEN, "difference of means"),
        (series(&|l| Some(l.auc)), RED, "ROC AUC"),
    ];
    for (points, color, label) in lines {
        if points.is_empty() {
            continue;
        }
        let width = if label.starts_with("control") { 2 } else { 1 };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(width)))
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
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
