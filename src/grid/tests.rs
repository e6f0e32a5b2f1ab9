use std::path::Path;

use super::*;

const HEAD: &str = r#"[experiment]
name = "t"

[dataset]
kind = "synthetic"

[train]
iterations = 10
batch_size = 8
"#;

fn grid(body: &str) -> Result<Grid> {
    parse(Path::new("g.toml"), &format!("{HEAD}{body}"))
}

fn grid_err(body: &str) -> (usize, usize, String) {
    match grid(body) {
        Err(Error::Grid {
            line, column, message, ..
        }) => (line, column, message),
        other => panic!("expected a grid error, got {other:?}"),
    }
}

fn labels(g: &Grid) -> Vec<String> {
    g.trials.iter().map(|t| t.label()).collect()
}

#[test]
fn cartesian_product_drops_axes_an_arch_does_not_take() {
    let g = grid("[grid]\narch = [\"plain\", \"resnet\"]\ndepth = [8, 14]\nshortcut = [\"A\", \"B\"]\n").unwrap();
    // plain: 2 depths (shortcut collapses); resnet: 2 depths × 2 shortcuts
    assert_eq!(g.trials.len(), 6, "{:#?}", labels(&g));
    assert_eq!(g.trials[0].arch.name(), "plain");
    let keys: std::collections::HashSet<_> = g.trials.iter().map(|t| t.key.clone()).collect();
    assert_eq!(keys.len(), 6);
}

#[test]
fn exclude_drops_matching_combinations_and_include_adds_trials() {
    let g = grid(
        "[grid]\narch = [\"resnet\"]\ndepth = [8, 14]\nshortcut = [\"A\", \"B\"]\n\
         [[exclude]]\ndepth = 14\nshortcut = \"B\"\n\
         [[include]]\narch = \"resnet\"\ndepth = 20\nshortcut = \"C\"\n",
    )
    .unwrap();
    let l = labels(&g);
    assert_eq!(l.len(), 4, "{l:#?}");
    assert!(!l.iter().any(|s| s.contains("depth=14") && s.contains("shortcut=B")));
    assert!(l.iter().any(|s| s.contains("depth=20") && s.contains("shortcut=C")));
}

#[test]
fn include_takes_single_valued_axes_as_defaults() {
    let g = grid("[grid]\narch = [\"resnet\"]\ndepth = [8]\npreact = [true]\n[[include]]\ndepth = 14\n").unwrap();
    assert_eq!(g.trials.len(), 2);
    assert_eq!(g.trials[1].params.get("preact"), Some(&Value::Bool(true)));
    assert_eq!(g.trials[1].params.get("depth"), Some(&Value::Int(14)));
}

/// Regression: `[[include]] arch = "plain"` in a grid of ResNets with `shortcut = ["A"]` failed
/// with "unknown parameter `shortcut`" at the grid's axis, though an axis an architecture does
/// not take is ignored for it.
#[test]
fn an_include_of_an_arch_without_a_single_valued_axis_ignores_that_axis() {
    let g = grid(
        "[grid]\narch = [\"resnet\"]\ndepth = [14]\nshortcut = [\"A\"]\n\
         [[include]]\narch = \"plain\"\n",
    )
    .unwrap();
    let l = labels(&g);
    assert_eq!(l.len(), 2, "{l:#?}");
    let plain = &g.trials[1];
    assert_eq!(plain.arch.name(), "plain");
    assert_eq!(plain.params.get("depth"), Some(&Value::Int(14)), "a default it takes");
    assert_eq!(plain.params.get("shortcut"), None);
    // the include's own keys are still checked against its architecture
    let (line, _, msg) =
        grid_err("[grid]\narch = [\"resnet\"]\ndepth = [14]\n[[include]]\narch = \"plain\"\nshortcut = \"B\"\n");
    assert_eq!(line, 15, "the include's `shortcut` line: {msg}");
    assert!(msg.contains("unknown parameter `shortcut`"), "{msg}");
}

#[test]
fn a_grid_default_an_included_arch_refuses_is_reported_at_the_include() {
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\ndepth = [20]\n\n[[include]]\narch = \"wrn\"\n");
    assert_eq!(line, 14, "the include's line: {msg}");
    assert!(msg.contains("wrn depth=20") && msg.contains("6n+4"), "{msg}");
}

#[test]
fn seed_axis_changes_the_key() {
    let g = grid("[grid]\narch = [\"resnet\"]\ndepth = [8]\nseed = [1, 2]\n").unwrap();
    assert_eq!(g.trials.len(), 2);
    assert_ne!(g.trials[0].key, g.trials[1].key);
    assert_eq!(g.trials[1].train.seed, 2);
}

#[test]
fn the_key_is_stable_and_depends_on_the_configuration() {
    let a = grid("[grid]\narch = [\"resnet\"]\ndepth = [8]\n").unwrap();
    let b = grid("[grid]\narch = [\"resnet\"]\ndepth = [8]\nshortcut = [\"A\"]\n").unwrap();
    // shortcut A is the default: the same resolved trial
    assert_eq!(a.trials[0].key, b.trials[0].key);
    let c = parse(
        Path::new("g.toml"),
        &format!(
            "{}[grid]\narch = [\"resnet\"]\ndepth = [8]\n",
            HEAD.replace("iterations = 10", "iterations = 11")
        ),
    )
    .unwrap();
    assert_ne!(a.trials[0].key, c.trials[0].key);
}

