//! `runner run GRID`: register the grid's trials in the store, then claim and train them one by
//! one until none is left, recording every event as it comes.
//!
//! Threads: the trainer runs on a thread of its own; this thread owns the store (sqlx on a
//! small tokio runtime), the progress display, the heartbeat and the Ctrl-C handling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;

use super::progress::Progress;
use crate::cli::RunArgs;
use crate::data::{self, Dataset, Normalizer};
use crate::grid::{self, TrialSpec};
use crate::store::{self, Checkpoint, CheckpointKind, Claim, NewTrial, Store};
use crate::train::{self, Event, Outcome};
use crate::Error;

/// How often a running trial tells the store it is alive.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A `running` trial whose heartbeat is older than this is taken to have lost its runner.
const STALE_AFTER: Duration = Duration::from_secs(120);

/// Runs the grid; returns the exit code: 0 all trained, 1 some trial failed, 130 interrupted.
pub fn run(args: &RunArgs) -> Result<i32> {
    let g = grid::load(&args.grid)?;
    let base = grid_dir(&g.path);
    let device = parse_device(&args.device)?;
    // Every dataset problem is reported before anything is written or trained.
    let (shape, classes) = data::check(&g.trials[0].dataset, &base)?;
    let rt = super::results::runtime()?;
    let store = rt.block_on(Store::open(&args.db))?;
    let new_trials = g
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let cost = crate::arch::cost(t.arch, &t.params, shape, classes)
                .with_context(|| format!("building {}", t.label()))?;
            Ok(NewTrial {
                key: t.key.clone(),
                arch: t.arch.name().to_string(),
                config_json: t.config_json(),
                params: cost.params as i64,
                mflops: cost.mflops,
                ord: i as i64,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    rt.block_on(store.register(&g.name, &g.source, &new_trials))?;

    let stop = install_ctrl_c()?;
    let worker = format!("{}:{}", hostname(), std::process::id());
    let keys: Vec<String> = g.trials.iter().map(|t| t.key.clone()).collect();
    let mut progress = Progress::new(&g, std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let mut cache: Option<(u64, Arc<Dataset>, Arc<Normalizer>)> = None;
    let (mut trained, mut failed) = (0usize, 0usize);
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Some(claim) = rt.block_on(store.claim(&keys, &worker, args.retry_failed, STALE_AFTER))? else {
            break;
        };
        let spec = g
            .trials
            .iter()
            .find(|t| t.key == claim.key)
            .context("the store handed out a trial this grid does not have")?;
        let seed = spec.train.seed;
        let (data, norm) = match &cache {
            Some((s, d, n)) if *s == seed => (d.clone(), n.clone()),
            _ => {
                progress.note(&format!("loading {:?} data (seed {seed})", spec.dataset.kind).to_lowercase());
                let d = Arc::new(data::load(&spec.dataset, &base, seed)?);
                let n = Arc::new(Normalizer::fit(spec.dataset.normalize, &d.train, d.shape));
                cache = Some((seed, d.clone(), n.clone()));
                (d, n)
            }
        };
        let outcome = run_trial(
            &rt,
            &store,
            &worker,
            &claim,
            spec,
            data,
            norm,
            &device,
            &stop,
            &mut progress,
        )?;
        match outcome {
            Some(Outcome::Done { .. }) => trained += 1,
            Some(Outcome::Failed { .. }) => failed += 1,
            Some(Outcome::Interrupted) => break,
            None => {}
        }
    }
    progress.finish();
    let rows = rt.block_on(store.summary(Some(&g.name)))?;
    rt.block_on(store.close());
    if stop.load(Ordering::SeqCst) {
        eprintln!(
            "interrupted: progress is saved in {}; run the same command again to continue",
            args.db.display()
        );
        return Ok(130);
    }
    println!("{}", crate::report::table(&rows));
    let pending = rows.iter().filter(|r| r.status != "done").count();
    println!(
        "{trained} trained, {failed} failed in this run; {} of {} trials done in {}",
        rows.len() - pending,
        rows.len(),
        args.db.display()
    );
    if rows.iter().any(|r| r.status == "failed") && !args.retry_failed {
        println!(
            "failed trials are kept as they are; `runner run {} --retry-failed` trains them again",
            args.grid.display()
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Trains one claimed trial, recording its events; returns how it ended, or `None` when
/// another runner took the trial over (this one's heartbeat was late) and it was left to them.
#[allow(clippy::too_many_arguments)]
fn run_trial(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    worker: &str,
    claim: &Claim,
    spec: &TrialSpec,
    data: Arc<Dataset>,
    norm: Arc<Normalizer>,
    device: &Device,
    stop: &Arc<AtomicBool>,
    progress: &mut Progress,
) -> Result<Option<Outcome>> {
    let id = claim.trial_id;
    let resume = match &claim.resume {
        Some(last) => Some(train::Resume {
            last: last.bytes.clone(),
            best: rt
                .block_on(store.checkpoint(id, CheckpointKind::Best))?
                .map(|c| c.bytes),
        }),
        None => None,
    };
    progress.start_trial(spec, id, resume.is_some());
    // Set on Ctrl-C, or when another runner has taken the trial over.
    let trial_stop = Arc::new(AtomicBool::new(false));
    let trial = train::Trial {
        spec,
        data,
        norm,
        device: device.clone(),
        resume,
        stop: trial_stop.clone(),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| -> Result<Option<Outcome>> {
        let trainer = std::thread::Builder::new()
            .name("trainer".into())
            .spawn_scoped(s, move || train::train(trial, &tx))
            .context("starting the trainer thread")?;
        let mut beat = Instant::now();
        let mut released = false;
        let mut lost = false;
        let outcome = loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(Event::Started { step, total }) => progress.started(step, total),
                Ok(Event::Step { step, loss, lr }) => progress.step(step, loss, lr),
                Ok(Event::Record(_)) if lost => {}
                Ok(Event::Record(ev)) => {
                    progress.record(&ev);
                    rt.block_on(store.record(id, &to_record(ev)))?;
                    beat = Instant::now();
                }
                Ok(Event::Finished(outcome)) => break outcome,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break Outcome::Failed {
                        error: "the trainer stopped without a result (it panicked)".into(),
                        wall_s: 0.0,
                    }
                }
            }
            if stop.load(Ordering::SeqCst) && !released && !lost {
                trial_stop.store(true, Ordering::SeqCst);
                // Marked at once, so a second Ctrl-C that exits on the spot leaves the trial
                // `interrupted` with its previous `last` checkpoint.
                rt.block_on(store.release(id, worker))?;
                released = true;
                progress.note("stopping after this step (Ctrl-C again to quit at once)");
            }
            if beat.elapsed() >= HEARTBEAT && !released && !lost {
                if let Err(e) = rt.block_on(store.heartbeat(id, worker)) {
                    progress.note(&format!("  {e}: stopping; the runner that took it over continues it"));
                    lost = true;
                    trial_stop.store(true, Ordering::SeqCst);
                }
                beat = Instant::now();
            }
        };
        let _ = trainer.join();
        if lost {
            return Ok(None);
        }
        rt.block_on(store.finish(id, &outcome))?;
        progress.end_trial(&outcome);
        Ok(Some(outcome))
    })
}

fn to_record(ev: train::Evaluation) -> store::Record {
    store::Record {
        step: ev.step as i64,
        epoch: ev.epoch,
        metrics: ev
            .metrics
            .into_iter()
            .map(|(split, name, value)| store::Metric {
                split: split.to_string(),
                name: name.to_string(),
                value,
            })
            .collect(),
        best: ev
            .best
            .map(|(err, bytes)| (err, Checkpoint::new(CheckpointKind::Best, ev.step as i64, bytes))),
        last: ev
            .last
            .map(|bytes| Checkpoint::new(CheckpointKind::Last, ev.step as i64, bytes)),
        train_loss: ev.train_loss,
        images_per_s: ev.images_per_s,
        wall_s: ev.wall_s,
    }
}

/// Relative dataset paths in a grid file are relative to the file's folder.
pub fn grid_dir(grid: &Path) -> PathBuf {
    grid.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `cpu`, or `cuda:N` in a build with the `cuda` feature.
pub fn parse_device(s: &str) -> crate::Result<Device> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(n) = s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) else {
        return Err(Error::Usage(format!(
            "unknown device `{s}`: use `cpu` or `cuda:N` (e.g. cuda:0)"
        )));
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Usage(format!(
            "device `{s}`: this runner was built without CUDA support; build it with `--features cuda` (see README)"
        )));
    }
    Device::new_cuda(n).map_err(|e| Error::Usage(format!("device `{s}`: {e}")))
}

/// First Ctrl-C: sets the flag (the trainer finishes its step, writes `last`, stops). Second:
/// exits at once with 130.
fn install_ctrl_c() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
