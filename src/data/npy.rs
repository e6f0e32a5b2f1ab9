//! NumPy `.npy` arrays: `train_images.npy` (N,H,W,C or N,H,W uint8) with `train_labels.npy`
//! (N integers of any width and byte order), and optionally `test_images.npy` /
//! `test_labels.npy`. The header (format versions 1 to 3) is parsed here; images are converted
//! from NHWC to NCHW. The class count is one more than the largest training label.

use std::io::Read;
use std::path::Path;

use super::{data_err, file_name, io_err, thousands, Loaded, Probe, Split};
use crate::arch::InputShape;
use crate::Result;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Header {
    pub descr: String,
    pub shape: Vec<usize>,
    /// Where the data starts.
    pub offset: usize,
}

fn missing(dir: &Path, name: &str) -> String {
    format!(
        "missing {name}: an npy data set is train_images.npy (N,H,W,C or N,H,W uint8) and train_labels.npy \
         (N integers), optionally test_images.npy and test_labels.npy, in {}; write them with numpy.save",
        dir.display()
    )
}

/// Parses the header at the start of `bytes` (which may be just a prefix of the file).
pub(super) fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not an .npy file (no \\x93NUMPY magic string)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported .npy format version {v} (1, 2 and 3 are read)")),
    };
    let text = bytes
        .get(start..start + len)
        .ok_or_else(|| format!("truncated header: it announces {len} bytes"))?;
    let text = std::str::from_utf8(text).map_err(|_| "header is not text".to_string())?;
    let dict = PyDict::parse(text)?;
    let descr = match dict.get("descr") {
        Some(PyValue::Str(s)) => s.clone(),
        _ => return Err(format!("header has no `descr` string: {}", text.trim())),
    };
    match dict.get("fortran_order") {
        Some(PyValue::Bool(false)) => {}
        Some(PyValue::Bool(true)) => {
            return Err("fortran_order is True: save a C-ordered array (numpy.ascontiguousarray) instead".into())
        }
        _ => return Err(format!("header has no `fortran_order`: {}", text.trim())),
    }
    let shape = match dict.get("shape") {
        Some(PyValue::Tuple(s)) => s.clone(),
        _ => return Err(format!("header has no `shape` tuple: {}", text.trim())),
    };
    Ok(Header {
        descr,
        shape,
        offset: start + len,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// The tiny subset of Python literal syntax an `.npy` header uses: a dict of strings, booleans
/// and tuples of integers.
struct PyDict(Vec<(String, PyValue)>);

impl PyDict {
    fn get(&self, key: &str) -> Option<&PyValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn parse(text: &str) -> std::result::Result<PyDict, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let bad = |what: &str| format!("cannot parse header ({what}): {}", text.trim());
        let mut items = Vec::new();
        p.expect(b'{').ok_or_else(|| bad("expected `{`"))?;
        loop {
            p.ws();
            if p.eat(b'}') {
                break;
            }
            let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
            p.ws();
            p.expect(b':').ok_or_else(|| bad("expected `:`"))?;
            p.ws();
            let value = p.value().ok_or_else(|| bad(&format!("bad value for `{key}`")))?;
            items.push((key, value));
            p.ws();
            if !p.eat(b',') {
                p.ws();
                p.expect(b'}').ok_or_else(|| bad("expected `,` or `}`"))?;
                break;
            }
        }
        Ok(PyDict(items))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Option<()> {
        self.eat(c).then_some(())
    }

    fn string(&mut self) -> Option<String> {
        let q = *self.s.get(self.i)?;
        if q != b'\'' && q != b'"' {
            return None;
        }
        let end = self.s[self.i + 1..].iter().position(|&c| c == q)? + self.i + 1;
        let out = String::from_utf8(self.s[self.i + 1..end].to_vec()).ok()?;
        self.i = end + 1;
        Some(out)
    }

    fn word(&mut self, w: &str) -> bool {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            true
        } else {
            false
        }
    }

    fn int(&mut self) -> Option<usize> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let n = std::str::from_utf8(&self.s[start..self.i]).ok()?.parse().ok()?;
        self.eat(b'L'); // Python 2 wrote long integers as 3L.
        Some(n)
    }

    fn value(&mut self) -> Option<PyValue> {
        if self.word("True") {
            return Some(PyValue::Bool(true));
        }
        if self.word("False") {
            return Some(PyValue::Bool(false));
        }
        if self.eat(b'(') {
            let mut dims = Vec::new();
            loop {
                self.ws();
                if self.eat(b')') {
                    break;
                }
                dims.push(self.int()?);
                self.ws();
                if !self.eat(b',') {
                    self.ws();
                    self.expect(b')')?;
                    break;
                }
            }
            return Some(PyValue::Tuple(dims));
        }
        self.string().map(PyValue::Str)
    }
}

/// An integer dtype: its width in bytes, signedness and byte order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IntType {
    size: usize,
    signed: bool,
    big_endian: bool,
}

