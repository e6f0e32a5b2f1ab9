//! The trainer end to end on small synthetic data: learning, warm-up, determinism, resume,
//! divergence.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use candle_core::Device;

use super::checkpoint;
use super::trainer::{train, Evaluation, Event, Outcome, Resume, Trial};
use crate::data::{self, Dataset, Normalizer};
use crate::grid::{self, TrialSpec};

/// A one-trial grid on synthetic data; `train` is the body of the `[train]` table.
fn spec(arch: &str, train: &str, data: &str) -> TrialSpec {
    let src = format!(
        "[experiment]\nname = \"t\"\n[dataset]\nkind = \"synthetic\"\n{data}\n[train]\n{train}\n\
         [grid]\narch = [\"{arch}\"]\ndepth = [8]\n"
    );
    let g = grid::parse(Path::new("t.toml"), &src).expect("test grid parses");
    assert_eq!(g.trials.len(), 1);
    g.trials.into_iter().next().expect("one trial")
}

const SMALL: &str = "train = 512\ntest = 256\nvalidation = 128\naugment = [\"pad-crop:4\", \"hflip\"]";

fn dataset(spec: &TrialSpec) -> (Arc<Dataset>, Arc<Normalizer>) {
    let d = data::load(&spec.dataset, Path::new("."), spec.train.seed).expect("synthetic data");
    let n = Normalizer::fit(spec.dataset.normalize, &d.train, d.shape);
    (Arc::new(d), Arc::new(n))
}

struct Ran {
    records: Vec<Evaluation>,
    outcome: Outcome,
}

impl Ran {
    fn metric(&self, split: &str, name: &str) -> Vec<(u64, f64)> {
        self.records
            .iter()
            .flat_map(|r| {
                r.metrics
                    .iter()
                    .filter(|(s, n, _)| *s == split && *n == name)
                    .map(|m| (r.step, m.2))
            })
            .collect()
    }

    fn last_checkpoint_before(&self, step: u64) -> Vec<u8> {
        self.records
            .iter()
            .filter(|r| r.step <= step)
            .filter_map(|r| r.last.clone())
            .next_back()
            .expect("a last checkpoint")
    }

    fn best_before(&self, step: u64) -> Option<Vec<u8>> {
        self.records
            .iter()
            .filter(|r| r.step <= step)
            .filter_map(|r| r.best.as_ref().map(|b| b.1.clone()))
            .next_back()
    }
}

fn run(spec: &TrialSpec, resume: Option<Resume>, stop: Arc<AtomicBool>) -> Ran {
    let (data, norm) = dataset(spec);
    let trial = Trial {
        spec,
        data,
        norm,
        device: Device::Cpu,
        resume,
        stop,
    };
    let (tx, rx) = mpsc::channel();
    train(trial, &tx);
    drop(tx);
    let mut records = Vec::new();
    let mut outcome = None;
    for e in rx {
        match e {
            Event::Record(r) => records.push(r),
            Event::Finished(o) => outcome = Some(o),
            Event::Started { .. } | Event::Step { .. } => {}
        }
    }
    Ran {
        records,
        outcome: outcome.expect("a Finished event"),
    }
}

fn go(spec: &TrialSpec) -> Ran {
    run(spec, None, Arc::new(AtomicBool::new(false)))
}

#[test]
fn a_small_resnet_learns_the_synthetic_data() {
    let s = spec(
        "resnet",
        "iterations = 120\nbatch_size = 32\neval_every = 40\n\
         optimizer = { kind = \"sgd\", lr = 0.05 }",
        SMALL,
    );
    let r = go(&s);
    let Outcome::Done { test_error, .. } = r.outcome else {
        panic!("not done: {:?}", r.outcome)
    };
    let val = r.metric("val", "error");
    assert_eq!(val.iter().map(|v| v.0).collect::<Vec<_>>(), vec![40, 80, 120]);
    let best = val.iter().map(|v| v.1).fold(1.0, f64::min);
    // Chance is 90% error on 10 balanced classes.
    assert!(best < 0.6, "best validation error {best}");
    let test_error = test_error.expect("synthetic data has a test set");
    assert!(test_error < 0.65, "test error {test_error}");
    // The test error is measured with the validation-best weights, once, at the end.
    assert_eq!(r.metric("test", "error"), vec![(120, test_error)]);
}

/// Turns Candle's own ops on for this thread until dropped (also when a test fails).
struct ReferenceOps;

impl ReferenceOps {
    fn on() -> ReferenceOps {
        crate::nn::use_reference_ops(true);
        ReferenceOps
    }
}

impl Drop for ReferenceOps {
    fn drop(&mut self) {
        crate::nn::use_reference_ops(false);
    }
}

#[test]
fn our_kernels_train_as_well_as_candles_own_ops() {
    // Same seed, data, initial weights and batches: only the convolution, batch-norm and
    // residual kernels differ, so the runs agree up to rounding, which training amplifies.
    let s = spec(
        "resnet",
        "iterations = 30\nbatch_size = 16\neval_every = 15\n\
         optimizer = { kind = \"sgd\", lr = 0.05 }",
        SMALL,
    );
    let ours = go(&s);
    let reference = {
        let _on = ReferenceOps::on();
        go(&s)
    };
    // Tolerances: 2% of the training loss at each evaluation, and 8 of the 128 validation
    // images. Measured: losses agree to 0.1%, validation errors to 4 images.
    for ((step, a), (_, b)) in ours
        .metric("train", "loss")
        .into_iter()
        .zip(reference.metric("train", "loss"))
    {
        assert!(
            (a - b).abs() <= 0.02 * b,
            "train loss at step {step}: ours {a}, Candle's {b}"
        );
    }
    let (va, vb) = (ours.metric("val", "error"), reference.metric("val", "error"));
    assert_eq!(va.len(), 2);
    for ((step, a), (_, b)) in va.into_iter().zip(vb) {
        assert!(
            (a - b).abs() <= 0.0625,
            "validation error at step {step}: ours {a}, Candle's {b}"
        );
    }
    eprintln!(
        "loss {:?} {:?}",
        ours.metric("train", "loss"),
        reference.metric("train", "loss")
    );
}

