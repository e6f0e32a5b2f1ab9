//! Grid files: parse a TOML grid, validate every key and value against the plugins, and expand
//! it into the checked list of trials the rest of the runner trusts.
//!
//! `[grid]` is a cartesian product of axes: `arch`, `seed` and any architecture parameter.
//! An axis that an architecture does not take is ignored for that architecture (a plain net
//! has no `shortcut`), so `arch = ["plain", "resnet"]` with `shortcut = ["A", "B"]` gives one
//! plain trial per depth, not two. `[[include]]` adds single trials: keys it does not give
//! come from single-valued grid axes, then from the plugin's defaults. `[[exclude]]` drops
//! every combination that matches all of its keys.
//!
//! A key `"train.NAME"` (in quotes: unquoted, TOML reads the dots as tables) is a setting of
//! `[train]`, as an axis or an include key: `train.batch_size`, `train.optimizer.weight_decay`,
//! `train.warmup.lr`, … (`train.lr` is short for `train.optimizer.lr`). It applies to every
//! architecture, over the `[train]` table, and the result is checked as `[train]` is.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::arch::{self, Architecture, Params, Value};
use crate::data::DatasetConfig;
use crate::train::TrainConfig;
use crate::{plugins, Error, Result};

/// One planned trial: everything needed to train it, already checked.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    pub experiment: String,
    pub arch: &'static dyn Architecture,
    pub params: Params,
    pub dataset: DatasetConfig,
    pub train: TrainConfig,
    /// The `train.*` settings the grid gave this trial (an axis or include key), by dotted name,
    /// already applied to `train`: for labels and the dry run's columns.
    pub settings: Vec<(String, Value)>,
    /// A hash of the fully resolved configuration: the trial's identity in the store.
    pub key: String,
}

/// The resolved configuration of a trial, as stored (`trials.config_json`) and hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrialConfig {
    pub experiment: String,
    pub arch: String,
    pub params: Params,
    pub dataset: DatasetConfig,
    pub train: TrainConfig,
    pub seed: u64,
}

impl TrialSpec {
    pub fn config(&self) -> TrialConfig {
        TrialConfig {
            experiment: self.experiment.clone(),
            arch: self.arch.name().to_string(),
            params: self.params.clone(),
            dataset: self.dataset.clone(),
            train: self.train.clone(),
            seed: self.train.seed,
        }
    }

    /// Canonical JSON (sorted keys throughout).
    pub fn config_json(&self) -> String {
        // Through `serde_json::Value`, whose maps are sorted, so the text is canonical.
        let v = serde_json::to_value(self.config()).unwrap_or(serde_json::Value::Null);
        v.to_string()
    }

    /// `resnet-20 A` style label for logs.
    pub fn label(&self) -> String {
        let mut s = self.arch.name().to_string();
        for (k, v) in &self.params.0 {
            s.push_str(&format!(" {k}={v}"));
        }
        for (k, v) in &self.settings {
            s.push_str(&format!(" {k}={v}"));
        }
        s.push_str(&format!(" seed={}", self.train.seed));
        s
    }
}

/// A parsed and validated grid file.
#[derive(Debug, Clone)]
pub struct Grid {
    pub path: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub source: String,
    pub trials: Vec<TrialSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrid {
    experiment: RawExperiment,
    dataset: Spanned<DatasetConfig>,
    train: Spanned<TrainConfig>,
    #[serde(default)]
    grid: Option<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
    #[serde(default)]
    include: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
    #[serde(default)]
    exclude: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
}

/// A value with where it was written.
#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    span: Range<usize>,
}

/// Reads, parses and validates a grid file.
pub fn load(path: &Path) -> Result<Grid> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read grid file {}: {e}", path.display())))?;
    parse(path, &source)
}

