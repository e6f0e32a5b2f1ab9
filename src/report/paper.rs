//! The papers' CIFAR-10 results as data, and the policy that decides which of our trials they
//! can be compared with (`runner report --paper`).
//!
//! Sources (test error, %, CIFAR-10):
//! - He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition* (arXiv 1512.03385),
//!   Table 6: ResNet-20/32/44/56/110/1202 with option-A shortcuts and basic blocks. The 110-layer
//!   figure is the best of 5 runs (their mean is 6.61, the number the 2016 paper quotes).
//! - He, Zhang, Ren, Sun, *Identity Mappings in Deep Residual Networks* (arXiv 1603.05027),
//!   Table 3: original vs full pre-activation units; ResNet-110 has basic blocks, ResNet-164 and
//!   ResNet-1001 bottleneck blocks.
//!
//! A trial matches an entry when the *network* is the paper's: CIFAR-10-shaped ResNet with the
//! entry's depth, block, unit type, first-stage width 16, and (for the 2015 table) shortcut A.
//! The 2015 table is tried first, so an original ResNet-110 with option A compares with 6.43.
//! How it was *trained* does not decide the match: every difference from the papers' recipe
//! (another data set, fewer iterations, another batch size, schedule, augmentation...) is listed
//! in [`Comparison::recipe`], so that a quick run on synthetic data still shows where it stands
//! and says why the numbers are not comparable.

use serde::Serialize;

use crate::arch::Value;
use crate::data::{DatasetKind, Normalize};
use crate::grid::TrialConfig;
use crate::plugins;
use crate::train::config::{OptimizerConfig, Schedule};

/// Which table an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Source {
    /// He et al. 2015, *Deep Residual Learning for Image Recognition*, Table 6.
    He2015Table6,
    /// He et al. 2016, *Identity Mappings in Deep Residual Networks*, Table 3.
    He2016Table3,
}

impl Source {
    pub fn citation(self) -> &'static str {
        match self {
            Source::He2015Table6 => "He et al. 2015, Deep Residual Learning, Table 6",
            Source::He2016Table3 => "He et al. 2016, Identity Mappings, Table 3",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Source::He2015Table6 => "He2015 T6",
            Source::He2016Table3 => "He2016 T3",
        }
    }
}

/// One published result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Entry {
    pub source: Source,
    pub depth: i64,
    /// `basic` or `bottleneck`, as the resnet plugin names them.
    pub block: &'static str,
    pub preact: bool,
    /// The shortcut option the entry requires, if the table fixes one.
    pub shortcut: Option<&'static str>,
    /// Test error on CIFAR-10, percent.
    pub test_error_pct: f64,
}

const fn entry(
    source: Source,
    depth: i64,
    block: &'static str,
    preact: bool,
    shortcut: Option<&'static str>,
    test_error_pct: f64,
) -> Entry {
    Entry {
        source,
        depth,
        block,
        preact,
        shortcut,
        test_error_pct,
    }
}

use Source::{He2015Table6 as T6, He2016Table3 as T3};

/// The papers' numbers, in matching order (first match wins).
pub const ENTRIES: &[Entry] = &[
    entry(T6, 20, "basic", false, Some("A"), 8.75),
    entry(T6, 32, "basic", false, Some("A"), 7.51),
    entry(T6, 44, "basic", false, Some("A"), 7.17),
    entry(T6, 56, "basic", false, Some("A"), 6.97),
    entry(T6, 110, "basic", false, Some("A"), 6.43),
    entry(T6, 1202, "basic", false, Some("A"), 7.93),
    entry(T3, 110, "basic", false, None, 6.61),
    entry(T3, 164, "bottleneck", false, None, 5.93),
    entry(T3, 1001, "bottleneck", false, None, 7.61),
    entry(T3, 110, "basic", true, None, 6.37),
    entry(T3, 164, "bottleneck", true, None, 5.46),
    entry(T3, 1001, "bottleneck", true, None, 4.92),
];

/// The papers' CIFAR-10 recipe (2015 §4.2, reused in 2016).
pub const PAPER_ITERATIONS: u64 = 64_000;
pub const PAPER_BATCH: usize = 128;
pub const PAPER_MILESTONES: [u64; 2] = [32_000, 48_000];

/// A trial set against a paper entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub entry: Entry,
    /// Where our recipe differs from the paper's, in words; empty when it is the paper's.
    pub recipe: Vec<String>,
}

impl Comparison {
    /// Ours − paper in percentage points, when the trial has a test error (a fraction).
    pub fn diff_pp(&self, test_error: Option<f64>) -> Option<f64> {
        test_error.map(|e| e * 100.0 - self.entry.test_error_pct)
    }

    /// The recipe column: `paper` or the differences joined by `; `.
    pub fn recipe_text(&self) -> String {
        if self.recipe.is_empty() {
            "paper".to_string()
        } else {
            self.recipe.join("; ")
        }
    }
}

