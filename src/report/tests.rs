use super::*;

/// Parameters as the store holds them.
fn params(json: serde_json::Value) -> Params {
    serde_json::from_value(json).unwrap()
}

fn row(trial: i64) -> SummaryRow {
    SummaryRow {
        experiment: "depth".into(),
        trial,
        key: "3fa2c1d4e5f6".into(),
        arch: "resnet".into(),
        arch_params: params(serde_json::json!({
            "block": "basic", "depth": 20, "preact": false, "shortcut": "A", "width": 16
        })),
        seed: Some(1),
        dataset: Some("cifar10".into()),
        params: 269_722,
        mflops: 40.8,
        status: "done".into(),
        steps: Some(64_000),
        best_val_error: Some(0.0875),
        best_step: Some(48_000),
        test_error: Some(0.0912),
        train_loss: Some(0.0123),
        wall_s: Some(3725.0),
        images_per_s: Some(812.4),
        error: None,
        settings: Params::default(),
    }
}

/// A plain net that failed early: most values NULL, an error full of CSV's special characters.
fn failed(trial: i64) -> SummaryRow {
    SummaryRow {
        arch: "plain".into(),
        arch_params: params(serde_json::json!({ "depth": 20, "width": 16 })),
        status: "failed".into(),
        steps: None,
        best_val_error: None,
        best_step: None,
        test_error: None,
        train_loss: None,
        wall_s: None,
        images_per_s: None,
        error: Some("shape mismatch, \"conv1\"\nsecond line".into()),
        ..row(trial)
    }
}

/// Splits CSV text into records of fields, following RFC 4180 quoting.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "CSV does not end with a record"
    );
    records
}

#[test]
fn csv_header_is_the_documented_one() {
    let text = csv(&[]);
    assert_eq!(
        text,
        "experiment,trial,arch,params,status,steps,best_val_error,test_error,\
         train_loss,wall_s,images_per_s,mflops,seed,dataset,best_step,key,error\n"
    );
    // The parameter columns come after `arch`: those of the architectures in the rows, in
    // registry order (plain before resnet) and each plugin's order, shared names once.
    let header = csv(&[row(1), failed(2)]).lines().next().unwrap().to_string();
    assert_eq!(
        header,
        "experiment,trial,arch,depth,width,shortcut,preact,block,params,status,steps,best_val_error,\
         test_error,train_loss,wall_s,images_per_s,mflops,seed,dataset,best_step,key,error"
    );
    assert_eq!(header, csv_header(&[failed(2), row(1)]), "row order does not matter");
    let resnet_only = csv_header(&[row(1)]);
    assert!(
        resnet_only.starts_with("experiment,trial,arch,depth,shortcut,preact,block,width,params,"),
        "{resnet_only}"
    );
}

#[test]
fn csv_keeps_fractions_and_leaves_nulls_empty() {
    let rows = [row(1), failed(2)];
    let records = parse_csv(&csv(&rows));
    let header = &records[0];
    let field = |r: usize, name: &str| -> String {
        let i = header.iter().position(|h| h == name).unwrap();
        records[r][i].clone()
    };
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.len() == header.len()));

    assert_eq!(
        field(1, "best_val_error").parse::<f64>().unwrap(),
        rows[0].best_val_error.unwrap()
    );
    assert_eq!(
        field(1, "test_error").parse::<f64>().unwrap(),
        rows[0].test_error.unwrap()
    );
    assert_eq!(field(1, "params"), rows[0].params.to_string());
    assert_eq!(field(1, "preact"), "false");
    assert_eq!(field(1, "error"), "");

    for name in [
        "shortcut",
        "preact",
        "block",
        "steps",
        "best_val_error",
        "test_error",
        "wall_s",
    ] {
        assert_eq!(field(2, name), "", "{name}");
    }
    // Commas, quotes and newlines survive the round trip.
    assert_eq!(Some(field(2, "error")), rows[1].error);
}

