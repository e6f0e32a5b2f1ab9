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

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use runner::arch::{Architecture, DefaultValue, InputShape, Model, ParamError, ParamKind, ParamSpec, Params};
use runner::nn::{self, BatchNorm2d, Conv2d, Linear, Shortcut};

pub struct ResNet;

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "depth",
        kind: ParamKind::Int { min: 8 },
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
        kind: ParamKind::Int { min: 1 },
        default: DefaultValue::Int(16),
        doc: "filters in the first stage (doubled in each later stage)",
    },
];

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
        let block = Block::parse(p.str("block").unwrap_or("basic"));
        let depth = p.int("depth").map_err(|e| ParamError::new("depth", e.to_string()))?;
        block.units_per_stage(depth).map_err(|m| ParamError::new("depth", m))?;
        if block == Block::Bottleneck && p.str("shortcut").ok() == Some("A") {
            return Err(ParamError::new(
                "shortcut",
                "shortcut A (zero-padding) is defined for basic blocks only; bottleneck nets use \
                 shortcut B or C (valid: B, C)",
            ));
        }
        Ok(())
    }

    fn build(&self, p: &Params, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Model> {
        let shortcut = match p.str("shortcut")? {
            "A" => ShortcutKind::A,
            "B" => ShortcutKind::B,
            _ => ShortcutKind::C,
        };
        let cfg = NetConfig {
            block: Block::parse(p.str("block")?),
            depth: p.int("depth")?,
            width: p.usize("width")?,
            shortcut: Some(shortcut),
            preact: p.bool("preact")?,
        };
        Ok(Box::new(Net::new(&cfg, input, classes, vb)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    fn parse(s: &str) -> Block {
        if s == "bottleneck" {
            Block::Bottleneck
        } else {
            Block::Basic
        }
    }

    /// n, the number of units per stage, for a depth; an error lists the valid depths.
    pub fn units_per_stage(self, depth: i64) -> std::result::Result<usize, String> {
        let (per_unit, name) = match self {
            Block::Basic => (2, "basic"),
            Block::Bottleneck => (3, "bottleneck"),
        };
        let step = 3 * per_unit;
        if depth >= step + 2 && (depth - 2) % step == 0 {
            return Ok(((depth - 2) / step) as usize);
        }
        let examples: Vec<String> = (1..=6).map(|n| (step * n + 2).to_string()).collect();
        Err(format!(
            "depth {depth} is not valid for {name} blocks: it must be {step}n+2 ({}, …)",
            examples.join(", ")
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortcutKind {
    A,
    B,
    C,
}

/// What distinguishes the nets of both papers; `shortcut: None` is the plain net.
pub struct NetConfig {
    pub block: Block,
    pub depth: i64,
    pub width: usize,
    pub shortcut: Option<ShortcutKind>,
    pub preact: bool,
}

/// The shortcut path of one unit.
enum Path {
    /// No shortcut: a plain net.
    None,
    Identity,
    /// Option A where the shape changes.
    SubsamplePad,
    /// Options B/C: 1×1 conv (+ BN unless pre-activation).
    Projection(Conv2d, Option<BatchNorm2d>),
}

/// One unit: its convolutions with the BN that follows (or, pre-activated, precedes) each.
struct Unit {
    convs: Vec<Conv2d>,
    bns: Vec<BatchNorm2d>,
    path: Path,
    preact: bool,
}

/// A basic (two 3×3) or bottleneck (1×1, 3×3, 1×1 ×4) unit from `c_in` to `c_out` channels.
fn unit(cfg: &NetConfig, c_in: usize, c: usize, stride: usize, vb: VarBuilder) -> Result<Unit> {
    // (in, out, kernel, stride) of each conv
    let shapes = match cfg.block {
        Block::Basic => vec![(c_in, c, 3, stride), (c, c, 3, 1)],
        Block::Bottleneck => vec![(c_in, c, 1, 1), (c, c, 3, stride), (c, 4 * c, 1, 1)],
    };
    let c_out = shapes.last().map_or(c, |s| s.1);
    let mut convs = Vec::new();
    let mut bns = Vec::new();
    for (i, &(ci, co, k, s)) in shapes.iter().enumerate() {
        convs.push(nn::conv2d(ci, co, k, s, k / 2, vb.pp(format!("conv{}", i + 1)))?);
        // pre-activation: BN on the conv's input; original: on its output
        bns.push(nn::batch_norm(
            if cfg.preact { ci } else { co },
            vb.pp(format!("bn{}", i + 1)),
        )?);
    }
    let changes = stride != 1 || c_in != c_out;
    let path = match cfg.shortcut {
        None => Path::None,
        Some(ShortcutKind::A) if changes => Path::SubsamplePad,
        Some(ShortcutKind::A) | Some(ShortcutKind::B) if !changes => Path::Identity,
        Some(_) => {
            let conv = nn::conv2d(c_in, c_out, 1, stride, 0, vb.pp("shortcut").pp("0"))?;
            let bn = if cfg.preact {
                None
            } else {
                Some(nn::batch_norm(c_out, vb.pp("shortcut").pp("1"))?)
            };
            Path::Projection(conv, bn)
        }
    };
    Ok(Unit {
        convs,
        bns,
        path,
        preact: cfg.preact,
    })
}

impl Unit {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.preact {
            // BN → ReLU → conv, for each conv; the shortcut sees the first pre-activation.
            let pre = self.bns[0].forward_relu(x, train)?;
            let mut h = self.convs[0].forward(&pre)?;
            for (conv, bn) in self.convs.iter().zip(&self.bns).skip(1) {
                h = conv.forward(&bn.forward_relu(&h, train)?)?;
            }
            return self.add(&h, x, &pre, false, train);
        }
        // conv → BN → ReLU, except after the last conv, where the ReLU follows the addition
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (conv, bn) in self.convs.iter().zip(&self.bns).take(last) {
            h = nn::conv_bn(conv, bn, &h, train, true)?;
        }
        let (conv, bn) = (&self.convs[last], &self.bns[last]);
        if let Path::Identity = self.path {
            return nn::conv_bn_add_relu(conv, bn, &h, x, train);
        }
        let h = nn::conv_bn(conv, bn, &h, train, false)?;
        self.add(&h, x, x, true, train)
    }

    /// Its two conv → BN layers, if it is a basic unit with an identity shortcut and no
    /// pre-activation: such units one after the other run as one op (`nn::basic_units`).
    fn basic_identity(&self) -> Option<nn::BasicUnit<'_>> {
        match (&self.convs[..], &self.bns[..], &self.path, self.preact) {
            ([c1, c2], [b1, b2], Path::Identity, false) => Some(((c1, b1), (c2, b2))),
            _ => None,
        }
    }

    /// branch + shortcut (`x` for identity and option A, `proj_in` for a projection).
    fn add(&self, branch: &Tensor, x: &Tensor, proj_in: &Tensor, relu: bool, train: bool) -> Result<Tensor> {
        match &self.path {
            Path::None => branch.relu(),
            Path::Identity => nn::residual(branch, x, Shortcut::Identity, relu),
            Path::SubsamplePad => nn::residual(branch, x, Shortcut::SubsamplePad, relu),
            Path::Projection(conv, bn) => {
                let s = match bn {
                    Some(bn) => nn::conv_bn(conv, bn, proj_in, train, false)?,
                    None => conv.forward(proj_in)?,
                };
                nn::residual(branch, &s, Shortcut::Identity, relu)
            }
        }
    }
}

/// The whole net: stem, three stages, pooling, classifier.
pub struct Net {
    conv1: Conv2d,
    bn1: Option<BatchNorm2d>,
    stages: Vec<Vec<Unit>>,
    bn_final: Option<BatchNorm2d>,
    linear: Linear,
}

impl Net {
    pub fn new(cfg: &NetConfig, input: InputShape, classes: usize, vb: VarBuilder) -> Result<Net> {
        let n = cfg.block.units_per_stage(cfg.depth).map_err(candle_core::Error::Msg)?;
        let w = cfg.width;
        let conv1 = nn::conv2d(input.channels, w, 3, 1, 1, vb.pp("conv1"))?;
        let bn1 = if cfg.preact {
            None
        } else {
            Some(nn::batch_norm(w, vb.pp("bn1"))?)
        };
        let expansion = if cfg.block == Block::Bottleneck { 4 } else { 1 };
        let mut stages = Vec::new();
        let mut c_in = w;
        for s in 0..3 {
            let c = w << s;
            let vb_stage = vb.pp(format!("layer{}", s + 1));
            let mut units = Vec::new();
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                units.push(unit(cfg, c_in, c, stride, vb_stage.pp(i))?);
                c_in = c * expansion;
            }
            stages.push(units);
        }
        let bn_final = if cfg.preact {
            Some(nn::batch_norm(c_in, vb.pp("bn_final"))?)
        } else {
            None
        };
        let linear = nn::linear(c_in, classes, vb.pp("linear"))?;
        Ok(Net {
            conv1,
            bn1,
            stages,
            bn_final,
            linear,
        })
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // x: (N, C, 32, 32)
        let mut h = match &self.bn1 {
            Some(bn) => nn::conv_bn(&self.conv1, bn, x, train, true)?, // (N, 16, 32, 32)
            None => self.conv1.forward(x)?,
        };
        for stage in &self.stages {
            let mut units = &stage[..];
            while let Some(unit) = units.first() {
                // (N, 16|32|64 (×4), 32|16|8, 32|16|8); basic units with identity shortcuts
                // that follow one another go to the library together, as one op
                let run: Vec<_> = units.iter().map_while(Unit::basic_identity).collect();
                h = match run.is_empty() {
                    true => unit.forward_t(&h, train)?,
                    false => nn::basic_units(&run, &h, train)?,
                };
                units = &units[run.len().max(1)..];
            }
        }
        if let Some(bn) = &self.bn_final {
            h = bn.forward_relu(&h, train)?;
        }
        let h = nn::global_avg_pool(&h)?; // (N, 64)
        self.linear.forward(&h) // (N, classes)
    }
}
