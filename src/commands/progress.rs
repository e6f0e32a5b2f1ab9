//! Progress of `runner run`: two bars (the grid, the current trial) on a terminal; one plain
//! line per event worth keeping otherwise, so logs of unattended runs stay readable.

use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::grid::{Grid, TrialSpec};
use crate::train::{Evaluation, Outcome};

pub struct Progress {
    bars: Option<Bars>,
    trials: usize,
    index: usize,
    batch_size: usize,
    total: u64,
    /// The first step of this attempt and when it started, for the live images/s.
    first: Option<(u64, Instant)>,
    last_val_error: Option<f64>,
}

struct Bars {
    multi: MultiProgress,
    grid: ProgressBar,
    trial: ProgressBar,
}

impl Progress {
    pub fn new(g: &Grid, terminal: bool) -> Progress {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
            let grid = multi.add(ProgressBar::new(g.trials.len() as u64));
            grid.set_style(style("{prefix} [{bar:25}] {pos}/{len} trials  {msg}"));
            grid.set_prefix(g.name.clone());
            let trial = multi.add(ProgressBar::new(1));
            trial.set_style(style("  [{bar:25}] {pos}/{len} steps  {msg}  ETA {eta}"));
            Bars { multi, grid, trial }
        });
        if !terminal {
            println!("experiment {}: {} trials", g.name, g.trials.len());
        }
        Progress {
            bars,
            trials: g.trials.len(),
            index: 0,
            batch_size: 0,
            total: 0,
            first: None,
            last_val_error: None,
        }
    }

    /// A line that stays (above the bars on a terminal).
    pub fn note(&self, line: &str) {
        match &self.bars {
            Some(b) => b.multi.println(line).unwrap_or(()),
            None => println!("{line}"),
        }
    }

    pub fn start_trial(&mut self, spec: &TrialSpec, id: i64, resuming: bool) {
        self.index += 1;
        self.batch_size = spec.train.batch_size;
        self.first = None;
        self.last_val_error = None;
        let resume = if resuming { " (resuming)" } else { "" };
        let line = format!("[{}/{}] trial {id}: {}{resume}", self.index, self.trials, spec.label());
        if let Some(b) = &self.bars {
            b.grid.set_message(line.clone());
        }
        self.note(&line);
    }

    pub fn started(&mut self, step: u64, total: u64) {
        self.total = total;
        self.first = Some((step, Instant::now()));
        if let Some(b) = &self.bars {
            b.trial.set_length(total);
            b.trial.set_position(step);
            b.trial.reset_eta();
        }
    }

    pub fn step(&mut self, step: u64, loss: f64, lr: f64) {
        let Some(b) = &self.bars else { return };
        b.trial.set_position(step);
        let mut msg = format!("loss {loss:.3}  lr {lr:.3}");
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
        b.trial.set_message(msg);
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
        if let Some(b) = &self.bars {
            b.grid.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            b.trial.finish_and_clear();
            b.grid.finish_and_clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; a typo would show in the first run of any grid.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