/// Parses `descr` as an integer dtype ("|u1", "<i8", ">u2", "=i4"…).
fn int_type(descr: &str) -> Option<IntType> {
    let (order, rest) = match descr.as_bytes().first()? {
        b'<' | b'>' | b'|' | b'=' => (descr.as_bytes()[0], &descr[1..]),
        _ => (b'=', descr),
    };
    let signed = match rest.as_bytes().first()? {
        b'i' => true,
        b'u' => false,
        _ => return None,
    };
    let size: usize = rest[1..].parse().ok()?;
    if ![1, 2, 4, 8].contains(&size) {
        return None;
    }
    Some(IntType {
        size,
        signed,
        big_endian: order == b'>' || (order == b'=' && cfg!(target_endian = "big")),
    })
}

fn read_header(path: &Path, dir: &Path) -> Result<(Header, u64)> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e, &|| missing(dir, &file_name(path))))?;
    let len = file
        .metadata()
        .map_err(|e| data_err(path, format!("cannot read: {e}")))?
        .len();
    // The header is padded to a multiple of 64 bytes and is rarely more than a few hundred.
    let mut prefix = Vec::new();
    (&mut file)
        .take(64 * 1024)
        .read_to_end(&mut prefix)
        .map_err(|e| data_err(path, format!("cannot read: {e}")))?;
    let h = parse_header(&prefix).map_err(|m| data_err(path, m))?;
    Ok((h, len))
}

/// Checks the data length against the header; `item` names the records for the message.
fn check_len(path: &Path, h: &Header, file_len: u64, item_bytes: usize, item: &str) -> Result<()> {
    let n = h.shape.first().copied().unwrap_or(0) as u64;
    let want = h.offset as u64 + n * item_bytes as u64;
    if file_len < want {
        let have = file_len.saturating_sub(h.offset as u64);
        return Err(data_err(
            path,
            format!(
                "truncated: {} bytes of data, but shape {:?} needs {} ({item} {} incomplete)",
                thousands(have),
                h.shape,
                thousands(n * item_bytes as u64),
                have / item_bytes.max(1) as u64
            ),
        ));
    }
    if file_len > want {
        return Err(data_err(
            path,
            format!(
                "{} bytes of trailing data after the {:?} array",
                thousands(file_len - want),
                h.shape
            ),
        ));
    }
    Ok(())
}

/// Checks an images header: uint8, (N,H,W) or (N,H,W,C); returns (N, shape).
fn image_header(path: &Path, h: &Header, file_len: u64) -> Result<(usize, InputShape)> {
    if !matches!(h.descr.as_str(), "|u1" | "<u1" | ">u1" | "=u1" | "u1") {
        return Err(data_err(
            path,
            format!("dtype {} is not uint8: save images with .astype(numpy.uint8)", h.descr),
        ));
    }
    let shape = match h.shape[..] {
        [_, height, width] => InputShape {
            channels: 1,
            height,
            width,
        },
        [_, height, width, channels] if (1..=4).contains(&channels) => InputShape {
            channels,
            height,
            width,
        },
        [_, c, _, _] if (1..=4).contains(&c) => {
            return Err(data_err(
                path,
                format!(
                "shape {:?} looks channels-first (N,C,H,W): save images as (N,H,W,C), e.g. with .transpose(0, 2, 3, 1)",
                h.shape
            ),
            ))
        }
        _ => {
            return Err(data_err(
                path,
                format!("shape {:?} is not (N,H,W,C) with 1 to 4 channels, nor (N,H,W)", h.shape),
            ))
        }
    };
    if shape.height == 0 || shape.width == 0 {
        return Err(data_err(path, format!("shape {:?} has empty images", h.shape)));
    }
    let per = shape.channels * shape.height * shape.width;
    check_len(path, h, file_len, per, "image")?;
    Ok((h.shape[0], shape))
}

/// Checks a labels header: an integer dtype, shape (N,) or (N, 1).
fn label_header(path: &Path, h: &Header, file_len: u64) -> Result<(usize, IntType)> {
    let t = int_type(&h.descr).ok_or_else(|| {
        data_err(
            path,
            format!(
                "dtype {} is not an integer type: labels must be integers (e.g. int64)",
                h.descr
            ),
        )
    })?;
    let n = match h.shape[..] {
        [n] | [n, 1] => n,
        _ => {
            return Err(data_err(
                path,
                format!("shape {:?} is not (N,): one label per image", h.shape),
            ))
        }
    };
    check_len(path, h, file_len, t.size, "label")?;
    Ok((n, t))
}

/// Decodes labels; an error names the first negative one or one too big for a u32.
fn decode_labels(path: &Path, data: &[u8], t: IntType) -> Result<Vec<u32>> {
    data.chunks_exact(t.size)
        .enumerate()
        .map(|(i, b)| {
            let mut buf = [0u8; 8];
            let u = if t.big_endian {
                buf[8 - t.size..].copy_from_slice(b);
                u64::from_be_bytes(buf)
            } else {
                buf[..t.size].copy_from_slice(b);
                u64::from_le_bytes(buf)
            };
            let v: i128 = if t.signed {
                // Sign-extend from `size` bytes.
                let shift = 64 - 8 * t.size as u32;
                (((u << shift) as i64) >> shift) as i128
            } else {
                u as i128
            };
            u32::try_from(v).map_err(|_| {
                data_err(
                    path,
                    format!("label {v} in record {i} is not a class index (0 or more)"),
                )
            })
        })
        .collect()
}

