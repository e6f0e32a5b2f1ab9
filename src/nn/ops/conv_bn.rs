//! `relu?(batch_norm(conv2d(x, w)) (+ s))` in training mode as one Candle op.
//!
//! As two ops, the convolution's output is a node of Candle's graph, and Candle's backward
//! pass gives every node's gradient its own zero-filled buffer and adds the incoming gradient
//! into it: a fill and an add over a whole activation per node, about a tenth of a ResNet-20
//! step. As one op, the convolution's output is kept by the op itself for its backward pass
//! and never has a gradient of its own; the batch-norm backward's input gradient goes straight
//! into the convolution's gradient kernels. With a shortcut `s` (a residual unit's identity),
//! the addition and the ReLU after it are part of the same op: the batch norm's output is no
//! node either, and the shortcut's gradient (the incoming one where the output is positive) is
//! written by the batch norm's backward pass as it reads the same planes.
//!
//! A run of basic residual units with identity shortcuts (two such layers each, the second with
//! the unit's input as its shortcut; a stage of a CIFAR ResNet but its first unit) is one op
//! too ([`units_train`]): then no layer's output but the last is a node, and each unit's input
//! gradients (through the first convolution and through the shortcut) are added by the
//! convolution's kernel as it stores rather than each into a zero-filled buffer by Candle.
//!
//! The arithmetic is the separate ops' own: [`cpu::conv`]'s kernels and [`cpu::batchnorm`]'s
//! statistics, normalisation and backward pass, so the values are the same bit for bit.
//!
//! [`cpu::conv`]: crate::nn::cpu::conv
//! [`cpu::batchnorm`]: crate::nn::cpu::batchnorm

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor, Var};

use super::batchnorm::{self, BatchNormBackward};
use super::common::f32_data;
use super::conv::{ConvOp, InputGradOp, WeightGradOp};
use crate::nn::cpu::batchnorm::{batch_stats, normalize, Normalized, Planes};
use crate::nn::cpu::conv::Isa;

/// A conv → BN layer's tensors: the weight, γ, β and the running statistics.
pub struct LayerParams<'a> {
    pub w: &'a Tensor,
    pub stride: usize,
    pub padding: usize,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub running_mean: &'a Var,
    pub running_var: &'a Var,
}

/// The fused op for `relu?(bn(conv(x, w)) + shortcut?)` in training mode, with the running
/// statistics updated as [`batchnorm::batch_norm`] does; None where the convolution or the
/// batch norm would not take their fast paths, or the shortcut is not an f32 CPU tensor of the
/// output's shape (the caller then runs the separate ops).
pub fn conv_bn_train(x: &Tensor, p: &LayerParams, relu: bool, shortcut: Option<&Tensor>) -> Result<Option<Tensor>> {
    let Some(layer) = Layer::plan(x, p, relu)? else {
        return Ok(None);
    };
    if shortcut.is_some_and(|s| !(f32_cpu(s) && s.dims() == layer.shape().dims())) {
        return Ok(None);
    }
    let op = ConvBn {
        layer,
        shortcut: shortcut.is_some(),
        saved: Arc::new(Mutex::new(None)),
    };
    let saved = op.saved.clone();
    let x = x.contiguous()?;
    let y = match shortcut {
        // (x, [w | γ | β], s): a custom op takes at most three tensors
        Some(s) => x.apply_op3(&layer_params(p)?, &s.contiguous()?, op)?,
        None => x.apply_op3(&p.w.contiguous()?, &Tensor::cat(&[p.gamma, p.beta], 0)?, op)?,
    };
    match saved.lock().expect("conv-bn state").as_ref() {
        Some(s) => s.update_running(p)?,
        None => candle_core::bail!("conv-bn: the forward pass left no statistics"),
    }
    Ok(Some(y))
}

