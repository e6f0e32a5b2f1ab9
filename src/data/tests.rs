//! Tests of the loaders against real-format files written into temporary directories, and of
//! the configuration checks and the validation hold-out.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

fn cfg(kind: DatasetKind, path: Option<&Path>) -> DatasetConfig {
    DatasetConfig {
        kind,
        path: path.map(Path::to_path_buf),
        validation: Validation::Count(0),
        augment: vec![],
        normalize: Normalize::PerChannel,
        labels: None,
        size: None,
        channels: None,
        train: None,
        test: None,
    }
}

/// The error's file and its displayed message.
fn data_error(r: Result<impl std::fmt::Debug>) -> (PathBuf, String) {
    match r {
        Err(e @ Error::Data { .. }) => {
            let msg = e.to_string();
            let Error::Data { path, .. } = e else { unreachable!() };
            (path, msg)
        }
        other => panic!("expected a data error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- MNIST

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [2051u32, n as u32, rows as u32, cols as u32] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(|i| (i * 7 % 256) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2049u32.to_be_bytes());
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An MNIST directory with 6 training and 4 test images of 5×4; train files gzipped if `zip`.
fn mnist_dir(zip: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let (ti, tl) = (idx_images(6, 5, 4), idx_labels(&[0, 1, 2, 3, 9, 5]));
    if zip {
        std::fs::write(d.path().join("train-images-idx3-ubyte.gz"), gz(&ti)).unwrap();
        std::fs::write(d.path().join("train-labels-idx1-ubyte.gz"), gz(&tl)).unwrap();
    } else {
        std::fs::write(d.path().join("train-images-idx3-ubyte"), &ti).unwrap();
        std::fs::write(d.path().join("train-labels-idx1-ubyte"), &tl).unwrap();
    }
    std::fs::write(d.path().join("t10k-images-idx3-ubyte"), idx_images(4, 5, 4)).unwrap();
    std::fs::write(d.path().join("t10k-labels-idx1-ubyte"), idx_labels(&[4, 3, 2, 1])).unwrap();
    d
}

#[test]
fn mnist_plain_and_gzip_load_the_same_data() {
    let plain = mnist_dir(false);
    let zipped = mnist_dir(true);
    let a = load(&cfg(DatasetKind::Mnist, Some(plain.path())), Path::new(""), 1).unwrap();
    let b = load(&cfg(DatasetKind::Mnist, Some(zipped.path())), Path::new(""), 1).unwrap();
    let shape = InputShape {
        channels: 1,
        height: 5,
        width: 4,
    };
    assert_eq!((a.shape, a.classes), (shape, 10));
    assert_eq!(a.train.labels, vec![0, 1, 2, 3, 9, 5]);
    assert_eq!(a.train.images, idx_images(6, 5, 4)[16..]);
    assert_eq!(a.test.as_ref().unwrap().labels, vec![4, 3, 2, 1]);
    assert_eq!((a.train, a.test), (b.train, b.test));
    for d in [&plain, &zipped] {
        assert_eq!(
            check(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new("")).unwrap(),
            DataSize {
                shape,
                classes: 10,
                images: 6 + 4
            }
        );
    }
}

#[test]
fn mnist_bad_magic_names_the_file_and_the_expected_number() {
    let d = mnist_dir(false);
    let mut b = idx_labels(&[1, 2]);
    b[3] = 0x03;
    std::fs::write(d.path().join("t10k-labels-idx1-ubyte"), b).unwrap();
    let (path, msg) = data_error(check(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new("")));
    assert_eq!(path, d.path().join("t10k-labels-idx1-ubyte"));
    assert!(
        msg.contains("magic") && msg.contains("2051") && msg.contains("2049"),
        "{msg}"
    );
}

#[test]
fn mnist_truncated_plain_file_fails_the_check_naming_the_image() {
    let d = mnist_dir(false);
    let mut b = idx_images(6, 5, 4);
    b.truncate(16 + 3 * 20 + 7);
    std::fs::write(d.path().join("train-images-idx3-ubyte"), b).unwrap();
    let (path, msg) = data_error(check(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new("")));
    assert_eq!(path, d.path().join("train-images-idx3-ubyte"));
    assert!(msg.contains("truncated") && msg.contains("image 3 incomplete"), "{msg}");
}

#[test]
fn mnist_truncated_gzip_file_fails_the_load() {
    let d = mnist_dir(true);
    let mut b = idx_labels(&[0, 1, 2, 3, 9, 5]);
    b.pop();
    std::fs::write(d.path().join("train-labels-idx1-ubyte.gz"), gz(&b)).unwrap();
    let (path, msg) = data_error(load(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new(""), 0));
    assert_eq!(path, d.path().join("train-labels-idx1-ubyte.gz"));
    assert!(msg.contains("truncated") && msg.contains("label 5 incomplete"), "{msg}");
}

#[test]
fn mnist_out_of_range_label_names_file_and_record() {
    let d = mnist_dir(false);
    std::fs::write(d.path().join("t10k-labels-idx1-ubyte"), idx_labels(&[4, 3, 12, 1])).unwrap();
    let (path, msg) = data_error(load(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new(""), 0));
    assert_eq!(path, d.path().join("t10k-labels-idx1-ubyte"));
    assert!(
        msg.contains("label 12 in record 2") && msg.contains("10 classes"),
        "{msg}"
    );
}

#[test]
fn mnist_missing_file_says_where_to_get_it() {
    let d = mnist_dir(false);
    std::fs::remove_file(d.path().join("t10k-images-idx3-ubyte")).unwrap();
    let (path, msg) = data_error(check(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new("")));
    assert_eq!(path, d.path().join("t10k-images-idx3-ubyte"));
    assert!(
        msg.contains("missing t10k-images-idx3-ubyte") && msg.contains("https://"),
        "{msg}"
    );
}

#[test]
fn mnist_label_count_must_match_image_count() {
    let d = mnist_dir(false);
    std::fs::write(d.path().join("t10k-labels-idx1-ubyte"), idx_labels(&[1, 2, 3])).unwrap();
    let (path, msg) = data_error(check(&cfg(DatasetKind::Mnist, Some(d.path())), Path::new("")));
    assert_eq!(path, d.path().join("t10k-labels-idx1-ubyte"));
    assert!(msg.contains("3 labels for the 4 images"), "{msg}");
}

// ---------------------------------------------------------------- CIFAR

/// `n` CIFAR records with the given label bytes; pixel bytes encode (record, position).
fn cifar_records(labels: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for (i, l) in labels.iter().enumerate() {
        b.extend_from_slice(l);
        b.extend((0..3072).map(|p| ((i * 31 + p) % 251) as u8));
    }
    b
}

fn cifar10_dir(root: &Path) {
    for k in 1..=5 {
        let labels: Vec<[u8; 1]> = (0..3).map(|i| [((k * 3 + i) % 10) as u8]).collect();
        let refs: Vec<&[u8]> = labels.iter().map(|l| &l[..]).collect();
        std::fs::write(root.join(format!("data_batch_{k}.bin")), cifar_records(&refs)).unwrap();
    }
    std::fs::write(root.join("test_batch.bin"), cifar_records(&[&[7], &[8]])).unwrap();
}

#[test]
fn cifar10_directory_loads_every_batch_in_order_and_splits_validation() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cifar");
    std::fs::create_dir(&root).unwrap();
    cifar10_dir(&root);
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    std::fs::write(root.join("batches.meta.txt"), names).unwrap();
    // Relative to the base directory, as a grid file's `path` is.
    let mut c = cfg(DatasetKind::Cifar10, Some(Path::new("cifar")));
    let base = tmp.path();
    let all = load(&c, base, 3).unwrap();
    assert_eq!((all.shape, all.classes), (InputShape::CIFAR, 10));
    let want: Vec<u32> = (1..=5)
        .flat_map(|k| (0..3).map(move |i| ((k * 3 + i) % 10) as u32))
        .collect();
    assert_eq!(all.train.labels, want);
    assert_eq!(all.train.images[..3072], cifar_records(&[&[0]])[1..]);
    assert_eq!(all.test.as_ref().unwrap().labels, vec![7, 8]);
    assert_eq!(all.class_names.as_ref().unwrap()[9], "truck");
    assert!(all.source.starts_with("cifar10 at "), "{}", all.source);
    let found = check(&c, base).unwrap();
    assert_eq!(
        (found.shape, found.classes, found.images),
        (InputShape::CIFAR, 10, 15 + 2)
    );

    c.validation = Validation::Count(4);
    let split = load(&c, base, 3).unwrap();
    assert_eq!((split.train.len(), split.val.len()), (11, 4));
    c.validation = Validation::Count(15);
    let (_, msg) = data_error(check(&c, base));
    assert!(
        msg.contains("validation = 15") && msg.contains("15 training images"),
        "{msg}"
    );
}

#[test]
fn cifar10_finds_the_extracted_directory_inside_path() {
    let d = tempfile::tempdir().unwrap();
    let inner = d.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&inner).unwrap();
    cifar10_dir(&inner);
    let found = check(&cfg(DatasetKind::Cifar10, Some(d.path())), Path::new("")).unwrap();
    assert_eq!((found.shape, found.classes), (InputShape::CIFAR, 10));
}

#[test]
fn cifar10_missing_batch_says_where_to_download() {
    let d = tempfile::tempdir().unwrap();
    cifar10_dir(d.path());
    std::fs::remove_file(d.path().join("data_batch_2.bin")).unwrap();
    for r in [
        check(&cfg(DatasetKind::Cifar10, Some(d.path())), Path::new("")).map(|_| ()),
        load(&cfg(DatasetKind::Cifar10, Some(d.path())), Path::new(""), 0).map(|_| ()),
    ] {
        let (path, msg) = data_error(r);
        assert_eq!(path, d.path().join("data_batch_2.bin"));
        assert!(
            msg.contains("missing data_batch_2.bin")
                && msg.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz")
                && msg.contains("data_batch_1.bin exists"),
            "{msg}"
        );
    }
}

#[test]
fn cifar10_truncated_batch_names_file_and_incomplete_record() {
    let d = tempfile::tempdir().unwrap();
    cifar10_dir(d.path());
    let p = d.path().join("data_batch_3.bin");
    let mut b = std::fs::read(&p).unwrap();
    b.truncate(2 * 3073 + 100);
    std::fs::write(&p, b).unwrap();
    let (path, msg) = data_error(check(&cfg(DatasetKind::Cifar10, Some(d.path())), Path::new("")));
    assert_eq!(path, p);
    assert!(
        msg.contains("truncated: 6,246 bytes is not a multiple of 3073-byte records (record 2 incomplete)"),
        "{msg}"
    );
}

#[test]
fn cifar10_out_of_range_label_names_file_and_record() {
    let d = tempfile::tempdir().unwrap();
    cifar10_dir(d.path());
    let p = d.path().join("test_batch.bin");
    std::fs::write(&p, cifar_records(&[&[1], &[11]])).unwrap();
    let (path, msg) = data_error(load(&cfg(DatasetKind::Cifar10, Some(d.path())), Path::new(""), 0));
    assert_eq!(path, p);
    assert!(
        msg.contains("label 11 in record 1 is out of range for 10 classes"),
        "{msg}"
    );
}

#[test]
fn cifar100_reads_fine_or_coarse_labels() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("train.bin"),
        cifar_records(&[&[3, 57], &[19, 99], &[0, 0]]),
    )
    .unwrap();
    std::fs::write(d.path().join("test.bin"), cifar_records(&[&[4, 40]])).unwrap();
    let names: String = (0..20).map(|i| format!("coarse{i}\n")).collect();
    std::fs::write(d.path().join("coarse_label_names.txt"), names).unwrap();
    let mut c = cfg(DatasetKind::Cifar100, Some(d.path()));
    let fine = load(&c, Path::new(""), 0).unwrap();
    assert_eq!((fine.classes, fine.train.labels.clone()), (100, vec![57, 99, 0]));
    assert_eq!(fine.class_names, None);
    let second: Vec<u8> = (0..3072).map(|p| ((31 + p) % 251) as u8).collect();
    assert!(
        fine.train.images[3072..2 * 3072] == second[..],
        "record 1's pixels follow record 0's"
    );
    c.labels = Some("coarse".into());
    let coarse = load(&c, Path::new(""), 0).unwrap();
    assert_eq!((coarse.classes, coarse.train.labels.clone()), (20, vec![3, 19, 0]));
    assert_eq!(coarse.test.unwrap().labels, vec![4]);
    assert_eq!(coarse.class_names.unwrap()[19], "coarse19");
    assert_eq!(
        check(&c, Path::new("")).map(|f| (f.shape, f.classes)).unwrap(),
        (InputShape::CIFAR, 20)
    );
    assert_eq!(
        nominal_size(&c).map(|f| (f.shape, f.classes, f.images)),
        Some((InputShape::CIFAR, 20, 60_000))
    );

    std::fs::write(d.path().join("test.bin"), cifar_records(&[&[20, 40]])).unwrap();
    let (path, msg) = data_error(load(&c, Path::new(""), 0));
    assert_eq!(path, d.path().join("test.bin"));
    assert!(
        msg.contains("label 20 in record 0 is out of range for 20 classes"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- folder

fn write_image(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb)).save(path).unwrap();
}

