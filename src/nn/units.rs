//! Units and stages: what a plugin says its network is made of, and the one place that decides
//! how each runs.
//!
//! A unit is a value, a [`UnitSpec`]: its convolutions, whether BatchNorm follows (or, with
//! pre-activation, precedes) each, its shortcut, and its dropout. He et al.'s basic block is
//! `UnitSpec::new([conv3x3(c_in, c, stride), conv3x3(c, c, 1)]).shortcut(Shortcut::Identity)`.
//! [`unit`] creates its tensors under PyTorch state-dict names (`conv1`, `bn1`, `conv2`, `bn2`,
//! …, `shortcut.0` for a projection, `shortcut.1` for its BatchNorm) and [`stage`] a sequence of
//! units named `0`, `1`, ….
//!
//! How a unit runs is decided here, from its description alone, so every plugin gets the same
//! fused ops: conv → BN (→ ReLU) is one training op and one folded convolution in evaluation;
//! an identity shortcut's addition and the ReLU after it happen inside the last conv → BN;
//! option A's subsampled, zero-padded shortcut and a projection's output are added by
//! [`super::residual`]; and in a [`Stage`], basic units with identity shortcuts that follow one
//! another run as one op. Anything the fused ops do not take (another device, dtype or shape)
//! runs on the same layers unfused, with the same values.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{self, batch_norm, conv2d, conv2d_biased, dropout, BatchNorm2d, Conv2d, Dropout};
use super::ops::residual::{residual, Addend};

/// One convolution of a unit: `c_in` → `c_out` channels, a `kernel`×`kernel` window with
/// `kernel / 2` zero padding ("same" for odd kernels), `stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
}

/// A 3×3 convolution, padding 1.
pub fn conv3x3(c_in: usize, c_out: usize, stride: usize) -> ConvSpec {
    ConvSpec {
        c_in,
        c_out,
        kernel: 3,
        stride,
    }
}

/// A 1×1 convolution, no padding.
pub fn conv1x1(c_in: usize, c_out: usize, stride: usize) -> ConvSpec {
    ConvSpec {
        c_in,
        c_out,
        kernel: 1,
        stride,
    }
}

/// Where a unit's BatchNorm and ReLU sit around each convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// conv → BN → ReLU (He et al. 2015); the last ReLU follows the shortcut's addition.
    PostActivation,
    /// BN → ReLU → conv (He et al. 2016, "full pre-activation"); the addition is the unit's
    /// output, and a projection shortcut reads the first pre-activated input.
    PreActivation,
}

/// How a unit's input reaches its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortcut {
    /// None: a plain unit.
    None,
    /// The input as it is; the unit must keep its shape.
    Identity,
    /// He et al.'s option A: the input subsampled with stride 2 and its channels zero-padded
    /// (no parameters); for a unit with stride 2 and no fewer output than input channels.
    SubsamplePad,
    /// Options B and C: a 1×1 convolution with the unit's stride (+ BatchNorm in a
    /// post-activation unit with BatchNorm; none in a pre-activation unit, as the 2016 code).
    Projection,
}

/// What a unit is: see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSpec {
    /// In order; each takes the previous one's channels.
    pub convs: Vec<ConvSpec>,
    pub order: Order,
    /// BatchNorm at each convolution; without it the convolutions have a bias.
    pub batch_norm: bool,
    pub shortcut: Shortcut,
    /// Dropout probability on the input of every convolution but the first (Zagoruyko &
    /// Komodakis 2016 put it between a wide unit's two); 0 for none.
    pub dropout: f64,
}

impl UnitSpec {
    /// A post-activation unit with BatchNorm and no shortcut: conv → BN → ReLU for each conv.
    pub fn new(convs: impl Into<Vec<ConvSpec>>) -> UnitSpec {
        UnitSpec {
            convs: convs.into(),
            order: Order::PostActivation,
            batch_norm: true,
            shortcut: Shortcut::None,
            dropout: 0.0,
        }
    }

