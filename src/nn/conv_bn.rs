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
//! The arithmetic is the two ops' own: [`super::conv`]'s kernels and [`super::batchnorm`]'s
//! statistics, normalisation and backward pass, so the values are the same bit for bit.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, Var};

use super::batchnorm::{self, BatchNorm, BatchNormBackward, Geometry};
use super::conv::{self, ConvOp, InputGradOp, WeightGradOp};

/// The fused op for `relu?(bn(conv(x, w)) + shortcut?)` in training mode, with the running
/// statistics updated as [`batchnorm::batch_norm`] does; None where the convolution or the
/// batch norm would not take their fast paths, or the shortcut is not an f32 CPU tensor of the
/// output's shape (the caller then runs the separate ops).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Var,
    running_var: &Var,
    relu: bool,
    shortcut: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let Some(conv) = conv::plan(x, w, stride, padding, conv::Isa::detect())? else {
        return Ok(None);
    };
    let (n, c, ho, wo) = conv.out_dims();
    let geom = Geometry { n, c, plane: ho * wo };
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    let fusable = [gamma, beta, running_mean.as_tensor(), running_var.as_tensor()]
        .iter()
        .all(|t| f32_cpu(t) && t.dims() == [c])
        && geom.count() >= 2
        && shortcut.is_none_or(|s| f32_cpu(s) && s.dims() == [n, c, ho, wo]);
    if !fusable {
        return Ok(None);
    }
    let op = ConvBn {
        conv,
        geom,
        relu,
        shortcut: shortcut.is_some(),
        saved: Arc::new(Mutex::new(None)),
    };
    let saved = op.saved.clone();
    let x = x.contiguous()?;
    let y = match shortcut {
        // (x, [w | γ | β], s): a custom op takes at most three tensors
        Some(s) => {
            let params = Tensor::cat(&[&w.flatten_all()?, gamma, beta], 0)?;
            x.apply_op3(&params, &s.contiguous()?, op)?
        }
        None => x.apply_op3(&w.contiguous()?, &Tensor::cat(&[gamma, beta], 0)?, op)?,
    };
    let stats = saved.lock().expect("conv-bn state").as_ref().map(|s| s.stats.clone());
    let Some(stats) = stats else {
        candle_core::bail!("conv-bn: the forward pass left no statistics");
    };
    let (mean, var): (Vec<f64>, Vec<f64>) = stats.into_iter().unzip();
    batchnorm::update_running(running_mean, running_var, &mean, &var, geom.count())?;
    Ok(Some(y))
}

/// What the forward pass leaves for the backward pass.
struct Saved {
    /// The convolution's output: the batch norm's input.
    conv_out: Tensor,
    /// The batch norm as it ran (batch mean and inverse standard deviation).
    bn: BatchNorm,
    /// Per channel (mean, biased variance), f64, for the running statistics.
    stats: Vec<(f64, f64)>,
}

/// (x, w, [γ | β]) → relu?(bn(conv(x, w))), or with a shortcut
/// (x, [w | γ | β], s) → relu?(bn(conv(x, w)) + s).
struct ConvBn {
    conv: ConvOp,
    geom: Geometry,
    relu: bool,
    shortcut: bool,
    saved: Arc<Mutex<Option<Saved>>>,
}

/// The op's parameters and shortcut, split out of its second and third inputs.
struct Inputs<'a> {
    w: &'a [f32],
    /// [γ | β]
    gb: &'a [f32],
    s: Option<&'a [f32]>,
}

