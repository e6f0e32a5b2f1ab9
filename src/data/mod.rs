//! Datasets: loading images and labels from their on-disk formats into memory, splitting off
//! validation, normalising, augmenting, and producing batches.
//!
//! Every format loads into the same shape: u8 images, C×H×W each, back to back (NCHW), plus
//! u32 labels. One file per format reads it ([`cifar`], [`mnist`], [`folder`], [`npy`],
//! [`synthetic`]); this file owns the `[dataset]` table, the validation hold-out and the
//! dispatch. [`transform`] owns normalisation and augmentation, [`batches`] the batch streams.

mod batches;
mod cifar;
pub mod fetch;
mod folder;
mod mnist;
mod npy;
mod synthetic;
mod transform;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::InputShape;
use crate::rng::Rng;
use crate::{Error, Result};

pub use batches::{batches_per_epoch, eval_batches, Batch, TrainBatches};
pub use transform::{Augment, Normalizer};

/// The `[dataset]` table of a grid file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub kind: DatasetKind,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub validation: Validation,
    #[serde(default)]
    pub augment: Vec<String>,
    #[serde(default)]
    pub normalize: Normalize,
    #[serde(default)]
    pub labels: Option<String>,
    #[serde(default)]
    pub size: Option<[usize; 2]>,
    #[serde(default)]
    pub channels: Option<usize>,
    #[serde(default)]
    pub train: Option<usize>,
    #[serde(default)]
    pub test: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Synthetic,
    Cifar10,
    Cifar100,
    Mnist,
    Folder,
    Npy,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Folder => "folder",
            DatasetKind::Npy => "npy",
        }
    }
}

/// How much of the training set to hold out for validation: a count of images, or a fraction
/// in (0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Validation {
    Count(usize),
    Fraction(f64),
}

impl Default for Validation {
    fn default() -> Self {
        Validation::Count(0)
    }
}

impl Validation {
    fn is_none(self) -> bool {
        self == Validation::Count(0)
    }

    /// The number of images held out of `n` training images.
    fn count(self, n: usize) -> usize {
        match self {
            Validation::Count(k) => k,
            Validation::Fraction(f) => (f * n as f64).round() as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// Subtract the training set's mean image (He et al. 2015, §4.2), then scale by 1/255.
    PerPixelMean,
    /// Subtract each channel's training mean and divide by its standard deviation.
    #[default]
    PerChannel,
    /// Scale to [0, 1].
    None,
}

/// Synthetic set sizes when the grid does not give them.
pub const SYNTHETIC_TRAIN: usize = 10_000;
pub const SYNTHETIC_TEST: usize = 2_000;

const KINDS: &str = "synthetic, cifar10, cifar100, mnist, folder, npy";

impl DatasetConfig {
    /// Checks that need no file: options given only for their kind, values in range.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind;
        let only = |key: &str, given: bool, allowed: &[DatasetKind]| -> Result<(), String> {
            if given && !allowed.contains(&kind) {
                let names: Vec<_> = allowed.iter().map(|k| k.name()).collect();
                return Err(format!(
                    "`{key}` applies only to kind = {}, not `{}`",
                    names.join(" or "),
                    kind.name()
                ));
            }
            Ok(())
        };
        match (kind, &self.path) {
            (DatasetKind::Synthetic, Some(_)) => {
                return Err("`path` does not apply to kind = synthetic (it is generated from the seed)".into())
            }
            (DatasetKind::Synthetic, None) => {}
            (k, None) => {
                return Err(format!(
                    "kind = {} needs `path`, the directory holding the files (kinds: {KINDS})",
                    k.name()
                ))
            }
            (_, Some(p)) if p.as_os_str().is_empty() => return Err("`path` must not be empty".into()),
            _ => {}
        }
        only("labels", self.labels.is_some(), &[DatasetKind::Cifar100])?;
        if let Some(l) = &self.labels {
            if l != "fine" && l != "coarse" {
                return Err(format!("labels = \"{l}\" is not one of: fine, coarse"));
            }
        }
        only("size", self.size.is_some(), &[DatasetKind::Folder])?;
        only("channels", self.channels.is_some(), &[DatasetKind::Folder])?;
        if kind == DatasetKind::Folder {
            match self.size {
                None => return Err("kind = folder needs `size = [H, W]`, the size images are resized to".into()),
                Some([h, w]) if h == 0 || w == 0 => return Err(format!("size = [{h}, {w}] must be positive")),
                _ => {}
            }
        }
        if let Some(c) = self.channels {
            if c != 1 && c != 3 {
                return Err(format!("channels = {c} is not one of: 1 (grey), 3 (RGB)"));
            }
        }
        only("train", self.train.is_some(), &[DatasetKind::Synthetic])?;
        only("test", self.test.is_some(), &[DatasetKind::Synthetic])?;
        if self.train == Some(0) {
            return Err("train = 0: the synthetic set needs at least one training image".into());
        }
        match self.validation {
            Validation::Fraction(f) if !(f > 0.0 && f < 1.0) => {
                return Err(format!(
                    "validation = {f}: give a count of images or a fraction strictly between 0 and 1"
                ))
            }
            Validation::Count(k) if kind == DatasetKind::Synthetic => {
                let n = self.train.unwrap_or(SYNTHETIC_TRAIN);
                if k >= n {
                    return Err(format!("validation = {k} leaves no training images out of train = {n}"));
                }
            }
            _ => {}
        }
        for a in &self.augment {
            Augment::parse(a)?;
        }
        Ok(())
    }

    /// The augmentations, parsed (validated by [`DatasetConfig::validate`]).
    pub fn augmentations(&self) -> std::result::Result<Vec<Augment>, String> {
        self.augment.iter().map(|a| Augment::parse(a)).collect()
    }
}

/// Images and their labels: `images` holds `len` images of C×H×W u8 values, back to back.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `idx`, in that order.
    fn select(&self, idx: &[usize], per_image: usize) -> Split {
        let mut images = Vec::with_capacity(idx.len() * per_image);
        for &i in idx {
            images.extend_from_slice(&self.images[i * per_image..(i + 1) * per_image]);
        }
        Split {
            images,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

// Printing megabytes of pixels helps nobody.
impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Split {{ {} images }}", self.len())
    }
}

/// A dataset in memory, with its splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub shape: InputShape,
    pub classes: usize,
    pub class_names: Option<Vec<String>>,
    pub train: Split,
    pub val: Split,
    pub test: Option<Split>,
    /// Where it came from, for people reading the store: "cifar10 at data/cifar-10-batches-bin".
    pub source: String,
}