#[test]
fn table_aligns_columns_and_shows_percent() {
    let rows = [row(1), failed(12)];
    let text = table(&rows);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("experiment"));
    // Right-aligned numbers end at the same column as their title.
    let title_end = lines[0].find("test err %").unwrap() + "test err %".len();
    assert_eq!(&lines[1][..title_end].trim_end()[title_end - 4..], "9.12");
    assert!(lines[1].contains("8.75"));
    assert!(lines[1].contains("0.27M"));
    assert!(lines[1].contains("1h02m"));
    // The failed trial: NULLs as dashes, its error below the table, first line only.
    assert!(lines[2].contains(" - "));
    let note = lines.iter().find(|l| l.starts_with("trial 12 failed")).unwrap();
    assert!(note.contains("shape mismatch") && !note.contains("second line"));
}

#[test]
fn markdown_has_one_line_per_trial_and_escapes_pipes() {
    let mut odd = row(2);
    odd.experiment = "a|b".into();
    let text = markdown(&[row(1), odd]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    let columns = lines[0].matches(" | ").count();
    for l in &lines {
        assert_eq!(l.matches(" | ").count(), columns, "{l}");
    }
    assert!(lines[1].contains("---:"));
    assert!(lines[2].contains("| 8.75 |"));
    assert!(lines[3].contains("a\\|b"));
}

#[test]
fn json_is_an_array_with_nulls_and_fractions() {
    let rows = [row(1), failed(2)];
    let value: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
    let items = value.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["best_val_error"].as_f64(), rows[0].best_val_error);
    assert_eq!(items[0]["trial"].as_i64(), Some(1));
    assert!(items[1]["test_error"].is_null());
    // Every object has every parameter of the report, null where its architecture has none.
    assert_eq!(items[0]["arch_params"]["preact"].as_bool(), Some(false));
    assert_eq!(items[1]["arch_params"]["depth"].as_i64(), Some(20));
    assert!(items[1]["arch_params"]["preact"].is_null());
    assert!(items[1]["arch_params"].as_object().unwrap().contains_key("shortcut"));
    assert_eq!(items[1]["error"].as_str(), rows[1].error.as_deref());
}

#[test]
fn durations_and_counts_read_like_a_paper() {
    assert_eq!(duration(45.2), "45s");
    assert_eq!(duration(200.0), "3m20s");
    assert_eq!(duration(7500.0), "2h05m");
    assert_eq!(count(1_727_962), "1.73M");
    assert_eq!(count(9_856), "9856");
}

fn comparison() -> paper::Comparison {
    paper::Comparison {
        entry: paper::ENTRIES[0],
        recipe: vec![
            "dataset synthetic, not cifar10".into(),
            "300 iterations, fewer than 64k".into(),
        ],
    }
}