/// train/{cat,dog} with PNG and JPEG files of different sizes, and a test/ split.
fn folder_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for dir in ["train/dog", "train/cat", "test/dog", "train/.hidden"] {
        std::fs::create_dir_all(d.path().join(dir)).unwrap();
    }
    write_image(&d.path().join("train/cat/a.png"), 8, 6, [200, 10, 10]);
    write_image(&d.path().join("train/cat/b.jpg"), 3, 3, [10, 200, 10]);
    write_image(&d.path().join("train/dog/c.jpeg"), 4, 4, [10, 10, 200]);
    write_image(&d.path().join("test/dog/d.png"), 4, 4, [0, 0, 255]);
    std::fs::write(d.path().join("train/dog/notes.txt"), "not an image").unwrap();
    d
}

fn folder_cfg(d: &Path) -> DatasetConfig {
    DatasetConfig {
        size: Some([4, 4]),
        ..cfg(DatasetKind::Folder, Some(d))
    }
}

#[test]
fn folder_of_png_and_jpeg_loads_resized_rgb_with_sorted_class_names() {
    let d = folder_dir();
    let data = load(&folder_cfg(d.path()), Path::new(""), 0).unwrap();
    let shape = InputShape {
        channels: 3,
        height: 4,
        width: 4,
    };
    assert_eq!((data.shape, data.classes), (shape, 2));
    assert_eq!(data.class_names, Some(vec!["cat".to_string(), "dog".to_string()]));
    assert_eq!(data.train.labels, vec![0, 0, 1]);
    assert_eq!(data.train.images.len(), 3 * 48);
    // The red PNG stays red in every pixel after resizing: the red plane first (NCHW).
    let red = &data.train.images[..48];
    assert!(
        red[..16].iter().all(|&v| v == 200) && red[32..].iter().all(|&v| v == 10),
        "{red:?}"
    );
    // JPEG is lossy: close to the colour, plane by plane.
    let blue = &data.train.images[96..];
    assert!(
        blue[32..].iter().all(|&v| v > 180) && blue[..16].iter().all(|&v| v < 40),
        "{blue:?}"
    );
    assert_eq!(data.test.unwrap().labels, vec![1]);
    assert_eq!(
        check(&folder_cfg(d.path()), Path::new(""))
            .map(|f| (f.shape, f.classes))
            .unwrap(),
        (shape, 2)
    );
}