    pub fn shortcut(self, shortcut: Shortcut) -> UnitSpec {
        UnitSpec { shortcut, ..self }
    }

    /// Pre-activation (`true`) or post-activation order.
    pub fn preact(self, on: bool) -> UnitSpec {
        let order = if on {
            Order::PreActivation
        } else {
            Order::PostActivation
        };
        UnitSpec { order, ..self }
    }

    pub fn batch_norm(self, on: bool) -> UnitSpec {
        UnitSpec { batch_norm: on, ..self }
    }

    pub fn dropout(self, p: f64) -> UnitSpec {
        UnitSpec { dropout: p, ..self }
    }

    /// The unit's input channels (its first convolution's).
    pub fn c_in(&self) -> usize {
        self.convs.first().map_or(0, |c| c.c_in)
    }

    /// The unit's output channels (its last convolution's).
    pub fn c_out(&self) -> usize {
        self.convs.last().map_or(0, |c| c.c_out)
    }

    /// The unit's stride: the product of its convolutions'.
    pub fn stride(&self) -> usize {
        self.convs.iter().map(|c| c.stride).product()
    }

    /// Why this description is no unit, if it is none: the error a plugin author sees.
    fn check(&self) -> std::result::Result<(), String> {
        if self.convs.is_empty() {
            return Err("a unit needs at least one convolution".into());
        }
        for (a, b) in self.convs.iter().zip(&self.convs[1..]) {
            if a.c_out != b.c_in {
                return Err(format!(
                    "convolution {a:?} gives {} channels but the next one takes {}",
                    a.c_out, b.c_in
                ));
            }
        }
        if let Some(c) = self
            .convs
            .iter()
            .find(|c| c.kernel == 0 || c.stride == 0 || c.c_in == 0 || c.c_out == 0)
        {
            return Err(format!("convolution {c:?} has a zero size"));
        }
        let (c_in, c_out, stride) = (self.c_in(), self.c_out(), self.stride());
        match self.shortcut {
            Shortcut::Identity if (c_in, stride) != (c_out, 1) => Err(format!(
                "an identity shortcut needs a unit that keeps the shape, not {c_in} → {c_out} channels \
                 with stride {stride}: use Shortcut::SubsamplePad or Shortcut::Projection"
            )),
            Shortcut::SubsamplePad if stride != 2 || c_out < c_in => Err(format!(
                "Shortcut::SubsamplePad needs stride 2 and no fewer output than input channels, not \
                 {c_in} → {c_out} channels with stride {stride}"
            )),
            _ if !(0.0..1.0).contains(&self.dropout) => Err(format!("dropout must be in [0, 1), got {}", self.dropout)),
            _ => Ok(()),
        }
    }
}

/// One convolution with its BatchNorm (after it, or before it when pre-activated; none
/// without BatchNorm, when the convolution has a bias).
struct ConvLayer {
    conv: Conv2d,
    bn: Option<BatchNorm2d>,
}

impl ConvLayer {
    /// Post-activation: relu?(bn(conv(x))).
    fn post(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        match &self.bn {
            Some(bn) => layers::conv_bn(&self.conv, bn, x, train, relu),
            None if relu => layers::relu(&self.conv.forward(x)?),
            None => self.conv.forward(x),
        }
    }

    /// Pre-activation: relu(bn(x)), the input of this layer's convolution.
    fn pre(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.bn {
            Some(bn) => bn.forward_relu(x, train),
            None => layers::relu(x),
        }
    }
}

/// A built unit's [`Shortcut`], with the projection's layers for options B/C: the 1×1
/// convolution, and its BatchNorm where the unit is post-activated.
enum Skip {
    None,
    Identity,
    SubsamplePad,
    Projection(ConvLayer),
}

