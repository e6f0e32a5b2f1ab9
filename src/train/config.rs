//! The `[train]` table of a grid file: run length, optimiser, schedule, warm-up, evaluation.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Run length in iterations (optimiser steps)…
    #[serde(default)]
    pub iterations: Option<u64>,
    /// …or in epochs over the training split. Exactly one of the two.
    #[serde(default)]
    pub epochs: Option<u64>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub warmup: Option<Warmup>,
    /// Evaluate on the validation split every N iterations, or every epoch.
    #[serde(default)]
    pub eval_every: EvalEvery,
    /// Write a resumable `last` checkpoint every N evaluations (default 1: each evaluation).
    #[serde(default = "one")]
    pub checkpoint_every: u64,
    #[serde(default = "one")]
    pub seed: u64,
}

fn default_batch() -> usize {
    128
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// SGD with momentum, L2 weight decay (added to the gradient, as PyTorch does) and
    /// optional Nesterov momentum.
    Sgd {
        lr: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
        #[serde(default = "default_wd")]
        weight_decay: f64,
        #[serde(default)]
        nesterov: bool,
    },
}

fn default_momentum() -> f64 {
    0.9
}

fn default_wd() -> f64 {
    1e-4
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
        }
    }
}

impl OptimizerConfig {
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } => *lr,
        }
    }
}

/// Learning-rate schedule. Milestones count iterations when the run length is given in
/// iterations, and epochs when it is given in epochs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Constant,
    /// lr × gamma^(number of milestones passed) (the paper: ÷10 at 32k and 48k iterations).
    Multistep {
        milestones: Vec<u64>,
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Cosine decay from lr to `min_lr` over the run.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

/// A fixed, lower learning rate at the start: for `iterations` steps, or until the training
/// error (averaged since the last evaluation) falls below a threshold — the paper's
/// ResNet-110 recipe is `{ lr = 0.01, until_train_error_below = 0.8 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    pub lr: f64,
    #[serde(default)]
    pub iterations: Option<u64>,
    #[serde(default)]
    pub until_train_error_below: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvalEvery {
    Iterations(u64),
    Epoch(EpochWord),
}

/// The literal string "epoch".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpochWord {
    Epoch,
}

impl Default for EvalEvery {
    fn default() -> Self {
        EvalEvery::Epoch(EpochWord::Epoch)
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            iterations: None,
            epochs: Some(1),
            batch_size: default_batch(),
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::default(),
            warmup: None,
            eval_every: EvalEvery::default(),
            checkpoint_every: 1,
            seed: 1,
        }
    }
}

impl TrainConfig {
    /// Checks that need no data; messages name the key and the valid values.
    pub fn validate(&self) -> Result<(), String> {
        match (self.iterations, self.epochs) {
            (Some(_), Some(_)) => return Err("give either `iterations` or `epochs`, not both".into()),
            (None, None) => return Err("missing run length: give `iterations = N` or `epochs = N`".into()),
            (Some(0), _) | (_, Some(0)) => return Err("the run length must be at least 1".into()),
            _ => {}
        }
        if self.batch_size == 0 {
            return Err("`batch_size` must be at least 1".into());
        }
        let OptimizerConfig::Sgd {
            lr,
            momentum,
            weight_decay,
            nesterov,
        } = &self.optimizer;
        if !(*lr > 0.0 && lr.is_finite()) {
            return Err(format!("optimizer `lr` must be a positive number, got {lr}"));
        }
        if !(0.0..1.0).contains(momentum) {
            return Err(format!("optimizer `momentum` must be in [0, 1), got {momentum}"));
        }
        if *weight_decay < 0.0 {
            return Err(format!("optimizer `weight_decay` must be ≥ 0, got {weight_decay}"));
        }
        if *nesterov && *momentum == 0.0 {
            return Err("`nesterov = true` needs a momentum > 0".into());
        }
        if let Schedule::Multistep { milestones, gamma } = &self.schedule {
            if milestones.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("schedule `milestones` must increase, got {milestones:?}"));
            }
            if gamma.is_nan() || *gamma <= 0.0 {
                return Err(format!("schedule `gamma` must be positive, got {gamma}"));
            }
        }
        if let Some(w) = &self.warmup {
            if w.iterations.is_some() == w.until_train_error_below.is_some() {
                return Err("warmup needs exactly one of `iterations` or `until_train_error_below`".into());
            }
            if w.lr.is_nan() || w.lr <= 0.0 {
                return Err(format!("warmup `lr` must be positive, got {}", w.lr));
            }
        }
        if self.eval_every == EvalEvery::Iterations(0) {
            return Err("`eval_every` must be at least 1 (or \"epoch\")".into());
        }
        if self.checkpoint_every == 0 {
            return Err("`checkpoint_every` must be at least 1".into());
        }
        Ok(())
    }
}
