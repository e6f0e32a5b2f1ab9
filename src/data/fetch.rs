//! `runner data fetch`: download a data set from its official location (or a mirror, or an
//! archive already on disk), check it against its published checksum, and unpack it into the
//! layout its `kind` reads, so that the shipped grids' `path` works as written.
//!
//! Everything is staged in `DIR/.fetch/`: the download grows in `FILE.part` (a later fetch, or
//! a retry after a dropped connection, resumes it with an HTTP range request), and the archive
//! is unpacked beside it; only a complete, checked and unpacked data set is renamed into place,
//! with a `.fetched` record of what it is. A wrong checksum, a damaged archive or a path that
//! would leave DIR removes the staging and leaves DIR as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use super::{data_err, DatasetConfig, DatasetKind};
use crate::{Error, Result};

/// A data set that `runner data fetch` knows. Which files make it complete is the loader's to
/// say: a folder is complete when [`super::check`] reads it as its `kind`.
pub struct Source {
    pub kind: DatasetKind,
    /// The folder it ends up in, under DIR: the one its grids' `path` names.
    pub folder: &'static str,
    pub files: &'static [Remote],
    /// Whether each file is a `.tar.gz` whose top folder is `folder` (else the files are kept
    /// as they are, in `folder`: MNIST's `.gz` files are read as they are).
    pub archive: bool,
}

impl Source {
    /// Its name on the command line: the `kind` of the grids that read it.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Whether `folder` holds what the loader needs, as far as it checks without decoding
    /// (files, headers, sizes); the loader's error otherwise.
    fn check(&self, folder: &Path) -> Result<()> {
        let cfg = DatasetConfig {
            kind: self.kind,
            path: Some(folder.to_path_buf()),
            validation: Default::default(),
            augment: Vec::new(),
            normalize: Default::default(),
            labels: None,
            size: None,
            channels: None,
            train: None,
            test: None,
        };
        super::check(&cfg, Path::new(".")).map(|_| ())
    }
}

/// One file of a data set, at its official location, with the MD5 its publishers (and
/// torchvision) check.
pub struct Remote {
    pub url: &'static str,
    pub md5: &'static str,
}

impl Remote {
    fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.url)
    }
}

pub const SOURCES: [Source; 3] = [
    Source {
        kind: DatasetKind::Cifar10,
        folder: "cifar-10-batches-bin",
        files: &[Remote {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
        }],
        archive: true,
    },
    Source {
        kind: DatasetKind::Cifar100,
        folder: "cifar-100-binary",
        files: &[Remote {
            url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
        }],
        archive: true,
    },
    Source {
        kind: DatasetKind::Mnist,
        folder: "mnist",
        // torchvision's first mirror; the files of https://yann.lecun.com/exdb/mnist/.
        files: &[
            Remote {
                url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                md5: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            },
            Remote {
                url: "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
                md5: "d53e105ee54ea40749a09fcbcd1e9432",
            },
            Remote {
                url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                md5: "9fb629c4189551a2d022fa330f9573f3",
            },
            Remote {
                url: "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                md5: "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ],
        archive: false,
    },
];

/// The source of a kind that has one (cifar10, cifar100, mnist).
pub(super) fn of(kind: DatasetKind) -> &'static Source {
    SOURCES
        .iter()
        .find(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no source for {}", kind.name()))
}

/// The source called `name`, or a usage error listing the known ones.
pub fn source(name: &str) -> Result<&'static Source> {
    SOURCES.iter().find(|s| s.name() == name).ok_or_else(|| {
        let known: Vec<&str> = SOURCES.iter().map(|s| s.name()).collect();
        Error::Usage(format!("unknown data set `{name}`; known: {}", known.join(", ")))
    })
}

/// What the user asked for beside the data set.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// A file (or, for several files, a folder holding them) to use instead of downloading.
    pub from: Option<PathBuf>,
    /// A mirror: the archive's URL, or for several files the folder URL they are under.
    pub url: Option<String>,
    /// The mirror's SHA-256 of the archive, checked instead of the published MD5.
    pub sha256: Option<String>,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// What a fetch did.
#[derive(Debug, PartialEq)]
pub enum Fetched {
    /// The data set was already there, complete: nothing was downloaded.
    Present(PathBuf),
    /// Its files were there, put by something else (so not checked): nothing was downloaded.
    Unchecked(PathBuf),
    /// Downloaded (or copied from `--from`), checked and unpacked into this folder.
    Written { folder: PathBuf, bytes: u64 },
}

/// The marker a complete fetch leaves in the folder: the data set and the checksums checked.
const MARKER: &str = ".fetched";

