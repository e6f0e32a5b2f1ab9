//! Charts for `runner report --plot DIR`: pure functions from summary rows and metric series to
//! a [`Chart`] description ([`charts`]), and from a chart to SVG or PNG bytes ([`render_svg`],
//! [`render_png`]); [`write_charts`] is the only part that touches the disk.
//!
//! Files, one per experiment and kind (`<experiment>` with characters other than letters,
//! digits, `-`, `_` and `.` replaced by `_`):
//! - `<experiment>-curves.svg`: error (%) against iterations in the style of He et al. 2015,
//!   Figure 6: one panel per network family, one colour per depth (the same colour for a depth
//!   in every panel), thin dashed lines for the training error and bold lines for the
//!   validation error. A family is the architecture plus whichever of shortcut, unit type
//!   (original/pre-activation), block and width take several values at one depth, so the
//!   shortcut grid gets three ResNet panels (A, B, C) and the preact grid two (original,
//!   pre-activation; its block changes only with the depth, which the colour already tells).
//! - `<experiment>-depth.svg`: the final error against depth, one colour per family: bold with
//!   dots for the test error (of the validation-best weights), thin dashed for the best
//!   validation error.
//! - `<experiment>-shortcut.svg` (only when the experiment's ResNets use more than one shortcut
//!   option) and `<experiment>-preact.svg` (only when it has both unit types): the test error
//!   grouped by option or unit type on the x axis, one line per depth (and block/width when those
//!   vary at one depth); the best validation error stands in when no trial has a test error yet.
//!
//! Several seeds of one configuration are drawn as separate curves of the same colour, and
//! averaged in the error-against-depth, shortcut and unit charts, where a light band of the
//! test error line's colour (a bar at a single point or on a categorical axis) spans their
//! minimum to maximum. NULL values, pending trials and non-finite
//! numbers are left out; a series with one point is drawn as a dot. A chart with nothing to draw
//! is not written, and the reason is returned for the caller to print.
//!
//! Text is measured and (in PNG) drawn with the embedded DejaVu Sans (`DejaVuSans.ttf`, licence
//! in `DejaVuSans-LICENSE.txt`), so nothing depends on the fonts of the machine; SVG viewers
//! draw the text with their own sans-serif font.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;
use serde::Serialize;

use crate::arch::Value;
use crate::store::{MetricRow, SummaryRow};
use crate::{Error, Result};

/// Every recorded value of each trial, by trial id (see [`crate::store::Store::metrics`]).
pub type Metrics = BTreeMap<i64, Vec<MetricRow>>;

/// What a chart shows, independent of the file format; as JSON (for `runner serve`'s page) the
/// palette index is a CSS colour and the style a name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chart {
    pub experiment: String,
    /// `curves`, `depth`, `shortcut` or `preact`: the file is `<experiment>-<kind>.svg`.
    pub kind: &'static str,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Names for the x positions 0, 1, ... when the x axis is categorical.
    pub categories: Option<Vec<String>>,
    pub panels: Vec<Panel>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// The legend text; lines that repeat a label (more seeds) show it once.
    pub label: String,
    /// Index into the palette.
    #[serde(rename = "color", serialize_with = "css_colour")]
    pub colour: usize,
    pub style: Style,
    /// The trial a training curve is of; `None` for lines over several trials.
    pub trial: Option<i64>,
    /// (x, y): y in percent.
    pub points: Vec<(f64, f64)>,
    /// (x, lowest y, highest y) where the line is a mean of several values (seeds); empty when
    /// no point is.
    pub band: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// Thin and dashed: training error, best validation error.
    Thin,
    /// Bold: validation error (curves), test error.
    Bold,
}

/// Stroke widths in pixels.
pub const THIN_WIDTH: u32 = 1;
pub const BOLD_WIDTH: u32 = 3;

/// Tableau 10: distinguishable in colour and, mostly, in grey.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

pub fn colour(index: usize) -> RGBColor {
    let (r, g, b) = PALETTE[index % PALETTE.len()];
    RGBColor(r, g, b)
}

