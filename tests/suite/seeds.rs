//! `runner report` over grids that repeat each network with three seeds: one line per network
//! (and per setting swept) with the statistics of its seeds, checked against the trials' own
//! rows; `--per-seed` shows the trials.

use crate::util::{csv_rows, grid, Dir};

/// Runs `grid_text`, then checks that the report has one line per value of the CSV column
/// `by`, each with n = 3 and the mean ± std and minimum of its trials' test errors, and that
/// `--per-seed` has a line per trial.
fn check_seed_groups(grid_text: &str, by: &str, groups: &[&str]) {
    let d = Dir::new();
    d.write("g.toml", grid_text);
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());

    // The trials' own test errors, from the per-trial CSV.
    let (header, rows) = csv_rows(&d);
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("{name}: {header:?}"))
    };
    assert_eq!(rows.len(), 3 * groups.len());
    let table = d.run(&["report"]).stdout();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + groups.len(), "a title and a line per group:\n{table}");
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    };
    let titles = split(lines[0]);
    let at = |title: &str| {
        titles
            .iter()
            .position(|t| t == title)
            .unwrap_or_else(|| panic!("{title}:\n{table}"))
    };
    for group in groups {
        let errors: Vec<f64> = rows
            .iter()
            .filter(|r| r[col(by)] == *group)
            .map(|r| r[col("test_error")].parse().unwrap())
            .collect();
        assert_eq!(errors.len(), 3, "{by} = {group}");
        let mean = errors.iter().sum::<f64>() / 3.0;
        let std = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        let line = lines
            .iter()
            .map(|l| split(l))
            .find(|cells| cells[at(by)] == *group)
            .unwrap_or_else(|| panic!("no line for {by} = {group}:\n{table}"));
        assert_eq!(line[at("n")], "3", "{line:?}");
        assert_eq!(line[at("status")], "3 done", "{line:?}");
        assert_eq!(
            line[at("test err %")],
            format!("{:.2} ± {:.2}", mean * 100.0, std * 100.0),
            "{line:?}"
        );
        let min = errors.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(line[at("test min")], format!("{:.2}", min * 100.0), "{line:?}");
        // The CSV carries the same figures on each of the group's lines.
        for r in rows.iter().filter(|r| r[col(by)] == *group) {
            let of_group: f64 = r[col("test_error_mean")].parse().unwrap();
            assert!((of_group - mean).abs() < 1e-12, "{of_group} vs {mean}");
            assert_eq!(r[col("seed_group_done")], "3");
        }
    }
    let per_seed = d.run(&["report", "--per-seed"]).stdout();
    assert_eq!(
        per_seed.lines().count(),
        1 + rows.len(),
        "a title and a line per trial:\n{per_seed}"
    );
}

#[test]
fn report_groups_the_seeds_of_each_network_and_per_seed_shows_every_trial() {
    check_seed_groups(
        &grid("seeds", "\"plain\", \"resnet\"", "1, 2, 3", 8, 8),
        "arch",
        &["plain", "resnet"],
    );
}

#[test]
fn a_learning_rate_swept_over_three_seeds_is_two_lines_with_the_rate_as_a_column() {
    let text = grid("lr", "\"resnet\"", "1, 2, 3", 8, 8) + "\"train.lr\" = [0.1, 0.05]\n";
    // The dry run shows the setting as a column.
    let d = Dir::new();
    d.write("g.toml", &text);
    let r = d.run(&["run", "g.toml", "--dry-run"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let plan = r.stdout();
    assert!(plan.lines().nth(1).unwrap().contains("train.lr"), "{plan}");
    assert_eq!(plan.lines().filter(|l| l.contains(" 0.05 ")).count(), 3, "{plan}");
    check_seed_groups(&text, "train.optimizer.lr", &["0.1", "0.05"]);
}
