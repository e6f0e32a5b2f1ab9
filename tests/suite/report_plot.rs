//! `runner report --plot DIR --png --markdown --paper` on a tiny real grid: the charts exist and
//! are valid SVG/PNG, and the markdown links to them.

use crate::util::Dir;

/// Two depth-8 nets (plain and resnet) on synthetic data, a few iterations.
const GRID: &str = "[experiment]\nname = \"tiny\"\n\n\
[dataset]\nkind = \"synthetic\"\ntrain = 512\ntest = 128\nvalidation = 128\naugment = [\"pad-crop:4\", \"hflip\"]\n\n\
[train]\niterations = 8\nbatch_size = 16\neval_every = 4\noptimizer = { kind = \"sgd\", lr = 0.05 }\n\n\
[grid]\narch = [\"plain\", \"resnet\"]\ndepth = [8]\n";

#[test]
fn report_draws_charts_and_writes_a_markdown_document_that_links_them() {
    let d = Dir::new();
    d.write("g.toml", GRID);
    let r = d.run(&["run", "g.toml"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());

    let r = d.run(&["report", "--plot", "charts", "--png", "--markdown", "--paper"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let charts = d.path().join("charts");
    for kind in ["curves", "depth"] {
        let svg = std::fs::read_to_string(charts.join(format!("tiny-{kind}.svg"))).expect("an SVG");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{kind}");
        assert!(svg.contains("tiny on synthetic"), "no title in tiny-{kind}.svg");
        let png = std::fs::read(charts.join(format!("tiny-{kind}.png"))).expect("a PNG");
        let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("a valid PNG");
        assert!(img.width() > 400 && img.height() > 300);
        assert!(
            r.stderr().contains(&format!("wrote charts/tiny-{kind}.svg")),
            "{}",
            r.stderr()
        );
    }
    // No shortcut or unit-type variation: no such charts, and nothing else in the folder.
    assert_eq!(std::fs::read_dir(&charts).unwrap().count(), 4);
    let curves = std::fs::read_to_string(charts.join("tiny-curves.svg")).unwrap();
    for label in ["plain-8", "resnet-8"] {
        assert!(curves.contains(label), "no legend entry {label}");
    }

    let md = r.stdout();
    assert!(md.starts_with("# runner report: tiny"), "{md}");
    assert!(
        md.contains("![tiny on synthetic: error during training](charts/tiny-curves.png)"),
        "{md}"
    );
    assert!(
        md.contains("(charts/tiny-depth.png)") && md.contains("[SVG](charts/tiny-depth.svg)"),
        "{md}"
    );
    // Depth 8 is not in the papers' tables: no match for either trial.
    assert!(md.contains("0 of 2 trials"), "{md}");
    let plain_md = d.run(&["report", "--markdown"]).stdout();
    assert!(
        !plain_md.contains("## Charts") && plain_md.contains("| tiny |"),
        "{plain_md}"
    );
}

#[test]
fn png_needs_plot() {
    let d = Dir::new();
    let r = d.run(&["report", "--png"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("--plot"), "{}", r.stderr());
}