/// A palette index as `#rrggbb`.
fn css_colour<S: serde::Serializer>(index: &usize, s: S) -> std::result::Result<S::Ok, S::Error> {
    let RGBColor(r, g, b) = colour(*index);
    s.serialize_str(&format!("#{r:02x}{g:02x}{b:02x}"))
}

/// One chart as written: its SVG, and its PNG with `--png`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartFiles {
    pub experiment: String,
    pub kind: &'static str,
    pub title: String,
    pub svg: PathBuf,
    pub png: Option<PathBuf>,
}

/// What [`write_charts`] did.
#[derive(Debug, Default)]
pub struct Written {
    pub charts: Vec<ChartFiles>,
    /// Charts not written, and why.
    pub skipped: Vec<String>,
}

/// Builds every chart for `rows` and writes `DIR/<experiment>-<kind>.svg` (and `.png` with
/// `png`), creating `dir` if needed.
pub fn write_charts(dir: &Path, rows: &[SummaryRow], metrics: &Metrics, png: bool) -> Result<Written> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Usage(format!("cannot create the chart folder {}: {e}", dir.display())))?;
    let (charts, skipped) = charts(rows, metrics);
    let mut written = Written {
        charts: Vec::new(),
        skipped,
    };
    for chart in &charts {
        let stem = file_stem(chart);
        let svg = dir.join(format!("{stem}.svg"));
        std::fs::write(&svg, render_svg(chart)?).map_err(|e| io_error(&svg, e))?;
        let png = if png {
            let path = dir.join(format!("{stem}.png"));
            std::fs::write(&path, render_png(chart)?).map_err(|e| io_error(&path, e))?;
            Some(path)
        } else {
            None
        };
        written.charts.push(ChartFiles {
            experiment: chart.experiment.clone(),
            kind: chart.kind,
            title: chart.title.clone(),
            svg,
            png,
        });
    }
    Ok(written)
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Other(format!("writing {}: {e}", path.display()))
}

/// `<experiment>-<kind>`, safe as a file name.
pub fn file_stem(chart: &Chart) -> String {
    let safe: String = chart
        .experiment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{}", chart.kind)
}

// ---------------------------------------------------------------------------------------------
// From data to charts

/// Every chart that has data, in experiment order, and a note for each one left out.
pub fn charts(rows: &[SummaryRow], metrics: &Metrics) -> (Vec<Chart>, Vec<String>) {
    let mut experiments: Vec<&str> = Vec::new();
    for r in rows {
        if !experiments.contains(&r.experiment.as_str()) {
            experiments.push(&r.experiment);
        }
    }
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for name in experiments {
        let rows: Vec<&SummaryRow> = rows.iter().filter(|r| r.experiment == name).collect();
        let mut keep = |chart: Option<Chart>, kind: &str, why: &str| match chart {
            Some(c) => out.push(c),
            None => skipped.push(format!("{name}-{kind}: skipped, {why}")),
        };
        keep(
            curves(&rows, metrics),
            "curves",
            "no training or validation error recorded yet",
        );
        keep(depth(&rows), "depth", "no trial has a test or validation error yet");
        if varies(&rows, |r| text_param(r, "shortcut")) {
            let c = grouped(
                &rows,
                "shortcut",
                |r| text_param(r, "shortcut"),
                |s| format!("option {s}"),
            );
            keep(c, "shortcut", "no ResNet has a test or validation error yet");
        }
        if varies(&rows, |r| bool_param(r, "preact").map(|p| p.to_string())) {
            let c = grouped(
                &rows,
                "preact",
                |r| bool_param(r, "preact").map(|p| unit(p).to_string()),
                str::to_string,
            );
            keep(c, "preact", "no ResNet has a test or validation error yet");
        }
    }
    (out, skipped)
}

// The charts are the papers' (He et al. 2015 and 2016), about the parameters of the `plain` and
// `resnet` plugins: they read those by name from each trial's parameters. A trial whose
// architecture has no such parameter is left out of what needs it (a net without `depth` from
// the error-against-depth chart), or drawn as one family.