#[test]
fn folder_grey_and_val_directory() {
    let d = folder_dir();
    std::fs::create_dir_all(d.path().join("val/cat")).unwrap();
    write_image(&d.path().join("val/cat/e.png"), 2, 2, [255, 255, 255]);
    let mut c = folder_cfg(d.path());
    c.channels = Some(1);
    let data = load(&c, Path::new(""), 0).unwrap();
    assert_eq!(data.shape.channels, 1);
    assert_eq!((data.train.len(), data.val.len()), (3, 1));
    assert_eq!(data.val.images, vec![255; 16]);
    c.validation = Validation::Count(1);
    let (path, msg) = data_error(check(&c, Path::new("")));
    assert_eq!(path, d.path());
    assert!(msg.contains("val/") && msg.contains("validation"), "{msg}");
}

#[test]
fn folder_errors_name_the_file_or_directory() {
    let d = folder_dir();
    std::fs::write(d.path().join("train/dog/broken.png"), b"\x89PNG not really").unwrap();
    let (path, _) = data_error(check(&folder_cfg(d.path()), Path::new("")));
    assert_eq!(path, d.path().join("train/dog/broken.png"));
    let (path, _) = data_error(load(&folder_cfg(d.path()), Path::new(""), 0));
    assert_eq!(path, d.path().join("train/dog/broken.png"));
    std::fs::remove_file(d.path().join("train/dog/broken.png")).unwrap();

    std::fs::create_dir_all(d.path().join("test/bird")).unwrap();
    let (path, msg) = data_error(check(&folder_cfg(d.path()), Path::new("")));
    assert_eq!(path, d.path().join("test/bird"));
    assert!(msg.contains("cat, dog"), "{msg}");

    let empty = tempfile::tempdir().unwrap();
    let (path, msg) = data_error(check(&folder_cfg(empty.path()), Path::new("")));
    assert_eq!(path, empty.path().join("train"));
    assert!(msg.contains("missing train/"), "{msg}");
}

