//! Every registered architecture through the real binary: it trains a few steps, its exported
//! checkpoint holds exactly the tensors (names and shapes) that building it creates, and the
//! report shows each architecture's own parameters.

use std::collections::BTreeMap;

use runner::arch::{self, InputShape};

use crate::util::Dir;

/// Tiny synthetic data and two steps: the point is that each net builds, trains and exports.
fn grid(body: &str) -> String {
    format!(
        "[experiment]\nname = \"archs\"\n\n\
         [dataset]\nkind = \"synthetic\"\ntrain = 64\ntest = 16\nvalidation = 16\n\n\
         [train]\niterations = 2\nbatch_size = 8\neval_every = 2\n\
         optimizer = {{ kind = \"sgd\", lr = 0.01 }}\n\n{body}"
    )
}

/// Names and shapes of the tensors in a safetensors file.
fn exported(path: &std::path::Path) -> Vec<(String, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut t: Vec<(String, Vec<usize>)> = file
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    t.sort();
    t
}

/// Names and shapes of the tensors that building `name` at its defaults creates.
fn declared(name: &str) -> Vec<(String, Vec<usize>)> {
    let a = runner::plugins::find(name).unwrap();
    let params = arch::resolve(a, &BTreeMap::new()).unwrap();
    let store = runner::nn::ParamStore::new(1);
    a.build(
        &params,
        InputShape::CIFAR,
        10,
        store.var_builder(&candle_core::Device::Cpu),
    )
    .unwrap();
    store.all().into_iter().map(|(n, v)| (n, v.dims().to_vec())).collect()
}

#[test]
fn every_registered_plugin_trains_at_its_defaults_and_exports_what_it_builds() {
    let d = Dir::new();
    let names = runner::plugins::names();
    let archs: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    d.write("g.toml", &grid(&format!("[grid]\narch = [{}]\n", archs.join(", "))));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(
        r.stdout().contains(&format!("{} trained, 0 failed", names.len())),
        "{}",
        r.stdout()
    );
    // trials are numbered in grid order: the registry's
    for (i, name) in names.iter().enumerate() {
        for kind in ["best", "last"] {
            let out = format!("{name}-{kind}.safetensors");
            let trial = (i + 1).to_string();
            let r = d.run(&["export", &trial, "--kind", kind, "--out", &out]);
            assert_eq!(r.code(), 0, "{name}: {}", r.stderr());
            assert_eq!(exported(&d.path().join(&out)), declared(name), "{name} ({kind})");
        }
    }
    let missing = d.run(&["export", "99", "--out", "x.safetensors"]);
    assert_eq!(missing.code(), 2, "{}", missing.stderr());
}

#[test]
fn a_grid_of_wrn_and_resnet_trials_reports_each_ones_own_parameters() {
    let d = Dir::new();
    let body = "[grid]\narch = [\"resnet\"]\ndepth = [8]\n\n\
                [[include]]\narch = \"wrn\"\ndepth = 10\nwiden = 1\ndropout = 0.3\n";
    d.write("g.toml", &grid(body));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let (header, rows) = crate::util::csv_rows(&d);
    let cell = |arch: &str, col: &str| {
        let at = |name: &str| header.iter().position(|h| h == name);
        let c = at(col).unwrap_or_else(|| panic!("no column {col} in {header:?}"));
        let row = rows.iter().find(|r| at("arch").is_some_and(|a| r[a] == arch));
        row.unwrap_or_else(|| panic!("no {arch} row"))[c].clone()
    };
    assert_eq!(
        ["depth", "shortcut", "preact", "block", "width", "widen", "dropout"].map(|c| cell("resnet", c)),
        ["8", "A", "false", "basic", "16", "", ""]
    );
    assert_eq!(
        ["depth", "shortcut", "preact", "block", "width", "widen", "dropout"].map(|c| cell("wrn", c)),
        ["10", "", "", "", "", "1", "0.3"]
    );
    // the counts the report gives are the built nets'
    assert_eq!(cell("wrn", "status"), "done");
    let wrn = runner::plugins::find("wrn").unwrap();
    let given = [
        ("depth".to_string(), arch::Value::Int(10)),
        ("widen".to_string(), arch::Value::Int(1)),
        ("dropout".to_string(), arch::Value::Float(0.3)),
    ]
    .into();
    let p = arch::resolve(wrn, &given).unwrap();
    let cost = arch::cost(wrn, &p, InputShape::CIFAR, 10).unwrap();
    assert_eq!(cell("wrn", "params"), cost.params.to_string());
}
