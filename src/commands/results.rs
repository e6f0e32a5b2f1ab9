//! The commands over a results database: `report`, `show`, `export` (read only) and `db copy`.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::cli::{CheckpointArg, DbCopyArgs, ExportArgs, Format, ReportArgs, ShowArgs};
use crate::grid::TrialConfig;
use crate::report::{self, paper, plot};
use crate::store::{CheckpointKind, Store};
use crate::train::checkpoint;
use crate::Error;

/// The store is async (sqlx); the commands drive it from one thread.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the store's runtime")
}

/// `runner report`: one row per group of trials that differ only in their seed (`--per-seed`:
/// per trial; CSV and JSON: per trial with the group's figures); with `--paper` the papers'
/// figures beside ours, with `--plot` charts in a folder (listed on stderr, so that stdout
/// stays the report).
pub fn report(args: &ReportArgs) -> Result<i32> {
    let rt = runtime()?;
    let (rows, metrics, configs) = rt.block_on(async {
        let store = Store::open_existing(&args.db).await?;
        // An unknown --experiment is a usage error naming the ones there are.
        let rows = store.summary(args.experiment.as_deref()).await?;
        let mut metrics = plot::Metrics::new();
        if args.plot.is_some() {
            for r in &rows {
                metrics.insert(r.trial, store.metrics(r.trial).await?);
            }
        }
        let mut by_trial = store.configs(args.experiment.as_deref()).await?;
        // A trial deleted between the two statements reports without its configuration.
        let configs: Vec<String> = rows
            .iter()
            .map(|r| by_trial.remove(&r.trial).unwrap_or_default())
            .collect();
        store.close().await;
        Ok::<_, Error>((rows, metrics, configs))
    })?;
    // The settings a grid sweeps, as columns; the seeds of one configuration, as one row.
    let mut rows = rows;
    for (r, settings) in rows.iter_mut().zip(report::varying_settings(&configs)) {
        r.settings = settings;
    }
    let groups = report::seeds::groups(&configs);
    // A configuration this binary cannot read (an older schema) matches no paper entry.
    let paper: Option<Vec<Option<paper::Comparison>>> = args.paper.then(|| {
        configs
            .iter()
            .map(|c| {
                serde_json::from_str::<TrialConfig>(c)
                    .ok()
                    .and_then(|c| paper::compare(&c))
            })
            .collect()
    });
    let mut links = Vec::new();
    if let Some(dir) = &args.plot {
        let written = plot::write_charts(dir, &rows, &metrics, args.png)?;
        for note in &written.skipped {
            eprintln!("{note}");
        }
        for c in &written.charts {
            eprintln!("wrote {}", c.svg.display());
            if let Some(png) = &c.png {
                eprintln!("wrote {}", png.display());
            }
            let svg = c.svg.display().to_string();
            links.push(report::ChartLink {
                experiment: c.experiment.clone(),
                title: c.title.clone(),
                image: c
                    .png
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| svg.clone()),
                svg: c.png.is_some().then_some(svg),
            });
        }
    }
    let paper = paper.as_deref();
    let text = match args.format() {
        Format::Table if args.per_seed => report::table_with(&rows, paper),
        Format::Table => report::seeds_table(&rows, &groups, paper),
        Format::Csv => report::seeds_csv(&rows, &groups, paper),
        Format::Json => report::seeds_json(&rows, &groups, paper),
        Format::Markdown => report::document(&rows, (!args.per_seed).then_some(&groups[..]), paper, &links),
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(0)
}

