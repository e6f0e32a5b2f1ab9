//! The plugins against the papers: exact parameter counts, FLOPs, shapes and BN behaviour.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use runner::arch::{self, Architecture, InputShape, Params, Value};
use runner::nn::ParamStore;

use super::{find, plain::Plain, resnet::ResNet, vgg::Vgg, wrn::Wrn};

/// An architecture and the parameters given to it.
type Variant<'a> = (&'a dyn Architecture, Vec<(&'a str, Value)>);

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
    assert!(find("alexnet").is_none());
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

/// A 3×3 convolution's weights.
fn conv3(c_in: usize, c_out: usize) -> usize {
    c_in * c_out * 9
}

/// WRN-d-k's trainable parameters from the definition (Zagoruyko & Komodakis 2016, Table 1):
/// a 3×3 stem of 16 filters; per unit BN → conv → BN → conv, plus a 1×1 projection where the
/// width or stride changes; a final BN and the classifier.
fn wrn_count(d: usize, k: usize, classes: usize) -> usize {
    let n = (d - 4) / 6;
    let widths = [16, 16 * k, 32 * k, 64 * k];
    let mut total = conv3(3, 16);
    for s in 0..3 {
        let c = widths[s + 1];
        for i in 0..n {
            let c_in = if i == 0 { widths[s] } else { c };
            total += 2 * c_in + conv3(c_in, c) + 2 * c + conv3(c, c);
            if c_in != c || (i == 0 && s > 0) {
                total += c_in * c;
            }
        }
    }
    total + 2 * widths[3] + widths[3] * classes + classes
}

fn int(k: &'static str, v: i64) -> (&'static str, Value) {
    (k, Value::Int(v))
}

#[test]
fn wrn_counts_follow_the_definition_and_the_papers_sizes() {
    // (d, k, the paper's size in millions)
    for (d, k, paper) in [(16, 4, 2.7), (16, 8, 11.0), (22, 1, 0.27), (28, 10, 36.5), (40, 4, 8.9)] {
        let got = count(&Wrn, &[depth(d as i64), int("widen", k as i64)]);
        assert_eq!(got, wrn_count(d, k, 10), "WRN-{d}-{k}");
        if paper > 1.0 {
            assert!(
                (got as f64 / 1e6 - paper).abs() < 0.05,
                "WRN-{d}-{k}: {got}, paper {paper}M"
            );
        }
    }
    assert_eq!(wrn_count(16, 4, 10), 2_748_890);
}

/// VGG's trainable parameters from the definition: 3×3 convolutions with BN (γ, β) or a bias,
/// the filters doubling per stage up to 8× the first, and a linear classifier on the last map.
fn vgg_count(convs: &[usize], width: usize, bn: bool, classes: usize) -> usize {
    let mut total = 0;
    let mut c_in = 3;
    for (s, &n) in convs.iter().enumerate() {
        let c = width << s.min(3);
        for _ in 0..n {
            total += conv3(c_in, c) + if bn { 2 * c } else { c };
            c_in = c;
        }
    }
    total + c_in * classes + classes
}

#[test]
fn vgg_counts_follow_the_definition() {
    for (d, convs) in [
        (11, [1, 1, 2, 2, 2]),
        (13, [2, 2, 2, 2, 2]),
        (16, [2, 2, 3, 3, 3]),
        (19, [2, 2, 4, 4, 4]),
    ] {
        for bn in [true, false] {
            let got = count(&Vgg, &[depth(d), ("batch_norm", Value::Bool(bn))]);
            assert_eq!(got, vgg_count(&convs, 64, bn, 10), "VGG-{d} bn={bn}");
        }
    }
    assert_eq!(vgg_count(&[2, 2, 3, 3, 3], 64, true, 10), 14_724_042);
    let small = count(&Vgg, &[depth(11), int("stages", 3), int("width", 8)]);
    assert_eq!(small, vgg_count(&[1, 1, 2], 8, true, 10));
}

#[test]
fn wrn_and_vgg_refuse_what_they_do_not_define_with_the_valid_values() {
    let refuse = |arch: &dyn Architecture, given: &[(&str, Value)]| {
        let map: BTreeMap<String, Value> = given.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        arch::resolve(arch, &map).unwrap_err()
    };
    let e = refuse(&Wrn, &[depth(20)]);
    assert_eq!(e.param, "depth");
    assert!(
        e.message.contains("6n+4") && e.message.contains("16, 22, 28"),
        "{}",
        e.message
    );
    let e = refuse(&Wrn, &[("dropout", Value::Float(1.5))]);
    assert_eq!(e.param, "dropout");
    let e = refuse(&Vgg, &[depth(12)]);
    assert!(e.message.contains("11, 13, 16, 19"), "{}", e.message);
    let e = refuse(&Vgg, &[int("stages", 6)]);
    assert_eq!(e.param, "stages");
    // five 2×2 poolings do not fit MNIST's 28×28; four do
    let mnist = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let store = ParamStore::new(1);
    let err = Vgg
        .build(&params(&Vgg, &[]), mnist, 10, store.var_builder(&Device::Cpu))
        .err()
        .expect("too small");
    assert!(err.to_string().contains("stages = 4 at most"), "{err}");
    let four = params(&Vgg, &[int("stages", 4), int("width", 4)]);
    assert!(Vgg.build(&four, mnist, 10, store.var_builder(&Device::Cpu)).is_ok());
}

#[test]
fn a_dropout_of_zero_written_as_an_integer_is_the_same_trial_as_a_float() {
    assert_eq!(
        params(&Wrn, &[("dropout", Value::Int(0))]),
        params(&Wrn, &[("dropout", Value::Float(0.0))])
    );
}

fn names(store: &ParamStore) -> Vec<String> {
    store.all().into_iter().map(|(k, _)| k).collect()
}

#[test]
fn wrn_and_vgg_tensor_names() {
    let (store, _) = build(&Wrn, &[depth(10), int("widen", 2)], 10);
    let n = names(&store);
    for want in [
        "conv1.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_var",
        "layer1.0.shortcut.0.weight", // 16 → 32 filters
        "layer3.0.shortcut.0.weight",
        "bn_final.weight",
        "linear.bias",
    ] {
        assert!(n.iter().any(|x| x == want), "missing {want} in {n:?}");
    }
    assert!(
        !n.iter().any(|x| x == "bn1.weight" || x.contains("shortcut.1")),
        "{n:?}"
    );
    let (store, _) = build(&Wrn, &[depth(16), int("widen", 1)], 10);
    let n = names(&store);
    assert!(
        !n.iter().any(|x| x.starts_with("layer1.0.shortcut")),
        "16 → 16: identity"
    );

    let (store, _) = build(&Vgg, &[depth(11), int("width", 4)], 10);
    let n = names(&store);
    for want in [
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer5.1.conv1.weight",
        "linear.weight",
    ] {
        assert!(n.iter().any(|x| x == want), "missing {want} in {n:?}");
    }
    assert!(!n.iter().any(|x| x.ends_with("conv1.bias")), "{n:?}");
    let (store, _) = build(
        &Vgg,
        &[depth(11), int("width", 4), ("batch_norm", Value::Bool(false))],
        10,
    );
    let n = names(&store);
    assert!(n.iter().any(|x| x == "layer3.1.conv1.bias"), "{n:?}");
    assert!(!n.iter().any(|x| x.contains(".bn")), "{n:?}");
}

/// `n` CIFAR-shaped images of standard normal values from `seed` (Candle's own `randn` is
/// unseeded, which would make a tolerance hold on one run and not the next).
fn seeded_images(n: usize, seed: u64) -> Tensor {
    let mut rng = runner::rng::Rng::new(seed);
    let v: Vec<f32> = (0..n * 3 * 32 * 32).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, (n, 3, 32, 32), &Device::Cpu).unwrap()
}

