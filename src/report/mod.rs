//! Report formatting: pure functions from summary rows ([`crate::store::SummaryRow`]) to text
//! for a terminal ([`table`]), a spreadsheet or pandas ([`csv`]), programs ([`json`]) and
//! documents ([`markdown`], and [`document`] for a whole report with the paper comparison and
//! chart links). The `*_with` forms add the paper comparison columns of `--paper`
//! ([`paper::compare`] per row); the `seeds_*` forms report trials that differ only in their seed
//! together ([`seeds`]); [`plot`] draws the charts.
//!
//! The human formats show errors in percent and shorten numbers; the machine formats keep every
//! value as stored (errors as fractions, seconds) so that nothing is lost on the way to analysis.
//!
//! No architecture's parameters are named here: the parameter columns of every format are those
//! the architectures of the rows declare ([`param_columns`], from the plugin registry), so the
//! columns depend on the rows.

pub mod paper;
pub mod plot;
pub mod seeds;

#[cfg(test)]
mod paper_tests;
#[cfg(test)]
mod plot_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use crate::arch::{Architecture, Params, Value};
use crate::store::SummaryRow;
use paper::Comparison;
use seeds::Group;

/// The paper comparison of each row, in row order (`None`: the papers have no such network).
pub type PaperColumn<'a> = &'a [Option<Comparison>];

/// The architecture-parameter columns of a report on these trials (architecture name and
/// stored parameters of each): the parameters that `registry` declares for the architectures
/// present, in registry order and then in each plugin's declaration order, a name that several
/// architectures share being one column. A parameter stored with a trial but not declared
/// (an architecture no longer registered, or a parameter its plugin dropped; an old store)
/// still gets a column: after the declared ones of its architecture, in name order, and the
/// unregistered architectures after the registered ones, in name order.
pub fn param_columns<'a>(
    trials: impl IntoIterator<Item = (&'a str, &'a Params)>,
    registry: &[&dyn Architecture],
) -> Vec<String> {
    let mut stored: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (arch, params) in trials {
        stored
            .entry(arch)
            .or_default()
            .extend(params.0.keys().map(String::as_str));
    }
    let declared = |name: &str| -> Vec<&'static str> {
        registry
            .iter()
            .find(|a| a.name() == name)
            .map(|a| a.params().iter().map(|p| p.name).collect())
            .unwrap_or_default()
    };
    let registered = registry.iter().map(|a| a.name()).filter(|a| stored.contains_key(a));
    let unregistered = stored
        .keys()
        .copied()
        .filter(|a| !registry.iter().any(|r| r.name() == *a));
    let mut out: Vec<String> = Vec::new();
    for arch in registered.chain(unregistered) {
        let declared = declared(arch);
        let extra = stored[arch].iter().copied().filter(|k| !declared.contains(k));
        for name in declared.iter().copied().chain(extra) {
            if !out.iter().any(|c| c == name) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// For each stored configuration, the `[train]` settings whose values differ within its
/// experiment (a `train.lr` axis, an include's warm-up; not the `[train]` tables of different
/// experiments), by dotted name (`train.optimizer.lr`), leaving out the seed (the report groups
/// seeds). A value that is not a number, a string or a boolean (the milestones) is its JSON
/// text.
pub fn varying_settings(configs: &[String]) -> Vec<Params> {
    fn walk(prefix: String, v: &serde_json::Value, out: &mut BTreeMap<String, Value>) {
        let value = match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    walk(format!("{prefix}.{k}"), v, out);
                }
                return;
            }
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            other => Value::Str(other.to_string()),
        };
        out.insert(prefix, value);
    }
    // (experiment, settings) of each configuration that has a `[train]` (one that has none, of
    // another program or an old schema, says nothing about what varies).
    let all: Vec<Option<(String, BTreeMap<String, Value>)>> = configs
        .iter()
        .map(|c| {
            let v = serde_json::from_str::<serde_json::Value>(c).unwrap_or_default();
            let mut out = BTreeMap::new();
            walk("train".into(), v.get("train")?, &mut out);
            out.remove("train.seed");
            Some((v.get("experiment").unwrap_or(&serde_json::Value::Null).to_string(), out))
        })
        .collect();
    let names: BTreeSet<&String> = all.iter().flatten().flat_map(|(_, m)| m.keys()).collect();
    let varies = |n: &String| {
        let mut first: BTreeMap<&String, Option<&Value>> = BTreeMap::new();
        all.iter().flatten().any(|(e, m)| {
            let v = m.get(n);
            *first.entry(e).or_insert(v) != v
        })
    };
    let varying: Vec<&String> = names.into_iter().filter(|n| varies(n)).collect();
    all.iter()
        .map(|c| {
            let Some((_, m)) = c else { return Params::default() };
            Params(
                varying
                    .iter()
                    .filter_map(|n| m.get(*n).map(|v| ((*n).clone(), v.clone())))
                    .collect(),
            )
        })
        .collect()
}

