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
//! A whole basic residual unit with an identity shortcut (two such layers, the second with the
//! unit's input as its shortcut) is one op too ([`unit_train`]): then the first layer's output
//! is no node either, and the input's two gradients (through the first convolution and through
//! the shortcut) are added by the convolution's kernel as it stores rather than each into a
//! zero-filled buffer by Candle.
//!
//! The arithmetic is the separate ops' own: [`super::conv`]'s kernels and [`super::batchnorm`]'s
//! statistics, normalisation and backward pass, so the values are the same bit for bit.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, Var};

use super::batchnorm::{self, BatchNorm, BatchNormBackward, Geometry};
use super::conv::{self, ConvOp, InputGradOp, WeightGradOp};

/// A conv → BN layer's tensors: the weight, γ, β and the running statistics.
pub(super) struct LayerParams<'a> {
    pub(super) w: &'a Tensor,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) gamma: &'a Tensor,
    pub(super) beta: &'a Tensor,
    pub(super) running_mean: &'a Var,
    pub(super) running_var: &'a Var,
}

/// The fused op for `relu?(bn(conv(x, w)) + shortcut?)` in training mode, with the running
/// statistics updated as [`batchnorm::batch_norm`] does; None where the convolution or the
/// batch norm would not take their fast paths, or the shortcut is not an f32 CPU tensor of the
/// output's shape (the caller then runs the separate ops).
pub(super) fn conv_bn_train(
    x: &Tensor,
    p: &LayerParams,
    relu: bool,
    shortcut: Option<&Tensor>,
) -> Result<Option<Tensor>> {
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

/// A basic residual unit with an identity shortcut, `relu(bn2(conv2(h)) + x)` with
/// `h = relu(bn1(conv1(x)))`, in training mode as one op: neither `h` nor any other inner
/// value is a node of Candle's graph, so Candle neither zero-fills nor adds a gradient buffer
/// for them, and x's two gradients (through the first convolution and through the shortcut)
/// are added by that convolution's input-gradient kernel as it stores, not by Candle. None
/// where either layer would not take the fused path or the unit changes the shape (the caller
/// then runs the layers one by one).
pub(super) fn unit_train(x: &Tensor, p1: &LayerParams, p2: &LayerParams) -> Result<Option<Tensor>> {
    let Some(l1) = Layer::plan(x, p1, true)? else {
        return Ok(None);
    };
    // h, the first layer's output, is an f32 CPU tensor like x
    let Some(l2) = Layer::plan_dims(l1.out_dims(), p2, true)? else {
        return Ok(None);
    };
    if l2.out_dims() != x.dims4()? {
        return Ok(None);
    }
    let op = Unit {
        l1,
        l2,
        saved: Arc::new(Mutex::new(None)),
    };
    let saved = op.saved.clone();
    let y = x.contiguous()?.apply_op3(&layer_params(p1)?, &layer_params(p2)?, op)?;
    match saved.lock().expect("unit state").as_ref() {
        Some(s) => {
            s.first.update_running(p1)?;
            s.second.update_running(p2)?;
        }
        None => candle_core::bail!("residual unit: the forward pass left no statistics"),
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

/// One conv → BN (→ + shortcut) (→ ReLU) layer of the fused ops: [`super::conv`]'s kernels
/// and [`super::batchnorm`]'s statistics, normalisation and backward pass.
#[derive(Clone, Copy)]
struct Layer {
    conv: ConvOp,
    geom: Geometry,
    relu: bool,
}

/// What a layer's forward pass leaves for its backward pass.
struct Saved {
    /// The convolution's output: the batch norm's input.
    conv_out: Tensor,
    /// The batch norm as it ran (batch mean and inverse standard deviation).
    bn: BatchNorm,
    /// Per channel (mean, biased variance), f64, for the running statistics.
    stats: Vec<(f64, f64)>,
}

impl Saved {
    fn update_running(&self, p: &LayerParams) -> Result<()> {
        let (mean, var): (Vec<f64>, Vec<f64>) = self.stats.iter().copied().unzip();
        batchnorm::update_running(p.running_mean, p.running_var, &mean, &var, self.bn.geom.count())
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
        let Some(conv) = conv::plan_dims(x, p.w, p.stride, p.padding, conv::Isa::detect())? else {
            return Ok(None);
        };
        let (n, c, ho, wo) = conv.out_dims();
        let geom = Geometry { n, c, plane: ho * wo };
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
        let stats = batchnorm::batch_stats(&yc, g);
        let mean: Vec<f32> = stats.iter().map(|s| s.0 as f32).collect();
        let invstd: Vec<f32> = stats
            .iter()
            .map(|s| (1.0 / (s.1 + batchnorm::EPS).sqrt()) as f32)
            .collect();
        let y = batchnorm::normalize(&yc, gamma, beta, &mean, &invstd, self.relu, s, g);
        let saved = Saved {
            conv_out: Tensor::from_vec(yc, self.shape(), &Device::Cpu)?,
            bn: BatchNorm {
                geom: g,
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
        let x = super::f32_data(s1, l1, "conv-bn input")?;
        let second = super::f32_data(s2, l2, "conv-bn parameters")?;
        let third = super::f32_data(s3, l3, "conv-bn parameters or shortcut")?;
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

/// What a [`Unit`]'s forward pass leaves for its backward pass.
struct UnitSaved {
    first: Saved,
    second: Saved,
    /// The first layer's output, the second's input.
    h: Tensor,
}

/// (x, [w1 | γ1 | β1], [w2 | γ2 | β2]) → relu(bn2(conv2(relu(bn1(conv1(x))))) + x).
struct Unit {
    l1: Layer,
    l2: Layer,
    saved: Arc<Mutex<Option<UnitSaved>>>,
}

impl CustomOp3 for Unit {
    fn name(&self) -> &'static str {
        "residual-unit"
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
        let x = super::f32_data(s1, l1, "residual unit input")?;
        let (w1, gb1) = self
            .l1
            .split_params(super::f32_data(s2, l2, "residual unit parameters")?)?;
        let (w2, gb2) = self
            .l2
            .split_params(super::f32_data(s3, l3, "residual unit parameters")?)?;
        let (h, first) = self.l1.forward(x, w1, gb1, None)?;
        let (y, second) = self.l2.forward(&h, w2, gb2, Some(x))?;
        let h = Tensor::from_vec(h, self.l1.shape(), &Device::Cpu)?;
        *self.saved.lock().expect("unit state") = Some(UnitSaved { first, second, h });
        Ok((CpuStorage::F32(y), self.l2.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p1: &Tensor,
        p2: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let guard = self.saved.lock().expect("unit state");
        let Some(s) = guard.as_ref() else {
            candle_core::bail!("residual unit: backward before forward");
        };
        let (w1, gamma1) = weight_gamma(p1, self.l1.geom.c)?;
        let (w2, gamma2) = weight_gamma(p2, self.l2.geom.c)?;
        let second = self
            .l2
            .backward(&s.second, &s.h, &w2, &gamma2, y, grad, Some(None), true)?;
        let (Some(dh), Some(ds)) = (&second.dx, &second.ds) else {
            candle_core::bail!("residual unit: the second layer gave no input or shortcut gradient");
        };
        // x feeds both the first convolution and the shortcut: the kernel adds the two
        let dx = x.track_op().then_some(Some(ds));
        let first = self.l1.backward(&s.first, x, &w1, &gamma1, &s.h, dh, dx, false)?;
        Ok((first.dx.clone(), Some(first.params()?), Some(second.params()?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::{batchnorm, conv, residual, Shortcut};
    use super::{conv_bn_train, unit_train, LayerParams};

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
                Some(s) => residual(&y, s, Shortcut::Identity, relu).unwrap(),
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

    /// y, the gradients of x and of both layers' w, γ and β, and both layers' running
    /// statistics for loss = Σ y·r, from the unit op or from the two layers' ops.
    fn run_unit(fused: bool, x: &Var) -> Vec<Vec<f32>> {
        let c = x.dim(1).unwrap();
        let (l1, l2) = (Vars::new(1, c, c, 3, 1), Vars::new(2, c, c, 3, 1));
        let x = x.as_tensor();
        let y = match fused {
            true => unit_train(x, &l1.params(), &l2.params())
                .unwrap()
                .expect("a unit the op takes"),
            false => l2.separate(&l1.separate(x, true, None), true, Some(x)),
        };
        let r = seeded(6, y.dims(), 1.0, 0.0);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![flat(&y), flat(grads.get(x).expect("input gradient"))];
        for l in [&l1, &l2] {
            for v in &l.0[..3] {
                out.push(flat(grads.get(v.as_tensor()).expect("gradient")));
            }
            out.push(flat(l.0[3].as_tensor()));
            out.push(flat(l.0[4].as_tensor()));
        }
        out
    }

    #[test]
    fn one_unit_op_gives_the_layers_values_bit_for_bit() {
        let dev = Device::Cpu;
        // stride 1 and the shape kept: 3×3 conv → BN → ReLU, 3×3 conv → BN, + x, ReLU
        for shape in [(2, 8, 8, 8), (3, 5, 7, 9), (1, 16, 4, 4)] {
            let x = Var::from_tensor(&Tensor::randn(0.5f32, 1.0, shape, &dev).unwrap()).unwrap();
            let (a, b) = (run_unit(true, &x), run_unit(false, &x));
            assert_eq!(a.len(), 12, "y, dx, and per layer dw, dγ, dβ, running mean and var");
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(u, v, "{shape:?}: output {i}");
            }
            assert!(a[0].contains(&0.0), "the ReLU clipped nothing");
            assert!(a[1].iter().any(|&d| d != 0.0), "no input gradient");
        }
    }

    #[test]
    fn a_unit_that_changes_the_shape_is_left_to_the_layers() {
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
        // stride 2, and 4 → 8 channels: no identity shortcut fits
        for (l1, l2) in [
            (Vars::new(1, 4, 4, 3, 2), Vars::new(2, 4, 4, 3, 1)),
            (Vars::new(1, 8, 4, 3, 1), Vars::new(2, 8, 8, 3, 1)),
        ] {
            assert!(unit_train(&x, &l1.params(), &l2.params()).unwrap().is_none());
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