fn logits(model: &runner::arch::Model, x: &Tensor, train: bool) -> Vec<f32> {
    model
        .forward_t(x, train)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn wrn_dropout_is_reproducible_from_seed_and_step_and_off_in_evaluation() {
    let x = Tensor::randn(0f32, 1., (2, 3, 32, 32), &Device::Cpu).unwrap();
    let small = [depth(10), int("widen", 1)];
    let (_, plain) = build(&Wrn, &small, 10);
    let (_, dropped) = build(
        &Wrn,
        &[small[0].clone(), small[1].clone(), ("dropout", Value::Float(0.3))],
        10,
    );
    assert_eq!(
        logits(&plain, &x, false),
        logits(&dropped, &x, false),
        "no dropout in evaluation"
    );
    runner::nn::set_step(1, 7);
    let a = logits(&dropped, &x, true);
    runner::nn::set_step(1, 7);
    let b = logits(&dropped, &x, true);
    runner::nn::set_step(1, 8);
    let c = logits(&dropped, &x, true);
    runner::nn::set_step(2, 7);
    let d = logits(&dropped, &x, true);
    assert_eq!(a, b, "the same (seed, step) draws the same masks");
    assert_ne!(a, c, "another step, other masks");
    assert_ne!(a, d, "another seed, other masks");
    assert_ne!(a, logits(&plain, &x, true), "dropout changes training outputs");
}

/// Every registered plugin, small: the fused path against Candle's composed ops in training
/// mode (evaluation folds BN: checked above). Logits, and the classifier's gradient; every
/// unit kind's gradients are checked unit by unit in `nn`, since through a whole net's chain
/// of batch norms and ReLUs rounding differences grow to a percent in the first layers.
#[test]
fn every_plugin_matches_the_reference_ops_in_training() {
    let small: Vec<Variant> = vec![
        (&Plain, vec![depth(14)]),
        (&ResNet, vec![depth(14)]),
        (
            &ResNet,
            vec![depth(8), s("shortcut", "C"), ("preact", Value::Bool(true))],
        ),
        (&ResNet, vec![depth(11), s("block", "bottleneck"), s("shortcut", "B")]),
        (&Wrn, vec![depth(10), int("widen", 2), ("dropout", Value::Float(0.2))]),
        (&Vgg, vec![depth(11), int("width", 8)]),
        (
            &Vgg,
            vec![depth(11), int("width", 8), ("batch_norm", Value::Bool(false))],
        ),
    ];
    let x = seeded_images(8, 8);
    let y = Tensor::new(&[1u32, 2, 3, 4, 5, 6, 7, 8], &Device::Cpu).unwrap();
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
    for (arch, given) in small {
        let run = |reference: bool| {
            let (store, model) = build(arch, &given, 10);
            runner::nn::use_reference_ops(reference);
            runner::nn::set_step(1, 1);
            let out = model.forward_t(&x, true);
            runner::nn::use_reference_ops(false);
            let out = out.unwrap();
            let loss = candle_nn::loss::cross_entropy(&out, &y).unwrap();
            let grads = loss.backward().unwrap();
            let (_, w) = store
                .trainable()
                .into_iter()
                .find(|(n, _)| n == "linear.weight")
                .unwrap();
            let g: Vec<f32> = grads
                .get(w.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
        };
        let (fast, fast_g) = run(false);
        let (slow, slow_g) = run(true);
        for (a, b, what, tolerance) in [
            (&fast, &slow, "logits", 1e-5),
            (&fast_g, &slow_g, "linear.weight", 1e-3),
        ] {
            let diff = norm(&mut a.iter().zip(b.iter()).map(|(p, q)| p - q));
            let size = norm(&mut b.iter().copied());
            assert!(size > 1e-3, "{} {given:?}: {what} too small to compare", arch.name());
            assert!(
                diff <= tolerance * size,
                "{} {given:?} {what}: {diff} of {size}",
                arch.name()
            );
        }
    }
}

/// What makes a plugin movable into a crate of its own: it names nothing of the runner but the
/// plugin API, and no other crate (the API re-exports the Candle types its signatures use).
#[test]
fn plugins_use_only_runner_arch_and_runner_nn() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".rs") || name == "mod.rs" || name == "tests.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("").trim();
            if let Some(path) = code.strip_prefix("use ") {
                assert!(
                    ["runner::arch", "runner::nn", "std::"]
                        .iter()
                        .any(|p| path.starts_with(p)),
                    "plugins/{name}:{}: `{code}` (a plugin uses runner::arch and runner::nn only)",
                    i + 1
                );
            }
            for other in ["candle_core::", "candle_nn::", "crate::", "super::", "runner::plugins"] {
                assert!(
                    !code.contains(other),
                    "plugins/{name}:{}: `{code}` names {other}",
                    i + 1
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, super::ALL.len(), "one file per registered plugin");
}
