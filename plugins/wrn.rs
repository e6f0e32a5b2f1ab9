//! `wrn`: Wide Residual Networks for CIFAR-sized images.
//!
//! Zagoruyko, Komodakis. *Wide Residual Networks*, BMVC 2016 (arXiv 1605.07146), Table 1:
//! WRN-d-k is a pre-activation ResNet (He et al. 2016) whose stages are k times wider, with
//! N = (d − 4) / 6 units per stage.
//!
//! | group  | output map | units                               |
//! |--------|------------|-------------------------------------|
//! | conv1  | 32×32      | [3×3, 16]                           |
//! | conv2  | 32×32      | [3×3, 16k; 3×3, 16k] × N            |
//! | conv3  | 16×16      | [3×3, 32k; 3×3, 32k] × N            |
//! | conv4  | 8×8        | [3×3, 64k; 3×3, 64k] × N            |
//! | pool   | 1×1        | BN → ReLU, 8×8 average, linear      |
//!
//! Each unit is BN → ReLU → conv → dropout → BN → ReLU → conv, plus a 1×1 projection of the
//! pre-activated input where the width or the stride changes (the identity elsewhere). The
//! paper reports 2.7M parameters for WRN-16-4, 11.0M for WRN-16-8 and 36.5M for WRN-28-10, and
//! dropout 0.3 between the two convolutions of a unit for its best CIFAR results.
//!
//! Tensor names: `conv1`, `layer{1,2,3}.{i}.bn{1,2}`, `.conv{1,2}`, `.shortcut.0`, `bn_final`,
//! `linear`.

use runner::arch::{self, Architecture, DefaultValue, InputShape, Model, ParamError, ParamKind, ParamSpec, Params};
use runner::nn::{
    self, conv3x3, BatchNorm2d, Conv2d, Linear, ModuleT, Result, Shortcut, Stage, Tensor, UnitSpec, VarBuilder,
};

pub struct Wrn;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "depth",
        kind: ParamKind::Int {
            min: 10,
            max: arch::MAX_DEPTH,
        },
        default: DefaultValue::Int(16),
        doc: "weighted layers d: 6N+4 (16, 22, 28, 40)",
    },
    ParamSpec {
        name: "widen",
        kind: ParamKind::Int { min: 1, max: 4096 },
        default: DefaultValue::Int(4),
        doc: "widening factor k: stages of 16k, 32k, 64k filters (WRN-d-k)",
    },
    ParamSpec {
        name: "dropout",
        kind: ParamKind::Float { min: 0.0, max: 0.9 },
        default: DefaultValue::Float(0.0),
        doc: "dropout probability between the two convolutions of a unit (the paper: 0.3)",
    },
];

impl Architecture for Wrn {
    fn name(&self) -> &'static str {
        "wrn"
    }

    fn summary(&self) -> &'static str {
        "Wide ResNets WRN-d-k: pre-activation units k times wider, optional dropout (Zagoruyko & Komodakis 2016)"
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn check(&self, p: &Params) -> std::result::Result<(), ParamError> {
        arch::units_per_stage(p, 6, 4, "wide resnets").map(|_| ())
    }

    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Model> {
        let n = arch::units_per_stage(p, 6, 4, "wide resnets")?; // N
        let net = Net::new(n, p.usize("widen")?, p.float("dropout")?, input, classes, vb)?;
        Ok(Box::new(net))
    }
}

/// A wide unit, `c_in` → `c` filters: a projection where the shape changes.
fn wide_unit(c_in: usize, c: usize, stride: usize, dropout: f64) -> UnitSpec {
    let shortcut = match (c_in, stride) == (c, 1) {
        true => Shortcut::Identity,
        false => Shortcut::Projection,
    };
    UnitSpec::new([conv3x3(c_in, c, stride), conv3x3(c, c, 1)])
        .preact(true)
        .shortcut(shortcut)
        .dropout(dropout)
}

/// N wide units of `c` filters; the first takes `c_in` channels with `stride`.
fn stage(n: usize, c_in: usize, c: usize, stride: usize, dropout: f64, vb: VarBuilder) -> Result<Stage> {
    let units: Vec<UnitSpec> = (0..n)
        .map(|i| match i {
            0 => wide_unit(c_in, c, stride, dropout),
            _ => wide_unit(c, c, 1, dropout),
        })
        .collect();
    nn::stage(&units, vb)
}

/// The whole net: stem, three wide stages, BN → ReLU, pooling, classifier.
pub struct Net {
    conv1: Conv2d,
    layers: [Stage; 3],
    bn_final: BatchNorm2d,
    linear: Linear,
}

impl Net {
    fn new(n: usize, k: usize, dropout: f64, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Net> {
        let w = [16 * k, 32 * k, 64 * k];
        Ok(Net {
            conv1: nn::conv2d(input.channels, 16, 3, 1, 1, vb.pp("conv1"))?,
            layers: [
                stage(n, 16, w[0], 1, dropout, vb.pp("layer1"))?,
                stage(n, w[0], w[1], 2, dropout, vb.pp("layer2"))?,
                stage(n, w[1], w[2], 2, dropout, vb.pp("layer3"))?,
            ],
            bn_final: nn::batch_norm(w[2], vb.pp("bn_final"))?,
            linear: nn::linear(w[2], classes, vb.pp("linear"))?,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // x: (N, C, 32, 32)
        let mut h = self.conv1.forward(x)?; // (N, 16, 32, 32)
        for layer in &self.layers {
            h = layer.forward_t(&h, train)?; // (N, 16k|32k|64k, 32|16|8, 32|16|8)
        }
        let h = self.bn_final.forward_relu(&h, train)?;
        let h = nn::global_avg_pool(&h)?; // (N, 64k)
        self.linear.forward(&h) // (N, classes)
    }
}
