//! Batch streams: training batches made on a background thread, and evaluation batches in
//! order.
//!
//! A training batch is a pure function of (seed, step): the epoch's permutation is seeded by
//! (seed, epoch) and each sample's augmentation by (seed, step, position in the batch). So a run
//! resumed at step k sees exactly the batches an uninterrupted run would, and nothing depends
//! on thread timing.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{Augment, Dataset, Normalizer, Split};
use crate::arch::InputShape;
use crate::rng::Rng;

/// One batch, ready to become tensors: images B×C×H×W f32, labels B.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub len: usize,
}

/// Full batches in one pass over `train_len` images (the last partial batch is dropped); 0 when
/// the training set is smaller than one batch.
pub fn batches_per_epoch(train_len: usize, batch_size: usize) -> u64 {
    train_len.checked_div(batch_size).unwrap_or(0) as u64
}

/// Batches ready before the training step asks for them.
const DEPTH: usize = 4;

/// Training batches for steps `start..end`, produced on a background thread. Yields nothing
/// when the training set is smaller than one batch. Dropping it stops the thread.
pub struct TrainBatches {
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl TrainBatches {
    pub fn new(
        data: Arc<Dataset>,
        norm: Arc<Normalizer>,
        augment: Vec<Augment>,
        batch_size: usize,
        seed: u64,
        start: u64,
        end: u64,
    ) -> TrainBatches {
        let (tx, rx) = sync_channel(DEPTH);
        let worker = std::thread::Builder::new().name("train-batches".into()).spawn(move || {
            let mut maker = Maker::new(&data, &norm, &augment, batch_size, seed);
            for step in start..end {
                let Some(batch) = maker.batch(step) else { return };
                if tx.send(batch).is_err() {
                    return; // The consumer is gone.
                }
            }
        });
        // Without a thread (the OS refused one) the stream is empty, which the trainer reports
        // as running out of data rather than hanging.
        let (rx, worker) = match worker {
            Ok(h) => (Some(rx), Some(h)),
            Err(_) => (None, None),
        };
        TrainBatches { rx, worker }
    }
}

impl Iterator for TrainBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for TrainBatches {
    fn drop(&mut self) {
        // Closing the receiver makes a blocked `send` fail, so the worker exits promptly.
        self.rx.take();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

/// Builds the batch of any step, caching the current epoch's permutation.
struct Maker<'a> {
    data: &'a Dataset,
    norm: &'a Normalizer,
    augment: &'a [Augment],
    fill: Vec<f32>,
    batch_size: usize,
    seed: u64,
    per_epoch: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl<'a> Maker<'a> {
    fn new(data: &'a Dataset, norm: &'a Normalizer, augment: &'a [Augment], batch_size: usize, seed: u64) -> Self {
        Maker {
            data,
            norm,
            augment,
            fill: norm.fill(),
            batch_size,
            seed,
            per_epoch: batches_per_epoch(data.train.len(), batch_size),
            epoch: None,
        }
    }

    fn batch(&mut self, step: u64) -> Option<Batch> {
        if self.per_epoch == 0 {
            return None;
        }
        let (epoch, b) = (step / self.per_epoch, (step % self.per_epoch) as usize);
        if self.epoch.as_ref().map(|(e, _)| *e) != Some(epoch) {
            let mut perm: Vec<usize> = (0..self.data.train.len()).collect();
            Rng::derive(self.seed, "epoch", epoch).shuffle(&mut perm);
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref()?.1;
        let idx = &perm[b * self.batch_size..(b + 1) * self.batch_size];
        let shape = self.data.shape;
        let per = shape.channels * shape.height * shape.width;
        let mut images = vec![0.0f32; idx.len() * per];
        let mut tmp = vec![0.0f32; per];
        let train = &self.data.train;
        for (i, (&j, out)) in idx.iter().zip(images.chunks_exact_mut(per)).enumerate() {
            self.norm.apply(&train.images[j * per..(j + 1) * per], out);
            let mut rng = Rng::derive(
                self.seed,
                "augment",
                step.wrapping_mul(self.batch_size as u64) + i as u64,
            );
            for a in self.augment {
                a.apply(out, &mut tmp, &self.fill, shape, &mut rng);
            }
        }
        Some(Batch {
            images,
            labels: idx.iter().map(|&j| train.labels[j]).collect(),
            len: idx.len(),
        })
    }
}

/// Evaluation batches over a split in order (no augmentation; the last batch may be short).
pub fn eval_batches<'a>(
    split: &'a Split,
    shape: InputShape,
    norm: &'a Normalizer,
    batch_size: usize,
) -> impl Iterator<Item = Batch> + 'a {
    let per = shape.channels * shape.height * shape.width;
    let bs = batch_size.max(1);
    (0..split.len().div_ceil(bs)).map(move |b| {
        let (lo, hi) = (b * bs, ((b + 1) * bs).min(split.len()));
        let mut images = vec![0.0f32; (hi - lo) * per];
        for (img, out) in split.images[lo * per..hi * per]
            .chunks_exact(per)
            .zip(images.chunks_exact_mut(per))
        {
            norm.apply(img, out);
        }
        Batch {
            images,
            labels: split.labels[lo..hi].to_vec(),
            len: hi - lo,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Normalize;

    fn dataset(n: usize) -> Dataset {
        let shape = InputShape {
            channels: 2,
            height: 4,
            width: 4,
        };
        let mut r = Rng::new(9);
        Dataset {
            shape,
            classes: 3,
            class_names: None,
            train: Split {
                images: (0..n * 32).map(|_| r.below(256) as u8).collect(),
                labels: (0..n).map(|i| (i % 3) as u32).collect(),
            },
            val: Split::default(),
            test: None,
            source: "test".into(),
        }
    }

    fn stream(data: &Arc<Dataset>, seed: u64, start: u64, end: u64) -> Vec<Batch> {
        let norm = Arc::new(Normalizer::fit(Normalize::PerChannel, &data.train, data.shape));
        TrainBatches::new(
            data.clone(),
            norm,
            vec![Augment::PadCrop(1), Augment::HFlip],
            8,
            seed,
            start,
            end,
        )
        .collect()
    }

    #[test]
    fn resuming_at_step_k_yields_the_tail_of_the_full_run() {
        let data = Arc::new(dataset(30)); // 3 batches per epoch, 6 images dropped each epoch
        let full = stream(&data, 5, 0, 10);
        assert_eq!(full.len(), 10);
        for k in [1, 3, 7] {
            assert_eq!(stream(&data, 5, k, 10), full[k as usize..], "resumed at {k}");
        }
        assert_ne!(stream(&data, 6, 0, 10), full, "the seed changes the stream");
    }

    #[test]
    fn each_epoch_visits_distinct_images_in_a_new_order() {
        let data = Arc::new(dataset(24)); // exactly 3 batches per epoch
        let norm = Arc::new(Normalizer::fit(Normalize::None, &data.train, data.shape));
        // Without augmentation a batch image is an exact training image: find which.
        let per = 32;
        let find = |img: &[f32]| {
            (0..24)
                .find(|&j| {
                    data.train.images[j * per..(j + 1) * per]
                        .iter()
                        .zip(img)
                        .all(|(&u, &f)| (u as f32 / 255.0 - f).abs() < 1e-6)
                })
                .unwrap()
        };
        let batches: Vec<Batch> = TrainBatches::new(data.clone(), norm, vec![], 8, 1, 0, 6).collect();
        let order: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.images.chunks_exact(per).map(find).collect::<Vec<_>>())
            .collect();
        for epoch in order.chunks(24) {
            let mut e = epoch.to_vec();
            e.sort_unstable();
            assert_eq!(e, (0..24).collect::<Vec<_>>());
        }
        assert_ne!(order[..24], order[24..]);
        for (b, batch) in batches.iter().enumerate() {
            let idx = &order[b * 8..(b + 1) * 8];
            assert_eq!(
                batch.labels,
                idx.iter().map(|&j| data.train.labels[j]).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn dropping_early_stops_the_worker() {
        let data = Arc::new(dataset(16));
        let norm = Arc::new(Normalizer::fit(Normalize::None, &data.train, data.shape));
        let mut it = TrainBatches::new(data, norm, vec![], 4, 0, 0, u64::MAX);
        assert_eq!(it.next().map(|b| b.len), Some(4));
        drop(it); // joins the worker: returning at all is the assertion
    }

    #[test]
    fn too_small_a_training_set_yields_nothing() {
        let data = Arc::new(dataset(3));
        assert_eq!(batches_per_epoch(3, 8), 0);
        assert!(stream(&data, 1, 0, 5).is_empty());
    }

    #[test]
    fn eval_batches_cover_the_split_in_order_with_a_short_last_batch() {
        let data = dataset(10);
        let norm = Normalizer::fit(Normalize::None, &data.train, data.shape);
        let batches: Vec<Batch> = eval_batches(&data.train, data.shape, &norm, 4).collect();
        assert_eq!(batches.iter().map(|b| b.len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let labels: Vec<u32> = batches.iter().flat_map(|b| b.labels.clone()).collect();
        assert_eq!(labels, data.train.labels);
        let pixels: Vec<f32> = batches.iter().flat_map(|b| b.images.clone()).collect();
        assert_eq!(pixels.len(), data.train.images.len());
        let worst = pixels
            .iter()
            .zip(&data.train.images)
            .map(|(&f, &u)| (f - u as f32 / 255.0).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "pixels differ from x/255 by up to {worst}");
    }
}