/// A unit with its tensors, built by [`unit`].
pub struct Unit {
    layers: Vec<ConvLayer>,
    order: Order,
    skip: Skip,
    dropout: Option<Dropout>,
}

/// Builds the unit `spec` describes, its tensors under `vb`; the error says what is wrong with
/// a description that is no unit.
pub fn unit(spec: &UnitSpec, vb: VarBuilder) -> Result<Unit> {
    spec.check()
        .map_err(|m| candle_core::Error::Msg(format!("unit {}: {m}", vb.prefix())))?;
    let pre = spec.order == Order::PreActivation;
    let mut layers = Vec::with_capacity(spec.convs.len());
    for (i, c) in spec.convs.iter().enumerate() {
        let (conv_vb, bn_vb) = (vb.pp(format!("conv{}", i + 1)), vb.pp(format!("bn{}", i + 1)));
        let conv = match spec.batch_norm {
            true => conv2d(c.c_in, c.c_out, c.kernel, c.stride, c.kernel / 2, conv_vb)?,
            false => conv2d_biased(c.c_in, c.c_out, c.kernel, c.stride, c.kernel / 2, conv_vb)?,
        };
        // pre-activation: BN on the conv's input; original: on its output
        let bn = match spec.batch_norm {
            true => Some(batch_norm(if pre { c.c_in } else { c.c_out }, bn_vb)?),
            false => None,
        };
        layers.push(ConvLayer { conv, bn });
    }
    let skip = match spec.shortcut {
        Shortcut::None => Skip::None,
        Shortcut::Identity => Skip::Identity,
        Shortcut::SubsamplePad => Skip::SubsamplePad,
        Shortcut::Projection => {
            let vb = vb.pp("shortcut");
            let conv = conv2d(spec.c_in(), spec.c_out(), 1, spec.stride(), 0, vb.pp("0"))?;
            let bn = match spec.batch_norm && !pre {
                true => Some(batch_norm(spec.c_out(), vb.pp("1"))?),
                false => None,
            };
            Skip::Projection(ConvLayer { conv, bn })
        }
    };
    let dropout = match spec.dropout > 0.0 && spec.convs.len() > 1 {
        true => Some(dropout(spec.dropout, vb.pp("dropout"))?),
        false => None,
    };
    Ok(Unit {
        layers,
        order: spec.order,
        skip,
        dropout,
    })
}

impl Unit {
    /// The input of every convolution but the first goes through the dropout.
    fn dropped(&self, h: Tensor, train: bool) -> Result<Tensor> {
        match &self.dropout {
            Some(d) => d.forward_t(&h, train),
            None => Ok(h),
        }
    }

    fn forward_post(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // conv → BN → ReLU, except after the last conv, where the ReLU follows the addition
        let (last, inner) = self.layers.split_last().expect("a unit has a convolution");
        let mut h = x.clone();
        for layer in inner {
            h = self.dropped(layer.post(&h, train, true)?, train)?;
        }
        match (&self.skip, &last.bn) {
            (Skip::None, _) => last.post(&h, train, true),
            (Skip::Identity, Some(bn)) => layers::conv_bn_add_relu(&last.conv, bn, &h, x, train),
            (Skip::Identity, None) => residual(&last.post(&h, train, false)?, x, Addend::Identity, true),
            (Skip::SubsamplePad, _) => residual(&last.post(&h, train, false)?, x, Addend::SubsamplePad, true),
            (Skip::Projection(p), _) => {
                let s = p.post(x, train, false)?;
                residual(&last.post(&h, train, false)?, &s, Addend::Identity, true)
            }
        }
    }

    fn forward_pre(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // BN → ReLU → conv, for each conv; a projection sees the first pre-activation
        let (first, rest) = self.layers.split_first().expect("a unit has a convolution");
        let pre = first.pre(x, train)?;
        let mut h = first.conv.forward(&pre)?;
        for layer in rest {
            let input = self.dropped(h, train)?;
            h = layer.conv.forward(&layer.pre(&input, train)?)?;
        }
        match &self.skip {
            Skip::None => Ok(h),
            Skip::Identity => residual(&h, x, Addend::Identity, false),
            Skip::SubsamplePad => residual(&h, x, Addend::SubsamplePad, false),
            Skip::Projection(p) => residual(&h, &p.conv.forward(&pre)?, Addend::Identity, false),
        }
    }