/// Fetches `source` into `dir`.
pub fn fetch(source: &Source, dir: &Path, opts: &Options) -> Result<Fetched> {
    if opts.sha256.is_some() && source.files.len() > 1 {
        return Err(Error::Usage(format!(
            "--sha256 checks a single archive; {} is {} files, checked against their published MD5 sums",
            source.name(),
            source.files.len()
        )));
    }
    let folder = dir.join(source.folder);
    if source.check(&folder).is_ok() {
        return Ok(match folder.join(MARKER).is_file() {
            true => Fetched::Present(folder),
            false => Fetched::Unchecked(folder),
        });
    }
    if folder.exists() {
        return Err(data_err(
            &folder,
            format!(
                "exists without the files of {}: move it away, or pass --dir for another place",
                source.name()
            ),
        ));
    }
    fs::create_dir_all(dir).map_err(|e| data_err(dir, format!("cannot create it: {e}")))?;
    let staging = dir.join(".fetch");
    let result = stage(source, dir, &staging, opts);
    match result {
        Ok(bytes) => {
            let _ = fs::remove_dir_all(&staging);
            Ok(Fetched::Written { folder, bytes })
        }
        Err(Failure::Resumable(e)) => {
            // Keep the partial download for the next fetch; nothing else.
            let _ = fs::remove_dir_all(staging.join("unpack"));
            Err(e)
        }
        Err(Failure::Final(e)) => {
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

enum Failure {
    /// The download stopped (network): its partial file is kept for the next try.
    Resumable(Error),
    /// Nothing of it can be kept.
    Final(Error),
}

fn fin(e: Error) -> Failure {
    Failure::Final(e)
}

/// Downloads (or copies), checks and unpacks into `staging`, then renames the result into
/// `dir`. Returns the bytes of the files fetched.
fn stage(source: &Source, dir: &Path, staging: &Path, opts: &Options) -> Result<u64, Failure> {
    fs::create_dir_all(staging).map_err(|e| fin(data_err(staging, format!("cannot create it: {e}"))))?;
    let unpack = staging.join("unpack");
    let _ = fs::remove_dir_all(&unpack);
    let target = unpack.join(source.folder);
    fs::create_dir_all(&target).map_err(|e| fin(data_err(&target, format!("cannot create it: {e}"))))?;
    let mut record = format!("{}\n", source.name());
    let mut total = 0;
    for remote in source.files {
        let name = remote.file_name();
        let file = staging.join(name);
        match &opts.from {
            Some(from) => {
                let given = if from.is_dir() { from.join(name) } else { from.clone() };
                copy_from(&given, &file).map_err(fin)?;
            }
            None => {
                let url = match (&opts.url, source.files.len()) {
                    (Some(u), 1) => u.clone(),
                    (Some(u), _) => format!("{}/{name}", u.trim_end_matches('/')),
                    (None, _) => remote.url.to_string(),
                };
                download(&url, &file, opts.progress)?;
            }
        }
        let (kind, expected) = match &opts.sha256 {
            Some(s) => ("SHA-256", s.to_lowercase()),
            None => ("MD5", remote.md5.to_string()),
        };
        let got = checksum(&file, kind).map_err(fin)?;
        if got != expected {
            return Err(fin(data_err(
                &file,
                format!(
                    "{kind} is {got}, expected {expected}: the file is not the published one (a damaged download, \
                     or another file); it was removed. Run the fetch again, or give a mirror with --url and --sha256"
                ),
            )));
        }
        total += file.metadata().map(|m| m.len()).unwrap_or(0);
        record.push_str(&format!("{name} {} {got}\n", kind.to_lowercase()));
        if source.archive {
            untar(&file, &unpack, source.folder).map_err(fin)?;
        } else {
            let to = target.join(name);
            fs::rename(&file, &to).map_err(|e| fin(data_err(&to, format!("cannot move it into place: {e}"))))?;
        }
    }
    // What the loader needs, as it checks before a run.
    source.check(&target).map_err(fin)?;
    let marker = target.join(MARKER);
    fs::write(&marker, record).map_err(|e| fin(data_err(&marker, e.to_string())))?;
    let folder = dir.join(source.folder);
    fs::rename(&target, &folder).map_err(|e| fin(data_err(&folder, format!("cannot move it into place: {e}"))))?;
    Ok(total)
}

fn copy_from(given: &Path, to: &Path) -> Result<()> {
    if !given.is_file() {
        return Err(data_err(given, "--from: no such file"));
    }
    fs::copy(given, to)
        .map(|_| ())
        .map_err(|e| data_err(to, format!("copying {}: {e}", given.display())))
}

/// The hex digest of a file.
fn checksum(path: &Path, kind: &str) -> Result<String> {
    fn digest<D: Digest>(mut r: impl Read) -> io::Result<String> {
        let mut d = D::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(hex::encode(d.finalize()));
            }
            d.update(&buf[..n]);
        }
    }
    let f = File::open(path).map_err(|e| data_err(path, e.to_string()))?;
    let r = BufReader::new(f);
    match kind {
        "MD5" => digest::<Md5>(r),
        _ => digest::<Sha256>(r),
    }
    .map_err(|e| data_err(path, format!("reading it: {e}")))
}

/// How many times a dropped download is resumed before the fetch gives up (the partial file
/// stays for the next fetch).
const ATTEMPTS: usize = 5;

/// Downloads `url` into `file`, resuming `file.part` where a previous attempt stopped.
fn download(url: &str, file: &Path, progress: bool) -> Result<(), Failure> {
    let part = PathBuf::from(format!("{}.part", file.display()));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
        bar
    });
    let mut last = None;
    for n in 0..ATTEMPTS {
        if n > 0 {
            std::thread::sleep(Duration::from_millis(500 * n as u64));
        }
        match attempt(&agent, url, &part, bar.as_ref()) {
            Ok(()) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return fs::rename(&part, file).map_err(|e| fin(data_err(file, e.to_string())));
            }
            Err(Attempt::Again(e)) => last = Some(e),
            Err(Attempt::Fatal(e)) => return Err(fin(e)),
        }
    }
    if let Some(b) = &bar {
        b.abandon();
    }
    let why = format!(
        "downloading {url}: {} (after {ATTEMPTS} attempts",
        last.unwrap_or_default()
    );
    match part.metadata().map(|m| m.len()).unwrap_or(0) {
        0 => Err(fin(Error::Other(format!("{why})")))),
        n => Err(Failure::Resumable(Error::Other(format!(
            "{why}; the {n} bytes of {} are kept, the next `runner data fetch` resumes there)",
            part.display()
        )))),
    }
}