/// Parses and validates grid text; `path` is used in messages.
pub fn parse(path: &Path, source: &str) -> Result<Grid> {
    let err = |span: Range<usize>, message: String| {
        let (line, column) = line_col(source, span.start);
        Error::Grid {
            path: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let raw: RawGrid = toml::from_str(source).map_err(|e| match unquoted_setting(source) {
        // What TOML reads as tables within tables does not reach the grid with its lines.
        Some((span, key)) => err(
            span,
            format!(
                "write a setting's key in quotes, `\"{key}\" = ...`: unquoted, TOML reads `{key}` as nested tables"
            ),
        ),
        None => err(e.span().unwrap_or(0..0), e.message().to_string()),
    })?;

    let name = raw.experiment.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(err(
            raw.experiment.name.span(),
            "experiment `name` must not be empty".into(),
        ));
    }
    raw.dataset
        .get_ref()
        .validate()
        .map_err(|m| err(raw.dataset.span(), format!("[dataset]: {m}")))?;
    raw.train
        .get_ref()
        .validate()
        .map_err(|m| err(raw.train.span(), format!("[train]: {m}")))?;

    let mut axes: Vec<(At<String>, Vec<At<Value>>)> = Vec::new();
    if let Some(grid) = &raw.grid {
        for (k, v) in grid.get_ref() {
            let values = match v.get_ref() {
                toml::Value::Array(items) => {
                    if items.is_empty() {
                        return Err(err(v.span(), format!("axis `{}` has no values", k.get_ref())));
                    }
                    // Array items carry no spans of their own; point at the array.
                    items
                        .iter()
                        .map(|i| to_value(i, v.span()).map_err(|m| err(v.span(), m)))
                        .collect::<Result<Vec<_>>>()?
                }
                single => vec![to_value(single, v.span()).map_err(|m| err(v.span(), m))?],
            };
            axes.push((
                At {
                    value: k.get_ref().clone(),
                    span: k.span(),
                },
                values,
            ));
        }
        axes.sort_by_key(|(k, _)| k.span.start);
    }
    let tables = |list: &[Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>]| -> Result<Vec<Table>> {
        list.iter()
            .map(|t| {
                let mut out = Table {
                    span: t.span(),
                    entries: Vec::new(),
                };
                for (k, v) in t.get_ref() {
                    let value = to_value(v.get_ref(), v.span()).map_err(|m| err(v.span(), m))?;
                    out.entries.push((
                        At {
                            value: k.get_ref().clone(),
                            span: k.span(),
                        },
                        value,
                    ));
                }
                Ok(out)
            })
            .collect()
    };
    let includes = tables(&raw.include)?;
    let excludes = tables(&raw.exclude)?;

    let ctx = Expand {
        err: &err,
        dataset: raw.dataset.get_ref(),
        train: raw.train.get_ref(),
        experiment: &name,
    };
    let trials = ctx.expand(
        &axes,
        &includes,
        &excludes,
        raw.grid.as_ref().map(|g| g.span()).unwrap_or(0..0),
    )?;
    if trials.is_empty() {
        return Err(err(
            0..0,
            "the grid has no trials: add a [grid] table with an `arch` axis, or [[include]] tables".into(),
        ));
    }
    Ok(Grid {
        path: path.to_path_buf(),
        name,
        description: raw.experiment.description,
        source: source.to_string(),
        trials,
    })
}

impl Grid {
    /// An error about the setting `key` of table `table` (`train`, `dataset`, `grid`), at the
    /// line that writes it (a `"train.KEY"` axis before `[train]`'s own line), else at the
    /// table's, else at the top of the file (a default).
    pub fn setting_error(&self, table: &str, key: &str, message: String) -> Error {
        type Keys = BTreeMap<Spanned<String>, toml::Value>;
        #[derive(Deserialize)]
        struct Tables {
            #[serde(default)]
            train: Option<Spanned<Keys>>,
            #[serde(default)]
            dataset: Option<Spanned<Keys>>,
            #[serde(default)]
            grid: Option<Spanned<Keys>>,
        }
        let tables: Option<Tables> = toml::from_str(&self.source).ok();
        let axis = format!("{table}.{key}");
        let (table, key) = match tables.as_ref().and_then(|t| t.grid.as_ref()) {
            Some(g) if SETTING_TABLES.contains(&table) && g.get_ref().keys().any(|k| *k.get_ref() == axis) => {
                ("grid", axis.as_str())
            }
            _ => (table, key),
        };
        let found = tables.and_then(|t| match table {
            "train" => t.train,
            "dataset" => t.dataset,
            "grid" => t.grid,
            _ => None,
        });
        let span = found.map_or(0..0, |t| {
            t.get_ref()
                .keys()
                .find(|k| k.get_ref() == key)
                .map_or(t.span(), |k| k.span())
        });
        let (line, column) = line_col(&self.source, span.start);
        Error::Grid {
            path: self.path.clone(),
            line,
            column,
            message,
        }
    }
}

struct Table {
    span: Range<usize>,
    entries: Vec<(At<String>, At<Value>)>,
}

/// The tables whose keys a grid may set per trial, as `TABLE.KEY`.
const SETTING_TABLES: [&str; 1] = ["train"];

/// The first line of `[grid]`, `[[include]]` or `[[exclude]]` that writes a setting as an
/// unquoted dotted key (`train.optimizer.lr = ...`), with the key.
fn unquoted_setting(source: &str) -> Option<(Range<usize>, String)> {
    let mut offset = 0;
    let mut in_grid = false;
    for line in source.split_inclusive('\n') {
        let header = line.split('#').next().unwrap_or("").trim();
        if header.starts_with('[') {
            in_grid = ["[grid]", "[[include]]", "[[exclude]]"].contains(&header);
        }
        let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
        let simple = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if in_grid && simple && SETTING_TABLES.iter().any(|t| key.starts_with(&format!("{t}."))) {
            let start = offset + (line.len() - line.trim_start().len());
            return Some((start..start + key.len(), key.to_string()));
        }
        offset += line.len();
    }
    None
}

/// The path in `[train]` of the setting `train.NAME...`: `lr` is short for `optimizer.lr`.
fn setting_path(key: &str) -> Vec<&str> {
    let path: Vec<&str> = key.split('.').skip(1).collect();
    match path.as_slice() {
        ["lr"] => vec!["optimizer", "lr"],
        _ => path,
    }
}

fn toml_of(v: &Value) -> toml::Value {
    match v {
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Int(i) => toml::Value::Integer(*i),
        Value::Float(x) => toml::Value::Float(*x),
        Value::Str(s) => toml::Value::String(s.clone()),
    }
}

/// Sets `path` in a TOML table to `value`, creating the tables on the way.
fn set_path(table: &mut toml::Value, path: &[&str], value: toml::Value) -> std::result::Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("a setting needs a name after `train.`".into());
    };
    let mut here = table;
    for p in parents {
        let toml::Value::Table(t) = here else {
            return Err(format!("`{p}` is inside a value that is not a table"));
        };
        here = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    match here {
        toml::Value::Table(t) => {
            t.insert(last.to_string(), value);
            Ok(())
        }
        other => Err(format!("its parent is a {}, not a table", other.type_str())),
    }
}

