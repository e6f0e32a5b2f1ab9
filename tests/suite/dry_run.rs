//! `runner run GRID --dry-run` and `runner list archs`: validation before anything happens.

use crate::util::{repo_file, Dir};

const HEAD: &str = "[experiment]\nname = \"t\"\n\n[dataset]\nkind = \"synthetic\"\n\n[train]\niterations = 10\n\n";

fn bad_grid(body: &str) -> (i32, String, Vec<String>) {
    let d = Dir::new();
    d.write("g.toml", &format!("{HEAD}{body}"));
    let r = d.run(&["run", "g.toml", "--dry-run"]);
    assert!(
        r.stdout().is_empty() || !r.stdout().contains("trials on"),
        "printed a plan: {}",
        r.stdout()
    );
    (r.code(), r.stderr(), d.files())
}

#[test]
fn every_shipped_grid_plans_without_error() {
    let mut grids: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/experiments"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".toml").map(String::from))
        .collect();
    grids.sort();
    assert!(grids.len() >= 5, "{grids:?}");
    for g in grids {
        let d = Dir::new();
        let r = d.run(&["run", &repo_file(&format!("experiments/{g}.toml")), "--dry-run"]);
        assert_eq!(r.code(), 0, "{g}: {}", r.stderr());
        assert!(r.stdout().contains(&format!("experiment {g}:")), "{}", r.stdout());
        assert_eq!(d.files(), Vec::<String>::new(), "a dry run writes nothing");
    }
}

