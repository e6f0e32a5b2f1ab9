//! `plain`: the plain CIFAR nets that ResNets are compared against.
//!
//! He, Zhang, Ren, Sun. *Deep Residual Learning for Image Recognition*, CVPR 2016 (arXiv
//! 1512.03385), §4.2: a 3×3 conv with 16 filters → BN → ReLU, then three stages of 2n 3×3
//! convs (each followed by BN → ReLU) with 16, 32, 64 filters on 32×32, 16×16, 8×8 maps
//! (a stride-2 conv starts stages 2 and 3), global average pooling and a linear classifier.
//!
//! | output map | 32×32 | 16×16 | 8×8 |
//! |------------|-------|-------|-----|
//! | layers     | 1+2n  | 2n    | 2n  |
//! | filters    | 16    | 32    | 64  |
//!
//! Depth 6n+2 (20, 32, 44, 56, 110); parameters as the ResNet of the same depth with option A
//! (ResNet-20: 269,722). It is the ResNet without its shortcuts, with the same tensor names
//! (`conv1`, `bn1`, `layer{1,2,3}.{i}.conv{1,2}`, `.bn{1,2}`, `linear`), so the two nets'
//! checkpoints line up layer by layer.

use runner::arch::{self, Architecture, DefaultValue, InputShape, Model, ParamError, ParamKind, ParamSpec, Params};
use runner::nn::{self, conv3x3, Linear, ModuleT, Result, Stage, Tensor, Unit, UnitSpec, VarBuilder};

pub struct Plain;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "depth",
        kind: ParamKind::Int {
            min: 8,
            max: arch::MAX_DEPTH,
        },
        default: DefaultValue::Int(20),
        doc: "weighted layers: 6n+2",
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

impl Architecture for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }

    fn summary(&self) -> &'static str {
        "plain CIFAR nets of 6n+2 layers, the ResNets without shortcuts (He et al. 2015, §4.2)"
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn check(&self, p: &Params) -> std::result::Result<(), ParamError> {
        arch::units_per_stage(p, 6, 2, "plain nets").map(|_| ())
    }

    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Model> {
        let n = arch::units_per_stage(p, 6, 2, "plain nets")?; // pairs of convolutions per stage
        Ok(Box::new(Net::new(n, p.usize("width")?, input, classes, vb)?))
    }
}

/// n pairs of conv → BN → ReLU with `c` filters; the first conv takes `c_in` channels with `stride`.
fn stage(n: usize, c_in: usize, c: usize, stride: usize, vb: VarBuilder) -> Result<Stage> {
    let pairs: Vec<UnitSpec> = (0..n)
        .map(|i| match i {
            0 => UnitSpec::new([conv3x3(c_in, c, stride), conv3x3(c, c, 1)]),
            _ => UnitSpec::new([conv3x3(c, c, 1), conv3x3(c, c, 1)]),
        })
        .collect();
    nn::stage(&pairs, vb)
}

/// The whole net: stem, three stages, pooling, classifier.
pub struct Net {
    stem: Unit,
    layers: [Stage; 3],
    linear: Linear,
}

impl Net {
    fn new(n: usize, w: usize, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Net> {
        Ok(Net {
            stem: nn::unit(&UnitSpec::new([conv3x3(input.channels, w, 1)]), vb.clone())?,
            layers: [
                stage(n, w, w, 1, vb.pp("layer1"))?,
                stage(n, w, 2 * w, 2, vb.pp("layer2"))?,
                stage(n, 2 * w, 4 * w, 2, vb.pp("layer3"))?,
            ],
            linear: nn::linear(4 * w, classes, vb.pp("linear"))?,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // x: (N, C, 32, 32)
        let mut h = self.stem.forward_t(x, train)?; // (N, 16, 32, 32)
        for layer in &self.layers {
            h = layer.forward_t(&h, train)?; // (N, 16|32|64, 32|16|8, 32|16|8)
        }
        let h = nn::global_avg_pool(&h)?; // (N, 64)
        self.linear.forward(&h) // (N, classes)
    }
}