    /// Its two conv → BN layers, if it is a basic post-activation unit with BatchNorm, an
    /// identity shortcut and no dropout: such units one after the other run as one op.
    fn basic_identity(&self) -> Option<layers::BasicUnit<'_>> {
        match (&self.layers[..], self.order, &self.skip, &self.dropout) {
            (
                [ConvLayer { conv: c1, bn: Some(b1) }, ConvLayer { conv: c2, bn: Some(b2) }],
                Order::PostActivation,
                Skip::Identity,
                None,
            ) => Some(((c1, b1), (c2, b2))),
            _ => None,
        }
    }
}

impl ModuleT for Unit {
    /// (N, c_in, H, W) → (N, c_out, H / stride, W / stride)
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.order {
            Order::PostActivation => self.forward_post(x, train),
            Order::PreActivation => self.forward_pre(x, train),
        }
    }
}

/// Units one after the other, built by [`stage`].
pub struct Stage {
    units: Vec<Unit>,
}

/// Builds the units `specs` describe, unit `i` under `{vb}.{i}`; each must take the previous
/// one's channels.
pub fn stage(specs: &[UnitSpec], vb: VarBuilder) -> Result<Stage> {
    for (i, (a, b)) in specs.iter().zip(specs.iter().skip(1)).enumerate() {
        if a.c_out() != b.c_in() {
            candle_core::bail!(
                "stage {}: unit {i} gives {} channels but unit {} takes {}",
                vb.prefix(),
                a.c_out(),
                i + 1,
                b.c_in()
            );
        }
    }
    let units = specs
        .iter()
        .enumerate()
        .map(|(i, s)| unit(s, vb.pp(i)))
        .collect::<Result<_>>()?;
    Ok(Stage { units })
}