/// A run of basic residual units with identity shortcuts, each `relu(bn2(conv2(h)) + x)` with
/// `h = relu(bn1(conv1(x)))` and x the previous unit's output, in training mode as one op:
/// neither `h`, nor any other inner value, nor any unit's output but the last is a node of
/// Candle's graph, so Candle neither zero-fills nor adds a gradient buffer for them (a fill
/// and an add over a whole activation each, on one thread), and each unit's two input
/// gradients (through its first convolution and through the shortcut) are added by that
/// convolution's input-gradient kernel as it stores. `units` holds each unit's two layers.
/// None where a layer would not take the fused path or a unit changes the shape (the caller
/// then runs the layers one by one).
pub fn units_train(x: &Tensor, units: &[(LayerParams, LayerParams)]) -> Result<Option<Tensor>> {
    if !f32_cpu(x) || units.is_empty() {
        return Ok(None);
    }
    let dims = x.dims4()?;
    let mut layers = Vec::with_capacity(units.len());
    for (p1, p2) in units {
        let Some(l1) = Layer::plan_dims(dims, p1, true)? else {
            return Ok(None);
        };
        // h, the first layer's output, is an f32 CPU tensor like x
        let Some(l2) = Layer::plan_dims(l1.out_dims(), p2, true)? else {
            return Ok(None);
        };
        if l2.out_dims() != dims {
            return Ok(None);
        }
        layers.push((l1, l2));
    }
    let op = Units {
        layers,
        saved: Arc::new(Mutex::new(None)),
    };
    let saved = op.saved.clone();
    // every layer's [w | γ | β], unit by unit: a custom op takes at most three tensors
    let mut pieces = Vec::with_capacity(6 * units.len());
    for p in units.iter().flat_map(|(p1, p2)| [p1, p2]) {
        pieces.extend([p.w.flatten_all()?, p.gamma.clone(), p.beta.clone()]);
    }
    let y = x.contiguous()?.apply_op2(&Tensor::cat(&pieces, 0)?, op)?;
    match saved.lock().expect("units state").as_ref() {
        Some(s) => {
            for ((p1, p2), u) in units.iter().zip(&s.units) {
                u.first.update_running(p1)?;
                u.second.update_running(p2)?;
            }
        }
        None => candle_core::bail!("residual units: the forward pass left no statistics"),
    }
    Ok(Some(y))
}

fn f32_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// `[w | γ | β]` as one tensor.
fn layer_params(p: &LayerParams) -> Result<Tensor> {
    Tensor::cat(&[&p.w.flatten_all()?, p.gamma, p.beta], 0)
}

/// One conv → BN (→ + shortcut) (→ ReLU) layer of the fused ops: [`cpu::conv`]'s kernels
/// and [`cpu::batchnorm`]'s statistics, normalisation and backward pass.
///
/// [`cpu::conv`]: crate::nn::cpu::conv
/// [`cpu::batchnorm`]: crate::nn::cpu::batchnorm
#[derive(Clone, Copy)]
struct Layer {
    conv: ConvOp,
    geom: Planes,
    relu: bool,
}

/// What a layer's forward pass leaves for its backward pass.
struct Saved {
    /// The convolution's output: the batch norm's input.
    conv_out: Tensor,
    /// The batch norm as it ran (batch mean and inverse standard deviation).
    bn: Normalized,
    /// Per channel (mean, biased variance), f64, for the running statistics.
    stats: Vec<(f64, f64)>,
}

impl Saved {
    fn update_running(&self, p: &LayerParams) -> Result<()> {
        let (mean, var): (Vec<f64>, Vec<f64>) = self.stats.iter().copied().unzip();
        batchnorm::update_running(p.running_mean, p.running_var, &mean, &var, self.bn.planes.count())
    }
}

/// A layer's gradients.
struct Grads {
    /// Of the layer's input, when asked for.
    dx: Option<Tensor>,
    /// Of the weight, in its shape.
    dw: Tensor,
    /// `[dγ | dβ]`
    dgb: Tensor,
    /// Of the shortcut, for a layer that has one.
    ds: Option<Tensor>,
}