// ---------------------------------------------------------------- npy

fn npy(descr: &str, shape: &str, data: &[u8], version: u8) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let pre = if version == 1 { 10 } else { 12 };
    let mut header = dict.into_bytes();
    while (pre + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut b = b"\x93NUMPY".to_vec();
    b.extend_from_slice(&[version, 0]);
    if version == 1 {
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    b.extend_from_slice(&header);
    b.extend_from_slice(data);
    b
}

/// 3 images of 2×2×3 (NHWC) whose byte at (n, y, x, c) is 100n + 10(2y + x) + c.
fn nhwc_images() -> Vec<u8> {
    let mut v = Vec::new();
    for n in 0..3u8 {
        for p in 0..4u8 {
            for c in 0..3u8 {
                v.push(100 * n + 10 * p + c);
            }
        }
    }
    v
}

#[test]
fn npy_nhwc_images_with_little_and_big_endian_int64_labels() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("train_images.npy"),
        npy("|u1", "(3, 2, 2, 3)", &nhwc_images(), 1),
    )
    .unwrap();
    let le: Vec<u8> = [2i64, 0, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(d.path().join("train_labels.npy"), npy("<i8", "(3,)", &le, 1)).unwrap();
    let be: Vec<u8> = [1i64, 2].iter().flat_map(|v| v.to_be_bytes()).collect();
    std::fs::write(d.path().join("test_labels.npy"), npy(">i8", "(2,)", &be, 2)).unwrap();
    std::fs::write(
        d.path().join("test_images.npy"),
        npy("|u1", "(2, 2, 2, 3)", &nhwc_images()[..24], 2),
    )
    .unwrap();
    let c = cfg(DatasetKind::Npy, Some(d.path()));
    let data = load(&c, Path::new(""), 0).unwrap();
    let shape = InputShape {
        channels: 3,
        height: 2,
        width: 2,
    };
    assert_eq!((data.shape, data.classes), (shape, 3));
    assert_eq!(data.train.labels, vec![2, 0, 1]);
    assert_eq!(data.test.as_ref().unwrap().labels, vec![1, 2]);
    // NCHW: image 1, channel 2, pixels 0..4.
    assert_eq!(data.train.images[12 + 8..12 + 12], [102, 112, 122, 132]);
    assert_eq!(
        check(&c, Path::new("")).map(|f| (f.shape, f.classes)).unwrap(),
        (shape, 3)
    );
    assert_eq!(nominal_size(&c), None);
}