fn int_param(r: &SummaryRow, name: &str) -> Option<i64> {
    match r.param(name) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn bool_param(r: &SummaryRow, name: &str) -> Option<bool> {
    match r.param(name) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    }
}

fn text_param(r: &SummaryRow, name: &str) -> Option<String> {
    match r.param(name) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    }
}

fn unit(preact: bool) -> &'static str {
    if preact {
        "pre-activation"
    } else {
        "original"
    }
}

/// Whether the rows that have this field take more than one value.
fn varies(rows: &[&SummaryRow], field: impl Fn(&SummaryRow) -> Option<String>) -> bool {
    rows.iter().filter_map(|r| field(r)).collect::<BTreeSet<_>>().len() > 1
}

/// The fields besides depth that can tell two networks of one architecture apart: parameters,
/// and the `[train]` settings a grid sweeps (the rows' `settings`).
#[derive(Clone, PartialEq, Eq)]
enum Field {
    Shortcut,
    Preact,
    Block,
    Width,
    Setting(String),
}

impl Field {
    fn text(&self, r: &SummaryRow) -> Option<String> {
        match self {
            Field::Shortcut => text_param(r, "shortcut").map(|s| format!("shortcut {s}")),
            Field::Preact => bool_param(r, "preact").map(|p| unit(p).to_string()),
            Field::Block => text_param(r, "block"),
            Field::Width => int_param(r, "width").map(|w| format!("width {w}")),
            Field::Setting(name) => r
                .settings
                .get(name)
                .map(|v| format!("{} {v}", name.strip_prefix("train.").unwrap_or(name))),
        }
    }
}

const FIELDS: [Field; 4] = [Field::Shortcut, Field::Preact, Field::Block, Field::Width];

/// The fields that take more than one value at some depth. A field that only changes with the
/// depth (the preact grid's block: ResNet-110 basic, ResNet-164 bottleneck; the depth grid's
/// warm-up, ResNet-110's alone) is already told by the depth, and splitting families by it
/// would leave one point per line.
fn varying(rows: &[&SummaryRow]) -> Vec<Field> {
    let settings: BTreeSet<&String> = rows.iter().flat_map(|r| r.settings.0.keys()).collect();
    FIELDS
        .into_iter()
        .chain(settings.into_iter().map(|s| Field::Setting(s.clone())))
        .filter(|f| {
            let mut by_depth: BTreeMap<Option<i64>, BTreeSet<String>> = BTreeMap::new();
            for r in rows {
                if let Some(t) = f.text(r) {
                    by_depth.entry(int_param(r, "depth")).or_default().insert(t);
                }
            }
            by_depth.values().any(|values| values.len() > 1)
        })
        .collect()
}

/// A family's name: the architecture and the values of the varying fields, `resnet, shortcut B`.
fn family(r: &SummaryRow, fields: &[Field]) -> String {
    let mut parts = vec![r.arch.clone()];
    parts.extend(fields.iter().filter_map(|f| f.text(r)));
    parts.join(", ")
}

fn title(rows: &[&SummaryRow], what: &str) -> String {
    let datasets: BTreeSet<&str> = rows.iter().filter_map(|r| r.dataset.as_deref()).collect();
    let experiment = rows.first().map(|r| r.experiment.as_str()).unwrap_or("");
    if datasets.is_empty() {
        format!("{experiment}: {what}")
    } else {
        format!(
            "{experiment} on {}: {what}",
            datasets.into_iter().collect::<Vec<_>>().join(", ")
        )
    }
}

/// `resnet-20`: the architecture and its depth, how curves and tables name a trial.
pub fn depth_name(r: &SummaryRow) -> String {
    match int_param(r, "depth") {
        Some(d) => format!("{}-{d}", r.arch),
        None => r.arch.clone(),
    }
}

