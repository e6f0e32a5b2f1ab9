//! `runner run GRID`: register the grid's trials in the store, then claim and train them until
//! none is left, recording every event as it comes; `--jobs N` trains N at a time.
//!
//! Threads: each job (one by default) claims trials on a thread of its own, and each trial
//! trains on a trainer thread of its own; the job's thread talks to the store (sqlx on a small
//! tokio runtime shared by the jobs), keeps the heartbeat, and watches for Ctrl-C. The jobs
//! share the progress display.
//!
//! Any number of runners may share one grid and one database: each claim is one short write
//! transaction, so each takes a different trial. A trial whose runner is gone is resumed from
//! its `last` checkpoint: at once when that runner was a process of this machine that no longer
//! exists (killed), after `--stale-after` seconds without a heartbeat otherwise.
//!
//! Bad input (grid, data set, database) is found before anything is written: the grid and
//! every data file are read before the database is opened.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;

use super::plan::{self, Planned};
use super::progress::{Progress, TrialProgress};
use crate::cli::RunArgs;
use crate::data::{self, Dataset, Normalizer};
use crate::grid::{self, TrialSpec};
use crate::memory::{self, Limit};
use crate::store::{self, Checkpoint, CheckpointKind, Claim, NewTrial, Store};
use crate::train::{self, Event, Outcome};
use crate::Error;

/// How often a running trial tells the store it is alive, at most (see [`heartbeat_interval`]).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A data set in memory for one seed (the validation hold-out depends on it), normalised.
type Loaded = (u64, Arc<Dataset>, Arc<Normalizer>);

