//! MNIST (and look-alikes such as Fashion-MNIST) in LeCun's IDX format, plain or gzipped:
//! a big-endian header (magic 2051 for images with count, rows, columns; 2049 for labels with
//! count), then one byte per pixel or label.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{data_err, file_name, io_err, thousands, Loaded, Probe, Split};
use crate::arch::InputShape;
use crate::Result;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;
const CLASSES: usize = 10;

const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

fn missing(dir: &Path, name: &str) -> String {
    // The fetch writes DIR/mnist.
    let fetch = match dir.file_name() {
        Some(n) if n == "mnist" => format!(
            "`runner data fetch mnist --dir {}`",
            dir.parent().unwrap_or(dir).display()
        ),
        _ => format!(
            "`runner data fetch mnist --dir {}` (then `path` = its mnist folder)",
            dir.display()
        ),
    };
    format!(
        "missing {name} (or {name}.gz): {fetch} downloads and checks them (or download the four MNIST files \
         ({TRAIN_IMAGES}.gz, {TRAIN_LABELS}.gz, {TEST_IMAGES}.gz, {TEST_LABELS}.gz) from \
         https://yann.lecun.com/exdb/mnist/ or a mirror such as https://ossci-datasets.s3.amazonaws.com/mnist/ \
         into {})",
        dir.display()
    )
}

/// The file for `name`: the plain one when present, else the `.gz` one.
fn locate(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(data_err(&plain, missing(dir, name)))
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "gz")
}

/// An IDX header: the magic number and the dimensions.
struct Header {
    dims: Vec<usize>,
    /// Bytes of header before the data.
    len: usize,
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the header of `bytes` (at least the header's length of them).
fn header(path: &Path, bytes: &[u8], magic: u32) -> Result<Header> {
    let ndims = if magic == IMAGES_MAGIC { 3 } else { 1 };
    let len = 4 + 4 * ndims;
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b && !is_gz(path) {
        return Err(data_err(
            path,
            "this file is gzip-compressed: name it with a .gz suffix",
        ));
    }
    if bytes.len() < len {
        return Err(data_err(
            path,
            format!(
                "truncated: {} bytes is shorter than the {len}-byte IDX header",
                bytes.len()
            ),
        ));
    }
    let found = be_u32(bytes);
    if found != magic {
        let what = if magic == IMAGES_MAGIC {
            "an IDX file of unsigned bytes with 3 dimensions (images)"
        } else {
            "an IDX file of unsigned bytes with 1 dimension (labels)"
        };
        return Err(data_err(
            path,
            format!("bad magic number {found} (0x{found:08x}): expected {magic} (0x{magic:08x}), {what}"),
        ));
    }
    let dims: Vec<usize> = (0..ndims).map(|i| be_u32(&bytes[4 + 4 * i..]) as usize).collect();
    if dims[1..].contains(&0) {
        return Err(data_err(path, format!("image size {}×{} is empty", dims[1], dims[2])));
    }
    Ok(Header { dims, len })
}

/// The first `n` bytes of a file (decompressed), or fewer if it is shorter.
fn read_prefix(path: &Path, n: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e, &|| "missing".into()))?;
    let mut buf = Vec::with_capacity(n);
    let r: Box<dyn Read> = if is_gz(path) {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    r.take(n as u64)
        .read_to_end(&mut buf)
        .map_err(|e| data_err(path, format!("cannot read: {e}")))?;
    Ok(buf)
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e, &|| "missing".into()))?;
    if !is_gz(path) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    GzDecoder::new(&bytes[..])
        .read_to_end(&mut out)
        .map_err(|e| data_err(path, format!("cannot decompress: {e}")))?;
    Ok(out)
}

/// Checks that a file holds exactly the records its header announces.
fn check_len(path: &Path, h: &Header, have: u64) -> Result<()> {
    let per: usize = h.dims[1..].iter().product();
    let want = h.len as u64 + h.dims[0] as u64 * per as u64;
    if have < want {
        let what = if h.dims.len() == 3 { "image" } else { "label" };
        return Err(data_err(
            path,
            format!(
                "truncated: {} bytes, but the header announces {} {what}s ({} bytes; {what} {} incomplete)",
                thousands(have),
                thousands(h.dims[0] as u64),
                thousands(want),
                (have.saturating_sub(h.len as u64)) / per as u64
            ),
        ));
    }
    if have > want {
        return Err(data_err(
            path,
            format!(
                "{} bytes, but the header announces {} records ({} bytes): trailing data",
                thousands(have),
                thousands(h.dims[0] as u64),
                thousands(want)
            ),
        ));
    }
    Ok(())
}