/// Values of one split's error as (step, percent), in step order, finite only.
fn error_series(metrics: &[MetricRow], split: &str) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = metrics
        .iter()
        .filter(|m| m.split == split && m.name == "error" && m.value.is_finite())
        .map(|m| (m.step as f64, m.value * 100.0))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The training curves of `rows` (any trials, of one experiment or several) on one chart, as
/// [`charts`] draws an experiment's; `None` when none has an error recorded yet.
pub fn curves(rows: &[&SummaryRow], metrics: &Metrics) -> Option<Chart> {
    let fields = varying(rows);
    let depths: BTreeSet<i64> = rows.iter().filter_map(|r| int_param(r, "depth")).collect();
    let colour_of = |r: &SummaryRow| {
        int_param(r, "depth")
            .and_then(|d| depths.iter().position(|&x| x == d))
            .unwrap_or(0)
    };
    let mut panels: Vec<Panel> = Vec::new();
    for r in rows {
        let Some(m) = metrics.get(&r.trial) else { continue };
        let name = family(r, &fields);
        let label = depth_name(r);
        let mut lines = Vec::new();
        for (split, style) in [("train", Style::Thin), ("val", Style::Bold)] {
            let points = error_series(m, split);
            if !points.is_empty() {
                lines.push(Line {
                    label: label.clone(),
                    colour: colour_of(r),
                    style,
                    trial: Some(r.trial),
                    points,
                    band: Vec::new(),
                });
            }
        }
        if lines.is_empty() {
            continue;
        }
        match panels.iter_mut().find(|p| p.title == name) {
            Some(p) => p.lines.extend(lines),
            None => panels.push(Panel { title: name, lines }),
        }
    }
    if panels.is_empty() {
        return None;
    }
    Some(Chart {
        experiment: rows[0].experiment.clone(),
        kind: "curves",
        title: title(rows, "error during training"),
        x_label: "iterations (dashed: training error, bold: validation error)".into(),
        y_label: "error (%)".into(),
        categories: None,
        panels,
    })
}

/// A line through the mean of the values per x, in x order, with the band of their minimum and
/// maximum when some x has more than one value.
fn mean_line(label: String, colour: usize, style: Style, values: Vec<(f64, f64)>) -> Line {
    let mut by: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (x, y) in values {
        by.entry(x.round() as i64).or_default().push(y);
    }
    let points = by
        .iter()
        .map(|(&x, ys)| (x as f64, ys.iter().sum::<f64>() / ys.len() as f64))
        .collect();
    let band = if by.values().any(|ys| ys.len() > 1) {
        by.iter()
            .map(|(&x, ys)| {
                let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (x as f64, lo, hi)
            })
            .collect()
    } else {
        Vec::new()
    };
    Line {
        label,
        colour,
        style,
        trial: None,
        points,
        band,
    }
}