/// The setting columns of these rows: every name in their `settings`, in name order.
fn setting_columns(rows: &[SummaryRow]) -> Vec<String> {
    rows.iter()
        .flat_map(|r| r.settings.0.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The parameter and setting titles of the human formats, right-aligned where every value is
/// a number.
fn value_titles(rows: &[SummaryRow], params: &[String], settings: &[String], fixed: &[&str]) -> Vec<(String, bool)> {
    let numeric = |v: Vec<&Value>| v.into_iter().all(Value::is_number);
    params
        .iter()
        .map(|name| {
            let values = rows.iter().filter_map(|r| r.param(name)).collect();
            (param_title(name, fixed), numeric(values))
        })
        .chain(settings.iter().map(|name| {
            let values = rows.iter().filter_map(|r| r.settings.get(name)).collect();
            (name.clone(), numeric(values))
        }))
        .collect()
}

/// The parameter and setting cells of a row in the human formats.
fn value_cells(r: &SummaryRow, params: &[String], settings: &[String]) -> Vec<String> {
    params
        .iter()
        .map(|name| r.param(name).map(human_value).unwrap_or_else(|| NULL.to_string()))
        .chain(settings.iter().map(|name| {
            r.settings
                .get(name)
                .map(human_value)
                .unwrap_or_else(|| NULL.to_string())
        }))
        .collect()
}

/// [`param_columns`] of summary rows, with the registered plugins.
fn row_param_columns(rows: &[SummaryRow]) -> Vec<String> {
    param_columns(
        rows.iter().map(|r| (r.arch.as_str(), &r.arch_params)),
        crate::plugins::ALL,
    )
}

/// The title of a parameter's column: its name, or `arch_params.NAME` when a fixed column of
/// the format already has that name (a plugin parameter called `steps`), so that no title is
/// there twice.
pub fn param_title(name: &str, fixed: &[&str]) -> String {
    if fixed.contains(&name) {
        format!("arch_params.{name}")
    } else {
        name.to_string()
    }
}

/// A column of the human formats: its title, whether it is a number (right-aligned), and the
/// cell text, `None` for NULL.
struct Column {
    title: &'static str,
    numeric: bool,
    cell: fn(&SummaryRow) -> Option<String>,
}

const fn col(title: &'static str, numeric: bool, cell: fn(&SummaryRow) -> Option<String>) -> Column {
    Column { title, numeric, cell }
}

/// The human formats' columns before the architecture's parameters ...
const LEADING: &[Column] = &[
    col("experiment", false, |r| Some(r.experiment.clone())),
    col("trial", true, |r| Some(r.trial.to_string())),
    col("arch", false, |r| Some(r.arch.clone())),
];

/// ... and after them.
const TRAILING: &[Column] = &[
    col("params", true, |r| Some(count(r.params))),
    col("status", false, |r| Some(r.status.clone())),
    col("steps", true, |r| r.steps.map(|s| s.to_string())),
    col("best val err %", true, |r| r.best_val_error.map(percent)),
    col("test err %", true, |r| r.test_error.map(percent)),
    col("train loss", true, |r| r.train_loss.map(|l| format!("{l:.4}"))),
    col("wall", true, |r| r.wall_s.map(duration)),
    col("images/s", true, |r| r.images_per_s.map(|v| format!("{v:.0}"))),
];

/// A parameter value in the human formats: `yes`/`no` for booleans.
fn human_value(v: &Value) -> String {
    match v {
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => other.to_string(),
    }
}

/// What the human formats print for NULL.
const NULL: &str = "-";

/// The columns `--paper` adds to the human formats.
const PAPER_TITLES: [(&str, bool); 3] = [("paper test err %", true), ("diff", true), ("recipe", false)];

/// Titles, right-alignment and cell texts of the human formats, with the paper columns when
/// `paper` is given.
fn human(rows: &[SummaryRow], paper: Option<PaperColumn>) -> (Vec<(String, bool)>, Vec<Vec<String>>) {
    let params = row_param_columns(rows);
    let settings = setting_columns(rows);
    let fixed: Vec<&str> = LEADING.iter().chain(TRAILING).map(|c| c.title).collect();
    let title = |c: &Column| (c.title.to_string(), c.numeric);
    let mut titles: Vec<(String, bool)> = LEADING.iter().map(title).collect();
    titles.extend(value_titles(rows, &params, &settings, &fixed));
    titles.extend(TRAILING.iter().map(title));
    if paper.is_some() {
        titles.extend(PAPER_TITLES.map(|(t, n)| (t.to_string(), n)));
    }
    let text = |c: &Column, r: &SummaryRow| (c.cell)(r).unwrap_or_else(|| NULL.to_string());
    let cells = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut line: Vec<String> = LEADING.iter().map(|c| text(c, r)).collect();
            line.extend(value_cells(r, &params, &settings));
            line.extend(TRAILING.iter().map(|c| text(c, r)));
            if let Some(paper) = paper {
                line.extend(paper_cells(r, paper.get(i).and_then(Option::as_ref)));
            }
            line
        })
        .collect();
    (titles, cells)
}