#[test]
fn paper_columns_show_the_figure_our_difference_and_the_recipe_or_dashes() {
    let rows = [row(1), failed(2)];
    let paper = [Some(comparison()), None];
    let text = table_with(&rows, Some(&paper));
    let lines: Vec<&str> = text.lines().collect();
    let words = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert!(lines[0].contains("images/s  paper test err %"), "{}", lines[0]);
    assert_eq!(words(lines[0])[words(lines[0]).len() - 2..], ["diff", "recipe"]);
    // Ours 9.12 − paper 8.75, then the recipe.
    let cut = lines[1].find("dataset synthetic").expect("the recipe");
    assert_eq!(
        lines[1][cut..],
        *"dataset synthetic, not cifar10; 300 iterations, fewer than 64k"
    );
    assert_eq!(words(&lines[1][..cut]).split_last().unwrap().1.last().unwrap(), "8.75");
    assert_eq!(words(&lines[1][..cut]).last().unwrap(), "+0.37");
    assert_eq!(words(lines[2])[words(lines[2]).len() - 3..], ["-", "-", "-"]);

    let md = markdown_with(&rows, Some(&paper));
    let header = md.lines().next().unwrap();
    // The fixed columns, the five parameters of resnet and plain, the three paper columns.
    assert_eq!(header.matches(" | ").count(), LEADING.len() + TRAILING.len() + 5 + 2);
    assert!(md
        .lines()
        .nth(2)
        .unwrap()
        .contains("| 8.75 | +0.37 | dataset synthetic"));

    let records = parse_csv(&csv_with(&rows, Some(&paper)));
    let header = &records[0];
    assert_eq!(header[header.len() - 4..], PAPER_FIELDS.map(String::from));
    let field = |r: usize, name: &str| records[r][header.iter().position(|h| h == name).unwrap()].clone();
    assert_eq!(field(1, "paper_test_error"), "0.0875");
    assert!((field(1, "paper_diff").parse::<f64>().unwrap() - 0.0037).abs() < 1e-12);
    assert_eq!(
        field(1, "recipe"),
        "dataset synthetic, not cifar10; 300 iterations, fewer than 64k"
    );
    assert!(field(1, "paper_source").contains("Table 6"));
    assert_eq!(field(2, "paper_test_error"), "");
    assert_eq!(field(2, "recipe"), "");

    let value: serde_json::Value = serde_json::from_str(&json_with(&rows, Some(&paper))).unwrap();
    assert_eq!(value[0]["paper_test_error"].as_f64(), Some(0.0875));
    assert!((value[0]["paper_diff"].as_f64().unwrap() - 0.0037).abs() < 1e-12);
    assert_eq!(value[0]["recipe"].as_array().unwrap().len(), 2);
    assert!(value[1]["paper_test_error"].is_null() && value[1]["recipe"].is_null());
    // Without --paper nothing changes.
    assert_eq!(csv_with(&rows, None), csv(&rows));
    assert_eq!(table_with(&rows, None), table(&rows));
}

#[test]
fn the_markdown_document_has_a_title_the_table_the_paper_note_and_chart_links() {
    let rows = [row(1), failed(2)];
    let paper = [Some(comparison()), None];
    let links = [ChartLink {
        experiment: "depth".into(),
        title: "depth on cifar10: error during training".into(),
        image: "charts/depth-curves.png".into(),
        svg: Some("charts/depth-curves.svg".into()),
    }];
    let doc = document(&rows, None, Some(&paper), &links);
    assert!(doc.starts_with("# runner report: depth\n"), "{doc}");
    assert!(doc.contains("- **depth**: dataset cifar10; 2 trials, 1 done"), "{doc}");
    assert!(doc.contains(&markdown_with(&rows, Some(&paper))));
    assert!(doc.contains("1 of 2 trials") && doc.contains("Table 6"), "{doc}");
    assert!(doc.contains("## Failed trials\n\n- trial 2 failed"), "{doc}");
    assert!(
        doc.contains("![depth on cifar10: error during training](charts/depth-curves.png)"),
        "{doc}"
    );
    assert!(doc.contains("[SVG](charts/depth-curves.svg)"), "{doc}");
    // Plain --markdown: no paper note, no charts section.
    let plain = document(&rows, None, None, &[]);
    assert!(!plain.contains("paper") && !plain.contains("## Charts"), "{plain}");
}

/// An architecture of a test registry: a name and its parameters.
struct Fake(&'static str, &'static [crate::arch::ParamSpec]);

const fn spec(name: &'static str) -> crate::arch::ParamSpec {
    crate::arch::ParamSpec {
        name,
        kind: crate::arch::ParamKind::Int { min: 0, max: 100 },
        default: crate::arch::DefaultValue::Int(1),
        doc: "",
    }
}

impl Architecture for Fake {
    fn name(&self) -> &'static str {
        self.0
    }
    fn summary(&self) -> &'static str {
        "a test architecture"
    }
    fn params(&self) -> &'static [crate::arch::ParamSpec] {
        self.1
    }
    fn build(
        &self,
        _: &Params,
        _: crate::arch::InputShape,
        _: usize,
        _: candle_nn::VarBuilder,
    ) -> candle_core::Result<crate::arch::Model> {
        candle_core::bail!("not built in tests")
    }
}