impl ConvBn {
    fn split<'a>(&self, second: &'a [f32], third: &'a [f32]) -> Result<Inputs<'a>> {
        let c2 = 2 * self.geom.c;
        let inputs = match self.shortcut {
            true if second.len() >= c2 => {
                let (w, gb) = second.split_at(second.len() - c2);
                Inputs { w, gb, s: Some(third) }
            }
            true => candle_core::bail!("conv-bn: {} parameters for {} channels", second.len(), self.geom.c),
            false => Inputs {
                w: second,
                gb: third,
                s: None,
            },
        };
        if inputs.gb.len() != c2 || inputs.s.is_some_and(|s| s.len() != self.geom.len()) {
            candle_core::bail!("conv-bn: inputs do not match {:?}", self.geom);
        }
        Ok(inputs)
    }
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
        let Inputs { w, gb, s } = self.split(
            super::f32_data(s2, l2, "conv-bn parameters")?,
            super::f32_data(s3, l3, "conv-bn parameters or shortcut")?,
        )?;
        let g = self.geom;
        let (gamma, beta) = gb.split_at(g.c);
        let yc = self.conv.forward(x, w)?;
        let stats = batchnorm::batch_stats(&yc, g);
        let mean: Vec<f32> = stats.iter().map(|s| s.0 as f32).collect();
        let invstd: Vec<f32> = stats
            .iter()
            .map(|s| (1.0 / (s.1 + batchnorm::EPS).sqrt()) as f32)
            .collect();
        let y = batchnorm::normalize(&yc, gamma, beta, &mean, &invstd, self.relu, s, g);
        let (n, c, ho, wo) = self.conv.out_dims();
        let shape = Shape::from((n, c, ho, wo));
        let saved = Saved {
            conv_out: Tensor::from_vec(yc, shape.clone(), &Device::Cpu)?,
            bn: BatchNorm {
                geom: g,
                mean: Arc::new(mean),
                invstd: Arc::new(invstd),
                relu: self.relu,
                batch_stats: true,
            },
            stats,
        };
        *self.saved.lock().expect("conv-bn state") = Some(saved);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        second: &Tensor,
        third: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (conv_out, bn) = match self.saved.lock().expect("conv-bn state").as_ref() {
            Some(s) => (s.conv_out.clone(), s.bn.clone()),
            None => candle_core::bail!("conv-bn: backward before forward"),
        };
        let (c, len) = (self.geom.c, self.geom.len());
        let (w, gamma) = match self.shortcut {
            true => {
                let wl = second.dim(0)? - 2 * c;
                (second.narrow(0, 0, wl)?, second.narrow(0, wl, c)?)
            }
            false => (second.clone(), third.narrow(0, 0, c)?),
        };
        // With a shortcut, y = relu?(bn + s): its ReLU mask (y > 0) is the batch norm's too.
        let back = BatchNormBackward {
            fwd: bn,
            gamma: Arc::new(gamma.to_vec1::<f32>()?),
            keep_masked: self.shortcut,
        };
        // [d conv_out | dγ | dβ (| d s under a ReLU)]
        let grad = grad.contiguous()?;
        let d = grad.apply_op3_no_bwd(&conv_out, &y.contiguous()?, &back)?;
        let dyc = d.narrow(0, 0, len)?.reshape(conv_out.shape())?;
        let w = w.reshape(self.conv.w_dims())?;
        // the network's first convolution reads the data batch, which needs no gradient
        let dx = match x.track_op() {
            true => Some(dyc.apply_op2_no_bwd(&w, &InputGradOp(self.conv))?),
            false => None,
        };
        let dw = x.apply_op2_no_bwd(&dyc, &WeightGradOp(self.conv))?;
        let dgb = d.narrow(0, len, 2 * c)?;
        if !self.shortcut {
            return Ok((dx, Some(dw), Some(dgb)));
        }
        let ds = match self.relu {
            true => d.narrow(0, len + 2 * c, len)?.reshape(y.shape())?,
            false => grad,
        };
        let dparams = Tensor::cat(&[&dw.flatten_all()?, &dgb], 0)?;
        Ok((dx, Some(dparams), Some(ds)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::{batchnorm, conv, residual, Shortcut};
    use super::conv_bn_train;

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
        let dev = Device::Cpu;
        let (_, cin, _, _) = shape;
        let cout = 12;
        let seeded = |i: u64, dims: &[usize], scale: f32, offset: f32| {
            // fixed values: a small LCG, so both runs see the same parameters
            let n: usize = dims.iter().product();
            let mut s = i.wrapping_mul(6364136223846793005).wrapping_add(1);
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale + offset
                })
                .collect();
            Tensor::from_vec(v, dims, &dev).unwrap()
        };
        let w = Var::from_tensor(&seeded(1, &[cout, cin, k, k], 0.3, 0.0)).unwrap();
        let gamma = Var::from_tensor(&seeded(2, &[cout], 0.3, 1.0)).unwrap();
        let beta = Var::from_tensor(&seeded(3, &[cout], 0.3, 0.0)).unwrap();
        let rm = Var::from_tensor(&seeded(4, &[cout], 0.1, 0.0)).unwrap();
        let rv = Var::from_tensor(&seeded(5, &[cout], 0.1, 1.0)).unwrap();
        let pad = k / 2;
        let (n, _, h, wd) = shape;
        let (ho, wo) = ((h + 2 * pad - k) / stride + 1, (wd + 2 * pad - k) / stride + 1);
        let sc = Var::from_tensor(&seeded(7, &[n, cout, ho, wo], 1.0, 0.0)).unwrap();
        let s = shortcut.then(|| sc.as_tensor());
        let y = if fused {
            conv_bn_train(
                x,
                w.as_tensor(),
                stride,
                pad,
                gamma.as_tensor(),
                beta.as_tensor(),
                &rm,
                &rv,
                relu,
                s,
            )
            .unwrap()
            .expect("a shape the fused op takes")
        } else {
            let yc = conv::conv2d(x, w.as_tensor(), stride, pad).unwrap();
            let bn_relu = relu && !shortcut;
            let y = batchnorm::batch_norm(&yc, gamma.as_tensor(), beta.as_tensor(), &rm, &rv, true, bn_relu).unwrap();
            match s {
                Some(s) => residual(&y, s, Shortcut::Identity, relu).unwrap(),
                None => y,
            }
        };
        let r = seeded(6, y.dims(), 1.0, 0.0);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut out = vec![flat(&y)];
        if let Some(dx) = grads.get(x) {
            out.push(flat(dx));
        }
        for v in [&w, &gamma, &beta] {
            out.push(flat(grads.get(v.as_tensor()).expect("gradient")));
        }
        if let Some(s) = s {
            out.push(flat(grads.get(s).expect("shortcut gradient")));
        }
        out.push(flat(rm.as_tensor()));
        out.push(flat(rv.as_tensor()));
        out
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
        let w = Tensor::randn(0f32, 1.0, (6, 4, 3, 3), &dev).unwrap();
        let c = Tensor::ones(6, candle_core::DType::F32, &dev).unwrap();
        let (rm, rv) = (
            Var::zeros(6, candle_core::DType::F32, &dev).unwrap(),
            Var::ones(6, candle_core::DType::F32, &dev).unwrap(),
        );
        let s = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        assert!(conv_bn_train(&x, &w, 1, 1, &c, &c, &rm, &rv, true, Some(&s))
            .unwrap()
            .is_none());
        let s = s
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .repeat((1, 2, 1, 1))
            .unwrap();
        let s = s.narrow(1, 0, 6).unwrap();
        assert!(conv_bn_train(&x, &w, 1, 1, &c, &c, &rm, &rv, true, Some(&s))
            .unwrap()
            .is_none());
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
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (6, 4, 5, 5), &dev).unwrap();
        let c = Tensor::ones(6, candle_core::DType::F32, &dev).unwrap();
        let (rm, rv) = (
            Var::zeros(6, candle_core::DType::F32, &dev).unwrap(),
            Var::ones(6, candle_core::DType::F32, &dev).unwrap(),
        );
        assert!(conv_bn_train(&x, &w, 1, 2, &c, &c, &rm, &rv, true, None)
            .unwrap()
            .is_none());
    }
}