fn paper_cells(r: &SummaryRow, c: Option<&Comparison>) -> [String; 3] {
    paper_cells_of(r.test_error, c)
}

/// The paper columns beside our test error `ours` (a fraction).
fn paper_cells_of(ours: Option<f64>, c: Option<&Comparison>) -> [String; 3] {
    match c {
        None => [NULL.to_string(), NULL.to_string(), NULL.to_string()],
        Some(c) => [
            format!("{:.2}", c.entry.test_error_pct),
            c.diff_pp(ours)
                .filter(|d| d.is_finite())
                .map(|d| format!("{d:+.2}"))
                .unwrap_or_else(|| NULL.to_string()),
            c.recipe_text(),
        ],
    }
}

/// The human formats' columns of a group of seeds after the architecture's parameters; the
/// errors are the mean ± std of the finished trials, then their minimum and maximum.
const GROUP_TRAILING: [(&str, bool); 10] = [
    ("params", true),
    ("status", false),
    ("n", true),
    ("best val err %", true),
    ("val min", true),
    ("val max", true),
    ("test err %", true),
    ("test min", true),
    ("test max", true),
    ("images/s", true),
];

/// [`human`] with one line per group of seeds. With the paper comparison the test error is in
/// the papers' `best (mean ± std)` form, and `diff` is our best minus the paper's figure.
fn human_groups(
    rows: &[SummaryRow],
    groups: &[Group],
    paper: Option<PaperColumn>,
) -> (Vec<(String, bool)>, Vec<Vec<String>>) {
    let params = row_param_columns(rows);
    let settings = setting_columns(rows);
    let leading = [("experiment", false), ("trials", false), ("arch", false)];
    let fixed: Vec<&str> = leading.iter().chain(&GROUP_TRAILING).map(|(t, _)| *t).collect();
    let mut titles: Vec<(String, bool)> = leading.iter().map(|(t, n)| (t.to_string(), *n)).collect();
    titles.extend(value_titles(rows, &params, &settings, &fixed));
    titles.extend(GROUP_TRAILING.iter().map(|(t, n)| {
        let title = if *t == "test err %" && paper.is_some() {
            "test err % best (mean ± std)"
        } else {
            t
        };
        (title.to_string(), *n)
    }));
    if paper.is_some() {
        titles.extend(PAPER_TITLES.map(|(t, n)| (t.to_string(), n)));
    }
    let null = || NULL.to_string();
    let pct = |v: Option<f64>| v.map(percent).unwrap_or_else(null);
    let cells = groups
        .iter()
        .map(|g| {
            let first = g.first(rows);
            let s = g.summary(rows);
            let mut line = vec![first.experiment.clone(), g.trial_ids(rows), first.arch.clone()];
            line.extend(value_cells(first, &params, &settings));
            let val = s.best_val_error;
            let test = s.test_error;
            let test_text = match paper {
                Some(_) => test.map(|t| t.paper_form()),
                None => test.map(|t| t.mean_std_percent()),
            };
            line.extend([
                count(first.params),
                g.statuses(rows),
                s.done.to_string(),
                val.map(|v| v.mean_std_percent()).unwrap_or_else(null),
                pct(val.map(|v| v.min)),
                pct(val.map(|v| v.max)),
                test_text.unwrap_or_else(null),
                pct(test.map(|v| v.min)),
                pct(test.map(|v| v.max)),
                s.images_per_s.map(|v| format!("{v:.0}")).unwrap_or_else(null),
            ]);
            if let Some(paper) = paper {
                let c = paper.get(g.members[0]).and_then(Option::as_ref);
                line.extend(paper_cells_of(test.map(|t| t.min), c));
            }
            line
        })
        .collect();
    (titles, cells)
}

