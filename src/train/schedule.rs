//! The learning rate at a step: a pure function of the configuration and the position, so it
//! can be tested alone and recomputed exactly after a resume.

use super::config::{Schedule, TrainConfig, Warmup};

/// Where a run is: its step, the steps in one epoch, and whether warm-up is still on.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub step: u64,
    pub steps_per_epoch: u64,
    pub warming_up: bool,
}

/// Total optimiser steps of a run.
pub fn total_steps(cfg: &TrainConfig, steps_per_epoch: u64) -> u64 {
    match (cfg.iterations, cfg.epochs) {
        (Some(i), _) => i,
        (None, Some(e)) => e * steps_per_epoch,
        (None, None) => 0,
    }
}

/// The learning rate for the step at `pos`.
pub fn learning_rate(cfg: &TrainConfig, pos: Position) -> f64 {
    if pos.warming_up {
        if let Some(w) = &cfg.warmup {
            return w.lr;
        }
    }
    let base = cfg.optimizer.lr();
    match &cfg.schedule {
        Schedule::Constant => base,
        Schedule::Multistep { milestones, gamma } => {
            // Milestones are in the unit the run length is given in.
            let t = if cfg.iterations.is_some() {
                pos.step
            } else {
                pos.step / pos.steps_per_epoch.max(1)
            };
            let passed = milestones.iter().filter(|m| t >= **m).count();
            base * gamma.powi(passed as i32)
        }
        Schedule::Cosine { min_lr } => {
            let total = total_steps(cfg, pos.steps_per_epoch).max(1) as f64;
            let p = (pos.step as f64 / total).min(1.0);
            min_lr + (base - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

/// Whether warm-up goes on after `step`: for a fixed count, until the count is reached; with a
/// threshold, until the recent training error falls below it (then it never comes back).
pub fn still_warming_up(w: &Warmup, was: bool, step: u64, recent_train_error: Option<f64>) -> bool {
    if !was {
        return false;
    }
    match (w.iterations, w.until_train_error_below, recent_train_error) {
        (Some(n), _, _) => step + 1 < n,
        (None, Some(threshold), Some(e)) => e >= threshold,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::OptimizerConfig;

    fn paper() -> TrainConfig {
        TrainConfig {
            iterations: Some(64_000),
            epochs: None,
            optimizer: OptimizerConfig::Sgd {
                lr: 0.1,
                momentum: 0.9,
                weight_decay: 1e-4,
                nesterov: false,
            },
            schedule: Schedule::Multistep {
                milestones: vec![32_000, 48_000],
                gamma: 0.1,
            },
            ..TrainConfig::default()
        }
    }

    fn at(cfg: &TrainConfig, step: u64) -> f64 {
        learning_rate(
            cfg,
            Position {
                step,
                steps_per_epoch: 352,
                warming_up: false,
            },
        )
    }

    #[test]
    fn the_papers_schedule_divides_by_ten_at_32k_and_48k() {
        let cfg = paper();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(at(&cfg, 0), 0.1));
        assert!(close(at(&cfg, 31_999), 0.1));
        assert!(close(at(&cfg, 32_000), 0.01));
        assert!(close(at(&cfg, 47_999), 0.01));
        assert!(close(at(&cfg, 48_000), 0.001));
    }

    #[test]
    fn epoch_milestones_count_epochs() {
        let cfg = TrainConfig {
            iterations: None,
            epochs: Some(10),
            schedule: Schedule::Multistep {
                milestones: vec![5],
                gamma: 0.5,
            },
            ..paper()
        };
        let lr = |step| {
            learning_rate(
                &cfg,
                Position {
                    step,
                    steps_per_epoch: 100,
                    warming_up: false,
                },
            )
        };
        assert_eq!(lr(499), 0.1);
        assert_eq!(lr(500), 0.05);
    }

    #[test]
    fn cosine_goes_from_lr_to_min() {
        let cfg = TrainConfig {
            schedule: Schedule::Cosine { min_lr: 0.001 },
            ..paper()
        };
        assert!((at(&cfg, 0) - 0.1).abs() < 1e-12);
        assert!((at(&cfg, 32_000) - 0.0505).abs() < 1e-9);
        assert!((at(&cfg, 64_000) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn warmup_holds_its_lr_until_the_error_threshold_then_never_returns() {
        let w = Warmup {
            lr: 0.01,
            iterations: None,
            until_train_error_below: Some(0.8),
        };
        let cfg = TrainConfig {
            warmup: Some(w.clone()),
            ..paper()
        };
        let lr = |warming_up| {
            learning_rate(
                &cfg,
                Position {
                    step: 10,
                    steps_per_epoch: 352,
                    warming_up,
                },
            )
        };
        assert_eq!(lr(true), 0.01);
        assert_eq!(lr(false), 0.1);
        assert!(still_warming_up(&w, true, 10, Some(0.9)));
        assert!(still_warming_up(&w, true, 10, None));
        assert!(!still_warming_up(&w, true, 11, Some(0.79)));
        assert!(!still_warming_up(&w, false, 12, Some(0.95)), "warm-up never comes back");
    }

    #[test]
    fn warmup_by_count_ends_after_n_steps() {
        let w = Warmup {
            lr: 0.01,
            iterations: Some(3),
            until_train_error_below: None,
        };
        assert!(still_warming_up(&w, true, 0, None));
        assert!(still_warming_up(&w, true, 1, None));
        assert!(!still_warming_up(&w, true, 2, None));
    }
}