impl Layer {
    /// The layer for input `x`, or None where the convolution or the batch norm would not
    /// take their fast paths.
    fn plan(x: &Tensor, p: &LayerParams, relu: bool) -> Result<Option<Layer>> {
        match f32_cpu(x) {
            true => Self::plan_dims(x.dims4()?, p, relu),
            false => Ok(None),
        }
    }

    /// [`Layer::plan`] for an f32 CPU input of dimensions `x`.
    fn plan_dims(x: (usize, usize, usize, usize), p: &LayerParams, relu: bool) -> Result<Option<Layer>> {
        let Some(conv) = ConvOp::for_dims(x, p.w, p.stride, p.padding, Isa::detect())? else {
            return Ok(None);
        };
        let (n, c, ho, wo) = conv.out_dims();
        let geom = Planes { n, c, plane: ho * wo };
        let fusable = [p.gamma, p.beta, p.running_mean.as_tensor(), p.running_var.as_tensor()]
            .iter()
            .all(|t| f32_cpu(t) && t.dims() == [c])
            && geom.count() >= 2;
        Ok(fusable.then_some(Layer { conv, geom, relu }))
    }

    fn out_dims(&self) -> (usize, usize, usize, usize) {
        self.conv.out_dims()
    }

    fn shape(&self) -> Shape {
        Shape::from(self.out_dims())
    }

    /// The length of its `[w | γ | β]`.
    fn params_len(&self) -> usize {
        let (a, b, c, d) = self.conv.w_dims();
        a * b * c * d + 2 * self.geom.c
    }

    /// `[w | γ | β]` split into the weight and `[γ | β]`.
    fn split_params<'a>(&self, p: &'a [f32]) -> Result<(&'a [f32], &'a [f32])> {
        let c2 = 2 * self.geom.c;
        let (wd0, wd1, wd2, wd3) = self.conv.w_dims();
        if p.len() != wd0 * wd1 * wd2 * wd3 + c2 {
            candle_core::bail!("conv-bn: {} parameters for {:?}", p.len(), self.conv.w_dims());
        }
        Ok(p.split_at(p.len() - c2))
    }

    /// relu?(bn(conv(x, w)) + s?), and what the backward pass needs.
    fn forward(&self, x: &[f32], w: &[f32], gb: &[f32], s: Option<&[f32]>) -> Result<(Vec<f32>, Saved)> {
        let g = self.geom;
        if gb.len() != 2 * g.c || s.is_some_and(|s| s.len() != g.len()) {
            candle_core::bail!("conv-bn: inputs do not match {g:?}");
        }
        let (gamma, beta) = gb.split_at(g.c);
        let yc = self.conv.forward(x, w)?;
        let stats = batch_stats(&yc, g);
        let mean: Vec<f32> = stats.iter().map(|s| s.0 as f32).collect();
        let invstd: Vec<f32> = stats
            .iter()
            .map(|s| (1.0 / (s.1 + batchnorm::EPS).sqrt()) as f32)
            .collect();
        let y = normalize(&yc, gamma, beta, &mean, &invstd, self.relu, s, g);
        let saved = Saved {
            conv_out: Tensor::from_vec(yc, self.shape(), &Device::Cpu)?,
            bn: Normalized {
                planes: g,
                mean: Arc::new(mean),
                invstd: Arc::new(invstd),
                relu: self.relu,
                batch_stats: true,
            },
            stats,
        };
        Ok((y, saved))
    }

    /// The gradients for the incoming gradient `grad` of the layer's output `y`, given its
    /// input `x`, weight `w` and γ; dx only when `dx` says so (`Some(add)`: dx + add, added
    /// by the kernel as it stores), the shortcut's when `shortcut`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        saved: &Saved,
        x: &Tensor,
        w: &Tensor,
        gamma: &Tensor,
        y: &Tensor,
        grad: &Tensor,
        dx: Option<Option<&Tensor>>,
        shortcut: bool,
    ) -> Result<Grads> {
        let (c, len) = (self.geom.c, self.geom.len());
        // With a shortcut, y = relu?(bn + s): its ReLU mask (y > 0) is the batch norm's too.
        let back = BatchNormBackward {
            fwd: saved.bn.clone(),
            gamma: Arc::new(gamma.to_vec1::<f32>()?),
            keep_masked: shortcut,
        };
        // [d conv_out | dγ | dβ (| d s under a ReLU)]
        let grad = grad.contiguous()?;
        let d = grad.apply_op3_no_bwd(&saved.conv_out, &y.contiguous()?, &back)?;
        let dyc = d.narrow(0, 0, len)?.reshape(saved.conv_out.shape())?;
        let w = w.reshape(self.conv.w_dims())?;
        let dx = match dx {
            Some(None) => Some(dyc.apply_op2_no_bwd(&w, &InputGradOp(self.conv))?),
            Some(Some(add)) => Some(dyc.apply_op3_no_bwd(&w, &add.contiguous()?, &InputGradOp(self.conv))?),
            None => None,
        };
        let dw = x.apply_op2_no_bwd(&dyc, &WeightGradOp(self.conv))?;
        let dgb = d.narrow(0, len, 2 * c)?;
        let ds = match (shortcut, self.relu) {
            (false, _) => None,
            (true, true) => Some(d.narrow(0, len + 2 * c, len)?.reshape(y.shape())?),
            (true, false) => Some(grad),
        };
        Ok(Grads { dx, dw, dgb, ds })
    }
}

