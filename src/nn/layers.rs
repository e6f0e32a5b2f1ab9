//! The layers networks are made of, initialised as He et al. do: He (Kaiming) normal for
//! convolutions (fan-in, ReLU gain), BatchNorm weight 1 and bias 0.
//!
//! A plugin may use these directly for the parts of a net that are no unit (a stem, a head);
//! units built from [`super::UnitSpec`]s get the fused ops. The `conv_bn*` and `basic_units`
//! functions here are those fused paths, for [`super::units`] alone.

use candle_core::{ModuleT, Result, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};

use super::flops;
use super::ops::batchnorm;
use super::trace;

const HE_NORMAL: Init = candle_nn::init::DEFAULT_KAIMING_NORMAL;

/// A 2-D convolution, without bias where BatchNorm follows it (its shift would cancel one).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,       // (out, in, k, k)
    bias: Option<Tensor>, // (out)
    stride: usize,
    padding: usize,
}

/// A `k`×`k` convolution from `c_in` to `c_out` channels without bias; tensor `{vb}.weight`.
pub fn conv2d(c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, vb: VarBuilder) -> Result<Conv2d> {
    let weight = vb.get_with_hints((c_out, c_in, k, k), "weight", HE_NORMAL)?;
    Ok(Conv2d {
        weight,
        bias: None,
        stride,
        padding,
    })
}

/// [`conv2d`] with a bias, `{vb}.bias`, initialised to 0 (for a net without BatchNorm).
pub fn conv2d_biased(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let bias = vb.get_with_hints(c_out, "bias", Init::Const(0.))?;
    Ok(Conv2d {
        bias: Some(bias),
        ..conv2d(c_in, c_out, k, stride, padding, vb)?
    })
}

impl Conv2d {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// (N, in, H, W) → (N, out, H', W')
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if trace::active() {
            return self.traced(x, 1);
        }
        let y = super::ops::conv::conv2d(x, &self.weight, self.stride, self.padding)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((b.dim(0)?, 1, 1))?)?,
            None => y,
        };
        self.count(&y)
    }

    /// In a shape trace: its output for input `x`, kept `copies` times for the backward pass.
    fn traced(&self, x: &Tensor, copies: u64) -> Result<Tensor> {
        let (c_out, _, k, _) = self.weight.dims4()?;
        let y = trace::output(trace::conv_dims(x, c_out, k, self.stride, self.padding)?, copies)?;
        self.count(&y)
    }

    /// Counts the multiply-adds that produced `y`: c_in × k × k per output element.
    fn count(&self, y: &Tensor) -> Result<Tensor> {
        let (_, c_in, k, _) = self.weight.dims4()?;
        flops::add_macs((y.elem_count() / y.dim(0)?) as u64 * (c_in * k * k) as u64);
        Ok(y.clone())
    }
}

/// `relu?(bn(conv(x)))`, the unit most of these nets are made of. In training mode it is one
/// op (see [`super::ops::conv_bn`]). In eval mode the BatchNorm
/// is folded into the convolution, weights w·γ/σ and bias β − μ·γ/σ from the running
/// statistics, and the kernel adds the bias and applies the ReLU as it stores each value:
/// one pass over the activations instead of three. The values match the unfolded layers to
/// rounding.
pub(super) fn conv_bn(conv: &Conv2d, bn: &BatchNorm2d, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
    if trace::active() {
        // the fused op keeps the convolution's output and its own
        return conv.traced(x, 2);
    }
    if super::ops::reference_ops() {
        return bn.apply(&conv.forward(x)?, train, relu);
    }
    if train {
        // one op, so that the convolution's output is no node of Candle's graph
        return match conv_bn_train(conv, bn, x, relu, None)? {
            Some(y) => Ok(y),
            None => bn.apply(&conv.forward(x)?, train, relu),
        };
    }
    conv_bn_eval(conv, bn, x, None, relu)
}

/// Inference: relu?(bn(conv(x)) (+ s)) with the BatchNorm folded into the convolution's
/// weights and bias, and the shortcut `s` added by the kernels as they store.
fn conv_bn_eval(conv: &Conv2d, bn: &BatchNorm2d, x: &Tensor, s: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let (scale, shift) = bn.eval_scale_shift()?;
    let c = scale.dim(0)?;
    let w = conv.weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
    let y = super::ops::conv::conv2d_bias(x, &w, &shift, s, conv.stride, conv.padding, relu)?;
    conv.count(&y)
}