#[test]
fn csv_plan_has_exact_params_and_flops() {
    let d = Dir::new();
    let r = d.run(&["run", &repo_file("experiments/depth.toml"), "--dry-run", "--csv"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in ["arch", "depth", "shortcut", "preact", "block", "params", "mflops"] {
        assert!(header.contains(&col), "missing {col} in {header:?}");
    }
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<String>> = lines.map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(rows.len(), 9);
    let resnet20 = rows
        .iter()
        .find(|r| r[col("arch")] == "resnet" && r[col("depth")] == "20")
        .unwrap();
    assert_eq!(resnet20[col("params")], "269722");
    assert_eq!(resnet20[col("mflops")], "81.10");
    let resnet110 = rows.iter().find(|r| r[col("depth")] == "110").unwrap();
    assert_eq!(resnet110[col("params")], "1727962");
    // the paper's warm-up for ResNet-110 alone, an include's settings
    assert_eq!(resnet110[col("train.warmup.lr")], "0.01");
    assert_eq!(resnet110[col("train.warmup.until_train_error_below")], "0.8");
    assert_eq!(resnet20[col("train.warmup.lr")], "");
    let plain56 = rows
        .iter()
        .find(|r| r[col("arch")] == "plain" && r[col("depth")] == "56")
        .unwrap();
    assert_eq!(plain56[col("params")], "853018");
    assert_eq!(plain56[col("shortcut")], "", "a plain net has no shortcut");
}

#[test]
fn unknown_architecture_exits_2_naming_file_line_and_choices() {
    let (code, err, files) = bad_grid("[grid]\narch = [\"alexnet\"]\n");
    assert_eq!(code, 2);
    assert!(err.contains("g.toml:11:"), "{err}");
    assert!(
        err.contains("alexnet") && err.contains("plain, resnet, wrn, vgg"),
        "{err}"
    );
    assert_eq!(files, vec!["g.toml"]);
}

#[test]
fn unknown_parameter_exits_2() {
    let (code, err, _) = bad_grid("[grid]\narch = [\"resnet\"]\nwidht = [16]\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("g.toml:12:1") && err.contains("widht") && err.contains("depth, shortcut, preact"),
        "{err}"
    );
}

#[test]
fn depth_21_exits_2_with_the_valid_depths() {
    let (code, err, _) = bad_grid("[grid]\narch = [\"resnet\"]\ndepth = [20, 21]\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("g.toml:12:") && err.contains("depth 21") && err.contains("6n+2"),
        "{err}"
    );
}

#[test]
fn shortcut_d_exits_2_with_the_choices() {
    let (code, err, _) = bad_grid("[grid]\narch = [\"resnet\"]\nshortcut = \"D\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("g.toml:12:") && err.contains("A, B, C"), "{err}");
}

#[test]
fn toml_syntax_error_exits_2_with_its_line() {
    let (code, err, _) = bad_grid("[grid]\narch = [\"resnet\"\ndepth = [20]\n");
    assert_eq!(code, 2);
    assert!(err.contains("g.toml:12:") && err.contains("expected"), "{err}");
}

#[test]
fn missing_grid_file_exits_2() {
    let d = Dir::new();
    let r = d.run(&["run", "nope.toml", "--dry-run"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("nope.toml"), "{}", r.stderr());
}

#[test]
fn list_archs_shows_parameters_and_choices() {
    let r = Dir::new().run(&["list", "archs"]);
    assert_eq!(r.code(), 0);
    let out = r.stdout();
    assert!(out.contains("plain") && out.contains("resnet"), "{out}");
    assert!(
        out.contains("[A, B, C]") && out.contains("[basic, bottleneck]"),
        "{out}"
    );
    assert!(out.contains("He et al."), "{out}");
}

/// ResNet for CIFAR with n basic blocks per stage (depth 6n+2): the stem conv and BN, three
/// stages of two 3×3 conv + BN per block (option A's shortcuts, identity and zero padding, have
/// no parameters), the classifier.
fn resnet_b_params(depth: u64) -> u64 {
    let n = (depth - 2) / 6;
    let stem = 3 * 3 * 3 * 16 + 2 * 16;
    let block = |c_in: u64, c: u64| 9 * c_in * c + 2 * c + 9 * c * c + 2 * c;
    let stage1 = n * block(16, 16);
    let stage2 = block(16, 32) + (n - 1) * block(32, 32);
    let stage3 = block(32, 64) + (n - 1) * block(64, 64);
    stem + stage1 + stage2 + stage3 + 64 * 10 + 10
}

#[test]
fn a_dry_run_of_depth_200000_is_exact_and_allocates_no_model() {
    assert_eq!(
        resnet_b_params(20),
        269_722,
        "the formula against the paper's ResNet-20"
    );
    let d = Dir::new();
    d.write(
        "g.toml",
        &format!("{HEAD}[grid]\narch = [\"resnet\"]\nshortcut = \"A\"\ndepth = [200000]\n"),
    );
    let r = d.run(&["run", "g.toml", "--dry-run", "--csv"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    let header: Vec<&str> = out.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = out.lines().nth(1).unwrap().split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("depth"), "200000");
    assert_eq!(col("params"), resnet_b_params(200_000).to_string());
    let mib: f64 = col("memory").parse().unwrap();
    assert!(mib > 1e6, "3.2 G parameters need terabytes at batch 128: {mib} MiB");
}

/// `runner run` of this grid as `g.toml`: it must exit 2 with nothing written; its stderr.
fn refused_run(grid_text: &str) -> String {
    let d = Dir::new();
    d.write("g.toml", grid_text);
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert_eq!(d.files(), vec!["g.toml"], "nothing written");
    r.stderr()
}

#[test]
fn a_batch_nobody_meant_exits_2_with_the_estimate_before_writing_anything() {
    let err = refused_run(
        "[experiment]\nname = \"t\"\n\n[dataset]\nkind = \"synthetic\"\n\n[train]\niterations = 10\nbatch_size = 10000000\n\n[grid]\narch = [\"resnet\"]\ndepth = [20]\n",
    );
    assert!(
        err.contains("g.toml:9:") && err.contains("batch_size") && err.contains("estimated"),
        "{err}"
    );
    assert!(err.contains("--ignore-memory-limit"), "{err}");
}

#[test]
fn a_swept_batch_nobody_meant_is_reported_at_its_axis() {
    let err = refused_run(
        "[experiment]\nname = \"t\"\n\n[dataset]\nkind = \"synthetic\"\n\n[train]\niterations = 10\n\n[grid]\narch = [\"resnet\"]\ndepth = [20]\n\"train.batch_size\" = [10000000, 16]\n",
    );
    assert!(err.contains("g.toml:13:") && err.contains("estimated"), "{err}");
}

#[test]
fn a_width_that_overflows_names_the_file_line_and_key() {
    let (code, err, files) = bad_grid("[grid]\narch = [\"resnet\"]\nwidth = [9223372036854775807]\n");
    assert_eq!(code, 2);
    assert!(err.contains("g.toml:12:") && err.contains("width"), "{err}");
    assert_eq!(files, vec!["g.toml"]);
}
