//! The pure parts of the commands: reading `runner bench`'s model parameters, its scaling table.

use super::bench::{model_params, scaling_table, ScalingCell};
use crate::arch::Value;
use crate::{plugins, Error};

fn params(arch: &str, depth: Option<i64>, given: &[&str]) -> Result<crate::arch::Params, String> {
    let a = plugins::find(arch).unwrap();
    let given: Vec<String> = given.iter().map(|s| s.to_string()).collect();
    model_params(a, depth, &given).map_err(|e| match e {
        Error::Usage(m) => m,
        other => panic!("not a usage error: {other:?}"),
    })
}

#[test]
fn bench_params_are_read_as_their_declared_types_over_the_defaults() {
    let p = params("resnet", None, &["depth=56", "shortcut=B", "preact=true"]).unwrap();
    assert_eq!(p.get("depth"), Some(&Value::Int(56)));
    assert_eq!(p.get("shortcut"), Some(&Value::Str("B".into())));
    assert_eq!(p.get("preact"), Some(&Value::Bool(true)));
    assert_eq!(p.get("block"), Some(&Value::Str("basic".into())), "a default");
    // --depth is --param depth=N.
    assert_eq!(
        params("resnet", Some(32), &[]).unwrap(),
        params("resnet", None, &["depth=32"]).unwrap()
    );
    let plain = params("plain", Some(14), &["width=32"]).unwrap();
    assert_eq!(plain.0.keys().collect::<Vec<_>>(), ["depth", "width"]);
}

#[test]
fn a_bad_bench_param_names_the_parameter_and_the_valid_values() {
    let unknown = params("plain", None, &["shortcut=B"]).unwrap_err();
    assert!(
        unknown.contains("no parameter `shortcut`") && unknown.contains("depth, width"),
        "{unknown}"
    );
    let choice = params("resnet", None, &["shortcut=D"]).unwrap_err();
    assert!(choice.contains("`shortcut`") && choice.contains("A, B, C"), "{choice}");
    let int = params("resnet", None, &["depth=deep"]).unwrap_err();
    assert!(int.contains("`depth`") && int.contains("integer"), "{int}");
    let boolean = params("resnet", None, &["preact=yes"]).unwrap_err();
    assert!(
        boolean.contains("`preact`") && boolean.contains("true or false"),
        "{boolean}"
    );
    let rule = params("resnet", None, &["depth=21"]).unwrap_err();
    assert!(rule.contains("--param depth") && rule.contains("6n+2"), "{rule}");
    let rule = params("resnet", Some(21), &[]).unwrap_err();
    assert!(rule.starts_with("--depth") && rule.contains("6n+2"), "{rule}");
    let form = params("resnet", None, &["depth"]).unwrap_err();
    assert!(
        form.contains("NAME=VALUE") && form.contains("depth, shortcut"),
        "{form}"
    );
    let twice = params("resnet", Some(20), &["depth=32"]).unwrap_err();
    assert!(twice.contains("--depth") && twice.contains("--param depth"), "{twice}");
    let twice = params("resnet", None, &["width=8", "width=16"]).unwrap_err();
    assert!(twice.contains("twice"), "{twice}");
}

/// An architecture with no depth, to check that `--depth` says so.
struct Flat;

impl crate::arch::Architecture for Flat {
    fn name(&self) -> &'static str {
        "flat"
    }
    fn summary(&self) -> &'static str {
        "a test architecture without a depth"
    }
    fn params(&self) -> &'static [crate::arch::ParamSpec] {
        &[crate::arch::ParamSpec {
            name: "width",
            kind: crate::arch::ParamKind::Int { min: 1, max: 100 },
            default: crate::arch::DefaultValue::Int(8),
            doc: "filters",
        }]
    }
    fn build(
        &self,
        _: &crate::arch::Params,
        _: crate::arch::InputShape,
        _: usize,
        _: candle_nn::VarBuilder,
    ) -> candle_core::Result<crate::arch::Model> {
        candle_core::bail!("not built in tests")
    }
}

#[test]
fn depth_on_an_architecture_without_one_says_so() {
    let Err(Error::Usage(m)) = model_params(&Flat, Some(20), &[]) else {
        panic!("--depth was accepted");
    };
    assert!(
        m.contains("--depth") && m.contains("`flat` has no parameter `depth`") && m.contains("width"),
        "{m}"
    );
    // Without --depth its own parameters work.
    let p = model_params(&Flat, None, &["width=4".to_string()]).unwrap();
    assert_eq!(p.get("width"), Some(&Value::Int(4)));
}

#[test]
fn the_scaling_table_puts_depths_down_and_batches_across_with_a_dash_for_a_missing_size() {
    let cell = |depth, batch, ips, mib, est| ScalingCell {
        depth,
        batch,
        train_images_per_s: ips,
        peak_rss_mib: mib,
        estimated_mib: est,
    };
    let cells = [
        cell(20, 32, 410.04, Some(120.4), Some(111.6)),
        cell(20, 64, 455.5, Some(180.0), None),
        cell(56, 32, 150.25, None, None),
    ];
    let t = scaling_table("resnet", &[20, 56], &[32, 64], &cells);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert!(lines[1].contains("batch 32") && lines[1].contains("batch 64"), "{t}");
    let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert_eq!(cols(lines[2]), ["20", "410.0", "(120/112)", "455.5", "(180)"]);
    assert_eq!(cols(lines[3]), ["56", "150.2", "-"]);
}