/// Reads a pair of files: the images in NCHW and the labels.
fn read_pair(dir: &Path, images: &str, labels: &str) -> Result<(Split, InputShape)> {
    let ip = dir.join(images);
    let lp = dir.join(labels);
    let ib = std::fs::read(&ip).map_err(|e| io_err(&ip, e, &|| missing(dir, images)))?;
    let lb = std::fs::read(&lp).map_err(|e| io_err(&lp, e, &|| missing(dir, labels)))?;
    let ih = parse_header(&ib).map_err(|m| data_err(&ip, m))?;
    let lh = parse_header(&lb).map_err(|m| data_err(&lp, m))?;
    let (n, shape) = image_header(&ip, &ih, ib.len() as u64)?;
    let (nl, t) = label_header(&lp, &lh, lb.len() as u64)?;
    counts_match(&lp, nl, n, images)?;
    let labels = decode_labels(&lp, &lb[lh.offset..], t)?;
    let (c, plane) = (shape.channels, shape.height * shape.width);
    let per = c * plane;
    let mut out = vec![0u8; n * per];
    for (src, dst) in ib[ih.offset..].chunks_exact(per).zip(out.chunks_exact_mut(per)) {
        for (p, px) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * plane + p] = v;
            }
        }
    }
    Ok((Split { images: out, labels }, shape))
}

fn counts_match(labels: &Path, nl: usize, n: usize, images: &str) -> Result<()> {
    if nl != n {
        return Err(data_err(
            labels,
            format!(
                "{} labels for the {} images of {images}",
                thousands(nl as u64),
                thousands(n as u64)
            ),
        ));
    }
    Ok(())
}

fn check_range(path: &Path, labels: &[u32], classes: usize) -> Result<()> {
    if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
        return Err(data_err(
            path,
            format!(
                "label {} in record {i} is out of range for {classes} classes (one more than the largest training label)",
                labels[i]
            ),
        ));
    }
    Ok(())
}

fn classes_of(labels: &[u32]) -> usize {
    labels.iter().max().map_or(0, |&m| m as usize + 1)
}

pub(super) fn check(dir: &Path) -> Result<Probe> {
    let (ip, lp) = (dir.join("train_images.npy"), dir.join("train_labels.npy"));
    let (ih, ilen) = read_header(&ip, dir)?;
    let (n, shape) = image_header(&ip, &ih, ilen)?;
    // Labels are small: read them whole, for the class count.
    let lb = std::fs::read(&lp).map_err(|e| io_err(&lp, e, &|| missing(dir, "train_labels.npy")))?;
    let lh = parse_header(&lb).map_err(|m| data_err(&lp, m))?;
    let (nl, t) = label_header(&lp, &lh, lb.len() as u64)?;
    counts_match(&lp, nl, n, "train_images.npy")?;
    let classes = classes_of(&decode_labels(&lp, &lb[lh.offset..], t)?);
    let (tip, tlp) = (dir.join("test_images.npy"), dir.join("test_labels.npy"));
    let mut images = n;
    if tip.exists() || tlp.exists() {
        let (th, tlen) = read_header(&tip, dir)?;
        let (tn, tshape) = image_header(&tip, &th, tlen)?;
        same_shape(&tip, tshape, shape)?;
        let tb = std::fs::read(&tlp).map_err(|e| io_err(&tlp, e, &|| missing(dir, "test_labels.npy")))?;
        let tlh = parse_header(&tb).map_err(|m| data_err(&tlp, m))?;
        let (tnl, tt) = label_header(&tlp, &tlh, tb.len() as u64)?;
        counts_match(&tlp, tnl, tn, "test_images.npy")?;
        check_range(&tlp, &decode_labels(&tlp, &tb[tlh.offset..], tt)?, classes)?;
        images += tn;
    }
    Ok(Probe {
        shape,
        classes,
        train_len: n,
        images,
        has_val: false,
    })
}

fn same_shape(path: &Path, test: InputShape, train: InputShape) -> Result<()> {
    if test != train {
        return Err(data_err(
            path,
            format!("test images are {test} but training images are {train}"),
        ));
    }
    Ok(())
}

pub(super) fn load(dir: &Path) -> Result<Loaded> {
    let (train, shape) = read_pair(dir, "train_images.npy", "train_labels.npy")?;
    let classes = classes_of(&train.labels);
    let test = if dir.join("test_images.npy").exists() || dir.join("test_labels.npy").exists() {
        let (test, tshape) = read_pair(dir, "test_images.npy", "test_labels.npy")?;
        same_shape(&dir.join("test_images.npy"), tshape, shape)?;
        check_range(&dir.join("test_labels.npy"), &test.labels, classes)?;
        Some(test)
    } else {
        None
    };
    Ok(Loaded {
        shape,
        classes,
        class_names: None,
        train,
        val: None,
        test,
    })
}
