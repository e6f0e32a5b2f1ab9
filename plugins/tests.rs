//! The plugins against the papers: exact parameter counts, FLOPs, shapes and BN behaviour.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use runner::arch::{self, Architecture, InputShape, Params, Value};
use runner::nn::ParamStore;

use super::{find, plain::Plain, resnet::ResNet};

fn params(arch: &dyn Architecture, given: &[(&str, Value)]) -> Params {
    let map: BTreeMap<String, Value> = given.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    arch::resolve(arch, &map).unwrap_or_else(|e| panic!("{e}"))
}

fn count(arch: &dyn Architecture, given: &[(&str, Value)]) -> usize {
    arch::cost(arch, &params(arch, given), InputShape::CIFAR, 10)
        .unwrap()
        .params
}

fn depth(d: i64) -> (&'static str, Value) {
    ("depth", Value::Int(d))
}

fn s(k: &'static str, v: &str) -> (&'static str, Value) {
    (k, Value::Str(v.to_string()))
}

#[test]
fn option_a_counts_match_the_paper_table() {
    for (d, expected) in [
        (20, 269_722),
        (32, 464_154),
        (44, 658_586),
        (56, 853_018),
        (110, 1_727_962),
    ] {
        assert_eq!(count(&ResNet, &[depth(d)]), expected, "resnet-{d}");
        assert_eq!(count(&Plain, &[depth(d)]), expected, "plain-{d}");
    }
}

#[test]
#[ignore = "builds a 19M-parameter net; run with --ignored"]
fn resnet_1202_count() {
    assert_eq!(count(&ResNet, &[depth(1202)]), 19_421_274);
}

/// A 1×1 projection from c_in to c_out channels plus its BN (weight and bias).
fn projection(c_in: usize, c_out: usize, bn: bool) -> usize {
    c_in * c_out + if bn { 2 * c_out } else { 0 }
}

#[test]
fn option_b_and_c_add_exactly_their_projections() {
    let a = count(&ResNet, &[depth(20)]);
    // B: projections where the shape changes (16→32, 32→64).
    assert_eq!(
        count(&ResNet, &[depth(20), s("shortcut", "B")]),
        a + projection(16, 32, true) + projection(32, 64, true)
    );
    // C: a projection in every unit: 3 per stage for n = 3.
    let c_extra = 3 * projection(16, 16, true)
        + projection(16, 32, true)
        + 2 * projection(32, 32, true)
        + projection(32, 64, true)
        + 2 * projection(64, 64, true);
    assert_eq!(count(&ResNet, &[depth(20), s("shortcut", "C")]), a + c_extra);
}

#[test]
fn preact_resnet_164_and_1001_have_the_papers_sizes() {
    let bottleneck = |d| {
        count(
            &ResNet,
            &[
                depth(d),
                s("block", "bottleneck"),
                s("shortcut", "B"),
                ("preact", Value::Bool(true)),
            ],
        )
    };
    let p164 = bottleneck(164);
    assert!((1_650_000..1_750_000).contains(&p164), "preact resnet-164: {p164}");
    let p1001 = bottleneck(1001);
    assert!((10_150_000..10_400_000).contains(&p1001), "preact resnet-1001: {p1001}");
}

#[test]
fn resnet_20_forward_is_81_1_mflops() {
    let p = params(&ResNet, &[depth(20)]);
    let cost = arch::cost(&ResNet, &p, InputShape::CIFAR, 10).unwrap();
    assert!((cost.mflops - 81.1).abs() < 0.05, "{}", cost.mflops);
}

#[test]
fn depths_that_are_not_6n_plus_2_are_refused_with_the_valid_ones() {
    let map: BTreeMap<String, Value> = [("depth".to_string(), Value::Int(21))].into();
    let e = arch::resolve(&ResNet, &map).unwrap_err();
    assert_eq!(e.param, "depth");
    assert!(
        e.message.contains("6n+2") && e.message.contains("20, 26, 32"),
        "{}",
        e.message
    );
    let map: BTreeMap<String, Value> = [
        ("depth".to_string(), Value::Int(21)),
        ("block".to_string(), Value::Str("bottleneck".into())),
    ]
    .into();
    let e = arch::resolve(&ResNet, &map).unwrap_err();
    assert!(e.message.contains("9n+2"), "{}", e.message);
}

#[test]
fn unknown_shortcut_lists_the_choices() {
    let map: BTreeMap<String, Value> = [("shortcut".to_string(), Value::Str("D".into()))].into();
    let e = arch::resolve(&ResNet, &map).unwrap_err();
    assert!(e.message.contains("A, B, C"), "{}", e.message);
}

fn build(arch: &dyn Architecture, given: &[(&str, Value)], classes: usize) -> (ParamStore, runner::arch::Model) {
    let store = ParamStore::new(1);
    let model = arch
        .build(
            &params(arch, given),
            InputShape::CIFAR,
            classes,
            store.var_builder(&Device::Cpu),
        )
        .unwrap();
    (store, model)
}