/// `relu(bn(conv(x)) + s)`: the last layer of a residual unit and its identity shortcut `s`
/// (a tensor of the output's shape). In training mode it is one op, so that neither the
/// convolution's nor the batch norm's output is a node of Candle's graph; in eval mode the
/// folded convolution adds `s` and applies the ReLU as it stores (see [`conv_bn`]); with the
/// reference ops, [`conv_bn`] then [`super::residual`].
pub(super) fn conv_bn_add_relu(conv: &Conv2d, bn: &BatchNorm2d, x: &Tensor, s: &Tensor, train: bool) -> Result<Tensor> {
    if trace::active() {
        return conv.traced(x, 2);
    }
    if !super::ops::reference_ops() {
        if !train {
            return conv_bn_eval(conv, bn, x, Some(s), true);
        }
        if let Some(y) = conv_bn_train(conv, bn, x, true, Some(s))? {
            return Ok(y);
        }
    }
    let h = conv_bn(conv, bn, x, train, false)?;
    super::residual(&h, s, super::ops::residual::Addend::Identity, true)
}

/// A basic residual unit's two conv → BN layers.
pub(super) type BasicUnit<'a> = ((&'a Conv2d, &'a BatchNorm2d), (&'a Conv2d, &'a BatchNorm2d));

/// Basic residual units with identity shortcuts one after the other, each
/// `x ← relu(bn2(conv2(relu(bn1(conv1(x))))) + x)` (two 3×3 conv → BN layers that keep the
/// shape). In training mode the whole run is one op (see [`super::ops::conv_bn::units_train`]);
/// otherwise, or where that op does not take the shapes, [`conv_bn`] then
/// [`conv_bn_add_relu`] for each unit.
pub(super) fn basic_units(units: &[BasicUnit], x: &Tensor, train: bool) -> Result<Tensor> {
    if trace::active() {
        return units.iter().try_fold(x.clone(), |x, (first, second)| {
            second.0.traced(&first.0.traced(&x, 2)?, 2)
        });
    }
    if train && !super::ops::reference_ops() {
        let layers: Vec<_> = units
            .iter()
            .map(|(a, b)| (params(a.0, a.1), params(b.0, b.1)))
            .collect();
        if let Some(y) = super::ops::conv_bn::units_train(x, &layers)? {
            for ((c1, _), (c2, _)) in units {
                c1.count(&y)?;
                c2.count(&y)?;
            }
            return Ok(y);
        }
    }
    units.iter().try_fold(x.clone(), |x, (first, second)| {
        let h = conv_bn(first.0, first.1, &x, train, true)?;
        conv_bn_add_relu(second.0, second.1, &h, &x, train)
    })
}

/// A conv → BN layer's tensors as the fused ops take them.
fn params<'a>(conv: &'a Conv2d, bn: &'a BatchNorm2d) -> super::ops::conv_bn::LayerParams<'a> {
    super::ops::conv_bn::LayerParams {
        w: &conv.weight,
        stride: conv.stride,
        padding: conv.padding,
        gamma: &bn.weight,
        beta: &bn.bias,
        running_mean: &bn.running_mean,
        running_var: &bn.running_var,
    }
}

/// [`super::ops::conv_bn::conv_bn_train`] with the layers' tensors, counted as the convolution.
fn conv_bn_train(
    conv: &Conv2d,
    bn: &BatchNorm2d,
    x: &Tensor,
    relu: bool,
    s: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let fused = super::ops::conv_bn::conv_bn_train(x, &params(conv, bn), relu, s)?;
    fused.map(|y| conv.count(&y)).transpose()
}

/// Spatial batch normalisation (PyTorch's `BatchNorm2d`: eps 1e-5, momentum 0.1); tensors
/// `{vb}.weight`, `{vb}.bias`, `{vb}.running_mean`, `{vb}.running_var`, created as
/// `candle_nn::batch_norm` does. The arithmetic is [`super::ops::batchnorm`]'s fused op.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