#[test]
fn the_same_seed_gives_the_same_metrics_and_another_seed_does_not() {
    let train = "iterations = 6\nbatch_size = 16\neval_every = 3";
    let a = go(&spec("resnet", train, SMALL));
    let b = go(&spec("resnet", train, SMALL));
    assert_eq!(a.metric("train", "loss"), b.metric("train", "loss"));
    assert_eq!(a.metric("val", "loss"), b.metric("val", "loss"));
    let c = go(&spec("resnet", &format!("{train}\nseed = 2"), SMALL));
    assert_ne!(a.metric("train", "loss"), c.metric("train", "loss"));
}

#[test]
fn a_resumed_run_continues_exactly_as_an_uninterrupted_one() {
    let s = spec("resnet", "iterations = 9\nbatch_size = 16\neval_every = 3", SMALL);
    let full = go(&s);
    // Resume from the checkpoint written at step 3, as a restarted runner would.
    let resume = Resume {
        last: full.last_checkpoint_before(3),
        best: full.best_before(3),
    };
    let rest = run(&s, Some(resume), Arc::new(AtomicBool::new(false)));
    assert_eq!(rest.outcome, full.outcome.clone().with_wall_s_of(&rest.outcome));
    for (split, name) in [
        ("train", "loss"),
        ("train", "error"),
        ("val", "loss"),
        ("test", "error"),
    ] {
        let tail: Vec<_> = full.metric(split, name).into_iter().filter(|m| m.0 > 3).collect();
        assert_eq!(rest.metric(split, name), tail, "{split}/{name}");
    }
}

#[test]
fn a_stop_request_ends_the_run_with_a_resumable_checkpoint() {
    let s = spec("plain", "iterations = 50\nbatch_size = 16\neval_every = 25", SMALL);
    let r = run(&s, None, Arc::new(AtomicBool::new(true)));
    assert_eq!(r.outcome, Outcome::Interrupted);
    // It stops after the first step, with a checkpoint at that step.
    let last = r.records.last().expect("a record");
    assert_eq!(last.step, 1);
    let bytes = last.last.as_ref().expect("a last checkpoint");
    let state = checkpoint::decode_last(bytes, &Device::Cpu).unwrap().state;
    assert_eq!(state.step, 1);
    assert_eq!(state.seen, 16);
}

#[test]
fn a_huge_learning_rate_fails_the_trial_as_diverged() {
    let s = spec(
        "plain",
        "iterations = 50\nbatch_size = 16\noptimizer = { kind = \"sgd\", lr = 1e6 }",
        SMALL,
    );
    let r = go(&s);
    match &r.outcome {
        Outcome::Failed { error, .. } => assert!(error.starts_with("diverged at step "), "{error}"),
        o => panic!("expected a divergence, got {o:?}"),
    }
}

#[test]
fn warm_up_for_a_count_then_the_schedule() {
    let s = spec(
        "plain",
        "iterations = 8\nbatch_size = 16\neval_every = 2\n\
         optimizer = { kind = \"sgd\", lr = 0.1 }\nwarmup = { lr = 0.01, iterations = 4 }",
        SMALL,
    );
    let lr = go(&s).metric("train", "lr");
    assert_eq!(lr, vec![(2, 0.01), (4, 0.01), (6, 0.1), (8, 0.1)]);
}

#[test]
fn warm_up_until_the_training_error_falls_below_a_threshold() {
    let train = |threshold: f64| {
        format!(
            "iterations = 6\nbatch_size = 16\neval_every = 2\n\
             optimizer = {{ kind = \"sgd\", lr = 0.1 }}\nwarmup = {{ lr = 0.01, until_train_error_below = {threshold} }}"
        )
    };
    // Any error is below 1.5: warm-up ends at the first evaluation.
    let lr = go(&spec("plain", &train(1.5), SMALL)).metric("train", "lr");
    assert_eq!(lr, vec![(2, 0.01), (4, 0.1), (6, 0.1)]);
    // No error is below 0: warm-up never ends.
    let lr = go(&spec("plain", &train(0.0), SMALL)).metric("train", "lr");
    assert_eq!(lr, vec![(2, 0.01), (4, 0.01), (6, 0.01)]);
}

impl Outcome {
    /// The same outcome with another's wall time, to compare everything else.
    fn with_wall_s_of(self, other: &Outcome) -> Outcome {
        let w = match other {
            Outcome::Done { wall_s, .. } | Outcome::Failed { wall_s, .. } => *wall_s,
            Outcome::Interrupted => 0.0,
        };
        match self {
            Outcome::Done { test_error, .. } => Outcome::Done { test_error, wall_s: w },
            Outcome::Failed { error, .. } => Outcome::Failed { error, wall_s: w },
            o => o,
        }
    }
}