#[test]
fn npy_grey_images_and_narrow_label_types() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("train_images.npy"),
        npy("|u1", "(2, 1, 3)", &[1, 2, 3, 4, 5, 6], 1),
    )
    .unwrap();
    std::fs::write(d.path().join("train_labels.npy"), npy(">u2", "(2,)", &[0, 4, 1, 0], 1)).unwrap();
    let data = load(&cfg(DatasetKind::Npy, Some(d.path())), Path::new(""), 0).unwrap();
    assert_eq!(data.shape.channels, 1);
    assert_eq!((data.train.labels.clone(), data.classes), (vec![4, 256], 257));
    assert_eq!(data.test, None);
}

#[test]
fn npy_errors_name_the_file_and_record() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg(DatasetKind::Npy, Some(d.path()));
    let (path, msg) = data_error(check(&c, Path::new("")));
    assert_eq!(path, d.path().join("train_images.npy"));
    assert!(msg.contains("missing train_images.npy"), "{msg}");

    let images = d.path().join("train_images.npy");
    let labels = d.path().join("train_labels.npy");
    std::fs::write(&images, npy("|u1", "(3, 2, 2, 3)", &nhwc_images()[..30], 1)).unwrap();
    let le: Vec<u8> = [2i64, -1, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&labels, npy("<i8", "(3,)", &le, 1)).unwrap();
    let (path, msg) = data_error(check(&c, Path::new("")));
    assert_eq!(path, images);
    assert!(msg.contains("truncated") && msg.contains("image 2 incomplete"), "{msg}");

    std::fs::write(&images, npy("|u1", "(3, 2, 2, 3)", &nhwc_images(), 1)).unwrap();
    let (path, msg) = data_error(load(&c, Path::new(""), 0));
    assert_eq!(path, labels);
    assert!(msg.contains("label -1 in record 1"), "{msg}");

    std::fs::write(&labels, npy("<f4", "(3,)", &[0; 12], 1)).unwrap();
    let (path, msg) = data_error(check(&c, Path::new("")));
    assert_eq!(path, labels);
    assert!(msg.contains("<f4") && msg.contains("integer"), "{msg}");

    let mut fortran = npy("|u1", "(3, 2, 2, 3)", &nhwc_images(), 1);
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran.splice(at..at + 5, *b"True ");
    std::fs::write(&images, fortran).unwrap();
    let (path, msg) = data_error(check(&c, Path::new("")));
    assert_eq!(path, images);
    assert!(msg.contains("fortran_order"), "{msg}");

    std::fs::write(&images, npy("|u1", "(3, 3, 4, 5)", &[0; 180], 1)).unwrap();
    let (_, msg) = data_error(check(&c, Path::new("")));
    assert!(msg.contains("channels-first"), "{msg}");
}