/// The exit status after SIGTERM or SIGUSR1: the cluster stopped this runner (Slurm before a
/// time limit or preemption, Kubernetes before evicting a pod). 75 is EX_TEMPFAIL, "try again
/// later": the trial is `interrupted` with its `last` checkpoint, and the job can be requeued.
pub const EXIT_PREEMPTED: i32 = 75;
/// The exit status after Ctrl-C (SIGINT), as shells report it.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Runs the grid; returns the exit code: 0 all trained, 1 some trial failed,
/// [`EXIT_INTERRUPTED`] after Ctrl-C, [`EXIT_PREEMPTED`] after SIGTERM or SIGUSR1.
pub fn run(args: &RunArgs) -> Result<i32> {
    let process = memory::resident_bytes().unwrap_or(0) as f64;
    let stale_after = Duration::from_secs(args.stale_after);
    let beat_every = heartbeat_interval(stale_after);
    let g = grid::load(&args.grid)?;
    let base = grid_dir(&g.path);
    let devices = parse_devices(&args.device)?;
    // Every dataset problem is reported before anything is written or trained.
    let size = data::check(&g.trials[0].dataset, &base)?;
    // Every trial's memory estimate, and the first trial held against the limit, before the
    // data is loaded or anything written: a grid that cannot start says so and exits 2.
    let planned = plan::plan(&g, size, process)?;
    let limit = match args.ignore_memory_limit {
        true => None,
        false => Limit::of_this_process(),
    };
    if let Some(refused) = limit
        .as_ref()
        .and_then(|l| plan::refusal(&g, &g.trials[0], &planned[0].memory, l, 0.0))
    {
        return Err(refused.into());
    }
    let new_trials = g
        .trials
        .iter()
        .zip(&planned)
        .enumerate()
        .map(|(i, (t, p))| NewTrial {
            key: t.key.clone(),
            arch: t.arch.name().to_string(),
            config_json: t.config_json(),
            params: p.cost.params as i64,
            mflops: p.cost.mflops,
            ord: i as i64,
        })
        .collect::<Vec<_>>();
    let jobs = usize::from(args.jobs);
    let progress = Progress::new(&g, std::io::IsTerminal::is_terminal(&std::io::stdout()), jobs);
    // Loaded now rather than after the first claim: what the header check cannot see (a label
    // out of range, an image that does not decode) is bad input too, found before the database
    // is touched. Trials are usually all on the first trial's seed, so this is no extra work.
    progress.note(&loading_note(&g.trials[0]));
    let first = load_data(&g.trials[0], &base)?;

    let rt = super::results::runtime()?;
    let store = rt.block_on(Store::open(&args.db))?;
    rt.block_on(store.register(&g.name, &g.source, &new_trials))?;

    let signals = install_signals()?;
    let stop = signals.stop.clone();
    let host = args.worker_host.clone().unwrap_or_else(hostname);
    let me = format!("{host}:{}", std::process::id());
    let keys: Vec<String> = g.trials.iter().map(|t| t.key.clone()).collect();
    let ours: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let run = Jobs {
        rt: &rt,
        store: &store,
        grid: &g,
        base: &base,
        keys: &keys,
        ours: &ours,
        host: &host,
        retry_failed: args.retry_failed,
        stale_after,
        beat_every,
        planned: &planned,
        limit,
        reserved: Mutex::new(0.0),
        halt: Halt {
            signal: stop.clone(),
            error: AtomicBool::new(false),
        },
        progress: &progress,
    };
    // Each job claims and trains on a thread of its own, with a device handle of its own (on a
    // GPU its own CUDA stream), the jobs spread over the devices given.
    let results: Vec<Result<Tally>> = std::thread::scope(|s| {
        let run = &run;
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                let worker = if jobs == 1 {
                    me.clone()
                } else {
                    format!("{me}/{}", j + 1)
                };
                let device = devices[j % devices.len()].clone();
                let first = first.clone();
                std::thread::Builder::new()
                    .name(format!("job {}", j + 1))
                    .spawn_scoped(s, move || {
                        let r = run.job(j + 1, &worker, &device, Some(first));
                        if r.is_err() {
                            run.halt.error.store(true, Ordering::SeqCst);
                        }
                        r
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.context("starting a job's thread")?.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let (mut trained, mut failed) = (0usize, 0usize);
    let mut error = None;
    for r in results {
        match r {
            Ok(t) => {
                trained += t.trained;
                failed += t.failed;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    progress.finish();
    if let Some(e) = error {
        return Err(e);
    }
    let elsewhere: Vec<store::RunningTrial> = rt
        .block_on(store.running())?
        .into_iter()
        .filter(|r| ours.contains(r.key.as_str()) && !r.worker.as_deref().is_some_and(|w| is_job_of(w, &me)))
        .collect();
    let rows = rt.block_on(store.summary(Some(&g.name)))?;
    rt.block_on(store.close());
    if stop.load(Ordering::SeqCst) {
        let preempted = signals.preempted.load(Ordering::SeqCst);
        eprintln!(
            "{}: progress is saved in {}; run the same command again to continue{}",
            if preempted {
                "stopped by SIGTERM/SIGUSR1"
            } else {
                "interrupted"
            },
            args.db,
            if preempted {
                format!(" (exit status {EXIT_PREEMPTED}: requeue the job)")
            } else {
                String::new()
            }
        );
        return Ok(if preempted { EXIT_PREEMPTED } else { EXIT_INTERRUPTED });
    }
    println!("{}", crate::report::table(&rows));
    let pending = rows.iter().filter(|r| r.status != "done").count();
    println!(
        "{trained} trained, {failed} failed in this run; {} of {} trials done in {}",
        rows.len() - pending,
        rows.len(),
        args.db
    );
    if !elsewhere.is_empty() {
        let mut workers: Vec<&str> = elsewhere.iter().filter_map(|r| r.worker.as_deref()).collect();
        workers.sort_unstable();
        workers.dedup();
        println!(
            "{} running in other runners ({}); nothing is left for this one",
            match elsewhere.len() {
                1 => "1 trial is".to_string(),
                n => format!("{n} trials are"),
            },
            workers.join(", ")
        );
    }
    if rows.iter().any(|r| r.status == "failed") && !args.retry_failed {
        println!(
            "failed trials are kept as they are; `runner run {} --retry-failed` trains them again",
            args.grid.display()
        );
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// What a run's jobs share: the store, the grid, the display and when to stop.
struct Jobs<'a> {
    rt: &'a tokio::runtime::Runtime,
    store: &'a Store,
    grid: &'a grid::Grid,
    base: &'a Path,
    keys: &'a [String],
    ours: &'a HashSet<&'a str>,
    host: &'a str,
    retry_failed: bool,
    stale_after: Duration,
    beat_every: Duration,
    /// Each trial's cost and memory estimate, in the grid's order.
    planned: &'a [Planned],
    /// What the process may use; None with --ignore-memory-limit.
    limit: Option<Limit>,
    /// The estimated model memory (weights and activations) of the trials training now.
    reserved: Mutex<f64>,
    halt: Halt,
    progress: &'a Progress,
}

/// When the jobs stop: a signal (Ctrl-C, SIGTERM, SIGUSR1), or an error in one of them (the
/// others finish their step, save a checkpoint and leave their trials `interrupted`).
struct Halt {
    signal: Arc<AtomicBool>,
    error: AtomicBool,
}

impl Halt {
    fn now(&self) -> bool {
        self.signal.load(Ordering::SeqCst) || self.error.load(Ordering::SeqCst)
    }
}

/// Trials one job trained and saw fail.
#[derive(Default)]
struct Tally {
    trained: usize,
    failed: usize,
}

/// A trial a job has claimed.
struct Claimed<'a> {
    claim: &'a Claim,
    spec: &'a TrialSpec,
    worker: &'a str,
}

/// A trial's model memory counted in [`Jobs::reserved`] until it is dropped.
struct Reservation<'a>(&'a Mutex<f64>, f64);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) -= self.1;
    }
}

/// Whether `worker` is this process (`me`, `HOST:PID`) or one of its jobs (`HOST:PID/J`).
fn is_job_of(worker: &str, me: &str) -> bool {
    worker
        .strip_prefix(me)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn loading_note(spec: &TrialSpec) -> String {
    format!("loading {:?} data (seed {})", spec.dataset.kind, spec.train.seed).to_lowercase()
}

fn load_data(spec: &TrialSpec, base: &Path) -> crate::Result<Loaded> {
    let seed = spec.train.seed;
    let d = data::load(&spec.dataset, base, seed)?;
    let n = Normalizer::fit(spec.dataset.normalize, &d.train, d.shape);
    Ok((seed, Arc::new(d), Arc::new(n)))
}

/// Marks `interrupted` every running trial of this grid whose runner was a process of this
/// machine that no longer exists (killed, crashed), so that it is claimed at once rather than
/// after `--stale-after`. Runners elsewhere cannot be asked; their trials wait for the timeout.
async fn release_gone(store: &Store, ours: &HashSet<&str>, host: &str, progress: &Progress) -> crate::Result<()> {
    for r in store.running().await? {
        let Some(w) = r.worker.as_deref() else { continue };
        if !ours.contains(r.key.as_str()) {
            continue;
        }
        if let Some(pid) = gone_pid(w, host, std::process::id(), process_alive) {
            progress.note(&format!(
                "trial {}: its runner (pid {pid}) is gone; resuming",
                r.trial_id
            ));
            store.release(r.trial_id, w).await?;
        }
    }
    Ok(())
}

/// The pid of `worker` (`host:pid`, or `host:pid/job` for one of a runner's `--jobs`) when it
/// names a runner of this host, other than this process, that `alive` says is gone. Unknown
/// liveness (`None`) counts as alive.
fn gone_pid(worker: &str, host: &str, own_pid: u32, alive: impl Fn(u32) -> Option<bool>) -> Option<u32> {
    let worker = worker.split_once('/').map_or(worker, |(w, _job)| w);
    let (h, pid) = worker.rsplit_once(':')?;
    let pid: u32 = pid.parse().ok()?;
    (h == host && pid != own_pid && alive(pid) == Some(false)).then_some(pid)
}

/// Whether process `pid` of this machine is running; `None` where /proc cannot say.
fn process_alive(pid: u32) -> Option<bool> {
    if !Path::new("/proc/self/stat").exists() {
        return None;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses. A zombie (killed, not yet reaped
        // by its parent) runs nothing any more.
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            Some(!matches!(state, Some('Z' | 'X')))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(false),
        Err(_) => None,
    }
}

/// Heartbeats come often enough that a live runner never looks stale to another: every 10 s,
/// or four per `--stale-after` when that is shorter.
fn heartbeat_interval(stale_after: Duration) -> Duration {
    HEARTBEAT.min(stale_after / 4)
}

/// Runs `work` on a thread of its own while this one keeps the claimed trial's heartbeat going
/// (loading a large data set can take longer than `--stale-after`).
fn with_heartbeat<T: Send>(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    trial_id: i64,
    worker: &str,
    every: Duration,
    work: impl FnOnce() -> T + Send,
) -> T {
    std::thread::scope(|s| {
        let handle = s.spawn(work);
        let mut beat = Instant::now();
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if beat.elapsed() >= every {
                // A takeover, or a store that fails, shows at the trial's first heartbeat.
                let _ = rt.block_on(store.heartbeat(trial_id, worker));
                beat = Instant::now();
            }
        }
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

impl Jobs<'_> {
    /// Job `job`: claims and trains trials as `worker` on `device` until none is left or the
    /// run halts. `cache` is the data set already loaded for the first trial's seed.
    fn job(&self, job: usize, worker: &str, device: &str, mut cache: Option<Loaded>) -> Result<Tally> {
        let (rt, store) = (self.rt, self.store);
        let device = parse_device(device)?;
        let mut progress = self.progress.job(job);
        let mut tally = Tally::default();
        loop {
            if self.halt.now() {
                break;
            }
            rt.block_on(release_gone(store, self.ours, self.host, self.progress))?;
            let Some(claim) = rt.block_on(store.claim(self.keys, worker, self.retry_failed, self.stale_after))? else {
                break;
            };
            if claim.previous_status == "running" {
                progress.note(&format!(
                    "trial {}: its runner {} sent no heartbeat for over {} s; resuming",
                    claim.trial_id,
                    claim.previous_worker.as_deref().unwrap_or("(unknown)"),
                    self.stale_after.as_secs()
                ));
            }
            let at = self
                .grid
                .trials
                .iter()
                .position(|t| t.key == claim.key)
                .context("the store handed out a trial this grid does not have")?;
            let spec = &self.grid.trials[at];
            // Held against the limit with what the other jobs' trials need; reserved at once,
            // so that two jobs cannot both count on the same memory.
            let estimate = &self.planned[at].memory;
            let reserved = {
                let mut r = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
                match self
                    .limit
                    .as_ref()
                    .and_then(|l| plan::refusal(self.grid, spec, estimate, l, *r))
                {
                    Some(refused) => Err(refused),
                    None => {
                        *r += estimate.model();
                        Ok(Reservation(&self.reserved, estimate.model()))
                    }
                }
            };
            let _reserved = match reserved {
                Ok(r) => r,
                Err(refused) => {
                    self.fail_unstarted(&claim, spec, worker, &mut progress, refused.to_string())?;
                    tally.failed += 1;
                    continue;
                }
            };
            let seed = spec.train.seed;
            let loaded = match cache.take() {
                Some(c) if c.0 == seed => Ok(c),
                // The previous set is dropped before the next one is read: one in memory at a
                // time per job.
                _ => {
                    progress.note(&loading_note(spec));
                    with_heartbeat(rt, store, claim.trial_id, worker, self.beat_every, || {
                        load_data(spec, self.base)
                    })
                }
            };
            let (data, norm) = match loaded {
                Ok(c) => {
                    let pair = (c.1.clone(), c.2.clone());
                    cache = Some(c);
                    pair
                }
                // Files that changed since the start, or a seed whose hold-out cannot work:
                // this trial fails with the reason, the others go on.
                Err(e) => {
                    self.fail_unstarted(&claim, spec, worker, &mut progress, format!("loading its data: {e}"))?;
                    tally.failed += 1;
                    continue;
                }
            };
            let trial = Claimed {
                claim: &claim,
                spec,
                worker,
            };
            match self.run_trial(&trial, data, norm, &device, &mut progress)? {
                Some(Outcome::Done { .. }) => tally.trained += 1,
                Some(Outcome::Failed { .. }) => tally.failed += 1,
                Some(Outcome::Interrupted) => break,
                None => {}
            }
        }
        Ok(tally)
    }

    /// Records a claimed trial as failed before it started, for `error`.
    fn fail_unstarted(
        &self,
        claim: &Claim,
        spec: &TrialSpec,
        worker: &str,
        progress: &mut TrialProgress,
        error: String,
    ) -> Result<()> {
        let outcome = Outcome::Failed { error, wall_s: 0.0 };
        progress.start_trial(spec, claim.trial_id, claim.resume.is_some());
        self.rt.block_on(self.store.finish(claim.trial_id, worker, &outcome))?;
        progress.end_trial(&outcome);
        Ok(())
    }

    /// Trains one claimed trial, recording its events; returns how it ended, or `None` when
    /// another runner took the trial over (this one's heartbeat was late) and it was left to them.
    fn run_trial(
        &self,
        trial: &Claimed,
        data: Arc<Dataset>,
        norm: Arc<Normalizer>,
        device: &Device,
        progress: &mut TrialProgress,
    ) -> Result<Option<Outcome>> {
        let (rt, store, beat_every) = (self.rt, self.store, self.beat_every);
        let Claimed { claim, spec, worker } = *trial;
        let id = claim.trial_id;
        progress.start_trial(spec, id, claim.resume.is_some());
        let resume = match &claim.resume {
            Some(last) => match rt.block_on(store.checkpoint(id, CheckpointKind::Best)) {
                Ok(best) => Some(train::Resume {
                    last: last.bytes.clone(),
                    best: best.map(|c| c.bytes),
                }),
                // A damaged checkpoint concerns this trial alone.
                Err(e @ Error::Store { .. }) => {
                    let outcome = Outcome::Failed {
                        error: format!("cannot resume: {e}"),
                        wall_s: 0.0,
                    };
                    rt.block_on(store.finish(id, worker, &outcome))?;
                    progress.end_trial(&outcome);
                    return Ok(Some(outcome));
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        // Set on Ctrl-C, when another runner has taken the trial over, or when the store fails.
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
            // A write that failed even after the retries: the trainer is stopped (it would
            // otherwise train to the end for nothing) and the error reported once it has.
            let mut broken: Option<Error> = None;
            let outcome = loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(Event::Started { step, total }) => {
                        progress.started(step, total);
                        let total = i64::try_from(total).unwrap_or(i64::MAX);
                        let written = rt.block_on(store.started(id, worker, total));
                        lost |= write_failed(written, &trial_stop, &mut broken, progress);
                    }
                    Ok(Event::Step { step, loss, lr }) => progress.step(step, loss, lr),
                    Ok(Event::Record(_)) if lost || broken.is_some() => {}
                    Ok(Event::Record(ev)) => {
                        progress.record(&ev);
                        let written = rt.block_on(store.record(id, worker, &to_record(ev)));
                        if written.is_ok() {
                            beat = Instant::now();
                        }
                        lost |= write_failed(written, &trial_stop, &mut broken, progress);
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
                let active = !released && !lost && broken.is_none();
                if self.halt.now() && active {
                    trial_stop.store(true, Ordering::SeqCst);
                    // Marked at once, so a second Ctrl-C that exits on the spot leaves the trial
                    // `interrupted` with its previous `last` checkpoint.
                    rt.block_on(store.release(id, worker))?;
                    released = true;
                    progress.note(match self.halt.signal.load(Ordering::SeqCst) {
                        true => "  stopping after this step (Ctrl-C again to quit at once)",
                        false => "  stopping after this step: another job failed",
                    });
                }
                if beat.elapsed() >= beat_every && active {
                    let written = rt.block_on(store.heartbeat(id, worker));
                    lost |= write_failed(written, &trial_stop, &mut broken, progress);
                    beat = Instant::now();
                }
            };
            let _ = trainer.join();
            if let Some(e) = broken {
                // Best effort: the next run resumes the trial at once rather than after a timeout.
                let _ = rt.block_on(store.release(id, worker));
                return Err(e.into());
            }
            if lost {
                return Ok(None);
            }
            // A runner that lost the trial between two heartbeats does not get the last word.
            match rt.block_on(store.finish(id, worker, &outcome)) {
                Err(e @ Error::TakenOver { .. }) => {
                    progress.note(&format!("  {e}: its result is left to that runner"));
                    return Ok(None);
                }
                r => r?,
            }
            progress.end_trial(&outcome);
            Ok(Some(outcome))
        })
    }
}

/// After a write for a running trial: on any failure the trainer is stopped. Returns whether
/// another runner took the trial over (it continues it); a failure of the store itself goes
/// into `broken`, to be reported once the trainer has stopped.
fn write_failed(
    written: crate::Result<()>,
    trial_stop: &AtomicBool,
    broken: &mut Option<Error>,
    progress: &TrialProgress,
) -> bool {
    let Err(e) = written else { return false };
    trial_stop.store(true, Ordering::SeqCst);
    match e {
        Error::TakenOver { .. } => {
            progress.note(&format!("  {e}: stopping; that runner continues it"));
            true
        }
        e => {
            *broken = Some(e);
            false
        }
    }
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

/// `--device` of `runner run`: one device, or a comma-separated list that `--jobs` spreads its
/// jobs over; each is checked here (a CUDA device is opened once).
fn parse_devices(s: &str) -> crate::Result<Vec<String>> {
    let list: Vec<String> = s.split(',').map(|d| d.trim().to_string()).collect();
    for d in &list {
        parse_device(d)?;
    }
    Ok(list)
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
            "device `{s}`: this runner was built without CUDA support; build one with \
             `scripts/build-cuda.sh` (no GPU needed to build; it writes dist/runner-cuda, see README)"
        )));
    }
    // Candle appends a backtrace to driver errors; the first line is the user's part.
    Device::new_cuda(n).map_err(|e| {
        let e = e.to_string();
        Error::Usage(format!(
            "device `{s}`: cannot open it ({}); is there a GPU `nvidia-smi` lists, with its driver?",
            e.lines().next().unwrap_or_default().trim()
        ))
    })
}

/// Set by the signals that stop a run.
struct Signals {
    /// Any of them: the trainer finishes its step, writes `last` and stops.
    stop: Arc<AtomicBool>,
    /// SIGTERM or SIGUSR1 (a cluster's stop), rather than Ctrl-C.
    preempted: Arc<AtomicBool>,
}

/// First Ctrl-C, SIGTERM or SIGUSR1: sets the flags (the trainer finishes its step, writes
/// `last`, stops). A second one exits at once, with 130 after Ctrl-C and [`EXIT_PREEMPTED`]
/// otherwise; a trial not yet released then stays `running` until another runner takes it over
/// (at once on this host, whose runners see that its pid is gone; elsewhere after --stale-after).
fn install_signals() -> Result<Signals> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let stop = Arc::new(AtomicBool::new(false));
    let preempted = Arc::new(AtomicBool::new(false));
    for (sig, status) in [
        (SIGINT, EXIT_INTERRUPTED),
        (SIGTERM, EXIT_PREEMPTED),
        (SIGUSR1, EXIT_PREEMPTED),
    ] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(sig, status, stop.clone())?;
        if status == EXIT_PREEMPTED {
            signal_hook::flag::register(sig, preempted.clone())?;
        }
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(Signals { stop, preempted })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gone_runner_of_this_host_is_resumed_at_once() {
        let dead = |_| Some(false);
        assert_eq!(gone_pid("box:41", "box", 7, dead), Some(41));
        // Another machine's processes cannot be seen from here: they wait for --stale-after.
        assert_eq!(gone_pid("other:41", "box", 7, dead), None);
        // This process is alive, whatever a caller says.
        assert_eq!(gone_pid("box:7", "box", 7, dead), None);
        assert_eq!(gone_pid("box:41", "box", 7, |_| Some(true)), None);
        assert_eq!(gone_pid("box:41", "box", 7, |_| None), None);
        assert_eq!(gone_pid("box", "box", 7, dead), None);
        assert_eq!(gone_pid("box:x", "box", 7, dead), None);
        // Host names with colons (an IPv6 literal) keep everything before the last one.
        assert_eq!(gone_pid("fe80::1:41", "fe80::1", 7, dead), Some(41));
        // a job of a runner (`--jobs`): the runner's pid
        assert_eq!(gone_pid("box:41/3", "box", 7, dead), Some(41));
        assert_eq!(gone_pid("box:7/2", "box", 7, dead), None);
    }

    #[test]
    fn a_runner_knows_its_own_jobs() {
        assert!(is_job_of("box:7", "box:7"));
        assert!(is_job_of("box:7/2", "box:7"));
        assert!(!is_job_of("box:71", "box:7"));
        assert!(!is_job_of("box:71/2", "box:7"));
        assert!(!is_job_of("other:7/2", "box:7"));
    }

    #[test]
    fn a_process_is_alive_until_it_has_exited() {
        if process_alive(std::process::id()).is_none() {
            eprintln!("note: no /proc here; liveness is unknown and runners wait for --stale-after");
            return;
        }
        assert_eq!(process_alive(std::process::id()), Some(true));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert_eq!(process_alive(pid), Some(true));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(process_alive(pid), Some(false));
    }

    #[test]
    fn heartbeats_come_at_least_four_times_per_stale_timeout() {
        assert_eq!(heartbeat_interval(Duration::from_secs(120)), HEARTBEAT);
        assert_eq!(heartbeat_interval(Duration::from_secs(2)), Duration::from_millis(500));
    }
}
