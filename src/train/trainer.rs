//! The trainer: runs one trial end to end and reports what happens as [`Event`]s.
//!
//! It knows nothing about SQL or terminals. The caller runs [`train`] on a thread of its own
//! and turns the events into database rows and progress bars; a slow disk never stalls a step.
//!
//! The run is a pure function of the trial's configuration, its seed and the thread count:
//! initial weights come from the seed, data order and augmentation from (seed, step), so a run
//! resumed from a `last` checkpoint produces the metrics an uninterrupted one would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, ModuleT, Tensor};

use super::checkpoint::{self, LoopState};
use super::config::EvalEvery;
use super::optim::Sgd;
use super::schedule::{self, Position};
use crate::data::{self, Augment, Batch, Dataset, Normalizer, Split};
use crate::grid::TrialSpec;
use crate::nn::ParamStore;
use crate::{Error, Result};

/// Evaluation batches are larger than training ones: no activations are kept for a backward pass.
const EVAL_BATCH: usize = 256;

/// One trial to train.
pub struct Trial<'a> {
    pub spec: &'a TrialSpec,
    pub data: Arc<Dataset>,
    pub norm: Arc<Normalizer>,
    pub device: Device,
    /// Continue from a `last` checkpoint (and the `best` one recorded before it).
    pub resume: Option<Resume>,
    /// Set by Ctrl-C: finish the current step, write a `last` checkpoint and stop.
    pub stop: Arc<AtomicBool>,
}

pub struct Resume {
    pub last: Vec<u8>,
    pub best: Option<Vec<u8>>,
}

#[derive(Debug)]
pub enum Event {
    /// Training is about to start (or continue) at `step` of `total` steps.
    Started { step: u64, total: u64 },
    /// A training step finished.
    Step { step: u64, loss: f64, lr: f64 },
    /// Metrics and checkpoints to record together.
    Record(Evaluation),
    /// The trial ended; no event follows.
    Finished(Outcome),
}

/// What to record at a step: metrics and the checkpoints they justify, in one transaction.
#[derive(Debug, Default)]
pub struct Evaluation {
    /// Steps completed.
    pub step: u64,
    pub epoch: f64,
    /// (split, name, value): splits `train`, `val`, `test`; names `loss`, `error`, `lr`.
    pub metrics: Vec<(&'static str, &'static str, f64)>,
    /// A new best validation error and the weights that reached it.
    pub best: Option<(f64, Vec<u8>)>,
    /// A resumable checkpoint.
    pub last: Option<Vec<u8>>,
    /// Mean training loss since the previous evaluation.
    pub train_loss: Option<f64>,
    /// Training throughput since the previous evaluation (evaluation time excluded).
    pub images_per_s: Option<f64>,
    /// Wall time of the trial so far, earlier attempts included.
    pub wall_s: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Trained to the end; the test error of the validation-best weights when there is a test set.
    Done {
        test_error: Option<f64>,
        wall_s: f64,
    },
    Failed {
        error: String,
        wall_s: f64,
    },
    /// Stopped by Ctrl-C after writing a `last` checkpoint.
    Interrupted,
}

/// Trains the trial, sending events to `tx`; always ends with [`Event::Finished`] (unless the
/// receiver is gone, which means nobody is listening any more and the work is moot).
pub fn train(trial: Trial, tx: &Sender<Event>) {
    let started = Instant::now();
    let outcome = match Run::new(&trial, tx) {
        Ok(mut run) => run.go().unwrap_or_else(|e| Outcome::Failed {
            error: format!("{e:#}"),
            wall_s: run.wall_s(),
        }),
        Err(e) => Outcome::Failed {
            error: format!("{e:#}"),
            wall_s: started.elapsed().as_secs_f64(),
        },
    };
    let _ = tx.send(Event::Finished(outcome));
}

struct Run<'a> {
    trial: &'a Trial<'a>,
    tx: &'a Sender<Event>,
    params: ParamStore,
    model: Box<dyn ModuleT + Send>,
    sgd: Sgd,
    state: LoopState,
    best_bytes: Option<Vec<u8>>,
    steps_per_epoch: u64,
    total: u64,
    evaluations: u64,
    /// When this attempt started, and the wall time of earlier ones.
    clock: Instant,
    earlier_wall_s: f64,
}

