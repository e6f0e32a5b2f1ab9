//! What each trial of a grid will cost before any is built: parameters, FLOPs and the memory
//! estimate, shared by `runner run` and its `--dry-run`; and the refusals that follow from them.

use anyhow::{Context, Result};

use crate::arch::Cost;
use crate::data::{DataSize, DatasetKind};
use crate::grid::{Grid, TrialSpec};
use crate::memory::{human, Estimate, Limit, Part};

/// One trial's cost and estimated peak memory.
pub(super) struct Planned {
    pub cost: Cost,
    pub memory: Estimate,
}

/// Every trial of `g` on data of `size`, with the process at `base` bytes. An error (bad
/// input) where a trial's model cannot be built or one of its buffers could not exist at all,
/// naming the setting at fault.
pub(super) fn plan(g: &Grid, size: DataSize, base: f64) -> Result<Vec<Planned>> {
    g.trials
        .iter()
        .map(|t| {
            let cost = crate::arch::cost(t.arch, &t.params, size.shape, size.classes)
                .with_context(|| format!("building {}", t.label()))?;
            let memory = Estimate::new(&cost, size.shape, t.train.batch_size, size.images, base);
            if !memory.representable() {
                let what = format!(
                    "{}: a buffer of {} would be needed, more than a 64-bit process can address",
                    t.label(),
                    human(memory.largest_buffer)
                );
                let part = match memory.data >= memory.largest_buffer {
                    true => Part::Data,
                    false => Part::Activations,
                };
                return Err(setting_error(g, t, part, what).into());
            }
            Ok(Planned { cost, memory })
        })
        .collect()
}

/// The error that refuses trial `t` when its estimate `e` plus `others` (what trials running
/// beside it in this process need) exceeds `limit`; None where it fits.
pub(super) fn refusal(g: &Grid, t: &TrialSpec, e: &Estimate, limit: &Limit, others: f64) -> Option<crate::Error> {
    let needs = e.total() + others;
    if needs <= limit.bytes as f64 {
        return None;
    }
    let beside = match others > 0.0 {
        true => format!(" and {} for the trials training beside it", human(others)),
        false => String::new(),
    };
    let what = format!(
        "{}: needs an estimated {}{beside}, more than the {} this process may use ({}); {} or pass --ignore-memory-limit",
        t.label(),
        e.describe(),
        human(limit.bytes as f64),
        limit.source,
        match e.largest_part() {
            Part::Activations => format!("lower `batch_size` ({})", t.train.batch_size),
            Part::Weights => "choose a smaller net".to_string(),
            Part::Data => "use a smaller data set".to_string(),
        }
    );
    Some(setting_error(g, t, e.largest_part(), what))
}

/// `message` at the setting that `part` of trial `t`'s estimate grows with.
fn setting_error(g: &Grid, t: &TrialSpec, part: Part, message: String) -> crate::Error {
    let (table, key) = match part {
        Part::Activations => ("train", "batch_size"),
        Part::Weights if t.params.get("depth").is_some() => ("grid", "depth"),
        Part::Weights => ("grid", "width"),
        Part::Data if t.dataset.kind == DatasetKind::Synthetic => ("dataset", "train"),
        Part::Data => ("dataset", "path"),
    };
    g.setting_error(table, key, message)
}