impl Stage {
    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

impl ModuleT for Stage {
    /// (N, c_in, H, W) → (N, c_out, H / stride, W / stride)
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let mut units = &self.units[..];
        while let Some(unit) = units.first() {
            // basic identity units that follow one another run as one op
            let run: Vec<_> = units.iter().map_while(Unit::basic_identity).collect();
            h = match run.is_empty() {
                true => unit.forward_t(&h, train)?,
                false => layers::basic_units(&run, &h, train)?,
            };
            units = &units[run.len().max(1)..];
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    //! Each kind of unit against the same unit written out in plain Candle ops, with batch norm
    //! and option A spelled out by hand: the oracle shares no code with the fused paths.

    use std::collections::BTreeMap;

    use candle_core::{DType, Device, Tensor, Var, D};

    use super::*;
    use crate::nn::ParamStore;
    use crate::rng::Rng;

    fn normal(dims: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        Tensor::from_vec(
            (0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(),
            dims,
            &Device::Cpu,
        )
        .unwrap()
    }

    /// Batch norm by its definition: batch statistics (biased variance) in training, the
    /// running ones otherwise.
    fn bn(t: &BTreeMap<String, Tensor>, name: &str, x: &Tensor, train: bool) -> Tensor {
        let c = x.dim(1).unwrap();
        let per_channel = |k: &str| t[&format!("{name}.{k}")].reshape((1, c, 1, 1)).unwrap();
        let (mean, var) = match train {
            true => {
                let m = x
                    .mean_keepdim(0)
                    .unwrap()
                    .mean_keepdim(2)
                    .unwrap()
                    .mean_keepdim(3)
                    .unwrap();
                let d = x.broadcast_sub(&m).unwrap();
                let v = d.sqr().unwrap().mean_keepdim(0).unwrap().mean_keepdim(2).unwrap();
                (m, v.mean_keepdim(3).unwrap())
            }
            false => (per_channel("running_mean"), per_channel("running_var")),
        };
        let norm = x
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap();
        norm.broadcast_mul(&per_channel("weight"))
            .unwrap()
            .broadcast_add(&per_channel("bias"))
            .unwrap()
    }

    fn conv(t: &BTreeMap<String, Tensor>, name: &str, c: &ConvSpec, x: &Tensor) -> Tensor {
        let y = x
            .conv2d(&t[&format!("{name}.weight")], c.kernel / 2, c.stride, 1, 1)
            .unwrap();
        match t.get(&format!("{name}.bias")) {
            Some(b) => y.broadcast_add(&b.reshape((1, c.c_out, 1, 1)).unwrap()).unwrap(),
            None => y,
        }
    }

    /// Option A: x[:, :, ::2, ::2], channels zero-padded half before, half after.
    fn subsample_pad(x: &Tensor, c_out: usize) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let s = x.reshape((n, c, h / 2, 2, w / 2, 2)).unwrap();
        let s = s
            .narrow(3, 0, 1)
            .unwrap()
            .narrow(5, 0, 1)
            .unwrap()
            .reshape((n, c, h / 2, w / 2))
            .unwrap();
        let before = (c_out - c) / 2;
        s.pad_with_zeros(1, before, c_out - c - before).unwrap()
    }

    /// The unit `spec` describes, written out.
    fn oracle(spec: &UnitSpec, t: &BTreeMap<String, Tensor>, x: &Tensor, train: bool) -> Tensor {
        let pre = spec.order == Order::PreActivation;
        let mut h = x.clone();
        let mut first_pre = None;
        let last = spec.convs.len() - 1;
        for (i, c) in spec.convs.iter().enumerate() {
            let (cn, bnn) = (format!("conv{}", i + 1), format!("bn{}", i + 1));
            if pre {
                h = if spec.batch_norm { bn(t, &bnn, &h, train) } else { h }.relu().unwrap();
                first_pre.get_or_insert(h.clone());
                h = conv(t, &cn, c, &h);
            } else {
                h = conv(t, &cn, c, &h);
                if spec.batch_norm {
                    h = bn(t, &bnn, &h, train);
                }
                if i < last {
                    h = h.relu().unwrap();
                }
            }
        }
        let proj = |input: &Tensor| {
            let c = conv1x1(spec.c_in(), spec.c_out(), spec.stride());
            let y = conv(t, "shortcut.0", &c, input);
            match t.contains_key("shortcut.1.weight") {
                true => bn(t, "shortcut.1", &y, train),
                false => y,
            }
        };
        let s = match spec.shortcut {
            Shortcut::None => None,
            Shortcut::Identity => Some(x.clone()),
            Shortcut::SubsamplePad => Some(subsample_pad(x, spec.c_out())),
            Shortcut::Projection => Some(proj(if pre { first_pre.as_ref().unwrap() } else { x })),
        };
        let out = match s {
            Some(s) => (h + s).unwrap(),
            None => h,
        };
        if pre {
            out
        } else {
            out.relu().unwrap()
        }
    }

    /// Every tensor of `store`, BN weights, biases and running statistics moved off 1 and 0.
    fn tensors(store: &ParamStore) -> BTreeMap<String, Tensor> {
        let mut rng = Rng::new(3);
        for (name, var) in store.all() {
            let n = var.elem_count();
            let v: Vec<f32> = match name.rsplit('.').next() {
                Some("weight") if var.rank() == 1 => (0..n).map(|_| 0.5 + rng.uniform() as f32).collect(),
                Some("running_var") => (0..n).map(|_| 0.5 + rng.uniform() as f32).collect(),
                Some("bias" | "running_mean") => (0..n).map(|_| 0.3 * rng.normal() as f32).collect(),
                _ => continue,
            };
            var.set(&Tensor::from_vec(v, n, &Device::Cpu).unwrap()).unwrap();
        }
        store
            .all()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }

    fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let s = b.sqr().unwrap().sum_all().unwrap().to_dtype(DType::F64).unwrap();
        (d.to_scalar::<f64>().unwrap() / s.to_scalar::<f64>().unwrap().max(1e-30)).sqrt()
    }