impl<'a> Run<'a> {
    fn new(trial: &'a Trial<'a>, tx: &'a Sender<Event>) -> Result<Run<'a>> {
        let spec = trial.spec;
        let cfg = &spec.train;
        let params = ParamStore::new(cfg.seed);
        let vb = params.var_builder(&trial.device);
        let model = spec
            .arch
            .build(&spec.params, trial.data.shape, trial.data.classes, vb)?;
        let mut sgd = Sgd::new(params.trainable(), &cfg.optimizer);
        let steps_per_epoch = data::batches_per_epoch(trial.data.train.len(), cfg.batch_size);
        if steps_per_epoch == 0 {
            return Err(Error::Usage(format!(
                "the training split has {} images, fewer than one batch of {}",
                trial.data.train.len(),
                cfg.batch_size
            )));
        }
        let mut state = LoopState {
            step: 0,
            warming_up: cfg.warmup.is_some(),
            best_val_error: None,
            best_step: None,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            wall_s: 0.0,
        };
        let mut best_bytes = None;
        if let Some(resume) = &trial.resume {
            let last = checkpoint::decode_last(&resume.last, &trial.device)?;
            params.load(&last.model)?;
            sgd.load_state(&last.momentum)?;
            state = last.state;
            best_bytes = resume.best.clone();
        }
        let total = schedule::total_steps(cfg, steps_per_epoch);
        let evaluations = state.step / eval_interval(cfg.eval_every, steps_per_epoch);
        Ok(Run {
            trial,
            tx,
            params,
            model,
            sgd,
            earlier_wall_s: state.wall_s,
            state,
            best_bytes,
            steps_per_epoch,
            total,
            evaluations,
            clock: Instant::now(),
        })
    }

    fn wall_s(&self) -> f64 {
        self.earlier_wall_s + self.clock.elapsed().as_secs_f64()
    }

    fn send(&self, e: Event) {
        // A closed channel means the caller is gone; the trial ends at its next check.
        let _ = self.tx.send(e);
    }

    fn go(&mut self) -> Result<Outcome> {
        let cfg = &self.trial.spec.train;
        self.send(Event::Started {
            step: self.state.step,
            total: self.total,
        });
        let augment = cfg_augment(&self.trial.spec.dataset.augment)?;
        let batches = data::TrainBatches::new(
            self.trial.data.clone(),
            self.trial.norm.clone(),
            augment,
            cfg.batch_size,
            cfg.seed,
            self.state.step,
            self.total,
        );
        let mut interval_train_s = 0.0;
        for batch in batches {
            let t0 = Instant::now();
            let step = self.state.step;
            let lr = schedule::learning_rate(
                cfg,
                Position {
                    step,
                    steps_per_epoch: self.steps_per_epoch,
                    warming_up: self.state.warming_up,
                },
            );
            let images = batch.len as u64;
            // dropout masks from (seed, step), so a resumed trial draws the masks it would have
            crate::nn::set_step(cfg.seed, step);
            let (loss, correct) = self.train_step(batch, lr)?;
            if !loss.is_finite() {
                return Ok(Outcome::Failed {
                    error: format!("diverged at step {} (loss = {loss})", step + 1),
                    wall_s: self.wall_s(),
                });
            }
            self.state.step += 1;
            self.state.loss_sum += loss;
            self.state.correct += correct;
            self.state.seen += images;
            if let Some(w) = &cfg.warmup {
                self.state.warming_up = schedule::still_warming_up(w, self.state.warming_up, step, None);
            }
            interval_train_s += t0.elapsed().as_secs_f64();
            self.send(Event::Step {
                step: self.state.step,
                loss,
                lr,
            });
            let done = self.state.step == self.total;
            if done || is_eval_step(cfg.eval_every, self.state.step, self.steps_per_epoch) {
                let images = self.state.seen as f64;
                let mut ev = self.evaluate(lr)?;
                ev.images_per_s = (interval_train_s > 0.0).then(|| images / interval_train_s);
                self.evaluations += 1;
                // Every record says how long the trial has trained (its progress and time left
                // are read from it); the resumable state advances only with a checkpoint.
                ev.wall_s = self.wall_s();
                if done || self.evaluations.is_multiple_of(cfg.checkpoint_every) {
                    self.state.wall_s = ev.wall_s;
                    ev.last = Some(self.encode_last()?);
                }
                self.send(Event::Record(ev));
                interval_train_s = 0.0;
            }
            if self.trial.stop.load(Ordering::SeqCst) && !done {
                self.state.wall_s = self.wall_s();
                self.send(Event::Record(Evaluation {
                    step: self.state.step,
                    epoch: self.epoch(),
                    last: Some(self.encode_last()?),
                    wall_s: self.state.wall_s,
                    ..Evaluation::default()
                }));
                return Ok(Outcome::Interrupted);
            }
        }
        self.finish()
    }

    /// Forward, loss, backward, update. Returns the batch's mean loss and correct count.
    fn train_step(&mut self, batch: Batch, lr: f64) -> Result<(f64, u64)> {
        let (x, y, labels) = self.tensors(batch)?;
        let logits = self.model.forward_t(&x, true)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Ok((loss_value, 0));
        }
        let grads = loss.backward()?;
        self.sgd.step(&grads, lr)?;
        Ok((loss_value, correct(&logits, &labels)?))
    }