impl Grads {
    /// `[dw | dγ | dβ]`, the gradient of a [`layer_params`] tensor.
    fn params(&self) -> Result<Tensor> {
        Tensor::cat(&[&self.dw.flatten_all()?, &self.dgb], 0)
    }
}

/// Weight and γ out of a layer's `[w | γ | β]` tensor.
fn weight_gamma(params: &Tensor, c: usize) -> Result<(Tensor, Tensor)> {
    let wl = params.dim(0)? - 2 * c;
    Ok((params.narrow(0, 0, wl)?, params.narrow(0, wl, c)?))
}

/// (x, w, [γ | β]) → relu?(bn(conv(x, w))), or with a shortcut
/// (x, [w | γ | β], s) → relu?(bn(conv(x, w)) + s).
struct ConvBn {
    layer: Layer,
    shortcut: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

impl CustomOp3 for ConvBn {
    fn name(&self) -> &'static str {
        "conv2d-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "conv-bn input")?;
        let second = f32_data(s2, l2, "conv-bn parameters")?;
        let third = f32_data(s3, l3, "conv-bn parameters or shortcut")?;
        let (y, saved) = match self.shortcut {
            true => {
                let (w, gb) = self.layer.split_params(second)?;
                self.layer.forward(x, w, gb, Some(third))?
            }
            false => self.layer.forward(x, second, third, None)?,
        };
        *self.saved.lock().expect("conv-bn state") = Some(saved);
        Ok((CpuStorage::F32(y), self.layer.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        second: &Tensor,
        third: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("conv-bn state");
        let Some(saved) = guard.as_ref() else {
            candle_core::bail!("conv-bn: backward before forward");
        };
        let c = self.layer.geom.c;
        let (w, gamma) = match self.shortcut {
            true => weight_gamma(second, c)?,
            false => (second.clone(), third.narrow(0, 0, c)?),
        };
        // the network's first convolution reads the data batch, which needs no gradient
        let g = self.layer.backward(
            saved,
            x,
            &w,
            &gamma,
            y,
            grad,
            x.track_op().then_some(None),
            self.shortcut,
        )?;
        match self.shortcut {
            true => Ok((g.dx.clone(), Some(g.params()?), g.ds)),
            false => Ok((g.dx, Some(g.dw), Some(g.dgb))),
        }
    }
}

/// What one unit's forward pass leaves for its backward pass.
struct UnitSaved {
    first: Saved,
    second: Saved,
    /// The first layer's output, the second's input.
    h: Tensor,
}

/// What a [`Units`] forward pass leaves for its backward pass.
struct UnitsSaved {
    units: Vec<UnitSaved>,
    /// The inputs of the second unit on (the outputs of all but the last).
    inputs: Vec<Tensor>,
}

/// (x, [w | γ | β] of every layer, unit by unit) → the last unit's output (see
/// [`units_train`]).
struct Units {
    /// Each unit's two layers.
    layers: Vec<(Layer, Layer)>,
    saved: Arc<Mutex<Option<UnitsSaved>>>,
}

impl Units {
    /// Where each unit's parameters start in the parameter tensor, and their total length.
    fn offsets(&self) -> (Vec<usize>, usize) {
        let mut at = 0;
        let offs = self
            .layers
            .iter()
            .map(|(l1, l2)| {
                let o = at;
                at += l1.params_len() + l2.params_len();
                o
            })
            .collect();
        (offs, at)
    }
}

impl CustomOp2 for Units {
    fn name(&self) -> &'static str {
        "residual-units"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "residual units input")?;
        let params = f32_data(s2, l2, "residual units parameters")?;
        let (offs, total) = self.offsets();
        if params.len() != total {
            candle_core::bail!("residual units: {} parameters, expected {total}", params.len());
        }
        let mut units = Vec::with_capacity(self.layers.len());
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut out: Option<Vec<f32>> = None;
        for ((first, second), &o) in self.layers.iter().zip(&offs) {
            let (p1, p2) = params[o..].split_at(first.params_len());
            let (w1, gb1) = first.split_params(p1)?;
            let (w2, gb2) = second.split_params(&p2[..second.params_len()])?;
            let x = out.as_deref().unwrap_or(x);
            let (h, s1) = first.forward(x, w1, gb1, None)?;
            let (y, s2) = second.forward(&h, w2, gb2, Some(x))?;
            let h = Tensor::from_vec(h, first.shape(), &Device::Cpu)?;
            units.push(UnitSaved {
                first: s1,
                second: s2,
                h,
            });
            if let Some(x) = out.replace(y) {
                inputs.push(Tensor::from_vec(x, second.shape(), &Device::Cpu)?);
            }
        }
        let Some(y) = out else {
            candle_core::bail!("residual units: no unit");
        };
        *self.saved.lock().expect("units state") = Some(UnitsSaved { units, inputs });
        Ok((CpuStorage::F32(y), self.layers[0].1.shape()))
    }