pub fn batch_norm(channels: usize, vb: VarBuilder) -> Result<BatchNorm2d> {
    // Same names, order and initial values as `candle_nn::batch_norm`, so checkpoints and
    // seeded initialisation are unchanged.
    let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
    let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
    Ok(BatchNorm2d {
        weight,
        bias,
        // The store's tensors are variables already: these share their storage.
        running_mean: Var::from_tensor(&running_mean)?,
        running_var: Var::from_tensor(&running_var)?,
    })
}

impl BatchNorm2d {
    /// Batch statistics (and a running-statistics update) when `train`, running statistics otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, train, false)
    }

    /// `relu(bn(x))`, the pair that follows most convolutions, in one fused op.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.apply(x, train, true)
    }

    /// Eval mode as an affine map per channel: (γ/σ, β − μ·γ/σ) from the running statistics.
    fn eval_scale_shift(&self) -> Result<(Tensor, Tensor)> {
        batchnorm::eval_scale_shift(&self.weight, &self.bias, &self.running_mean, &self.running_var)
    }

    fn apply(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if trace::active() {
            return trace::output(x.dims(), 1);
        }
        batchnorm::batch_norm(
            x,
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
            train,
            relu,
        )
    }
}

/// A fully connected layer; tensors `{vb}.weight` (out, in) and `{vb}.bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
}

/// Weight: He normal (as the CIFAR ResNet reference code does); bias: PyTorch's default
/// uniform ±1/√in.
pub fn linear(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((c_out, c_in), "weight", HE_NORMAL)?;
    let bound = 1.0 / (c_in as f64).sqrt();
    let bias = vb.get_with_hints(c_out, "bias", Init::Uniform { lo: -bound, up: bound })?;
    Ok(Linear { weight, bias })
}

impl Linear {
    /// (N, in) → (N, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c_out, c_in) = self.weight.dims2()?;
        flops::add_macs((c_in * c_out) as u64);
        if trace::active() {
            return trace::output((x.dim(0)?, c_out), 1);
        }
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        BatchNorm2d::forward_t(self, x, train)
    }
}

/// max(x, 0), element-wise (kept as a node of the graph).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if trace::active() {
        return trace::output(x.dims(), 1);
    }
    x.relu()
}

/// (N, C, H, W) → (N, C)
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if trace::active() {
        let (n, c, _, _) = x.dims4()?;
        return trace::output((n, c), 1);
    }
    x.mean(D::Minus1)?.mean(D::Minus1)
}

/// (N, C, H, W) → (N, C, H/k, W/k): the maximum of each `k`×`k` window, stride `k` (a last
/// row or column that fills no window is dropped, as PyTorch's `MaxPool2d(k)` does).
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h < k || w < k {
        candle_core::bail!("max_pool2d: a {h}×{w} map is smaller than the {k}×{k} window");
    }
    if trace::active() {
        return trace::output((x.dim(0)?, x.dim(1)?, h / k, w / k), 1);
    }
    x.max_pool2d(k)
}

thread_local! {
    static STEP: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Tells the layers that draw random numbers in training ([`Dropout`]) which trial seed and
/// training step the next forward pass on this thread belongs to; the trainer calls it before
/// every step, so the draws depend on (seed, step, layer) alone.
pub fn set_step(seed: u64, step: u64) {
    STEP.with(|s| s.set((seed, step)));
}

/// Dropout (Srivastava et al. 2014): in training, each value is zeroed with probability `p`
/// and the others scaled by 1/(1 − p); in evaluation, the identity.
///
/// The masks are reproducible: each is drawn from a stream derived from the layer's name and
/// the trial's (seed, step) that the trainer sets with [`set_step`], so a trial resumed
/// from a checkpoint draws the same masks as one that ran straight through, and no mask state
/// needs saving.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    name: String,
}

/// Dropout with probability `p` in `[0, 1)`, named after `vb`'s path (it has no tensors).
pub fn dropout(p: f64, vb: VarBuilder) -> Result<Dropout> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability must be in [0, 1), got {p}");
    }
    Ok(Dropout { p, name: vb.prefix() })
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        if trace::active() {
            // the output and the mask
            return trace::output(x.dims(), 2);
        }
        let (seed, step) = STEP.with(|s| s.get());
        let mut rng = crate::rng::Rng::derive(seed, &self.name, step);
        let scale = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| if rng.uniform() < self.p { 0.0 } else { scale })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}
