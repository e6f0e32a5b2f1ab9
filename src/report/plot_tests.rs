//! Charts from hand-built rows and series: what each chart holds, and that the SVG and PNG
//! files carry it (curves counted in the SVG, pixels checked in the decoded PNG).

use std::collections::BTreeMap;

use super::plot::*;
use crate::arch::{Params, Value};
use crate::store::{MetricRow, SummaryRow};

fn row(trial: i64, arch: &str, depth: i64) -> SummaryRow {
    let resnet = arch == "resnet";
    SummaryRow {
        experiment: "depth".into(),
        trial,
        key: format!("{trial:012}"),
        arch: arch.into(),
        arch_params: Params(if resnet {
            BTreeMap::from([
                ("depth".into(), Value::Int(depth)),
                ("shortcut".into(), Value::Str("A".into())),
                ("preact".into(), Value::Bool(false)),
                ("block".into(), Value::Str("basic".into())),
                ("width".into(), Value::Int(16)),
            ])
        } else {
            BTreeMap::from([("depth".into(), Value::Int(depth)), ("width".into(), Value::Int(16))])
        }),
        seed: Some(1),
        dataset: Some("cifar10".into()),
        params: 269_722,
        mflops: 40.8,
        status: "done".into(),
        steps: Some(400),
        best_val_error: Some(0.05 + depth as f64 / 1000.0 + trial as f64 / 100.0),
        best_step: Some(300),
        test_error: Some(0.06 + depth as f64 / 1000.0 + trial as f64 / 100.0),
        train_loss: Some(0.1),
        wall_s: Some(10.0),
        images_per_s: Some(100.0),
        error: None,
        settings: Params::default(),
    }
}

fn set(r: &mut SummaryRow, name: &str, v: Value) {
    r.arch_params.0.insert(name.into(), v);
}

/// A pending trial: nothing but its configuration.
fn pending(trial: i64, arch: &str, depth: i64) -> SummaryRow {
    SummaryRow {
        status: "pending".into(),
        steps: None,
        best_val_error: None,
        best_step: None,
        test_error: None,
        train_loss: None,
        wall_s: None,
        images_per_s: None,
        ..row(trial, arch, depth)
    }
}

/// `n` evaluations: train and val error falling from 90% (and lr, loss, which charts ignore).
fn series(trial: i64, n: i64) -> Vec<MetricRow> {
    let mut v = Vec::new();
    for i in 0..n {
        let step = (i + 1) * 100;
        for (split, name, value) in [
            ("train", "error", 0.9 / (i + 1) as f64 + trial as f64 / 100.0),
            ("train", "loss", 2.0),
            ("train", "lr", 0.1),
            ("val", "error", 0.95 / (i + 1) as f64 + trial as f64 / 100.0),
            ("val", "loss", 2.1),
        ] {
            v.push(MetricRow {
                step,
                epoch: step as f64 / 350.0,
                split: split.into(),
                name: name.into(),
                value,
            });
        }
    }
    v
}

/// plain and resnet at depths 20 and 32, five evaluations each.
fn depth_grid() -> (Vec<SummaryRow>, Metrics) {
    let rows = vec![
        row(1, "plain", 20),
        row(2, "plain", 32),
        row(3, "resnet", 20),
        row(4, "resnet", 32),
    ];
    let metrics = rows.iter().map(|r| (r.trial, series(r.trial, 5))).collect();
    (rows, metrics)
}

fn chart<'a>(charts: &'a [Chart], kind: &str) -> &'a Chart {
    charts
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} chart"))
}

/// `<polyline>` elements of an SVG: (stroke colour, stroke width, number of points).
fn polylines(svg: &str) -> Vec<(String, u32, usize)> {
    svg.split("<polyline")
        .skip(1)
        .map(|tag| {
            let tag = &tag[..tag.find("/>").expect("a closed tag")];
            let attr = |name: &str| {
                let start = tag.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                tag[start..start + tag[start..].find('"').expect("a quote")].to_string()
            };
            (
                attr("stroke").to_ascii_uppercase(),
                attr("stroke-width").parse().expect("a width"),
                attr("points").split_whitespace().count(),
            )
        })
        .collect()
}

fn hex(index: usize) -> String {
    let c = colour(index);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let start = t.find('>')? + 1;
            Some(t[start..start + t[start..].find("</text>")?].trim().to_string())
        })
        .collect()
}