/// `runner show TRIAL`: configuration, status, and a summary of each metric's history.
pub fn show(args: &ShowArgs) -> Result<i32> {
    let rt = runtime()?;
    let (detail, metrics) = rt.block_on(async {
        let store = Store::open_existing(&args.db).await?;
        let detail = store.trial(&args.trial).await?;
        let metrics = store.metrics(detail.summary.trial).await?;
        store.close().await;
        Ok::<_, Error>((detail, metrics))
    })?;
    let s = &detail.summary;
    let mut out = String::new();
    out.push_str(&format!(
        "trial {} ({}) of experiment {}\n",
        s.trial, s.key, s.experiment
    ));
    out.push_str(&format!("status       {}\n", s.status));
    if let Some(e) = &s.error {
        out.push_str(&format!("error        {e}\n"));
    }
    let pct = |e: Option<f64>| e.map(|e| format!("{:.2}%", e * 100.0)).unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "arch         {} ({} parameters, {:.2} MFLOPs)\n",
        s.arch, s.params, s.mflops
    ));
    out.push_str(&format!(
        "steps        {}\n",
        s.steps.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
    ));
    out.push_str(&format!(
        "best val     {} at step {}\n",
        pct(s.best_val_error),
        s.best_step.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
    ));
    out.push_str(&format!(
        "test error   {} (weights of the best validation)\n",
        pct(s.test_error)
    ));
    if let Some(w) = s.wall_s {
        out.push_str(&format!("wall time    {w:.1} s\n"));
    }
    if let Some(r) = s.images_per_s {
        out.push_str(&format!("throughput   {r:.0} images/s\n"));
    }
    let config: serde_json::Value = serde_json::from_str(&detail.config_json).unwrap_or(serde_json::Value::Null);
    out.push_str("configuration\n");
    out.push_str(&serde_json::to_string_pretty(&config).unwrap_or_else(|_| detail.config_json.clone()));
    out.push('\n');
    // Per series: how many values, the first, the last, and the lowest with its step.
    let mut series: BTreeMap<(String, String), Vec<(i64, f64)>> = BTreeMap::new();
    for m in &metrics {
        series
            .entry((m.split.clone(), m.name.clone()))
            .or_default()
            .push((m.step, m.value));
    }
    if !series.is_empty() {
        out.push_str(&format!(
            "metrics\n  {:<12} {:>6} {:>12} {:>12} {:>12} {:>8}\n",
            "series", "values", "first", "last", "min", "at step"
        ));
        for ((split, name), v) in &series {
            let min = v
                .iter()
                .copied()
                .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
            out.push_str(&format!(
                "  {:<12} {:>6} {:>12.5} {:>12.5} {:>12.5} {:>8}\n",
                format!("{split}/{name}"),
                v.len(),
                v[0].1,
                v[v.len() - 1].1,
                min.1,
                min.0
            ));
        }
    }
    print!("{out}");
    Ok(0)
}

/// `runner export TRIAL --out FILE`: the model's tensors under their PyTorch names, as a
/// safetensors file (`safetensors.torch.load_file`, then `model.load_state_dict`).
pub fn export(args: &ExportArgs) -> Result<i32> {
    let rt = runtime()?;
    let kind = match args.kind {
        CheckpointArg::Best => CheckpointKind::Best,
        CheckpointArg::Last => CheckpointKind::Last,
    };
    let (trial, ckpt) = rt.block_on(async {
        let store = Store::open_existing(&args.db).await?;
        let detail = store.trial(&args.trial).await?;
        let ckpt = store.checkpoint(detail.summary.trial, kind).await?;
        store.close().await;
        Ok::<_, Error>((detail.summary.trial, ckpt))
    })?;
    let Some(ckpt) = ckpt else {
        let why = match kind {
            CheckpointKind::Best => "a best checkpoint is written at each evaluation that improves the validation error; this trial has none (no validation split, or no evaluation yet): try --kind last",
            CheckpointKind::Last => "a last checkpoint is written at evaluations; this trial has not reached one",
        };
        return Err(Error::Usage(format!("trial {trial} has no `{}` checkpoint: {why}", kind.as_str())).into());
    };
    let bytes = match kind {
        CheckpointKind::Best => ckpt.bytes,
        // The resumable form carries momentum and loop state too; keep the model only.
        CheckpointKind::Last => {
            let last = checkpoint::decode_last(&ckpt.bytes, &Device::Cpu)?;
            checkpoint::encode_best(&last.model)?
        }
    };
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({} checkpoint of trial {trial} at step {}, {} bytes)",
        args.out.display(),
        kind.as_str(),
        ckpt.step,
        bytes.len()
    );
    Ok(0)
}

/// `runner db copy`: experiments, trials, metrics and checkpoints from one store into another.
pub fn copy(args: &DbCopyArgs) -> Result<i32> {
    if let Some(e) = crate::store::same_store(&args.from, &args.to) {
        return Err(e.into());
    }
    let rt = runtime()?;
    let copied = rt.block_on(async {
        let from = Store::open_existing(&args.from).await?;
        let to = Store::open(&args.to).await?;
        let copied = from.copy_to(&to, args.experiment.as_deref()).await;
        from.close().await;
        to.close().await;
        copied
    })?;
    println!(
        "copied {} experiment(s), {} trial(s), {} metric row(s), {} checkpoint(s) ({:.1} MiB, sha256 checked) \
         from {} to {}",
        copied.experiments,
        copied.trials,
        copied.metrics,
        copied.checkpoints,
        copied.checkpoint_bytes as f64 / (1024.0 * 1024.0),
        args.from,
        args.to
    );
    if copied.were_running > 0 {
        println!(
            "{} trial(s) were running in {}: copied as interrupted; `runner run GRID --db {}` resumes them",
            copied.were_running, args.from, args.to
        );
    }
    Ok(0)
}