#[test]
fn param_columns_follow_the_registry_then_declaration_order_with_shared_names_once() {
    const MLP: &[crate::arch::ParamSpec] = &[spec("hidden"), spec("layers")];
    const CNN: &[crate::arch::ParamSpec] = &[spec("layers"), spec("kernel"), spec("channels")];
    const UNUSED: &[crate::arch::ParamSpec] = &[spec("never")];
    let (mlp, cnn, unused) = (Fake("mlp", MLP), Fake("cnn", CNN), Fake("unused", UNUSED));
    let registry: [&dyn Architecture; 3] = [&unused, &cnn, &mlp];
    let none = Params::default();
    let old = params(serde_json::json!({ "zeta": 1, "alpha": 2 }));
    let dropped = params(serde_json::json!({ "hidden": 1, "layers": 2, "dropout": 3 }));
    let trials = [("mlp", &dropped), ("gone", &old), ("cnn", &none), ("mlp", &none)];
    assert_eq!(
        param_columns(trials, &registry),
        // cnn before mlp (registry order), `layers` once; mlp's stored-but-undeclared `dropout`
        // after its declared ones; the unregistered architecture's stored names last, sorted.
        ["layers", "kernel", "channels", "hidden", "dropout", "alpha", "zeta"]
    );
    assert_eq!(param_columns([], &registry), Vec::<String>::new());
}

#[test]
fn a_parameter_named_like_a_fixed_column_gets_a_title_of_its_own() {
    assert_eq!(param_title("steps", &CSV_TRAILING), "arch_params.steps");
    assert_eq!(param_title("depth", &CSV_TRAILING), "depth");
    let mut r = row(1);
    r.arch = "gone".into();
    r.arch_params = params(serde_json::json!({ "steps": 3 }));
    let header = csv_header(&[r]);
    assert!(
        header.starts_with("experiment,trial,arch,arch_params.steps,params,status,steps,"),
        "{header}"
    );
}

#[test]
fn csv_shows_each_architectures_own_parameters_and_empty_cells_for_the_others() {
    let rows = [row(1), failed(2)];
    let records = parse_csv(&csv(&rows));
    let header = &records[0];
    let field = |r: usize, name: &str| records[r][header.iter().position(|h| h == name).unwrap()].clone();
    let names = ["depth", "width", "shortcut", "preact", "block"];
    assert_eq!(names.map(|n| field(1, n)), ["20", "16", "A", "false", "basic"]);
    assert_eq!(names.map(|n| field(2, n)), ["20", "16", "", "", ""]);
    // The table: booleans as yes/no, NULL as a dash.
    let text = table(&rows);
    let lines: Vec<Vec<&str>> = text.lines().take(3).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][3..8], names);
    assert_eq!(lines[1][3..8], ["20", "16", "A", "no", "basic"]);
    assert_eq!(lines[2][3..8], ["20", "16", "-", "-", "-"]);
}

/// A stored configuration as the grid writes it: the seed at the top and in `train`.
fn config(depth: i64, lr: f64, seed: u64) -> String {
    serde_json::json!({
        "experiment": "depth", "arch": "resnet", "params": { "depth": depth },
        "dataset": { "kind": "synthetic" },
        "train": { "lr": lr, "seed": seed }, "seed": seed,
    })
    .to_string()
}

#[test]
fn trials_that_differ_only_in_their_seed_are_one_group_and_any_other_setting_keeps_them_apart() {
    let configs = [
        config(20, 0.1, 1),
        config(32, 0.1, 1),
        config(20, 0.1, 2),
        config(32, 0.1, 2),
        config(20, 0.1, 3),
        config(20, 0.05, 1),
    ];
    let groups = seeds::groups(&configs);
    let members: Vec<Vec<usize>> = groups.iter().map(|g| g.members.clone()).collect();
    assert_eq!(members, [vec![0, 2, 4], vec![1, 3], vec![5]]);
    assert_eq!(seeds::group_of_rows(&groups, 6), [0, 1, 0, 1, 0, 2]);
}

