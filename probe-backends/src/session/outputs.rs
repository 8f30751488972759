//! Files a sweep writes: `report.json`, `report.md`, `accuracy.svg` and, for a `heads` sweep,
//! `heads.svg`. A sweep of several sites writes one `accuracy-<site>.svg` per site and its
//! probes into `probes/<site>/`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use probe_core::sweep::{LayerScore, SweepReport};
use probe_core::{Error, Result};

/// Where [`write_report`] put the files.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Written {
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `accuracy.svg`, or one `accuracy-<site>.svg` per site of a sweep of several; then
    /// `heads.svg` for a `heads` sweep.
    pub plots: Vec<PathBuf>,
    /// The saved probes' folder, when there are probes.
    pub probes: Option<PathBuf>,
}

/// Writes a sweep's files into `out` (created if needed): `report.json`, `report.md`,
/// `accuracy.svg`, `heads.svg` for a `heads` sweep, and the saved probes under `probes/`.
/// Each is written under a temporary name and renamed into place, `report.json` last: a run
/// killed while writing leaves either no file or a whole one, never a cut-short report.
///
/// # Errors
/// [`Error::Io`] when a file cannot be written; a plot that cannot be drawn.
pub fn write_report(report: &SweepReport, out: &Path) -> Result<Written> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out.display(), e))?;
    let markdown = out.join("report.md");
    write_atomically(&markdown, |tmp| {
        std::fs::write(tmp, report.to_markdown()).map_err(|e| Error::io(tmp.display(), e))
    })?;
    // A sweep of several sites: one plot and one folder of probes per site.
    let parts: Vec<(String, SweepReport, PathBuf)> = match report.sites.as_slice() {
        [] => vec![("accuracy.svg".to_owned(), report.clone(), out.join("probes"))],
        sites => sites
            .iter()
            .map(|&s| (format!("accuracy-{s}.svg"), report.for_site(s), out.join("probes").join(s.as_str())))
            .collect(),
    };
    let mut plots = Vec::with_capacity(parts.len());
    for (name, part, dir) in &parts {
        let plot = out.join(name);
        write_atomically(&plot, |tmp| plot_accuracy(part, tmp))?;
        plots.push(plot);
        for p in &part.probes {
            p.save(dir)?;
        }
    }
    if !report.heads.is_empty() {
        let heads = out.join("heads.svg");
        write_atomically(&heads, |tmp| {
            std::fs::write(tmp, render_heads(report)?).map_err(|e| Error::io(tmp.display(), e))
        })?;
        plots.push(heads);
    }
    let probes = (!report.probes.is_empty()).then(|| out.join("probes"));
    let json = out.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::backend("json", e))?;
    write_atomically(&json, |tmp| std::fs::write(tmp, text + "\n").map_err(|e| Error::io(tmp.display(), e)))?;
    Ok(Written { json, markdown, plots, probes })
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

/// The heat map of a `heads` sweep as SVG text: block (rows) × head (columns), each cell
/// coloured by the head's held-out score (white at chance or below, dark blue at 1), the score
/// written in it.
fn render_heads(report: &SweepReport) -> Result<String> {
    let err = |e: String| Error::backend("plotters", e);
    let blocks: Vec<usize> = {
        let mut b: Vec<usize> = report.heads.iter().map(|h| h.layer).collect();
        b.dedup();
        b
    };
    let n_heads = report.heads.iter().filter_map(|h| h.head).max().map_or(1, |h| h + 1);
    let chance = if report.task == "regression" { 0.0 } else { 1.0 / report.classes.len().max(1) as f64 };
    let (cell_w, cell_h) = (40u32, 24u32);
    let width = 80 + cell_w * n_heads as u32;
    let height = 80 + cell_h * blocks.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width.max(320), height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("Probe score per head — {}", report.prompt_set), ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(40)
            .build_cartesian_2d(0..n_heads, 0..blocks.len())
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("head")
            .y_desc("block")
            .x_label_formatter(&|h| h.to_string())
            .y_label_formatter(&|r| blocks.get(*r).map_or(String::new(), usize::to_string))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let cells = report.heads.iter().filter_map(|s| {
            let row = blocks.iter().position(|&b| b == s.layer)?;
            let head = s.head?;
            let t = ((s.score() - chance) / (1.0 - chance)).clamp(0.0, 1.0);
            let t = if t.is_finite() { t } else { 0.0 };
            let shade = |c: f64| (255.0 - t * (255.0 - c)) as u8;
            let colour = RGBColor(shade(8.0), shade(48.0), shade(107.0));
            Some(Rectangle::new([(head, row), (head + 1, row + 1)], colour.filled()))
        });
        chart.draw_series(cells).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    Ok(svg)
}