/// An aligned plain-text table, one line per trial, followed by the errors of failed trials.
pub fn table(rows: &[SummaryRow]) -> String {
    table_with(rows, None)
}

/// [`table`] with the paper comparison columns.
pub fn table_with(rows: &[SummaryRow], paper: Option<PaperColumn>) -> String {
    let (titles, cells) = human(rows, paper);
    aligned(rows, &titles, &cells)
}

/// [`table_with`] with one line per group of trials that differ only in their seed
/// ([`seeds`]): the number finished and the mean ± std, minimum and maximum of their errors.
pub fn seeds_table(rows: &[SummaryRow], groups: &[Group], paper: Option<PaperColumn>) -> String {
    let (titles, cells) = human_groups(rows, groups, paper);
    aligned(rows, &titles, &cells)
}

/// The titles and cells as aligned columns, then the errors of the failed trials among `rows`.
fn aligned(rows: &[SummaryRow], titles: &[(String, bool)], cells: &[Vec<String>]) -> String {
    let widths: Vec<usize> = titles
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            cells
                .iter()
                .map(|line| line[i].chars().count())
                .chain([title.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |texts: Vec<&str>| -> String {
        let padded: Vec<String> = texts
            .iter()
            .zip(titles)
            .zip(&widths)
            .map(|((t, (_, numeric)), &w)| {
                if *numeric {
                    format!("{t:>w$}")
                } else {
                    format!("{t:<w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(titles.iter().map(|(t, _)| t.as_str()).collect());
    for cells in cells {
        out.push_str(&line(cells.iter().map(String::as_str).collect()));
    }
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| (r, e)))
        .map(|(r, e)| format!("trial {} failed: {}", r.trial, first_line(e, 160)))
        .collect();
    if !failures.is_empty() {
        out.push('\n');
        for f in failures {
            out.push_str(&f);
            out.push('\n');
        }
    }
    out
}

/// A markdown table (GitHub flavour), errors in percent.
pub fn markdown(rows: &[SummaryRow]) -> String {
    markdown_with(rows, None)
}

/// [`markdown`] with the paper comparison columns.
pub fn markdown_with(rows: &[SummaryRow], paper: Option<PaperColumn>) -> String {
    let (titles, cells) = human(rows, paper);
    markdown_table(&titles, cells)
}

/// [`markdown_with`] with one line per group of seeds, as [`seeds_table`].
pub fn seeds_markdown(rows: &[SummaryRow], groups: &[Group], paper: Option<PaperColumn>) -> String {
    let (titles, cells) = human_groups(rows, groups, paper);
    markdown_table(&titles, cells)
}

fn markdown_table(titles: &[(String, bool)], cells: Vec<Vec<String>>) -> String {
    let mut out = String::new();
    let names: Vec<&str> = titles.iter().map(|(t, _)| t.as_str()).collect();
    out.push_str(&format!("| {} |\n", names.join(" | ")));
    let rules: Vec<&str> = titles.iter().map(|(_, n)| if *n { "---:" } else { "---" }).collect();
    out.push_str(&format!("| {} |\n", rules.join(" | ")));
    for line in cells {
        let line: Vec<String> = line.into_iter().map(md_escape).collect();
        out.push_str(&format!("| {} |\n", line.join(" | ")));
    }
    out
}

fn md_escape(s: String) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// A chart to link from the markdown document.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartLink {
    pub experiment: String,
    pub title: String,
    /// The picture to show (the PNG when there is one: it looks the same everywhere).
    pub image: String,
    /// The SVG, linked under the picture when the picture is a PNG.
    pub svg: Option<String>,
}

/// A self-contained markdown report: title, experiments and data sets, the table (with the
/// paper columns and a note on them when `paper` is given), the failed trials' errors, and
/// image links to the charts.
pub fn document(
    rows: &[SummaryRow],
    groups: Option<&[Group]>,
    paper: Option<PaperColumn>,
    charts: &[ChartLink],
) -> String {
    let mut experiments: Vec<&str> = Vec::new();
    for r in rows {
        if !experiments.contains(&r.experiment.as_str()) {
            experiments.push(&r.experiment);
        }
    }
    let mut out = format!(
        "# runner report: {}\n\n",
        if experiments.is_empty() {
            "no trials".to_string()
        } else {
            experiments.join(", ")
        }
    );
    for e in &experiments {
        let of: Vec<&SummaryRow> = rows.iter().filter(|r| r.experiment == *e).collect();
        let datasets: BTreeSet<&str> = of.iter().filter_map(|r| r.dataset.as_deref()).collect();
        let done = of.iter().filter(|r| r.status == "done").count();
        out.push_str(&format!(
            "- **{}**: dataset {}; {} trials, {done} done\n",
            md_escape(e.to_string()),
            if datasets.is_empty() {
                NULL.to_string()
            } else {
                datasets.into_iter().collect::<Vec<_>>().join(", ")
            },
            of.len()
        ));
    }
    out.push('\n');
    out.push_str(&match groups {
        Some(groups) => seeds_markdown(rows, groups, paper),
        None => markdown_with(rows, paper),
    });
    if let Some(paper) = paper {
        let matched = paper.iter().filter(|c| c.is_some()).count();
        let sources: BTreeSet<&str> = paper.iter().flatten().map(|c| c.entry.source.citation()).collect();
        out.push_str(&format!(
            "\n*Paper comparison*: {matched} of {} trials are networks the papers report on CIFAR-10{}. \
             `paper test err %` is the published test error, `diff` ours minus the paper's in percentage \
             points, `recipe` how our data and training differ from the papers' (CIFAR-10, 64k iterations, \
             batch 128, lr 0.1 ÷10 at 32k and 48k, momentum 0.9, weight decay 1e-4, pad-crop:4 + hflip, \
             per-pixel mean); a difference there makes the numbers not comparable.\n",
            rows.len(),
            if sources.is_empty() {
                String::new()
            } else {
                format!(" ({})", sources.into_iter().collect::<Vec<_>>().join("; "))
            }
        ));
    }
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| (r, e)))
        .map(|(r, e)| format!("- trial {} failed: {}", r.trial, md_escape(first_line(e, 160))))
        .collect();
    if !failures.is_empty() {
        out.push_str("\n## Failed trials\n\n");
        out.push_str(&failures.join("\n"));
        out.push('\n');
    }
    if !charts.is_empty() {
        out.push_str("\n## Charts\n");
        for c in charts {
            out.push_str(&format!("\n![{}]({})\n", md_escape(c.title.clone()), link(&c.image)));
            if let Some(svg) = &c.svg {
                out.push_str(&format!("\n[SVG]({})\n", link(svg)));
            }
        }
    }
    out
}

/// A path as a markdown link target: spaces and parentheses would end it early.
fn link(path: &str) -> String {
    if path.contains([' ', '(', ')']) {
        format!("<{path}>")
    } else {
        path.to_string()
    }
}

/// The CSV columns before the architecture's parameters ...
pub const CSV_LEADING: [&str; 3] = ["experiment", "trial", "arch"];
/// ... and after them.
pub const CSV_TRAILING: [&str; 14] = [
    "params",
    "status",
    "steps",
    "best_val_error",
    "test_error",
    "train_loss",
    "wall_s",
    "images_per_s",
    "mflops",
    "seed",
    "dataset",
    "best_step",
    "key",
    "error",
];

/// The CSV header of these rows: [`CSV_LEADING`], one column per architecture parameter
/// ([`param_columns`]: so the header depends on the architectures in the rows), then
/// [`CSV_TRAILING`].
pub fn csv_header(rows: &[SummaryRow]) -> String {
    csv_titles(&row_param_columns(rows)).join(",")
}

fn csv_titles(params: &[String]) -> Vec<String> {
    let fixed: Vec<&str> = CSV_LEADING.iter().chain(&CSV_TRAILING).copied().collect();
    CSV_LEADING
        .iter()
        .map(|s| s.to_string())
        .chain(params.iter().map(|p| csv_field(&param_title(p, &fixed))))
        .chain(CSV_TRAILING.iter().map(|s| s.to_string()))
        .collect()
}

/// CSV (RFC 4180): a header line ([`csv_header`]), then one line per trial. Errors are
/// fractions, times seconds, NULL (and a parameter the trial's architecture does not have) an
/// empty field.
pub fn csv(rows: &[SummaryRow]) -> String {
    csv_with(rows, None)
}

/// [`csv`] with the paper comparison columns ([`PAPER_FIELDS`]) after the others.
pub fn csv_with(rows: &[SummaryRow], paper: Option<PaperColumn>) -> String {
    csv_of(rows, paper, None)
}

/// [`csv_with`] with, on each trial's line, the statistics of its group of seeds
/// ([`SEED_FIELDS`], after the others): both levels in one file.
pub fn seeds_csv(rows: &[SummaryRow], groups: &[Group], paper: Option<PaperColumn>) -> String {
    csv_of(rows, paper, Some(groups))
}

fn csv_of(rows: &[SummaryRow], paper: Option<PaperColumn>, groups: Option<&[Group]>) -> String {
    let params = row_param_columns(rows);
    let settings = setting_columns(rows);
    let mut titles = csv_titles(&params);
    // The settings after the parameters.
    let at = CSV_LEADING.len() + params.len();
    titles.splice(at..at, settings.iter().map(|s| csv_field(s)));
    let mut out = titles.join(",");
    if paper.is_some() {
        out.push(',');
        out.push_str(&PAPER_FIELDS.join(","));
    }
    if groups.is_some() {
        out.push(',');
        out.push_str(&SEED_FIELDS.join(","));
    }
    out.push('\n');
    let group_of = groups.map(|g| (g, seeds::group_of_rows(g, rows.len())));
    for (i, r) in rows.iter().enumerate() {
        let [experiment, trial, arch, rest @ ..] = csv_row(r);
        let mut fields: Vec<Option<String>> = vec![experiment, trial, arch];
        fields.extend(params.iter().map(|p| r.param(p).map(Value::to_string)));
        fields.extend(settings.iter().map(|p| r.settings.get(p).map(Value::to_string)));
        fields.extend(rest);
        if let Some(paper) = paper {
            fields.extend(paper_fields(r, paper.get(i).and_then(Option::as_ref)));
        }
        if let Some((groups, of)) = &group_of {
            fields.extend(seed_fields(rows, &groups[of[i]]));
        }
        let fields: Vec<String> = fields.iter().map(|f| csv_field(f.as_deref().unwrap_or(""))).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// The fixed fields of a row, in the order of [`CSV_LEADING`] and [`CSV_TRAILING`].
fn csv_row(r: &SummaryRow) -> [Option<String>; 17] {
    [
        Some(r.experiment.clone()),
        Some(r.trial.to_string()),
        Some(r.arch.clone()),
        Some(r.params.to_string()),
        Some(r.status.clone()),
        r.steps.map(|v| v.to_string()),
        r.best_val_error.map(|v| v.to_string()),
        r.test_error.map(|v| v.to_string()),
        r.train_loss.map(|v| v.to_string()),
        r.wall_s.map(|v| v.to_string()),
        r.images_per_s.map(|v| v.to_string()),
        Some(r.mflops.to_string()),
        r.seed.map(|v| v.to_string()),
        r.dataset.clone(),
        r.best_step.map(|v| v.to_string()),
        Some(r.key.clone()),
        r.error.clone(),
    ]
}

/// The columns of a trial's group of seeds in CSV: the group's first trial (the same on every
/// line of the group), how many of its trials are done, and the mean, sample standard
/// deviation, minimum and maximum of their best validation and test errors (fractions).
pub const SEED_FIELDS: [&str; 10] = [
    "seed_group",
    "seed_group_done",
    "best_val_error_mean",
    "best_val_error_std",
    "best_val_error_min",
    "best_val_error_max",
    "test_error_mean",
    "test_error_std",
    "test_error_min",
    "test_error_max",
];

fn seed_fields(rows: &[SummaryRow], g: &Group) -> Vec<Option<String>> {
    let s = g.summary(rows);
    let mut fields = vec![Some(g.first(rows).trial.to_string()), Some(s.done.to_string())];
    for t in [s.best_val_error, s.test_error] {
        fields.extend([
            t.map(|t| t.mean.to_string()),
            t.and_then(|t| t.std).map(|v| v.to_string()),
            t.map(|t| t.min.to_string()),
            t.map(|t| t.max.to_string()),
        ]);
    }
    fields
}

/// The columns `--paper` adds to CSV and JSON; errors are fractions like the rest.
pub const PAPER_FIELDS: [&str; 4] = ["paper_test_error", "paper_diff", "paper_source", "recipe"];

fn paper_fields(r: &SummaryRow, c: Option<&Comparison>) -> [Option<String>; 4] {
    match c {
        None => [None, None, None, None],
        Some(c) => [
            Some((c.entry.test_error_pct / 100.0).to_string()),
            c.diff_pp(r.test_error).map(|d| (d / 100.0).to_string()),
            Some(c.entry.source.citation().to_string()),
            Some(c.recipe_text()),
        ],
    }
}

/// [`json`] with the paper comparison fields ([`PAPER_FIELDS`]) in each object.
pub fn json_with(rows: &[SummaryRow], paper: Option<PaperColumn>) -> String {
    json_of(rows, paper, None)
}

/// [`json_with`] with, in each trial's object, `seed_group`: its group of seeds (`trials`, the
/// ids; `done`; `best_val_error` and `test_error` as `{mean, std, min, max}` or `null`).
pub fn seeds_json(rows: &[SummaryRow], groups: &[Group], paper: Option<PaperColumn>) -> String {
    json_of(rows, paper, Some(groups))
}

fn json_of(rows: &[SummaryRow], paper: Option<PaperColumn>, groups: Option<&[Group]>) -> String {
    let params = row_param_columns(rows);
    let group_of = groups.map(|g| (g, seeds::group_of_rows(g, rows.len())));
    let items: Vec<serde_json::Value> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // Serializing plain structs of strings and numbers cannot fail (non-finite floats
            // become null).
            let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
            let serde_json::Value::Object(map) = &mut v else {
                return v;
            };
            // Every object has the same parameter keys, null where its architecture has none.
            if let Some(serde_json::Value::Object(p)) = map.get_mut("arch_params") {
                for name in &params {
                    p.entry(name.clone()).or_insert(serde_json::Value::Null);
                }
            }
            if let Some(paper) = paper {
                let c = paper.get(i).and_then(Option::as_ref);
                map.insert(
                    "paper_test_error".into(),
                    c.map(|c| c.entry.test_error_pct / 100.0).into(),
                );
                map.insert(
                    "paper_diff".into(),
                    c.and_then(|c| c.diff_pp(r.test_error)).map(|d| d / 100.0).into(),
                );
                map.insert("paper_source".into(), c.map(|c| c.entry.source.citation()).into());
                map.insert(
                    "recipe".into(),
                    c.map(|c| serde_json::Value::from(c.recipe.clone())).unwrap_or_default(),
                );
            }
            if let Some((groups, of)) = &group_of {
                map.insert("seed_group".into(), seed_object(rows, &groups[of[i]]));
            }
            v
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".to_string());
    out.push('\n');
    out
}

fn seed_object(rows: &[SummaryRow], g: &Group) -> serde_json::Value {
    let s = g.summary(rows);
    let stats = |t: Option<seeds::Stats>| {
        t.map(|t| serde_json::json!({ "mean": t.mean, "std": t.std, "min": t.min, "max": t.max }))
            .unwrap_or_default()
    };
    serde_json::json!({
        "trials": g.rows(rows).map(|r| r.trial).collect::<Vec<_>>(),
        "done": s.done,
        "best_val_error": stats(s.best_val_error),
        "test_error": stats(s.test_error),
    })
}

/// A JSON array of objects, one per trial, with the field names of [`SummaryRow`]; NULL is
/// `null`. The architecture parameters are the object `arch_params`, with a key for every
/// parameter column of the report ([`param_columns`]), `null` where the trial's architecture
/// has no such parameter.
pub fn json(rows: &[SummaryRow]) -> String {
    json_with(rows, None)
}

/// One CSV field, quoted when it has to be (RFC 4180).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// An error fraction in percent: 0.0875 → "8.75".
fn percent(fraction: f64) -> String {
    format!("{:.2}", fraction * 100.0)
}

/// A parameter count the way papers print it: 269722 → "0.27M", 9856 → "9856".
fn count(n: i64) -> String {
    if n.abs() < 10_000 {
        n.to_string()
    } else {
        format!("{:.2}M", n as f64 / 1e6)
    }
}

/// Seconds as `45s`, `3m20s` or `2h05m`.
fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return NULL.to_string();
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The first line of `text`, cut to `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}...", line.chars().take(max).collect::<String>())
    } else if text.lines().nth(1).is_some() {
        format!("{line} ...")
    } else {
        line.to_string()
    }
}