    /// The batch as tensors (its images moved into the input, not copied, on the CPU) and its labels.
    fn tensors(&self, batch: Batch) -> Result<(Tensor, Tensor, Vec<u32>)> {
        let s = self.trial.data.shape;
        let x = Tensor::from_vec(
            batch.images,
            (batch.len, s.channels, s.height, s.width),
            &self.trial.device,
        )?;
        let y = Tensor::from_slice(&batch.labels, batch.len, &self.trial.device)?;
        Ok((x, y, batch.labels))
    }

    fn epoch(&self) -> f64 {
        self.state.step as f64 / self.steps_per_epoch as f64
    }

    /// Training metrics since the last evaluation, validation metrics, and a new best.
    fn evaluate(&mut self, lr: f64) -> Result<Evaluation> {
        let cfg = &self.trial.spec.train;
        let mut ev = Evaluation {
            step: self.state.step,
            epoch: self.epoch(),
            ..Evaluation::default()
        };
        if self.state.seen > 0 {
            // Every training batch is full (a last partial batch is dropped), so this is the step count.
            let steps = (self.state.seen / cfg.batch_size as u64).max(1) as f64;
            let train_loss = self.state.loss_sum / steps;
            let train_error = 1.0 - self.state.correct as f64 / self.state.seen as f64;
            ev.metrics.push(("train", "loss", train_loss));
            ev.metrics.push(("train", "error", train_error));
            ev.train_loss = Some(train_loss);
            if let Some(w) = &cfg.warmup {
                self.state.warming_up =
                    schedule::still_warming_up(w, self.state.warming_up, self.state.step, Some(train_error));
            }
        }
        ev.metrics.push(("train", "lr", lr));
        self.state.loss_sum = 0.0;
        self.state.correct = 0;
        self.state.seen = 0;
        let data = self.trial.data.clone();
        if !data.val.is_empty() {
            let (loss, error) = self.score(&data.val)?;
            ev.metrics.push(("val", "loss", loss));
            ev.metrics.push(("val", "error", error));
            if self.state.best_val_error.is_none_or(|b| error < b) {
                let bytes = checkpoint::encode_best(&self.params.tensors()?)?;
                self.state.best_val_error = Some(error);
                self.state.best_step = Some(self.state.step);
                self.best_bytes = Some(bytes.clone());
                ev.best = Some((error, bytes));
            }
        }
        Ok(ev)
    }

    /// Mean loss and error over a split, in evaluation mode.
    fn score(&self, split: &Split) -> Result<(f64, f64)> {
        let (mut loss_sum, mut correct_n, mut n) = (0.0, 0u64, 0usize);
        for batch in data::eval_batches(split, self.trial.data.shape, &self.trial.norm, EVAL_BATCH) {
            let len = batch.len;
            let (x, y, labels) = self.tensors(batch)?;
            let logits = self.model.forward_t(&x, false)?.detach();
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
            loss_sum += loss * len as f64;
            correct_n += correct(&logits, &labels)?;
            n += len;
        }
        let n = n.max(1) as f64;
        Ok((loss_sum / n, 1.0 - correct_n as f64 / n))
    }

    fn encode_last(&self) -> Result<Vec<u8>> {
        checkpoint::encode_last(&self.state, &self.params.tensors()?, &self.sgd.state())
    }

    /// The test error of the validation-best weights (never chosen on the test set), or of the
    /// final weights when there is no validation split.
    fn finish(&mut self) -> Result<Outcome> {
        let data = self.trial.data.clone();
        let mut test_error = None;
        if let Some(test) = data.test.as_ref().filter(|t| !t.is_empty()) {
            if let Some(best) = &self.best_bytes {
                let tensors: BTreeMap<String, Tensor> = checkpoint::decode_best(best, &self.trial.device)?;
                self.params.load(&tensors)?;
            }
            let (loss, error) = self.score(test)?;
            test_error = Some(error);
            self.send(Event::Record(Evaluation {
                step: self.state.step,
                epoch: self.epoch(),
                metrics: vec![("test", "loss", loss), ("test", "error", error)],
                wall_s: self.wall_s(),
                ..Evaluation::default()
            }));
        }
        Ok(Outcome::Done {
            test_error,
            wall_s: self.wall_s(),
        })
    }
}

/// Steps between evaluations.
fn eval_interval(every: EvalEvery, steps_per_epoch: u64) -> u64 {
    match every {
        EvalEvery::Iterations(n) => n,
        EvalEvery::Epoch(_) => steps_per_epoch,
    }
    .max(1)
}

/// Whether `step` (steps completed) ends an evaluation interval.
fn is_eval_step(every: EvalEvery, step: u64, steps_per_epoch: u64) -> bool {
    step > 0 && step.is_multiple_of(eval_interval(every, steps_per_epoch))
}

fn cfg_augment(names: &[String]) -> Result<Vec<Augment>> {
    names.iter().map(|a| Augment::parse(a).map_err(Error::Usage)).collect()
}

/// The number of rows whose largest logit is at the label.
fn correct(logits: &Tensor, labels: &[u32]) -> Result<u64> {
    let predicted: Vec<u32> = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1()?;
    Ok(predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as u64)
}
