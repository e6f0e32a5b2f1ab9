//! Report formatting: pure functions from summary rows ([`crate::store::SummaryRow`]) to text
//! for a terminal ([`table`]), a spreadsheet or pandas ([`csv`]), programs ([`json`]) and
//! documents ([`markdown`]).
//!
//! The human formats show errors in percent and shorten numbers; the machine formats keep every
//! value as stored (errors as fractions, seconds) so that nothing is lost on the way to analysis.

#[cfg(test)]
mod tests;

use crate::store::SummaryRow;

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

const COLUMNS: &[Column] = &[
    col("experiment", false, |r| Some(r.experiment.clone())),
    col("trial", true, |r| Some(r.trial.to_string())),
    col("arch", false, |r| Some(r.arch.clone())),
    col("depth", true, |r| r.depth.map(|d| d.to_string())),
    col("shortcut", false, |r| r.shortcut.clone()),
    col("preact", false, |r| {
        r.preact.map(|p| if p { "yes" } else { "no" }.to_string())
    }),
    col("block", false, |r| r.block.clone()),
    col("params", true, |r| Some(count(r.params))),
    col("status", false, |r| Some(r.status.clone())),
    col("steps", true, |r| r.steps.map(|s| s.to_string())),
    col("best val err %", true, |r| r.best_val_error.map(percent)),
    col("test err %", true, |r| r.test_error.map(percent)),
    col("train loss", true, |r| r.train_loss.map(|l| format!("{l:.4}"))),
    col("wall", true, |r| r.wall_s.map(duration)),
    col("images/s", true, |r| r.images_per_s.map(|v| format!("{v:.0}"))),
];

/// What the human formats print for NULL.
const NULL: &str = "-";

/// An aligned plain-text table, one line per trial, followed by the errors of failed trials.
pub fn table(rows: &[SummaryRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            COLUMNS
                .iter()
                .map(|c| (c.cell)(r).unwrap_or_else(|| NULL.to_string()))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|line| line[i].chars().count())
                .chain([c.title.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |texts: Vec<&str>| -> String {
        let padded: Vec<String> = texts
            .iter()
            .zip(COLUMNS)
            .zip(&widths)
            .map(|((t, c), &w)| {
                if c.numeric {
                    format!("{t:>w$}")
                } else {
                    format!("{t:<w$}")
                }
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(COLUMNS.iter().map(|c| c.title).collect());
    for cells in &cells {
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
    let escape = |s: String| s.replace('|', "\\|").replace(['\n', '\r'], " ");
    let mut out = String::new();
    let titles: Vec<&str> = COLUMNS.iter().map(|c| c.title).collect();
    out.push_str(&format!("| {} |\n", titles.join(" | ")));
    let rules: Vec<&str> = COLUMNS.iter().map(|c| if c.numeric { "---:" } else { "---" }).collect();
    out.push_str(&format!("| {} |\n", rules.join(" | ")));
    for r in rows {
        let cells: Vec<String> = COLUMNS
            .iter()
            .map(|c| escape((c.cell)(r).unwrap_or_else(|| NULL.to_string())))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// The CSV header; the first fifteen columns are the ones the README promises, in this order.
pub const CSV_HEADER: &str = "experiment,trial,arch,depth,shortcut,preact,block,params,status,steps,\
best_val_error,test_error,train_loss,wall_s,images_per_s,mflops,width,seed,dataset,best_step,key,error";

/// CSV (RFC 4180): a header line, then one line per trial. Errors are fractions, times seconds,
/// NULL an empty field.
pub fn csv(rows: &[SummaryRow]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in rows {
        let fields: [Option<String>; 22] = [
            Some(r.experiment.clone()),
            Some(r.trial.to_string()),
            Some(r.arch.clone()),
            r.depth.map(|v| v.to_string()),
            r.shortcut.clone(),
            r.preact.map(|v| v.to_string()),
            r.block.clone(),
            Some(r.params.to_string()),
            Some(r.status.clone()),
            r.steps.map(|v| v.to_string()),
            r.best_val_error.map(|v| v.to_string()),
            r.test_error.map(|v| v.to_string()),
            r.train_loss.map(|v| v.to_string()),
            r.wall_s.map(|v| v.to_string()),
            r.images_per_s.map(|v| v.to_string()),
            Some(r.mflops.to_string()),
            r.width.map(|v| v.to_string()),
            r.seed.map(|v| v.to_string()),
            r.dataset.clone(),
            r.best_step.map(|v| v.to_string()),
            Some(r.key.clone()),
            r.error.clone(),
        ];
        let fields: Vec<String> = fields.iter().map(|f| csv_field(f.as_deref().unwrap_or(""))).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// A JSON array of objects, one per trial, with the field names of [`SummaryRow`]; NULL is `null`.
pub fn json(rows: &[SummaryRow]) -> String {
    // Serializing plain structs of strings and numbers cannot fail (non-finite floats become null).
    let mut out = serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".to_string());
    out.push('\n');
    out
}

fn csv_field(s: &str) -> String {
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
