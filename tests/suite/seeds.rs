//! `runner report` over a grid that repeats each network with three seeds: one line per
//! network with the statistics of its seeds, checked against the trials' own rows.

use crate::util::{csv_rows, grid, Dir};

#[test]
fn report_groups_the_seeds_of_each_network_and_per_seed_shows_every_trial() {
    let d = Dir::new();
    d.write("g.toml", &grid("seeds", "\"plain\", \"resnet\"", "1, 2, 3", 8, 8));
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());

    // The trials' own test errors, per architecture, from the per-trial CSV.
    let (header, rows) = csv_rows(&d);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows.len(), 6);
    let table = d.run(&["report"]).stdout();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a title and a line per network:\n{table}");
    let titles: Vec<&str> = lines[0].split("  ").map(str::trim).filter(|t| !t.is_empty()).collect();
    for arch in ["plain", "resnet"] {
        let errors: Vec<f64> = rows
            .iter()
            .filter(|r| r[col("arch")] == arch)
            .map(|r| r[col("test_error")].parse().unwrap())
            .collect();
        assert_eq!(errors.len(), 3);
        let mean = errors.iter().sum::<f64>() / 3.0;
        let std = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        let line = lines.iter().find(|l| l.contains(arch)).unwrap();
        let cells: Vec<&str> = line.split("  ").map(str::trim).filter(|t| !t.is_empty()).collect();
        let cell = |title: &str| cells[titles.iter().position(|t| *t == title).unwrap()];
        assert_eq!(cell("n"), "3", "{line}");
        assert_eq!(cell("status"), "3 done", "{line}");
        assert_eq!(
            cell("test err %"),
            format!("{:.2} ± {:.2}", mean * 100.0, std * 100.0),
            "{line}"
        );
        let min = errors.iter().copied().fold(f64::INFINITY, f64::min);
        assert_eq!(cell("test min"), format!("{:.2}", min * 100.0), "{line}");
        // The CSV carries the same figures on each of the group's lines.
        for r in rows.iter().filter(|r| r[col("arch")] == arch) {
            let of_group: f64 = r[col("test_error_mean")].parse().unwrap();
            assert!((of_group - mean).abs() < 1e-12, "{of_group} vs {mean}");
            assert_eq!(r[col("seed_group_done")], "3");
        }
    }

    let per_seed = d.run(&["report", "--per-seed"]).stdout();
    assert_eq!(per_seed.lines().count(), 7, "a title and six trials:\n{per_seed}");
}