    fn cases() -> Vec<(&'static str, UnitSpec, usize)> {
        let basic = |c_in, c, stride| vec![conv3x3(c_in, c, stride), conv3x3(c, c, 1)];
        let bottleneck = vec![conv1x1(16, 8, 1), conv3x3(8, 8, 2), conv1x1(8, 32, 1)];
        vec![
            (
                "post identity",
                UnitSpec::new(basic(16, 16, 1)).shortcut(Shortcut::Identity),
                16,
            ),
            (
                "post option A",
                UnitSpec::new(basic(16, 32, 2)).shortcut(Shortcut::SubsamplePad),
                16,
            ),
            (
                "post projection",
                UnitSpec::new(basic(16, 32, 2)).shortcut(Shortcut::Projection),
                16,
            ),
            (
                "post bottleneck projection",
                UnitSpec::new(bottleneck).shortcut(Shortcut::Projection),
                16,
            ),
            ("post plain", UnitSpec::new(basic(16, 16, 1)), 16),
            ("post one conv", UnitSpec::new([conv3x3(3, 16, 1)]), 3),
            ("post no BN", UnitSpec::new([conv3x3(3, 16, 1)]).batch_norm(false), 3),
            (
                "post no BN identity",
                UnitSpec::new(basic(16, 16, 1))
                    .batch_norm(false)
                    .shortcut(Shortcut::Identity),
                16,
            ),
            (
                "pre identity",
                UnitSpec::new(basic(16, 16, 1))
                    .preact(true)
                    .shortcut(Shortcut::Identity),
                16,
            ),
            (
                "pre option A",
                UnitSpec::new(basic(16, 32, 2))
                    .preact(true)
                    .shortcut(Shortcut::SubsamplePad),
                16,
            ),
            (
                "pre projection",
                UnitSpec::new(basic(16, 32, 2))
                    .preact(true)
                    .shortcut(Shortcut::Projection),
                16,
            ),
            ("pre plain", UnitSpec::new(basic(16, 16, 1)).preact(true), 16),
        ]
    }

    #[test]
    fn every_kind_of_unit_computes_its_definition_with_its_gradients() {
        for reference in [false, true] {
            for (what, spec, c_in) in cases() {
                let store = ParamStore::new(1);
                let u = unit(&spec, store.var_builder(&Device::Cpu)).unwrap();
                let t = tensors(&store);
                let x = Var::from_tensor(&normal((4, c_in, 8, 8), 9)).unwrap();
                // evaluation first: training moves the running statistics
                for train in [false, true] {
                    let want = oracle(&spec, &t, &x, train);
                    crate::nn::use_reference_ops(reference);
                    let got = u.forward_t(&x, train);
                    crate::nn::use_reference_ops(false);
                    let got = got.unwrap();
                    let e = relative_error(&got, &want);
                    assert!(
                        e < 1e-5,
                        "{what}, train {train}, reference ops {reference}: values off by {e}"
                    );
                    if !train {
                        continue;
                    }
                    let (gg, gw) = (got.sqr().unwrap().sum_all().unwrap().backward().unwrap(), {
                        want.sqr().unwrap().sum_all().unwrap().backward().unwrap()
                    });
                    let mut checked = 0;
                    for (name, v) in store
                        .trainable()
                        .iter()
                        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                        .chain([("x".into(), x.as_tensor().clone())])
                    {
                        let (a, b) = (gg.get(&v), gw.get(&v));
                        let (Some(a), Some(b)) = (a, b) else {
                            panic!("{what}: {name} has a gradient on one side only");
                        };
                        let e = relative_error(a, b);
                        assert!(
                            e < 1e-4,
                            "{what}, reference ops {reference}: gradient of {name} off by {e}"
                        );
                        checked += 1;
                    }
                    assert_eq!(checked, store.trainable().len() + 1);
                }
            }
        }
    }

