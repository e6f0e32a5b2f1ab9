//! `resnet`: residual networks for CIFAR-sized images.
//!
//! He, Zhang, Ren, Sun. *Deep Residual Learning for Image Recognition*, CVPR 2016 (arXiv
//! 1512.03385), §4.2; and *Identity Mappings in Deep Residual Networks*, ECCV 2016 (arXiv
//! 1603.05027) for the pre-activation unit and the bottleneck CIFAR nets.
//!
//! | output map | 32×32 | 16×16 | 8×8 |
//! |------------|-------|-------|-----|
//! | layers     | 1+2n  | 2n    | 2n  |
//! | filters    | 16    | 32    | 64  |
//!
//! Basic blocks: depth 6n+2 (20, 32, 44, 56, 110, 1202 → 0.27M, 0.46M, 0.66M, 0.85M, 1.7M,
//! 19.4M parameters with option A). Bottleneck blocks ([1×1, c; 3×3, c; 1×1, 4c]): depth 9n+2
//! (164, 1001 → 1.7M, 10.2M with pre-activation).
//!
//! Shortcuts: A is the identity, with stride-2 subsampling and zero-padded channels where the
//! shape changes (no parameters); B is a 1×1 projection (conv + BN; conv only in a
//! pre-activation unit, as the 2016 paper's code) where the shape changes, identity elsewhere;
//! C projects in every unit. Pre-activation units are BN → ReLU → conv twice (three times for a
//! bottleneck), then a pure addition; projections act on the pre-activated input; the stem has
//! no BN/ReLU and one BN → ReLU (`bn_final`) follows the last unit.
//!
//! Tensor names follow the common PyTorch CIFAR ResNet code: `conv1`, `bn1`,
//! `layer{1,2,3}.{i}.conv{1,2,3}`, `.bn{1,2,3}`, `.shortcut.0` (projection conv), `.shortcut.1`
//! (its BN), `bn_final`, `linear`.

use runner::arch::{self, Architecture, DefaultValue, InputShape, Model, ParamError, ParamKind, ParamSpec, Params};
use runner::nn::{
    self, conv1x1, conv3x3, BatchNorm2d, Conv2d, Error, Linear, ModuleT, Result, Shortcut, Stage, Tensor, Unit,
    UnitSpec, VarBuilder,
};

pub struct ResNet;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "depth",
        kind: ParamKind::Int {
            min: 8,
            max: arch::MAX_DEPTH,
        },
        default: DefaultValue::Int(20),
        doc: "weighted layers: 6n+2 with basic blocks, 9n+2 with bottleneck blocks",
    },
    ParamSpec {
        name: "shortcut",
        kind: ParamKind::Choice(&["A", "B", "C"]),
        default: DefaultValue::Str("A"),
        doc: "A: identity, zero-padding where the shape changes; B: projection where it changes; C: projection everywhere",
    },
    ParamSpec {
        name: "preact",
        kind: ParamKind::Bool,
        default: DefaultValue::Bool(false),
        doc: "full pre-activation units (He et al. 2016): BN → ReLU → conv, pure identity addition",
    },
    ParamSpec {
        name: "block",
        kind: ParamKind::Choice(&["basic", "bottleneck"]),
        default: DefaultValue::Str("basic"),
        doc: "basic: two 3×3 convs; bottleneck: 1×1, 3×3, 1×1 with 4× expansion",
    },
    ParamSpec {
        name: "width",
        kind: ParamKind::Int {
            min: 1,
            max: arch::MAX_WIDTH,
        },
        default: DefaultValue::Int(16),
        doc: "filters in the first stage (doubled in each later stage)",
    },
];

/// What distinguishes the nets of both papers.
struct Config {
    bottleneck: bool,
    /// Units per stage.
    n: usize,
    width: usize,
    option: char,
    preact: bool,
}

impl Config {
    fn new(p: &Params) -> std::result::Result<Config, ParamError> {
        fn at(name: &'static str) -> impl Fn(Error) -> ParamError {
            move |e| ParamError::new(name, e.to_string())
        }
        let bottleneck = p.str("block").map_err(at("block"))? == "bottleneck";
        let n = match bottleneck {
            true => arch::units_per_stage(p, 9, 2, "bottleneck blocks")?,
            false => arch::units_per_stage(p, 6, 2, "basic blocks")?,
        };
        Ok(Config {
            bottleneck,
            n,
            width: p.usize("width").map_err(at("width"))?,
            option: p.str("shortcut").map_err(at("shortcut"))?.chars().next().unwrap_or('A'),
            preact: p.bool("preact").map_err(at("preact"))?,
        })
    }
}

