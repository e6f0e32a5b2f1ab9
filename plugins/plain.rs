//! `plain`: the plain CIFAR nets that ResNets are compared against.
//!
//! He, Zhang, Ren, Sun. *Deep Residual Learning for Image Recognition*, CVPR 2016 (arXiv
//! 1512.03385), §4.2: a 3×3 conv with 16 filters → BN → ReLU, then three stages of 2n 3×3
//! convs (each followed by BN → ReLU) with 16, 32, 64 filters on 32×32, 16×16, 8×8 maps
//! (a stride-2 conv starts stages 2 and 3), global average pooling and a linear classifier.
//! Depth 6n+2 (20, 32, 44, 56, 110); parameters as the ResNet of the same depth with
//! option A (ResNet-20: 269,722). The net is the ResNet without its shortcuts, so it is built
//! by the same code and carries the same tensor names.

use candle_nn::VarBuilder;
use runner::arch::{Architecture, DefaultValue, InputShape, Model, ParamError, ParamKind, ParamSpec, Params};

use super::resnet::{Block, Net, NetConfig};

pub struct Plain;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "depth",
        kind: ParamKind::Int { min: 8 },
        default: DefaultValue::Int(20),
        doc: "weighted layers: 6n+2",
    },
    ParamSpec {
        name: "width",
        kind: ParamKind::Int { min: 1 },
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

    fn check(&self, p: &Params) -> Result<(), ParamError> {
        let depth = p.int("depth").map_err(|e| ParamError::new("depth", e.to_string()))?;
        Block::Basic
            .units_per_stage(depth)
            .map(|_| ())
            .map_err(|m| ParamError::new("depth", m))
    }

    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> candle_core::Result<Model> {
        let cfg = NetConfig {
            block: Block::Basic,
            depth: p.int("depth")?,
            width: p.usize("width")?,
            shortcut: None,
            preact: false,
        };
        Ok(Box::new(Net::new(&cfg, input, classes, vb)?))
    }
}