#[test]
fn curves_have_a_panel_per_architecture_and_a_colour_per_depth() {
    let (rows, metrics) = depth_grid();
    let (charts, skipped) = charts(&rows, &metrics);
    assert!(skipped.is_empty(), "{skipped:?}");
    let c = chart(&charts, "curves");
    let titles: Vec<&str> = c.panels.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["plain", "resnet"]);
    for p in &c.panels {
        assert_eq!(p.lines.len(), 4, "two depths × (train, val)");
        let thin: Vec<&Line> = p.lines.iter().filter(|l| l.style == Style::Thin).collect();
        let bold: Vec<&Line> = p.lines.iter().filter(|l| l.style == Style::Bold).collect();
        assert_eq!((thin.len(), bold.len()), (2, 2));
        for l in &p.lines {
            assert_eq!(l.points.len(), 5);
            // Errors are drawn in percent.
            assert!(l.points.iter().all(|&(_, y)| y > 1.0 && y <= 100.0), "{:?}", l.points);
        }
    }
    // Depth 20 has the same colour in both panels, depth 32 another one.
    let colour_of = |panel: usize, label: &str| c.panels[panel].lines.iter().find(|l| l.label == label).unwrap().colour;
    assert_eq!(colour_of(0, "plain-20"), colour_of(1, "resnet-20"));
    assert_eq!(colour_of(0, "plain-32"), colour_of(1, "resnet-32"));
    assert_ne!(colour_of(0, "plain-20"), colour_of(0, "plain-32"));
    assert!(c.title.contains("depth") && c.title.contains("cifar10"), "{}", c.title);
}

#[test]
fn curves_svg_has_one_bold_polyline_per_validation_curve_and_a_legend_entry_per_depth() {
    let (rows, metrics) = depth_grid();
    let (charts, _) = charts(&rows, &metrics);
    let c = chart(&charts, "curves");
    let svg = render_svg(c).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let lines = polylines(&svg);
    // Validation curves: bold, one polyline of 5 points each; legend samples are 2-point lines.
    let curves = lines.iter().filter(|l| l.1 == BOLD_WIDTH && l.2 == 5).count();
    assert_eq!(curves, 4);
    let samples = lines.iter().filter(|l| l.1 == BOLD_WIDTH && l.2 == 2).count();
    assert_eq!(samples, 4, "one legend entry per depth and panel");
    // Training curves: thin dashes in each depth's colour.
    for depth_colour in [hex(0), hex(1)] {
        assert!(
            lines.iter().any(|l| l.0 == depth_colour && l.1 == THIN_WIDTH),
            "no thin {depth_colour} line"
        );
    }
    let texts = texts(&svg);
    for label in [
        "plain-20",
        "plain-32",
        "resnet-20",
        "resnet-32",
        "plain",
        "resnet",
        "error (%)",
    ] {
        assert!(texts.iter().any(|t| t == label), "no text `{label}` in {texts:?}");
    }
    assert!(texts.contains(&c.title), "no title in {texts:?}");
    assert!(texts.iter().any(|t| t.starts_with("iterations")));
}

#[test]
fn depth_chart_has_test_and_validation_lines_per_architecture() {
    let (rows, metrics) = depth_grid();
    let (charts, _) = charts(&rows, &metrics);
    let c = chart(&charts, "depth");
    assert_eq!(c.panels.len(), 1);
    let labels: Vec<&str> = c.panels[0].lines.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(
        labels,
        ["plain test", "plain best val", "resnet test", "resnet best val"]
    );
    for l in &c.panels[0].lines {
        let xs: Vec<f64> = l.points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [20.0, 32.0]);
    }
    // The test error of resnet-32 (trial 4), in percent.
    let resnet_test = &c.panels[0].lines[2];
    assert!((resnet_test.points[1].1 - rows[3].test_error.unwrap() * 100.0).abs() < 1e-9);
    let svg = render_svg(c).unwrap();
    let lines = polylines(&svg);
    assert_eq!(
        lines.iter().filter(|l| l.1 == BOLD_WIDTH && l.2 == 2).count(),
        2 + 2,
        "2 test lines + 2 legend samples"
    );
    // Every point is marked: 4 lines × 2 depths.
    assert_eq!(svg.matches("<circle").count(), 8);
    let texts = texts(&svg);
    for label in labels {
        assert!(texts.iter().any(|t| t == label), "no legend `{label}`");
    }
}

#[test]
fn seeds_of_one_configuration_are_averaged_against_depth() {
    let mut a = row(1, "resnet", 20);
    let mut b = row(2, "resnet", 20);
    a.test_error = Some(0.10);
    b.test_error = Some(0.20);
    b.seed = Some(2);
    let (charts, _) = charts(&[a, b], &Metrics::new());
    let test = &chart(&charts, "depth").panels[0].lines[0];
    assert_eq!(test.points.len(), 1);
    assert!((test.points[0].1 - 15.0).abs() < 1e-9);
    // the band spans the seeds' lowest and highest test error
    assert_eq!(test.band.len(), 1);
    let (x, lo, hi) = test.band[0];
    assert_eq!(x, 20.0);
    assert!((lo - 10.0).abs() < 1e-9 && (hi - 20.0).abs() < 1e-9, "{:?}", test.band);
}