#[test]
fn seed_statistics_are_the_mean_the_sample_deviation_and_the_extremes() {
    let s = seeds::Stats::of([0.08, 0.06, 0.07]).unwrap();
    assert_eq!((s.n, s.min, s.max), (3, 0.06, 0.08));
    assert!((s.mean - 0.07).abs() < 1e-12, "{s:?}");
    // deviations −0.01, 0, +0.01: (2 × 0.0001) / (3 − 1) = 0.0001, std 0.01
    assert!((s.std.unwrap() - 0.01).abs() < 1e-12, "{s:?}");
    assert_eq!(s.mean_std_percent(), "7.00 ± 1.00");
    assert_eq!(s.paper_form(), "6.00 (7.00 ± 1.00)");
    let one = seeds::Stats::of([0.0643]).unwrap();
    assert_eq!((one.std, one.paper_form()), (None, "6.43".to_string()));
    assert_eq!(seeds::Stats::of([]), None);
}

/// Three seeds of one ResNet (two done, one failed) and one plain net.
fn seed_rows() -> (Vec<SummaryRow>, Vec<seeds::Group>) {
    let rows = vec![
        SummaryRow {
            seed: Some(1),
            best_val_error: Some(0.10),
            test_error: Some(0.12),
            ..row(1)
        },
        SummaryRow {
            seed: Some(1),
            ..failed(2)
        },
        SummaryRow {
            seed: Some(2),
            best_val_error: Some(0.20),
            test_error: Some(0.16),
            ..row(3)
        },
        SummaryRow {
            seed: Some(3),
            ..failed(4)
        },
    ];
    // rows 1 and 3 are one ResNet with seeds 1 and 2 (the failed row 4 a third seed of it)
    let configs = [
        config(20, 0.1, 1),
        config(8, 0.1, 1),
        config(20, 0.1, 2),
        config(20, 0.1, 3),
    ];
    (rows, seeds::groups(&configs))
}

#[test]
fn the_seed_table_has_a_line_per_group_with_its_count_and_its_errors_over_the_done_trials() {
    let (rows, groups) = seed_rows();
    let text = seeds_table(&rows, &groups, None);
    let lines: Vec<&str> = text.lines().collect();
    let titles: Vec<&str> = lines[0].split("  ").map(str::trim).filter(|t| !t.is_empty()).collect();
    assert_eq!(titles[..3], ["experiment", "trials", "arch"]);
    let cell = |line: &str, title: &str| -> String {
        let cells: Vec<&str> = line.split("  ").map(str::trim).filter(|t| !t.is_empty()).collect();
        cells[titles.iter().position(|t| *t == title).unwrap()].to_string()
    };
    let resnet = lines.iter().find(|l| l.contains("1,3,4")).expect(&text);
    assert_eq!(cell(resnet, "status"), "2 done, 1 failed");
    assert_eq!(cell(resnet, "n"), "2");
    // best val 0.10 and 0.20: mean 15.00, std √((0.05² × 2) / 1) = 7.07
    assert_eq!(cell(resnet, "best val err %"), "15.00 ± 7.07");
    assert_eq!(
        (cell(resnet, "test min"), cell(resnet, "test max")),
        ("12.00".into(), "16.00".into())
    );
    let plain = lines
        .iter()
        .find(|l| l.contains(" 2 ") && l.contains("plain"))
        .expect(&text);
    assert_eq!(cell(plain, "n"), "0");
    assert!(
        text.contains("trial 2 failed") && text.contains("trial 4 failed"),
        "{text}"
    );
    assert_eq!(
        lines.iter().take_while(|l| !l.is_empty()).count(),
        3,
        "a title and two groups: {text}"
    );
}