enum Attempt {
    /// A dropped connection or a server error: try again from where the file ends.
    Again(String),
    Fatal(Error),
}

fn attempt(agent: &ureq::Agent, url: &str, part: &Path, bar: Option<&indicatif::ProgressBar>) -> Result<(), Attempt> {
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        // Asked past the end: the file is whole.
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) if code >= 500 => {
            return Err(Attempt::Again(format!("{code} {}", r.status_text())))
        }
        Err(ureq::Error::Status(code, r)) => {
            return Err(Attempt::Fatal(Error::Usage(format!(
                "downloading {url}: the server answered {code} {}",
                r.status_text()
            ))))
        }
        Err(e) => return Err(Attempt::Again(e.to_string())),
    };
    // 206: the rest of the file; 200: all of it (the server ignores ranges), from the start.
    let resumed = response.status() == 206;
    let length: Option<u64> = response.header("Content-Length").and_then(|v| v.parse().ok());
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| Attempt::Fatal(data_err(part, e.to_string())))?;
    let start = if resumed { have } else { 0 };
    if let Some(b) = bar {
        b.set_length(start + length.unwrap_or(0));
        b.set_position(start);
    }
    let mut body = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return Err(Attempt::Again(format!(
                    "the connection dropped after {} bytes: {e}",
                    start + got
                )))
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| Attempt::Fatal(data_err(part, format!("writing it: {e}"))))?;
        got += n as u64;
        if let Some(b) = bar {
            b.set_position(start + got);
        }
    }
    out.flush()
        .map_err(|e| Attempt::Fatal(data_err(part, format!("writing it: {e}"))))?;
    match length {
        Some(l) if got < l => Err(Attempt::Again(format!(
            "the connection dropped after {} of {} bytes",
            start + got,
            start + l
        ))),
        _ => Ok(()),
    }
}

/// Unpacks a `.tar.gz` into `into`, refusing any entry outside `top/` (an absolute path, `..`,
/// a link), so nothing can be written outside the staging folder.
fn untar(archive: &Path, into: &Path, top: &str) -> Result<()> {
    let damaged = |e: io::Error| data_err(archive, format!("the archive is damaged (truncated?): {e}"));
    let f = File::open(archive).map_err(|e| data_err(archive, e.to_string()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)));
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let path = entry.path().map_err(damaged)?.into_owned();
        let inside = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            && path.components().find(|c| matches!(c, Component::Normal(_))) == Some(Component::Normal(top.as_ref()));
        let kind = entry.header().entry_type();
        if !inside || !(kind.is_file() || kind.is_dir()) {
            return Err(data_err(
                archive,
                format!(
                    "refusing entry `{}`: everything must be a file or folder under {top}/",
                    path.display()
                ),
            ));
        }
        let to = into.join(&path);
        if kind.is_dir() {
            fs::create_dir_all(&to).map_err(|e| data_err(&to, e.to_string()))?;
            continue;
        }
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| data_err(parent, e.to_string()))?;
        }
        let mut out = File::create(&to).map_err(|e| data_err(&to, e.to_string()))?;
        io::copy(&mut entry, &mut out).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => damaged(e),
            _ => data_err(&to, format!("writing it: {e}")),
        })?;
    }
    Ok(())
}
