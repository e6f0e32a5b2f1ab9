//! `relu?(batch_norm(conv2d(x, w)))` in training mode as one Candle op.
//!
//! As two ops, the convolution's output is a node of Candle's graph, and Candle's backward
//! pass gives every node's gradient its own zero-filled buffer and adds the incoming gradient
//! into it: a fill and an add over a whole activation per node, about a tenth of a ResNet-20
//! step. As one op, the convolution's output is kept by the op itself for its backward pass
//! and never has a gradient of its own; the batch-norm backward's input gradient goes straight
//! into the convolution's gradient kernels.
//!
//! The arithmetic is the two ops' own: [`super::conv`]'s kernels and [`super::batchnorm`]'s
//! statistics, normalisation and backward pass, so the values are the same bit for bit.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor, Var};

use super::batchnorm::{self, BatchNorm, BatchNormBackward, Geometry};
use super::conv::{self, ConvOp, InputGradOp, WeightGradOp};

/// The fused op for `relu?(bn(conv(x, w)))` in training mode, with the running statistics
/// updated as [`batchnorm::batch_norm`] does; None where the convolution or the batch norm
/// would not take their fast paths (the caller then runs the two ops).
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
        && geom.count() >= 2;
    if !fusable {
        return Ok(None);
    }
    let op = ConvBn {
        conv,
        geom,
        relu,
        saved: Arc::new(Mutex::new(None)),
    };
    let saved = op.saved.clone();
    let gb = Tensor::cat(&[gamma, beta], 0)?;
    let y = x.contiguous()?.apply_op3(&w.contiguous()?, &gb, op)?;
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

/// (x, w, [γ | β]) → relu?(bn(conv(x, w))).
struct ConvBn {
    conv: ConvOp,
    geom: Geometry,
    relu: bool,
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
        let (x, w, gb) = (
            super::f32_data(s1, l1, "conv-bn input")?,
            super::f32_data(s2, l2, "conv-bn weight")?,
            super::f32_data(s3, l3, "conv-bn γ, β")?,
        );
        let g = self.geom;
        if gb.len() != 2 * g.c {
            candle_core::bail!("conv-bn: {} values of γ and β for {} channels", gb.len(), g.c);
        }
        let (gamma, beta) = gb.split_at(g.c);
        let yc = self.conv.forward(x, w)?;
        let stats = batchnorm::batch_stats(&yc, g);
        let mean: Vec<f32> = stats.iter().map(|s| s.0 as f32).collect();
        let invstd: Vec<f32> = stats
            .iter()
            .map(|s| (1.0 / (s.1 + batchnorm::EPS).sqrt()) as f32)
            .collect();
        let y = batchnorm::normalize(&yc, gamma, beta, &mean, &invstd, self.relu, g);
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
        w: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (conv_out, bn) = match self.saved.lock().expect("conv-bn state").as_ref() {
            Some(s) => (s.conv_out.clone(), s.bn.clone()),
            None => candle_core::bail!("conv-bn: backward before forward"),
        };
        let c = self.geom.c;
        let back = BatchNormBackward {
            fwd: bn,
            gamma: Arc::new(gb.narrow(0, 0, c)?.to_vec1::<f32>()?),
        };
        // [d conv_out | dγ | dβ]
        let d = grad
            .contiguous()?
            .apply_op3_no_bwd(&conv_out, &y.contiguous()?, &back)?;
        let len = self.geom.len();
        let dyc = d.narrow(0, 0, len)?.reshape(conv_out.shape())?;
        // the network's first convolution reads the data batch, which needs no gradient
        let dx = match x.track_op() {
            true => Some(dyc.apply_op2_no_bwd(w, &InputGradOp(self.conv))?),
            false => None,
        };
        let dw = x.apply_op2_no_bwd(&dyc, &WeightGradOp(self.conv))?;
        Ok((dx, Some(dw), Some(d.narrow(0, len, 2 * c)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::super::{batchnorm, conv};
    use super::conv_bn_train;

    /// y, the gradients of x (when it is a variable), w, γ and β for loss = Σ y·r, and the
    /// running statistics afterwards, from the fused op or from the two ops.
    fn run(
        fused: bool,
        x: &Tensor,
        shape: (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        relu: bool,
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
            )
            .unwrap()
            .expect("a shape the fused op takes")
        } else {
            let yc = conv::conv2d(x, w.as_tensor(), stride, pad).unwrap();
            batchnorm::batch_norm(&yc, gamma.as_tensor(), beta.as_tensor(), &rm, &rv, true, relu).unwrap()
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
                run(true, x.as_tensor(), shape, k, stride, relu),
                run(false, x.as_tensor(), shape, k, stride, relu),
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
    fn data_input_gets_no_gradient() {
        let shape = (2, 3, 8, 8);
        let x = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let (a, b) = (run(true, &x, shape, 3, 1, true), run(false, &x, shape, 3, 1, true));
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
        assert!(conv_bn_train(&x, &w, 1, 2, &c, &c, &rm, &rv, true).unwrap().is_none());
    }
}