/// What a format's loader returns before validation is held out.
struct Loaded {
    shape: InputShape,
    classes: usize,
    class_names: Option<Vec<String>>,
    train: Split,
    /// A validation split the format ships (a folder's `val/`).
    val: Option<Split>,
    test: Option<Split>,
}

/// What a format's cheap check learns from headers and sizes.
struct Probe {
    shape: InputShape,
    classes: usize,
    train_len: usize,
    /// Images of every split together.
    images: usize,
    /// Whether the format ships its own validation split.
    has_val: bool,
}

/// What a data set is, as far as planning goes: the input shape, the class count, and how
/// many images (all splits) it holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSize {
    pub shape: InputShape,
    pub classes: usize,
    pub images: usize,
}

/// Cheap check that the files exist and have the right headers/sizes, without decoding all
/// images; returns the input shape, class count and image count.
pub fn check(cfg: &DatasetConfig, base: &Path) -> Result<DataSize> {
    cfg.validate().map_err(|m| config_err(cfg, base, m))?;
    let probe = match cfg.kind {
        DatasetKind::Synthetic => Probe {
            shape: InputShape::CIFAR,
            classes: synthetic::CLASSES,
            train_len: cfg.train.unwrap_or(SYNTHETIC_TRAIN),
            images: synthetic_images(cfg),
            has_val: false,
        },
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => cifar::check(&dir(cfg, base), cfg)?,
        DatasetKind::Mnist => mnist::check(&dir(cfg, base))?,
        DatasetKind::Folder => folder::check(&dir(cfg, base), cfg)?,
        DatasetKind::Npy => npy::check(&dir(cfg, base))?,
    };
    validation_count(cfg, base, probe.train_len, probe.has_val)?;
    Ok(DataSize {
        shape: probe.shape,
        classes: probe.classes,
        images: probe.images,
    })
}

fn synthetic_images(cfg: &DatasetConfig) -> usize {
    let (train, test) = (cfg.train.unwrap_or(SYNTHETIC_TRAIN), cfg.test.unwrap_or(SYNTHETIC_TEST));
    train.saturating_add(test)
}

/// The size a kind always has, without reading anything (cifar10 60,000 images of 3×32×32 in
/// 10 classes, cifar100 the same in 100 or 20 coarse, mnist 70,000 of 1×28×28 in 10, synthetic
/// 3×32×32 in 10 as configured); `None` for kinds whose shape comes from the files (folder, npy).
pub fn nominal_size(cfg: &DatasetConfig) -> Option<DataSize> {
    let cifar = |classes| DataSize {
        shape: InputShape::CIFAR,
        classes,
        images: 60_000,
    };
    match cfg.kind {
        DatasetKind::Synthetic => Some(DataSize {
            shape: InputShape::CIFAR,
            classes: synthetic::CLASSES,
            images: synthetic_images(cfg),
        }),
        DatasetKind::Cifar10 => Some(cifar(10)),
        DatasetKind::Cifar100 => Some(cifar(if cfg.labels.as_deref() == Some("coarse") {
            20
        } else {
            100
        })),
        DatasetKind::Mnist => Some(DataSize {
            shape: InputShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            classes: 10,
            images: 70_000,
        }),
        DatasetKind::Folder | DatasetKind::Npy => None,
    }
}