impl Architecture for ResNet {
    fn name(&self) -> &'static str {
        "resnet"
    }

    fn summary(&self) -> &'static str {
        "CIFAR ResNets with shortcut options A/B/C (He et al. 2015, §4.2), pre-activation and bottleneck units (He et al. 2016)"
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn check(&self, p: &Params) -> std::result::Result<(), ParamError> {
        let cfg = Config::new(p)?;
        if cfg.bottleneck && cfg.option == 'A' {
            return Err(ParamError::new(
                "shortcut",
                "shortcut A (zero-padding) is defined for basic blocks only; bottleneck nets use \
                 shortcut B or C (valid: B, C)",
            ));
        }
        Ok(())
    }

    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Model> {
        let cfg = Config::new(p)?;
        Ok(Box::new(Net::new(&cfg, input, classes, vb)?))
    }
}

/// The shortcut of a unit from `c_in` to `c_out` channels with `stride`, for option A, B or C.
fn shortcut(option: char, c_in: usize, c_out: usize, stride: usize) -> Shortcut {
    let changes = stride != 1 || c_in != c_out;
    match option {
        'A' if changes => Shortcut::SubsamplePad,
        'A' | 'B' if !changes => Shortcut::Identity,
        _ => Shortcut::Projection,
    }
}

/// A basic block (two 3×3) or a bottleneck block (1×1, 3×3, 1×1 ×4), `c_in` → `c` filters.
fn block(cfg: &Config, c_in: usize, c: usize, stride: usize) -> UnitSpec {
    let convs = match cfg.bottleneck {
        false => vec![conv3x3(c_in, c, stride), conv3x3(c, c, 1)],
        true => vec![conv1x1(c_in, c, 1), conv3x3(c, c, stride), conv1x1(c, 4 * c, 1)],
    };
    let c_out = convs[convs.len() - 1].c_out;
    UnitSpec::new(convs)
        .shortcut(shortcut(cfg.option, c_in, c_out, stride))
        .preact(cfg.preact)
}

/// n blocks of `c` filters; the first takes `c_in` channels with `stride`.
fn stage(cfg: &Config, c_in: usize, c: usize, stride: usize, vb: VarBuilder) -> Result<Stage> {
    let expansion = if cfg.bottleneck { 4 } else { 1 };
    let blocks: Vec<UnitSpec> = (0..cfg.n)
        .map(|i| match i {
            0 => block(cfg, c_in, c, stride),
            _ => block(cfg, c * expansion, c, 1),
        })
        .collect();
    nn::stage(&blocks, vb)
}

/// The stem: conv → BN → ReLU (pre-activation nets: the conv alone).
enum Stem {
    Unit(Unit),
    Conv(Conv2d),
}

/// The whole net: stem, three stages, pooling, classifier.
pub struct Net {
    stem: Stem,
    layers: [Stage; 3],
    bn_final: Option<BatchNorm2d>,
    linear: Linear,
}

impl Net {
    fn new(cfg: &Config, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Net> {
        let w = cfg.width;
        let stem = match cfg.preact {
            false => Stem::Unit(nn::unit(&UnitSpec::new([conv3x3(input.channels, w, 1)]), vb.clone())?),
            true => Stem::Conv(nn::conv2d(input.channels, w, 3, 1, 1, vb.pp("conv1"))?),
        };
        let e = if cfg.bottleneck { 4 } else { 1 };
        let layers = [
            stage(cfg, w, w, 1, vb.pp("layer1"))?,
            stage(cfg, w * e, 2 * w, 2, vb.pp("layer2"))?,
            stage(cfg, 2 * w * e, 4 * w, 2, vb.pp("layer3"))?,
        ];
        let c_out = 4 * w * e;
        let bn_final = match cfg.preact {
            true => Some(nn::batch_norm(c_out, vb.pp("bn_final"))?),
            false => None,
        };
        let linear = nn::linear(c_out, classes, vb.pp("linear"))?;
        Ok(Net {
            stem,
            layers,
            bn_final,
            linear,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // x: (N, C, 32, 32)
        let mut h = match &self.stem {
            Stem::Unit(u) => u.forward_t(x, train)?, // (N, 16, 32, 32)
            Stem::Conv(c) => c.forward(x)?,
        };
        for layer in &self.layers {
            h = layer.forward_t(&h, train)?; // (N, 16|32|64 (×4), 32|16|8, 32|16|8)
        }
        if let Some(bn) = &self.bn_final {
            h = bn.forward_relu(&h, train)?;
        }
        let h = nn::global_avg_pool(&h)?; // (N, 64)
        self.linear.forward(&h) // (N, classes)
    }
}