    fn bwd(&self, x: &Tensor, params: &Tensor, y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("units state");
        let Some(s) = guard.as_ref() else {
            candle_core::bail!("residual units: backward before forward");
        };
        let (offs, _) = self.offsets();
        let n = self.layers.len();
        let mut grad = grad.clone();
        let mut dx = None;
        let mut dparams = vec![Vec::new(); n];
        for k in (0..n).rev() {
            let (first, second) = &self.layers[k];
            let input = if k == 0 { x } else { &s.inputs[k - 1] };
            let output = if k == n - 1 { y } else { &s.inputs[k] };
            let p1 = params.narrow(0, offs[k], first.params_len())?;
            let p2 = params.narrow(0, offs[k] + first.params_len(), second.params_len())?;
            let (w1, gamma1) = weight_gamma(&p1, first.geom.c)?;
            let (w2, gamma2) = weight_gamma(&p2, second.geom.c)?;
            let g2 = second.backward(
                &s.units[k].second,
                &s.units[k].h,
                &w2,
                &gamma2,
                output,
                &grad,
                Some(None),
                true,
            )?;
            let (Some(dh), Some(ds)) = (&g2.dx, &g2.ds) else {
                candle_core::bail!("residual units: the second layer gave no input or shortcut gradient");
            };
            // the input feeds both the first convolution and the shortcut: the kernel adds the
            // two; the network's data batch needs no gradient
            let want_dx = (k > 0 || x.track_op()).then_some(Some(ds));
            let g1 = first.backward(
                &s.units[k].first,
                input,
                &w1,
                &gamma1,
                &s.units[k].h,
                dh,
                want_dx,
                false,
            )?;
            dparams[k] = vec![g1.params()?, g2.params()?];
            match (k, g1.dx) {
                (0, d) => dx = d,
                (_, Some(d)) => grad = d,
                (_, None) => candle_core::bail!("residual units: a unit gave no input gradient"),
            }
        }
        let dparams: Vec<Tensor> = dparams.into_iter().flatten().collect();
        Ok((dx, Some(Tensor::cat(&dparams, 0)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::residual::{residual, Addend};
    use super::super::{batchnorm, conv};
    use super::{conv_bn_train, units_train, LayerParams};

    /// Fixed values: a small LCG, so that every run sees the same parameters.
    fn seeded(i: u64, dims: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let mut s = i.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale + offset
            })
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// A conv → BN layer's variables: weight, γ, β, running mean and variance.
    struct Vars([Var; 5], usize);

    impl Vars {
        fn new(seed: u64, cout: usize, cin: usize, k: usize, stride: usize) -> Vars {
            let var = |i: u64, dims: &[usize], scale: f32, offset: f32| {
                Var::from_tensor(&seeded(seed * 10 + i, dims, scale, offset)).unwrap()
            };
            Vars(
                [
                    var(1, &[cout, cin, k, k], 0.3, 0.0),
                    var(2, &[cout], 0.3, 1.0),
                    var(3, &[cout], 0.3, 0.0),
                    var(4, &[cout], 0.1, 0.0),
                    var(5, &[cout], 0.1, 1.0),
                ],
                stride,
            )
        }

        fn params(&self) -> LayerParams<'_> {
            let [w, gamma, beta, rm, rv] = &self.0;
            LayerParams {
                w: w.as_tensor(),
                stride: self.1,
                padding: w.dim(3).unwrap() / 2,
                gamma: gamma.as_tensor(),
                beta: beta.as_tensor(),
                running_mean: rm,
                running_var: rv,
            }
        }

        /// The separate ops: conv, batch norm (and ReLU), then the residual op with a shortcut.
        fn separate(&self, x: &Tensor, relu: bool, s: Option<&Tensor>) -> Tensor {
            let p = self.params();
            let yc = conv::conv2d(x, p.w, p.stride, p.padding).unwrap();
            let bn_relu = relu && s.is_none();
            let y = batchnorm::batch_norm(&yc, p.gamma, p.beta, p.running_mean, p.running_var, true, bn_relu).unwrap();
            match s {
                Some(s) => residual(&y, s, Addend::Identity, relu).unwrap(),
                None => y,
            }
        }
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// y, the gradients of x (when it is a variable), w, γ and β (and of the shortcut, with
    /// one) for loss = Σ y·r, and the running statistics afterwards, from the fused op or from
    /// the separate ops (conv, batch norm, then the residual op with a shortcut).
    fn run(
        fused: bool,
        x: &Tensor,
        shape: (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        relu: bool,
        shortcut: bool,
    ) -> Vec<Vec<f32>> {
        let (n, cin, h, wd) = shape;
        let cout = 12;
        let vars = Vars::new(0, cout, cin, k, stride);
        let pad = k / 2;
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1);
        let sc = Var::from_tensor(&seeded(7, &[n, cout, ho, wo], 1.0, 0.0)).unwrap();
        let s = shortcut.then(|| sc.as_tensor());
        let y = match fused {
            true => conv_bn_train(x, &vars.params(), relu, s)
                .unwrap()
                .expect("a shape the fused op takes"),
            false => vars.separate(x, relu, s),
        };
        let r = seeded(6, y.dims(), 1.0, 0.0);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![flat(&y)];
        if let Some(dx) = grads.get(x) {
            out.push(flat(dx));
        }
        for v in &vars.0[..3] {
            out.push(flat(grads.get(v.as_tensor()).expect("gradient")));
        }
        if let Some(s) = s {
            out.push(flat(grads.get(s).expect("shortcut gradient")));
        }
        out.push(flat(vars.0[3].as_tensor()));
        out.push(flat(vars.0[4].as_tensor()));
        out
    }

    /// y, the gradients of x and of every layer's w, γ and β, and every layer's running
    /// statistics for loss = Σ y·r after `units` basic units, from the units op or from the
    /// layers' ops.
    fn run_units(fused: bool, x: &Var, units: u64) -> Vec<Vec<f32>> {
        let c = x.dim(1).unwrap();
        let layers: Vec<(Vars, Vars)> = (0..units)
            .map(|u| (Vars::new(2 * u + 1, c, c, 3, 1), Vars::new(2 * u + 2, c, c, 3, 1)))
            .collect();
        let x = x.as_tensor();
        let y = match fused {
            true => {
                let params: Vec<_> = layers.iter().map(|(l1, l2)| (l1.params(), l2.params())).collect();
                units_train(x, &params).unwrap().expect("units the op takes")
            }
            false => layers.iter().fold(x.clone(), |x, (l1, l2)| {
                l2.separate(&l1.separate(&x, true, None), true, Some(&x))
            }),
        };
        let r = seeded(6, y.dims(), 1.0, 0.0);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![flat(&y), flat(grads.get(x).expect("input gradient"))];
        for l in layers.iter().flat_map(|(l1, l2)| [l1, l2]) {
            for v in &l.0[..3] {
                out.push(flat(grads.get(v.as_tensor()).expect("gradient")));
            }
            out.push(flat(l.0[3].as_tensor()));
            out.push(flat(l.0[4].as_tensor()));
        }
        out
    }

    #[test]
    fn one_units_op_gives_the_layers_values_bit_for_bit() {
        let dev = Device::Cpu;
        // stride 1 and the shape kept: 3×3 conv → BN → ReLU, 3×3 conv → BN, + x, ReLU; one unit
        // and runs of three, and of two at 32 channels (convolutions on the Winograd path)
        for (shape, units) in [
            ((2, 8, 8, 8), 1),
            ((3, 5, 7, 9), 1),
            ((1, 16, 4, 4), 1),
            ((2, 8, 8, 8), 3),
            ((2, 32, 8, 8), 2),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0.5f32, 1.0, shape, &dev).unwrap()).unwrap();
            let (a, b) = (run_units(true, &x, units), run_units(false, &x, units));
            assert_eq!(
                a.len(),
                2 + 10 * units as usize,
                "y, dx, and per layer dw, dγ, dβ, running mean and var"
            );
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(u, v, "{shape:?}, {units} units: output {i}");
            }
            assert!(a[0].contains(&0.0), "the ReLU clipped nothing");
            assert!(a[1].iter().any(|&d| d != 0.0), "no input gradient");
        }
    }