/// The paper entry this trial's network is, with the differences in how it was trained; `None`
/// for networks the papers did not report (plain nets, other depths, blocks or widths).
pub fn compare(config: &TrialConfig) -> Option<Comparison> {
    if config.arch != "resnet" {
        return None;
    }
    let value = param_values(config)?;
    let int = |k: &str| match value(k)? {
        Value::Int(i) => Some(i),
        _ => None,
    };
    let text = |k: &str| match value(k)? {
        Value::Str(s) => Some(s),
        _ => None,
    };
    let depth = int("depth")?;
    let width = int("width")?;
    let block = text("block")?;
    let shortcut = text("shortcut")?;
    let preact = match value("preact")? {
        Value::Bool(b) => b,
        _ => return None,
    };
    // A wider first stage is another network, not another recipe.
    if width != 16 {
        return None;
    }
    let entry = ENTRIES.iter().find(|e| {
        e.depth == depth && e.block == block && e.preact == preact && e.shortcut.is_none_or(|s| s == shortcut)
    })?;
    Some(Comparison {
        entry: *entry,
        recipe: recipe_differences(config, entry),
    })
}

/// The trial's value of each parameter by name: as stored, else the default its plugin declares
/// (a trial stored before the plugin had that parameter was built with its default); `None` for
/// an architecture that is not registered, and from the lookup for a name neither has.
fn param_values(config: &TrialConfig) -> Option<impl Fn(&str) -> Option<Value> + '_> {
    let arch = plugins::find(&config.arch)?;
    Some(move |name: &str| {
        config
            .params
            .get(name)
            .cloned()
            .or_else(|| arch.params().iter().find(|p| p.name == name).map(|p| p.default.value()))
    })
}

/// Every way the trial's data and training differ from the papers' CIFAR-10 recipe.
pub fn recipe_differences(config: &TrialConfig, entry: &Entry) -> Vec<String> {
    let mut out = Vec::new();
    let d = &config.dataset;
    if d.kind != DatasetKind::Cifar10 {
        out.push(format!("dataset {}, not cifar10", d.kind.name()));
    }
    let t = &config.train;
    match (t.iterations, t.epochs) {
        (Some(n), _) if n < PAPER_ITERATIONS => out.push(format!("{n} iterations, fewer than 64k")),
        (Some(n), _) if n > PAPER_ITERATIONS => out.push(format!("{n} iterations, more than 64k")),
        (Some(_), _) => {}
        (None, Some(e)) => out.push(format!("{e} epochs, not 64k iterations")),
        (None, None) => {}
    }
    if t.batch_size != PAPER_BATCH {
        out.push(format!("batch {}, not 128", t.batch_size));
    }
    let OptimizerConfig::Sgd {
        lr,
        momentum,
        weight_decay,
        nesterov,
    } = &t.optimizer;
    if (*lr - 0.1).abs() > 1e-12 {
        out.push(format!("lr {lr}, not 0.1"));
    }
    if (*momentum - 0.9).abs() > 1e-12 || *nesterov {
        out.push(format!(
            "momentum {momentum}{}, not 0.9",
            if *nesterov { " (Nesterov)" } else { "" }
        ));
    }
    if (*weight_decay - 1e-4).abs() > 1e-12 {
        out.push(format!("weight decay {weight_decay}, not 1e-4"));
    }
    match &t.schedule {
        Schedule::Multistep { milestones, gamma }
            if milestones.as_slice() == PAPER_MILESTONES && (*gamma - 0.1).abs() < 1e-12 => {}
        Schedule::Multistep { milestones, gamma } => {
            out.push(format!("lr ×{gamma} at {milestones:?}, not ÷10 at 32k and 48k"))
        }
        Schedule::Constant => out.push("constant lr, not ÷10 at 32k and 48k".into()),
        Schedule::Cosine { .. } => out.push("cosine lr, not ÷10 at 32k and 48k".into()),
    }
    // The 2015 paper warms ResNet-110 up at lr 0.01 until the training error is below 80%.
    if entry.source == Source::He2015Table6 && entry.depth == 110 && t.warmup.is_none() {
        out.push("no lr 0.01 warm-up".into());
    }
    let has = |a: &str| d.augment.iter().any(|x| x == a);
    if d.augment.is_empty() {
        out.push("no augmentation".into());
    } else if !(has("pad-crop:4") && has("hflip")) || d.augment.len() != 2 {
        out.push(format!("augment {}, not pad-crop:4 + hflip", d.augment.join(" + ")));
    }
    if d.normalize != Normalize::PerPixelMean {
        let name = match d.normalize {
            Normalize::PerPixelMean => "per-pixel-mean",
            Normalize::PerChannel => "per-channel",
            Normalize::None => "none",
        };
        out.push(format!("normalize {name}, not per-pixel mean"));
    }
    out
}