#[test]
fn npy_test_labels_beyond_the_training_classes_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("train_images.npy"), npy("|u1", "(2, 1, 1)", &[1, 2], 1)).unwrap();
    std::fs::write(d.path().join("train_labels.npy"), npy("|u1", "(2,)", &[0, 1], 1)).unwrap();
    std::fs::write(d.path().join("test_images.npy"), npy("|u1", "(1, 1, 1)", &[1], 1)).unwrap();
    std::fs::write(d.path().join("test_labels.npy"), npy("|u1", "(1,)", &[5], 1)).unwrap();
    let c = cfg(DatasetKind::Npy, Some(d.path()));
    let (path, msg) = data_error(check(&c, Path::new("")));
    assert_eq!(path, d.path().join("test_labels.npy"));
    assert!(
        msg.contains("label 5 in record 0 is out of range for 2 classes"),
        "{msg}"
    );
}

#[test]
fn npy_header_parser_reads_the_forms_numpy_writes() {
    let v1 = npy("<i8", "(5,)", &[], 1);
    let h = npy::parse_header(&v1).unwrap();
    assert_eq!(
        (h.descr.as_str(), h.shape.clone(), h.offset),
        ("<i8", vec![5], v1.len())
    );
    let v2 = npy("|u1", "(7, 28, 28)", &[], 2);
    let h = npy::parse_header(&v2).unwrap();
    assert_eq!((h.shape.clone(), h.offset), (vec![7, 28, 28], v2.len()));
    let h = npy::parse_header(&npy("|u1", "()", &[], 1)).unwrap();
    assert!(h.shape.is_empty());
    assert!(npy::parse_header(b"PK\x03\x04 a zip file")
        .unwrap_err()
        .contains("not an .npy"));
}

// ---------------------------------------------------------------- config, synthetic, hold-out

#[test]
fn validate_rejects_options_for_other_kinds_and_lists_choices() {
    let ok = cfg(DatasetKind::Synthetic, None);
    assert_eq!(ok.validate(), Ok(()));
    let cases: Vec<(DatasetConfig, &str)> = vec![
        (cfg(DatasetKind::Cifar10, None), "needs `path`"),
        (
            cfg(DatasetKind::Synthetic, Some(Path::new("x"))),
            "`path` does not apply",
        ),
        (
            DatasetConfig {
                labels: Some("fine".into()),
                ..cfg(DatasetKind::Cifar10, Some(Path::new("x")))
            },
            "`labels` applies only to kind = cifar100",
        ),
        (
            DatasetConfig {
                labels: Some("medium".into()),
                ..cfg(DatasetKind::Cifar100, Some(Path::new("x")))
            },
            "fine, coarse",
        ),
        (cfg(DatasetKind::Folder, Some(Path::new("x"))), "needs `size"),
        (
            DatasetConfig {
                size: Some([8, 8]),
                channels: Some(2),
                ..cfg(DatasetKind::Folder, Some(Path::new("x")))
            },
            "1 (grey), 3 (RGB)",
        ),
        (
            DatasetConfig {
                train: Some(10),
                ..cfg(DatasetKind::Mnist, Some(Path::new("x")))
            },
            "`train` applies only to kind = synthetic",
        ),
        (
            DatasetConfig {
                validation: Validation::Fraction(1.5),
                ..ok.clone()
            },
            "strictly between 0 and 1",
        ),
        (
            DatasetConfig {
                validation: Validation::Count(100),
                train: Some(100),
                ..ok.clone()
            },
            "leaves no training images",
        ),
        (
            DatasetConfig {
                augment: vec!["rotate".into()],
                ..ok.clone()
            },
            "pad-crop:N",
        ),
    ];
    for (c, want) in cases {
        let e = c.validate().unwrap_err();
        assert!(e.contains(want), "{c:?}: {e}");
    }
}

