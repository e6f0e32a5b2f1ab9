//! Which trial configurations match a paper entry, and what the recipe notes say.

use super::paper::{compare, Source, ENTRIES};
use crate::grid::TrialConfig;

/// A trial configuration as `trials.config_json` stores it: the papers' CIFAR-10 recipe
/// (experiments/depth.toml) with the given network, then `edit` applied to the JSON.
fn config(arch: &str, params: serde_json::Value, edit: impl FnOnce(&mut serde_json::Value)) -> TrialConfig {
    let mut v = serde_json::json!({
        "experiment": "depth",
        "arch": arch,
        "params": params,
        "dataset": {
            "kind": "cifar10", "path": "data/cifar-10-batches-bin", "validation": 5000,
            "augment": ["pad-crop:4", "hflip"], "normalize": "per-pixel-mean"
        },
        "train": {
            "iterations": 64000, "batch_size": 128,
            "optimizer": { "kind": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0001 },
            "schedule": { "kind": "multistep", "milestones": [32000, 48000], "gamma": 0.1 },
            "warmup": { "lr": 0.01, "until_train_error_below": 0.8 },
            "eval_every": 400, "seed": 1
        },
        "seed": 1
    });
    edit(&mut v);
    serde_json::from_value(v).expect("a valid trial configuration")
}

fn resnet(depth: i64, shortcut: &str, preact: bool, block: &str) -> serde_json::Value {
    serde_json::json!({ "depth": depth, "shortcut": shortcut, "preact": preact, "block": block, "width": 16 })
}

fn same(_: &mut serde_json::Value) {}

#[test]
fn resnet_20_option_a_on_cifar10_with_the_paper_recipe_matches_table_6() {
    let c = compare(&config("resnet", resnet(20, "A", false, "basic"), same)).expect("a match");
    assert_eq!(c.entry.source, Source::He2015Table6);
    assert_eq!(c.entry.depth, 20);
    assert_eq!(c.entry.test_error_pct, 8.75);
    // The recipe is the paper's except the warm-up, which is only noted for ResNet-110.
    assert!(c.recipe.is_empty(), "{:?}", c.recipe);
    assert_eq!(c.recipe_text(), "paper");
    assert!((c.diff_pp(Some(0.0912)).unwrap() - 0.37).abs() < 1e-9);
    assert_eq!(c.diff_pp(None), None);
}

#[test]
fn every_option_a_depth_of_table_6_matches_its_own_entry() {
    for e in ENTRIES.iter().filter(|e| e.source == Source::He2015Table6) {
        let c = compare(&config("resnet", resnet(e.depth, "A", false, "basic"), same)).expect("a match");
        assert_eq!(c.entry, *e);
    }
}

#[test]
fn shortcut_b_at_a_table_6_depth_does_not_match() {
    assert_eq!(compare(&config("resnet", resnet(20, "B", false, "basic"), same)), None);
    assert_eq!(compare(&config("resnet", resnet(56, "C", false, "basic"), same)), None);
}

#[test]
fn plain_nets_other_depths_and_wider_nets_do_not_match() {
    let plain = serde_json::json!({ "depth": 20, "width": 16 });
    assert_eq!(compare(&config("plain", plain, same)), None);
    assert_eq!(compare(&config("resnet", resnet(26, "A", false, "basic"), same)), None);
    let mut wide = resnet(20, "A", false, "basic");
    wide["width"] = 32.into();
    assert_eq!(compare(&config("resnet", wide, same)), None);
}

#[test]
fn pre_activation_110_and_bottleneck_164_1001_match_table_3() {
    let c = compare(&config("resnet", resnet(110, "A", true, "basic"), same)).expect("preact 110");
    assert_eq!((c.entry.source, c.entry.test_error_pct), (Source::He2016Table3, 6.37));
    let c = compare(&config("resnet", resnet(164, "B", true, "bottleneck"), same)).expect("preact 164");
    assert_eq!((c.entry.source, c.entry.test_error_pct), (Source::He2016Table3, 5.46));
    let c = compare(&config("resnet", resnet(1001, "B", true, "bottleneck"), same)).expect("preact 1001");
    assert_eq!(c.entry.test_error_pct, 4.92);
    let c = compare(&config("resnet", resnet(164, "B", false, "bottleneck"), same)).expect("original 164");
    assert_eq!(c.entry.test_error_pct, 5.93);
    let c = compare(&config("resnet", resnet(1001, "A", false, "bottleneck"), same)).expect("original 1001");
    assert_eq!(c.entry.test_error_pct, 7.61);
}