/// Checks a pair's headers (and, for plain files, their sizes); returns (count, rows, cols).
fn check_pair(dir: &Path, images: &str, labels: &str) -> Result<(usize, usize, usize)> {
    let ip = locate(dir, images)?;
    let lp = locate(dir, labels)?;
    let ih = header(&ip, &read_prefix(&ip, 16)?, IMAGES_MAGIC)?;
    let lh = header(&lp, &read_prefix(&lp, 8)?, LABELS_MAGIC)?;
    // A gzipped file's size says nothing about its content; those are checked when loaded.
    for (p, h) in [(&ip, &ih), (&lp, &lh)] {
        if !is_gz(p) {
            let len = std::fs::metadata(p)
                .map_err(|e| data_err(p, format!("cannot read: {e}")))?
                .len();
            check_len(p, h, len)?;
        }
    }
    if ih.dims[0] != lh.dims[0] {
        return Err(data_err(
            &lp,
            format!(
                "{} labels for the {} images of {}",
                thousands(lh.dims[0] as u64),
                thousands(ih.dims[0] as u64),
                file_name(&ip)
            ),
        ));
    }
    Ok((ih.dims[0], ih.dims[1], ih.dims[2]))
}

fn read_pair(dir: &Path, images: &str, labels: &str) -> Result<(Split, usize, usize)> {
    let (n, rows, cols) = check_pair(dir, images, labels)?;
    let (ip, lp) = (locate(dir, images)?, locate(dir, labels)?);
    let ib = read_all(&ip)?;
    let lb = read_all(&lp)?;
    let ih = header(&ip, &ib, IMAGES_MAGIC)?;
    let lh = header(&lp, &lb, LABELS_MAGIC)?;
    check_len(&ip, &ih, ib.len() as u64)?;
    check_len(&lp, &lh, lb.len() as u64)?;
    let labels: Vec<u32> = lb[lh.len..].iter().map(|&b| b as u32).collect();
    if let Some(i) = labels.iter().position(|&l| l as usize >= CLASSES) {
        return Err(data_err(
            &lp,
            format!(
                "label {} in record {i} is out of range for {CLASSES} classes",
                labels[i]
            ),
        ));
    }
    debug_assert_eq!(labels.len(), n);
    Ok((
        Split {
            images: ib[ih.len..].to_vec(),
            labels,
        },
        rows,
        cols,
    ))
}

pub(super) fn check(dir: &Path) -> Result<Probe> {
    let (n, rows, cols) = check_pair(dir, TRAIN_IMAGES, TRAIN_LABELS)?;
    let (tn, trows, tcols) = check_pair(dir, TEST_IMAGES, TEST_LABELS)?;
    same_size(dir, (rows, cols), (trows, tcols))?;
    Ok(Probe {
        shape: InputShape {
            channels: 1,
            height: rows,
            width: cols,
        },
        classes: CLASSES,
        train_len: n,
        images: n + tn,
        has_val: false,
    })
}

fn same_size(dir: &Path, train: (usize, usize), test: (usize, usize)) -> Result<()> {
    if train != test {
        return Err(data_err(
            &dir.join(TEST_IMAGES),
            format!(
                "test images are {}×{} but training images are {}×{}",
                test.0, test.1, train.0, train.1
            ),
        ));
    }
    Ok(())
}

pub(super) fn load(dir: &Path) -> Result<Loaded> {
    let (train, rows, cols) = read_pair(dir, TRAIN_IMAGES, TRAIN_LABELS)?;
    let (test, trows, tcols) = read_pair(dir, TEST_IMAGES, TEST_LABELS)?;
    same_size(dir, (rows, cols), (trows, tcols))?;
    Ok(Loaded {
        shape: InputShape {
            channels: 1,
            height: rows,
            width: cols,
        },
        classes: CLASSES,
        // Digits for MNIST, but Fashion-MNIST has the same files: names would be a guess.
        class_names: None,
        train,
        val: None,
        test: Some(test),
    })
}