fn to_value(v: &toml::Value, span: Range<usize>) -> std::result::Result<At<Value>, String> {
    let value = match v {
        toml::Value::String(s) => Value::Str(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Float(x) if x.is_finite() => Value::Float(*x),
        toml::Value::Float(x) => return Err(format!("expected a finite number, got {x}")),
        other => {
            return Err(format!(
                "expected a string, a number or a boolean, got {}",
                other.type_str()
            ))
        }
    };
    Ok(At { value, span })
}

struct Expand<'a, F: Fn(Range<usize>, String) -> Error> {
    err: &'a F,
    dataset: &'a DatasetConfig,
    train: &'a TrainConfig,
    experiment: &'a str,
}

impl<F: Fn(Range<usize>, String) -> Error> Expand<'_, F> {
    fn expand(
        &self,
        axes: &[(At<String>, Vec<At<Value>>)],
        includes: &[Table],
        excludes: &[Table],
        grid_span: Range<usize>,
    ) -> Result<Vec<TrialSpec>> {
        let err = self.err;
        // Which architectures the grid names, to check that every other axis means something.
        let mut archs: Vec<(&'static dyn Architecture, Range<usize>)> = Vec::new();
        let arch_axis = axes.iter().find(|(k, _)| k.value == "arch");
        for v in arch_axis.map(|(_, vs)| vs.as_slice()).unwrap_or(&[]) {
            archs.push((self.arch(v)?, v.span.clone()));
        }
        if arch_axis.is_none() && !axes.is_empty() {
            return Err(err(
                grid_span,
                "[grid] needs an `arch` axis, e.g. arch = [\"plain\", \"resnet\"]".into(),
            ));
        }
        for (k, _) in axes {
            self.check_key(&k.value, k.span.clone(), archs.iter().map(|(a, _)| *a))?;
        }
        for t in excludes {
            for (k, _) in &t.entries {
                if !axes.iter().any(|(a, _)| a.value == k.value) {
                    return Err(err(
                        k.span.clone(),
                        format!(
                            "[[exclude]] key `{}` is not a [grid] axis; axes: {}",
                            k.value,
                            axes.iter()
                                .map(|(a, _)| a.value.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
        }

        let mut trials: Vec<TrialSpec> = Vec::new();
        let mut push = |t: TrialSpec| {
            if !trials.iter().any(|x| x.key == t.key) {
                trials.push(t);
            }
        };
        // Cartesian product, first axis slowest.
        if !axes.is_empty() {
            let mut idx = vec![0usize; axes.len()];
            'outer: loop {
                let combo: Vec<(&At<String>, &At<Value>)> =
                    axes.iter().zip(&idx).map(|((k, vs), &i)| (k, &vs[i])).collect();
                let excluded = excludes.iter().any(|t| {
                    t.entries
                        .iter()
                        .all(|(k, v)| combo.iter().any(|(ck, cv)| ck.value == k.value && cv.value == v.value))
                });
                if !excluded {
                    push(self.trial(&combo, false)?);
                }
                for d in (0..axes.len()).rev() {
                    idx[d] += 1;
                    if idx[d] < axes[d].1.len() {
                        continue 'outer;
                    }
                    idx[d] = 0;
                }
                break;
            }
        }
        for t in includes {
            push(self.include(t, axes)?);
        }
        Ok(trials)
    }

    /// The trial of an `[[include]]`: its keys over the grid's single-valued axes, which are
    /// defaults only where the include's architecture takes them (a plain net included in a
    /// grid of ResNets with `shortcut = ["A"]` has no shortcut). A default the architecture
    /// refuses is reported at the include, since that is where the trial comes from.
    fn include(&self, t: &Table, axes: &[(At<String>, Vec<At<Value>>)]) -> Result<TrialSpec> {
        let own = |k: &str| t.entries.iter().any(|(ik, _)| ik.value == k);
        let arch = match t.entries.iter().find(|(k, _)| k.value == "arch") {
            Some((_, v)) => Some(v),
            None => axes
                .iter()
                .find(|(k, vs)| k.value == "arch" && vs.len() == 1)
                .map(|(_, vs)| &vs[0]),
        };
        let Some(arch) = arch else {
            return Err((self.err)(
                t.span.clone(),
                "[[include]] needs an `arch` key (or a single-valued arch axis)".into(),
            ));
        };
        let arch = self.arch(arch)?;
        let takes = |k: &str| k == "arch" || k == "seed" || is_setting(k) || arch.params().iter().any(|p| p.name == k);
        let defaults: Vec<(At<String>, At<Value>)> = axes
            .iter()
            .filter(|(k, vs)| vs.len() == 1 && !own(&k.value) && takes(&k.value))
            .map(|(k, vs)| {
                let span = t.span.clone();
                let key = At {
                    value: k.value.clone(),
                    span: span.clone(),
                };
                (
                    key,
                    At {
                        value: vs[0].value.clone(),
                        span,
                    },
                )
            })
            .collect();
        let combo: Vec<(&At<String>, &At<Value>)> = defaults
            .iter()
            .map(|(k, v)| (k, v))
            .chain(t.entries.iter().map(|(k, v)| (k, v)))
            .collect();
        self.trial(&combo, true)
    }

    /// `[train]` with these `train.*` settings applied, each checked where it is written: a
    /// name `[train]` does not have, a value of the wrong type, then the whole table's rules.
    fn with_settings(&self, settings: &[&(&At<String>, &At<Value>)]) -> Result<TrainConfig> {
        let err = self.err;
        let Some((first, _)) = settings.first() else {
            return Ok(self.train.clone());
        };
        let mut table =
            toml::Value::try_from(self.train).map_err(|e| err(first.span.clone(), format!("[train]: {e}")))?;
        let mut train = self.train.clone();
        for (k, v) in settings {
            let at = |m: String| err(k.span.clone(), format!("`{} = {}`: {m}", k.value, v.value));
            set_path(&mut table, &setting_path(&k.value), toml_of(&v.value)).map_err(at)?;
            train = table
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| at(format!("[train] {}", e.message())))?;
        }
        train.validate().map_err(|m| {
            let given: Vec<String> = settings
                .iter()
                .map(|(k, v)| format!("{} = {}", k.value, v.value))
                .collect();
            err(first.span.clone(), format!("[train] with {}: {m}", given.join(", ")))
        })?;
        Ok(train)
    }

    fn arch(&self, v: &At<Value>) -> Result<&'static dyn Architecture> {
        let name = match &v.value {
            Value::Str(s) => s.as_str(),
            other => {
                return Err((self.err)(
                    v.span.clone(),
                    format!("`arch` must be a name, got {other}"),
                ))
            }
        };
        plugins::find(name).ok_or_else(|| {
            (self.err)(
                v.span.clone(),
                format!(
                    "unknown architecture `{name}`; known: {} (see `runner list archs`)",
                    plugins::names().join(", ")
                ),
            )
        })
    }

    /// An axis key must be `arch`, `seed`, or a parameter of at least one of the grid's architectures.
    fn check_key(
        &self,
        key: &str,
        span: Range<usize>,
        archs: impl Iterator<Item = &'static dyn Architecture> + Clone,
    ) -> Result<()> {
        if key == "arch"
            || key == "seed"
            || is_setting(key)
            || archs.clone().any(|a| a.params().iter().any(|p| p.name == key))
        {
            return Ok(());
        }
        if key.starts_with("dataset.") {
            return Err((self.err)(
                span,
                format!(
                    "`{key}`: the settings of [dataset] cannot vary within a grid (one data set is loaded for \
                     all its trials); write a grid file per data set"
                ),
            ));
        }
        let known: Vec<String> = archs
            .map(|a| {
                format!(
                    "{}: {}",
                    a.name(),
                    a.params().iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        Err((self.err)(
            span,
            format!(
                "unknown parameter `{key}`; valid keys are arch, seed, train.NAME (a setting of [train], e.g. train.lr) and the architectures' parameters ({})",
                known.join("; ")
            ),
        ))
    }

    /// One trial from (key, value) pairs; `strict` (an include) refuses keys its architecture lacks.
    fn trial(&self, combo: &[(&At<String>, &At<Value>)], strict: bool) -> Result<TrialSpec> {
        let err = self.err;
        let arch_v = combo.iter().find(|(k, _)| k.value == "arch").map(|(_, v)| *v);
        let arch = match arch_v {
            Some(v) => self.arch(v)?,
            None => return Err(err(0..0, "a trial has no `arch`".into())),
        };
        let settings: Vec<&(&At<String>, &At<Value>)> = combo.iter().filter(|(k, _)| is_setting(&k.value)).collect();
        let mut train = self.with_settings(&settings)?;
        let mut given = BTreeMap::new();
        let mut spans: BTreeMap<String, Range<usize>> = BTreeMap::new();
        for (k, v) in combo {
            match k.value.as_str() {
                "arch" => {}
                setting if is_setting(setting) => {}
                "seed" => match v.value {
                    Value::Int(s) if s >= 0 => train.seed = s as u64,
                    ref other => {
                        return Err(err(
                            v.span.clone(),
                            format!("`seed` must be an integer ≥ 0, got {other}"),
                        ))
                    }
                },
                name => {
                    if arch.params().iter().any(|p| p.name == name) {
                        given.insert(name.to_string(), v.value.clone());
                        spans.insert(name.to_string(), v.span.clone());
                    } else if strict {
                        self.check_key(name, k.span.clone(), std::iter::once(arch))?;
                    }
                }
            }
        }
        let params = arch::resolve(arch, &given).map_err(|e| {
            let span = spans
                .get(&e.param)
                .cloned()
                .or_else(|| arch_v.map(|v| v.span.clone()))
                .unwrap_or(0..0);
            err(span, format!("{} {}: {}", arch.name(), describe(&given), e.message))
        })?;
        let mut spec = TrialSpec {
            experiment: self.experiment.to_string(),
            arch,
            params,
            dataset: self.dataset.clone(),
            train,
            settings: settings
                .iter()
                .map(|(k, v)| (k.value.clone(), v.value.clone()))
                .collect(),
            key: String::new(),
        };
        spec.key = hex::encode(Sha256::digest(spec.config_json().as_bytes()));
        Ok(spec)
    }
}

/// Whether a grid key is a setting of one of [`SETTING_TABLES`] (`train.lr`).
pub fn is_setting(key: &str) -> bool {
    SETTING_TABLES
        .iter()
        .any(|t| key.strip_prefix(t).is_some_and(|rest| rest.starts_with('.')))
}

fn describe(given: &BTreeMap<String, Value>) -> String {
    given
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