/// A line of the accuracy plot: its points, colour and legend.
type Line = (Vec<(usize, f64)>, RGBColor, &'static str);

/// The chance line's colour (grey: not the control task's black).
const CHANCE: RGBColor = RGBColor(128, 128, 128);

/// Writes the accuracy plot ([`render_accuracy`]) to `path`.
fn plot_accuracy(report: &SweepReport, path: &Path) -> Result<()> {
    let svg = render_accuracy(report)?;
    std::fs::write(path, svg).map_err(|e| Error::io(path.display(), e))
}

/// The accuracy plot as SVG text: the held-out score per layer (accuracy, or R² for numeric
/// labels) with its bootstrap 95 % interval as a band, the control task's score, the
/// difference-of-means probe, AUC, and the chance level. The layer axis is integer: its ticks
/// are layer numbers.
fn render_accuracy(report: &SweepReport) -> Result<String> {
    let mut svg = String::new();
    draw_accuracy(report, SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area())?;
    Ok(svg)
}

fn draw_accuracy(report: &SweepReport, root: DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<()> {
    let err = |e: String| Error::backend("plotters", e);
    let regression = report.task == "regression";
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let max_layer = report.layers.iter().map(|l| l.layer).max().unwrap_or(1).max(1);
    let min_layer = report.layers.iter().map(|l| l.layer).min().unwrap_or(0).min(max_layer - 1);
    // R² can be negative: show down to the lowest value (not below −1).
    let lowest = report.layers.iter().flat_map(|l| [l.score(), l.ci95[0], l.control()]).filter(|v| v.is_finite());
    let y_min = lowest.fold(0.0f64, f64::min).max(-1.0);
    let what = if regression { "R²" } else { "accuracy" };
    // An integer range: the layer axis's ticks are whole layer numbers (1, 2, 5 or 10… apart).
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Probe {what} per layer — {}", report.prompt_set), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(min_layer..max_layer, y_min..1.0f64)
        .map_err(|e| err(e.to_string()))?;
    let y_desc = format!("held-out score ({}-fold)", report.probe.folds);
    chart.configure_mesh().x_desc("layer").y_desc(y_desc).draw().map_err(|e| err(e.to_string()))?;
    let series = |f: &dyn Fn(&LayerScore) -> Option<f64>| -> Vec<(usize, f64)> {
        report.layers.iter().filter_map(|l| f(l).filter(|v| v.is_finite()).map(|v| (l.layer, v))).collect()
    };
    let band_lo = series(&|l| Some(l.ci95[0].max(y_min)));
    let band_hi = series(&|l| Some(l.ci95[1]));
    if !band_lo.is_empty() && band_lo.len() == band_hi.len() {
        let polygon: Vec<(usize, f64)> = band_hi.iter().copied().chain(band_lo.iter().rev().copied()).collect();
        chart
            .draw_series([Polygon::new(polygon, BLUE.mix(0.15).filled())])
            .map_err(|e| err(e.to_string()))?
            .label("95 % interval")
            .legend(|(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], BLUE.mix(0.15).filled()));
    }
    if !regression {
        let chance = 1.0 / report.classes.len().max(1) as f64;
        chart
            .draw_series(LineSeries::new([(min_layer, chance), (max_layer, chance)], CHANCE.stroke_width(1)))
            .map_err(|e| err(e.to_string()))?
            .label("chance")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], CHANCE.stroke_width(1)));
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
    root.present().map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classification report of `layers` (two classes) with every line of the plot present.
    fn report(layers: std::ops::RangeInclusive<usize>) -> SweepReport {
        let layers: Vec<_> = layers
            .map(|l| {
                let a = 0.5 + 0.4 * (l % 7) as f64 / 7.0;
                serde_json::json!({
                    "layer": l, "accuracy": a, "accuracy_std": 0.02, "ci95": [a - 0.05, a + 0.05], "auc": a,
                    "c": 1.0, "control_accuracy": 0.5, "selectivity": a - 0.5, "dom_accuracy": a - 0.02,
                    "n_train": 80, "n_test": 20,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "generation": false, "generations_generated": 0, "generations_cached": 0, "layers_computed": 0,
            "layers_cached": 0, "batches_computed": 0, "batches_cached": 0, "extract_calls": 0, "entries_written": 0,
        });
        serde_json::from_value(serde_json::json!({
            "model": "m", "revision": "r", "prompt_set": "set", "positions": "last", "classes": ["no", "yes"],
            "n_prompts": 100, "seed": 0, "layers": layers, "summary": summary,
        }))
        .unwrap()
    }

    /// `(y, text)` of every `<text>` element of `svg`.
    fn texts(svg: &str) -> Vec<(f64, String)> {
        svg.split("<text")
            .skip(1)
            .map(|t| {
                let y = t.split(" y=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().parse().unwrap();
                let body = &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()];
                (y, body.trim().to_string())
            })
            .collect()
    }

    /// The tick labels of the layer axis: the numbers on the lowest line of numbers.
    fn layer_ticks(svg: &str) -> Vec<String> {
        let numbers: Vec<_> = texts(svg).into_iter().filter(|(_, t)| t.parse::<f64>().is_ok()).collect();
        let bottom = numbers.iter().map(|&(y, _)| y).fold(f64::MIN, f64::max);
        numbers.into_iter().filter(|&(y, _)| y == bottom).map(|(_, t)| t).collect()
    }

    #[test]
    fn the_layer_axis_has_integer_ticks_only() {
        for (layers, first, last) in [(0..=6, "0", "6"), (1..=3, "1", "3"), (5..=5, "4", "5"), (0..=80, "0", "80")] {
            let svg = render_accuracy(&report(layers.clone())).unwrap();
            let ticks = layer_ticks(&svg);
            assert!(ticks.len() >= 2, "{layers:?}: {ticks:?}");
            for t in &ticks {
                assert!(!t.contains('.') && t.parse::<usize>().is_ok(), "{layers:?}: tick {t:?} in {ticks:?}");
            }
            assert_eq!((ticks[0].as_str(), ticks[ticks.len() - 1].as_str()), (first, last), "{layers:?}");
            // The y axis keeps its fractions.
            assert!(texts(&svg).iter().any(|(_, t)| t == "0.5"), "{layers:?}");
        }
    }

    #[test]
    fn the_chance_legend_entry_has_a_drawn_line() {
        let svg = render_accuracy(&report(0..=6)).unwrap();
        assert!(texts(&svg).iter().any(|(_, t)| t == "chance"));
        let chance = format!("stroke=\"#{:02X}{:02X}{:02X}\"", CHANCE.0, CHANCE.1, CHANCE.2);
        let lines: Vec<_> = svg.split("<polyline").skip(1).filter(|p| p.contains(&chance)).collect();
        // The series across the plot, and the legend's sample beside its label.
        assert_eq!(lines.len(), 2, "{svg}");
        let y_of = |p: &str| -> Vec<String> {
            let pts = p.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
            pts.split_whitespace().map(|xy| xy.split(',').nth(1).unwrap().to_string()).collect()
        };
        for l in &lines {
            let ys = y_of(l);
            assert_eq!(ys.len(), 2, "{l}");
            assert_eq!(ys[0], ys[1], "a horizontal line: {l}");
        }
    }

    #[test]
    fn a_regression_plot_has_no_chance_line() {
        let mut r = report(0..=3);
        r.task = "regression".into();
        r.classes.clear();
        let svg = render_accuracy(&r).unwrap();
        assert!(!texts(&svg).iter().any(|(_, t)| t == "chance"));
    }

    #[test]
    fn plot_accuracy_writes_the_rendered_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accuracy.svg");
        let r = report(0..=6);
        plot_accuracy(&r, &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render_accuracy(&r).unwrap());
    }
}