#[test]
fn a_line_of_single_runs_has_no_band_and_a_band_over_depths_is_drawn_under_its_line() {
    let mut rows = Vec::new();
    for (i, (depth, seed, err)) in [(20, 1, 0.10), (20, 2, 0.14), (32, 1, 0.08), (32, 2, 0.09)]
        .into_iter()
        .enumerate()
    {
        let mut r = row(i as i64 + 1, "resnet", depth);
        r.seed = Some(seed);
        r.test_error = Some(err);
        rows.push(r);
    }
    let (all, _) = charts(&rows, &Metrics::new());
    let depth = chart(&all, "depth");
    let test = &depth.panels[0].lines[0];
    let band: Vec<(f64, f64, f64)> = test
        .band
        .iter()
        .map(|&(x, lo, hi)| (x, lo.round(), hi.round()))
        .collect();
    assert_eq!(band, [(20.0, 10.0, 14.0), (32.0, 8.0, 9.0)]);
    // the SVG has the band as a filled polygon in the line's colour
    let svg = render_svg(depth).unwrap();
    assert!(svg.contains("<polygon"), "no band in the SVG");
    assert!(
        depth.panels[0].title.contains("band: min to max"),
        "{}",
        depth.panels[0].title
    );

    let (single, _) = charts(&rows[..1], &Metrics::new());
    assert!(chart(&single, "depth").panels[0]
        .lines
        .iter()
        .all(|l| l.band.is_empty()));
    assert!(!render_svg(chart(&single, "depth")).unwrap().contains("<polygon"));
}

#[test]
fn a_shortcut_grid_gets_a_panel_per_option_and_a_chart_by_option() {
    let mut rows = Vec::new();
    for (i, (depth, option)) in [(20, "A"), (20, "B"), (20, "C"), (32, "A"), (32, "B"), (32, "C")]
        .into_iter()
        .enumerate()
    {
        let mut r = row(i as i64 + 1, "resnet", depth);
        r.experiment = "shortcuts".into();
        set(&mut r, "shortcut", Value::Str(option.into()));
        rows.push(r);
    }
    let metrics = rows.iter().map(|r| (r.trial, series(r.trial, 3))).collect();
    let (charts, skipped) = charts(&rows, &metrics);
    assert!(skipped.is_empty(), "{skipped:?}");
    let kinds: Vec<&str> = charts.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, ["curves", "depth", "shortcut"]);
    let titles: Vec<&str> = chart(&charts, "curves")
        .panels
        .iter()
        .map(|p| p.title.as_str())
        .collect();
    assert_eq!(
        titles,
        ["resnet, shortcut A", "resnet, shortcut B", "resnet, shortcut C"]
    );
    let by = chart(&charts, "shortcut");
    assert_eq!(
        by.categories.as_deref(),
        Some(&["option A".to_string(), "option B".into(), "option C".into()][..])
    );
    let labels: Vec<&str> = by.panels[0].lines.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, ["resnet-20", "resnet-32"]);
    assert!(by.panels[0].lines.iter().all(|l| l.points.len() == 3));
    let svg = render_svg(by).unwrap();
    let texts = texts(&svg);
    for t in ["option A", "option B", "option C", "resnet-20", "resnet-32"] {
        assert!(texts.iter().any(|x| x == t), "no `{t}` in {texts:?}");
    }
    assert_eq!(polylines(&svg).iter().filter(|l| l.2 == 3).count(), 2);
}

#[test]
fn a_preact_grid_gets_a_chart_by_unit_with_a_line_per_depth_and_block() {
    let mut rows = Vec::new();
    for (i, (depth, block, preact)) in [
        (110, "basic", false),
        (110, "basic", true),
        (164, "bottleneck", false),
        (164, "bottleneck", true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = row(i as i64 + 1, "resnet", depth);
        set(&mut r, "block", Value::Str(block.into()));
        set(&mut r, "preact", Value::Bool(preact));
        rows.push(r);
    }
    let (charts, _) = charts(&rows, &Metrics::new());
    let by = chart(&charts, "preact");
    assert_eq!(
        by.categories.as_deref(),
        Some(&["original".to_string(), "pre-activation".into()][..])
    );
    let labels: Vec<&str> = by.panels[0].lines.iter().map(|l| l.label.as_str()).collect();
    // The block only changes with the depth: the depth tells it.
    assert_eq!(labels, ["resnet-110", "resnet-164"]);
    assert!(charts.iter().all(|c| c.kind != "shortcut"));
    // Against depth: one line per unit type through both depths.
    let depth = chart(&charts, "depth");
    let tests: Vec<&Line> = depth.panels[0]
        .lines
        .iter()
        .filter(|l| l.style == Style::Bold)
        .collect();
    let labels: Vec<&str> = tests.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, ["resnet, original test", "resnet, pre-activation test"]);
    assert!(tests.iter().all(|l| l.points.len() == 2));
}

