//! CIFAR-10 and CIFAR-100, "binary version": fixed-size records of label byte(s) followed by
//! 3072 pixel bytes, already channel-major (1024 red, 1024 green, 1024 blue, rows top first).

use std::path::{Path, PathBuf};

use super::{
    data_err, fetch, io_err, read_file, read_names, thousands, DatasetConfig, DatasetKind, Loaded, Probe, Split,
};
use crate::arch::InputShape;
use crate::Result;

const PIXELS: usize = 3 * 32 * 32;

/// The layout of one of the two data sets.
struct Layout {
    name: &'static str,
    /// Where `runner data fetch` gets it and the folder its archive extracts to.
    source: &'static fetch::Source,
    train: &'static [&'static str],
    test: &'static str,
    /// Label bytes before the pixels (CIFAR-100: coarse, fine).
    label_bytes: usize,
    /// Which label byte is used, and how many classes it has.
    label_at: usize,
    classes: usize,
    names: &'static str,
}

fn layout(cfg: &DatasetConfig) -> Layout {
    if cfg.kind == DatasetKind::Cifar10 {
        return Layout {
            name: "CIFAR-10",
            source: fetch::of(DatasetKind::Cifar10),
            train: &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            test: "test_batch.bin",
            label_bytes: 1,
            label_at: 0,
            classes: 10,
            names: "batches.meta.txt",
        };
    }
    let coarse = cfg.labels.as_deref() == Some("coarse");
    Layout {
        name: "CIFAR-100",
        source: fetch::of(DatasetKind::Cifar100),
        train: &["train.bin"],
        test: "test.bin",
        label_bytes: 2,
        label_at: if coarse { 0 } else { 1 },
        classes: if coarse { 20 } else { 100 },
        names: if coarse {
            "coarse_label_names.txt"
        } else {
            "fine_label_names.txt"
        },
    }
}

impl Layout {
    fn record(&self) -> usize {
        self.label_bytes + PIXELS
    }

    /// `dir`, or the directory the archive extracts to inside it when that is where the files are.
    fn resolve(&self, dir: &Path) -> PathBuf {
        let nested = dir.join(self.source.folder);
        if !dir.join(self.train[0]).exists() && nested.join(self.train[0]).exists() {
            nested
        } else {
            dir.to_path_buf()
        }
    }

    fn missing(&self, dir: &Path, file: &str) -> String {
        // The fetch writes DIR/<folder>: the parent of a path that names that folder.
        let fetch_dir = match dir.file_name() {
            Some(n) if n == self.source.folder => dir.parent().unwrap_or(dir),
            _ => dir,
        };
        format!(
            "missing {file}: `runner data fetch {} --dir {}` downloads and checks it (or download the binary \
             version of {} from {} and extract it so that {} exists)",
            self.source.name(),
            fetch_dir.display(),
            self.name,
            self.source.files[0].url,
            dir.join(self.train[0]).display()
        )
    }

    /// The number of records in a file of `bytes` bytes, or the error naming the incomplete one.
    fn records(&self, path: &Path, bytes: u64) -> Result<usize> {
        let rec = self.record() as u64;
        if bytes == 0 {
            return Err(data_err(
                path,
                format!("empty file: expected {rec}-byte {} records", self.name),
            ));
        }
        if !bytes.is_multiple_of(rec) {
            return Err(data_err(
                path,
                format!(
                    "truncated: {} bytes is not a multiple of {rec}-byte records (record {} incomplete)",
                    thousands(bytes),
                    bytes / rec
                ),
            ));
        }
        Ok((bytes / rec) as usize)
    }

    /// Reads one file: its pixels straight into NCHW, its labels checked against the class count.
    fn read(&self, dir: &Path, file: &str, into: &mut Split) -> Result<()> {
        let path = dir.join(file);
        let bytes = read_file(&path, &|| self.missing(dir, file))?;
        let n = self.records(&path, bytes.len() as u64)?;
        into.images.reserve(n * PIXELS);
        into.labels.reserve(n);
        for (i, rec) in bytes.chunks_exact(self.record()).enumerate() {
            let label = rec[self.label_at] as usize;
            if label >= self.classes {
                return Err(data_err(
                    &path,
                    format!(
                        "label {label} in record {i} is out of range for {} classes",
                        self.classes
                    ),
                ));
            }
            into.labels.push(label as u32);
            into.images.extend_from_slice(&rec[self.label_bytes..]);
        }
        Ok(())
    }
}

pub(super) fn check(dir: &Path, cfg: &DatasetConfig) -> Result<Probe> {
    let l = layout(cfg);
    let dir = l.resolve(dir);
    let (mut train_len, mut images) = (0, 0);
    for file in l.train.iter().chain([&l.test]) {
        let path = dir.join(file);
        let meta = std::fs::metadata(&path).map_err(|e| io_err(&path, e, &|| l.missing(&dir, file)))?;
        let n = l.records(&path, meta.len())?;
        if *file != l.test {
            train_len += n;
        }
        images += n;
    }
    Ok(Probe {
        shape: InputShape::CIFAR,
        classes: l.classes,
        train_len,
        images,
        has_val: false,
    })
}

pub(super) fn load(dir: &Path, cfg: &DatasetConfig) -> Result<Loaded> {
    let l = layout(cfg);
    let dir = l.resolve(dir);
    let mut train = Split::default();
    for file in l.train {
        l.read(&dir, file, &mut train)?;
    }
    let mut test = Split::default();
    l.read(&dir, l.test, &mut test)?;
    let class_names = read_names(&dir.join(l.names), l.classes);
    Ok(Loaded {
        shape: InputShape::CIFAR,
        classes: l.classes,
        class_names,
        train,
        val: None,
        test: Some(test),
    })
}