    #[test]
    fn a_stage_of_basic_identity_units_runs_as_its_units_one_by_one() {
        let spec = UnitSpec::new([conv3x3(16, 16, 1), conv3x3(16, 16, 1)]).shortcut(Shortcut::Identity);
        let store = ParamStore::new(1);
        let vb = store.var_builder(&Device::Cpu);
        let s = stage(&[spec.clone(), spec.clone(), spec.clone()], vb.pp("layer1")).unwrap();
        assert_eq!(s.len(), 3);
        let t = tensors(&store);
        let x = normal((4, 16, 8, 8), 2);
        for train in [false, true] {
            let mut want = x.clone();
            for i in 0..3 {
                let prefix = format!("layer1.{i}.");
                let unit_t: BTreeMap<String, Tensor> = t
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
                    .collect();
                want = oracle(&spec, &unit_t, &want, train);
            }
            let e = relative_error(&s.forward_t(&x, train).unwrap(), &want);
            assert!(e < 1e-5, "train {train}: off by {e}");
        }
    }

    #[test]
    fn descriptions_that_are_no_unit_are_refused_with_what_to_use() {
        let vb = || ParamStore::new(1).var_builder(&Device::Cpu).pp("layer2").pp(0);
        let err = |spec: UnitSpec| unit(&spec, vb()).err().expect("refused").to_string();
        let e = err(UnitSpec::new([conv3x3(16, 32, 2), conv3x3(32, 32, 1)]).shortcut(Shortcut::Identity));
        assert!(
            e.contains("layer2.0") && e.contains("SubsamplePad or Shortcut::Projection"),
            "{e}"
        );
        let e = err(UnitSpec::new([conv3x3(16, 32, 1), conv3x3(16, 32, 1)]));
        assert!(e.contains("gives 32 channels but the next one takes 16"), "{e}");
        let e = err(UnitSpec::new([conv3x3(32, 16, 2)]).shortcut(Shortcut::SubsamplePad));
        assert!(e.contains("no fewer output than input channels"), "{e}");
        assert!(err(UnitSpec::new(Vec::new())).contains("at least one convolution"));
        assert!(err(UnitSpec::new([conv3x3(3, 3, 1)]).dropout(1.0)).contains("[0, 1)"));
        let stage_err = stage(
            &[UnitSpec::new([conv3x3(3, 8, 1)]), UnitSpec::new([conv3x3(16, 8, 1)])],
            vb(),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            stage_err.contains("unit 0 gives 8 channels but unit 1 takes 16"),
            "{stage_err}"
        );
    }

    #[test]
    fn dropout_zeroes_its_share_and_keeps_the_mean() {
        let d = crate::nn::dropout(0.25, ParamStore::new(1).var_builder(&Device::Cpu).pp("d")).unwrap();
        let x = Tensor::ones((64, 64, 8, 8), DType::F32, &Device::Cpu).unwrap();
        crate::nn::set_step(4, 2);
        let y: Vec<f32> = d.forward_t(&x, true).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let zeros = y.iter().filter(|v| **v == 0.0).count() as f64 / y.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "{zeros} of the values zeroed");
        assert!(y.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
        let mean = y.iter().map(|v| *v as f64).sum::<f64>() / y.len() as f64;
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        let eval = d.forward_t(&x, false).unwrap();
        assert_eq!(
            eval.max(D::Minus1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0],
            1.0
        );
        assert!(crate::nn::dropout(1.0, ParamStore::new(1).var_builder(&Device::Cpu)).is_err());
    }
}
