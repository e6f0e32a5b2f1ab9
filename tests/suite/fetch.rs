//! `runner data fetch` against an HTTP server on 127.0.0.1 that the test starts, serving a small
//! archive in the real CIFAR-10 binary layout: a good download, a resumed one, a corrupt one,
//! `--from`, an archive that would write outside its folder, and a second fetch that downloads
//! nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::util::{Dir, Run, CIFAR10_FILES as FILES};

/// A record: one label byte, 3072 pixel bytes.
const RECORD: usize = 3073;

/// The bytes of a batch file: `n` records, label i % 10, pixels from the file's index.
fn batch(index: usize, n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n * RECORD);
    for i in 0..n {
        b.push((i % 10) as u8);
        b.extend((0..3072).map(|p| ((p * 7 + i * 13 + index * 31) % 256) as u8));
    }
    b
}

/// `cifar-10-batches-bin/` with the six batch files (4 records each) and the class names, as a
/// `.tar.gz`; `extra` adds an entry with a raw name (for an archive that tries to escape).
fn archive(extra: Option<&str>) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // The name written as it is (`set_path` refuses `..`, which is the point of one test).
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        tar.append(&h, data).unwrap();
    };
    for (i, f) in FILES.iter().enumerate() {
        add(&format!("cifar-10-batches-bin/{f}"), &batch(i, 4));
    }
    add(
        "cifar-10-batches-bin/batches.meta.txt",
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    );
    if let Some(name) = extra {
        add(name, b"outside");
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// An HTTP/1.1 server for one file, with range requests, that can drop its first response
/// half-way. It records the `Range` header of every request.
struct Server {
    port: u16,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

impl Server {
    fn start(body: Vec<u8>, drop_first_half_way: bool) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                serve(stream, &body, drop_first_half_way && n == 0, &seen);
            }
        });
        Server { port, ranges }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cifar-10-binary.tar.gz", self.port)
    }

    fn requests(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, body: &[u8], drop_half_way: bool, seen: &Mutex<Vec<Option<String>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.strip_prefix("Range:").or_else(|| line.strip_prefix("range:")) {
            range = Some(v.trim().to_string());
        }
    }
    seen.lock().unwrap().push(range.clone());
    let from: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let rest = &body[from..];
    let head = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
            rest.len(),
            body.len() - 1,
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/gzip\r\nConnection: close\r\n\r\n",
            rest.len()
        )
    };
    let _ = stream.write_all(head.as_bytes());
    let sent = if drop_half_way { &rest[..rest.len() / 2] } else { rest };
    let _ = stream.write_all(sent);
    let _ = stream.flush();
    // Dropping the stream closes the connection (half-way, for the first response).
    let mut sink = Vec::new();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = reader.read_to_end(&mut sink);
}

/// The files of a folder, recursively, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// `runner data fetch cifar10 --dir DIR FROM WHERE --sha256 SHA` in `d`, `FROM` being `--url`
/// or `--from`.
fn fetch_cifar(d: &Dir, dir: &str, from: &str, place: &str, sha: &str) -> Run {
    d.run(&["data", "fetch", "cifar10", "--dir", dir, from, place, "--sha256", sha])
}

/// Runs `args` in `d` and checks that it exits 2 saying `says`, with nothing in `data/`.
fn assert_refused(d: &Dir, args: &[&str], says: &str) {
    let r = d.run(args);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains(says), "{}", r.stderr());
    assert_eq!(tree(&d.path().join("data")), Vec::<String>::new());
}

/// Checks the fetched folder holds the archive's batches, byte for byte.
fn assert_unpacked(data: &Path) {
    let folder = data.join("cifar-10-batches-bin");
    for (i, f) in FILES.iter().enumerate() {
        assert_eq!(std::fs::read(folder.join(f)).unwrap(), batch(i, 4), "{f}");
    }
    assert!(!data.join(".fetch").exists(), "the staging folder is removed");
}

