//! Architecture parameters in every report, whatever the architecture: `runner report` over a
//! store of plain and resnet trials (and one of an architecture this build no longer has), and
//! `runner bench --param` refusing bad input before anything is built.

use runner::store::{NewTrial, Store};

use crate::util::Dir;

const GRID: &str = "[experiment]\nname = \"mixed\"\n\n[dataset]\nkind = \"synthetic\"\n\n\
[train]\niterations = 10\n\n[grid]\narch = [\"plain\", \"resnet\"]\ndepth = [8]\nshortcut = [\"B\"]\n";

/// Registers the grid's trials (nothing trained), and a trial of a `alexnet` plugin of some
/// other build, in `runs.db`.
fn store_of_mixed_trials(d: &Dir) {
    let path = d.write("g.toml", GRID);
    let g = runner::grid::load(&path).unwrap();
    let mut trials: Vec<NewTrial> = g
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| NewTrial {
            key: t.key.clone(),
            arch: t.arch.name().to_string(),
            config_json: t.config_json(),
            params: 1000,
            mflops: 1.0,
            ord: i as i64,
        })
        .collect();
    let alexnet = serde_json::json!({
        "experiment": "mixed", "arch": "alexnet", "seed": 1, "dataset": {"kind": "synthetic"},
        "params": {"layers": 11, "bn": true},
    })
    .to_string();
    trials.push(NewTrial {
        key: "f".repeat(64),
        arch: "alexnet".into(),
        config_json: alexnet,
        params: 1000,
        mflops: 1.0,
        ord: 2,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(&d.path().join("runs.db")).await.unwrap();
        store.register("mixed", GRID, &trials).await.unwrap();
        // A second experiment of ResNets only.
        let resnet = NewTrial {
            key: "e".repeat(64),
            ord: 0,
            ..trials[1].clone()
        };
        store.register("resnets", "", &[resnet]).await.unwrap();
        store.close().await;
    });
}

#[test]
fn report_csv_shows_each_architectures_own_parameters_and_empty_cells_for_the_others() {
    let d = Dir::new();
    store_of_mixed_trials(&d);
    let r = d.run(&["report", "--csv", "--experiment", "mixed"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let out = r.stdout();
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    // Registered architectures in registry order (plain: depth, width; resnet adds shortcut,
    // preact, block), then the unknown one's stored parameters, sorted; then the fixed columns.
    assert_eq!(
        header[..11],
        [
            "experiment",
            "trial",
            "arch",
            "depth",
            "width",
            "shortcut",
            "preact",
            "block",
            "bn",
            "layers",
            "params"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == header.len()), "{out}");
    let cell = |arch: &str, name: &str| {
        let row = rows.iter().find(|r| r[2] == arch).unwrap();
        row[header.iter().position(|h| *h == name).unwrap()]
    };
    assert_eq!(
        ["depth", "width", "shortcut", "preact", "block", "bn", "layers"].map(|n| cell("plain", n)),
        ["8", "16", "", "", "", "", ""]
    );
    assert_eq!(
        ["depth", "width", "shortcut", "preact", "block", "bn", "layers"].map(|n| cell("resnet", n)),
        ["8", "16", "B", "false", "basic", "", ""]
    );
    assert_eq!(
        ["depth", "width", "shortcut", "bn", "layers"].map(|n| cell("alexnet", n)),
        ["", "", "", "true", "11"]
    );

    // The table has the same parameter columns, and JSON the same keys in every object.
    let table = d.run(&["report", "--experiment", "mixed"]).stdout();
    let titles: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        titles[3..10],
        ["depth", "width", "shortcut", "preact", "block", "bn", "layers"]
    );
    let json = d.run(&["report", "--json", "--experiment", "mixed"]).stdout();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    for item in json.as_array().unwrap() {
        let keys: Vec<&String> = item["arch_params"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["block", "bn", "depth", "layers", "preact", "shortcut", "width"]);
    }
    assert_eq!(json[1]["arch_params"]["shortcut"], "B");
    assert!(json[0]["arch_params"]["shortcut"].is_null());

    // The architectures of the rows reported decide the columns: resnet alone has its five.
    let r = d.run(&["report", "--csv", "--experiment", "resnets"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let header = r.stdout().lines().next().unwrap().to_string();
    assert!(
        header.starts_with("experiment,trial,arch,depth,shortcut,preact,block,width,params,status,"),
        "{header}"
    );
}

#[test]
fn bench_param_errors_exit_2_naming_the_parameter_and_the_choices() {
    let d = Dir::new();
    for (args, wants) in [
        (&["-p", "shortcut=D"][..], &["shortcut", "A, B, C"][..]),
        (
            &["--param", "depht=20"],
            &["depht", "depth, shortcut, preact, block, width"],
        ),
        (&["--param", "preact=yes"], &["preact", "true or false"]),
        (&["--arch", "plain", "-p", "block=basic"], &["block", "depth, width"]),
        (&["--depth", "21"], &["--depth", "6n+2"]),
    ] {
        let mut all = vec!["bench", "--steps", "1", "--warmup", "0", "--batch", "2"];
        all.extend(args);
        let r = d.run(&all);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr());
        for w in wants {
            assert!(r.stderr().contains(w), "{args:?}: `{w}` missing from {}", r.stderr());
        }
        assert!(r.stdout().is_empty(), "{args:?} timed something: {}", r.stdout());
    }
}