#[test]
fn unknown_arch_names_the_line_and_the_known_ones() {
    let (line, _, msg) = grid_err("[grid]\narch = [\"alexnet\"]\n");
    assert_eq!(line, 11);
    assert!(
        msg.contains("unknown architecture `alexnet`") && msg.contains("plain, resnet, wrn, vgg"),
        "{msg}"
    );
}

#[test]
fn unknown_parameter_lists_the_valid_keys() {
    let (line, column, msg) = grid_err("[grid]\narch = [\"resnet\"]\ndepht = [20]\n");
    assert_eq!((line, column), (12, 1));
    assert!(
        msg.contains("unknown parameter `depht`") && msg.contains("depth, shortcut"),
        "{msg}"
    );
}

#[test]
fn bad_depth_and_shortcut_point_at_their_values() {
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\ndepth = [20, 21]\n");
    assert_eq!(line, 12);
    assert!(msg.contains("depth 21") && msg.contains("6n+2"), "{msg}");
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\nshortcut = [\"D\"]\n");
    assert_eq!(line, 12);
    assert!(msg.contains("A, B, C"), "{msg}");
}

#[test]
fn toml_syntax_and_unknown_sections_are_located() {
    let (line, _, _) = grid_err("[grid]\narch = [\"resnet\"\n");
    assert!(line >= 11);
    let (line, _, msg) = grid_err("[gird]\narch = [\"resnet\"]\n");
    assert_eq!(line, 10);
    assert!(msg.contains("gird"), "{msg}");
    let e = parse(Path::new("g.toml"), &HEAD.replace("batch_size", "batchsize")).unwrap_err();
    assert!(e.to_string().contains("batchsize"), "{e}");
}

#[test]
fn train_section_is_validated() {
    let e = parse(
        Path::new("g.toml"),
        &format!("{}epochs = 2\n[grid]\narch = [\"resnet\"]\n", HEAD),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
}

#[test]
fn train_settings_are_axes_over_the_train_table_and_part_of_each_trials_key() {
    // `train.lr` is the optimizer's
    let g = grid(
        "[grid]\narch = [\"resnet\"]\ndepth = [8]\n\"train.lr\" = [0.1, 0.05]\n\"train.optimizer.weight_decay\" = [0.0005]\nseed = [1, 2]\n",
    )
    .unwrap();
    assert_eq!(g.trials.len(), 4, "{:#?}", labels(&g));
    let lrs: Vec<f64> = g.trials.iter().map(|t| t.train.optimizer.lr()).collect();
    assert_eq!(lrs, [0.1, 0.1, 0.05, 0.05]);
    for t in &g.trials {
        let crate::train::config::OptimizerConfig::Sgd { weight_decay, .. } = t.train.optimizer;
        assert_eq!(weight_decay, 0.0005);
        // the rest of [train] is the file's
        assert_eq!((t.train.iterations, t.train.batch_size), (Some(10), 8));
    }
    assert_eq!(
        g.trials[2].settings,
        [
            ("train.lr".to_string(), Value::Float(0.05)),
            ("train.optimizer.weight_decay".to_string(), Value::Float(0.0005))
        ]
    );
    assert!(g.trials[2].label().contains("train.lr=0.05"), "{}", g.trials[2].label());
    let keys: std::collections::HashSet<_> = g.trials.iter().map(|t| t.key.clone()).collect();
    assert_eq!(keys.len(), 4);
}

#[test]
fn an_include_can_give_one_trial_its_own_settings() {
    // the paper's ResNet-110 recipe: warm up at 0.01 until the training error is below 80%
    let g = grid(
        "[grid]\narch = [\"resnet\"]\ndepth = [20]\n\n[[include]]\ndepth = 110\n\"train.warmup.lr\" = 0.01\n\"train.warmup.until_train_error_below\" = 0.8\n",
    )
    .unwrap();
    assert_eq!(g.trials.len(), 2);
    assert_eq!(g.trials[0].train.warmup, None);
    let w = g.trials[1].train.warmup.as_ref().expect("a warm-up");
    assert_eq!((w.lr, w.until_train_error_below, w.iterations), (0.01, Some(0.8), None));
}

#[test]
fn a_bad_setting_is_an_error_at_its_line_that_names_the_valid_keys_or_the_rule() {
    // [grid] is line 10
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\n\"train.bach_size\" = [8]\n");
    assert_eq!(line, 12, "{msg}");
    assert!(msg.contains("bach_size") && msg.contains("`batch_size`"), "{msg}");
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\ndepth = [8]\n\"train.lr\" = [0.1, -1]\n");
    assert_eq!(line, 13, "{msg}");
    assert!(msg.contains("train.lr = -1") && msg.contains("positive"), "{msg}");
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\n\"train.batch_size\" = [\"big\"]\n");
    assert_eq!(line, 12, "{msg}");
    assert!(msg.contains("train.batch_size = big"), "{msg}");
    let (line, _, msg) = grid_err("[grid]\narch = [\"resnet\"]\n\"dataset.augment\" = [\"hflip\"]\n");
    assert_eq!(line, 12, "{msg}");
    assert!(msg.contains("grid file per data set"), "{msg}");
    // unquoted, TOML makes tables of it: the error says to quote it, at its line
    let (line, _, msg) =
        grid_err("[grid]  # axes\narch = [\"resnet\"]\ndepth = [8]\ntrain.optimizer.weight_decay = [0.0005]\n");
    assert_eq!(line, 13, "{msg}");
    assert!(msg.contains("\"train.optimizer.weight_decay\" = ..."), "{msg}");
}