fn depth(rows: &[&SummaryRow]) -> Option<Chart> {
    let fields = varying(rows);
    let mut families: Vec<String> = Vec::new();
    for r in rows {
        let f = family(r, &fields);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    let mut lines = Vec::new();
    for (i, name) in families.iter().enumerate() {
        let members: Vec<&&SummaryRow> = rows.iter().filter(|r| &family(r, &fields) == name).collect();
        for (what, style, value) in [
            (
                "test",
                Style::Bold,
                (|r: &SummaryRow| r.test_error) as fn(&SummaryRow) -> Option<f64>,
            ),
            ("best val", Style::Thin, |r: &SummaryRow| r.best_val_error),
        ] {
            let points: Vec<(f64, f64)> = members
                .iter()
                .filter_map(|r| Some((int_param(r, "depth")? as f64, value(r)? * 100.0)))
                .filter(|(_, y)| y.is_finite())
                .collect();
            if !points.is_empty() {
                let mut line = mean_line(format!("{name} {what}"), i, style, points);
                // One band per family, the test error's: two overlapping bands read as one.
                if style == Style::Thin {
                    line.band.clear();
                }
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        return None;
    }
    Some(Chart {
        experiment: rows[0].experiment.clone(),
        kind: "depth",
        title: title(rows, "final error against depth"),
        x_label: "depth (weighted layers)".into(),
        y_label: "error (%)".into(),
        categories: None,
        panels: vec![Panel {
            title: if lines.iter().any(|l| !l.band.is_empty()) {
                "bold: test error (mean of the seeds, band: min to max), dashed: best validation error"
            } else {
                "bold: test error, dashed: best validation error"
            }
            .into(),
            lines,
        }],
    })
}

/// Error against the values of one field (categorical x), one line per depth and whatever else
/// varies; ResNets only (plain nets have no shortcut or unit type).
fn grouped(
    rows: &[&SummaryRow],
    kind: &'static str,
    field: impl Fn(&SummaryRow) -> Option<String>,
    category_name: impl Fn(&str) -> String,
) -> Option<Chart> {
    let rows: Vec<&SummaryRow> = rows.iter().copied().filter(|r| field(r).is_some()).collect();
    let categories: Vec<String> = rows
        .iter()
        .filter_map(|r| field(r))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let use_test = rows.iter().any(|r| r.test_error.is_some_and(f64::is_finite));
    let value = |r: &SummaryRow| if use_test { r.test_error } else { r.best_val_error };
    // Everything else that varies, so that two different networks never share a line.
    let others: Vec<Field> = varying(&rows).into_iter().filter(|f| !is_field_of(f, kind)).collect();
    let line_name = |r: &SummaryRow| {
        let mut parts = vec![depth_name(r)];
        parts.extend(others.iter().filter_map(|f| f.text(r)));
        parts.join(", ")
    };
    let mut names: Vec<String> = Vec::new();
    for r in &rows {
        let n = line_name(r);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut lines = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| &line_name(r) == name)
            .filter_map(|r| {
                let x = categories.iter().position(|c| Some(c) == field(r).as_ref())?;
                Some((x as f64, value(r)? * 100.0))
            })
            .filter(|(_, y)| y.is_finite())
            .collect();
        if !points.is_empty() {
            lines.push(mean_line(name.clone(), i, Style::Bold, points));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let what = if use_test {
        "test error"
    } else {
        "best validation error"
    };
    let (by, x_label) = match kind {
        "shortcut" => (
            "shortcut option",
            "shortcut option (A: zero-padding, B: projection where the shape changes, C: projection everywhere)",
        ),
        _ => ("residual unit", "residual unit (He et al. 2016)"),
    };
    Some(Chart {
        experiment: rows[0].experiment.clone(),
        kind,
        title: title(&rows, &format!("{what} by {by}")),
        x_label: x_label.into(),
        y_label: format!("{what} (%)"),
        categories: Some(categories.iter().map(|c| category_name(c)).collect()),
        panels: vec![Panel {
            title: String::new(),
            lines,
        }],
    })
}

/// Whether `f` is what a chart of `kind` has on its x axis.
fn is_field_of(f: &Field, kind: &str) -> bool {
    matches!((f, kind), (Field::Shortcut, "shortcut") | (Field::Preact, "preact"))
}

// ---------------------------------------------------------------------------------------------
// Drawing

static FONT: &[u8] = include_bytes!("DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// plotters looks fonts up by family name in a process-wide table; fill it once.
fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Other("the embedded chart font could not be loaded".into()))
    }
}

/// Panel size in pixels, and the height of the title band.
const PANEL: (u32, u32) = (640, 480);
const TITLE_BAND: u32 = 50;

/// The picture size: panels side by side, at most three in a row, each with room on its right
/// for the legend (outside the plot, so that it never hides a curve).
pub fn size(chart: &Chart) -> (u32, u32) {
    let n = chart.panels.len().max(1) as u32;
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    ((PANEL.0 + legend_width(chart)) * cols, TITLE_BAND + PANEL.1 * rows)
}

const LEGEND_FONT: u32 = 14;

/// Pixels for the widest legend entry: the sample line, its gap, the text, the frame.
fn legend_width(chart: &Chart) -> u32 {
    let font = (FAMILY, LEGEND_FONT).into_font();
    chart
        .panels
        .iter()
        .flat_map(|p| &p.lines)
        .map(|l| {
            font.box_size(&l.label)
                .map(|(w, _)| w)
                .unwrap_or(l.label.chars().count() as u32 * LEGEND_FONT * 6 / 10)
        })
        .max()
        .unwrap_or(0)
        + 60
}

pub fn render_svg(chart: &Chart) -> Result<String> {
    register_font()?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size(chart)).into_drawing_area();
        draw(&root, chart).map_err(|e| draw_error(chart, e))?;
        root.present().map_err(|e| draw_error(chart, e))?;
    }
    Ok(text)
}