#[test]
fn charts_without_data_are_skipped_with_a_reason_and_nothing_panics() {
    // Pending trials: no metrics, no errors.
    let rows = [pending(1, "plain", 20), pending(2, "resnet", 20)];
    let (charts, skipped) = charts(&rows, &Metrics::new());
    assert!(charts.is_empty());
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].starts_with("depth-curves: skipped"), "{skipped:?}");
    assert!(skipped[1].starts_with("depth-depth: skipped"), "{skipped:?}");

    // Training metrics but no validation split; NaN values; one evaluation only.
    let mut m = series(1, 1);
    m.retain(|r| r.split == "train");
    m.push(MetricRow {
        step: 200,
        epoch: 1.0,
        split: "train".into(),
        name: "error".into(),
        value: f64::NAN,
    });
    let metrics = Metrics::from([(1, m)]);
    let (charts, _) = super::plot::charts(&[pending(1, "plain", 20)], &metrics);
    let c = chart(&charts, "curves");
    assert_eq!(c.panels[0].lines.len(), 1);
    assert_eq!(c.panels[0].lines[0].points.len(), 1, "the NaN is left out");
    // A single point is drawn as a dot.
    let svg = render_svg(c).unwrap();
    assert_eq!(svg.matches("<circle").count(), 1);
    render_png(c).unwrap();
}

#[test]
fn png_is_a_decodable_picture_of_the_chart_size_with_the_curve_colours() {
    let (rows, metrics) = depth_grid();
    let (charts, _) = charts(&rows, &metrics);
    let c = chart(&charts, "curves");
    let bytes = render_png(c).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), size(c));
    let pixels = img.pixels().count();
    let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
    assert!(white < pixels, "blank picture");
    assert!(white > pixels / 2, "the background should be white");
    // The bold curves are drawn in the depth colours, and the text in black.
    for index in [0, 1] {
        let c = colour(index);
        assert!(
            img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count() > 100,
            "too few pixels of colour {index}"
        );
    }
    assert!(img.pixels().any(|p| p.0 == [0, 0, 0]), "no text");
}

#[test]
fn write_charts_names_files_by_experiment_and_kind() {
    let (mut rows, metrics) = depth_grid();
    for r in &mut rows {
        r.experiment = "my depth/grid".into();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("charts");
    let written = write_charts(&out, &rows, &metrics, true).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "my_depth_grid-curves.png",
            "my_depth_grid-curves.svg",
            "my_depth_grid-depth.png",
            "my_depth_grid-depth.svg"
        ]
    );
    assert_eq!(written.charts.len(), 2);
    assert!(written.charts.iter().all(|c| c.png.is_some()));
    let no_png = write_charts(&out, &rows, &metrics, false).unwrap();
    assert!(no_png.charts.iter().all(|c| c.png.is_none() && c.svg.exists()));
}

#[test]
fn a_swept_setting_splits_families_and_one_that_only_comes_with_a_depth_does_not() {
    let with = |r: &mut SummaryRow, name: &str, v: Value| {
        r.settings.0.insert(name.to_string(), v);
    };
    let mut rows = Vec::new();
    for (i, (depth, lr)) in [(20, 0.1), (20, 0.05), (32, 0.1), (32, 0.05)].into_iter().enumerate() {
        let mut r = row(i as i64 + 1, "resnet", depth);
        with(&mut r, "train.optimizer.lr", Value::Float(lr));
        rows.push(r);
    }
    let (swept, _) = charts(&rows, &Metrics::new());
    let labels: Vec<&str> = chart(&swept, "depth").panels[0]
        .lines
        .iter()
        .filter(|l| l.style == Style::Bold)
        .map(|l| l.label.as_str())
        .collect();
    assert_eq!(
        labels,
        ["resnet, optimizer.lr 0.1 test", "resnet, optimizer.lr 0.05 test"]
    );

    // The depth grid's warm-up: ResNet-110's alone, so told by the depth.
    let mut rows = vec![row(1, "resnet", 20), row(2, "resnet", 56), row(3, "resnet", 110)];
    with(&mut rows[2], "train.warmup.lr", Value::Float(0.01));
    let (told, _) = charts(&rows, &Metrics::new());
    let depth = chart(&told, "depth");
    let test = depth.panels[0].lines.iter().find(|l| l.style == Style::Bold).unwrap();
    assert_eq!((test.label.as_str(), test.points.len()), ("resnet test", 3));
}
