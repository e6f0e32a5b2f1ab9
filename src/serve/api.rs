//! What the dashboard's JSON API answers: the store's rows shaped for the page (progress, time
//! left, labels), charts as data, and curves thinned to a bounded number of points. Pure
//! functions from store rows to serializable values; the handlers in `mod.rs` do the I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::arch::Params;
use crate::report::plot::{self, Chart};
use crate::store::{ExperimentStatus, MetricRow, SummaryRow, TrialDetail};

/// Points per curve unless the request asks otherwise, and the most it may ask for: a trial of
/// a million steps still answers in a few kilobytes.
pub const DEFAULT_POINTS: usize = 500;
pub const MAX_POINTS: usize = 5000;
/// Points per training curve in charts: at most [`CURVE_POINTS`], fewer when many trials share
/// a chart (about [`CHART_BUDGET`] in all), never fewer than [`MIN_CURVE_POINTS`].
pub const CURVE_POINTS: usize = 400;
pub const CHART_BUDGET: usize = 16_000;
pub const MIN_CURVE_POINTS: usize = 40;
/// Trials one compare request may name.
pub const MAX_COMPARE: usize = 50;

#[derive(Debug, Serialize)]
pub struct Experiments {
    pub store: String,
    pub version: String,
    pub experiments: Vec<ExperimentStatus>,
}

/// One trial as the table shows it: its summary row (with `settings`, the `[train]` settings
/// that differ within the experiment, when there are any) and its progress.
#[derive(Debug, Serialize)]
pub struct Trial {
    #[serde(flatten)]
    pub summary: SummaryRow,
    pub label: String,
    pub total_steps: Option<i64>,
    /// Seconds of training left, for a running trial whose pace is known.
    pub eta_s: Option<f64>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub worker: Option<String>,
}

/// `/api/trials/{id}`: the table's row and what only one trial's page shows.
#[derive(Debug, Serialize)]
pub struct TrialPage {
    #[serde(flatten)]
    pub trial: Trial,
    /// The stored configuration as JSON (a string if it is not JSON).
    pub config: serde_json::Value,
    pub heartbeat_at: Option<String>,
    pub attempts: i64,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub split: String,
    pub name: String,
    pub steps: Vec<i64>,
    pub values: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Charts {
    pub charts: Vec<Chart>,
    pub skipped: Vec<String>,
}

/// The rows of one experiment (or of trials to compare) for the table: `settings` are the
/// `[train]` settings that differ among them.
pub fn trials(details: &[TrialDetail]) -> Vec<Trial> {
    let configs: Vec<String> = details.iter().map(|d| d.config_json.clone()).collect();
    details
        .iter()
        .zip(crate::report::varying_settings(&configs))
        .map(|(d, settings)| trial(d, settings))
        .collect()
}

pub fn trial(d: &TrialDetail, settings: Params) -> Trial {
    let s = &d.summary;
    Trial {
        label: plot::depth_name(s),
        total_steps: d.total_steps,
        eta_s: eta_s(&s.status, s.steps, d.total_steps, s.wall_s),
        started_at: d.started_at.clone(),
        finished_at: d.finished_at.clone(),
        worker: d.worker.clone(),
        summary: SummaryRow { settings, ..s.clone() },
    }
}

pub fn trial_page(d: &TrialDetail) -> TrialPage {
    let config =
        serde_json::from_str(&d.config_json).unwrap_or_else(|_| serde_json::Value::String(d.config_json.clone()));
    TrialPage {
        trial: trial(d, Params::default()),
        config,
        heartbeat_at: d.heartbeat_at.clone(),
        attempts: d.attempts,
    }
}

/// Seconds left for a running trial at the pace it has kept so far (training time over steps,
/// evaluations included); `None` when it is not running or nothing is known yet.
pub fn eta_s(status: &str, steps: Option<i64>, total: Option<i64>, wall_s: Option<f64>) -> Option<f64> {
    let (steps, total, wall_s) = (steps?, total?, wall_s?);
    if status != "running" || steps <= 0 || wall_s <= 0.0 || !wall_s.is_finite() {
        return None;
    }
    Some((total - steps).max(0) as f64 * wall_s / steps as f64)
}

/// Every series of a trial's metrics (by split and name, in step order), each thinned to at
/// most `max_points`.
pub fn series(metrics: &[MetricRow], max_points: usize) -> Vec<Series> {
    let mut by: BTreeMap<(&str, &str), Vec<(i64, f64)>> = BTreeMap::new();
    for m in metrics {
        by.entry((&m.split, &m.name)).or_default().push((m.step, m.value));
    }
    by.into_iter()
        .map(|((split, name), mut points)| {
            points.sort_by_key(|p| p.0);
            let points = thin(&points, max_points, |p| p.1);
            Series {
                split: split.to_string(),
                name: name.to_string(),
                steps: points.iter().map(|p| p.0).collect(),
                values: points.iter().map(|p| p.1).collect(),
            }
        })
        .collect()
}

/// At most `max` of `points` (in x order), keeping the first and the last and, in each of
/// `max / 2` equal runs between them, the lowest and the highest `y` in their order: the
/// curve's shape, spikes included, at a bounded size.
pub fn thin<T: Clone>(points: &[T], max: usize, y: impl Fn(&T) -> f64) -> Vec<T> {
    let max = max.max(2);
    if points.len() <= max {
        return points.to_vec();
    }
    let (first, last) = (&points[0], &points[points.len() - 1]);
    let inner = &points[1..points.len() - 1];
    let buckets = (max - 2) / 2;
    let mut out = Vec::with_capacity(max);
    out.push(first.clone());
    for b in 0..buckets {
        let run = &inner[b * inner.len() / buckets..(b + 1) * inner.len() / buckets];
        let (Some(lo), Some(hi)) = (
            (0..run.len()).min_by(|&i, &j| y(&run[i]).total_cmp(&y(&run[j]))),
            (0..run.len()).max_by(|&i, &j| y(&run[i]).total_cmp(&y(&run[j]))),
        ) else {
            continue;
        };
        out.push(run[lo.min(hi)].clone());
        if lo != hi {
            out.push(run[lo.max(hi)].clone());
        }
    }
    out.push(last.clone());
    out
}

/// `3,7,12` → the ids, in ascending order without repeats; a usage message otherwise.
pub fn trial_ids(list: &str) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: i64 = part
            .parse()
            .map_err(|_| format!("`{part}` is not a trial id: give ids as trials=3,7,12"))?;
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err("name the trials to compare: trials=3,7,12".into());
    }
    if ids.len() > MAX_COMPARE {
        return Err(format!(
            "at most {MAX_COMPARE} trials can be compared at once ({} given)",
            ids.len()
        ));
    }
    Ok(ids)
}