/// Loads, splits off validation with `seed`.
pub fn load(cfg: &DatasetConfig, base: &Path, seed: u64) -> Result<Dataset> {
    cfg.validate().map_err(|m| config_err(cfg, base, m))?;
    let (loaded, source) = match cfg.kind {
        DatasetKind::Synthetic => {
            let (train_n, test_n) = (cfg.train.unwrap_or(SYNTHETIC_TRAIN), cfg.test.unwrap_or(SYNTHETIC_TEST));
            let loaded = Loaded {
                shape: InputShape::CIFAR,
                classes: synthetic::CLASSES,
                class_names: Some(synthetic::class_names()),
                train: synthetic::generate(train_n, seed, "synthetic-train"),
                val: None,
                test: (test_n > 0).then(|| synthetic::generate(test_n, seed, "synthetic-test")),
            };
            (
                loaded,
                format!("synthetic ({train_n} train, {test_n} test, seed {seed})"),
            )
        }
        kind => {
            let d = dir(cfg, base);
            let loaded = match kind {
                DatasetKind::Cifar10 | DatasetKind::Cifar100 => cifar::load(&d, cfg)?,
                DatasetKind::Mnist => mnist::load(&d)?,
                DatasetKind::Folder => folder::load(&d, cfg)?,
                _ => npy::load(&d)?,
            };
            (loaded, format!("{} at {}", kind.name(), d.display()))
        }
    };
    let per_image = loaded.shape.channels * loaded.shape.height * loaded.shape.width;
    let k = validation_count(cfg, base, loaded.train.len(), loaded.val.is_some())?;
    let (train, val) = match loaded.val {
        Some(val) => (loaded.train, val),
        None => hold_out(loaded.train, per_image, k, seed),
    };
    Ok(Dataset {
        shape: loaded.shape,
        classes: loaded.classes,
        class_names: loaded.class_names,
        train,
        val,
        test: loaded.test,
        source,
    })
}

/// How many training images become validation; an error when that leaves none to train on, or
/// when the format has its own validation split as well.
fn validation_count(cfg: &DatasetConfig, base: &Path, train_len: usize, has_val: bool) -> Result<usize> {
    if has_val {
        if !cfg.validation.is_none() {
            return Err(config_err(
                cfg,
                base,
                "the folder has a val/ directory, which is the validation split: remove `validation`, or remove val/ to hold images out of train/".into(),
            ));
        }
        return Ok(0);
    }
    let k = cfg.validation.count(train_len);
    if k >= train_len {
        return Err(config_err(
            cfg,
            base,
            format!("validation = {k} images leaves none of the {train_len} training images to train on"),
        ));
    }
    Ok(k)
}

/// Splits `train` into (train, validation) with `k` validation images: a permutation seeded by
/// `seed`, whose first `k` indices are validation. Both keep the original order, so the split
/// is a pure function of (data, k, seed).
fn hold_out(train: Split, per_image: usize, k: usize, seed: u64) -> (Split, Split) {
    if k == 0 {
        return (train, Split::default());
    }
    let mut idx: Vec<usize> = (0..train.len()).collect();
    Rng::derive(seed, "validation", 0).shuffle(&mut idx);
    let (val_idx, train_idx) = idx.split_at_mut(k);
    val_idx.sort_unstable();
    train_idx.sort_unstable();
    (train.select(train_idx, per_image), train.select(val_idx, per_image))
}

/// The dataset directory: `path` resolved against the grid file's directory.
fn dir(cfg: &DatasetConfig, base: &Path) -> PathBuf {
    let p = cfg.path.clone().unwrap_or_default();
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// An error about the dataset as a whole (no single file to blame): names its directory.
fn config_err(cfg: &DatasetConfig, base: &Path, message: String) -> Error {
    let path = match cfg.path {
        Some(_) => dir(cfg, base),
        None => PathBuf::from(cfg.kind.name()),
    };
    Error::Data { path, message }
}

pub(crate) fn data_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads a whole file, naming it in the error; a missing file gets `missing_hint`.
pub(crate) fn read_file(path: &Path, missing_hint: &dyn Fn() -> String) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_err(path, e, missing_hint))
}

pub(crate) fn io_err(path: &Path, e: std::io::Error, missing_hint: &dyn Fn() -> String) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        data_err(path, missing_hint())
    } else {
        data_err(path, format!("cannot read: {e}"))
    }
}

/// The file name alone, for messages that already name the directory.
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// 30000000 → "30,000,000": byte counts people can read.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Optional class names, one per non-empty line; ignored unless there is one per class.
pub(crate) fn read_names(path: &Path, classes: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (names.len() == classes).then_some(names)
}
