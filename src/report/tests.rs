use super::*;

fn row(trial: i64) -> SummaryRow {
    SummaryRow {
        experiment: "depth".into(),
        trial,
        key: "3fa2c1d4e5f6".into(),
        arch: "resnet".into(),
        depth: Some(20),
        shortcut: Some("A".into()),
        preact: Some(false),
        block: Some("basic".into()),
        width: Some(16),
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
    }
}

/// A plain net that failed early: most values NULL, an error full of CSV's special characters.
fn failed(trial: i64) -> SummaryRow {
    SummaryRow {
        arch: "plain".into(),
        shortcut: None,
        preact: None,
        block: None,
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
    assert!(text.starts_with(
        "experiment,trial,arch,depth,shortcut,preact,block,params,status,steps,best_val_error,test_error,\
         train_loss,wall_s,images_per_s,mflops,width,seed,dataset,best_step,key,error\n"
    ));
    assert_eq!(text.lines().count(), 1);
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
    assert!(items[1]["preact"].is_null());
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
    assert_eq!(header.matches(" | ").count(), COLUMNS.len() + 2);
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
    let doc = document(&rows, Some(&paper), &links);
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
    let plain = document(&rows, None, &[]);
    assert!(!plain.contains("paper") && !plain.contains("## Charts"), "{plain}");
}
