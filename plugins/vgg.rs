//! `vgg`: VGG-style plain stacks, the usual CIFAR baseline.
//!
//! Simonyan, Zisserman. *Very Deep Convolutional Networks for Large-Scale Image Recognition*,
//! ICLR 2015 (arXiv 1409.1556), Table 1, configurations A, B, D and E, as CIFAR code uses them
//! (with BatchNorm after each convolution, Ioffe & Szegedy 2015; the three fully connected
//! layers replaced by one linear classifier on the last 1×1 map):
//!
//! | stage (map after it) | 1 (16×16) | 2 (8×8) | 3 (4×4) | 4 (2×2) | 5 (1×1) |
//! |----------------------|-----------|---------|---------|---------|---------|
//! | filters              | 64        | 128     | 256     | 512     | 512     |
//! | VGG-11 (A)           | 1         | 1       | 2       | 2       | 2       |
//! | VGG-13 (B)           | 2         | 2       | 2       | 2       | 2       |
//! | VGG-16 (D)           | 2         | 2       | 3       | 3       | 3       |
//! | VGG-19 (E)           | 2         | 2       | 4       | 4       | 4       |
//!
//! Every convolution is 3×3, padding 1, → BN → ReLU (→ ReLU alone, with a bias, without
//! BatchNorm); a 2×2 max-pooling ends each stage. `stages` keeps the first ones, for inputs too
//! small for five poolings (MNIST's 28×28 takes four). VGG-16 with BatchNorm has 14,724,042
//! parameters for 10 classes.
//!
//! Tensor names: `layer{s}.{i}.conv1`, `.bn1` (stage s, convolution i), `linear`.

use runner::arch::{
    Architecture, DefaultValue, InputShape, Model, ParamError, ParamKind, ParamSpec, Params, MAX_WIDTH,
};
use runner::nn::{self, conv3x3, Error, Linear, ModuleT, Result, Stage, Tensor, UnitSpec, VarBuilder};

pub struct Vgg;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "depth",
        kind: ParamKind::Int { min: 11, max: 19 },
        default: DefaultValue::Int(16),
        doc: "the configuration: 11 (A), 13 (B), 16 (D) or 19 (E) weighted layers of five stages",
    },
    ParamSpec {
        name: "stages",
        kind: ParamKind::Int { min: 1, max: 5 },
        default: DefaultValue::Int(5),
        doc: "how many of the five stages to keep (each halves the map): 1 to 5",
    },
    ParamSpec {
        name: "width",
        kind: ParamKind::Int { min: 1, max: MAX_WIDTH },
        default: DefaultValue::Int(64),
        doc: "filters in the first stage (doubled in each later stage, at most 8×)",
    },
    ParamSpec {
        name: "batch_norm",
        kind: ParamKind::Bool,
        default: DefaultValue::Bool(true),
        doc: "BatchNorm after every convolution (without it, convolutions have a bias)",
    },
];

/// Convolutions per stage of each configuration, by depth.
const CONFIGS: [(i64, [usize; 5]); 4] = [
    (11, [1, 1, 2, 2, 2]),
    (13, [2, 2, 2, 2, 2]),
    (16, [2, 2, 3, 3, 3]),
    (19, [2, 2, 4, 4, 4]),
];

/// Convolutions per stage, for the stages kept.
fn convs_per_stage(p: &Params) -> std::result::Result<Vec<usize>, ParamError> {
    let depth = p.int("depth").map_err(|e| ParamError::new("depth", e.to_string()))?;
    let stages = p
        .usize("stages")
        .map_err(|e| ParamError::new("stages", e.to_string()))?;
    let Some((_, convs)) = CONFIGS.iter().find(|(d, _)| *d == depth) else {
        return Err(ParamError::new(
            "depth",
            format!("depth {depth} is no VGG configuration (valid: 11, 13, 16, 19)"),
        ));
    };
    if !(1..=5).contains(&stages) {
        return Err(ParamError::new(
            "stages",
            format!("stages must be 1 to 5, got {stages}"),
        ));
    }
    Ok(convs[..stages].to_vec())
}

impl Architecture for Vgg {
    fn name(&self) -> &'static str {
        "vgg"
    }

    fn summary(&self) -> &'static str {
        "VGG-11/13/16/19 plain stacks with max-pooling, BatchNorm on or off (Simonyan & Zisserman 2015)"
    }

    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }

    fn check(&self, p: &Params) -> std::result::Result<(), ParamError> {
        convs_per_stage(p).map(|_| ())
    }

    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Model> {
        let convs = convs_per_stage(p)?;
        let min_side = input.height.min(input.width);
        if min_side >> convs.len() == 0 {
            return Err(Error::Msg(format!(
                "vgg: a {input} input is too small for {} stages of 2×2 pooling (stages = {} at most)",
                convs.len(),
                min_side.max(1).ilog2()
            )));
        }
        let net = Net::new(&convs, p.usize("width")?, p.bool("batch_norm")?, input, classes, vb)?;
        Ok(Box::new(net))
    }
}

/// `n` convolutions of `c` filters, the first taking `c_in` channels; each one unit.
fn stage(n: usize, c_in: usize, c: usize, batch_norm: bool, vb: VarBuilder) -> Result<Stage> {
    let convs: Vec<UnitSpec> = (0..n)
        .map(|i| UnitSpec::new([conv3x3(if i == 0 { c_in } else { c }, c, 1)]).batch_norm(batch_norm))
        .collect();
    nn::stage(&convs, vb)
}

/// The whole net: stages, each followed by 2×2 max-pooling, then a linear classifier.
pub struct Net {
    layers: Vec<Stage>,
    linear: Linear,
}

impl Net {
    fn new(
        convs: &[usize],
        width: usize,
        batch_norm: bool,
        input: InputShape,
        classes: usize,
        vb: VarBuilder,
    ) -> Result<Net> {
        let mut layers = Vec::with_capacity(convs.len());
        let mut c_in = input.channels;
        for (s, &n) in convs.iter().enumerate() {
            let c = width << s.min(3); // 64, 128, 256, 512, 512
            layers.push(stage(n, c_in, c, batch_norm, vb.pp(format!("layer{}", s + 1)))?);
            c_in = c;
        }
        let linear = nn::linear(c_in, classes, vb.pp("linear"))?;
        Ok(Net { layers, linear })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // x: (N, C, 32, 32)
        let mut h = x.clone();
        for layer in &self.layers {
            // (N, 64|128|256|512|512, 16|8|4|2|1, 16|8|4|2|1)
            h = nn::max_pool2d(&layer.forward_t(&h, train)?, 2)?;
        }
        let h = nn::global_avg_pool(&h)?; // (N, 512): the 1×1 map of five stages
        self.linear.forward(&h) // (N, classes)
    }
}
