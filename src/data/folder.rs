//! A folder of image files, one subdirectory per class: `train/<class>/*.png|jpg|jpeg`, and
//! optionally `val/<class>/…` (the validation split) and `test/<class>/…`. Class names are the
//! sorted subdirectory names of `train/`; every image is converted to RGB (or grey) and resized
//! to the configured size with a triangle filter.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::ImageReader;
use rayon::prelude::*;

use super::{data_err, DatasetConfig, Loaded, Probe, Split};
use crate::arch::InputShape;
use crate::Result;

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// The files of one split: (path, class index), in a fixed order.
type Listing = Vec<(PathBuf, u32)>;

fn shape(cfg: &DatasetConfig) -> InputShape {
    let [height, width] = cfg.size.unwrap_or([0, 0]);
    InputShape {
        channels: cfg.channels.unwrap_or(3),
        height,
        width,
    }
}

/// Visible subdirectories of `dir`, sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_err(dir, format!("cannot list: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| data_err(dir, format!("cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Image files directly inside `dir`, sorted; other files (notes, thumbnails databases) are
/// skipped.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| data_err(dir, format!("cannot list: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| data_err(dir, format!("cannot list: {e}")))?.path();
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if EXTENSIONS.contains(&ext.as_str()) && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The class names (from `train/`) and the listing of every split present.
struct Layout {
    names: Vec<String>,
    train: Listing,
    val: Option<Listing>,
    test: Option<Listing>,
}

fn list(root: &Path) -> Result<Layout> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(data_err(
            &train_dir,
            format!(
                "missing train/: a folder data set is {}/train/<class>/*.png|jpg|jpeg, with optional val/ and test/ alike",
                root.display()
            ),
        ));
    }
    let classes = class_dirs(&train_dir)?;
    if classes.is_empty() {
        return Err(data_err(
            &train_dir,
            "no class subdirectories: expected train/<class>/*.png|jpg|jpeg",
        ));
    }
    let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
    let mut train = Vec::new();
    for (i, (_, dir)) in classes.iter().enumerate() {
        let files = images_in(dir)?;
        if files.is_empty() {
            return Err(data_err(dir, "no .png, .jpg or .jpeg images in this class directory"));
        }
        train.extend(files.into_iter().map(|f| (f, i as u32)));
    }
    let other = |split: &str| -> Result<Option<Listing>> {
        let dir = root.join(split);
        if !dir.is_dir() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (name, sub) in class_dirs(&dir)? {
            let Some(i) = names.iter().position(|n| *n == name) else {
                return Err(data_err(
                    &sub,
                    format!("class `{name}` is not in train/ (classes: {})", names.join(", ")),
                ));
            };
            out.extend(images_in(&sub)?.into_iter().map(|f| (f, i as u32)));
        }
        Ok(Some(out))
    };
    let val = other("val")?;
    let test = other("test")?;
    Ok(Layout {
        names,
        train,
        val,
        test,
    })
}

fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| data_err(path, format!("cannot read: {e}")))
}

/// Decodes one image into `out` (C×H×W).
fn decode(path: &Path, shape: InputShape, out: &mut [u8]) -> Result<()> {
    let img = reader(path)?
        .decode()
        .map_err(|e| data_err(path, format!("cannot decode image: {e}")))?;
    let (h, w) = (shape.height as u32, shape.width as u32);
    let plane = shape.height * shape.width;
    if shape.channels == 1 {
        let mut g = img.to_luma8();
        if g.dimensions() != (w, h) {
            g = image::imageops::resize(&g, w, h, FilterType::Triangle);
        }
        out.copy_from_slice(g.as_raw());
    } else {
        let mut rgb = img.to_rgb8();
        if rgb.dimensions() != (w, h) {
            rgb = image::imageops::resize(&rgb, w, h, FilterType::Triangle);
        }
        for (p, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + p] = px[c];
            }
        }
    }
    Ok(())
}

fn read_split(files: &Listing, shape: InputShape) -> Result<Split> {
    let per = shape.channels * shape.height * shape.width;
    let mut images = vec![0u8; files.len() * per];
    images
        .par_chunks_mut(per.max(1))
        .zip(files.par_iter())
        .try_for_each(|(out, (path, _))| decode(path, shape, out))?;
    Ok(Split {
        images,
        labels: files.iter().map(|(_, l)| *l).collect(),
    })
}

pub(super) fn check(root: &Path, cfg: &DatasetConfig) -> Result<Probe> {
    let l = list(root)?;
    // Headers only: a file that is not an image is caught here, before anything trains.
    let all = l
        .train
        .iter()
        .chain(l.val.iter().flatten())
        .chain(l.test.iter().flatten());
    all.collect::<Vec<_>>().par_iter().try_for_each(|(path, _)| {
        reader(path)?
            .into_dimensions()
            .map(|_| ())
            .map_err(|e| data_err(path, format!("not a readable image: {e}")))
    })?;
    Ok(Probe {
        shape: shape(cfg),
        classes: l.names.len(),
        train_len: l.train.len(),
        images: l.train.len() + l.val.as_ref().map_or(0, Vec::len) + l.test.as_ref().map_or(0, Vec::len),
        has_val: l.val.is_some(),
    })
}

pub(super) fn load(root: &Path, cfg: &DatasetConfig) -> Result<Loaded> {
    let l = list(root)?;
    let shape = shape(cfg);
    Ok(Loaded {
        shape,
        classes: l.names.len(),
        train: read_split(&l.train, shape)?,
        val: l.val.as_ref().map(|f| read_split(f, shape)).transpose()?,
        test: l.test.as_ref().map(|f| read_split(f, shape)).transpose()?,
        class_names: Some(l.names),
    })
}