#[test]
fn config_parses_from_toml_with_defaults() {
    let c: DatasetConfig =
        toml::from_str("kind = \"synthetic\"\nvalidation = 0.1\naugment = [\"hflip\"]\nnormalize = \"per-pixel-mean\"")
            .unwrap();
    assert_eq!(c.validation, Validation::Fraction(0.1));
    assert_eq!(c.normalize, Normalize::PerPixelMean);
    assert_eq!(c.augmentations(), Ok(vec![Augment::HFlip]));
    let d: DatasetConfig = toml::from_str("kind = \"cifar10\"\npath = \"d\"\nvalidation = 5000").unwrap();
    assert_eq!(
        (d.validation, d.normalize),
        (Validation::Count(5000), Normalize::PerChannel)
    );
    assert!(toml::from_str::<DatasetConfig>("kind = \"synthetic\"\nsize = 3\nbogus = 1").is_err());
}

#[test]
fn synthetic_loads_without_files_with_a_generated_test_set() {
    let c = DatasetConfig {
        train: Some(200),
        test: Some(50),
        validation: Validation::Fraction(0.25),
        ..cfg(DatasetKind::Synthetic, None)
    };
    let data = load(&c, Path::new("/nonexistent"), 7).unwrap();
    assert_eq!((data.shape, data.classes), (InputShape::CIFAR, 10));
    assert_eq!(
        (data.train.len(), data.val.len(), data.test.as_ref().unwrap().len()),
        (150, 50, 50)
    );
    assert_eq!(data.train.images.len(), 150 * 3072);
    assert_eq!(data.class_names.as_ref().unwrap().len(), 10);
    let found = check(&c, Path::new("/nonexistent")).unwrap();
    assert_eq!(
        (found.shape, found.classes, found.images),
        (InputShape::CIFAR, 10, 200 + 50)
    );
    assert_eq!(nominal_size(&c), Some(found));
}

/// Identifies each image of a split by its bytes.
fn image_set(s: &Split) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = s.images.chunks_exact(3072).collect();
    v.sort_unstable();
    v
}

#[test]
fn validation_split_is_deterministic_per_seed_and_disjoint_from_train() {
    let c = DatasetConfig {
        train: Some(120),
        test: Some(0),
        validation: Validation::Count(30),
        ..cfg(DatasetKind::Synthetic, None)
    };
    let a = load(&c, Path::new(""), 11).unwrap();
    let b = load(&c, Path::new(""), 11).unwrap();
    assert_eq!((&a.train, &a.val), (&b.train, &b.val));
    assert_eq!(a.test, None);
    // Disjoint, and together exactly the generated set.
    let all = synthetic::generate(120, 11, "synthetic-train");
    let mut union = image_set(&a.train);
    union.extend(image_set(&a.val));
    union.sort_unstable();
    assert_eq!(union, image_set(&all));
    union.dedup();
    assert_eq!(union.len(), 120);
    // Labels travel with their images.
    for (img, l) in a.val.images.chunks_exact(3072).zip(&a.val.labels) {
        let i = all.images.chunks_exact(3072).position(|x| x == img).unwrap();
        assert_eq!(all.labels[i], *l);
    }

    // Another seed holds out other images (hold_out alone, so the data stays the same).
    let (_, v1) = hold_out(all.clone(), 3072, 30, 1);
    let (_, v2) = hold_out(all.clone(), 3072, 30, 2);
    assert_ne!(image_set(&v1), image_set(&v2));
}

#[test]
fn thousands_separators() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(30_000_000), "30,000,000");
}