pub fn render_png(chart: &Chart) -> Result<Vec<u8>> {
    register_font()?;
    let (w, h) = size(chart);
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        draw(&root, chart).map_err(|e| draw_error(chart, e))?;
        root.present().map_err(|e| draw_error(chart, e))?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| Error::Other(format!("{}: the picture buffer has the wrong size", file_stem(chart))))?;
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| Error::Other(format!("{}: encoding PNG: {e}", file_stem(chart))))?;
    Ok(png.into_inner())
}

fn draw_error(chart: &Chart, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("drawing {}: {e}", file_stem(chart)))
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let body = root.margin(8, 0, 0, 0).titled(&chart.title, (FAMILY, 26))?;
    let n = chart.panels.len().max(1);
    let cols = n.min(3);
    let areas = body.split_evenly((n.div_ceil(cols), cols));
    // One y scale for all panels, so that side-by-side panels read against each other.
    let y_max = chart
        .panels
        .iter()
        .flat_map(|p| &p.lines)
        .flat_map(|l| l.points.iter().map(|p| p.1).chain(l.band.iter().map(|b| b.2)))
        .fold(0.0_f64, f64::max);
    let y_max = (y_max * 1.05).clamp(1.0, 100.0);
    let legend = legend_width(chart);
    for (panel, area) in chart.panels.iter().zip(&areas) {
        draw_panel(area, chart, panel, y_max, legend)?;
    }
    Ok(())
}

