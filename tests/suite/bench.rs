//! `runner bench --scaling`: each size timed in a child process of its own, one table.

use crate::util::Dir;

#[test]
fn scaling_times_every_depth_and_batch_in_a_process_of_its_own() {
    let d = Dir::new();
    let args = [
        "bench",
        "--scaling",
        "--depths",
        "8,14",
        "--batches",
        "2,4",
        "--steps",
        "1",
        "--warmup",
        "0",
    ];
    let r = d.run(&[&args[..], &["--json"]].concat());
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let lines: Vec<serde_json::Value> = r.stdout().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sizes: Vec<(i64, i64)> = lines
        .iter()
        .map(|l| (l["params"]["depth"].as_i64().unwrap(), l["batch"].as_i64().unwrap()))
        .collect();
    assert_eq!(sizes, [(8, 2), (8, 4), (14, 2), (14, 4)]);
    assert!(lines.iter().all(|l| l["train_images_per_s"].as_f64().unwrap() > 0.0));
    // a deeper net has more parameters: each child built its own model
    assert!(lines[2]["trainable"].as_i64() > lines[0]["trainable"].as_i64());

    let r = d.run(&args);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(out.contains("batch 2") && out.contains("batch 4"), "{out}");
    assert!(rows[1].trim_start().starts_with("14"), "{out}");

    // every size is checked before anything is timed
    let bad = d.run(&["bench", "--scaling", "--depths", "8,21", "--steps", "1"]);
    assert_eq!(bad.code(), 2, "{}", bad.stderr());
    assert!(
        bad.stderr().contains("depth 21") && bad.stderr().contains("6n+2"),
        "{}",
        bad.stderr()
    );
    assert!(
        !bad.stderr().contains("resnet-8, batch"),
        "timed before checking: {}",
        bad.stderr()
    );
}

/// A CPU-only build asked for a GPU says so, and how to get a CUDA build, before any work.
#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_build_refuses_a_cuda_device_and_names_the_cuda_build() {
    let d = Dir::new();
    for args in [
        &["bench", "--device", "cuda:0"][..],
        &["bench", "--op", "conv", "--device", "cuda:0"],
    ] {
        let r = d.run(args);
        assert_eq!(r.code(), 2, "{}", r.stderr());
        assert!(
            r.stderr().contains("built without CUDA support") && r.stderr().contains("scripts/build-cuda.sh"),
            "{}",
            r.stderr()
        );
        assert!(r.stdout().is_empty(), "{}", r.stdout());
    }
}