#[test]
fn the_block_must_be_the_papers() {
    // 164 = 6·27 + 2 is a valid basic-block depth, and 110 = 9·12 + 2 a valid bottleneck one,
    // but the papers' ResNet-164 is a bottleneck net and their ResNet-110 a basic one.
    assert_eq!(compare(&config("resnet", resnet(164, "A", true, "basic"), same)), None);
    assert_eq!(
        compare(&config("resnet", resnet(110, "A", true, "bottleneck"), same)),
        None
    );
}

#[test]
fn original_110_with_option_a_is_table_6_and_with_b_is_table_3() {
    let a = compare(&config("resnet", resnet(110, "A", false, "basic"), same)).expect("A");
    assert_eq!((a.entry.source, a.entry.test_error_pct), (Source::He2015Table6, 6.43));
    let b = compare(&config("resnet", resnet(110, "B", false, "basic"), same)).expect("B");
    assert_eq!((b.entry.source, b.entry.test_error_pct), (Source::He2016Table3, 6.61));
}

#[test]
fn synthetic_data_still_matches_with_a_note() {
    let c = compare(&config("resnet", resnet(20, "A", false, "basic"), |v| {
        v["dataset"]["kind"] = "synthetic".into();
    }))
    .expect("the network is the paper's");
    assert_eq!(c.recipe, vec!["dataset synthetic, not cifar10".to_string()]);
}

#[test]
fn fewer_iterations_and_other_training_choices_are_noted() {
    let c = compare(&config("resnet", resnet(20, "A", false, "basic"), |v| {
        v["train"]["iterations"] = 300.into();
        v["train"]["batch_size"] = 64.into();
        v["train"]["schedule"] = serde_json::json!({ "kind": "multistep", "milestones": [200, 250], "gamma": 0.1 });
        v["dataset"]["augment"] = serde_json::json!([]);
        v["dataset"]["normalize"] = "per-channel".into();
    }))
    .expect("a match");
    let text = c.recipe_text();
    for part in [
        "300 iterations, fewer than 64k",
        "batch 64, not 128",
        "[200, 250]",
        "no augmentation",
        "normalize per-channel",
    ] {
        assert!(text.contains(part), "`{part}` missing from `{text}`");
    }
    assert_eq!(c.recipe.len(), 5, "{text}");
    let epochs = compare(&config("resnet", resnet(32, "A", false, "basic"), |v| {
        v["train"]["iterations"] = serde_json::Value::Null;
        v["train"]["epochs"] = 10.into();
    }))
    .expect("a match");
    assert_eq!(epochs.recipe, vec!["10 epochs, not 64k iterations".to_string()]);
}

#[test]
fn resnet_110_without_the_warm_up_is_noted() {
    let c = compare(&config("resnet", resnet(110, "A", false, "basic"), |v| {
        v["train"]["warmup"] = serde_json::Value::Null;
    }))
    .expect("a match");
    assert_eq!(c.recipe, vec!["no lr 0.01 warm-up".to_string()]);
}

#[test]
fn parameters_a_trial_did_not_store_take_the_plugins_declared_defaults() {
    // A trial stored before the plugin had shortcut, preact, block or width was built with
    // their defaults, which the plugin declares (A, false, basic, 16): a ResNet-20 of Table 6.
    let c = compare(&config("resnet", serde_json::json!({ "depth": 20 }), same)).expect("a match");
    assert_eq!((c.entry.source, c.entry.depth), (Source::He2015Table6, 20));
    let b = compare(&config(
        "resnet",
        serde_json::json!({ "depth": 110, "shortcut": "B" }),
        same,
    ))
    .expect("B");
    assert_eq!((b.entry.source, b.entry.test_error_pct), (Source::He2016Table3, 6.61));
    // An architecture this build does not have matches nothing.
    assert_eq!(compare(&config("vgg", serde_json::json!({ "depth": 20 }), same)), None);
}