#[test]
fn every_option_gives_logits_in_train_and_eval_mode() {
    let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
    type Variant<'a> = (&'a dyn Architecture, Vec<(&'a str, Value)>);
    let variants: Vec<Variant> = vec![
        (&Plain, vec![depth(8)]),
        (&ResNet, vec![depth(8), s("shortcut", "A")]),
        (&ResNet, vec![depth(8), s("shortcut", "B")]),
        (&ResNet, vec![depth(8), s("shortcut", "C")]),
        (&ResNet, vec![depth(8), ("preact", Value::Bool(true))]),
        (
            &ResNet,
            vec![depth(8), ("preact", Value::Bool(true)), s("shortcut", "B")],
        ),
        (&ResNet, vec![depth(11), s("block", "bottleneck"), s("shortcut", "B")]),
        (
            &ResNet,
            vec![
                depth(11),
                s("block", "bottleneck"),
                s("shortcut", "C"),
                ("preact", Value::Bool(true)),
            ],
        ),
    ];
    for (arch, given) in variants {
        let (_, model) = build(arch, &given, 7);
        for train in [true, false] {
            let y = model.forward_t(&x, train).unwrap();
            assert_eq!(y.dims(), &[2, 7], "{} {given:?} train={train}", arch.name());
        }
    }
}

#[test]
fn batch_norm_statistics_move_in_training_mode_only() {
    let (store, model) = build(&ResNet, &[depth(8)], 10);
    let stats = || -> Vec<f32> {
        store
            .all()
            .iter()
            .find(|(k, _)| k == "bn1.running_mean")
            .unwrap()
            .1
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()
    };
    let x = (Tensor::randn(0f32, 1., (4, 3, 32, 32), &Device::Cpu).unwrap() + 3.0).unwrap();
    let before = stats();
    model.forward_t(&x, false).unwrap();
    assert_eq!(stats(), before, "evaluation must not touch running statistics");
    model.forward_t(&x, true).unwrap();
    assert_ne!(stats(), before, "training must update running statistics");
}

#[test]
fn tensor_names_follow_the_pytorch_state_dict() {
    let (store, _) = build(&ResNet, &[depth(8), s("shortcut", "B")], 10);
    let names: Vec<String> = store.all().into_iter().map(|(k, _)| k).collect();
    for n in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_var",
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.weight",
        "layer3.0.shortcut.1.running_mean",
        "linear.weight",
        "linear.bias",
    ] {
        assert!(names.iter().any(|x| x == n), "missing {n} in {names:?}");
    }
    let (store, _) = build(&ResNet, &[depth(8), ("preact", Value::Bool(true))], 10);
    assert!(store.all().iter().any(|(k, _)| k == "bn_final.weight"));
    assert!(
        !store.all().iter().any(|(k, _)| k == "bn1.weight"),
        "a pre-activation stem has no BN"
    );
}

#[test]
fn conv_weights_follow_he_initialisation() {
    let (store, _) = build(&ResNet, &[depth(20)], 10);
    let w = store
        .all()
        .into_iter()
        .find(|(k, _)| k == "layer3.1.conv1.weight")
        .unwrap()
        .1;
    let v: Vec<f32> = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
    let expected = 2.0 / (64.0 * 9.0); // 2 / fan_in
    assert!(
        (var / expected - 1.0).abs() < 0.05,
        "variance {var}, expected {expected}"
    );
    let bn = store
        .all()
        .into_iter()
        .find(|(k, _)| k == "layer3.1.bn1.weight")
        .unwrap()
        .1;
    assert!(bn.as_tensor().to_vec1::<f32>().unwrap().iter().all(|x| *x == 1.0));
}

#[test]
fn registry_finds_every_plugin_by_name() {
    for a in super::ALL {
        assert_eq!(find(a.name()).map(|f| f.name()), Some(a.name()));
    }
    assert!(find("vgg").is_none());
}

#[test]
fn evaluation_with_batch_norm_folded_into_the_convolutions_matches_the_layers_unfolded() {
    let dev = Device::Cpu;
    for given in [
        vec![depth(8)],
        vec![depth(8), s("shortcut", "B")],
        vec![depth(8), s("shortcut", "C")],
    ] {
        let (store, model) = build(&ResNet, &given, 10);
        // BN parameters and running statistics away from their initial 1s and 0s
        for (name, var) in store.all() {
            if name.contains("bn") || name.contains("shortcut.1") {
                let t = var.as_tensor();
                let v = match name.rsplit('.').next().unwrap() {
                    "weight" => Tensor::rand(0.5f32, 1.5, t.dims(), &dev).unwrap(),
                    "bias" => Tensor::randn(0f32, 0.2, t.dims(), &dev).unwrap(),
                    _ => continue,
                };
                var.set(&v).unwrap();
            }
        }
        let x = (Tensor::randn(0f32, 1., (4, 3, 32, 32), &dev).unwrap() + 0.5).unwrap();
        model.forward_t(&x, true).unwrap(); // moves the running statistics
        let folded = model.forward_t(&x, false).unwrap();
        runner::nn::use_reference_ops(true);
        let unfolded = model.forward_t(&x, false);
        runner::nn::use_reference_ops(false);
        let unfolded = unfolded.unwrap();
        let diff = (&folded - &unfolded)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let size = unfolded.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(size > 0.1, "{given:?}: logits too small to compare ({size})");
        assert!(diff <= 1e-4 * size, "{given:?}: folded {folded} vs unfolded {unfolded}");
    }
}