    #[test]
    fn a_unit_that_changes_the_shape_is_left_to_the_layers() {
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
        let keeps = (Vars::new(3, 4, 4, 3, 1), Vars::new(4, 4, 4, 3, 1));
        // stride 2, and 4 → 8 channels: no identity shortcut fits, alone or after a unit that fits
        for (l1, l2) in [
            (Vars::new(1, 4, 4, 3, 2), Vars::new(2, 4, 4, 3, 1)),
            (Vars::new(1, 8, 4, 3, 1), Vars::new(2, 8, 8, 3, 1)),
        ] {
            assert!(units_train(&x, &[(l1.params(), l2.params())]).unwrap().is_none());
            let run = [(keeps.0.params(), keeps.1.params()), (l1.params(), l2.params())];
            assert!(units_train(&x, &run).unwrap().is_none());
        }
    }

    #[test]
    fn one_op_gives_the_two_ops_values_bit_for_bit() {
        let dev = Device::Cpu;
        for (shape, k, stride, relu) in [
            ((3, 8, 10, 10), 3, 1, true),
            ((2, 5, 9, 7), 3, 2, false),
            ((2, 16, 8, 8), 1, 2, false),
            ((4, 3, 6, 6), 3, 1, true),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0.5f32, 1.0, shape, &dev).unwrap()).unwrap();
            let (a, b) = (
                run(true, x.as_tensor(), shape, k, stride, relu, false),
                run(false, x.as_tensor(), shape, k, stride, relu, false),
            );
            assert_eq!(a.len(), 7, "y, dx, dw, dγ, dβ, running mean and var");
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(u, v, "{shape:?} {k}×{k} stride {stride} relu {relu}: output {i}");
            }
            if relu {
                assert!(a[0].contains(&0.0), "the ReLU clipped nothing");
            }
        }
    }

    #[test]
    fn with_a_shortcut_one_op_gives_the_three_ops_values_bit_for_bit() {
        let dev = Device::Cpu;
        for (shape, k, stride, relu) in [
            ((3, 8, 10, 10), 3, 1, true),
            ((2, 5, 9, 7), 3, 2, true),
            ((1, 16, 8, 8), 1, 1, true),
            ((4, 3, 6, 6), 3, 1, false),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0.5f32, 1.0, shape, &dev).unwrap()).unwrap();
            let (a, b) = (
                run(true, x.as_tensor(), shape, k, stride, relu, true),
                run(false, x.as_tensor(), shape, k, stride, relu, true),
            );
            assert_eq!(a.len(), 8, "y, dx, dw, dγ, dβ, d shortcut, running mean and var");
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(u, v, "{shape:?} {k}×{k} stride {stride} relu {relu}: output {i}");
            }
            let (y, ds) = (&a[0], &a[5]);
            if relu {
                // the shortcut's gradient is cut exactly where the ReLU clipped the sum
                assert!(y.contains(&0.0), "the ReLU clipped nothing");
                assert!(y.iter().zip(ds).all(|(&y, &d)| (y > 0.0) == (d != 0.0)));
            } else {
                assert!(y.iter().any(|&y| y < 0.0), "no ReLU, yet nothing negative");
            }
        }
    }

    #[test]
    fn a_shortcut_of_another_shape_is_left_to_the_separate_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let vars = Vars::new(1, 6, 4, 3, 1);
        let s = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        assert!(conv_bn_train(&x, &vars.params(), true, Some(&s)).unwrap().is_none());
        let s = s
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .repeat((1, 2, 1, 1))
            .unwrap();
        let s = s.narrow(1, 0, 6).unwrap();
        assert!(conv_bn_train(&x, &vars.params(), true, Some(&s)).unwrap().is_none());
    }

    #[test]
    fn data_input_gets_no_gradient() {
        let shape = (2, 3, 8, 8);
        let x = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let (a, b) = (
            run(true, &x, shape, 3, 1, true, false),
            run(false, &x, shape, 3, 1, true, false),
        );
        assert_eq!(a.len(), 6, "no dx for a tensor that is not a variable");
        assert_eq!(a, b);
    }

    #[test]
    fn shapes_the_kernels_do_not_take_are_left_to_the_two_ops() {
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
        // a 5×5 kernel (padding 2)
        let vars = Vars::new(1, 6, 4, 5, 1);
        assert!(conv_bn_train(&x, &vars.params(), true, None).unwrap().is_none());
    }
}