#[test]
fn a_good_download_is_checked_unpacked_and_read_by_a_grid_and_a_second_fetch_downloads_nothing() {
    let body = archive(None);
    let server = Server::start(body.clone(), false);
    let d = Dir::new();
    let r = fetch_cifar(&d, "data", "--url", &server.url(), &sha256(&body));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        r.stdout().contains("cifar10 in data/cifar-10-batches-bin"),
        "{}",
        r.stdout()
    );
    assert_unpacked(&d.path().join("data"));
    assert_eq!(server.requests(), [None]);

    // The grids' `path` reads it as it is.
    d.write(
        "g.toml",
        "[experiment]\nname = \"c\"\n[dataset]\nkind = \"cifar10\"\npath = \"data/cifar-10-batches-bin\"\n\
         [train]\niterations = 1\n[grid]\narch = [\"resnet\"]\ndepth = [8]\n",
    );
    let plan = d.run(&["run", "g.toml", "--dry-run"]);
    assert_eq!(plan.code(), 0, "{}", plan.stderr());
    assert!(
        plan.stdout().contains("1 trials on 3×32×32 images, 10 classes"),
        "{}",
        plan.stdout()
    );
    assert!(!plan.stderr().contains("warning"), "{}", plan.stderr());

    let again = fetch_cifar(&d, "data", "--url", &server.url(), &sha256(&body));
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert!(again.stdout().contains("nothing to do"), "{}", again.stdout());
    assert_eq!(server.requests().len(), 1, "the second fetch downloads nothing");
}

#[test]
fn a_dropped_connection_is_resumed_from_where_it_stopped() {
    let body = archive(None);
    let server = Server::start(body.clone(), true);
    let d = Dir::new();
    let r = fetch_cifar(&d, "data", "--url", &server.url(), &sha256(&body));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_unpacked(&d.path().join("data"));
    // The first answer stopped half-way; the second asked for the rest only.
    let half = body.len() / 2;
    assert_eq!(server.requests(), [None, Some(format!("bytes={half}-"))]);
}

#[test]
fn a_corrupt_download_exits_2_and_leaves_nothing_in_the_folder() {
    let good = archive(None);
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    let server = Server::start(bad, false);
    let d = Dir::new();
    std::fs::create_dir(d.path().join("data")).unwrap();
    let r = fetch_cifar(&d, "data", "--url", &server.url(), &sha256(&good));
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("SHA-256 is") && r.stderr().contains(&sha256(&good)),
        "{}",
        r.stderr()
    );
    assert_eq!(tree(&d.path().join("data")), Vec::<String>::new());

    // Without --sha256 a file is held against the published MD5 of the real archive.
    let archive_path = d.write("c.tar.gz", "");
    std::fs::write(&archive_path, &good).unwrap();
    assert_refused(
        &d,
        &["data", "fetch", "cifar10", "--dir", "data", "--from", "c.tar.gz"],
        "expected c32a1d4ab5d03f1284b67883e8d87530",
    );
}

#[test]
fn from_uses_an_archive_on_disk_and_an_escaping_entry_is_refused() {
    let d = Dir::new();
    let good = archive(None);
    std::fs::write(d.path().join("c.tar.gz"), &good).unwrap();
    let r = fetch_cifar(&d, "data", "--from", "c.tar.gz", &sha256(&good));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_unpacked(&d.path().join("data"));

    let evil = archive(Some("cifar-10-batches-bin/../../evil.bin"));
    std::fs::write(d.path().join("e.tar.gz"), &evil).unwrap();
    let r = fetch_cifar(&d, "other", "--from", "e.tar.gz", &sha256(&evil));
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("refusing entry") && r.stderr().contains("evil.bin"),
        "{}",
        r.stderr()
    );
    assert_eq!(tree(&d.path().join("other")), Vec::<String>::new());
    assert!(!d.path().join("evil.bin").exists());
}

#[test]
fn a_grid_whose_data_is_missing_names_the_fetch_command() {
    let d = Dir::new();
    d.write(
        "g.toml",
        "[experiment]\nname = \"c\"\n[dataset]\nkind = \"cifar10\"\npath = \"data/cifar-10-batches-bin\"\n\
         [train]\niterations = 1\n[grid]\narch = [\"resnet\"]\ndepth = [8]\n",
    );
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("`runner data fetch cifar10 --dir data`"),
        "{}",
        r.stderr()
    );
}

#[test]
fn mnist_files_are_each_held_against_their_published_md5() {
    let d = Dir::new();
    std::fs::create_dir(d.path().join("files")).unwrap();
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        std::fs::write(d.path().join("files").join(f), b"not mnist").unwrap();
    }
    // the first file's published sum
    assert_refused(
        &d,
        &["data", "fetch", "mnist", "--dir", "data", "--from", "files"],
        "expected f68b3c2dcbeaaa9fbdd348bbdeb94873",
    );
    // one --sha256 cannot check four files
    let r = d.run(&["data", "fetch", "mnist", "--from", "files", "--sha256", "00"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("--sha256 checks a single archive"),
        "{}",
        r.stderr()
    );
}
