//! Progress of `runner run`: bars on a terminal (the grid's, and one per job for its current
//! trial); one plain line per event worth keeping otherwise, so logs of unattended runs stay
//! readable. With several jobs, each line about a trial names it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::grid::{Grid, TrialSpec};
use crate::train::{Evaluation, Outcome};

/// The display of one `runner run`: the grid's bar and the lines that stay. Shared by the
/// run's jobs (`--jobs`), each of which shows its trial through a [`TrialProgress`].
pub struct Progress {
    bars: Option<Bars>,
    trials: usize,
    /// Trials started so far in this run, by any job.
    started: AtomicUsize,
    jobs: usize,
}

struct Bars {
    multi: MultiProgress,
    grid: ProgressBar,
}

impl Progress {
    pub fn new(g: &Grid, terminal: bool, jobs: usize) -> Progress {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let grid = multi.add(ProgressBar::new(g.trials.len() as u64));
            grid.set_style(style("{prefix} [{bar:25}] {pos}/{len} trials  {msg}"));
            grid.set_prefix(g.name.clone());
            Bars { multi, grid }
        });
        if !terminal {
            let jobs = if jobs > 1 {
                format!(", {jobs} at a time")
            } else {
                String::new()
            };
            println!("experiment {}: {} trials{jobs}", g.name, g.trials.len());
        }
        Progress {
            bars,
            trials: g.trials.len(),
            started: AtomicUsize::new(0),
            jobs,
        }
    }

    /// A line that stays (above the bars on a terminal).
    pub fn note(&self, line: &str) {
        match &self.bars {
            Some(b) => b.multi.println(line).unwrap_or(()),
            None => println!("{line}"),
        }
    }

    /// The display of job `job`'s trials: a bar of its own under the grid's.
    pub fn job(&self, job: usize) -> TrialProgress<'_> {
        let bar = self.bars.as_ref().map(|b| {
            let bar = b.multi.add(ProgressBar::new(1));
            let prefix = if self.jobs > 1 {
                format!("job {job} ")
            } else {
                String::new()
            };
            bar.set_style(style("  {prefix}[{bar:25}] {pos}/{len} steps  {msg}  ETA {eta}"));
            bar.set_prefix(prefix);
            bar
        });
        TrialProgress {
            run: self,
            bar,
            id: 0,
            batch_size: 0,
            total: 0,
            first: None,
            last_val_error: None,
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.grid.finish_and_clear();
        }
    }
}

/// One job's trial as it trains: its bar, and its lines among the run's.
pub struct TrialProgress<'a> {
    run: &'a Progress,
    bar: Option<ProgressBar>,
    id: i64,
    batch_size: usize,
    total: u64,
    /// The first step of this attempt and when it started, for the live images/s.
    first: Option<(u64, Instant)>,
    last_val_error: Option<f64>,
}

impl TrialProgress<'_> {
    /// A line about the current trial; with several jobs, indented lines name their trial.
    pub fn note(&self, line: &str) {
        match line.strip_prefix("  ") {
            Some(rest) if self.run.jobs > 1 => self.run.note(&format!("  trial {}: {rest}", self.id)),
            _ => self.run.note(line),
        }
    }

    pub fn start_trial(&mut self, spec: &TrialSpec, id: i64, resuming: bool) {
        let index = self.run.started.fetch_add(1, Ordering::SeqCst) + 1;
        self.id = id;
        self.batch_size = spec.train.batch_size;
        self.first = None;
        self.last_val_error = None;
        let resume = if resuming { " (resuming)" } else { "" };
        let line = format!("[{index}/{}] trial {id}: {}{resume}", self.run.trials, spec.label());
        if let (Some(b), 1) = (&self.run.bars, self.run.jobs) {
            b.grid.set_message(line.clone());
        }
        self.note(&line);
    }

    pub fn started(&mut self, step: u64, total: u64) {
        self.total = total;
        self.first = Some((step, Instant::now()));
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(step);
            b.reset_eta();
        }
    }

    pub fn step(&mut self, step: u64, loss: f64, lr: f64) {
        let Some(b) = &self.bar else { return };
        b.set_position(step);
        let mut msg = format!("loss {loss:.3}  lr {lr:.3}");
        if self.run.jobs > 1 {
            msg = format!("trial {}  {msg}", self.id);
        }
        if let Some(e) = self.last_val_error {
            msg.push_str(&format!("  val err {:.2}%", e * 100.0));
        }
        if let Some((first, t0)) = self.first {
            let secs = t0.elapsed().as_secs_f64();
            if step > first && secs > 0.0 {
                msg.push_str(&format!(
                    "  {:.0} img/s",
                    (step - first) as f64 * self.batch_size as f64 / secs
                ));
            }
        }
        b.set_message(msg);
    }

    pub fn record(&mut self, ev: &Evaluation) {
        let get = |split: &str, name: &str| {
            ev.metrics
                .iter()
                .find(|(s, n, _)| *s == split && *n == name)
                .map(|m| m.2)
        };
        if let Some(e) = get("val", "error") {
            self.last_val_error = Some(e);
        }
        let mut line = format!("  step {}/{} (epoch {:.2})", ev.step, self.total, ev.epoch);
        if let (Some(l), Some(e)) = (get("train", "loss"), get("train", "error")) {
            line.push_str(&format!("  train loss {l:.4} err {:.2}%", e * 100.0));
        }
        if let Some(e) = get("val", "error") {
            line.push_str(&format!("  val err {:.2}%", e * 100.0));
            if ev.best.is_some() {
                line.push_str(" (best)");
            }
        }
        if let Some(e) = get("test", "error") {
            line.push_str(&format!(
                "  test err {:.2}% (weights of the best validation)",
                e * 100.0
            ));
        }
        if let Some(r) = ev.images_per_s {
            line.push_str(&format!("  {r:.0} img/s"));
        }
        if ev.metrics.is_empty() {
            line.push_str("  checkpoint saved");
        }
        // On a terminal the bars show the live state; evaluations still get a line each.
        self.note(&line);
    }

    pub fn end_trial(&mut self, outcome: &Outcome) {
        let line = match outcome {
            Outcome::Done { test_error, wall_s } => {
                let test = test_error
                    .map(|e| format!(", test error {:.2}%", e * 100.0))
                    .unwrap_or_default();
                format!("  done in {wall_s:.1} s{test}")
            }
            Outcome::Failed { error, .. } => format!("  failed: {error}"),
            Outcome::Interrupted => "  interrupted: a resumable checkpoint is saved".to_string(),
        };
        self.note(&line);
        if let Some(b) = &self.run.bars {
            b.grid.inc(1);
        }
    }
}

impl Drop for TrialProgress<'_> {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; a typo would show in the first run of any grid.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
