//! Trials that differ only in their seed, reported as one row: how many finished, and the mean,
//! standard deviation, minimum and maximum of their best validation error and test error, as
//! the papers report repeated runs (He et al. 2015, Table 6: ResNet-110 "6.43 (6.61 ± 0.16)",
//! the best of 5 runs and their mean ± std).
//!
//! Which trials belong together is decided on their stored configuration with its seeds taken
//! out, so that any setting that differs (an architecture parameter, the data set, a training
//! setting) keeps trials apart, and nothing but the seed brings them together.

use std::collections::HashMap;

use crate::store::SummaryRow;

/// One group of trials: the indices of its rows, in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<usize>,
}

/// Mean, sample standard deviation (n − 1; `None` for one value), minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub mean: f64,
    pub std: Option<f64>,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// The statistics of these values; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let values: Vec<f64> = values.into_iter().collect();
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (squares / (n - 1) as f64).sqrt()
        });
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stats { n, mean, std, min, max })
    }

    /// `6.61 ± 0.16` in percent (the values are fractions); `6.61` alone for one value.
    pub fn mean_std_percent(&self) -> String {
        match self.std {
            Some(std) => format!("{:.2} ± {:.2}", self.mean * 100.0, std * 100.0),
            None => format!("{:.2}", self.mean * 100.0),
        }
    }

    /// The papers' form, `best (mean ± std)` in percent: `6.43 (6.61 ± 0.16)`; the value alone
    /// for one run.
    pub fn paper_form(&self) -> String {
        match self.std {
            Some(_) => format!("{:.2} ({})", self.min * 100.0, self.mean_std_percent()),
            None => format!("{:.2}", self.min * 100.0),
        }
    }
}

/// What a group's finished trials measured: the statistics of their best validation errors
/// and of their test errors. Only trials that are `done` count: a running trial's best
/// validation error so far is not a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub done: usize,
    pub best_val_error: Option<Stats>,
    pub test_error: Option<Stats>,
    pub images_per_s: Option<f64>,
}

impl Group {
    /// The rows of the group.
    pub fn rows<'a>(&'a self, rows: &'a [SummaryRow]) -> impl Iterator<Item = &'a SummaryRow> + 'a {
        self.members.iter().map(move |&i| &rows[i])
    }

    /// The first row: what the members share (experiment, architecture, parameters) is read
    /// from it.
    pub fn first<'a>(&self, rows: &'a [SummaryRow]) -> &'a SummaryRow {
        &rows[self.members[0]]
    }

    pub fn summary(&self, rows: &[SummaryRow]) -> Summary {
        let done: Vec<&SummaryRow> = self.rows(rows).filter(|r| r.status == "done").collect();
        Summary {
            done: done.len(),
            best_val_error: Stats::of(done.iter().filter_map(|r| r.best_val_error)),
            test_error: Stats::of(done.iter().filter_map(|r| r.test_error)),
            images_per_s: Stats::of(done.iter().filter_map(|r| r.images_per_s)).map(|s| s.mean),
        }
    }

    /// How many trials are in each status, `3 done` or `2 done, 1 failed` (in the order the
    /// statuses first appear).
    pub fn statuses(&self, rows: &[SummaryRow]) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for r in self.rows(rows) {
            match counts.iter_mut().find(|(s, _)| *s == r.status) {
                Some((_, n)) => *n += 1,
                None => counts.push((&r.status, 1)),
            }
        }
        counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The members' trial ids, `1,4,7`.
    pub fn trial_ids(&self, rows: &[SummaryRow]) -> String {
        self.rows(rows)
            .map(|r| r.trial.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A stored configuration without its seeds (the top-level `seed` and `train.seed`): equal for
/// trials that differ only in their seed. A configuration that is not JSON (it cannot happen
/// in a store this binary wrote) is its own key.
fn without_seeds(config_json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(config_json) {
        Ok(mut v) => {
            if let Some(map) = v.as_object_mut() {
                map.remove("seed");
                if let Some(train) = map.get_mut("train").and_then(|t| t.as_object_mut()) {
                    train.remove("seed");
                }
            }
            v.to_string()
        }
        Err(_) => config_json.to_string(),
    }
}

/// The groups of trials that differ only in their seed, in the order of their first rows;
/// `configs` are the rows' stored configurations, in row order.
pub fn groups(configs: &[String]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for (i, config) in configs.iter().enumerate() {
        let key = without_seeds(config);
        match by_key.get(&key) {
            Some(&g) => out[g].members.push(i),
            None => {
                by_key.insert(key, out.len());
                out.push(Group { members: vec![i] });
            }
        }
    }
    out
}

/// For each row, the index of its group in `groups`.
pub fn group_of_rows(groups: &[Group], rows: usize) -> Vec<usize> {
    let mut of = vec![0; rows];
    for (g, group) in groups.iter().enumerate() {
        for &i in &group.members {
            of[i] = g;
        }
    }
    of
}