#[test]
fn seed_csv_and_json_keep_a_record_per_trial_with_its_groups_figures() {
    let (rows, groups) = seed_rows();
    let records = parse_csv(&seeds_csv(&rows, &groups, None));
    let header = &records[0];
    assert_eq!(
        header[header.len() - SEED_FIELDS.len()..],
        SEED_FIELDS.map(String::from)
    );
    assert_eq!(records.len(), 1 + rows.len());
    let field = |record: &Vec<String>, name: &str| record[header.iter().position(|h| h == name).unwrap()].clone();
    for trial in ["1", "3", "4"] {
        let r = records.iter().find(|r| r[1] == trial).unwrap();
        assert_eq!(field(r, "seed_group"), "1");
        assert_eq!(field(r, "seed_group_done"), "2");
        assert_eq!(field(r, "test_error_min"), "0.12");
        assert_eq!(field(r, "test_error_max"), "0.16");
    }
    let plain = records.iter().find(|r| r[1] == "2").unwrap();
    assert_eq!(
        (field(plain, "seed_group"), field(plain, "test_error_mean")),
        ("2".into(), String::new())
    );

    let json: serde_json::Value = serde_json::from_str(&seeds_json(&rows, &groups, None)).unwrap();
    let group = &json[3]["seed_group"];
    assert_eq!(group["trials"], serde_json::json!([1, 3, 4]));
    assert_eq!(group["done"], 2);
    assert!(
        (group["test_error"]["mean"].as_f64().unwrap() - 0.14).abs() < 1e-12,
        "{group}"
    );
    assert!(json[1]["seed_group"]["test_error"].is_null());
}

#[test]
fn with_the_paper_a_seed_group_shows_best_mean_and_std_and_our_best_against_the_papers_figure() {
    let (rows, groups) = seed_rows();
    let paper = [Some(comparison()), None, Some(comparison()), Some(comparison())];
    let text = seeds_table(&rows, &groups, Some(&paper));
    let resnet = text.lines().find(|l| l.contains("1,3,4")).expect(&text);
    // test errors 0.12 and 0.16: best 12.00, mean 14.00, std √(2 × 0.02²) = 2.83; the paper
    // has 8.75, so our best is 3.25 points above it
    assert!(
        text.lines().next().unwrap().contains("test err % best (mean ± std)"),
        "{text}"
    );
    assert!(resnet.contains("12.00 (14.00 ± 2.83)"), "{resnet}");
    assert!(resnet.contains("  8.75  +3.25  dataset synthetic"), "{resnet}");
    let md = document(&rows, Some(&groups), Some(&paper), &[]);
    assert!(
        md.contains("| 1,3,4 | resnet |") && md.contains("| 12.00 (14.00 ± 2.83) |"),
        "{md}"
    );
}

#[test]
fn the_settings_reported_are_those_that_vary_within_an_experiment() {
    let config = |experiment: &str, lr: f64, iterations: u64, seed: u64| {
        serde_json::json!({
            "experiment": experiment, "seed": seed,
            "train": { "optimizer": { "kind": "sgd", "lr": lr }, "iterations": iterations, "seed": seed },
        })
        .to_string()
    };
    // `a` sweeps the rate and two seeds; `b` has other iterations than `a`, the same in all
    // and a configuration without `[train]` (another program's) changes nothing
    let settings = varying_settings(&[
        config("a", 0.1, 100, 1),
        config("a", 0.05, 100, 2),
        config("b", 0.1, 300, 1),
        config("b", 0.1, 300, 2),
        serde_json::json!({ "experiment": "a", "arch": "alexnet" }).to_string(),
    ]);
    assert!(settings[4].0.is_empty());
    let settings = &settings[..4];
    let names: Vec<Vec<&String>> = settings.iter().map(|p| p.0.keys().collect()).collect();
    assert!(names.iter().all(|n| n == &["train.optimizer.lr"]), "{names:?}");
    assert_eq!(settings[1].get("train.optimizer.lr"), Some(&Value::Float(0.05)));
    assert_eq!(settings[2].get("train.optimizer.lr"), Some(&Value::Float(0.1)));
}