fn x_range(chart: &Chart) -> (f64, f64) {
    if let Some(c) = &chart.categories {
        return (-0.5, c.len() as f64 - 0.5);
    }
    let xs = chart
        .panels
        .iter()
        .flat_map(|p| &p.lines)
        .flat_map(|l| &l.points)
        .map(|p| p.0);
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if chart.kind == "curves" {
        // Iterations start at 0, as in the paper's figure.
        (0.0, hi.max(1.0))
    } else {
        let pad = ((hi - lo) * 0.08).max(1.0);
        (lo - pad, hi + pad)
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    panel: &Panel,
    y_max: f64,
    legend: u32,
) -> DrawResult<DB> {
    let (x0, x1) = x_range(chart);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .margin_right(12 + legend)
        .x_label_area_size(50)
        .y_label_area_size(60);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, (FAMILY, 20));
    }
    let mut cc = builder.build_cartesian_2d(x0..x1, 0.0..y_max)?;
    let categories = chart.categories.clone();
    let x_format = move |x: &f64| match &categories {
        Some(c) => {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < c.len() {
                c[i as usize].clone()
            } else {
                String::new()
            }
        }
        None => tick(*x),
    };
    let mut mesh = cc.configure_mesh();
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .axis_desc_style((FAMILY, 16))
        .label_style((FAMILY, 14))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_label_formatter(&x_format)
        .y_label_formatter(&|y| tick(*y));
    if let Some(c) = &chart.categories {
        mesh.x_labels(c.len());
    }
    mesh.draw()?;
    // The bands first, under every line: an area over a continuous axis, a bar with caps at a
    // lone point or on a categorical one.
    for line in &panel.lines {
        let light = colour(line.colour).mix(0.2);
        if line.band.len() > 1 && chart.categories.is_none() {
            let mut outline: Vec<(f64, f64)> = line.band.iter().map(|&(x, _, hi)| (x, hi)).collect();
            outline.extend(line.band.iter().rev().map(|&(x, lo, _)| (x, lo)));
            cc.draw_series(std::iter::once(Polygon::new(outline, light.filled())))?;
        } else {
            let cap = (x1 - x0) / 100.0;
            let bar = colour(line.colour).mix(0.5).stroke_width(2);
            for &(x, lo, hi) in &line.band {
                for segment in [
                    vec![(x, lo), (x, hi)],
                    vec![(x - cap, lo), (x + cap, lo)],
                    vec![(x - cap, hi), (x + cap, hi)],
                ] {
                    cc.draw_series(std::iter::once(PathElement::new(segment, bar)))?;
                }
            }
        }
    }
    let mut legend_entries: Vec<(&str, ShapeStyle, Style)> = Vec::new();
    for line in &panel.lines {
        let c = colour(line.colour);
        let style = match line.style {
            Style::Thin => c.stroke_width(THIN_WIDTH),
            Style::Bold => c.stroke_width(BOLD_WIDTH),
        };
        let points = line.points.clone();
        match line.style {
            Style::Thin => cc.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?,
            Style::Bold => cc.draw_series(LineSeries::new(points.clone(), style))?,
        };
        // Curves have no dots unless a single point would otherwise be invisible.
        if chart.kind != "curves" || points.len() == 1 {
            let radius = if line.style == Style::Bold { 4 } else { 3 };
            cc.draw_series(points.iter().map(|&p| Circle::new(p, radius, c.filled())))?;
        }
        // Only the first line of a label reaches the legend; in the curves a depth's bold line
        // stands for both of its lines.
        let wants_label = chart.kind != "curves" || line.style == Style::Bold || !has_bold(panel, &line.label);
        if wants_label && !legend_entries.iter().any(|e| e.0 == line.label) {
            legend_entries.push((&line.label, style, line.style));
        }
    }
    // The legend goes in the margin right of the plot (plotters' own legend is clipped to the
    // plotting area), aligned with the plot's top.
    let (plot_x, plot_y) = cc.plotting_area().get_base_pixel();
    let (area_x, area_y) = area.get_base_pixel();
    let plot_width = cc.plotting_area().dim_in_pixel().0 as i32;
    let x = plot_x - area_x + plot_width + 12;
    let y = plot_y - area_y;
    let row = LEGEND_FONT as i32 + 8;
    if !legend_entries.is_empty() {
        area.draw(&Rectangle::new(
            [
                (x, y),
                (x + legend as i32 - 8, y + 8 + row * legend_entries.len() as i32),
            ],
            RGBColor(160, 160, 160).stroke_width(1),
        ))?;
    }
    for (i, (label, style, kind)) in legend_entries.into_iter().enumerate() {
        let cy = y + 4 + row * i as i32 + row / 2;
        match kind {
            Style::Bold => area.draw(&PathElement::new(vec![(x + 8, cy), (x + 32, cy)], style))?,
            Style::Thin => {
                area.draw(&PathElement::new(vec![(x + 8, cy), (x + 17, cy)], style))?;
                area.draw(&PathElement::new(vec![(x + 23, cy), (x + 32, cy)], style))?;
            }
        }
        let font = (FAMILY, LEGEND_FONT)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(label.to_string(), (x + 40, cy), font))?;
    }
    Ok(())
}

fn has_bold(panel: &Panel, label: &str) -> bool {
    panel.lines.iter().any(|l| l.label == label && l.style == Style::Bold)
}

/// Axis numbers without float noise: 32000 → "32k", 0.5 → "0.5".
fn tick(x: f64) -> String {
    if x.abs() >= 10_000.0 && (x / 1000.0).fract().abs() < 1e-9 {
        format!("{}k", (x / 1000.0) as i64)
    } else if x.fract().abs() < 1e-9 {
        format!("{}", x as i64)
    } else {
        format!("{x:.1}")
    }
}
